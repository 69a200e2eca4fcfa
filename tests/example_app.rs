//! The example chat app (`examples/chat/app.py`, a real `python3` child) behind a real
//! sidewire running `examples/chat/sidewire.yaml`, used by two headless Chromiums signed
//! in as two users through the app's own login form (issue 10 §1): chat arrives, typing
//! shows for the other user only, presence lists both with display names and drops one
//! on close, a mention notification reaches only its user, and after sidewire restarts
//! both pages reconnect and show the messages posted meanwhile, none twice.
//!
//! With `SIDEWIRE_SCREENSHOTS=docs` the test also saves `docs/demo-alice.png` and
//! `docs/demo-bob.png` (the value is a directory, relative to the repository).
//!
//! Needs `python3` and Debian's `chromium` (`apt-get install -y chromium`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use sidewire::Config;

use support::TestServer;
use support::browser::{Chromium, Devtools};

const SECRET: &str = "example-app-test-secret";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `examples/chat/sidewire.yaml` with the app at `app`, every listener on `addrs`.
fn chat_config(app: &str, public: SocketAddr, admin: SocketAddr) -> Config {
    let path = Path::new(ROOT).join("examples/chat/sidewire.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("http://127.0.0.1:3000"), "the example config names the app's URL");
    let text = text.replace("http://127.0.0.1:3000", app);
    let env = |name: &str| (name == "SIDEWIRE_SECRET").then(|| SECRET.to_owned());
    let mut config = Config::from_yaml(&text, &env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config.listen = public;
    config.admin.listen = admin;
    config
}

const FORM: &str = "application/x-www-form-urlencoded";

/// `key=value`, form-encoded.
fn form_value(key: &str, value: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!("{}={}", enc(key), enc(value))
}

/// The example app as a `python3` child on a free port, publishing to `admin`; killed on drop.
struct ChatApp {
    child: Child,
    url: String,
    log: tempfile::NamedTempFile,
}

impl ChatApp {
    async fn start(admin: SocketAddr) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("python3")
            .arg(Path::new(ROOT).join("examples/chat/app.py"))
            .envs([("CHAT_HOST", "127.0.0.1"), ("CHAT_PORT", "0"), ("CHAT_QUIET", "1"), ("SIDEWIRE_SECRET", SECRET)])
            .env("SIDEWIRE_ADMIN", format!("http://{admin}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("the example app needs python3 on PATH: {e}"));
        // Its first line names the port it got.
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| {
                panic!("the app did not start: {line:?}\n{}", std::fs::read_to_string(log.path()).unwrap())
            })
            .to_owned();
        Self { child, url, log }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Signs `user` in on the app itself (not through sidewire); returns the session
    /// cookie (`name=value`).
    async fn sign_in(&self, user: &str) -> String {
        support::install_crypto();
        let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let login = http
            .post(format!("{}/login", self.url))
            .header("content-type", FORM)
            .body(form_value("user", user))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 303, "{}", self.stderr());
        login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
    }

    /// Signs `user` in on the app itself and posts `text` to `room`.
    async fn post_directly(&self, user: &str, room: &str, text: &str) {
        let cookie = self.sign_in(user).await;
        let http = support::http();
        let res = http
            .post(format!("{}/rooms/{room}/messages", self.url))
            .header("cookie", cookie)
            .header("accept", "application/json")
            .header("content-type", FORM)
            .body(form_value("text", text))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", self.stderr());
    }
}

impl Drop for ChatApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One signed-in user's browser on the app, through sidewire.
struct User {
    tools: Devtools,
    browser: Chromium,
}

impl User {
    /// Opens the app, signs in with the login form as `user` named `name`, and waits for
    /// the room page's client to be open.
    async fn sign_in(public: SocketAddr, user: &str, name: &str) -> Self {
        let (browser, mut tools) = Chromium::devtools(&format!("http://{public}/")).await;
        let login = "location.pathname === '/login' && document.forms.length > 0";
        tools.until("the login form", login, |v| *v == json!(true)).await;
        let fill = format!(
            "document.querySelector('[name=user]').value = {}; document.querySelector('[name=name]').value = {}; \
             document.forms[0].submit(); true",
            json!(user),
            json!(name)
        );
        tools.eval(&fill).await.unwrap();
        let mut me = Self { tools, browser };
        me.until(
            "the room page, connected",
            "location.pathname + ' ' + document.getElementById('status').textContent",
            |v| *v == json!("/rooms/general open (websocket)"),
        )
        .await;
        // Everything the typing line ever shows, kept by the page for the test.
        me.eval(
            "(() => { window.typingSeen = []; const t = document.getElementById('typing'); \
             new MutationObserver(() => { if (t.textContent) typingSeen.push(t.textContent); }) \
               .observe(t, { childList: true, characterData: true, subtree: true }); return true; })()",
        )
        .await;
        me
    }

    async fn eval(&mut self, expression: &str) -> Value {
        match self.tools.eval(expression).await {
            Ok(v) => v,
            Err(e) => panic!("{expression}: {e}\n{}", self.browser.log_tail()),
        }
    }

    async fn until(&mut self, what: &str, expression: &str, want: impl Fn(&Value) -> bool) -> Value {
        self.tools.until(what, expression, want).await
    }

    /// Waits until the texts of the elements matching `selector` are `want`.
    async fn until_texts(&mut self, what: &str, selector: &str, want: &[&str]) {
        let expr = format!("[...document.querySelectorAll({})].map((e) => e.textContent)", json!(selector));
        self.until(what, &expr, |v| *v == json!(want)).await;
    }

    /// Types `text` in the message box (the page sends `typing`).
    async fn type_text(&mut self, text: &str) {
        let expr = format!(
            "(() => {{ const i = document.querySelector('#send input'); i.value = {}; i.dispatchEvent(new Event('input')); return true; }})()",
            json!(text)
        );
        self.eval(&expr).await;
    }

    async fn send(&mut self, text: &str) {
        self.type_text(text).await;
        self.eval("document.getElementById('send').requestSubmit(); true").await;
    }

    /// `[id, text]` of every message shown, in page order.
    async fn messages(&mut self) -> Value {
        self.eval("[...document.querySelectorAll('#messages li')].map((li) => [Number(li.dataset.id), li.textContent])")
            .await
    }

    async fn screenshot(&mut self, name: &str) {
        if let Ok(dir) = std::env::var("SIDEWIRE_SCREENSHOTS") {
            let dir = PathBuf::from(ROOT).join(dir);
            self.tools.screenshot(&dir.join(name)).await;
        }
    }
}

/// sidewire first (its admin address is what the app publishes to), then the app, then
/// sidewire is pointed at the app.
async fn start() -> (TestServer, ChatApp) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_config(chat_config("http://127.0.0.1:9", any, any)).await;
    let app = ChatApp::start(server.admin).await;
    server.handle.reload(chat_config(&app.url, server.public, server.admin)).await.unwrap();
    (server, app)
}

#[tokio::test]
async fn two_users_chat_through_sidewire_in_front_of_the_example_app() {
    let (server, app) = start().await;
    let (public, admin) = (server.public, server.admin);

    let mut alice = User::sign_in(public, "alice", "Alice Liddell").await;
    let mut bob = User::sign_in(public, "bob", "Bob Builder").await;
    let both = ["Alice Liddell", "Bob Builder"];
    alice.until_texts("alice's presence list: both", "#presence li", &both).await;
    bob.until_texts("bob's presence list: both", "#presence li", &both).await;

    // Typing reaches the other user only (echo: false), then the message itself.
    bob.type_text("hey @al").await;
    alice.until_texts("bob typing, at alice's", "#typing", &["Bob Builder is typing…"]).await;
    bob.send("hey @alice").await;
    alice.until("bob's message", "document.querySelectorAll('#messages li').length", |v| *v == json!(1)).await;
    alice.type_text("hello @b").await;
    bob.until_texts("alice typing, at bob's", "#typing", &["Alice Liddell is typing…"]).await;
    alice.send("hello @bob").await;
    let chat = json!([[1, "Bob Builder hey @alice"], [2, "Alice Liddell hello @bob"]]);
    for user in [&mut alice, &mut bob] {
        user.until("both messages", "[...document.querySelectorAll('#messages li')].length", |v| *v == json!(2)).await;
        assert_eq!(user.messages().await, chat);
    }

    // Each mention notifies its user only.
    alice
        .until_texts(
            "alice's notification",
            "#notifications li",
            &["Bob Builder mentioned you in #general: hey @alice"],
        )
        .await;
    bob.until_texts(
        "bob's notification",
        "#notifications li",
        &["Alice Liddell mentioned you in #general: hello @bob"],
    )
    .await;

    // sidewire restarts; meanwhile carol posts on the app directly (its publish fails:
    // sidewire is down). Both pages reconnect, get `reset` (a memory broker's history
    // does not survive), refetch, and show carol's messages once.
    server.stop().await;
    app.post_directly("carol", "general", "while you were away").await;
    app.post_directly("carol", "general", "and again").await;
    let server = TestServer::start_config(chat_config(&app.url, public, admin)).await;
    let mut chat = chat.as_array().unwrap().clone();
    chat.extend([json!([3, "Carol while you were away"]), json!([4, "Carol and again"])]);
    for user in [&mut alice, &mut bob] {
        user.until("the messages posted during the restart", "document.querySelectorAll('#messages li').length", |v| {
            *v == json!(4)
        })
        .await;
        user.until("open again", "document.getElementById('status').textContent", |v| *v == json!("open (websocket)"))
            .await;
        user.until_texts("presence after the restart", "#presence li", &both).await;
    }
    // And live again: one more, once.
    app.post_directly("carol", "general", "welcome back").await;
    chat.push(json!([5, "Carol welcome back"]));
    for user in [&mut alice, &mut bob] {
        user.until("carol's live message", "document.querySelectorAll('#messages li').length", |v| *v == json!(5))
            .await;
        assert_eq!(user.messages().await, json!(chat), "every message once, in order");
    }
    // Nobody saw their own typing; each saw the other's.
    assert_eq!(alice.eval("[...new Set(typingSeen)]").await, json!(["Bob Builder is typing…"]));
    assert_eq!(bob.eval("[...new Set(typingSeen)]").await, json!(["Alice Liddell is typing…"]));
    assert_eq!(alice.eval("document.querySelectorAll('#notifications li').length").await, json!(1));
    assert_eq!(bob.eval("document.querySelectorAll('#notifications li').length").await, json!(1));

    // Screenshots (with SIDEWIRE_SCREENSHOTS): each page while the other one types.
    bob.type_text("see you @alice").await;
    alice.until_texts("bob typing again", "#typing", &["Bob Builder is typing…"]).await;
    alice.screenshot("demo-alice.png").await;
    alice.type_text("bye!").await;
    bob.until_texts("alice typing again", "#typing", &["Alice Liddell is typing…"]).await;
    bob.screenshot("demo-bob.png").await;

    // bob closes his browser: alice's list drops him.
    drop(bob);
    alice.until_texts("alice's presence list without bob", "#presence li", &["Alice Liddell"]).await;

    // The moderated room: the page publishes through sidewire, the app's webhook decides.
    alice.eval("location.href = '/rooms/moderated'; true").await;
    alice
        .until(
            "the moderated room, connected",
            "location.pathname + ' ' + document.getElementById('status').textContent",
            |v| *v == json!("/rooms/moderated open (websocket)"),
        )
        .await;
    alice.until_texts("alice alone here", "#presence li", &["Alice Liddell"]).await;
    alice.send("hello moderators").await;
    alice.until_texts("the accepted message", "#messages li", &["Alice Liddell hello moderators"]).await;
    alice.send("cheap spam here").await;
    alice.until_texts("the refusal", "#error", &["not sent: refused by the moderator"]).await;
    assert_eq!(alice.messages().await, json!([[6, "Alice Liddell hello moderators"]]));
    assert!(app.stderr().is_empty(), "the app wrote to stderr:\n{}", app.stderr());
    server.stop().await;
}

/// A WebSocket to sidewire's `/ws` carrying a session cookie of the app.
struct Ws(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>);

impl Ws {
    async fn open(server: &TestServer, cookie: &str) -> (Self, Value) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/ws", server.public).into_client_request().unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut ws = Self(ws);
        let welcome = ws.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    async fn send(&mut self, frame: Value) {
        use futures_util::SinkExt;
        self.0.send(tokio_tungstenite::tungstenite::Message::text(frame.to_string())).await.unwrap();
    }

    /// The next JSON frame; pings and presence `join`/`leave` (the browser test's part)
    /// are skipped.
    async fn next(&mut self) -> Value {
        use futures_util::StreamExt;
        loop {
            let frame = tokio::time::timeout(support::browser::DEADLINE, self.0.next()).await.expect("a frame in time");
            if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = frame {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] != "join" && frame["type"] != "leave" {
                    return frame;
                }
                continue;
            }
            assert!(matches!(frame, Some(Ok(_))), "the WebSocket ended: {frame:?}");
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send(json!({ "type": "subscribe", "channel": channel })).await;
        let reply = self.next().await;
        assert_eq!((&reply["type"], &reply["channel"]), (&json!("subscribed"), &json!(channel)), "{reply}");
    }

    /// Nothing is queued for this connection: a ping's pong is the next frame.
    async fn assert_quiet(&mut self) {
        self.send(json!({ "type": "ping", "ref": "quiet" })).await;
        assert_eq!(self.next().await, json!({ "type": "pong", "ref": "quiet" }));
    }
}

/// `room:moderated` is `client_publish: backend`: sidewire signs each client publish to
/// the app's webhook, which checks the signature, routes on the event name (chat is
/// moderated and stored, typing passed on to everyone but the typist) and refuses banned
/// words; a webhook with a wrong signature is refused by the app.
#[tokio::test]
async fn the_moderated_room_goes_through_the_apps_signed_webhook() {
    let (server, app) = start().await;
    let (mut alice, _) = Ws::open(&server, &app.sign_in("alice").await).await;
    let (mut bob, _) = Ws::open(&server, &app.sign_in("bob").await).await;
    alice.subscribe("room:moderated").await;
    bob.subscribe("room:moderated").await;
    bob.subscribe("user:bob").await;

    // typing: bob gets it, with who is typing; alice (the typist) does not.
    alice
        .send(json!({ "type": "publish", "channel": "room:moderated", "event": "typing", "data": {}, "ref": 1 }))
        .await;
    let reply = alice.next().await;
    assert_eq!((&reply["type"], &reply["ref"]), (&json!("published"), &json!(1)), "{reply}");
    let typing = bob.next().await;
    assert_eq!((&typing["event"], &typing["data"]), (&json!("typing"), &json!({ "user": "alice", "name": "Alice" })));
    alice.assert_quiet().await;

    // chat: checked, stored by the app (its id), published to the room, and a mention to bob.
    let chat = json!({ "type": "publish", "channel": "room:moderated", "event": "chat", "data": { "text": "hi @bob" }, "ref": 2 });
    alice.send(chat).await;
    // Her own copy and the reply to her publish, in either order.
    let (a, b) = (alice.next().await, alice.next().await);
    let (reply, own) = if a["type"] == "published" { (a, b) } else { (b, a) };
    assert_eq!((&reply["type"], &reply["reply"]), (&json!("published"), &json!({ "ok": true })), "{reply}");
    assert_eq!(own["id"], reply["id"], "{own}");
    let want = json!({ "id": 1, "room": "moderated", "user": "alice", "name": "Alice", "text": "hi @bob" });
    for m in [&own, &bob.next().await] {
        let data: serde_json::Map<String, Value> = m["data"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "ts")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            (&m["channel"], &m["event"], &Value::Object(data)),
            (&json!("room:moderated"), &json!("chat"), &want)
        );
    }
    let mention = bob.next().await;
    assert_eq!(
        (&mention["channel"], &mention["event"], &mention["data"]["text"]),
        (&json!("user:bob"), &json!("mention"), &json!("hi @bob"))
    );

    // A banned word: the app answers 422, the client gets `rejected`, nobody gets a message.
    let spam = json!({ "type": "publish", "channel": "room:moderated", "event": "chat", "data": { "text": "buy SPAM" }, "ref": 3 });
    alice.send(spam).await;
    let refused = alice.next().await;
    assert_eq!(
        (&refused["type"], &refused["code"], &refused["ref"]),
        (&json!("error"), &json!("rejected"), &json!(3)),
        "{refused}"
    );
    alice.assert_quiet().await;
    bob.assert_quiet().await;
    let stored: Value = support::http()
        .get(format!("{}/rooms/moderated/messages", app.url))
        .header("cookie", app.sign_in("carol").await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["messages"].as_array().map(Vec::len), Some(1), "{stored}");

    // The app checks the signature: a forged webhook is refused.
    let forged = json!({ "type": "message", "connection": "x", "user": "mallory", "info": {}, "channel": "room:moderated", "event": "chat", "data": { "text": "hi" } });
    let res = support::http()
        .post(format!("{}/realtime/events", app.url))
        .header("x-sidewire-signature", format!("t={},v1={}", 0, "00".repeat(32)))
        .body(forged.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(app.stderr().is_empty(), "the app wrote to stderr:\n{}", app.stderr());
    server.stop().await;
}

/// `config.docker.yaml` (docker-compose.yml's sidewire) passes `sidewire --check` with
/// `SIDEWIRE_SECRET` set and names it when it is not; it serves the example app like
/// `examples/chat/sidewire.yaml` does (same auth, webhooks, routes and channels), on
/// 0.0.0.0 with the compose service `app` as backend.
#[test]
fn the_docker_config_checks_and_matches_the_example() {
    let check = |env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidewire"));
        cmd.args(["--check", "--config", "config.docker.yaml"]).current_dir(ROOT).env_remove("SIDEWIRE_SECRET");
        if let Some(secret) = env {
            cmd.env("SIDEWIRE_SECRET", secret);
        }
        cmd.output().unwrap()
    };
    let ok = check(Some("s3cret"));
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let missing = check(None);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("admin.secret") && stderr.contains("SIDEWIRE_SECRET"), "{stderr}");

    let env = |name: &str| (name == "SIDEWIRE_SECRET").then(|| "s3cret".to_owned());
    let load = |path: &str| Config::load(&Path::new(ROOT).join(path), &env).unwrap();
    let (docker, example) = (load("config.docker.yaml"), load("examples/chat/sidewire.yaml"));
    assert_eq!(docker.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(docker.admin.listen.to_string(), "0.0.0.0:9090");
    assert_eq!(docker.backend.origin.as_str(), "app:3000");
    assert_eq!((&docker.auth, &docker.webhooks), (&example.auth, &example.webhooks));
    assert_eq!((&docker.routes, &docker.channels), (&example.routes, &example.channels));

    let compose = std::fs::read_to_string(Path::new(ROOT).join("docker-compose.yml")).unwrap();
    for needed in ["examples/chat", "CHAT_HOST: \"0.0.0.0\"", "CHAT_PORT: \"3000\"", "config.docker.yaml", "build: ."] {
        assert!(compose.contains(needed), "docker-compose.yml lacks {needed}");
    }
}
