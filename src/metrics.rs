//! Prometheus metrics, served as text by the admin listener.
//!
//! Owns: the registry and every metric family. Recording is lock-free (atomics inside
//! prometheus-client); only encoding takes the registry. `process_*` come from a
//! collector (`metrics/process.rs`) that reads `/proc/self` on each scrape.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[cfg(target_os = "linux")]
mod process;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// An HTTP version as ALPN names it: `http/1.1`, `h2`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

/// Why something unwanted happened (an error, a refusal, an eviction, a drop).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// How an operation ended (an auth call).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// What was reloaded (`config`, `tls`) and how it went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    pub subject: &'static str,
    pub outcome: &'static str,
}

/// A connection refused before it was admitted: its transport and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub transport: &'static str,
    pub reason: &'static str,
}

/// Which webhook: `message` (client publishes on `client_publish: backend` channels) or
/// `lifecycle` (connect, disconnect, subscribe, unsubscribe).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookErrorLabel {
    pub webhook: &'static str,
    pub reason: &'static str,
}

/// Every `budget::Refusal::reason()`.
const BUDGET_REFUSALS: [&str; 2] = ["over_budget", "table_full"];

/// Every metric sidewire exports.
pub struct Metrics {
    registry: Registry,
    open_connections: Family<ListenerLabel, Gauge>,
    requests: Family<ClassLabel, Counter>,
    upstream_latency: Histogram,
    upstream_errors: Family<ReasonLabel, Counter>,
    reloads: Family<ReloadLabel, Counter>,
    transports: Family<TransportLabel, Gauge>,
    evictions: Family<ReasonLabel, Counter>,
    webhook_dropped: Family<ReasonLabel, Counter>,
    refused: Family<RefusedLabel, Counter>,
    /// Handed to the auth cache.
    pub auth: AuthStats,
    webhook_seconds: Family<WebhookLabel, Histogram>,
    webhook_errors: Family<WebhookErrorLabel, Counter>,
    websocket_handshakes: Family<ProtocolLabel, Counter>,
    publish_budget_refused: Family<ReasonLabel, Counter>,
    /// Handed to the hub, which records into them directly.
    pub hub: crate::hub::HubStats,
    /// Handed to the redis broker.
    pub broker: BrokerStats,
}

/// What the redis broker records (registered in every mode so dashboards read 0).
#[derive(Debug, Clone)]
pub struct BrokerStats {
    /// 1 while Redis answers and the pub/sub connection is subscribed.
    pub up: Gauge,
    /// Publish round trips through Redis.
    pub publish_seconds: Histogram,
    /// Gaps filled from a channel's stream.
    pub backfills: Counter,
    /// Pub/sub connections re-established.
    pub resubscribes: Counter,
    /// Times Redis came back without its data (a new history epoch).
    pub epoch_changes: Counter,
}

impl Default for BrokerStats {
    fn default() -> Self {
        Self {
            up: Gauge::default(),
            publish_seconds: Histogram::new(LATENCY_BUCKETS),
            backfills: Counter::default(),
            resubscribes: Counter::default(),
            epoch_changes: Counter::default(),
        }
    }
}

/// What the auth cache records.
#[derive(Debug, Clone)]
pub struct AuthStats {
    /// Backend auth calls by outcome ([`AUTH_OUTCOMES`]).
    pub calls: Family<OutcomeLabel, Counter>,
    /// Time from sending an auth call until its answer is read.
    pub seconds: Histogram,
    /// Checks answered by the cache, or by a call another check already had in flight.
    pub cache_hits: Counter,
    /// Checks that made a backend call.
    pub cache_misses: Counter,
}

impl AuthStats {
    /// Counts one backend auth call that took `elapsed`.
    pub fn call(&self, outcome: &'static str, elapsed: Duration) {
        self.calls.get_or_create(&OutcomeLabel { outcome }).inc();
        self.seconds.observe(elapsed.as_secs_f64());
    }
}

