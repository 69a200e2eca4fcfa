#!/usr/bin/env python3
"""A "legacy" chat app that knows nothing about WebSockets, behind sidewire.

Python's standard library only: server-rendered pages, a login form and a session
cookie, rooms, messages kept in memory. Everything realtime is sidewire's: the pages load
sidewire's client.js, and the app's whole realtime glue is the block marked
"realtime glue" below (SPEC §7): one auth endpoint that reads the app's own session
cookie, publish POSTs to sidewire's admin API, and, for the moderated room, the message
webhook with its signature check.

    cargo run --example chat          # this app and sidewire in front of it

Environment: CHAT_HOST (default 127.0.0.1), CHAT_PORT (3000), SIDEWIRE_ADMIN (sidewire's
admin URL, http://127.0.0.1:9090), SIDEWIRE_SECRET (admin Bearer secret and webhook HMAC
key; without it the moderated room refuses messages), CHAT_QUIET=1 (no request log).
"""

import hashlib
import hmac
import html
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = os.environ.get("CHAT_HOST", "127.0.0.1")
PORT = int(os.environ.get("CHAT_PORT", "3000"))
ADMIN = os.environ.get("SIDEWIRE_ADMIN", "http://127.0.0.1:9090")
SECRET = os.environ.get("SIDEWIRE_SECRET", "")
PREFIX = os.environ.get("SIDEWIRE_PREFIX", "/_sidewire")
QUIET = os.environ.get("CHAT_QUIET") == "1"

ROOMS = {"general": "Anything goes", "random": "Off topic", "moderated": "Every message is checked by the app"}
BANNED = ("spam", "viagra")  # the moderated room refuses messages containing these
KEEP = 200  # messages kept per room
MAX_SESSIONS = 10_000
COOKIE = "chat_session"

lock = threading.Lock()
sessions = {}  # cookie value -> {"user", "name"}
rooms = {room: [] for room in ROOMS}  # room -> [message], oldest first
next_id = 1


def log(text):
    if not QUIET:
        print(text, flush=True)


def add_message(room, user, name, text):
    """Stores a chat message; returns it with its app-wide id."""
    global next_id
    with lock:
        msg = {"id": next_id, "room": room, "user": user, "name": name, "text": text, "ts": int(time.time())}
        next_id += 1
        rooms[room].append(msg)
        del rooms[room][:-KEEP]
    return msg


def mentions(text):
    return sorted(set(re.findall(r"@([a-z0-9_]+)", text)))


# ---------------------------------------------------------------- realtime glue (SPEC §7): all the app adds
def realtime_auth(h):  # who holds this session cookie, and which channels may they subscribe to?
    if (s := h.session()) is None:
        return h.reply(401, {"error": "not signed in"})
    h.reply(200, {"user": s["user"], "channels": ["room:*", "user:" + s["user"]], "ttl": 300, "info": {"name": s["name"]}})


def outbox(msg):  # the chat message for its room, and a "you were mentioned" for each @user
    notes = [{"channel": "user:" + u, "event": "mention", "data": msg} for u in mentions(msg["text"]) if u != msg["user"]]
    return [{"channel": "room:" + msg["room"], "event": "chat", "data": msg}] + notes


def publish(messages):  # one POST to sidewire's admin API; when sidewire is down, pages refetch on `reset`
    req = urllib.request.Request(ADMIN + "/publish", json.dumps({"messages": messages}).encode(),
                                 {"content-type": "application/json", "authorization": "Bearer " + SECRET})
    try:
        urllib.request.urlopen(req, timeout=2).close()
    except OSError as e:
        log(f"publish failed ({e}); the pages will refetch")


