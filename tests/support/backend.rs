//! The application backend of SPEC §7, faked: `POST /realtime/auth` answers from a
//! per-token table, `POST /realtime/events` checks `X-Sidewire-Signature` and answers
//! through a responder the test chooses. Every call is recorded with its JSON body, so
//! tests assert what sidewire sent and count how often it asked.
//!
//! Plus the clients these tests need beyond `ws.rs`/`sse.rs`: a WebSocket handshake with
//! extra headers (credentials, `Origin`), a close frame with its reason, a stalled
//! WebSocket with a token, and the admin `GET /presence`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::realtime::{Refusal, Ws, eventually, within};
use super::{Body, FakeBackend, TestServer, full, http};

pub const AUTH: &str = "/realtime/auth";
pub const EVENTS: &str = "/realtime/events";
/// The webhook secret every test config uses.
pub const SECRET: &str = "whsec-test";
/// Oldest signature timestamp accepted (a real backend refuses replays).
const SIGNATURE_AGE: u64 = 300;
/// Receive buffer of a stalled client socket: small, so its queue overflows quickly.
const STALLED_RCVBUF: u32 = 4096;

/// How the auth endpoint answers one token.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// 200 with this JSON body.
    Allow(Value),
    /// This status, with an empty JSON object as body.
    Status(u16),
    /// Never answers (the connection stays open).
    Hang,
}

/// One auth call as the backend received it.
#[derive(Debug, Clone)]
pub struct AuthCall {
    pub headers: HeaderMap,
    pub body: Value,
}

/// One webhook POST as the backend received it.
#[derive(Debug, Clone)]
pub struct Post {
    pub headers: HeaderMap,
    pub body: Value,
    /// Whether `X-Sidewire-Signature` is a fresh, valid HMAC of the body.
    pub signed: bool,
}

impl Post {
    /// The events of this POST: the body itself, or its items when it is a batch.
    pub fn events(&self) -> Vec<Value> {
        match &self.body {
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        }
    }
}

/// A point requests wait at until the test opens it.
#[derive(Clone)]
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// How the events endpoint answers one POST.
pub struct EventReply {
    pub status: u16,
    pub body: Value,
    /// Held until this gate opens.
    pub hold: Option<Gate>,
}

impl EventReply {
    pub fn ok(body: Value) -> Self {
        Self { status: 200, body, hold: None }
    }

    pub fn status(status: u16) -> Self {
        Self { status, body: json!({}), hold: None }
    }
}

/// Chooses the answer to a webhook POST from its body and its index (0 = first POST).
pub type Responder = Arc<dyn Fn(&Value, usize) -> EventReply + Send + Sync>;

struct Shared {
    verdicts: Mutex<HashMap<String, Verdict>>,
    auth_gate: Mutex<Option<Gate>>,
    auth_calls: Mutex<Vec<AuthCall>>,
    posts: Mutex<Vec<Post>>,
    responder: Mutex<Responder>,
}

/// The fake backend; tokens not in its table are refused with 401.
pub struct Backend {
    pub fake: FakeBackend,
    shared: Arc<Shared>,
}

impl Backend {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            verdicts: Mutex::default(),
            auth_gate: Mutex::default(),
            auth_calls: Mutex::default(),
            posts: Mutex::default(),
            responder: Mutex::new(Arc::new(|_: &Value, _: usize| EventReply::ok(json!({})))),
        });
        let s = Arc::clone(&shared);
        let fake = FakeBackend::start(move |req| handle(Arc::clone(&s), req)).await;
        Self { fake, shared }
    }

    pub fn url(&self) -> String {
        self.fake.url()
    }

    /// `token` is `user`, allowed on `channels`, with `{"name": user}` as info.
    pub fn allow(&self, token: &str, user: &str, channels: &[&str]) {
        self.set(token, Verdict::Allow(json!({ "user": user, "channels": channels, "info": { "name": user } })));
    }

    pub fn set(&self, token: &str, verdict: Verdict) {
        self.shared.verdicts.lock().unwrap().insert(token.to_owned(), verdict);
    }

    /// From now on auth answers wait until the returned gate opens.
    pub fn hold_auth(&self) -> Gate {
        let gate = Gate::new();
        *self.shared.auth_gate.lock().unwrap() = Some(gate.clone());
        gate
    }

    pub fn auth_calls(&self) -> Vec<AuthCall> {
        self.shared.auth_calls.lock().unwrap().clone()
    }

    pub fn auth_count(&self) -> usize {
        self.shared.auth_calls.lock().unwrap().len()
    }

    /// The last auth call, which must exist.
    pub fn last_auth(&self) -> AuthCall {
        self.auth_calls().pop().expect("the backend was never asked")
    }

    pub fn respond(&self, f: impl Fn(&Value, usize) -> EventReply + Send + Sync + 'static) {
        *self.shared.responder.lock().unwrap() = Arc::new(f);
    }

    pub fn posts(&self) -> Vec<Post> {
        self.shared.posts.lock().unwrap().clone()
    }

    /// Polls until at least `n` webhook POSTs arrived; returns them all.
    pub async fn wait_posts(&self, n: usize) -> Vec<Post> {
        eventually(&format!("{n} webhook POSTs"), || async {
            let posts = self.posts();
            (posts.len() >= n).then_some(posts)
        })
        .await
    }

    /// Every event received so far, batches flattened, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.posts().iter().flat_map(Post::events).collect()
    }

    /// Polls until an event satisfying `pred` arrived; returns it.
    pub async fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || async { self.events().into_iter().find(|e| pred(e)) }).await
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    match path.as_str() {
        AUTH => auth(&shared, headers, &bytes).await,
        EVENTS => events(&shared, headers, &bytes).await,
        _ => answer(404, &json!({ "error": "not a backend endpoint" })),
    }
}