impl Default for AuthStats {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            seconds: Histogram::new(LATENCY_BUCKETS),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

// Series created at zero on startup: Prometheus cannot tell a missing series from a
// silent one, so `rate(sidewire_upstream_errors_total[5m])` would show no data, not 0.
// Each list names every value its label takes.

/// Every `ProxyError::kind()`.
const UPSTREAM_ERROR_REASONS: [&str; 4] = ["bad_request", "connect", "timeout", "failed"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Every reason `webhook.rs` drops lifecycle events for (`sidewire_webhook_dropped_total`
/// is what alerts watch, so it must read 0, not "no data", while nothing was lost).
const WEBHOOK_DROP_REASONS: [&str; 4] = ["queue_full", "rejected", "expired", "shutdown"];
const LISTENERS: [&str; 3] = ["public", "tls", "admin"];
pub const TRANSPORTS: [&str; 3] = ["websocket", "sse", "longpoll"];
/// Every reason sidewire closes an admitted realtime connection (`ErrorClose::why` too);
/// `auth_revoked`: the re-check at the end of an auth TTL refused the client or one of
/// its channels.
/// `h2_idle`: an HTTP/2 connection with no open stream for `limits.h2_idle_timeout`.
const EVICTION_REASONS: [&str; 8] = [
    "slow_consumer",
    "heartbeat_timeout",
    "rate_limit",
    "too_large",
    "invalid_utf8",
    "protocol_error",
    "auth_revoked",
    "h2_idle",
];
/// Reloads: (subject, outcome).
const RELOADS: [(&str, &str); 5] =
    [("config", "ok"), ("config", "refused"), ("config", "invalid"), ("tls", "ok"), ("tls", "failed")];
/// Why a connection is refused before it is admitted: `limit` (connection caps), `origin`,
/// `auth` (the backend or a missing credential says no), `auth_unavailable` (no answer
/// from the backend), `channel` (a stream asks for a channel it may not read).
pub const REFUSAL_REASONS: [&str; 5] = ["limit", "origin", "auth", "auth_unavailable", "channel"];
/// Outcomes of a backend auth call: 200 with a valid answer, 401, 403, 200 with an
/// invalid body or an unexpected status, no answer (connect or transport failure), and
/// no response headers within `backend.timeout`.
pub const AUTH_OUTCOMES: [&str; 6] = ["ok", "unauthorized", "forbidden", "bad_answer", "error", "timeout"];
const WEBHOOKS: [&str; 2] = ["message", "lifecycle"];
/// Why a webhook POST failed: the backend refused (4xx), answered another non-2xx
/// status, could not be reached, did not answer within `backend.timeout`, broke off,
/// answered 2xx with a body that is not JSON, or `webhooks.secret` is not set.
pub const WEBHOOK_ERROR_REASONS: [&str; 7] =
    ["rejected", "status", "connect", "timeout", "failed", "bad_answer", "unconfigured"];

/// Upstream latency buckets, seconds: 0.5 ms .. 30 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

impl Metrics {
    pub fn new() -> Self {
        // `process_*` have no prefix (the names every exporter uses); the rest are
        // `sidewire_*`.
        let mut root = Registry::default();
        #[cfg(target_os = "linux")]
        root.register_collector(Box::new(process::Process::new()));
        let registry = root.sub_registry_with_prefix("sidewire");
        let open_connections = Family::<ListenerLabel, Gauge>::default();
        registry.register("open_connections", "Open client connections by listener", open_connections.clone());
        let requests = Family::<ClassLabel, Counter>::default();
        registry.register("requests", "Requests on the public listeners by status class", requests.clone());
        let upstream_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request to the backend until its response headers",
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<ReasonLabel, Counter>::default();
        registry.register("upstream_errors", "Failed backend requests by reason", upstream_errors.clone());
        let reloads = Family::<ReloadLabel, Counter>::default();
        registry.register("reloads", "Config and certificate reloads by subject and outcome", reloads.clone());
        let transports = Family::<TransportLabel, Gauge>::default();
        registry.register("realtime_connections", "Open realtime connections by transport", transports.clone());
        let evictions = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "evictions",
            "Admitted realtime connections closed by sidewire, by reason",
            evictions.clone(),
        );
        let hub = crate::hub::HubStats {
            evicted_slow: evictions.get_or_create(&ReasonLabel { reason: "slow_consumer" }).clone(),
            ..Default::default()
        };
        registry.register("subscriptions", "Channel subscriptions on this instance", hub.subscriptions.clone());
        registry.register("messages_published", "Messages published through this instance", hub.published.clone());
        registry.register("messages_delivered", "Messages queued to subscribers", hub.delivered.clone());
        registry.register("history_messages", "Messages held in history rings", hub.history.clone());
        registry.register(
            "history_bytes",
            "Bytes held in history rings (limits.history_bytes)",
            hub.history_bytes.clone(),
        );
        registry.register(
            "history_evicted",
            "Messages dropped from history, oldest first, by limits.history_bytes",
            hub.history_evicted.clone(),
        );
        registry.register(
            "channels_evicted",
            "Idle channels forgotten, least recently active first, by limits.channels",
            hub.channels_evicted.clone(),
        );
        registry.register(
            "replays_refused",
            "Resumes answered with a reset because their replay exceeded limits.replay_bytes",
            hub.replays_cut.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        registry.register("build_info", "The running sidewire's version (always 1)", build.clone());
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        let broker = BrokerStats::default();
        registry.register("broker_up", "1 while the broker can publish and deliver", broker.up.clone());
        registry.register(
            "broker_publish_seconds",
            "Time for a publish request's round trip through Redis",
            broker.publish_seconds.clone(),
        );
        registry.register("broker_backfills", "Gaps filled from a channel's Redis stream", broker.backfills.clone());
        registry.register(
            "broker_resubscribes",
            "Redis pub/sub connections re-established",
            broker.resubscribes.clone(),
        );
        registry.register(
            "broker_epoch_changes",
            "Times Redis came back without its data (every client resumes into a reset)",
            broker.epoch_changes.clone(),
        );
        let webhook_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register("webhook_dropped", "Lifecycle webhook events dropped, by reason", webhook_dropped.clone());
        let websocket_handshakes = Family::<ProtocolLabel, Counter>::default();
        registry.register(
            "websocket_handshakes",
            "WebSocket handshakes accepted on realtime routes, by HTTP version (h2: RFC 8441)",
            websocket_handshakes.clone(),
        );
        for protocol in ["http/1.1", "h2"] {
            drop(websocket_handshakes.get_or_create(&ProtocolLabel { protocol }));
        }
        // Refusals, auth calls, webhook deliveries (issue 10 §3).
        let refused = Family::<RefusedLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused before they were admitted, by transport (tcp: the TCP connection caps) and reason",
            refused.clone(),
        );
        let auth = AuthStats::default();
        registry.register("auth_calls", "Backend auth calls by outcome", auth.calls.clone());
        registry.register(
            "auth_call_seconds",
            "Time from sending a backend auth call until its answer is read",
            auth.seconds.clone(),
        );
        registry.register(
            "auth_cache_hits",
            "Credential checks answered by the auth cache (or by a call already in flight)",
            auth.cache_hits.clone(),
        );
        registry.register(
            "auth_cache_misses",
            "Credential checks that made a backend auth call",
            auth.cache_misses.clone(),
        );
        let webhook_seconds =
            Family::<WebhookLabel, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "webhook_seconds",
            "Time from sending a webhook POST until its answer is read, by webhook",
            webhook_seconds.clone(),
        );
        let webhook_errors = Family::<WebhookErrorLabel, Counter>::default();
        registry.register("webhook_errors", "Failed webhook POSTs by webhook and reason", webhook_errors.clone());

        let publish_budget_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "publish_budget_refused",
            "Client publishes refused by limits.identity_publish_rate, by reason",
            publish_budget_refused.clone(),
        );
        for reason in BUDGET_REFUSALS {
            drop(publish_budget_refused.get_or_create(&ReasonLabel { reason }));
        }
        // Pre-created series.
        for reason in UPSTREAM_ERROR_REASONS {
            drop(upstream_errors.get_or_create(&ReasonLabel { reason }));
        }
        for class in STATUS_CLASSES {
            drop(requests.get_or_create(&ClassLabel { class }));
        }
        for reason in WEBHOOK_DROP_REASONS {
            drop(webhook_dropped.get_or_create(&ReasonLabel { reason }));
        }
        for listener in LISTENERS {
            drop(open_connections.get_or_create(&ListenerLabel { listener }));
        }
        for transport in TRANSPORTS {
            drop(transports.get_or_create(&TransportLabel { transport }));
        }
        for reason in EVICTION_REASONS {
            drop(evictions.get_or_create(&ReasonLabel { reason }));
        }
        for (subject, outcome) in RELOADS {
            drop(reloads.get_or_create(&ReloadLabel { subject, outcome }));
        }
        for transport in TRANSPORTS {
            // A WebSocket's channels are refused per `subscribe`, never its connection.
            let reasons = REFUSAL_REASONS.into_iter().filter(|r| transport != "websocket" || *r != "channel");
            for reason in reasons {
                drop(refused.get_or_create(&RefusedLabel { transport, reason }));
            }
        }
        drop(refused.get_or_create(&RefusedLabel { transport: "tcp", reason: "limit" }));
        for outcome in AUTH_OUTCOMES {
            drop(auth.calls.get_or_create(&OutcomeLabel { outcome }));
        }
        for webhook in WEBHOOKS {
            drop(webhook_seconds.get_or_create(&WebhookLabel { webhook }));
            for reason in WEBHOOK_ERROR_REASONS {
                drop(webhook_errors.get_or_create(&WebhookErrorLabel { webhook, reason }));
            }
        }
        Self {
            registry: root,
            open_connections,
            requests,
            upstream_latency,
            upstream_errors,
            reloads,
            transports,
            evictions,
            webhook_dropped,
            websocket_handshakes,
            refused,
            auth,
            webhook_seconds,
            webhook_errors,
            publish_budget_refused,
            hub,
            broker,
        }
    }

