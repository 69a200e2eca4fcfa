//! A real browser for the client.js tests: headless Debian `chromium` opening a test page
//! that a [`FakeBackend`] serves through sidewire's pass-through (so the page, client.js
//! and the realtime routes share one origin). The page reports every client event with
//! `POST /report`, which reaches the backend and lands in [`Page::until`]; a [`Relay`]
//! between the browser and sidewire lets a test cut connections as a network would
//! (the reports then go to sidewire directly, so the cut does not lose them).
//!
//! Rooms ([`ROOM_PAGE`], [`Page::room`]): several browsers at once, each signed in with a
//! token the fake app's auth endpoint accepts, each reporting to its own queue, and each
//! driven by the test through sidewire itself: commands published on `ctl:<user>`, a
//! channel the page subscribes to.
//!
//! Nothing here sleeps until something is probably ready: every wait is for a report or
//! a socket, bounded by [`DEADLINE`]. [`Chromium`] (`tests/support/browser.rs`) is killed,
//! its whole process group, on drop, so a failing test leaves no browser behind.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

pub use crate::support::browser::{Chromium, DEADLINE};
use crate::support::{FakeBackend, full};

/// One browser test at a time: several Chromiums on two cores starve each other.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test page: loads client.js from sidewire, subscribes to `?channels=a,b` and
/// reports, in order (one fetch at a time), everything the client tells it, to
/// `/report` or, with `?report=<origin>`, to that origin (a fire-and-forget `no-cors`
/// POST: the body arrives, the answer is opaque).
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>sidewire client.js test</title>
<script src="/_sidewire/client.js"></script>
<script>
  "use strict";
  const params = new URLSearchParams(location.search);
  const to = (params.get("report") || "") + "/report";
  let chain = Promise.resolve();
  function report(kind, body) {
    const text = JSON.stringify(Object.assign({ kind }, body));
    chain = chain.then(() => fetch(to, { method: "POST", body: text, mode: "no-cors" })).catch(() => {});
  }
  addEventListener("error", (e) => report("page_error", { message: String(e.message) }));
  addEventListener("unhandledrejection", (e) => report("page_error", { message: String(e.reason) }));
  const client = new Sidewire.Client({ url: "/ws", sse: "/events", poll: "/poll" });
  client.on("state", (s) => report("state", s));
  client.on("subscribed", (s) => report("subscribed", s));
  client.on("reset", (r) => report("reset", r));
  client.on("error", (e) => report("error", e));
  for (const channel of params.get("channels").split(",")) {
    client.subscribe(channel, (m) => report("message", m));
  }
  if (params.has("publish")) {
    client.on("subscribed", () => {
      client.publish("news", { from: "page" }, "chat").then(
        (r) => report("published", r),
        (e) => report("page_error", { message: "publish: " + e.message }),
      );
    });
  }
</script>
"#;

/// A room member's page: signs in with `?token=<user>`, subscribes to `?channel=` (with
/// `echo: false` when `?echo=0`, and a presence callback) and to its control channel
/// `ctl:<user>`, and reports to `/report?page=<page>` (on the `?report=` origin when
/// given, as [`PAGE`] does). Every report carries what `client.user` /
/// `client.connection` say at that moment (`me`, `conn`).
///
/// Commands (the data of a message on `ctl:<user>`): `{"op": "publish", "data", "event"}`
/// publishes on the room (reports `published`), `{"op": "presence"}` reports the answer
/// of `client.presence(room)` as `presence_reply`.
pub const ROOM_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>sidewire client.js room test</title>
<script src="/_sidewire/client.js"></script>
<script>
  "use strict";
  const params = new URLSearchParams(location.search);
  const to = (params.get("report") || "") + "/report?page=" + encodeURIComponent(params.get("page"));
  const token = params.get("token");
  const room = params.get("channel");
  let chain = Promise.resolve();
  let client = null;
  function report(kind, body) {
    const who = client ? { me: client.user, conn: client.connection } : {};
    const text = JSON.stringify(Object.assign({ kind }, who, body));
    chain = chain.then(() => fetch(to, { method: "POST", body: text, mode: "no-cors" })).catch(() => {});
  }
  addEventListener("error", (e) => report("page_error", { message: String(e.message) }));
  addEventListener("unhandledrejection", (e) => report("page_error", { message: String(e.reason) }));
  client = new Sidewire.Client({ url: "/ws", sse: "/events", poll: "/poll", token });
  report("created", {});
  for (const event of ["state", "welcome", "subscribed", "reset", "error", "join", "leave"]) {
    client.on(event, (e) => report(event, e));
  }
  client.subscribe(room, (m) => report("message", m), {
    echo: params.get("echo") !== "0",
    presence: (p) => report("presence", { channel: p.channel, members: p.members, change: p.change,
                                          tracked: client.members(room) }),
  });
  const fail = (what) => (e) => report("page_error", { message: what + ": " + e.message + " (" + e.code + ")" });
  client.subscribe("ctl:" + token, ({ data }) => {
    if (data.op === "publish") client.publish(room, data.data, data.event).then((r) => report("published", r), fail("publish"));
    else if (data.op === "presence") client.presence(room).then((users) => report("presence_reply", { users }), fail("presence"));
    else report("page_error", { message: "unknown command " + JSON.stringify(data) });
  });
