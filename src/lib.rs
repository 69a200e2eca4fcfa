//! sidewire: a reverse-proxy sidecar that gives a legacy HTTP application realtime
//! features (WebSocket, Server-Sent Events, long-poll) without rewriting it.
//!
//! # Layout
//! - [`config`]: YAML → `${ENV}` → typed [`Config`]; every problem with its key path.
//! - [`server`]: accept loops (public, TLS, admin) and per-connection hyper serving.
//! - [`workers`]: thread per core, the serving threads of the public and TLS listeners.
//! - [`listen`]: sockets, SO_REUSEPORT groups, and one sidewire per listen address.
//! - [`tls`]: rustls termination with certificate hot reload.
//! - [`router`]: request → [`router::Route`], pure.
//! - [`proxy`]: pass-through to the backend (hop-by-hop hygiene, X-Forwarded-*, streamed
//!   bodies, upgrade tunnels, 502/504) and [`proxy::Backend`], the pool every backend
//!   call goes through.
//! - [`asset`]: `{prefix}/client.js`, the embedded browser client.
//! - [`admin`]: the admin API (publish, presence, channels, health, readiness, metrics)
//!   and its handle. [`metrics`]: the Prometheus registry.
//! - [`shutdown`]: cancellation, task tracking and signals. [`respond`]: body type, errors.
//! - [`names`], [`template`]: channel names, patterns, route and channel templates.
//! - [`broker`]: the one publish path (ids, idempotency, history for resume; memory or
//!   Redis); [`hub`]: this instance's channels, subscribers, rings, presence, fan-out.
//! - [`ws`], [`sse`], [`longpoll`]: one transport each, built with the [`realtime`]
//!   handle; [`stream`]: the multi-channel cursor SSE and long-poll share;
//!   [`identity`]: origin and who the client is; [`policy`]: which channels it may use;
//!   [`session`]: a connection's lifetime. [`ws::frames`]: RFC 6455 plumbing, shared
//!   with the Autobahn echo example.
//! - [`protocol`]: WebSocket wire types and close codes; [`publish`]: what a publish
//!   request says and the checks every message passes (no HTTP).
//! - [`limits`]: connection admission and client message rate; [`budget`]: publish
//!   budgets per identity, shared by its connections; [`body_timeout`]: request bodies
//!   that may not stall.
//! - [`auth`]: identity from the backend, cached with single-flight; [`webhook`]: signed
//!   client messages and batched lifecycle events to the backend.
//!
//! # Startup
//! `Config::load` (pure) → [`App::bind`] (binds every listener and starts the serving
//! threads, parked; any failure is a [`BindError`]; `local_addrs()` tells tests the
//! ports) → [`App::run`] until [`Handle::shutdown`], then drain and join the threads.

pub mod admin;
pub mod asset;
pub mod auth;
pub mod body_timeout;
pub mod broker;
pub mod budget;
pub mod config;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod listen;
pub mod longpoll;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod publish;
pub mod realtime;
pub mod respond;
pub mod router;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sse;
pub mod stall;
pub mod stream;
pub mod template;
pub mod tls;
pub mod webhook;
pub mod workers;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;

pub use config::Config;
use metrics::Metrics;
use proxy::{Backend, Peer};
use respond::{Body, Rejection};
use router::Route;
use shutdown::Shutdown;
use tls::Tls;

/// The live config: replaced whole on reload, read once per request. Every handle holds it.
pub type Live = Arc<ArcSwap<Config>>;

/// Everything a running sidewire holds. The listeners (`server`, `workers`) serve with it;
/// each entry point gets only the handle it needs: [`realtime::Realtime`] for the
/// transports, [`admin::Admin`] for the admin API, [`Backend`] for pass-through.
pub struct State {
    pub config: Live,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    pub tls: Option<Arc<Tls>>,
    pub backend: Backend,
    pub realtime: Arc<realtime::Realtime>,
    pub admin: admin::Admin,
    /// Open TCP connections on the public and TLS listeners (`limits.max_open_connections`).
    pub connections: limits::Limits,
}

