//! Realtime clients for integration tests: WebSocket (tokio-tungstenite), SSE and
//! long-poll (reqwest, streaming), the admin publish API and `/metrics`.
//!
//! Every wait has a deadline ([`DEADLINE`]) and fails the test with what it waited for;
//! nothing sleeps until something is "probably ready". Conditions that only show up in
//! another task (a slot freed, a gauge back to 0) are polled with [`eventually`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::TestServer;

/// Longest any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two checks of a polled condition (not a readiness guess).
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Receive buffer of a "stalled" client socket: small, so the server's queue for it
/// overflows after kilobytes instead of the megabytes loopback autotuning allows.
const STALLED_RCVBUF: u32 = 4096;

/// A config with anonymous clients and one catch-all public channel policy that lets
/// clients publish, plus `extra` top-level YAML (e.g. a `limits:` block).
pub fn yaml(extra: &str) -> String {
    format!(
        "auth: {{ anonymous: true }}\n\
         channels:\n  - {{ match: \"*\", public: true, client_publish: broadcast }}\n\
         {extra}\n"
    )
}

/// Polls `check` until it yields `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `fut`, or a test failure naming `what` after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ---------------------------------------------------------------- WebSocket

pub type Ws = WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Why a WebSocket handshake did not succeed.
#[derive(Debug)]
pub enum Refusal {
    /// The server answered the upgrade with this status instead of 101.
    Status(u16),
    Other(WsError),
}

fn ws_url(server: &TestServer, path: &str) -> String {
    format!("ws://{}{path}", server.public)
}

/// Opens a WebSocket on `path`, or reports the refusal.
pub async fn ws_try(server: &TestServer, path: &str) -> Result<Ws, Refusal> {
    let attempt = within("websocket handshake", tokio_tungstenite::connect_async(ws_url(server, path)));
    match attempt.await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(res)) => Err(Refusal::Status(res.status().as_u16())),
        Err(e) => Err(Refusal::Other(e)),
    }
}

/// Opens a WebSocket on `/ws` and consumes its `welcome`.
pub async fn ws(server: &TestServer) -> Ws {
    let mut ws = ws_try(server, "/ws").await.unwrap_or_else(|r| panic!("websocket refused: {r:?}"));
    expect_type(&mut ws, "welcome").await;
    ws
}

/// A WebSocket from a specific local address (per-IP limits; any 127/8 address works
/// on loopback), or from a socket with a tiny receive buffer when `stalled`.
pub async fn ws_raw(
    server: &TestServer,
    local: Option<IpAddr>,
    stalled: bool,
) -> Result<WebSocketStream<TcpStream>, Refusal> {
    let tcp = connect(server.public, local, stalled).await;
    match within("websocket handshake", tokio_tungstenite::client_async(ws_url(server, "/ws"), tcp)).await {
        Ok((mut ws, _)) => {
            expect_type(&mut ws, "welcome").await;
            Ok(ws)
        }
        Err(WsError::Http(res)) => Err(Refusal::Status(res.status().as_u16())),
        Err(e) => Err(Refusal::Other(e)),
    }
}

async fn connect(addr: SocketAddr, local: Option<IpAddr>, stalled: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    if stalled {
        // Before connect, so the advertised window is small from the first segment.
        socket.set_recv_buffer_size(STALLED_RCVBUF).unwrap();
    }
    within("tcp connect", socket.connect(addr)).await.unwrap()
}

pub async fn send_json<S>(ws: &mut WebSocketStream<S>, value: Value)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next JSON text frame (control frames skipped). Fails on close or timeout.
pub async fn next_json<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = within("a websocket frame", ws.next()).await;
        match frame {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }
}

/// The next frame, which must be of `kind`; returns it.
pub async fn expect_type<S>(ws: &mut WebSocketStream<S>, kind: &str) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let v = next_json(ws).await;
    assert_eq!(v["type"], kind, "unexpected frame {v}");
    v
}

/// Subscribes to `channel` and waits for `subscribed`.
pub async fn subscribe<S>(ws: &mut WebSocketStream<S>, channel: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_json(ws, json!({ "type": "subscribe", "channel": channel })).await;
    let v = expect_type(ws, "subscribed").await;
    assert_eq!(v["channel"], channel);
}

/// Reads until the connection ends: the close code the server sent, or `None` when it
/// ended without a close frame. Other frames are skipped (counted in `skipped`).
pub async fn close_code<S>(ws: &mut WebSocketStream<S>) -> (Option<u16>, usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut code = None;
    let mut skipped = 0;
    loop {
        match within("the websocket to close", ws.next()).await {
            Some(Ok(Message::Close(frame))) => code = frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => skipped += 1,
            // The close reply is flushed on the next read; keep reading until the end.
            Some(Err(_)) | None => return (code, skipped),
        }
    }
}

/// Closes from the client side and reads until the server has let go.
pub async fn hang_up<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = ws.close(None).await;
    close_code(&mut ws).await;
}

// ---------------------------------------------------------------- SSE

/// One SSE block (fields up to a blank line); comment-only blocks are skipped.
#[derive(Debug, Default, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A streaming SSE reader.
pub struct Sse {
    body: ByteStream,
    buf: Vec<u8>,
}

