//! RFC 6455 plumbing below the JSON protocol, shared by the `websocket` transport and by
//! `examples/ws_echo.rs`, the Autobahn conformance target: one code path, so what the
//! conformance run checks is what production runs (`docs/conformance.md`).
//!
//! Owns: the handshake check and its 101, the tungstenite stream config built from
//! `limits.max_message_bytes`, the mapping of read errors to close codes (SPEC §4: 1009,
//! 1007, 1002), and the closing handshake.
//! Does not: know sessions, identities, limits or metrics (`ws/mod.rs` does, and counts an
//! eviction from [`ErrorClose::why`]).
//!
//! Invariants: tungstenite sends no close frame when a read fails, so every error that
//! calls for one goes through [`close_for`] then [`fail`]. Every close ([`close`] when we
//! start it, [`finish_close`] when the peer does, [`fail`] after an error) reads until
//! the peer's close or EOF, bounded by [`CLOSE_TIMEOUT`]: short of that timeout, the
//! socket is never dropped with unread input, which would turn the close into a reset.

use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Utf8Bytes};

use crate::protocol::close_code;
use crate::proxy::connection_has;
use crate::respond::Rejection;

/// Read buffer per connection: small, because idle connections dominate memory.
const READ_BUFFER: usize = 2 * 1024;
/// Writes are batched up to this before they reach the socket.
const WRITE_BUFFER: usize = 8 * 1024;
/// Queued-but-unsent bytes allowed before a write fails (backpressure bound).
const MAX_WRITE_BUFFER: usize = 1 << 20;
/// How long the closing handshake may take, whichever side started it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The stream config for a connection whose messages may reach `max_message_bytes`.
pub fn config(max_message_bytes: usize) -> WebSocketConfig {
    let max = max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // Room for an echo or a reply of the largest message, plus what is already queued.
        .max_write_buffer_size(MAX_WRITE_BUFFER.max(max * 2))
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

fn bad(message: &str) -> Rejection {
    Rejection::json(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// How a client opened its WebSocket: the answer differs, the frames after it do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// HTTP/1.1 `GET` + `Upgrade: websocket` (RFC 6455 §4.2.1), answered 101 with the
    /// accept key derived from this client key.
    Upgrade(String),
    /// HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441 §4), answered 200 on
    /// the same stream; HTTP/2 framing replaces the key.
    Connect,
}

/// Checks RFC 6455 §4.2.1 (HTTP/1.1) or RFC 8441 §5 (HTTP/2) and says which it was.
pub fn handshake<B>(req: &Request<B>) -> Result<Handshake, Rejection> {
    let h = req.headers();
    let key = match req.version() {
        Version::HTTP_11 if req.method() == Method::GET => {
            let is_ws = h
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if !is_ws || !connection_has(h, "upgrade") {
                return Err(bad("this endpoint needs a WebSocket upgrade"));
            }
            Some(h.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).unwrap_or("").trim())
        }
        Version::HTTP_2 if req.method() == Method::CONNECT => {
            let protocol = req.extensions().get::<hyper::ext::Protocol>();
            if !protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket")) {
                return Err(bad("an HTTP/2 WebSocket is an extended CONNECT with :protocol websocket"));
            }
            None
        }
        _ => return Err(bad("a WebSocket handshake is an HTTP/1.1 GET or an HTTP/2 extended CONNECT")),
    };
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = Rejection::json(StatusCode::UPGRADE_REQUIRED, "bad_request", "Sec-WebSocket-Version must be 13");
        r.headers.push((header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")));
        return Err(r);
    }
    match key {
        None => Ok(Handshake::Connect),
        Some(key) if key.len() == 24 && key.ends_with("==") => Ok(Handshake::Upgrade(key.to_owned())),
        Some(_) => Err(bad("Sec-WebSocket-Key must be 16 bytes in base64")),
    }
}

/// The answer to a handshake [`handshake`] accepted (101 or 200); the caller adds an
/// empty body.
pub fn accept(handshake: &Handshake) -> Response<()> {
    let mut res = Response::new(());
    let Handshake::Upgrade(key) = handshake else {
        // RFC 8441 §5: a 2xx opens the stream; no Upgrade, Connection or accept key.
        return res;
    };
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // Base64 is always a valid header value; the check only spares us an expect.
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// The close frame a read error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClose {
    pub code: u16,
    pub reason: &'static str,
    /// Label for the eviction metric.
    pub why: &'static str,
}

/// Maps a read error to the close it calls for; `None` when the peer is gone or the
/// socket failed, so nobody is left to read a close frame.
pub fn close_for(e: &WsError) -> Option<ErrorClose> {
    let (code, reason, why) = match e {
        WsError::Capacity(_) => (close_code::TOO_LARGE, "message too large", "too_large"),
        WsError::Utf8(_) => (close_code::INVALID_DATA, "invalid UTF-8", "invalid_utf8"),
        // The peer dropped the TCP connection (tab closed, network lost): it is no
        // protocol violation to count.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        WsError::Protocol(_) => (close_code::PROTOCOL, "protocol error", "protocol_error"),
        _ => return None,
    };
    Some(ErrorClose { code, reason, why })
}

/// Sends a close frame and waits (bounded) for the peer's reply so the closing
/// handshake completes cleanly. For a stream that has not failed; see [`fail`].
pub async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(Some(frame)).await.is_ok() {
            read_to_close(ws).await;
        }
    })
    .await;
}

/// [`close`], but the close frame may take up to `send` to get out (behind what the
/// socket already holds for a slow reader), then [`CLOSE_TIMEOUT`] for the reply.
pub async fn close_within<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &'static str, send: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) };
    if let Ok(Ok(())) = tokio::time::timeout(send, ws.close(Some(frame))).await {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, read_to_close(ws)).await;
    }
}

/// Fails the connection after a read error (RFC 6455 §7.1.7): sends the close `e` calls
/// for, then, as the input can no longer be parsed as frames (tokio-tungstenite ends
/// the stream at its first error), discards it until the peer closes (bounded).
pub async fn fail<S>(ws: &mut WebSocketStream<S>, e: ErrorClose)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code: CloseCode::from(e.code), reason: Utf8Bytes::from_static(e.reason) };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(Some(frame)).await.is_ok() {
            linger(ws.get_mut()).await;
        }
    })
    .await;
}

/// The peer sent its close first: tungstenite has queued the echo, which goes out on
/// the next read; keep reading (bounded) until the stream reports the handshake done.
pub async fn finish_close<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, read_to_close(ws)).await;
}

/// Reads past data frames until the stream ends: tungstenite ends it once both closes
/// have crossed, or when the peer hangs up.
async fn read_to_close<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(_)) => {}
            None => return,
            // Garbage after the close: the peer's own close is lost in it.
            Some(Err(_)) => return linger(ws.get_mut()).await,
        }
    }
}

/// Ends a connection whose input can no longer be read as frames (the rest of a message
/// refused as too large, whatever followed a protocol error). Dropping the socket with
/// those bytes unread makes the kernel answer with a reset, which can destroy our close
/// frame before the peer reads it (the client then sees 1006). So: a FIN after the close
/// frame, then discard input until the peer closes its side. Callers bound the wait.
async fn linger<S>(io: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if io.shutdown().await.is_ok() {
        let _ = tokio::io::copy(io, &mut tokio::io::sink()).await;
    }
}
