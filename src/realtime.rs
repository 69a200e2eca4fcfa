//! The handle the realtime transports (WebSocket, SSE, long-poll) are built with: exactly
//! what they touch, and nothing of the admin API or the pass-through path.
//!
//! What they share lives in modules named for it: [`crate::identity`] (origin, who the
//! client is), [`crate::policy`] (which channels it may use), [`crate::session`] (a
//! connection's lifetime), [`crate::publish`] (the checks every message passes).

use std::sync::Arc;

use crate::Live;
use crate::auth::Auth;
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
}
