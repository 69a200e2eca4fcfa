//! SSE on an HTTP/1.1 connection, plain or TLS, served without hyper (issue 11).
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for every HTTP/1
//! connection for its whole life: twice what the rest of an idle stream costs. So an
//! HTTP/1.1 connection (h1c, or TLS without ALPN h2) whose first request is an SSE `GET`
//! is claimed before hyper sees it: the head is read by [`crate::proxy::h1`] and claimed here ([`claim`]), and the response head
//! and the chunked event stream are written straight to the socket ([`serve`]), with
//! nothing buffered between writes (over TLS, each write is flushed out of the
//! session). Anything else — HTTP/2, HTTP/1.0, another route, a request with a body, a
//! head hyper must refuse — goes to hyper with the bytes read so far. A later SSE
//! request on a kept-alive connection is hyper's too.
//!
//! The same as hyper's path: status, headers (with `date` and `transfer-encoding:
//! chunked`), one chunk per frame of the [`EventStream`], refusals as JSON. Different:
//! the response says `connection: close`, and the connection closes when the stream or
//! refusal is done (an SSE client reconnects on a new connection anyway).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, Request, Response, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::EventStream;
use crate::config::{Config, Transport};
use crate::proxy::Peer;
use crate::realtime::Realtime;
use crate::router::{self, Route};

/// hyper's default limit on the number of request headers.
const MAX_HEADERS: usize = 100;

/// What a complete request head on a plain connection is to the SSE path.
pub(crate) enum Claim {
    Partial,
    Sse(Box<Request<()>>),
    Other,
}

/// Parses `buf` as far as it goes. Synchronous: the header array stays on the stack,
/// out of the connection's future.
pub(crate) fn claim(buf: &[u8], config: &Config) -> Claim {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Claim::Partial,
        Err(_) => return Claim::Other,
    }
    if head.method != Some("GET") || head.version != Some(1) {
        return Claim::Other;
    }
    let Some(Ok(uri)) = head.path.map(http::Uri::try_from) else { return Claim::Other };
    if !matches!(router::route(config, uri.path()), Route::Realtime(r, _) if r.transport == Transport::Sse) {
        return Claim::Other;
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return Claim::Other;
        };
        // A request body is hyper's to read (or refuse).
        if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && value != "0") {
            return Claim::Other;
        }
        req.headers_mut().append(name, value);
    }
    Claim::Sse(Box::new(req))
}

/// Answers the SSE request `req` on `io`, then closes the connection: the stream until
/// it ends (or the client leaves), or the refusal.
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    realtime: &Arc<Realtime>,
    peer: Peer,
    req: Request<()>,
) {
    let started = std::time::Instant::now();
    let opened = {
        let config = realtime.config.load_full();
        let path = req.uri().path();
        let Route::Realtime(route, params) = router::route(&config, path) else { return };
        // Boxed: the auth call's future must not size the stream's.
        Box::pin(super::start(realtime, &config, route, params, peer, &req, None)).await
    };
    let status = opened.as_ref().map_or_else(|r| r.status, |_| http::StatusCode::OK);
    realtime.metrics.request(status);
    tracing::debug!(target: "sidewire::access", method = "GET", path = req.uri().path(), status = status.as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3, peer = %peer.addr);
    drop(req);
    let ended = match opened {
        Ok(mut events) => {
            let mut out = Out { pending: crate::respond::h1_head(&super::response(()), None, true), last: false };
            // A resume's whole replay leaves with the response head, in one write.
            if let Some(first) = events.take_head(ROOM) {
                out.chunk(first);
            }
            poll_fn(|cx| pump(cx, &mut io, &mut events, &mut out)).await
        }
        Err(rejection) => refuse(&mut io, rejection.into_response()).await,
    };
    match ended {
        End::Done => {
            let _ = io.shutdown().await;
        }
        End::HungUp | End::Evicted => {}
        End::Failed(e) => tracing::debug!(error = %e, "SSE connection ended with an error"),
    }
}

/// Writes a refusal (whose body is whole) and its end.
async fn refuse<T: AsyncWrite + Unpin>(io: &mut T, res: Response<crate::respond::Body>) -> End {
    match crate::respond::write_h1(io, res, true).await {
        Ok(()) => End::Done,
        Err(e) => End::Failed(e),
    }
}

/// How a stream served here ended.
enum End {
    /// The stream (or refusal) was written to its end.
    Done,
    /// The client closed the connection.
    HungUp,
    /// The hub dropped the stream (slow consumer) while its socket was full.
    Evicted,
    Failed(io::Error),
}

/// Room the event stream leaves before each frame's data for its chunk-size line (at
/// most 16 hex digits and CRLF), so a chunk goes out in one write from the frame's own
/// buffer, with no copy.
const ROOM: usize = 18;

/// What is left to write. Empty (no allocation) while the stream is idle: a frame is
/// framed in its own buffer, which is freed once written.
struct Out {
    pending: Bytes,
    /// The last chunk is queued: the stream is done once `pending` is written.
    last: bool,
}

