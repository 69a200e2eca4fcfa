//! The handle the realtime transports (WebSocket, SSE, long-poll) are built with: exactly
//! what they touch, and nothing of the admin API or the pass-through path.
//!
//! What they share lives in modules named for it: [`crate::identity`] (origin, who the
//! client is), [`crate::policy`] (which channels it may use), [`crate::session`] (a
//! connection's lifetime), [`crate::publish`] (the checks every message passes).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::Live;
use crate::auth::{Auth, AuthError};
use crate::broker::Broker;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::proxy::Backend;
use crate::shutdown::Shutdown;
use crate::webhook::Lifecycle;

/// Shared by every realtime connection (behind one `Arc`).
pub struct Realtime {
    /// The live config; each request reads it once.
    pub config: Live,
    /// The publish path, and this instance's hub (`broker.hub()`).
    pub broker: Broker,
    /// Connection admission.
    pub limits: Limits,
    /// Client publish budgets per identity.
    pub budgets: crate::budget::Budgets,
    /// The auth cache.
    pub auth: Auth,
    /// Lifecycle webhook events, queued for the sender task.
    pub lifecycle: Lifecycle,
    /// Auth calls and webhooks go to the backend through its pool.
    pub backend: Backend,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// Cancelled (and replaced) at each reload, so open sessions re-check themselves.
    pub reloads: ArcSwap<CancellationToken>,
}

impl Realtime {
    /// A token cancelled at the next reload.
    pub fn next_reload(&self) -> CancellationToken {
        CancellationToken::clone(&self.reloads.load())
    }

    /// Tells every open session that the config changed.
    pub fn reloaded(&self) {
        self.reloads.swap(Arc::new(CancellationToken::new())).cancel();
    }
}

/// Whether a session of `identity` on `channels` may stay open under `config` (after a
/// reload): [`AuthError::Missing`] (WebSocket 4001, HTTP 401) for an anonymous client
/// when anonymous access is off or a channel is no longer public,
/// [`AuthError::Forbidden`] (4003, 403) for a signed-in one that lost a channel.
pub fn still_allowed(
    config: &crate::Config,
    identity: &crate::auth::Identity,
    channels: &[crate::names::ChannelName],
) -> Result<(), AuthError> {
    let lost = channels.iter().any(|c| crate::policy::authorize(config, identity, c).is_err());
    match &identity.user {
        None if lost || !config.auth.anonymous => Err(AuthError::Missing),
        Some(_) if lost => Err(AuthError::Forbidden),
        _ => Ok(()),
    }
}