</script>
"#;

/// The fake application: serves [`PAGE`] at `/` and forwards `POST /report` bodies to
/// the test; everything else (including `/ws` when sidewire has no such route) is 404.
pub async fn app() -> (FakeBackend, mpsc::Receiver<Value>) {
    let (backend, mut queues) = app_for(1).await;
    (backend, queues.remove(0))
}

/// [`app`] for `pages` pages at once, plus [`ROOM_PAGE`] at `/room` and the auth endpoint
/// (`POST /realtime/auth`): a token is the user's name, allowed on `room:*` and its own
/// `ctl:<user>`, with `{"name": <capitalized>}` as info; no token is 401. The reports
/// of `/report?page=i` go to queue `i` (no `page`: queue 0).
pub async fn app_for(pages: usize) -> (FakeBackend, Vec<mpsc::Receiver<Value>>) {
    let (senders, queues): (Vec<_>, Vec<_>) = (0..pages).map(|_| mpsc::channel(1024)).unzip();
    let senders = Arc::new(senders);
    let backend = FakeBackend::start(move |req: Request<Incoming>| {
        let senders = Arc::clone(&senders);
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/") => html(PAGE),
                (&Method::GET, "/room") => html(ROOM_PAGE),
                (&Method::POST, "/report") => {
                    let page = req
                        .uri()
                        .query()
                        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("page=")))
                        .map_or(0, |p| p.parse::<usize>().unwrap());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let _ = senders[page].send(serde_json::from_slice(&body).unwrap()).await;
                    Response::builder().status(204).body(full("")).unwrap()
                }
                (&Method::POST, "/realtime/auth") => {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let call: Value = serde_json::from_slice(&body).unwrap();
                    match call["token"].as_str() {
                        Some(user) if !user.is_empty() => {
                            let answer = serde_json::json!({
                                "user": user,
                                "channels": ["room:*", format!("ctl:{user}")],
                                "info": { "name": display_name(user) },
                            });
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(full(answer.to_string()))
                                .unwrap()
                        }
                        _ => Response::builder().status(401).body(full("{}")).unwrap(),
                    }
                }
                _ => Response::builder().status(404).body(full("not here")).unwrap(),
            }
        }
    })
    .await;
    (backend, queues)
}

