//! The pass-through keep-alive pool: one per serving thread, each backend connection
//! driven by the task of the request that holds it.
//!
//! hyper-util's pooled client runs every backend connection as a task of its own and
//! hands it requests and response chunks over channels, so each exchange wakes two tasks
//! and each response chunk crosses a channel to a second one. Here the request's task
//! polls the connection itself: while it waits for the response head ([`Lease::send`])
//! and while the response body streams to the client ([`Streaming`]); once the body has
//! ended the connection goes back to the pool. nginx's upstream keepalive works the same
//! way: the request's event handler drives the upstream socket.
//!
//! Owns: this thread's idle connections, at most `backend.pool_max_idle`, each closed
//! after `backend.pool_idle_timeout` unused or as soon as a check finds the backend
//! closed it (at checkout, and by a reaper task while any are idle).
//! Invariants: a connection is put back only after its response has ended (hyper then
//! has it ready for the next request), never while a response is half read; a request
//! is sent on a connection only after a check that the backend has not closed it, and a
//! request that may have been written is never retried.
//! Used for plain pass-through only: upgrades (WebSocket tunnels) and the auth and
//! webhook calls go through hyper-util's client ([`super::Proxy::send`]).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::BackendConfig;
use crate::respond::{Body, BoxError};

type Conn = http1::Connection<TokioIo<TcpStream>, Body>;

/// Rounds of a [`Relay`] poll loop before it falls back to a real self-wake.
const MAX_ROUNDS: usize = 16;

/// The waker a connection and its channels are polled with. hyper's connection, the
/// response channel and the body channel wake each other as they hand data across;
/// here all three are polled by one task in one loop, so such a wake, made while the
/// loop runs, only asks the loop for one more round instead of re-scheduling the whole
/// client connection's task (measured: ~3 spurious task polls per request). Wakes from
/// outside the loop (socket readiness, timers, other tasks) reach the task as usual.
struct Relay {
    task: AtomicWaker,
    state: AtomicU8,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.state.compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

/// A connection's relay and the waker made from it, allocated once per connection.
struct Driver {
    relay: Arc<Relay>,
    waker: Waker,
}

impl Driver {
    fn new() -> Self {
        let relay = Arc::new(Relay { task: AtomicWaker::new(), state: AtomicU8::new(IDLE) });
        let waker = Waker::from(Arc::clone(&relay));
        Self { relay, waker }
    }

