//! WebSocket test clients: [`WsClient`] speaks the JSON protocol through
//! tokio-tungstenite; [`RawWs`] does its own handshake and writes and reads frames byte
//! by byte, for what a well-behaved client library refuses to do (unmasked frames, never
//! answering pings). [`Publisher`] posts to the admin `/publish`; [`metric`] reads one
//! Prometheus series.
//!
//! Every read is bounded by [`RECV_TIMEOUT`] so a missing frame fails the test with a
//! message instead of hanging it. The bound is a deadline, not a performance assertion.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use super::{TestServer, http};

/// Longest wait for one expected frame, close or condition.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A protocol client on a real socket.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Makes every `assert_quiet` ping's ref unique.
    probes: u64,
}

impl WsClient {
    /// Opens `path` on the public listener (no frame read yet).
    pub async fn connect(server: &TestServer, path: &str) -> Self {
        let url = format!("ws://{}{path}", server.public);
        let (ws, res) =
            connect_async(url.as_str()).await.unwrap_or_else(|e| panic!("websocket handshake to {url} failed: {e}"));
        assert_eq!(res.status(), 101);
        Self { ws, probes: 0 }
    }

    /// Opens `path` and reads the `welcome`, which must be the first frame.
    pub async fn open(server: &TestServer, path: &str) -> (Self, Value) {
        let mut client = Self::connect(server, path).await;
        let welcome = client.expect("welcome").await;
        (client, welcome)
    }

    pub async fn send_frame(&mut self, frame: Message) {
        self.ws.send(frame).await.expect("send to sidewire");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(Message::text(text)).await;
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next data or close frame; pings and pongs are skipped (tungstenite answers
    /// pings itself while we read). `None` when the connection ended without a close frame.
    pub async fn next_frame(&mut self) -> Option<Message> {
        loop {
            let next =
                tokio::time::timeout(RECV_TIMEOUT, self.ws.next()).await.expect("no frame from sidewire in time");
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(frame)) => return Some(frame),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next text frame, verbatim.
    pub async fn next_text(&mut self) -> String {
        match self.next_frame().await {
            Some(Message::Text(text)) => text.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub async fn next_json(&mut self) -> Value {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
    }

    /// The next frame, which must have `"type": kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.next_json().await;
        assert_eq!(frame["type"], kind, "unexpected frame: {frame}");
        frame
    }

    /// The next frame, which must be `error {code}`; returns it.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.expect("error").await;
        assert_eq!(frame["code"], code, "unexpected error: {frame}");
        assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()), "an error explains itself: {frame}");
        frame
    }

    /// Subscribes and returns the `subscribed` reply (replayed messages are left unread).
    pub async fn subscribe(&mut self, channel: &str, since: Option<&str>) -> Value {
        let mut req = json!({ "type": "subscribe", "channel": channel });
        if let Some(since) = since {
            req["since"] = since.into();
        }
        self.send_json(req).await;
        let reply = self.expect("subscribed").await;
        assert_eq!(reply["channel"], channel);
        reply
    }

    /// Proves that nothing is queued for us: a ping's `pong` must be the very next frame.
    pub async fn assert_quiet(&mut self) {
        self.probes += 1;
        let probe = format!("quiet-{}", self.probes);
        self.send_json(json!({ "type": "ping", "ref": probe })).await;
        let frame = self.next_json().await;
        assert_eq!(frame, json!({ "type": "pong", "ref": probe }), "a frame arrived before the pong");
    }

    /// Reads until the server's close frame (skipping anything else); returns code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Some(Message::Close(Some(frame))) => {
                    return (frame.code.into(), frame.reason.as_str().to_owned());
                }
                Some(Message::Close(None)) => panic!("close frame without a code"),
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// One frame as read off the wire by [`RawWs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The RFC 6455 §1.3 sample key and its accept value.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket client on a bare TCP socket: a hand-written handshake, then raw bytes.
/// It never answers anything by itself.
pub struct RawWs {
    stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects and completes the handshake on `path` (asserts the 101 and its accept key).
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write handshake");
        let mut raw = Self { stream, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection closed during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "not a 101:\n{head}");
        assert!(
            head.contains(&format!("sec-websocket-accept: {}", SAMPLE_ACCEPT.to_lowercase())),
            "wrong accept key:\n{head}"
        );
        raw.buf.drain(..end);
        raw
    }

