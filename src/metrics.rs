//! Prometheus metrics, served as text by the admin listener.
//!
//! Owns: the registry and every metric family. Recording is lock-free (atomics inside
//! prometheus-client); only encoding takes the registry.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabel {
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
    upstream_errors: Family<KindLabel, Counter>,
    reloads: Family<KindLabel, Counter>,
    transports: Family<TransportLabel, Gauge>,
    evictions: Family<KindLabel, Counter>,
    webhook_dropped: Family<KindLabel, Counter>,
    publish_budget_refused: Family<BudgetLabel, Counter>,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// Series created at zero on startup: Prometheus cannot tell a missing series from a
/// silent one, so `rate(sidewire_upstream_errors_total[5m])` would show no data, not 0.
/// `UPSTREAM_ERROR_KINDS` lists every `ProxyError::kind()`.
const UPSTREAM_ERROR_KINDS: [&str; 4] = ["bad_request", "connect", "timeout", "failed"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Every reason `webhook.rs` drops lifecycle events for (`sidewire_webhook_dropped_total`
/// is what alerts watch, so it must read 0, not "no data", while nothing was lost).
const WEBHOOK_DROP_REASONS: [&str; 4] = ["queue_full", "rejected", "expired", "shutdown"];

/// Upstream latency buckets, seconds: 0.5 ms .. 30 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sidewire");
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
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register("upstream_errors", "Failed backend requests by kind", upstream_errors.clone());
        let reloads = Family::<KindLabel, Counter>::default();
        registry.register("reloads", "Config and certificate reloads by outcome", reloads.clone());
        let transports = Family::<TransportLabel, Gauge>::default();
        registry.register("realtime_connections", "Open realtime connections by transport", transports.clone());
        let evictions = Family::<KindLabel, Counter>::default();
        registry.register("evictions", "Realtime connections closed by sidewire, by reason", evictions.clone());
        let hub = crate::hub::HubStats {
            evicted_slow: evictions.get_or_create(&KindLabel { kind: "slow_consumer" }).clone(),
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
        let webhook_dropped = Family::<KindLabel, Counter>::default();
        registry.register("webhook_dropped", "Lifecycle webhook events dropped, by reason", webhook_dropped.clone());
        let publish_budget_refused = Family::<BudgetLabel, Counter>::default();
        registry.register(
            "publish_budget_refused",
            "Client publishes refused by limits.identity_publish_rate, by reason",
            publish_budget_refused.clone(),
        );
        for reason in BUDGET_REFUSALS {
            drop(publish_budget_refused.get_or_create(&BudgetLabel { reason }));
        }
        for kind in UPSTREAM_ERROR_KINDS {
            drop(upstream_errors.get_or_create(&KindLabel { kind }));
        }
        for class in STATUS_CLASSES {
            drop(requests.get_or_create(&ClassLabel { class }));
        }
        for kind in WEBHOOK_DROP_REASONS {
            drop(webhook_dropped.get_or_create(&KindLabel { kind }));
        }
        Self {
            registry,
            open_connections,
            requests,
            upstream_latency,
            upstream_errors,
            reloads,
            transports,
            evictions,
            webhook_dropped,
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

    /// Counts a connection closed by sidewire for `reason`.
    pub fn eviction(&self, reason: &'static str) {
        self.evictions.get_or_create(&KindLabel { kind: reason }).inc();
    }

    pub fn webhook_dropped(&self, reason: &'static str) {
        self.webhook_dropped_n(reason, 1);
    }

    pub fn webhook_dropped_n(&self, reason: &'static str, n: u64) {
        self.webhook_dropped.get_or_create(&KindLabel { kind: reason }).inc_by(n);
    }

    /// Counts a client publish refused by its identity's budget.
    pub fn publish_budget_refused(&self, reason: &'static str) {
        self.publish_budget_refused.get_or_create(&BudgetLabel { reason }).inc();
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

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn reload(&self, kind: &'static str) {
        self.reloads.get_or_create(&KindLabel { kind }).inc();
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
