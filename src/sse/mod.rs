//! Server-Sent Events (SPEC §5): `GET` on an `sse` route opens a stream of the route's
//! (or the query's) channels.
//!
//! Framing: first `retry: 2000` with the stream's current cursor as `id:` (so a client
//! that drops before any event still resumes without a gap), then `event: reset` when
//! history could not fill the gap, the replayed history, then live events; `: ping`
//! comments every `heartbeat.interval`. Every refusal happens before the stream starts,
//! as a JSON error. The stream ends when the connection is evicted (slow consumer) or
//! on shutdown, after a last `retry:` with a random delay so clients reconnect spread out.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::value::RawValue;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::{Config, RouteConfig, Transport};
use crate::proxy::Peer;
use crate::realtime::Realtime;
use crate::respond::{Body, BoxError, Rejection};
use crate::session::Session;
use crate::stream::{Opened, Stream};
use crate::template::Params;
use crate::{identity, policy, router};

pub mod h1;

/// Reconnection delay announced to clients, ms.
const RETRY_MS: u64 = 2000;
/// Flush a frame once this many bytes of events are batched.
const BATCH_BYTES: usize = 32 * 1024;

/// `event:` and `data:` lines and the blank line, without `id:`.
pub fn encode_body(event: Option<&str>, data: &RawValue) -> String {
    let mut out = String::with_capacity(data.get().len() + 32);
    if let Some(ev) = event {
        let _ = writeln!(out, "event: {ev}");
    }
    match serde_json::from_str::<String>(data.get()) {
        Ok(text) if data.get().starts_with('"') => {
            for line in text.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
                let _ = writeln!(out, "data: {line}");
            }
        }
        _ => {
            let _ = writeln!(out, "data: {}", data.get());
        }
    }
    out.push('\n');
    out
}