/// The display name the fake app gives `user` ("alice" → "Alice"): presence `info`.
pub fn display_name(user: &str) -> String {
    let mut chars = user.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn html(page: &'static str) -> Response<crate::support::Body> {
    Response::builder().header("content-type", "text/html; charset=utf-8").body(full(page)).unwrap()
}

/// A page under test: the browser and the stream of its reports.
pub struct Page {
    pub browser: Chromium,
    reports: mpsc::Receiver<Value>,
    /// Every report so far, for assertions and failure messages.
    pub seen: Vec<Value>,
    /// How many `message` reports [`Page::messages`] has handed out.
    taken: usize,
}

impl Page {
    /// Opens `http://{origin}/?channels={channels}{extra}`.
    pub fn open(origin: SocketAddr, reports: mpsc::Receiver<Value>, channels: &str, extra: &str) -> Self {
        let browser = Chromium::open(&format!("http://{origin}/?channels={channels}{extra}"));
        Self { browser, reports, seen: Vec::new(), taken: 0 }
    }

    /// Opens `url` (the app's [`PAGE`] with its query).
    pub fn open_url(url: &str, reports: mpsc::Receiver<Value>) -> Self {
        Self { browser: Chromium::open(url), reports, seen: Vec::new(), taken: 0 }
    }

    /// Opens [`ROOM_PAGE`] as page `page` (its reports must reach `reports`, queue `page`
    /// of [`app_for`]) for `user` on `channel`; `extra` is more query (`&echo=0`).
    pub fn room(
        origin: SocketAddr,
        reports: mpsc::Receiver<Value>,
        page: usize,
        user: &str,
        channel: &str,
        extra: &str,
    ) -> Self {
        let url = format!("http://{origin}/room?page={page}&token={user}&channel={channel}{extra}");
        Self { browser: Chromium::open(&url), reports, seen: Vec::new(), taken: 0 }
    }

    /// Reads the next report into `seen`; a page error, or no report within
    /// [`DEADLINE`], fails the test.
    async fn read(&mut self, waiting_for: &str) -> Value {
        let report = match tokio::time::timeout(DEADLINE, self.reports.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("report channel closed while waiting for {waiting_for}"),
            Err(_) => panic!("{}", self.failure(&format!("timed out waiting for {waiting_for}"))),
        };
        assert_ne!(report["kind"], "page_error", "{}", self.failure(&format!("page error {report}")));
        self.seen.push(report.clone());
        report
    }

    /// Reads reports until one satisfies `want`; returns it. Messages read on the way
    /// stay available to [`Page::messages`].
    pub async fn until(&mut self, waiting_for: &str, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let r = self.read(waiting_for).await;
            if want(&r) {
                return r;
            }
        }
    }

    /// The first report so far that satisfies `want`, or else the next one to come (for
    /// reports that may have been read while waiting for something else).
    pub async fn until_seen(&mut self, waiting_for: &str, want: impl Fn(&Value) -> bool) -> Value {
        match self.seen.iter().find(|r| want(r)) {
            Some(r) => r.clone(),
            None => self.until(waiting_for, want).await,
        }
    }

    /// Waits for `state: open` on `transport`, then for `subscribed` on every channel.
    pub async fn until_subscribed(&mut self, transport: &str, channels: &[&str]) {
        self.until(&format!("state open over {transport}"), |r| {
            r["kind"] == "state" && r["state"] == "open" && r["transport"] == transport
        })
        .await;
        for c in channels {
            self.until(&format!("subscribed to {c}"), |r| r["kind"] == "subscribed" && r["channel"] == *c).await;
        }
    }

    /// The next `n` messages the page received, in the order it received them.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        while self.received().len() < self.taken + n {
            let what = format!("message {} of {n}", self.received().len() - self.taken + 1);
            self.read(&what).await;
        }
        let out = self.received()[self.taken..self.taken + n].to_vec();
        self.taken += n;
        out
    }

    /// Every `message` report so far.
    pub fn received(&self) -> Vec<Value> {
        self.seen.iter().filter(|r| r["kind"] == "message").cloned().collect()
    }

    /// Every report of `kind` so far.
    pub fn reports(&self, kind: &str) -> Vec<Value> {
        self.seen.iter().filter(|r| r["kind"] == kind).cloned().collect()
    }

    pub fn failure(&self, what: &str) -> String {
        format!("{what}\nreports so far: {:#?}\nchromium log tail:\n{}", self.seen, self.browser.log_tail())
    }
}

/// A TCP relay in front of sidewire that can drop every connection through it and
/// refuse new ones for a while, as a flaky network would.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    refusing: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (list, refuse) = (Arc::clone(&open), Arc::clone(&refusing));
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    continue; // dropped at once: the browser sees the connection fail
                }
                let pipe = tokio::spawn(pipe(inbound, upstream));
                let mut list = list.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(pipe.abort_handle());
            }
        });
        Self { addr, open, refusing, task }
    }

    /// Drops every open connection and refuses new ones until [`Relay::heal`]; returns
    /// how many were open.
    pub fn cut(&self) -> usize {
        self.refusing.store(true, Ordering::SeqCst);
        let open: Vec<AbortHandle> = std::mem::take(&mut *self.open.lock().unwrap());
        let n = open.iter().filter(|h| !h.is_finished()).count();
        for h in open {
            h.abort();
        }
        n
    }

    pub fn heal(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Relays one connection until either side closes; aborting the task closes both
/// sockets, which the browser sees as the connection dying.
async fn pipe(mut inbound: TcpStream, upstream: SocketAddr) {
    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}
