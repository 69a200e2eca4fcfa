//! Accept loops for the public, TLS and admin listeners, and per-connection serving
//! with hyper-util's auto (HTTP/1.1 + HTTP/2, h2c by prior knowledge) builder.
//!
//! Owns: connection-level limits (header size; header read timeout, which also bounds
//! the wait for a connection's first request; TLS handshake timeout; the HTTP/2 idle
//! timeout), the open-connection gauge, the HTTP/2 stream tasks (each can be ended from
//! outside, see [`h2_stream`]), and graceful drain of plain HTTP connections (a task
//! tracker per listener). Builders are made per connection from the live config, so a
//! reload applies to new connections. Upgraded connections are not hyper's any more;
//! their tasks are on the shared tracker. A plain connection whose first request is an
//! SSE stream is never hyper's (see [`crate::sse::h1`]).
//! Invariant: an accept error (EMFILE, …) never ends a loop; it backs off and retries.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::proxy::Peer;
use crate::proxy::h1::Handoff;
use crate::respond::{Body, BoxError};
use crate::shutdown::Shutdown;
use crate::{Config, State};

/// Pause after a failed `accept` (typically out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Public,
    Tls,
    Admin,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Public => "http",
            Kind::Tls => "https",
            Kind::Admin => "admin",
        }
    }
}

tokio::task_local! {
    /// Inside an HTTP/2 stream's task: cancelling it drops the stream (hyper then
    /// resets it with RST_STREAM(CANCEL)) and whatever its response body holds.
    static STREAM: CancellationToken;
}

/// The token that ends the current HTTP/2 stream (see [`Executor`]); `None` on HTTP/1,
/// where a request is served in its connection's task.
pub fn h2_stream() -> Option<CancellationToken> {
    STREAM.try_with(CancellationToken::clone).ok()
}

/// Runs the tasks hyper spawns (one per HTTP/2 stream) on the shutdown tracker and in
/// the connection's span: a bare `tokio::spawn` would drop `conn{peer, listener}` from
/// their logs and hide them from the drain. One per connection: it counts the
/// connection's open streams (for `limits.h2_idle_timeout`) and gives each stream a
/// token that ends it from outside, whatever hyper is waiting for (an SSE stream whose
/// flow-control window is shut is never polled, so it cannot end itself).
#[derive(Clone)]
struct Executor {
    shutdown: Shutdown,
    streams: Arc<watch::Sender<usize>>,
}

/// One open HTTP/2 stream, counted while it lives.
struct Open(Arc<watch::Sender<usize>>);

impl Open {
    fn new(streams: &Arc<watch::Sender<usize>>) -> Self {
        streams.send_modify(|n| *n += 1);
        Self(Arc::clone(streams))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let open = Open::new(&self.streams);
        let token = CancellationToken::new();
        let stream = async move {
            let _open = open;
            tokio::select! {
                _ = STREAM.scope(token.clone(), fut) => {}
                () = token.cancelled() => {}
            }
        };
        // hyper calls this while polling the connection, so the current span is its `conn`.
        self.shutdown.spawn(stream.in_current_span());
    }
}

/// Resolves once an HTTP/2 connection has had no open stream for `limit`; never for
/// HTTP/1 (no stream is ever counted). A connection that never opens a stream is
/// closed by `header_read_timeout` instead (see [`first_request_within`]).
async fn idle(mut streams: watch::Receiver<usize>, limit: Duration) {
    // The first stream says this is HTTP/2.
    if streams.changed().await.is_err() {
        return std::future::pending().await;
    }
    loop {
        if streams.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        // Any change (a stream opened, or opened and done) restarts the wait.
        if tokio::time::timeout(limit, streams.changed()).await.is_err() {
            return;
        }
    }
}

/// A connection's builder, from the config of the moment it was accepted: a reload's
/// `max_header_bytes` and `header_read_timeout` apply to new connections.
fn builder(config: &Config, exec: Executor) -> auto::Builder<Executor> {
    let limits = &config.limits;
    let mut b = auto::Builder::new(exec);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    // HTTP/2 pings find dead peers (their streams and memory are freed within
    // heartbeat.interval + heartbeat.timeout).
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(config.heartbeat.interval))
        .keep_alive_timeout(config.heartbeat.timeout)
        // RFC 8441: browsers open WebSockets on the page's own HTTP/2 connection (SETTINGS_
        // ENABLE_CONNECT_PROTOCOL); realtime routes answer them, others are tunnelled to
        // the backend as HTTP/1.1 upgrades (proxy::forward).
        .enable_connect_protocol();
    b
}