    /// Runs `step` with the relay's waker until it is ready, or until no wake arrived
    /// during a round (then pending: an outside wake will come).
    fn run<T>(&self, cx: &mut Context<'_>, mut step: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        self.relay.task.register(cx.waker());
        self.relay.state.store(POLLING, Ordering::Release);
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..MAX_ROUNDS {
            if let Poll::Ready(out) = step(&mut inner) {
                self.relay.state.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            // Woken during the round: go again. Otherwise leave, unless a wake slips in.
            if self.relay.state.compare_exchange(WOKEN, POLLING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                continue;
            }
            if self.relay.state.compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Poll::Pending;
            }
            self.relay.state.store(POLLING, Ordering::Release);
        }
        self.relay.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Least and most time between two checks of the idle connections.
const REAP_MIN: Duration = Duration::from_secs(1);
const REAP_MAX: Duration = Duration::from_secs(30);

/// One serving thread's backend connections for pass-through.
pub struct Pool {
    idle: Arc<Mutex<Idle>>,
    builder: http1::Builder,
    host: String,
    port: u16,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Idle {
    conns: Vec<Parked>,
    /// Whether a reaper task is running for these connections.
    reaping: bool,
}

/// A connection waiting for its next request.
struct Parked {
    link: Box<Link>,
    since: Instant,
}

/// One backend connection: what a lease drives and the pool keeps. Boxed once per
/// connection, so that a checkout and a release move a pointer, not hyper's connection
/// state (about a kilobyte, moved ~10 times per request unboxed: measured as 20 % of
/// the instructions per request).
struct Link {
    tx: http1::SendRequest<Body>,
    /// `None` once hyper's connection future has finished (closed or failed).
    conn: Option<Conn>,
    driver: Driver,
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum CheckoutError {
    /// TCP connect failed or timed out.
    Connect(String),
    /// The HTTP/1 handshake on a new connection failed.
    Handshake(hyper::Error),
}

impl Pool {
    pub fn new(backend: &BackendConfig) -> Self {
        let mut builder = http1::Builder::new();
        builder.max_buf_size(backend.read_buffer_bytes);
        let host = backend.origin.host();
        // An IPv6 literal comes bracketed in the authority; the resolver wants it bare.
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_owned();
        Self {
            idle: Arc::default(),
            builder,
            host,
            port: backend.origin.port_u16().unwrap_or(80),
            connect_timeout: backend.connect_timeout,
            max_idle: backend.pool_max_idle,
            idle_timeout: backend.pool_idle_timeout,
        }
    }

    /// A connection ready for a request: the most recently used idle one that is still
    /// open, or a new one.
    pub async fn checkout(&self) -> Result<Lease, CheckoutError> {
        loop {
            let parked = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                // Parked in order: the expired ones are at the front.
                let now = Instant::now();
                let expired = idle.conns.iter().take_while(|p| now.saturating_duration_since(p.since) >= self.idle_timeout).count();
                idle.conns.drain(..expired);
                idle.conns.pop()
            };
            let Some(mut parked) = parked else { break };
            let Link { tx, conn, driver } = &mut *parked.link;
            if poll_fn(|cx| driver.run(cx, |cx| Poll::Ready(usable(conn, tx, cx)))).await {
                return Ok(Lease { link: parked.link, home: Arc::downgrade(&self.idle), pool: self.limits() });
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<Lease, CheckoutError> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(CheckoutError::Connect(format!("tcp connect error: {e}"))),
            Err(_) => {
                return Err(CheckoutError::Connect(format!("tcp connect timed out after {:?}", self.connect_timeout)));
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "backend connection: TCP_NODELAY not set");
        }
        let (tx, conn) = self.builder.handshake(TokioIo::new(stream)).await.map_err(CheckoutError::Handshake)?;
        let driver = Driver::new();
        let link = Box::new(Link { tx, conn: Some(conn), driver });
        Ok(Lease { link, home: Arc::downgrade(&self.idle), pool: self.limits() })
    }

    fn limits(&self) -> Limits {
        Limits { max_idle: self.max_idle, idle_timeout: self.idle_timeout }
    }
}

/// Whether a parked connection can take a request now: the backend has not closed it
/// (polling it reads a pending EOF or error) and hyper is ready for the next request.
fn usable(conn: &mut Option<Conn>, tx: &http1::SendRequest<Body>, cx: &mut Context<'_>) -> bool {
    let open = conn.as_mut().is_some_and(|c| Pin::new(c).poll(cx).is_pending());
    if !open {
        *conn = None;
    }
    open && tx.is_ready()
}

/// The pool's bounds, carried by each lease to put its connection back.
#[derive(Clone, Copy)]
struct Limits {
    max_idle: usize,
    idle_timeout: Duration,
}

/// A connection taken from the pool for one exchange.
pub struct Lease {
    link: Box<Link>,
    home: Weak<Mutex<Idle>>,
    pool: Limits,
}

impl Lease {
    /// Sends `req` and waits for the response head, driving the connection meanwhile
    /// (it writes the request and its body, then reads the head).
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        let Link { tx, conn, driver } = &mut *self.link;
        let mut answer = std::pin::pin!(tx.send_request(req));
        poll_fn(|cx| {
            driver.run(cx, |cx| {
                // The connection first: it writes the request, then reads the answer.
                if let Some(c) = conn
                    && Pin::new(c).poll(cx).is_ready()
                {
                    // Closed or failed: hyper has answered the request with an error.
                    *conn = None;
                }
                answer.as_mut().poll(cx)
            })
        })
        .await
    }

    /// Puts the connection back in its pool (its response has ended), unless it has
    /// closed, the pool is gone (config reloaded) or full.
    fn release(self) {
        let Some(home) = self.home.upgrade() else { return };
        if self.link.conn.is_none() || self.link.tx.is_closed() {
            return;
        }
        let mut idle = home.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.conns.len() >= self.pool.max_idle {
            return;
        }
        // Parked, it wakes no client task (and keeps none alive).
        drop(self.link.driver.relay.task.take());
        idle.conns.push(Parked { link: self.link, since: Instant::now() });
        if !idle.reaping {
            idle.reaping = true;
            drop(idle);
            // Sessions run on the serving threads' runtimes; a lease outside one (never
            // the case for pass-through) just goes without a reaper.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(reap(Arc::downgrade(&home), self.pool.idle_timeout));
            }
        }
    }

    /// The response's body, streamed with this lease driving the connection; the lease
    /// goes back to the pool when the body ends.
    pub fn stream(self, res: Response<Incoming>) -> Response<Body> {
        use http_body::Body as _;
        if res.body().is_end_stream() {
            self.release();
            return res.map(|b| http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(b, Into::into)));
        }
        res.map(|body| http_body_util::BodyExt::boxed_unsync(Streaming { body, lease: Some(self) }))
    }
}

/// Closes idle connections that expired or that the backend closed, every
/// `idle_timeout` (bounded to 1–30 s) while there are any.
async fn reap(idle: Weak<Mutex<Idle>>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).clamp(REAP_MIN, REAP_MAX);
    loop {
        tokio::time::sleep(every).await;
        let Some(idle) = idle.upgrade() else { return };
        let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Polled with a no-op waker: a pending EOF or error ends the connection; the
        // waker it leaves registered is replaced by the next real poll.
        let mut cx = Context::from_waker(Waker::noop());
        idle.conns.retain_mut(|p| p.since.elapsed() < idle_timeout && usable(&mut p.link.conn, &p.link.tx, &mut cx));
        if idle.conns.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}

/// A backend response body that drives its connection while the client reads it.
struct Streaming {
    body: Incoming,
    /// Given back to the pool at the body's end; dropped (closing the connection) if the
    /// body is abandoned half read.
    lease: Option<Lease>,
}

impl Streaming {
    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl http_body::Body for Streaming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let out = match &mut this.lease {
            None => Pin::new(&mut this.body).poll_frame(cx),
            Some(lease) => {
                let Link { conn, driver, .. } = &mut *lease.link;
                driver.run(cx, |cx| {
                    // The body first: it asks hyper for more (hyper reads only what is asked
                    // for); the connection then reads it, and the next round takes it.
                    let out = Pin::new(&mut this.body).poll_frame(cx);
                    if out.is_pending()
                        && let Some(c) = conn
                        && Pin::new(c).poll(cx).is_ready()
                    {
                        *conn = None;
                    }
                    out
                })
            }
        };
        match &out {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        out.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