/// Opens an SSE stream or refuses before it starts (hyper's path: HTTP/2, TLS, and
/// requests that [`h1`] did not claim).
pub async fn open(
    state: &Arc<Realtime>,
    config: &Arc<Config>,
    route: &RouteConfig,
    params: Params,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Rejection> {
    // An eviction ends the stream from outside, since hyper stops polling a body whose
    // socket (HTTP/1) or flow-control window (HTTP/2) is full: on HTTP/1 it closes the
    // connection (see `server::Abort`); on HTTP/2 it drops the stream (RST_STREAM(CANCEL),
    // the other streams of the connection are innocent). Either way the queue is freed.
    let abort = match req.version() {
        http::Version::HTTP_2 => crate::server::h2_stream(),
        http::Version::HTTP_11 => req.extensions().get::<crate::server::Abort>().map(|a| a.0.clone()),
        _ => None,
    };
    let events = start(state, config, route, params, peer, &req, abort).await?;
    Ok(response(events.boxed_unsync()))
}

/// The stream's response, headers set.
fn response<B>(body: B) -> Response<B> {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Everything before the first byte: checks, identity, admission, subscriptions and
/// replay. `evicted`: the token the hub cancels on overflow, when the caller needs one
/// of its own (see [`open`]).
async fn start<B>(
    state: &Arc<Realtime>,
    config: &Config,
    route: &RouteConfig,
    params: Params,
    peer: Peer,
    req: &Request<B>,
    evicted: Option<CancellationToken>,
) -> Result<EventStream, Rejection> {
    if req.method() != Method::GET {
        return Err(Rejection::json(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "SSE streams are opened with GET"));
    }
    // Taken before anything is checked against `config`: a reload from here on is seen.
    let reload = state.next_reload();
    let query = router::query_pairs(req.uri().query());
    let target = identity::Target { route, params: &params, query: &query, transport: "sse" };
    let opening = identity::stream_request(state, config, target, peer, req).await?;
    let (cred, identity, channels) = (opening.cred, opening.identity, opening.channels);
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.iter().find(|(k, _)| k == "lastEventId").map(|(_, v)| v.clone()));
    let session = Session::admit(state, config, peer.addr.ip(), Transport::Sse, identity)?;
    let (stream, opened) =
        Stream::open(session, channels, last_id.as_deref(), config.limits.subscriber_queue, evicted).await?;
    let recheck = Recheck { state: Arc::clone(state), cred, path: req.uri().path().to_owned() };
    Ok(EventStream::new(state, config, stream, opened, recheck, reload))
}

/// What re-checking the client's identity at its TTL needs.
struct Recheck {
    state: Arc<Realtime>,
    cred: Option<crate::auth::Credential>,
    path: String,
}

type Expiry = Pin<Box<dyn Future<Output = Result<Arc<crate::auth::Identity>, crate::auth::AuthError>> + Send>>;

impl Recheck {
    /// The re-check of `identity` at its TTL; `None` when it never expires.
    fn arm(&self, identity: Arc<crate::auth::Identity>) -> Option<Expiry> {
        identity.expires?;
        let (state, cred, path) = (Arc::clone(&self.state), self.cred.clone(), self.path.clone());
        Some(Box::pin(crate::auth::recheck(state, cred, identity, "sse", path)))
    }

    /// Whether a refreshed identity still covers every channel of the stream.
    fn still_allowed(&self, identity: &crate::auth::Identity, stream: &Stream) -> bool {
        let config = self.state.config.load();
        stream.session.channels.iter().all(|c| policy::authorize(&config, identity, c).is_ok())
    }
}

/// The response body: a never-buffering event stream.
struct EventStream {
    stream: Stream,
    recheck: Recheck,
    /// `None` when the identity never expires (anonymous): no future held while idle.
    expiry: Option<Expiry>,
    head: Option<Bytes>,
    heartbeat: tokio::time::Interval,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Fires at the next reload: the stream ends if its identity lost a channel.
    reload: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Upper bound of the random reconnect delay announced at shutdown.
    spread: Duration,
    done: bool,
}

impl EventStream {
    fn new(
        state: &Realtime,
        config: &Config,
        mut stream: Stream,
        opened: Opened,
        recheck: Recheck,
        reload: CancellationToken,
    ) -> Self {
        let mut head = BytesMut::new();
        let _ = write!(head, "retry: {RETRY_MS}\nid: ");
        stream.write_cursor(&mut head);
        head.extend_from_slice(b"\n\n");
        if !opened.reset.is_empty() {
            let channels: Vec<&str> = opened.reset.iter().map(|c| c.as_str()).collect();
            head.extend_from_slice(b"id: ");
            stream.write_cursor(&mut head);
            let data = serde_json::json!({ "channels": channels });
            let _ = write!(head, "\nevent: reset\ndata: {data}\n\n");
        }
        for msg in &opened.replay {
            write_event(&mut head, &mut stream, msg);
        }
        let interval = config.heartbeat.interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let evicted = Box::pin(stream.inbox.evicted().clone().cancelled_owned());
        let expiry = recheck.arm(Arc::clone(&stream.session.identity));
        Self {
            stream,
            recheck,
            expiry,
            head: Some(head.freeze()),
            heartbeat,
            shutdown: Box::pin(state.shutdown.token().clone().cancelled_owned()),
            evicted,
            reload: Box::pin(reload.cancelled_owned()),
            spread: config.shutdown_grace.max(Duration::from_secs(1)),
            done: false,
        }
    }

    fn farewell(&self) -> Bytes {
        let jitter = spread_ms(self.stream.session.conn, self.spread);
        Bytes::from(format!("retry: {}\n\n", RETRY_MS + jitter))
    }
}

/// A pseudo-random delay in `[0, spread)` per connection, so reconnects spread out.
pub fn spread_ms(conn: u64, spread: Duration) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(conn);
    h.finish() % (spread.as_millis().max(1) as u64)
}

fn write_event(buf: &mut BytesMut, stream: &mut Stream, msg: &Arc<crate::hub::Message>) {
    stream.session.delivered += 1;
    if stream.advance(msg) {
        buf.extend_from_slice(b"id: ");
        stream.write_cursor(buf);
        buf.extend_from_slice(b"\n");
    }
    let body = msg.sse.get_or_init(|| Bytes::from(encode_body(msg.event.as_deref(), &msg.data)));
    buf.extend_from_slice(body);
}