/// Accepts until shutdown, then drains this listener's connections for at most
/// `shutdown_grace`: each is told to finish (HTTP/1: after the request in flight;
/// HTTP/2: GOAWAY, then its open streams end).
pub async fn serve(listener: TcpListener, kind: Kind, state: Arc<State>) {
    let connections = TaskTracker::new();
    loop {
        let (stream, addr) = tokio::select! {
            () = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = kind.label(), error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let conn = Connection { stream, addr, kind };
        let span = tracing::debug_span!("conn", peer = %addr, listener = kind.label());
        state.shutdown.spawn(connections.track_future(conn.run(Arc::clone(&state)).instrument(span)));
    }
    drop(listener);
    connections.close();
    let grace = state.config.load().shutdown_grace;
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(listener = kind.label(), "shutdown grace elapsed with requests still in flight");
    }
}

/// A connection being served, until it ends.
type Served = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    kind: Kind,
}

impl Connection {
    async fn run(self, state: Arc<State>) {
        let config = state.config.load_full();
        // Public and TLS connections count against the TCP caps; over them the socket is
        // closed at once (nothing read, nothing allocated). The admin listener is ours.
        let _slot = match self.kind {
            Kind::Admin => None,
            Kind::Public | Kind::Tls => {
                let l = &config.limits;
                match state.connections.admit_within(
                    self.addr.ip(),
                    l.max_open_connections,
                    l.max_open_connections_per_ip,
                ) {
                    Ok(slot) => Some(slot),
                    Err(e) => {
                        state.metrics.refused("tcp", "limit");
                        return tracing::debug!(reason = %e, "connection refused: limits.max_open_connections");
                    }
                }
            }
        };
        let _open = state.metrics.connection(self.kind.label());
        // A peer that stops reading may not pin its connection (and its queue) forever.
        let stream = crate::stall::Stall::new(self.stream, config.heartbeat.timeout);
        // Nagle only delays small realtime frames; the kernel coalesces bulk writes anyway.
        let _ = stream.get_ref().set_nodelay(true);
        let peer = Peer { addr: self.addr, tls: self.kind == Kind::Tls };
        let kind = self.kind;
        let limit = config.limits.header_read_timeout;
        let mut deadline = tokio::time::Instant::now() + limit;
        // HTTP/1.1 pass-through and SSE are served without hyper (on TLS connections
        // after the handshake, unless ALPN picked HTTP/2); the first request that is
        // neither hands the connection (and the bytes read) to hyper. The two arms are
        // alike but not folded into one generic helper: awaiting the SSE stream inside
        // it cost ~1.2 KiB more per idle stream (`bench/sse_idle_memory.py`).
        let mut stream = stream;
        let (read, io) = match (self.kind, &state.tls) {
            (Kind::Tls, Some(tls)) => {
                let acceptor = tls.acceptor();
                let mut stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                let read = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Bytes::new()
                } else {
                    match Box::pin(crate::proxy::h1::serve(&mut stream, &state, peer, deadline)).await {
                        Handoff::Sse(req) => {
                            drop(config);
                            return Box::pin(crate::sse::h1::serve(stream, &state.realtime, peer, *req)).await;
                        }
                        Handoff::Hyper { read, served } => {
                            if served {
                                deadline = tokio::time::Instant::now() + limit;
                            }
                            read
                        }
                        Handoff::Closed(why) => {
                            // close_notify: a body that ends with the connection must not
                            // look truncated to the client.
                            let _ = tokio::time::timeout(limit, stream.shutdown()).await;
                            return tracing::debug!("{why}");
                        }
                    }
                };
                (read, Either::Right(stream))
            }
            (Kind::Public, _) => match Box::pin(crate::proxy::h1::serve(&mut stream, &state, peer, deadline)).await {
                Handoff::Sse(req) => {
                    drop(config);
                    // Boxed: the other connections' tasks must not carry a stream's size.
                    return Box::pin(crate::sse::h1::serve(stream, &state.realtime, peer, *req)).await;
                }
                Handoff::Hyper { read, served } => {
                    if served {
                        deadline = tokio::time::Instant::now() + limit;
                    }
                    (read, Either::Left(stream))
                }
                Handoff::Closed(why) => return tracing::debug!("{why}"),
            },
            _ => (Bytes::new(), Either::Left(stream)),
        };
        // A reload while requests were served here applies to hyper's part. Set up only
        // now: a stream served above must not keep hyper's connection state alive.
        let config = state.config.load_full();
        let stream = Rewind { read, inner: io };
        let first_request = CancellationToken::new();
        let seen = first_request.clone();
        let abort = CancellationToken::new();
        let abort_handle = Abort(abort.clone());
        let svc_state = Arc::clone(&state);
        let service = service_fn(move |mut req: Request<Incoming>| {
            seen.cancel();
            req.extensions_mut().insert(abort_handle.clone());
            let state = Arc::clone(&svc_state);
            async move { Ok::<_, Infallible>(dispatch(state, kind, peer, req).await) }
        });
        let (streams, open) = watch::channel(0);
        let exec = Executor { shutdown: state.shutdown.clone(), streams: Arc::new(streams) };
        let builder = builder(&config, exec);
        let ends = Ends {
            drain: state.shutdown.token().clone(),
            idle: idle(open, config.limits.h2_idle_timeout),
            abort,
            metrics: Arc::clone(&state.metrics),
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        // Boxed so that rustc can see the future is `Send`.
        let served: Served = Box::pin(ends.drive(conn.into_owned()));
        match first_request_within(served, &first_request, deadline).await {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
            None => tracing::debug!("no request head within header_read_timeout; closed"),
        }
    }
}

