//! Thread per core: the serving threads behind the public and TLS listeners.
//!
//! Owns: one OS thread per serving slot (`workers`, or one per core). Each has its own
//! current-thread runtime, its own member of the public SO_REUSEPORT group (and of the
//! TLS one), and so its own connections, sessions and backend pool
//! ([`crate::proxy::Backend::pool`]); nginx and Envoy serve the same way. The caller's runtime
//! keeps the admin listener and the background tasks.
//!
//! Lifecycle, so that everything that can fail fails at startup:
//! - [`Workers::bind`] (in `App::bind`) claims the addresses ([`crate::listen::claim`]),
//!   then starts each thread, which builds its runtime, binds its listeners on it, hands
//!   them back and parks. Any failure is a [`BindError`]. Until started, the listeners
//!   are [`Workers`]' own, so dropping it (a failed bind, an app never run) closes them
//!   at once and the parked threads exit.
//! - [`Workers::start`] (in `App::run`) hands every parked thread its listeners back
//!   and the shared state.
//! - [`Running::join`] waits, without blocking the caller's runtime, for the threads
//!   to finish their drain; the drain deadline bounds the wait.
//!
//! Invariant: a serving thread's runtime lives until the sessions spawned on it have
//! closed or the drain deadline has passed; dropping it then closes what is left.
//! A runtime is only ever dropped on its own thread (tokio forbids dropping one inside
//! another runtime), which is why the threads start parked instead of being handed a
//! runtime built elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::{BindError, Config, State, listen, server};

/// How long past the drain deadline [`Running::join`] waits: a thread that reached the
/// deadline still drops its runtime, closing what is left.
const JOIN_SLACK: Duration = Duration::from_secs(1);

/// Serving threads: `workers`, or one per core.
fn count(config: &Config) -> usize {
    match config.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    }
}

/// Where the threads listen; port 0 is resolved by the first thread's bind.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    public: SocketAddr,
    tls: Option<SocketAddr>,
}

/// Bound serving threads, parked until [`Workers::start`]. Dropping this stops them.
pub struct Workers {
    parked: Vec<Parked>,
    addrs: Addrs,
}

/// A thread that has bound its listeners (on its runtime) and waits to serve them.
struct Parked {
    listeners: Listeners,
    go: oneshot::Sender<(Listeners, Arc<State>)>,
    thread: Thread,
}

/// A started serving thread.
struct Thread {
    handle: std::thread::JoinHandle<()>,
    /// Resolves when the thread is about to exit (an error if it panicked).
    done: oneshot::Receiver<()>,
}

/// Serving threads that are running; [`Running::join`] them after the drain.
pub struct Running {
    threads: Vec<Thread>,
}

impl Workers {
    /// Claims `listen` (and `tls.listen`) for this process, then starts the serving
    /// threads, each with its runtime and its listeners bound. Nothing is served yet.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let mut addrs = Addrs { public: config.listen, tls: config.tls.as_ref().map(|t| t.listen) };
        let mut claimed = vec![("listen", addrs.public)];
        claimed.extend(addrs.tls.map(|a| ("tls.listen", a)));
        // Held until every group member is bound: see `listen` for why.
        let _claim = listen::claim(&claimed).await?;
        let n = count(config);
        let mut parked = Vec::with_capacity(n);
        for index in 0..n {
            let thread = Parked::spawn(index, addrs).await?;
            addrs = thread.listeners.addrs(addrs);
            parked.push(thread);
        }
        Ok(Self { parked, addrs })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.addrs.public
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.addrs.tls
    }

    /// Lets every thread serve. A thread gone before its start (it can only have
    /// panicked) shuts the process down rather than leave a part of it unserved.
    pub fn start(self, state: &Arc<State>) -> Running {
        let mut threads = Vec::with_capacity(self.parked.len());
        for (index, parked) in self.parked.into_iter().enumerate() {
            if parked.go.send((parked.listeners, Arc::clone(state))).is_err() {
                tracing::error!(thread = index, "a serving thread stopped before it started; shutting down");
                state.shutdown.trigger();
            }
            threads.push(parked.thread);
        }
        Running { threads }
    }
}

impl Parked {
    /// Starts thread `index` on `at` and waits for its listeners.
    async fn spawn(index: usize, at: Addrs) -> Result<Self, BindError> {
        let (bound_tx, bound_rx) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let thread_main = move || {
            serving_thread(Start { index, at, bound: bound_tx, go: go_rx });
            let _ = done_tx.send(());
        };
        let handle = std::thread::Builder::new()
            .name(format!("sidewire-{index}"))
            .spawn(thread_main)
            .map_err(|source| BindError::Thread { index, source })?;
        let stopped = || std::io::Error::other("the thread stopped while starting");
        let listeners = bound_rx.await.map_err(|_| BindError::Thread { index, source: stopped() })??;
        Ok(Self { listeners, go, thread: Thread { handle, done } })
    }
}