impl EventStream {
    /// Re-checks the identity when its TTL ends; `Ready` means the stream must end (the
    /// backend refused, or a channel is no longer allowed; the reconnect gets the 401/403).
    fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Loop so a re-armed check is polled (and its timer registered) at once.
        while let Some(expiry) = &mut self.expiry {
            match expiry.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(identity)) if self.recheck.still_allowed(&identity, &self.stream) => {
                    self.stream.session.identity = Arc::clone(&identity);
                    self.expiry = self.recheck.arm(identity);
                }
                Poll::Ready(_) => {
                    self.recheck.state.metrics.eviction("auth_revoked");
                    return Poll::Ready(());
                }
            }
        }
        Poll::Pending
    }
}

impl EventStream {
    /// The stream's first bytes (`retry`, any `reset`, the replayed history), ready from
    /// the start: the raw HTTP/1.1 path sends them in the same write as the response
    /// head. `poll_frame` yields them first when nobody took them.
    /// They come after `room` free bytes, as from [`EventStream::poll_bytes`].
    fn take_head(&mut self, room: usize) -> Option<BytesMut> {
        self.head.take().map(|head| framed(&head, room))
    }

    /// `Ready` once the hub evicted the stream (slow consumer): for a writer that must
    /// end it while the socket is full, when `poll_frame` is not polled.
    fn poll_evicted(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.evicted.as_mut().poll(cx)
    }

    /// `Ready` when a reload left the identity without one of the stream's channels
    /// (the client's reconnect then gets the 401/403).
    fn poll_reload(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Loop so the next reload's token is polled (and registered) at once.
        while self.reload.as_mut().poll(cx).is_ready() {
            self.reload = Box::pin(self.recheck.state.next_reload().cancelled_owned());
            let config = self.recheck.state.config.load();
            let session = &self.stream.session;
            if crate::realtime::still_allowed(&config, &session.identity, &session.channels).is_err() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl EventStream {
    /// The stream's next bytes, after `room` bytes left free for a prefix the writer
    /// fills in (and with capacity for `room` more after them, for a suffix), so that a
    /// framed write needs no buffer of its own: [`h1`]'s chunk-size line and CRLF. `None`
    /// once the stream ended.
    fn poll_bytes(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<Option<BytesMut>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(framed(&head, room)));
        }
        // Messages first: while they flow, nothing else is polled (each control check
        // costs a lock or a timer registration on the fan-out hot path).
        let mut buf = BytesMut::new();
        while buf.len() < BATCH_BYTES {
            match self.stream.inbox.poll_recv(cx) {
                Poll::Ready(Some(msg)) => {
                    if buf.is_empty() {
                        buf.reserve(2 * room + 256);
                        buf.put_bytes(0, room);
                    }
                    write_event(&mut buf, &mut self.stream, &msg);
                }
                Poll::Ready(None) => {
                    self.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !buf.is_empty() {
            buf.reserve(room);
            return Poll::Ready(Some(buf));
        }
        if self.done {
            return Poll::Ready(None);
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(framed(&self.farewell(), room)));
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        if self.poll_reload(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        if self.poll_expiry(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        if self.heartbeat.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(framed(b": ping\n\n", room)));
        }
        Poll::Pending
    }
}

/// `data` after `room` free bytes, with capacity for `room` more after it.
fn framed(data: &[u8], room: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(2 * room + data.len());
    buf.put_bytes(0, room);
    buf.extend_from_slice(data);
    buf
}

impl http_body::Body for EventStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().poll_bytes(cx, 0).map(|next| next.map(|buf| Ok(Frame::data(buf.freeze()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn frames() {
        assert_eq!(encode_body(Some("chat"), &raw(r#"{"a":1}"#)), "event: chat\ndata: {\"a\":1}\n\n");
        assert_eq!(encode_body(None, &raw(r#""hi\nthere""#)), "data: hi\ndata: there\n\n");
        assert_eq!(encode_body(None, &raw(r#""a\r\nb\rc""#)), "data: a\ndata: b\ndata: c\n\n");
        assert_eq!(encode_body(None, &raw("42")), "data: 42\n\n");
        assert_eq!(encode_body(None, &raw(r#""""#)), "data: \n\n");
    }
}