/// How often expired history is swept from idle channels.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Why [`App::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot start serving thread {index}: {source}")]
    Thread { index: usize, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("broker: {0}")]
    Broker(#[from] broker::BrokerError),
}

/// The addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub public: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// A bound, not yet running sidewire.
pub struct App {
    state: Arc<State>,
    /// The serving threads, bound and parked: one public (and TLS) listener each.
    workers: workers::Workers,
    admin: TcpListener,
    /// Lifecycle webhook events, consumed by the sender task once running.
    events: tokio::sync::mpsc::Receiver<serde_json::Value>,
}

/// Control of a running [`App`] from outside (signals, tests).
#[derive(Clone)]
pub struct Handle(Arc<State>);

impl App {
    /// Binds every listener, readies the serving threads and loads the TLS certificate.
    /// Nothing is served yet.
    pub async fn bind(config: Config) -> Result<Self, BindError> {
        let workers = workers::Workers::bind(&config).await?;
        let admin = listen::single("admin.listen", config.admin.listen).await?;
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(Tls::load(&t.cert, &t.key).await?)),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let broker = match &config.broker {
            config::BrokerConfig::Memory => {
                broker::Broker::Memory(Arc::new(broker::Memory::new(hub::Hub::new(metrics.hub.clone()))))
            }
            config::BrokerConfig::Redis(redis) => broker::Broker::Redis(broker::Redis::new(
                redis,
                metrics.hub.clone(),
                metrics.broker.clone(),
                config.heartbeat.interval,
            )?),
        };
        let l = &config.limits;
        broker.hub().set_limits(l.history_bytes, l.channels, l.replay_bytes);
        let (lifecycle, events) = webhook::Lifecycle::new(broker.hub().instance());
        let config: Live = Arc::new(ArcSwap::from_pointee(config));
        let shutdown = Shutdown::new();
        let backend = Backend::new(Arc::clone(&config), Arc::clone(&metrics));
        let realtime = Arc::new(realtime::Realtime {
            config: Arc::clone(&config),
            broker: broker.clone(),
            limits: limits::Limits::default(),
            budgets: budget::Budgets::default(),
            auth: auth::Auth::default(),
            lifecycle,
            backend: backend.clone(),
            metrics: Arc::clone(&metrics),
            shutdown: shutdown.clone(),
            reloads: Default::default(),
        });
        let admin_api = admin::Admin {
            config: Arc::clone(&config),
            broker,
            metrics: Arc::clone(&metrics),
            shutdown: shutdown.clone(),
        };
        let connections = limits::Limits::default();
        let state =
            Arc::new(State { config, metrics, shutdown, tls, backend, realtime, admin: admin_api, connections });
        Ok(Self { state, workers, admin, events })
    }

    pub fn local_addrs(&self) -> Addrs {
        let addr = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Addrs { public: self.workers.public_addr(), tls: self.workers.tls_addr(), admin: addr(&self.admin) }
    }

    pub fn handle(&self) -> Handle {
        Handle(Arc::clone(&self.state))
    }

    /// Serves until [`Handle::shutdown`], then drains for at most `shutdown_grace` and
    /// joins the serving threads.
    pub async fn run(self) {
        let state = self.state;
        let sd = state.shutdown.clone();
        // Every public (and TLS) listener on a serving thread of its own; this runtime
        // keeps the admin listener (where publishes fan out) and the background tasks,
        // so fan-out runs beside the sessions instead of taking turns with them.
        let serving = self.workers.start(&state);
        sd.spawn(server::serve(self.admin, server::Kind::Admin, Arc::clone(&state)));
        if let (Some(tls), Some(cfg)) = (&state.tls, &state.config.load().tls) {
            sd.spawn(Arc::clone(tls).watch(cfg.watch_interval, Arc::clone(&state.metrics), sd.clone()));
        }
        sd.spawn(sweep(state.admin.broker.hub().clone(), sd.clone()));
        if let broker::Broker::Redis(redis) = &state.admin.broker {
            sd.spawn(redis.clone().run(sd.clone()));
        }
        let rt = &state.realtime;
        sd.spawn(webhook::run(rt.backend.clone(), rt.lifecycle.clone(), self.events, rt.limits.clone(), sd.clone()));
        tracing::info!("sidewire is serving");
        sd.cancelled().await;
        tracing::info!("shutting down: draining connections");
        let grace = state.config.load().shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, sd.wait()).await.is_err() {
            tracing::warn!(?grace, "shutdown grace elapsed; closing what is left");
        }
        serving.join(deadline).await;
    }
}