    /// Reads more bytes; `false` at EOF or on a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(RECV_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("sidewire sent nothing and kept the connection open");
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write frame");
    }

    /// The next frame from the server; `None` once it closed the TCP connection.
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until the close frame; returns its code. Panics if the connection ends first.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_frame().await {
                Some(f) if f.opcode == opcode::CLOSE => {
                    assert!(f.payload.len() >= 2, "close frame without a code");
                    return u16::from_be_bytes([f.payload[0], f.payload[1]]);
                }
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Asserts the server ends the TCP connection with a FIN, not a reset: a reset can
    /// destroy a close frame the client has not read yet.
    pub async fn expect_fin(&mut self) {
        let mut chunk = [0u8; 8192];
        loop {
            let read = tokio::time::timeout(RECV_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("sidewire kept the connection open");
            match read {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) => panic!("connection reset instead of closed: {e}"),
            }
        }
    }

    /// Reads (and ignores) frames until the server closes the TCP connection; returns
    /// every frame seen.
    pub async fn until_closed(&mut self) -> Vec<RawFrame> {
        let mut seen = Vec::new();
        while let Some(frame) = self.next_frame().await {
            seen.push(frame);
        }
        seen
    }
}

/// Encodes one frame. `mask: None` writes it unmasked (a protocol violation from a
/// client); `rsv` are the three reserved bits (bit 2 = RSV1).
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0F)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked, final client frame, as a conforming client would send it.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(true, 0, opcode, payload, Some([0x12, 0x34, 0x56, 0x78]))
}

/// Parses one server frame from the front of `buf`: the frame and the bytes it used.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "server frames are never masked");
    let (len, mut at) = match b1 & 0x7F {
        126 => (usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])), 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    at += len;
    let frame = RawFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload };
    Some((frame, at))
}

/// Publishes through the admin API with one keep-alive client.
pub struct Publisher {
    client: reqwest::Client,
    url: String,
}

impl Publisher {
    pub fn new(server: &TestServer) -> Self {
        Self { client: http(), url: server.admin_url("/publish") }
    }

    /// POSTs `body` verbatim; asserts 200 and returns the `ids`.
    pub async fn publish_raw(&self, body: String) -> Vec<Value> {
        let res = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("POST /publish");
        let status = res.status();
        let reply: Value = res.json().await.expect("publish answers JSON");
        assert_eq!(status, 200, "publish {body} -> {reply}");
        reply["ids"].as_array().cloned().expect("ids")
    }

    /// Publishes one message whose `data` is the raw JSON text `data`; returns its id.
    pub async fn publish(&self, channel: &str, event: Option<&str>, data: &str) -> String {
        let event = event.map_or(String::new(), |e| format!(",\"event\":{}", json!(e)));
        let body = format!("{{\"channel\":{}{event},\"data\":{data}}}", json!(channel));
        let ids = self.publish_raw(body).await;
        ids[0].as_str().expect("a stored message has an id").to_owned()
    }
}

/// The value of one Prometheus series (`name{labels}` exactly as exported), if present.
pub async fn metric(server: &TestServer, series: &str) -> Option<f64> {
    let text = http()
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("metric value"))
}

/// Polls `series` until it equals `want`; panics after [`RECV_TIMEOUT`].
pub async fn wait_metric(server: &TestServer, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let got = metric(server, series).await.unwrap_or(0.0);
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} stayed at {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The position of an id, for "strictly increasing" checks. SPEC §3 calls ids opaque;
/// this reads sidewire's own `<epoch>.<seq>` form (`hub/cursor.rs`).
pub fn seq(id: &Value) -> u64 {
    let text = id.as_str().unwrap_or_else(|| panic!("id is not a string: {id}"));
    let (_, seq) = text.rsplit_once('.').expect("id is <epoch>.<seq>");
    seq.parse().expect("seq is a number")
}
