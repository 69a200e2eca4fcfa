//! WebSocket transport (SPEC §4): the handshake on a `websocket` route, then one session
//! task per connection speaking the JSON protocol.
//!
//! The 101 is returned at once and the session runs on the shutdown tracker (hyper
//! forgets upgraded connections). Limits and the origin are checked before the upgrade
//! (HTTP 429/403); identity is settled inside the session so failures become close codes
//! 4001–4003 (1011 when the backend cannot answer). The session loop only finds the next
//! event ([`Conn::poll_event`], a hand-written poll that re-polls a wait only when its
//! wake-up flag says it can have fired) and hands it to a named function. Frame-level
//! plumbing (handshake, stream config, read errors to 1002/1007/1009, the closing
//! handshake) is in `frames.rs`, shared with the Autobahn conformance example; client
//! requests are handled in `requests.rs`.

mod cut;
pub mod frames;
mod requests;

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::task::{ArcWake, AtomicWaker, waker_ref};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame, Utf8Bytes};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::auth::{self, AuthError, AuthRequest, Credential, Identity};
use crate::config::{Config, RouteConfig, Transport};
use crate::hub::{Inbox, Message, Outbox, outbox_with};
use crate::limits::Admission;
use crate::protocol::{self, ErrorCode, close_code};
use crate::proxy::Peer;
use crate::realtime::Realtime;
use crate::respond::{Body, Rejection, empty};
use crate::session::Session;
use crate::template::{FillError, Params};
use crate::{identity, policy, router};

/// Messages written per flush when several are queued.
const BATCH: usize = 64;
/// Rate-limit violations, net of messages within the rate, before the connection is
/// closed with 1008.
const MAX_STRIKES: u32 = 10;
/// Client messages awaiting the backend webhook at once, per connection.
const MAX_PENDING_WEBHOOKS: usize = 16;

type Ws = WebSocketStream<cut::Cut<TokioIo<Upgraded>>>;
type Expiry = Pin<Box<dyn Future<Output = Result<Arc<Identity>, AuthError>> + Send>>;