impl Handle {
    /// Starts the graceful drain.
    pub fn shutdown(&self) {
        self.0.shutdown.trigger();
    }

    /// Applies a new config. Returns the changed keys that need a restart (those keep
    /// their old values), or why the new config is refused (the running one stays). The
    /// TLS certificate is reloaded as well.
    pub async fn reload(&self, mut new: Config) -> Result<Vec<&'static str>, String> {
        let state = &self.0;
        let old = state.config.load_full();
        // The admin listener stays bound where it is: the secret rule applies to that
        // address, not to the one the new file names.
        if new.admin.secret.is_none() && !old.admin.listen.ip().is_loopback() {
            state.metrics.reload("config", "refused");
            return Err(format!(
                "admin.secret: required while the admin listener is bound to {} (not loopback)",
                old.admin.listen
            ));
        }
        let restart = old.restart_required(&new);
        // Keep what cannot change while running.
        new.listen = old.listen;
        new.workers = old.workers;
        new.admin.listen = old.admin.listen;
        new.broker = old.broker.clone();
        match (&mut new.tls, &old.tls) {
            (Some(n), Some(o)) => n.listen = o.listen,
            (n, o) => *n = o.clone(),
        }
        if new.backend != old.backend {
            state.backend.rebuild(&new.backend);
        }
        if let (Some(tls), Some(cfg)) = (&state.tls, &new.tls) {
            tls.set_paths(&cfg.cert, &cfg.key);
            tls.reload_and_log(&state.metrics, "reload").await;
        }
        let l = &new.limits;
        state.admin.broker.hub().set_limits(l.history_bytes, l.channels, l.replay_bytes);
        let new = Arc::new(new);
        state.config.store(Arc::clone(&new));
        // Existing channels take the reloaded history and presence settings; open
        // sessions re-check their identity against the new policies.
        let hub = state.admin.broker.hub();
        hub.reconfigure(|name| policy::policy(&new, name).map(policy::retention));
        state.realtime.reloaded();
        state.metrics.reload("config", "ok");
        Ok(restart)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}

/// Serves one request on a public listener: route, then exactly one entry point.
pub(crate) async fn handle(state: Arc<State>, peer: Peer, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let config = state.config.load_full();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let res = match router::route(&config, &path) {
        Route::PassThrough => {
            let proxy = state.backend.pool();
            proxy::forward(&proxy, &state.metrics, &state.shutdown, peer, config.limits.body_read_timeout, req).await
        }
        Route::Reserved(rest) => asset::serve(rest, &req),
        // Boxed: hyper keeps the request future's allocation for the connection's whole
        // life, so the large realtime futures (auth call included) must not size it.
        Route::Realtime(route, params) => match route.transport {
            config::Transport::WebSocket => ws::upgrade(&state.realtime, &config, route, params, peer, req),
            config::Transport::Sse => Box::pin(sse::open(&state.realtime, &config, route, params, peer, req)).await,
            config::Transport::LongPoll => {
                Box::pin(longpoll::wait(&state.realtime, &config, route, params, peer, req)).await
            }
        },
    };
    let res = res.unwrap_or_else(Rejection::into_response);
    state.metrics.request(res.status());
    // The query string is never logged: it may carry tokens.
    tracing::debug!(target: "sidewire::access", %method, %path, status = res.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3, peer = %peer.addr);
    res
}

/// Expires history of channels nobody touches, until shutdown.
async fn sweep(hub: hub::Hub, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => hub.sweep(),
        }
    }
}