    /// Counts an open connection until the guard drops.
    pub fn connection(&self, listener: &'static str) -> ConnectionGuard {
        let gauge = self.open_connections.get_or_create(&ListenerLabel { listener }).clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// Counts an open realtime connection of `transport` until the guard drops.
    pub fn transport(&self, transport: &'static str) -> ConnectionGuard {
        let gauge = self.transports.get_or_create(&TransportLabel { transport }).clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// Counts an admitted connection closed by sidewire for `reason`.
    pub fn eviction(&self, reason: &'static str) {
        self.evictions.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a connection refused before admission ([`REFUSAL_REASONS`]); `transport`
    /// is a realtime transport, or `tcp` for the TCP connection caps.
    pub fn refused(&self, transport: &'static str, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabel { transport, reason }).inc();
    }

    /// Counts a WebSocket handshake accepted over `protocol` (`http/1.1` or `h2`).
    pub fn websocket_handshake(&self, protocol: &'static str) {
        self.websocket_handshakes.get_or_create(&ProtocolLabel { protocol }).inc();
    }

    pub fn webhook_dropped(&self, reason: &'static str) {
        self.webhook_dropped_n(reason, 1);
    }

    pub fn webhook_dropped_n(&self, reason: &'static str, n: u64) {
        self.webhook_dropped.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// Records one webhook POST of `webhook` that took `elapsed` and failed for
    /// `error` ([`WEBHOOK_ERROR_REASONS`]), or succeeded (`None`).
    pub fn webhook(&self, webhook: &'static str, elapsed: Duration, error: Option<&'static str>) {
        self.webhook_seconds.get_or_create(&WebhookLabel { webhook }).observe(elapsed.as_secs_f64());
        if let Some(reason) = error {
            self.webhook_error(webhook, reason);
        }
    }

    /// Counts a failed webhook POST (without timing it: nothing was sent).
    pub fn webhook_error(&self, webhook: &'static str, reason: &'static str) {
        self.webhook_errors.get_or_create(&WebhookErrorLabel { webhook, reason }).inc();
    }

    /// Counts a client publish refused by its identity's budget.
    pub fn publish_budget_refused(&self, reason: &'static str) {
        self.publish_budget_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn request(&self, status: http::StatusCode) {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&ClassLabel { class }).inc();
    }

    pub fn upstream_latency(&self, elapsed: Duration) {
        self.upstream_latency.observe(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a reload of `subject` (`config`, `tls`) that ended with `outcome`.
    pub fn reload(&self, subject: &'static str, outcome: &'static str) {
        self.reloads.get_or_create(&ReloadLabel { subject, outcome }).inc();
    }

    /// [`Metrics::encode`] on the blocking pool: the `process_*` collector lists
    /// `/proc/self/fd`, which takes ~30 ms at 19,000 open sockets, too long to hold the
    /// thread that serves the admin listener and the background tasks.
    pub async fn scrape(self: &std::sync::Arc<Self>) -> String {
        let metrics = std::sync::Arc::clone(self);
        match tokio::task::spawn_blocking(move || metrics.encode()).await {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "encoding metrics failed");
                "# EOF\n".to_owned()
            }
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the open-connection gauge on drop.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