/// Validates the handshake (HTTP/1.1 upgrade or HTTP/2 extended CONNECT), checks origin
/// and limits, and answers 101 (or 200 on HTTP/2).
pub fn upgrade(
    state: &Arc<Realtime>,
    config: &Arc<Config>,
    route: &RouteConfig,
    params: Params,
    peer: Peer,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Rejection> {
    // Taken before anything is checked against `config`: a reload from here on is seen.
    let reload = state.next_reload();
    let handshake = frames::handshake(&req)?;
    identity::check_origin(config, &req, peer.tls).inspect_err(|_| state.metrics.refused("websocket", "origin"))?;
    let query = router::query_pairs(req.uri().query());
    let cred = auth::credential(&config.auth, req.headers(), &query, peer);
    let admission = state
        .limits
        .admit(peer.addr.ip(), &config.limits)
        .inspect_err(|_| state.metrics.refused("websocket", "limit"))?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = Context {
        state: Arc::clone(state),
        config: Arc::clone(config),
        route: route.clone(),
        params,
        cred,
        path: req.uri().path().to_owned(),
        ip: peer.addr.ip(),
        reload,
    };
    state.shutdown.spawn(async move {
        match on_upgrade.await {
            Ok(io) => run(ctx, admission, io).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let protocol = if handshake == frames::Handshake::Connect { "h2" } else { "http/1.1" };
    state.metrics.websocket_handshake(protocol);
    Ok(frames::accept(&handshake).map(|()| empty()))
}

/// What the session task takes from the handshake.
struct Context {
    state: Arc<Realtime>,
    config: Arc<Config>,
    route: RouteConfig,
    params: Params,
    cred: Option<Credential>,
    path: String,
    /// The client's address: anonymous publishes spend this address's budget.
    ip: std::net::IpAddr,
    /// Cancelled at the next reload (then replaced): the session re-checks itself.
    reload: CancellationToken,
}

/// Net rate-limit violations of one connection, by limit.
#[derive(Default)]
struct Strikes {
    rate: u32,
    budget: u32,
}

/// One connection's state inside its task.
struct Conn {
    ctx: Context,
    ws: Ws,
    session: Session,
    outbox: Outbox,
    inbox: Inbox,
    limiter: governor::DefaultDirectRateLimiter,
    /// Net violations of `client_rate` and of the identity's publish budget, counted
    /// apart: a message within one limit must not forgive a violation of the other.
    strikes: Strikes,
    last_seen: Instant,
    /// Resolves when the identity's TTL ends and the backend has answered again;
    /// `None` for identities that never expire (anonymous): idle memory matters.
    expiry: Option<Expiry>,
    /// Frames produced by tasks working for this connection (webhook answers); created
    /// on first use, since most connections never publish through the backend.
    replies: Option<(mpsc::Sender<String>, mpsc::Receiver<String>)>,
    interrupt: Interrupt,
    /// Channels subscribed with `echo: false`: this connection's own publishes there are
    /// not sent back to it.
    quiet: Vec<crate::names::ChannelName>,
}

/// What ends a session whatever it is doing, even in the middle of a write: one token,
/// a child of the shutdown token that the hub also cancels on queue overflow (one future
/// to poll per wake-up instead of two).
struct Interrupt {
    token: CancellationToken,
    shutdown: CancellationToken,
}

impl Interrupt {
    /// Resolves with the close to send once it has fired. Cancel-safe.
    async fn fired(&self) -> End {
        self.token.cancelled().await;
        self.end()
    }

    /// The close to send once the interrupt has fired.
    fn end(&self) -> End {
        if self.shutdown.is_cancelled() {
            End::Close(close_code::GOING_AWAY, "server shutting down")
        } else {
            End::Close(close_code::SLOW_CONSUMER, "slow consumer: resume from your cursor")
        }
    }
}

/// Runs one socket write, bounded by `timeout` (a peer that stops reading must not pin
/// the task) and abandoned as soon as `interrupt` fires: a consumer too slow for its
/// queue is usually stuck in exactly such a write, and SPEC §9 drops it now, not when
/// the heartbeat timeout runs out. An abandoned write leaves frames in tungstenite's
/// buffer; the close drops them (see `cut.rs`) so the close frame goes out next.
async fn bounded<F>(interrupt: &Interrupt, timeout: Duration, write: F) -> Result<(), End>
where
    F: Future<Output = Result<(), WsError>>,
{
    // The write first, once on its own: it usually completes at once, and then neither
    // the timer nor the interrupt is set up (no clock read, timer entry or registration
    // per message). The timeout counts from its first `Pending`.
    let mut write = pin!(write);
    if let Poll::Ready(written) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return written.map_err(|_| End::Gone);
    }
    tokio::select! {
        biased;
        written = tokio::time::timeout(timeout, write) => match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        },
        end = interrupt.fired() => Err(end),
    }
}

/// What [`Conn::poll_event`] found to do.
enum Event {
    Interrupt,
    Message(Arc<Message>),
    Reply(String),
    Frame(Option<Result<Frame, WsError>>),
    Expiry(Result<Arc<Identity>, AuthError>),
    Reload,
    Heartbeat,
}

/// A wake-up flag: the waker handed to a source, which notes that the source can have
/// fired before waking the task. The task polls the source again only then.
struct Flag {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Flag {
    fn wake_by_ref(flag: &Arc<Self>) {
        flag.fired.store(true, Ordering::Release);
        flag.task.wake();
    }
}

impl Flag {
    /// Set at first: every source is polled once, to register.
    fn new() -> Arc<Self> {
        Arc::new(Self { fired: AtomicBool::new(true), task: AtomicWaker::new() })
    }

    /// Whether the flag was set since the last call (and clears it). `task` is woken by
    /// the next wake-up: registered first, so none is lost in between.
    fn take(&self, task: &Waker) -> bool {
        self.task.register(task);
        self.fired.load(Ordering::Acquire) && self.fired.swap(false, Ordering::AcqRel)
    }
}

/// Sources [`Conn::poll_event`] polls only when due, one bit each.
const INTERRUPT: u8 = 1;
const READ: u8 = 2;
const EXPIRY: u8 = 4;
const RELOAD: u8 = 8;
const HEARTBEAT: u8 = 16;
/// The sources woken through [`Waits::other`]: all rare, so one flag (one allocation)
/// serves them, and one firing has the others polled too.
const OTHER: u8 = INTERRUPT | EXPIRY | RELOAD | HEARTBEAT;

/// The session's waits besides its queues, and which of them are due for a poll. Two
/// flags, allocated once per session: the socket's read side (the frequent one) and
/// the rest.
struct Waits {
    read: Arc<Flag>,
    other: Arc<Flag>,
    due: Due,
    heartbeat: tokio::time::Interval,
}

impl Waits {
    fn new(heartbeat: tokio::time::Interval) -> Self {
        Self { read: Flag::new(), other: Flag::new(), due: Due(0), heartbeat }
    }
}

/// Sources to poll: those whose flag fired, and those that were ready when last polled
/// (a ready source registered no waker; it may be ready again, or was replaced) or not
/// reached (an earlier source was ready first).
struct Due(u8);

impl Due {
    fn collect(&mut self, read: &Flag, other: &Flag, task: &Waker) {
        if read.take(task) {
            self.0 |= READ;
        }
        if other.take(task) {
            self.0 |= OTHER;
        }
    }

    /// Whether `source` is due; it is not any more (its poll registers its flag).
    fn take(&mut self, source: u8) -> bool {
        let due = self.0 & source != 0;
        self.0 &= !source;
        due
    }

    /// `source` was ready: it is polled again next time.
    fn ready(&mut self, source: u8, event: Event) -> Poll<Event> {
        self.0 |= source;
        Poll::Ready(event)
    }
}

/// Why a session ended; decides the close frame.
enum End {
    /// The client left or the socket failed: nothing more to send.
    Gone,
    Close(u16, &'static str),
    /// The client broke the protocol; its remaining input is unreadable.
    Fail(frames::ErrorClose),
}

async fn run(ctx: Context, admission: Admission, io: Upgraded) {
    let config = Some(frames::config(ctx.config.limits.max_message_bytes));
    let io = cut::Cut::new(TokioIo::new(io));
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, config).await;
    // WebSocket channels come from the route or later `subscribe` requests, not the query.
    let channels = identity::requested_channels(&ctx.route, &ctx.params, &[]);
    let ask = AuthRequest { transport: "websocket", path: &ctx.path, channels };
    let identity = match Box::pin(ctx.state.auth.identify(&ctx.state.backend, ctx.cred.as_ref(), ask)).await {
        Ok(id) => id,
        Err(e) => {
            ctx.state.metrics.refused("websocket", e.refusal());
            return frames::close(&mut ws, e.close_code(), e.reason()).await;
        }
    };
    let session = Session::with_admission(&ctx.state, admission, Transport::WebSocket, identity);
    let shutdown = ctx.state.shutdown.token().clone();
    let token = shutdown.child_token();
    let queue = ctx.config.limits.subscriber_queue;
    let (outbox, inbox) = outbox_with(session.conn, session.member.clone(), queue, token.clone());
    let limiter = crate::limits::client_rate(ctx.config.limits.client_rate);
    let expiry = arm_expiry(&ctx, Arc::clone(&session.identity));
    let interrupt = Interrupt { token, shutdown };
    let mut conn = Conn {
        interrupt,
        ctx,
        ws,
        session,
        outbox,
        inbox,
        limiter,
        strikes: Strikes::default(),
        last_seen: Instant::now(),
        expiry,
        replies: None,
        quiet: Vec::new(),
    };
    // Boxed: the start-up and request-handling futures are large and rare; kept inline
    // they would sit in every idle connection's task.
    let end = match Box::pin(conn.start()).await {
        Ok(()) => conn.serve().await,
        Err(end) => end,
    };
    match end {
        End::Close(code, reason) => {
            conn.session.ended = Some((code, reason));
            // The session ends now: its slot, subscriptions and queue are freed whatever
            // the closing handshake takes. Messages not yet written are dropped so the
            // close frame reaches a slow-but-alive client next.
            let Conn { ctx, mut ws, session, outbox, inbox, .. } = conn;
            drop((session, outbox, inbox));
            ws.get_mut().cut();
            // A slow consumer gets until the write-stall limit to read its close; at
            // shutdown the drain does not wait for slow readers beyond CLOSE_TIMEOUT.
            let send =
                if code == close_code::SLOW_CONSUMER { ctx.config.heartbeat.timeout } else { frames::CLOSE_TIMEOUT };
            Box::pin(frames::close_within(&mut ws, code, reason, send)).await
        }
        End::Fail(e) => {
            conn.session.ended = Some((e.code, e.reason));
            Box::pin(frames::fail(&mut conn.ws, e)).await
        }
        End::Gone => {}
    }
}

fn arm_expiry(ctx: &Context, identity: Arc<Identity>) -> Option<Expiry> {
    identity.expires?;
    let state = Arc::clone(&ctx.state);
    Some(Box::pin(auth::recheck(state, ctx.cred.clone(), identity, "websocket", ctx.path.clone())))
}

impl Conn {
    /// `welcome`, then the route's own channels.
    async fn start(&mut self) -> Result<(), End> {
        let conn_name = self.ctx.state.broker.hub().conn_name(self.session.conn);
        let body = serde_json::json!({ "user": self.session.identity.user, "connection": conn_name });
        self.send(protocol::encode("welcome", body, None)).await?;
        for template in self.ctx.route.channels.clone() {
            match template.fill(&self.ctx.params, self.session.identity.user.as_deref()) {
                Ok(name) => self.subscribe(name.as_str(), None, None).await?,
                Err(FillError::NoUser) => {
                    return Err(End::Close(close_code::AUTH_REQUIRED, "Authentication required"));
                }
                // A path segment that makes no valid channel is the client's mistake in
                // the URL, not missing credentials: an error reply, as for `subscribe`.
                Err(e) => {
                    let msg = format!("this path names no valid channel: {e}");
                    self.send(protocol::error(ErrorCode::BadRequest, &msg, None)).await?;
                }
            }
        }
        Ok(())
    }

    async fn serve(&mut self) -> End {
        let interval = self.ctx.config.heartbeat.interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waits = Waits::new(heartbeat);
        // Registered once and kept (not re-created per wake-up as a `select!` would).
        let mut interrupt = pin!(self.interrupt.token.clone().cancelled_owned());
        let mut reload = pin!(self.ctx.reload.clone().cancelled_owned());
        loop {
            let event = poll_fn(|cx| self.poll_event(cx, &mut waits, interrupt.as_mut(), reload.as_mut())).await;
            let step = match event {
                Event::Interrupt => Err(self.interrupt.end()),
                Event::Message(msg) => self.deliver(msg).await,
                Event::Reply(frame) => Box::pin(self.send(frame)).await,
                Event::Frame(frame) => Box::pin(self.on_frame(frame)).await,
                Event::Expiry(verdict) => self.on_expiry(verdict),
                Event::Reload => {
                    let step = self.on_reload();
                    reload.set(self.ctx.reload.clone().cancelled_owned());
                    step
                }
                Event::Heartbeat => Box::pin(self.heartbeat()).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// The next thing the session must do, in this order: an interrupt ends the session
    /// before anything else; then queued messages (`deliver` drains up to `BATCH`, so
    /// the client's frames still get their turn), webhook replies, client frames, the
    /// identity's expiry, a reload, the heartbeat.
    ///
    /// The inbox and the replies are polled on every wake-up (cheap, and the inbox is
    /// what wakes the task almost every time). The others are polled only when their
    /// flag says they can have fired ([`Waits`]): a wake-up that brought a message does
    /// not touch the socket's read registration, the cancellation tokens or the timer.
    /// Every source polled here is cancel-safe, as under `select!`: the persistent
    /// cancellation futures and the boxed expiry are polled by ref, tungstenite keeps
    /// partial frames buffered, channel receives and interval ticks lose nothing.
    fn poll_event(
        &mut self,
        cx: &mut TaskCx<'_>,
        waits: &mut Waits,
        interrupt: Pin<&mut WaitForCancellationFutureOwned>,
        reload: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Poll<Event> {
        let Waits { read, other, due, heartbeat } = waits;
        due.collect(read, other, cx.waker());
        let read = waker_ref(read);
        let other = waker_ref(other);
        let mut other = TaskCx::from_waker(&other);
        if due.take(INTERRUPT) && interrupt.poll(&mut other).is_ready() {
            return due.ready(INTERRUPT, Event::Interrupt);
        }
        if let Poll::Ready(Some(msg)) = self.inbox.poll_recv(cx) {
            return Poll::Ready(Event::Message(msg));
        }
        if let Some((_, rx)) = &mut self.replies
            && let Poll::Ready(Some(frame)) = rx.poll_recv(cx)
        {
            return Poll::Ready(Event::Reply(frame));
        }
        if due.take(READ)
            && let Poll::Ready(frame) = self.ws.poll_next_unpin(&mut TaskCx::from_waker(&read))
        {
            return due.ready(READ, Event::Frame(frame));
        }
        if due.take(EXPIRY)
            && let Some(expiry) = &mut self.expiry
            && let Poll::Ready(verdict) = expiry.as_mut().poll(&mut other)
        {
            return due.ready(EXPIRY, Event::Expiry(verdict));
        }
        if due.take(RELOAD) && reload.poll(&mut other).is_ready() {
            return due.ready(RELOAD, Event::Reload);
        }
        if due.take(HEARTBEAT) && heartbeat.poll_tick(&mut other).is_ready() {
            return due.ready(HEARTBEAT, Event::Heartbeat);
        }
        Poll::Pending
    }

    /// The identity's TTL ended: keep going with the fresh answer, or close 4002/4003.
    fn on_expiry(&mut self, verdict: Result<Arc<Identity>, AuthError>) -> Result<(), End> {
        let metrics = &self.ctx.state.metrics;
        let identity = verdict.map_err(|e| {
            metrics.eviction("auth_revoked");
            End::Close(e.close_code(), e.reason())
        })?;
        let config = self.ctx.state.config.load();
        if self.session.channels.iter().any(|c| policy::authorize(&config, &identity, c).is_err()) {
            metrics.eviction("auth_revoked");
            return Err(End::Close(close_code::FORBIDDEN, "Forbidden"));
        }
        self.expiry = arm_expiry(&self.ctx, Arc::clone(&identity));
        self.session.identity = identity;
        Ok(())
    }

    /// The config was reloaded: an identity that may no longer hold its channels (or be
    /// anonymous at all) is closed 4001 / 4003.
    fn on_reload(&mut self) -> Result<(), End> {
        self.ctx.reload = self.ctx.state.next_reload();
        let config = self.ctx.state.config.load();
        crate::realtime::still_allowed(&config, &self.session.identity, &self.session.channels)
            .map_err(|e| End::Close(e.close_code(), e.reason()))
    }

    /// Writes one frame (see [`bounded`]).
    async fn send(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), End> {
        let timeout = self.ctx.config.heartbeat.timeout;
        let write = self.ws.send(Frame::Text(text.into()));
        bounded(&self.interrupt, timeout, write).await
    }

    /// Sends `first` and whatever else is queued, then flushes once.
    async fn deliver(&mut self, first: Arc<Message>) -> Result<(), End> {
        let Conn { ctx, ws, session, inbox, interrupt, quiet, .. } = self;
        let mut next = Some(first);
        let write = async {
            let mut n = 0;
            while let Some(msg) = next.take() {
                // Messages queued before an unsubscribe are not delivered after it.
                if session.channels.contains(&msg.channel) && !echo_off(quiet, session.conn, &msg) {
                    ws.feed(text_frame(&msg)).await?;
                    session.delivered += 1;
                }
                n += 1;
                if n < BATCH {
                    next = inbox.try_recv();
                }
            }
            ws.flush().await
        };
        bounded(interrupt, ctx.config.heartbeat.timeout, write).await
    }

    async fn heartbeat(&mut self) -> Result<(), End> {
        if self.last_seen.elapsed() >= self.ctx.config.heartbeat.timeout {
            self.ctx.state.metrics.eviction("heartbeat_timeout");
            return Err(End::Close(close_code::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
        }
        let timeout = self.ctx.config.heartbeat.timeout;
        let write = self.ws.send(Frame::Ping(Default::default()));
        bounded(&self.interrupt, timeout, write).await
    }

    async fn on_frame(&mut self, frame: Option<Result<Frame, WsError>>) -> Result<(), End> {
        let frame = match frame {
            None => return Err(End::Gone),
            Some(Err(e)) => return Err(self.on_error(e)),
            Some(Ok(f)) => f,
        };
        self.last_seen = Instant::now();
        match frame {
            Frame::Text(text) => {
                if self.rate_limited().await? {
                    return Ok(());
                }
                self.on_text(&text).await
            }
            Frame::Binary(_) => {
                if self.rate_limited().await? {
                    return Ok(());
                }
                let msg = "binary frames are not supported; send JSON text";
                self.send(protocol::error(ErrorCode::BadRequest, msg, None)).await
            }
            // Pings are answered by tungstenite on the next write; the Close reply too,
            // once we keep reading until the stream ends.
            Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => {
                let timeout = self.ctx.config.heartbeat.timeout;
                bounded(&self.interrupt, timeout, self.ws.flush()).await
            }
            Frame::Close(_) => {
                frames::finish_close(&mut self.ws).await;
                Err(End::Gone)
            }
        }
    }

    fn on_error(&self, e: WsError) -> End {
        match frames::close_for(&e) {
            Some(c) => {
                self.ctx.state.metrics.eviction(c.why);
                End::Fail(c)
            }
            None => End::Gone,
        }
    }

    /// Applies `client_rate`; `Ok(true)` means the frame was refused with `rate_limited`.
    async fn rate_limited(&mut self) -> Result<bool, End> {
        if self.limiter.check().is_ok() {
            // Forgive one strike, not all: a client that bursts once recovers, but one
            // that keeps sending above the rate (so a token sometimes lets a message
            // through) still runs out, instead of resetting its count every refill.
            self.strikes.rate = self.strikes.rate.saturating_sub(1);
            return Ok(false);
        }
        self.strikes.rate += 1;
        self.strike(self.strikes.rate, "too many messages; slow down", None).await?;
        Ok(true)
    }

    /// Answers a rate-limit violation (`client_rate` or the identity's publish budget),
    /// the `strikes`th net one of its kind: `rate_limited` with `message`, or close 1008
    /// once the strikes run out.
    async fn strike(
        &mut self,
        strikes: u32,
        message: &str,
        r: Option<&serde_json::value::RawValue>,
    ) -> Result<(), End> {
        if strikes > MAX_STRIKES {
            self.ctx.state.metrics.eviction("rate_limit");
            return Err(End::Close(close_code::POLICY, "rate limit exceeded repeatedly"));
        }
        self.send(protocol::error(ErrorCode::RateLimited, message, r)).await
    }

    /// Writes the `subscribed` reply and the replayed history after it, flushed once (one
    /// socket write when they fit tungstenite's write buffer), bounded like every other
    /// write: a resuming client that stops reading must not pin the session (and so
    /// shutdown) forever.
    async fn replay(&mut self, reply: String, messages: Vec<Arc<Message>>) -> Result<(), End> {
        let timeout = self.ctx.config.heartbeat.timeout;
        let (quiet, conn) = (&self.quiet, self.session.conn);
        let ws = &mut self.ws;
        let write = async move {
            ws.feed(Frame::Text(reply.into())).await?;
            for msg in messages.iter().filter(|m| !echo_off(quiet, conn, m)) {
                ws.feed(text_frame(msg)).await?;
            }
            ws.flush().await
        };
        bounded(&self.interrupt, timeout, write).await
    }
}

/// Whether `msg` is this connection's own publish on a channel it subscribed to with
/// `echo: false`.
fn echo_off(quiet: &[crate::names::ChannelName], conn: crate::hub::ConnId, msg: &Message) -> bool {
    msg.from == Some(conn) && quiet.contains(&msg.channel)
}

/// The message's text frame. Encoded once per message into its `ws` slot and shared by
/// every subscriber; sent as a raw frame because the JSON we encoded is UTF-8 already
/// (a `Text` message would be validated again for each subscriber).
fn text_frame(msg: &Message) -> Frame {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as Raw;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let payload = msg.ws.get_or_init(|| bytes::Bytes::from(protocol::encode_message(msg))).clone();
    Frame::Frame(Raw::message(payload, OpCode::Data(Data::Text), true))
}