def realtime_events(h):  # webhook: client publishes on room:moderated; the app decides
    body, sig = h.body(), dict(p.split("=", 1) for p in h.headers.get("x-sidewire-signature", "").split(",") if "=" in p)
    t, want = sig.get("t", ""), hmac.new(SECRET.encode(), sig.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
    if not (SECRET and t.isdigit() and abs(time.time() - int(t)) < 300 and hmac.compare_digest(want.encode(), sig.get("v1", "").encode())):
        return h.reply(401, {"error": "bad signature"})
    ev = json.loads(body)
    if not isinstance(ev, dict) or ev.get("type") != "message":  # lifecycle events (a list when batched)
        return h.reply(204)
    data, name = ev.get("data") if isinstance(ev.get("data"), dict) else {}, (ev.get("info") or {}).get("name", ev["user"])
    if ev.get("event") == "typing":  # pass it on to everyone but the typist
        return h.reply(200, {"publish": [{"channel": ev["channel"], "event": "typing", "data": {"user": ev["user"], "name": name},
                                          "exclude_connection": ev["connection"]}]})
    text = str(data.get("text", "")).strip()[:500]
    if ev.get("event") != "chat" or not text or any(w in text.lower() for w in BANNED):
        return h.reply(422, {"error": "refused by the moderator"})
    h.reply(200, {"publish": outbox(add_message(ev["channel"].split(":", 1)[1], ev["user"], name, text)), "reply": {"ok": True}})
# ---------------------------------------------------------------- end of realtime glue


def page(title, body):
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body {{ font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #222; }}
  header {{ background: #2d3e50; color: #fff; padding: 10px 18px; display: flex; justify-content: space-between; }}
  header form {{ margin: 0; }} header button {{ background: none; border: 1px solid #fff8; color: #fff; border-radius: 4px; }}
  main {{ display: grid; grid-template-columns: 150px 1fr 190px; gap: 14px; padding: 14px 18px; }}
  nav a {{ display: block; padding: 4px 8px; border-radius: 4px; color: #2d3e50; text-decoration: none; }}
  nav a.here {{ background: #2d3e50; color: #fff; }}
  section, aside {{ background: #fff; border-radius: 6px; padding: 10px 14px; box-shadow: 0 1px 2px #0002; }}
  #messages {{ list-style: none; padding: 0; margin: 0; height: 300px; overflow-y: auto; }}
  #messages li {{ padding: 3px 0; }} #messages b {{ color: #2d6ca2; }}
  #typing {{ height: 1.4em; color: #888; font-style: italic; font-size: 13px; }}
  #send {{ display: flex; gap: 6px; }} #send input {{ flex: 1; padding: 6px; }}
  #presence {{ list-style: none; padding: 0; }} #presence li::before {{ content: "● "; color: #3a3; }}
  #notifications {{ list-style: none; padding: 0; font-size: 13px; }}
  #notifications li {{ background: #fff6d5; border-left: 3px solid #e0b400; padding: 4px 6px; margin-bottom: 4px; }}
  #status {{ font-size: 12px; color: #aaa; }} .error {{ color: #b00; font-size: 13px; }}
  .login {{ max-width: 320px; margin: 60px auto; }} .login input {{ display: block; width: 100%; box-sizing: border-box; margin: 4px 0 10px; padding: 6px; }}
</style></head><body>{body}</body></html>"""


LOGIN = """<section class="login"><h2>Sign in to the chat</h2>
<form method="post" action="/login">
  <label>User name (a-z, 0-9, _)<input name="user" required pattern="[a-z0-9_]{1,20}" autofocus></label>
  <label>Display name<input name="name" maxlength="40"></label>
  <button>Sign in</button>
</form></section>"""

# The room page's script: sidewire's client.js does the realtime part, with the session cookie.
ROOM_JS = """
const {room, me, moderated} = JSON.parse(document.getElementById("state").textContent);
const channel = "room:" + room;
const list = document.getElementById("messages"), typing = document.getElementById("typing");
const seen = new Set([...list.children].map((li) => Number(li.dataset.id)));
function show(m) {                      // once per message id, in id order
  if (seen.has(m.id)) return;
  seen.add(m.id);
  const li = document.createElement("li");
  li.dataset.id = m.id;
  li.append(Object.assign(document.createElement("b"), {textContent: m.name}), " " + m.text);
  const after = [...list.children].find((x) => Number(x.dataset.id) > m.id);
  list.insertBefore(li, after || null);
  list.scrollTop = list.scrollHeight;
}
async function refetch() {              // what the app has: fills any gap sidewire could not
  const res = await fetch("/rooms/" + room + "/messages");
  if (res.ok) (await res.json()).messages.forEach(show);
}
const client = new Sidewire.Client();   // signed in by the session cookie (auth.token_cookie)
const status = document.getElementById("status");
client.on("state", ({state, transport}) => status.textContent = state + " (" + transport + ")");
let first = true;
client.on("subscribed", (e) => { if (e.channel === channel && first) { first = false; refetch(); } });
client.on("reset", ({channels}) => { if (channels.includes(channel)) refetch(); });
let typingTimer = null;
client.subscribe(channel, (m) => {
  if (m.event === "chat" && m.user === undefined) show(m.data);   // the app's messages only
  if (m.event === "typing") {
    const who = m.user || m.data.user, member = client.members(channel).find((x) => x.user === who);
    typing.textContent = ((member && member.info && member.info.name) || m.data.name || who) + " is typing…";
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => typing.textContent = "", 3000);
  }
}, {echo: false, presence: ({members}) => {
  const ul = document.getElementById("presence");
  ul.replaceChildren(...members.map((x) => Object.assign(document.createElement("li"),
    {textContent: (x.info && x.info.name) || x.user, title: x.user})));
}});
client.subscribe("user:" + me, (m) => {
  if (m.event !== "mention") return;
  const li = document.createElement("li");
  li.textContent = m.data.name + " mentioned you in #" + m.data.room + ": " + m.data.text;
  document.getElementById("notifications").prepend(li);
});
const form = document.getElementById("send"), input = form.elements.text, err = document.getElementById("error");
let lastTyping = 0;
input.addEventListener("input", () => {
  if (Date.now() - lastTyping < 2000 || client.state !== "open") return;
  lastTyping = Date.now();
  client.publish(channel, {}, "typing").catch(() => {});
});
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  err.textContent = "";
  input.value = "";
  lastTyping = 0;
  try {
    if (moderated) await client.publish(channel, {text}, "chat");   // through the app's webhook
    else {
      const res = await fetch(form.action, {method: "POST", headers: {accept: "application/json"},
                                            body: new URLSearchParams({text})});
      if (!res.ok) throw new Error("HTTP " + res.status);
      show(await res.json());
    }
  } catch (e) {
    err.textContent = "not sent: " + (e.code === "rejected" ? "refused by the moderator" : e.message);
  }
});
"""


def room_page(s, room):
    with lock:
        msgs = list(rooms[room])
    esc = html.escape
    nav = "".join(f'<a href="/rooms/{r}" class="{"here" if r == room else ""}"># {r}</a>' for r in ROOMS)
    items = "".join(f'<li data-id="{m["id"]}"><b>{esc(m["name"])}</b> {esc(m["text"])}</li>' for m in msgs)
    state = json.dumps({"room": room, "me": s["user"], "moderated": room == "moderated"}).replace("<", "\\u003c")
    body = f"""<header><span><b>#{room}</b> — {esc(ROOMS[room])}</span>
<form method="post" action="/logout"><span>{esc(s["name"])} ({esc(s["user"])})</span> <button>Sign out</button></form></header>
<main><nav>{nav}<p id="status">connecting…</p></nav>
<section><ul id="messages">{items}</ul><div id="typing"></div>
<form id="send" method="post" action="/rooms/{room}/messages"><input name="text" autocomplete="off"
 placeholder="Message #{room} (try @name)" maxlength="500"><button>Send</button></form><div id="error" class="error"></div></section>
<aside><h4>Here now</h4><ul id="presence"></ul><h4>Notifications</h4><ul id="notifications"></ul></aside></main>
<script id="state" type="application/json">{state}</script>
<script src="{PREFIX}/client.js"></script><script>{ROOM_JS}</script>"""
    return page(f"#{room} — chat", body)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "legacy-chat/1"

    def log_message(self, fmt, *args):
        log("app: " + fmt % args)

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(min(n, 1 << 20)) if n > 0 else b""

    def form(self):
        return {k: v[0] for k, v in urllib.parse.parse_qs(self.body().decode("utf-8", "replace")).items()}

    def session(self):
        jar = {}
        for part in self.headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            jar[k] = v
        with lock:
            return sessions.get(jar.get(COOKIE, ""))

    def reply(self, status, data=None, headers=()):
        if isinstance(data, str):
            body, kind = data.encode(), "text/html; charset=utf-8"
        else:
            body, kind = (b"" if data is None else json.dumps(data).encode()), "application/json"
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if body:
            self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, to, headers=()):
        self.reply(303, None, [("location", to), *headers])

    def room_of(self, path):
        m = re.fullmatch(r"/rooms/([a-z]+)(/messages)?", path)
        return (m.group(1), bool(m.group(2))) if m and m.group(1) in ROOMS else (None, False)

    def do_GET(self):
        path, s = urllib.parse.urlsplit(self.path).path, self.session()
        room, api = self.room_of(path)
        if path == "/login":
            return self.reply(200, page("Sign in — chat", LOGIN))
        if s is None:
            return self.redirect("/login") if not api else self.reply(401, {"error": "not signed in"})
        if path == "/":
            return self.redirect("/rooms/general")
        if room and api:
            with lock:
                return self.reply(200, {"messages": list(rooms[room])})
        if room:
            return self.reply(200, room_page(s, room))
        self.reply(404, page("Not found", "<section>Not found</section>"))

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/realtime/auth":
            self.body()
            return realtime_auth(self)
        if path == "/realtime/events":
            return realtime_events(self)
        if path == "/login":
            f = self.form()
            user = f.get("user", "").strip().lower()
            if not re.fullmatch(r"[a-z0-9_]{1,20}", user):
                return self.reply(400, page("Sign in — chat", LOGIN))
            token = secrets.token_urlsafe(24)
            with lock:
                sessions[token] = {"user": user, "name": f.get("name", "").strip()[:40] or user.capitalize()}
                while len(sessions) > MAX_SESSIONS:
                    del sessions[next(iter(sessions))]
            cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax"
            return self.redirect("/rooms/general", [("set-cookie", cookie)])
        if path == "/logout":
            self.body()
            with lock:
                sessions.pop(self.headers.get("cookie", "").partition(COOKIE + "=")[2].split(";")[0], None)
            return self.redirect("/login", [("set-cookie", f"{COOKIE}=; Path=/; Max-Age=0")])
        room, api = self.room_of(path)
        s = self.session()
        if not (room and api) or s is None or room == "moderated":
            self.body()
            return self.reply(403 if room else 404, {"error": "cannot post here"})
        text = self.form().get("text", "").strip()[:500]
        if not text:
            return self.reply(400, {"error": "empty message"})
        msg = add_message(room, s["user"], s["name"], text)
        publish(outbox(msg))  # realtime glue: one line in the app's existing handler
        if "application/json" in self.headers.get("accept", ""):
            return self.reply(200, msg)
        self.redirect("/rooms/" + room)


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True
    # Always printed (CHAT_PORT=0 picks a free port: this line tells which).
    print(f"chat app listening on http://{HOST}:{server.server_address[1]} (sidewire admin {ADMIN})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