impl Out {
    /// Queues `frame[ROOM..]` as one chunk (after the response head, for the first),
    /// its size line written into the room before it.
    fn chunk(&mut self, mut frame: BytesMut) {
        let len = frame.len() - ROOM;
        if len == 0 {
            return; // a zero-size chunk would end the body
        }
        let mut line = [0u8; ROOM];
        let mut w = &mut line[..];
        let _ = io::Write::write_fmt(&mut w, format_args!("{len:x}\r\n"));
        let n = ROOM - w.len();
        frame[ROOM - n..ROOM].copy_from_slice(&line[..n]);
        frame.advance(ROOM - n);
        frame.extend_from_slice(b"\r\n");
        if self.pending.is_empty() {
            self.pending = frame.freeze();
        } else {
            let mut buf = BytesMut::with_capacity(self.pending.len() + frame.len());
            buf.extend_from_slice(&self.pending);
            buf.extend_from_slice(&frame);
            self.pending = buf.freeze();
        }
    }

    fn poll_write<T: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, io: &mut T) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        self.pending = Bytes::new(); // an empty view would still hold the frame's buffer
        // Over TLS the frame may still sit in the session's buffer (a no-op on TCP).
        ready!(Pin::new(&mut *io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }
}

/// The last chunk of a stream.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Moves frames from `events` to the socket until the stream ends. Registers for the
/// client's hang-up whenever it waits; while the socket is full, only an eviction ends
/// the stream early (the stall limit of [`crate::stall`] bounds the wait otherwise).
fn pump<T: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut T,
    events: &mut EventStream,
    out: &mut Out,
) -> Poll<End> {
    loop {
        match out.poll_write(cx, io) {
            Poll::Ready(Ok(())) if out.last => return Poll::Ready(End::Done),
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(End::Failed(e)),
            Poll::Pending if events.poll_evicted(cx).is_ready() => return Poll::Ready(End::Evicted),
            Poll::Pending => return poll_hang_up(cx, io),
        }
        match events.poll_bytes(cx, ROOM) {
            Poll::Ready(Some(frame)) => out.chunk(frame),
            Poll::Ready(None) => {
                let mut buf = BytesMut::from(&out.pending[..]);
                buf.extend_from_slice(LAST_CHUNK);
                out.pending = buf.freeze();
                out.last = true;
            }
            Poll::Pending => return poll_hang_up(cx, io),
        }
    }
}

/// `Pending` (registered for the next read) unless the client hung up. Bytes it sends
/// after its SSE request are not served (the connection ends with the stream): dropped.
fn poll_hang_up<T: AsyncRead + Unpin>(cx: &mut Context<'_>, io: &mut T) -> Poll<End> {
    let mut scratch = [0u8; 512];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(End::HungUp),
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(End::Failed(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let yaml = r#"
routes:
  - { path: "/events", transport: sse }
  - { path: "/ws", transport: websocket }
"#;
        Config::from_yaml(yaml, &|_| None).unwrap()
    }

    fn claimed(head: &str) -> Option<Box<Request<()>>> {
        match claim(head.as_bytes(), &config()) {
            Claim::Sse(req) => Some(req),
            _ => None,
        }
    }

    #[test]
    fn claims_only_complete_sse_gets_without_a_body() {
        let req = claimed("GET /events?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1.2\r\n\r\n").unwrap();
        assert_eq!(req.uri().query(), Some("channel=a"));
        assert_eq!(req.headers()["last-event-id"], "1.2");
        assert!(claimed("GET /events HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
        for other in [
            "GET /other HTTP/1.1\r\n\r\n",
            "GET /ws HTTP/1.1\r\n\r\n",
            "POST /events HTTP/1.1\r\n\r\n",
            "GET /events HTTP/1.0\r\n\r\n",
            "GET /events HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(claimed(other).is_none(), "{other:?}");
        }
        assert!(matches!(claim(b"GET /events HTTP/1.1\r\nHost:", &config()), Claim::Partial));
    }

    /// `data` with the room [`EventStream::poll_bytes`] leaves before it.
    fn frame(data: &[u8]) -> BytesMut {
        let mut buf = BytesMut::from(&[0u8; ROOM][..]);
        buf.extend_from_slice(data);
        buf
    }

    #[test]
    fn frames_are_chunks_after_the_head() {
        let mut out = Out { pending: Bytes::from_static(b"HEAD\r\n\r\n"), last: false };
        out.chunk(frame(b"retry: 2000\n\n"));
        assert_eq!(&out.pending[..], b"HEAD\r\n\r\nd\r\nretry: 2000\n\n\r\n");
        out.pending = Bytes::new();
        out.chunk(frame(b""));
        assert!(out.pending.is_empty());
        let big = vec![b'x'; 0x1234];
        out.chunk(frame(&big));
        assert_eq!(&out.pending[..8], b"1234\r\nxx");
        assert_eq!(out.pending.len(), 6 + 0x1234 + 2);
        assert!(out.pending.ends_with(b"x\r\n"));
    }
}
