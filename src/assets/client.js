/*! sidewire browser client, served by sidewire at {prefix}/client.js (default /_sidewire/client.js).
 *
 *   const client = new Sidewire.Client({ url: "/ws", sse: "/events", poll: "/poll" });
 *   const off = client.subscribe("room:1", (msg) => console.log(msg.channel, msg.id, msg.event, msg.data, msg.user), {
 *     echo: false,                                              // not my own publishes
 *     presence: ({ members }) => show(members),                 // [{user, connections, info}]
 *   });
 *   client.on("welcome", ({ user, connection }) => whoami(user)); // also client.user, client.connection
 *   client.on("reset", ({ channels }) => refetch(channels));   // history could not fill a gap
 *   await client.publish("room:1", { text: "hi" }, "chat");     // WebSocket only
 *   const members = await client.presence("room:1");           // asks the server (WebSocket)
 *
 * Types: {prefix}/client.d.ts.
 *
 * WebSocket first; it reconnects with exponential backoff and full jitter and resumes
 * every channel from the last id it saw. When WebSocket is blocked it falls back to SSE
 * (read with fetch), then to long-poll. Plain ES2017, no dependencies, no build step.
 */
(function (root) {
  "use strict";

  // Backoff: sleep random(0, min(CAP, BASE * 2^attempt)) ("full jitter"), so a server
  // restart is not met by every client in the same instant.
  const BASE_MS = 500;
  const CAP_MS = 30000;
  // A connection that stayed up this long was healthy: the next drop starts at BASE again.
  const STABLE_MS = 10000;
  // Closes 1001 (shutdown) and 1012 (restart) mean "come back later, elsewhere": spread
  // those reconnects over at least this window even on a first attempt.
  const RESTART_SPREAD_MS = 5000;
  // WebSocket handshakes that fail while the server still answers plain HTTP before we
  // decide something in between blocks WebSocket.
  const WS_BLOCKED_AFTER = 3;
  // An SSE response whose first bytes never come is being buffered by a proxy.
  const SSE_HEAD_MS = 10000;
  const POLL_TIMEOUT = "25s";
  // Longest a publish or presence request waits for its reply.
  const REQUEST_TIMEOUT_MS = 10000;
  // Close codes after which retrying cannot help (SPEC §4): stop and tell the app.
  const FATAL = { 4001: "auth_required", 4002: "invalid_token", 4003: "forbidden" };
  const TRANSPORTS = ["websocket", "sse", "longpoll"];

  // Ids and cursors (README, "Ids and cursors"): an id is "<epoch>.<seq>", an SSE or
  // long-poll cursor is "<epoch>.<seq1>.<seq2>…" with one position per channel of the
  // stream in sorted order, and seq is one counter per epoch shared by all channels.
  // This file ships with the server, so it may rely on that; applications should not.
  function parseCursor(text) {
    const parts = String(text).split(".");
    return { epoch: parts[0], seqs: parts.slice(1).map(Number) };
  }

  // `{user, connections, info}` of a presence list entry, as a fresh object.
  function member(m) {
    return { user: m.user, connections: m.connections, info: m.info === undefined ? null : m.info };
  }

  // Calls an application callback; its exception must not break the connection loop,
  // yet should still reach the console.
  function safely(fn, arg) {
    try {
      fn(arg);
    } catch (e) {
      setTimeout(() => {
        throw e;
      });
    }
  }

  class Client {
    constructor(options) {
      const o = Object.assign({ url: "/ws", sse: "/events", poll: "/poll", tokenParam: "token" }, options);
      this._opts = o;
      // channel -> { handlers: Set of {handler, echo, presence}, pos: {epoch, seq} | null,
      //              live: bool, members: Map user -> {user, connections, info} | null (unknown) }
      this._subs = new Map();
      this._listeners = {};
      this._latest = null; // newest position seen on any channel: {epoch, seq}
      // publish / presence ref -> { frame, resolve, reject, timer, sent, local? }; `local`
      // (presence) answers from the tracked list when the WebSocket is given up.
      this._pending = new Map();
      this._user = null; // from the last `welcome`
      this._connection = null; // from the `welcome` of the open WebSocket
      this._nextRef = 1;
      this._gen = 0; // bumped whenever a connection is abandoned; stale callbacks check it
      this._attempt = 0;
      this._wsBlocked = 0;
      this._openedAt = 0;
      this._state = "connecting";
      this._closed = false;
      const usable = {
        websocket: o.url && typeof root.WebSocket === "function",
        sse: o.sse && typeof root.fetch === "function" && typeof root.TextDecoder === "function",
        longpoll: o.poll && typeof root.fetch === "function",
      };
      this._transports = TRANSPORTS.filter((t) => usable[t]);
      this._transport = this._transports[0];
      if (!this._transport) throw new Error("sidewire: no usable transport (url, sse and poll all unset?)");
      // Connect on the next tick, so `on(...)` and `subscribe(...)` calls made right
      // after construction see the first state and share the first connection.
      this._waiting = true;
      this._timer = setTimeout(() => this._connect());
    }

    /** Current transport: "websocket", "sse" or "longpoll". */
    get transport() {
      return this._transport;
    }

    /** "connecting", "open" or "closed". */
    get state() {
      return this._state;
    }

    /** The user sidewire knows this client as (null: anonymous), from the WebSocket's
     *  `welcome`; null until the first one, then kept while reconnecting. */
    get user() {
      return this._user;
    }

    /** The id of the open WebSocket connection (from `welcome`); null while there is none. */
    get connection() {
      return this._connection;
    }

    /** Calls `handler({channel, id, event, data, user?})` for every message (`user`: the
     *  sender of a client-published message, null when anonymous; absent on backend
     *  publishes). Options: `echo: false` (not this connection's own publishes),
     *  `presence({channel, members, change})` (the channel's member list changed).
     *  Returns the unsubscribe function. */
    subscribe(channel, handler, options) {
      if (typeof handler !== "function") throw new TypeError("sidewire: subscribe needs a handler function");
      const o = options || {};
      // A wrapper, so the same function may be added twice.
      const entry = { handler, echo: o.echo !== false, presence: typeof o.presence === "function" ? o.presence : null };
      let sub = this._subs.get(channel);
      if (!sub) {
        sub = { handlers: new Set([entry]), pos: null, live: false, members: null };
        this._subs.set(channel, sub);
        this._channelsChanged(channel, true);
      } else {
        const echo = echoOf(sub);
        sub.handlers.add(entry);
        if (echoOf(sub) !== echo) this._echoChanged(channel);
        if (entry.presence && sub.members) {
          // Already known: this subscription hears the list once, as it would on subscribing.
          setTimeout(() => {
            if (sub.handlers.has(entry) && sub.members) {
              safely(entry.presence, { channel, members: this._memberList(sub), change: { type: "sync" } });
            }
          });
        }
      }
      return () => {
        const echo = echoOf(sub);
        if (!sub.handlers.delete(entry) || this._subs.get(channel) !== sub) return;
        if (sub.handlers.size === 0) {
          this._subs.delete(channel);
          this._channelsChanged(channel, false);
        } else if (echoOf(sub) !== echo) {
          this._echoChanged(channel);
        }
      };
    }

    /** The tracked members of a presence channel this client subscribes to,
     *  `[{user, connections, info}]` sorted by user; empty while unknown. */
    members(channel) {
      const sub = this._subs.get(channel);
      return sub && sub.members ? this._memberList(sub) : [];
    }

    /** Asks the server for the members of a presence channel: resolves with
     *  `[{user, connections, info}]`. Over SSE / long-poll (no requests there) it resolves
     *  with the tracked list, `members(channel)`. */
    presence(channel) {
      if (this._closed) return Promise.reject(new Error("sidewire: client closed"));
      const local = () => this.members(channel);
      if (this._transport !== "websocket") return Promise.resolve(local());
      return this._request({ type: "presence", channel }, local);
    }

    /** Publishes over the WebSocket; resolves with the `published` reply `{channel, id}`. */
    publish(channel, data, event) {
      if (this._closed) return Promise.reject(new Error("sidewire: client closed"));
      if (this._transport !== "websocket") {
        return Promise.reject(new Error("sidewire: publish needs the WebSocket transport (now " + this._transport + ")"));
      }
      const frame = { type: "publish", channel, data: data === undefined ? null : data };
      if (event !== undefined) frame.event = event;
      return this._request(frame);
    }

    /** Events: "state" {state, transport}, "welcome" {user, connection}, "subscribed"
     *  {channel}, "reset" {channels}, "error" {code, message}, "join" {channel, user, info},
     *  "leave" {channel, user}, "presence" {channel, members, change}. Returns the remover. */
    on(event, fn) {
      (this._listeners[event] = this._listeners[event] || new Set()).add(fn);
      return () => this._listeners[event].delete(fn);
    }

    /** Stops for good: no reconnect. */
    close() {
      this._closed = true;
      this._stop();
      this._rejectAll(new Error("sidewire: client closed"));
      this._setState("closed");
    }

    // ------------------------------------------------------------ shared machinery

    _emit(event, arg) {
      for (const fn of this._listeners[event] || []) safely(fn, arg);
    }

    // Sends a WebSocket request with a fresh `ref`; resolves with its reply. Unsent until
    // the next `welcome`. `local`: an idempotent query (presence), sent again after a
    // reconnect and answered by `local()` if the WebSocket is given up; anything else
    // (publish) sent on a connection that is lost has an unknown outcome and is rejected.
    _request(fields, local) {
      return new Promise((resolve, reject) => {
        const ref = this._nextRef++;
        const frame = Object.assign({}, fields, { ref });
        const timer = setTimeout(() => this._settle(ref, new Error("sidewire: " + fields.type + " timed out")), REQUEST_TIMEOUT_MS);
        const p = { frame, resolve, reject, timer, sent: false, local };
        this._pending.set(ref, p);
        if (this._welcomed) p.sent = this._send(frame);
      });
    }

    _setState(state) {
      if (this._state === state && this._stateTransport === this._transport) return;
      this._state = state;
      this._stateTransport = this._transport;
      this._emit("state", { state, transport: this._transport });
    }

    _connect() {
      this._stop();
      if (this._closed) return;
      this._setState("connecting");
      const gen = this._gen;
      if (this._transport === "websocket") this._openWebSocket(gen);
      else if (this._transport === "sse") this._runSse(gen);
      else this._runPoll(gen);
    }

    // Abandons the current connection; its late callbacks see a newer `_gen` and do nothing.
    _stop() {
      this._gen++;
      clearTimeout(this._timer);
      this._waiting = false;
      this._welcomed = false;
      this._connection = null;
      if (this._ws) {
        this._ws.onclose = this._ws.onmessage = null;
        this._ws.close(1000);
        this._ws = null;
      }
      if (this._abort) this._abort.abort();
      this._abort = null;
    }

    _opened() {
      this._openedAt = Date.now();
      this._setState("open");
    }

    // Schedules the next attempt after `delay` ms, by default the backoff. `spread`: the
    // server asked us to go away (1001/1012).
    _reconnect(spread, delay) {
      if (this._closed) return;
      if (this._openedAt && Date.now() - this._openedAt >= STABLE_MS) this._attempt = 0;
      this._openedAt = 0;
      if (delay === undefined) {
        const ceiling = Math.min(CAP_MS, BASE_MS * Math.pow(2, this._attempt++));
        delay = Math.random() * (spread ? Math.max(ceiling, RESTART_SPREAD_MS) : ceiling);
      }
      this._stop();
      this._setState("connecting");
      this._waiting = true;
      this._timer = setTimeout(() => this._connect(), delay);
    }

    // WebSocket is blocked or a route is missing: move to the next transport.
    _fallBack() {
      const next = this._transports[this._transports.indexOf(this._transport) + 1];
      if (!next) return this._reconnect(false); // nothing left: keep retrying the last one
      this._transport = next;
      this._attempt = 0;
      // Presence queries get the tracked list; publishes cannot go anywhere now.
      for (const [ref, p] of Array.from(this._pending)) if (p.local) this._settle(ref, null, p.local());
      this._rejectAll(new Error("sidewire: fell back to " + next + "; publish needs the WebSocket"));
      this._connect();
    }

    // Retrying cannot help (credentials, forbidden channels): say why, then stop.
    _fail(code, message) {
      this._emit("error", { code, message, transport: this._transport });
      this.close();
    }

    _url(path, params) {
      const url = new URL(path, root.location ? root.location.href : undefined);
      const token = typeof this._opts.token === "function" ? this._opts.token() : this._opts.token;
      if (token) url.searchParams.set(this._opts.tokenParam, token);
      for (const [key, value] of params || []) if (value !== undefined) url.searchParams.append(key, value);
      return url;
    }

    _sorted() {
      // Sorted as the server sorts them: stream cursors list positions in this order
      // (channel names are ASCII, so code-unit order is byte order).
      return Array.from(this._subs.keys()).sort();
    }

    // A channel was added or removed: tell the WebSocket, or reopen the stream with the
    // new channel list (coalesced, so subscribing to ten channels reopens once).
    _channelsChanged(channel, added) {
      if (this._closed) return;
      if (this._transport === "websocket") {
        if (!this._welcomed) return; // the next welcome subscribes everything
        if (added) this._send(this._subscribeFrame(channel));
        else this._send({ type: "unsubscribe", channel });
        return;
      }
      if (this._reopening) return;
      this._reopening = true;
      setTimeout(() => {
        this._reopening = false;
        // While a retry is pending, that retry will use the new list.
        if (!this._closed && !this._waiting) this._connect();
      });
    }

    // `subscribe` for a channel we hold: resume point and echo (SPEC §4).
    _subscribeFrame(channel) {
      const frame = { type: "subscribe", channel, since: this._since(channel), ref: channel };
      if (!echoOf(this._subs.get(channel))) frame.echo = false;
      return frame;
    }

    // The subscriptions of a channel now want echo differently: subscribing again changes
    // the connection's echo setting and replays nothing (SPEC §4). Other transports cannot
    // publish, so echo means nothing there.
    _echoChanged(channel) {
      if (this._transport === "websocket" && this._welcomed && !this._closed) this._send(this._subscribeFrame(channel));
    }

    // Records that `channel` reached `{epoch, seq}`; `false` when that is not new (a duplicate).
    _advance(channel, epoch, seq) {
      const sub = this._subs.get(channel);
      if (!sub) return false;
      if (sub.pos && sub.pos.epoch === epoch && seq <= sub.pos.seq) return false;
      sub.pos = { epoch, seq };
      if (!this._latest || this._latest.epoch !== epoch || this._latest.seq < seq) this._latest = { epoch, seq };
      return true;
    }

    // Where a channel resumes from, as a message id; undefined = live only.
    _since(channel) {
      const sub = this._subs.get(channel);
      if (sub.pos) return sub.pos.epoch + "." + sub.pos.seq;
      // Subscribed before but never moved: ids share one sequence, so the newest
      // position seen anywhere is no later than any message we missed here. A message
      // from just before the subscription may replay; none is lost.
      if (sub.live && this._latest) return this._latest.epoch + "." + this._latest.seq;
      return undefined;
    }

    // The SSE / long-poll cursor for `channels` (sorted); undefined = start live.
    _cursor(channels) {
      const latest = this._latest;
      if (!latest) return undefined;
      const seqs = channels.map((c) => {
        const pos = this._subs.get(c).pos;
        if (pos && pos.epoch === latest.epoch) return pos.seq;
        // A position from an older epoch: the server restarted since, so everything it
        // holds is new to us (history says whether it still has it all).
        if (pos) return 0;
        return latest.seq; // never moved: see _since
      });
      return latest.epoch + "." + seqs.join(".");
    }

    // Applies a stream cursor; returns the index of the channel whose position moved
    // (the channel of the message it came with), or -1.
    _applyCursor(channels, text) {
      const { epoch, seqs } = parseCursor(text);
      if (seqs.length !== channels.length) return -1;
      let moved = -1;
      channels.forEach((c, i) => {
        if (this._advance(c, epoch, seqs[i])) moved = i;
      });
      return moved;
    }

    // Hands `{channel, id, event, data, user?}` to the channel's handlers, once per id.
    // `user` (the sender of a client publish) is set only when the server sent one.
    _deliver(channel, id, event, data, user) {
      const sub = this._subs.get(channel);
      if (!sub) return;
      if (id !== undefined) {
        const { epoch, seqs } = parseCursor(id);
        if (!this._advance(channel, epoch, seqs[0])) return; // already delivered
      }
      const msg = { channel, id, event, data };
      if (user !== undefined) msg.user = user;
      for (const entry of Array.from(sub.handlers)) safely(entry.handler, msg);
    }

    // ------------------------------------------------------------ presence
    // WebSocket: `subscribed.presence` (and each `presence` reply) is a snapshot taken
    // after the connection joined the channel; every `join`/`leave` after it arrives
    // after it on the same socket, so "replace, then apply events in order" converges.
    // SSE / long-poll have no snapshot: the list is built from the join/leave events seen.

    _memberList(sub) {
      return Array.from(sub.members.values())
        .sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0))
        .map(member);
    }

    // Replaces the tracked list of `channel` with a server snapshot.
    _presenceSnapshot(channel, users) {
      const sub = this._subs.get(channel);
      if (!sub || !Array.isArray(users)) return;
      const before = sub.members && JSON.stringify(this._memberList(sub));
      sub.members = new Map(users.map((m) => [m.user, member(m)]));
      // Told once when the list first becomes known, then only on a change.
      if (before === null || before !== JSON.stringify(this._memberList(sub))) {
        this._presenceChanged(channel, sub, { type: "sync" });
      }
    }

    // `join {channel, user, info}` / `leave {channel, user}` from any transport.
    _presenceEvent(type, body) {
      if (!body || typeof body !== "object") return;
      const { channel, user } = body;
      const sub = this._subs.get(channel);
      if (sub && typeof user === "string") {
        if (!sub.members) sub.members = new Map();
        const had = sub.members.get(user);
        if (type === "join") {
          const info = body.info === undefined ? null : body.info;
          // A user already listed (our own join after the snapshot, another tab) keeps
          // its count; joins are once per user, so a new one has at least one connection.
          if (!had || JSON.stringify(had.info) !== JSON.stringify(info)) {
            sub.members.set(user, { user, connections: had ? had.connections : 1, info });
            this._presenceChanged(channel, sub, { type, user, info });
          }
        } else if (had) {
          sub.members.delete(user);
          this._presenceChanged(channel, sub, { type, user });
        }
      }
      const event = { channel, user };
      if (type === "join") event.info = body.info === undefined ? null : body.info;
      this._emit(type, event);
    }

    _presenceChanged(channel, sub, change) {
      const event = { channel, members: this._memberList(sub), change };
      for (const entry of Array.from(sub.handlers)) {
        if (entry.presence) safely(entry.presence, { channel, members: this._memberList(sub), change });
      }
      this._emit("presence", event);
    }

    _subscribed(channel) {
      const sub = this._subs.get(channel);
      if (sub) sub.live = true;
      this._emit("subscribed", { channel, transport: this._transport });
    }

    _reset(channels) {
      this._emit("reset", { channels, transport: this._transport });
    }

    // A refused SSE / long-poll request: fatal (credentials, channels), missing route
    // (fall back), or temporary (429, 503: retry).
    async _refused(res) {
      if (res.status === 404) return this._fallBack();
      if (res.status === 400 || res.status === 401 || res.status === 403) {
        const body = await res.json().catch(() => ({}));
        return this._fail(body.error || "http_" + res.status, body.message || res.statusText);
      }
      this._reconnect(false);
    }

    // ------------------------------------------------------------ WebSocket

    _openWebSocket(gen) {
      const url = this._url(this._opts.url);
      url.protocol = url.protocol === "https:" || url.protocol === "wss:" ? "wss:" : "ws:";
      let ws;
      try {
        ws = new root.WebSocket(url.href);
      } catch (e) {
        return this._fallBack(); // refused outright (e.g. a Content-Security-Policy)
      }
      this._ws = ws;
      ws.onmessage = (ev) => {
        let frame;
        try {
          frame = JSON.parse(ev.data);
        } catch (e) {
          return;
        }
        if (gen === this._gen) this._onFrame(frame);
      };
      ws.onclose = (ev) => {
        if (gen !== this._gen) return;
        const welcomed = this._welcomed;
        this._ws = null;
        this._welcomed = false;
        this._connection = null;
        // A publish sent on this connection has an unknown outcome: the caller decides
        // whether to retry. Unsent ones, and queries, wait for the next `welcome`.
        for (const [ref, p] of Array.from(this._pending)) {
          if (p.sent && p.local) p.sent = false;
          else if (p.sent) this._settle(ref, new Error("sidewire: connection lost"));
        }
        if (FATAL[ev.code]) return this._fail(FATAL[ev.code], ev.reason || "closed " + ev.code);
        if (!welcomed) return this._handshakeFailed();
        this._reconnect(ev.code === 1001 || ev.code === 1012);
      };
    }

    _onFrame(frame) {
      switch (frame.type) {
        case "welcome":
          this._welcomed = true;
          this._wsBlocked = 0;
          this._user = frame.user === undefined ? null : frame.user;
          this._connection = frame.connection === undefined ? null : frame.connection;
          // Subscriptions and queued requests first, in order, then the app hears of it
          // (a listener that publishes queues behind them).
          for (const channel of this._subs.keys()) this._send(this._subscribeFrame(channel));
          for (const p of this._pending.values()) if (!p.sent) p.sent = this._send(p.frame);
          this._opened();
          if (this._welcomed) this._emit("welcome", { user: this._user, connection: this._connection, transport: "websocket" });
          break;
        case "subscribed":
          if (frame.recovered !== false && typeof frame.cursor === "string") {
            // A channel that has seen no message yet resumes from where it was joined.
            const sub = this._subs.get(frame.channel);
            const { epoch, seqs } = parseCursor(frame.cursor);
            if (sub && !sub.pos && seqs.length === 1) sub.pos = { epoch, seq: seqs[0] };
          }
          if (frame.recovered === false) {
            const sub = this._subs.get(frame.channel);
            if (sub) sub.pos = null; // that position is gone; count from what arrives next
            this._reset([frame.channel]);
          }
          if (frame.presence) this._presenceSnapshot(frame.channel, frame.presence);
          this._subscribed(frame.channel);
          break;
        case "message":
          this._deliver(frame.channel, frame.id, frame.event, frame.data, frame.user);
          break;
        case "join":
        case "leave":
          this._presenceEvent(frame.type, frame);
          break;
        case "presence":
          this._presenceSnapshot(frame.channel, frame.users);
          this._settle(frame.ref, null, Array.isArray(frame.users) ? frame.users.map(member) : []);
          break;
        case "published":
          this._settle(frame.ref, null, { channel: frame.channel, id: frame.id, reply: frame.reply });
          break;
        case "error":
          if (this._pending.has(frame.ref)) {
            const err = new Error(frame.message);
            err.code = frame.code;
            this._settle(frame.ref, err);
          } else {
            const channel = typeof frame.ref === "string" ? frame.ref : undefined;
            this._emit("error", { code: frame.code, message: frame.message, channel, transport: "websocket" });
          }
          break;
        default: // unsubscribed, pong: nothing to do
      }
    }

    _send(frame) {
      if (!this._ws || this._ws.readyState !== 1) return false;
      this._ws.send(JSON.stringify(frame));
      return true;
    }

    _settle(ref, err, value) {
      const p = this._pending.get(ref);
      if (!p) return;
      this._pending.delete(ref);
      clearTimeout(p.timer);
      if (err) p.reject(err);
      else p.resolve(value);
    }

    _rejectAll(err) {
      for (const ref of Array.from(this._pending.keys())) this._settle(ref, err);
    }

    // The handshake failed before `welcome`. Browsers hide the HTTP status, so ask with a
    // plain GET: 404 means no WebSocket route here (fall back now); any other answer
    // means the server is up but the upgrade does not get through; no answer at all
    // means the server is down, which another transport would not fix.
    _handshakeFailed() {
      this._stop();
      this._setState("connecting");
      const gen = this._gen;
      const probe = this._url(this._opts.url);
      probe.protocol = probe.protocol === "wss:" || probe.protocol === "https:" ? "https:" : "http:";
      const after = (blocked, missing) => {
        if (gen !== this._gen || this._closed) return; // closed or restarted meanwhile
        if (missing || (blocked && ++this._wsBlocked >= WS_BLOCKED_AFTER)) return this._fallBack();
        this._reconnect(false);
      };
      root.fetch(probe.href, { cache: "no-store" }).then(
        (res) => after(true, res.status === 404),
        () => after(false, false),
      );
    }

    // ------------------------------------------------------------ SSE
    // Read with fetch rather than EventSource: EventSource only dispatches event names
    // it has listeners for (a `chat` event would vanish), and it reconnects on its own
    // schedule instead of ours.

    async _runSse(gen) {
      const channels = this._sorted();
      if (channels.length === 0) return this._opened(); // nothing to stream until a subscribe
      const ctrl = new AbortController();
      this._abort = ctrl;
      let stalled = false;
      const timer = setTimeout(() => {
        stalled = true;
        ctrl.abort();
      }, SSE_HEAD_MS);
      const params = channels.map((c) => ["channel", c]).concat([["lastEventId", this._cursor(channels)]]);
      let retryMs = 0;
      let ended = false;
      try {
        const res = await root.fetch(this._url(this._opts.sse, params).href, {
          headers: { accept: "text/event-stream" },
          cache: "no-store",
          signal: ctrl.signal,
        });
        if (gen !== this._gen) return;
        if (res.status !== 200) return this._refused(res);
        // Not a stream: no streaming fetch in this browser, or the path reached an app
        // that answers anything with a page. Long-poll is the next best thing.
        if (!res.body || !/^text\/event-stream/.test(res.headers.get("content-type") || "")) return this._fallBack();
        await readEvents(res.body.getReader(), (block) => {
          if (gen !== this._gen) return false;
          if (block.retry !== undefined) retryMs = block.retry;
          if (this._state !== "open") {
            clearTimeout(timer);
            this._opened();
            channels.forEach((c) => this._subscribed(c));
          }
          this._onSseBlock(channels, block);
          return true;
        });
        ended = true;
      } catch (e) {
        if (gen !== this._gen) return;
        if (stalled) return this._fallBack();
      } finally {
        clearTimeout(timer);
      }
      if (gen !== this._gen) return;
      // The server ended the stream (shutdown, eviction): its last `retry:` already
      // carries a per-connection delay that spreads reconnects.
      this._reconnect(false, ended && this._state === "open" && retryMs > 0 ? retryMs : undefined);
    }

    _onSseBlock(channels, block) {
      const moved = block.id !== undefined ? this._applyCursor(channels, block.id) : -1;
      if (block.data === undefined) return; // the head: only a cursor
      const event = block.event;
      if (event === "reset") return this._reset(parseData(block.data).channels || []);
      // Presence: no id, and the data names the channel (README, "Behaviour").
      if ((event === "join" || event === "leave") && block.id === undefined) {
        return this._presenceEvent(event, parseData(block.data));
      }
      let channel;
      if (block.id !== undefined) {
        if (moved < 0) return; // a position we had already passed: a duplicate
        channel = channels[moved];
      } else if (channels.length === 1) {
        channel = channels[0];
      } else {
        // An ephemeral event (no id) on a multi-channel stream: SSE does not say which
        // channel it came from, and guessing would show it in the wrong place.
        return;
      }
      const sub = this._subs.get(channel);
      const msg = { channel, id: undefined, event, data: parseData(block.data) };
      // The stream cursor moved this channel to exactly the message's id.
      if (block.id !== undefined) msg.id = sub.pos.epoch + "." + sub.pos.seq;
      for (const entry of Array.from(sub.handlers)) safely(entry.handler, msg);
    }

    // ------------------------------------------------------------ long-poll

    async _runPoll(gen) {
      for (;;) {
        const channels = this._sorted();
        if (channels.length === 0) return this._opened();
        const cursor = this._cursor(channels);
        // With no cursor yet, ask for one at once (timeout=0); from then on each poll
        // resumes where the last ended, so nothing published between polls is lost.
        const params = channels.map((c) => ["channel", c]);
        params.push(["since", cursor], ["timeout", cursor ? POLL_TIMEOUT : "0"]);
        const ctrl = new AbortController();
        this._abort = ctrl;
        let res, body;
        try {
          res = await root.fetch(this._url(this._opts.poll, params).href, { cache: "no-store", signal: ctrl.signal });
          if (gen !== this._gen) return;
          if (res.status !== 200) return this._refused(res);
          body = await res.json();
        } catch (e) {
          if (gen === this._gen) this._reconnect(false);
          return;
        }
        if (gen !== this._gen) return;
        this._attempt = 0;
        if (this._state !== "open") {
          this._opened();
          channels.forEach((c) => this._subscribed(c));
        }
        if (body.reset) this._reset(body.reset);
        for (const m of body.messages || []) {
          if ((m.event === "join" || m.event === "leave") && m.id === undefined) this._presenceEvent(m.event, m.data);
          else this._deliver(m.channel, m.id, m.event, m.data, m.user);
        }
        this._applyCursor(channels, body.cursor); // after the messages, or they look like duplicates
        // Draining server: come back after the delay it chose for this client.
        const after = Number(res.headers.get("retry-after"));
        if (after > 0) {
          await new Promise((resolve) => (this._timer = setTimeout(resolve, after * 1000)));
          if (gen !== this._gen) return;
        }
      }
    }
  }

  // Whether the connection should get its own publishes on a channel: echo is one setting
  // per channel on the server, so it is off only when every subscription there says so.
  function echoOf(sub) {
    for (const entry of sub.handlers) if (entry.echo) return true;
    return false;
  }

  // SSE `data:` is compact JSON, except that a JSON string is sent as its raw text:
  // anything that does not parse is that text.
  function parseData(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return text;
    }
  }

  // Reads an event stream, calling `onBlock({id?, event?, data?, retry?})` per block
  // until the stream ends or `onBlock` returns false. sidewire ends lines with "\n".
  async function readEvents(reader, onBlock) {
    const decoder = new TextDecoder();
    let buffer = "";
    let block = {};
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line === "") {
          if (Object.keys(block).length && !onBlock(block)) return reader.cancel();
          block = {};
          continue;
        }
        if (line[0] === ":") continue; // heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") block.data = block.data === undefined ? value : block.data + "\n" + value;
        else if (field === "id" || field === "event") block[field] = value;
        else if (field === "retry" && /^\d+$/.test(value)) block.retry = Number(value);
      }
    }
  }

  const api = { Client, version: "1" };
  root.Sidewire = api;
  if (typeof module === "object" && module.exports) module.exports = api;
})(typeof self !== "undefined" ? self : this);