/// What a serving thread needs from [`Parked::spawn`].
struct Start {
    index: usize,
    at: Addrs,
    /// The listeners, bound on this thread's runtime, or why binding failed.
    bound: oneshot::Sender<Result<Listeners, BindError>>,
    /// The listeners back and the state to serve with; dropped unsent if the app never
    /// runs.
    go: oneshot::Receiver<(Listeners, Arc<State>)>,
}

/// The body of a serving thread: build, bind, park, serve, drain.
fn serving_thread(start: Start) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(source) => {
            let _ = start.bound.send(Err(BindError::Thread { index: start.index, source }));
            return;
        }
    };
    // Listeners register with the runtime current when they are made: this one.
    let listeners = {
        let _entered = rt.enter();
        Listeners::bind(start.at)
    };
    let failed = listeners.is_err();
    if start.bound.send(listeners).is_err() || failed {
        return;
    }
    // An error: `App::bind` failed later, or the app was dropped without running.
    if let Ok((listeners, state)) = rt.block_on(start.go) {
        rt.block_on(serve(listeners, state));
    }
    // `rt` drops here, on its own thread: tasks still on it are dropped, closing them.
}

/// One thread's listeners: a member of the public group and of the TLS one.
struct Listeners {
    public: TcpListener,
    tls: Option<TcpListener>,
}

impl Listeners {
    fn bind(at: Addrs) -> Result<Self, BindError> {
        let public = listen::shared("listen", at.public)?;
        let tls = at.tls.map(|a| listen::shared("tls.listen", a)).transpose()?;
        Ok(Self { public, tls })
    }

    /// The addresses actually bound (`at` if the OS cannot tell).
    fn addrs(&self, at: Addrs) -> Addrs {
        let tls = match (&self.tls, at.tls) {
            (Some(l), Some(a)) => Some(l.local_addr().unwrap_or(a)),
            _ => None,
        };
        Addrs { public: self.public.local_addr().unwrap_or(at.public), tls }
    }
}

/// Serves this thread's listeners until shutdown, then keeps the runtime alive for the
/// sessions spawned on it until they close or the drain deadline passes.
async fn serve(listeners: Listeners, state: Arc<State>) {
    let sd = state.shutdown.clone();
    let deadline = async {
        sd.cancelled().await;
        Instant::now() + state.config.load().shutdown_grace
    };
    let ((), deadline) = tokio::join!(serve_pair(listeners, Arc::clone(&state)), deadline);
    let _ = tokio::time::timeout_at(deadline, sd.wait()).await;
}

/// Serves one public listener and its TLS twin until shutdown (each drains itself).
async fn serve_pair(listeners: Listeners, state: Arc<State>) {
    let Listeners { public, tls } = listeners;
    let tls_state = Arc::clone(&state);
    let tls = async move {
        if let Some(l) = tls {
            server::serve(l, server::Kind::Tls, tls_state).await;
        }
    };
    tokio::join!(server::serve(public, server::Kind::Public, state), tls);
}

impl Running {
    /// Waits for every serving thread to end its drain, for at most `deadline` (plus
    /// [`JOIN_SLACK`]). Threads still running then are logged and left to the process
    /// exit; a thread that panicked is logged.
    pub async fn join(self, deadline: Instant) {
        let mut finished = Vec::with_capacity(self.threads.len());
        let mut late = 0;
        for Thread { handle, done } in self.threads {
            // `Err(RecvError)` inside: it panicked, which `join` reports below.
            match tokio::time::timeout_at(deadline + JOIN_SLACK, done).await {
                Ok(_) => finished.push(handle),
                Err(_) => late += 1,
            }
        }
        if late > 0 {
            tracing::warn!(threads = late, "serving threads still draining at the deadline; exiting without them");
        }
        // These threads are past their last statement, so each join takes microseconds;
        // off the runtime all the same.
        let joined =
            tokio::task::spawn_blocking(move || finished.into_iter().map(|h| h.join().is_err()).filter(|p| *p).count());
        match joined.await {
            Ok(0) => {}
            Ok(panicked) => tracing::error!(threads = panicked, "serving threads panicked"),
            Err(e) => tracing::error!(error = %e, "cannot join the serving threads"),
        }
    }
}