/// What ends a connection besides its client: the drain and the HTTP/2 idle timeout
/// (both gracefully: GOAWAY, or close after the request in flight), and an [`Abort`].
struct Ends<I> {
    drain: CancellationToken,
    idle: I,
    abort: CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<I: Future<Output = ()>> Ends<I> {
    async fn drive<C: Graceful>(self, conn: C) -> Result<(), BoxError> {
        let mut conn = std::pin::pin!(conn);
        let mut idle = std::pin::pin!(self.idle);
        let mut closing = false;
        loop {
            tokio::select! {
                out = conn.as_mut() => return out,
                () = self.abort.cancelled() => return Err("connection aborted by sidewire".into()),
                () = self.drain.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut idle, if !closing => {
                    closing = true;
                    self.metrics.eviction("h2_idle");
                    tracing::debug!("HTTP/2 connection idle for limits.h2_idle_timeout; GOAWAY");
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection that can be asked to finish: hyper-util's auto connection.
trait Graceful: Future<Output = Result<(), BoxError>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, B, S, E> Graceful for auto::UpgradeableConnection<'static, I, S, E>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Lets a request handler drop its whole connection: an SSE stream evicted as a slow
/// consumer sits behind a full socket that hyper no longer polls it through, so the
/// eviction must close the socket itself to free the slot at once (HTTP/1 only: on
/// HTTP/2 the other streams of the connection are innocent).
#[derive(Clone)]
pub struct Abort(pub CancellationToken);

/// Drives `conn`, but drops it (closing the socket) if no request has started by
/// `deadline` (`limit` after the accept). hyper's own `header_read_timeout` only starts once the auto builder has read
/// enough to pick HTTP/1, so a client that sends nothing, or part of the HTTP/2
/// preface, would otherwise hold its socket forever (slowloris). Later requests are
/// hyper's business: HTTP/1 applies its timeout to every head.
async fn first_request_within(
    conn: Served,
    first: &CancellationToken,
    deadline: tokio::time::Instant,
) -> Option<Result<(), BoxError>> {
    let deadline = async {
        if tokio::time::timeout_at(deadline, first.cancelled()).await.is_ok() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        out = conn => Some(out),
        () = deadline => None,
    }
}

/// A socket with the bytes already read from it (the first request head, read to see
/// whether it opens an SSE stream) put back in front.
struct Rewind<T> {
    read: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        if self.read.is_empty() {
            self.read = Bytes::new(); // an empty view would still hold the whole buffer
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn dispatch(state: Arc<State>, kind: Kind, peer: Peer, req: Request<Incoming>) -> Response<Body> {
    match kind {
        Kind::Admin => crate::admin::handle(&state.admin, req).await,
        Kind::Public | Kind::Tls => crate::handle(state, peer, req).await,
    }
}