/// A refused request: status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

/// Opens `GET /events?{query}`; on success the `retry:` head has been read.
pub async fn sse_try(server: &TestServer, query: &str) -> Result<Sse, Refused> {
    sse_from(&super::http(), server, query).await
}

pub async fn sse_from(client: &reqwest::Client, server: &TestServer, query: &str) -> Result<Sse, Refused> {
    let req = client.get(server.url(&format!("/events?{query}"))).header("accept", "text/event-stream");
    let res = within("SSE response headers", req.send()).await.unwrap();
    if res.status() != 200 {
        return Err(refused(res).await);
    }
    let mut sse = Sse { body: Box::pin(res.bytes_stream()), buf: Vec::new() };
    let head = sse.next().await.expect("SSE stream ended before its head");
    assert_eq!(head.retry, Some(2000), "SSE streams start with retry: 2000");
    Ok(sse)
}

pub async fn sse(server: &TestServer, query: &str) -> Sse {
    sse_try(server, query).await.unwrap_or_else(|r| panic!("SSE refused: {r:?}"))
}

/// A reqwest client whose connections come from `ip`.
pub fn http_from(ip: IpAddr) -> reqwest::Client {
    super::install_crypto();
    reqwest::Client::builder().no_proxy().local_address(ip).build().unwrap()
}

async fn refused(res: reqwest::Response) -> Refused {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    Refused { status, body }
}

/// Asserts a refusal has `status` and the JSON error shape `{"error", "message"}`.
pub fn assert_refused(r: &Refused, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(r.body["error"].is_string(), "{r:?}");
    assert!(r.body["message"].is_string(), "{r:?}");
}

impl Sse {
    /// The next event block, or `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(block) = self.take_block() {
                match parse_block(&block) {
                    Some(ev) => return Some(ev),
                    None => continue,
                }
            }
            match within("an SSE event", self.body.next()).await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(_)) | None => return None,
            }
        }
    }

    fn take_block(&mut self) -> Option<String> {
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buf.drain(..end + 2).collect();
        Some(String::from_utf8(block).unwrap())
    }

    /// Reads events until the stream ends; returns them.
    pub async fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(ev) = self.next().await {
            out.push(ev);
        }
        out
    }
}

fn parse_block(block: &str) -> Option<Event> {
    let mut ev = Event::default();
    let mut any = false;
    for line in block.lines().filter(|l| !l.is_empty() && !l.starts_with(':')) {
        any = true;
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "id" => ev.id = Some(value.to_owned()),
            "event" => ev.event = Some(value.to_owned()),
            "retry" => ev.retry = value.parse().ok(),
            "data" => {
                let data = ev.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    any.then_some(ev)
}

/// An SSE request on a socket with a tiny receive buffer whose response is never read
/// until the test decides to ([`read_stalled_sse`]).
pub async fn sse_stalled(server: &TestServer, query: &str) -> TcpStream {
    let mut tcp = connect(server.public, None, true).await;
    let req = format!(
        "GET /events?{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        server.public
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp
}

/// Everything the server sends on a stalled SSE socket until it closes the connection.
pub async fn read_stalled_sse(mut tcp: TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match within("the stalled SSE response to end", tcp.read(&mut chunk)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------- long-poll

/// `GET /poll?{query}`.
pub async fn poll(client: &reqwest::Client, server: &TestServer, query: &str) -> reqwest::Response {
    client.get(server.url(&format!("/poll?{query}"))).send().await.unwrap()
}

pub async fn poll_refused(client: &reqwest::Client, server: &TestServer, query: &str) -> Refused {
    let res = within("long-poll answer", poll(client, server, query)).await;
    assert_ne!(res.status(), 200, "long-poll was not refused");
    refused(res).await
}

// ---------------------------------------------------------------- admin

/// `POST /publish` of one message; returns the response.
pub async fn publish(client: &reqwest::Client, server: &TestServer, channel: &str, data: Value) -> reqwest::Response {
    let body = json!({ "channel": channel, "data": data });
    within("a publish response", client.post(server.admin_url("/publish")).json(&body).send()).await.unwrap()
}

/// Publishes and asserts 200; returns the id.
pub async fn publish_ok(client: &reqwest::Client, server: &TestServer, channel: &str, data: Value) -> String {
    let res = publish(client, server, channel, data).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    v["ids"][0].as_str().unwrap().to_owned()
}

/// The Prometheus text of `/metrics`.
pub async fn metrics(server: &TestServer) -> String {
    let res = super::http().get(server.admin_url("/metrics")).send().await.unwrap();
    res.text().await.unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed); 0 when absent, as
/// Prometheus treats a counter or gauge that was never touched.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls `/metrics` until `series` satisfies `ok`; returns its value.
pub async fn wait_metric(server: &TestServer, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    eventually(series, || async {
        let v = metric(&metrics(server).await, series);
        ok(v).then_some(v)
    })
    .await
}

/// `sidewire_realtime_connections{transport="…"}`.
pub fn conns(transport: &str) -> String {
    format!("sidewire_realtime_connections{{transport=\"{transport}\"}}")
}