fn answer(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

async fn auth(shared: &Shared, headers: HeaderMap, bytes: &[u8]) -> Response<Body> {
    let body: Value = serde_json::from_slice(bytes).expect("the auth call carries JSON");
    let token = body["token"].as_str().map(str::to_owned);
    shared.auth_calls.lock().unwrap().push(AuthCall { headers, body });
    let gate = shared.auth_gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        gate.wait().await;
    }
    let verdict = token.and_then(|t| shared.verdicts.lock().unwrap().get(&t).cloned());
    match verdict.unwrap_or(Verdict::Status(401)) {
        Verdict::Allow(v) => answer(200, &v),
        Verdict::Status(s) => answer(s, &json!({})),
        Verdict::Hang => std::future::pending().await,
    }
}

async fn events(shared: &Shared, headers: HeaderMap, bytes: &[u8]) -> Response<Body> {
    let body: Value = serde_json::from_slice(bytes).expect("a webhook carries JSON");
    let sig = headers.get("x-sidewire-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let signed = verify(SECRET, sig.as_deref(), bytes);
    let index = {
        let mut posts = shared.posts.lock().unwrap();
        posts.push(Post { headers, body: body.clone(), signed });
        posts.len() - 1
    };
    let responder = Arc::clone(&shared.responder.lock().unwrap());
    let reply = responder(&body, index);
    if let Some(gate) = reply.hold {
        gate.wait().await;
    }
    answer(reply.status, &reply.body)
}

/// Checks `t=<unix>,v1=<hex>` as a backend would: HMAC-SHA256 of `"<t>.<body>"`, and a
/// timestamp no older than [`SIGNATURE_AGE`].
pub fn verify(secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    let Some(header) = header else { return false };
    let field = |name: &str| header.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    let (Some(t), Some(v1)) = (field("t"), field("v1")) else { return false };
    let Ok(at) = t.parse::<u64>() else { return false };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if now.abs_diff(at) > SIGNATURE_AGE || v1.len() % 2 != 0 {
        return false;
    }
    let Ok(tag) =
        (0..v1.len()).step_by(2).map(|i| u8::from_str_radix(&v1[i..i + 2], 16)).collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    ring::hmac::verify(&key, &signed, &tag).is_ok()
}

// ---------------------------------------------------------------- clients

/// Opens a WebSocket on `path` with extra request headers; no frame read yet.
pub async fn ws_with(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Result<Ws, Refusal> {
    ws_at(server.public, path, headers).await
}

/// [`ws_with`] for a sidewire at `addr` (e.g. the real binary).
pub async fn ws_at(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Ws, Refusal> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    match within("websocket handshake", tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(Refusal::Status(res.status().as_u16())),
        Err(e) => Err(Refusal::Other(e)),
    }
}

/// Reads until the server's close frame (skipping data frames); returns code and reason.
pub async fn close_of<S>(ws: &mut WebSocketStream<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within("a close frame", ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code.into(), frame.reason.as_str().to_owned()),
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

/// A WebSocket on `path` from a socket with a tiny receive buffer, its `welcome` read.
/// The caller then stops reading so the server's queue for it overflows.
pub async fn ws_stalled(server: &TestServer, path: &str) -> WebSocketStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    // Before connect, so the advertised window is small from the first segment.
    socket.set_recv_buffer_size(STALLED_RCVBUF).unwrap();
    let tcp = within("tcp connect", socket.connect(server.public)).await.unwrap();
    let url = format!("ws://{}{path}", server.public);
    let (mut ws, _) = within("websocket handshake", tokio_tungstenite::client_async(url, tcp)).await.unwrap();
    super::realtime::expect_type(&mut ws, "welcome").await;
    ws
}

/// `GET /presence?channel=` on the admin listener: status and JSON body.
pub async fn presence(server: &TestServer, channel: &str) -> (u16, Value) {
    let url = server.admin_url(&format!("/presence?channel={channel}"));
    let res = within("GET /presence", http().get(url).send()).await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// `{user: connections}` of a presence channel, from the admin endpoint.
pub async fn counts(server: &TestServer, channel: &str) -> Vec<(String, u64)> {
    let (status, body) = presence(server, channel).await;
    assert_eq!(status, 200, "{body}");
    let users = body["users"].as_array().unwrap_or_else(|| panic!("no users in {body}"));
    users.iter().map(|u| (u["user"].as_str().unwrap().to_owned(), u["connections"].as_u64().unwrap())).collect()
}

/// Polls the admin presence of `channel` until it is exactly `want`.
pub async fn wait_counts(server: &TestServer, channel: &str, want: &[(&str, u64)]) {
    let want: Vec<(String, u64)> = want.iter().map(|(u, n)| ((*u).to_owned(), *n)).collect();
    eventually(&format!("presence of {channel} to be {want:?}"), || async {
        (counts(server, channel).await == want).then_some(())
    })
    .await;
}

/// An address on which nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Polls `f` until it holds, for conditions another task makes true.
pub async fn until(what: &str, f: impl Fn() -> bool) {
    eventually(what, || async { f().then_some(()) }).await;
}
