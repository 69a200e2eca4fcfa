//! Raw → typed: every cross-field and value check of the config, collected.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use http::HeaderName;
use http::uri::{Authority, Uri};

use super::raw::*;
use super::*;

/// Largest `history.size` per channel: bounds memory per channel.
const MAX_HISTORY: usize = 1_000_000;
/// Largest accepted `max_message_bytes` (frames are buffered whole).
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// More runtime threads than this is a typo, not a tuning.
const MAX_WORKERS: usize = 256;
/// hyper refuses an HTTP/1 read buffer under 8 KiB.
const MIN_HEADER_BYTES: usize = 8192;

struct Check<'a>(&'a mut Vec<Problem>);

impl Check<'_> {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    fn addr(&mut self, path: &str, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.fail(path, format!("{text:?} is not an address like 0.0.0.0:8080 or [::1]:8080"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn positive(&mut self, path: &str, n: usize) {
        if n == 0 {
            self.fail(path, "must be greater than 0");
        }
    }

    fn nonzero_dur(&mut self, path: &str, d: Dur) -> Duration {
        if d.0.is_zero() {
            self.fail(path, "must be longer than 0s");
        }
        d.0
    }

    fn endpoint(&mut self, path: &str, text: &str) -> String {
        if !text.starts_with('/') || text.contains(['?', '#', ' ']) {
            self.fail(path, format!("{text:?} must be a path starting with '/'"));
        }
        text.to_owned()
    }
}

fn secret(text: Option<String>) -> Option<Secret> {
    text.filter(|s| !s.is_empty()).map(Secret)
}

pub(super) fn validate(raw: RawConfig, problems: &mut Vec<Problem>) -> Config {
    let mut c = Check(problems);
    let listen = c.addr("listen", &raw.listen);
    if raw.workers > MAX_WORKERS {
        c.fail("workers", format!("must be at most {MAX_WORKERS} (0 = one per core)"));
    }
    let tls = raw.tls.map(|t| TlsConfig {
        listen: c.addr("tls.listen", &t.listen),
        cert: PathBuf::from(t.cert),
        key: PathBuf::from(t.key),
        watch_interval: c.nonzero_dur("tls.watch_interval", t.watch_interval),
    });
    let admin = AdminConfig {
        listen: c.addr("admin.listen", &raw.admin.listen),
        secret: secret(raw.admin.secret),
        metrics_public: raw.admin.metrics_public,
    };
    if admin.secret.is_none() && !admin.listen.ip().is_loopback() {
        c.fail("admin.secret", "required when admin.listen is not a loopback address");
    }
    let backend = backend(&mut c, raw.backend);
    let prefix = raw.prefix.clone();
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') || prefix.contains(['?', '#']) {
        c.fail("prefix", format!("{prefix:?} must look like /_sidewire (leading '/', no trailing '/')"));
    }
    let auth = auth(&mut c, raw.auth);
    let channels = channels(&mut c, raw.channels);
    let webhooks = webhooks(&mut c, raw.webhooks, &channels);
    let routes = routes(&mut c, raw.routes, &prefix);
    let limits = limits(&mut c, raw.limits);
    let heartbeat = HeartbeatConfig {
        interval: c.nonzero_dur("heartbeat.interval", raw.heartbeat.interval),
        timeout: c.nonzero_dur("heartbeat.timeout", raw.heartbeat.timeout),
    };
    if heartbeat.timeout <= heartbeat.interval {
        c.fail("heartbeat.timeout", "must be longer than heartbeat.interval");
    }
    let broker = broker(&mut c, raw.broker);
    Config {
        listen,
        shutdown_grace: raw.shutdown_grace.0,
        workers: raw.workers,
        tls,
        admin,
        backend,
        prefix,
        auth,
        webhooks,
        routes,
        channels,
        limits,
        heartbeat,
        broker,
    }
}

fn backend(c: &mut Check<'_>, raw: RawBackend) -> BackendConfig {
    let mut origin = Authority::from_static("127.0.0.1:3000");
    let mut base_path = String::new();
    match raw.url.parse::<Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() && uri.query().is_none() => {
            if let Some(a) = uri.authority() {
                origin = a.clone();
            }
            base_path = uri.path().trim_end_matches('/').to_owned();
        }
        Ok(uri) if uri.scheme_str() == Some("https") => c.fail(
            "backend.url",
            "https backends are not supported; sidewire reaches its backend over plain HTTP (run it next to the app)",
        ),
        _ => c.fail("backend.url", format!("{:?} must be an absolute http:// URL without query", raw.url)),
    }
    c.positive("backend.pool_max_idle", raw.pool_max_idle.max(1));
    if raw.read_buffer_bytes < 8192 {
        c.fail("backend.read_buffer_bytes", format!("{} is below the minimum of 8192", raw.read_buffer_bytes));
    }
    BackendConfig {
        origin,
        base_path,
        connect_timeout: c.nonzero_dur("backend.connect_timeout", raw.connect_timeout),
        timeout: c.nonzero_dur("backend.timeout", raw.timeout),
        pool_idle_timeout: raw.pool_idle_timeout.0,
        pool_max_idle: raw.pool_max_idle,
        read_buffer_bytes: raw.read_buffer_bytes.max(8192),
    }
}

fn auth(c: &mut Check<'_>, raw: RawAuth) -> AuthConfig {
    let token_header =
        raw.token_header.filter(|h| !h.is_empty()).and_then(|h| match HeaderName::try_from(h.as_str()) {
            Ok(name) => Some(name),
            Err(_) => {
                c.fail("auth.token_header", format!("{h:?} is not a valid header name"));
                None
            }
        });
    AuthConfig {
        endpoint: c.endpoint("auth.endpoint", &raw.endpoint),
        token_query: raw.token_query.filter(|s| !s.is_empty()),
        token_header,
        token_cookie: raw.token_cookie.filter(|s| !s.is_empty()),
        cache_ttl: raw.cache_ttl.0,
        negative_ttl: raw.negative_ttl.0,
        anonymous: raw.anonymous,
    }
}

fn webhooks(c: &mut Check<'_>, raw: RawWebhooks, channels: &[ChannelPolicy]) -> WebhookConfig {
    let mut events = Vec::new();
    for (i, e) in raw.events.iter().enumerate() {
        let ev = match e.as_str() {
            "message" => WebhookEvent::Message,
            "connect" => WebhookEvent::Connect,
            "disconnect" => WebhookEvent::Disconnect,
            "subscribe" => WebhookEvent::Subscribe,
            "unsubscribe" => WebhookEvent::Unsubscribe,
            other => {
                c.fail(
                    format!("webhooks.events[{i}]"),
                    format!("unknown event {other:?}; use message, connect, disconnect, subscribe or unsubscribe"),
                );
                continue;
            }
        };
        if !events.contains(&ev) {
            events.push(ev);
        }
    }
    let secret = secret(raw.secret);
    let backend_publish = channels.iter().any(|p| p.client_publish == ClientPublish::Backend);
    let lifecycle = events.iter().any(|e| *e != WebhookEvent::Message);
    if secret.is_none() && (backend_publish || lifecycle) {
        c.fail(
            "webhooks.secret",
            "required to sign webhooks (a channel uses client_publish: backend or lifecycle events are enabled)",
        );
    }
    if backend_publish && !events.contains(&WebhookEvent::Message) {
        c.fail("webhooks.events", "must include message while a channel uses client_publish: backend");
    }
    let retry_for = c.nonzero_dur("webhooks.retry_for", raw.retry_for);
    WebhookConfig { endpoint: c.endpoint("webhooks.endpoint", &raw.endpoint), events, secret, retry_for }
}

fn routes(c: &mut Check<'_>, raw: Vec<RawRoute>, prefix: &str) -> Vec<RouteConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        let transport = match r.transport.as_str() {
            "websocket" => Transport::WebSocket,
            "sse" => Transport::Sse,
            "longpoll" => Transport::LongPoll,
            other => {
                c.fail(
                    format!("{at}.transport"),
                    format!("unknown transport {other:?}; use websocket, sse or longpoll"),
                );
                Transport::Sse
            }
        };
        let path = match PathTemplate::parse(&r.path) {
            Ok(p) => p,
            Err(e) => {
                c.fail(format!("{at}.path"), format!("{:?}: {e}", r.path));
                continue;
            }
        };
        if r.path == prefix || r.path.starts_with(&format!("{prefix}/")) {
            c.fail(format!("{at}.path"), format!("{:?} is under the reserved prefix {prefix}", r.path));
        }
        if !seen.insert(r.path.clone()) {
            c.fail(format!("{at}.path"), format!("{:?} is already routed", r.path));
        }
        let mut channels = Vec::new();
        for (j, t) in r.channels.iter().enumerate() {
            match ChannelTemplate::parse(t) {
                Ok(tpl) => {
                    let params: Vec<&str> = path.params().collect();
                    if let Some(p) = tpl.params().find(|p| *p != crate::template::USER_PARAM && !params.contains(p)) {
                        c.fail(
                            format!("{at}.channels[{j}]"),
                            format!("{{{p}}} is not a parameter of path {:?}", r.path),
                        );
                    }
                    channels.push(tpl);
                }
                Err(e) => c.fail(format!("{at}.channels[{j}]"), format!("{t:?}: {e}")),
            }
        }
        if channels.is_empty() && path.params().next().is_some() {
            c.fail(format!("{at}.channels"), "a path with parameters needs channel templates that use them");
        }
        out.push(RouteConfig { path, transport, channels });
    }
    out
}

fn channels(c: &mut Check<'_>, raw: Vec<RawChannel>) -> Vec<ChannelPolicy> {
    let mut out = Vec::new();
    for (i, ch) in raw.into_iter().enumerate() {
        let at = format!("channels[{i}]");
        let pattern = match ChannelPattern::new(&ch.pattern) {
            Ok(p) => p,
            Err(e) => {
                c.fail(format!("{at}.match"), format!("{:?}: {e}", ch.pattern));
                continue;
            }
        };
        if ch.history.size > MAX_HISTORY {
            c.fail(format!("{at}.history.size"), format!("must be at most {MAX_HISTORY}"));
        }
        if ch.history.size > 0 && ch.history.ttl.0.is_zero() {
            c.fail(format!("{at}.history.ttl"), "must be longer than 0s when history.size > 0");
        }
        let client_publish = match ch.client_publish.as_str() {
            "deny" => ClientPublish::Deny,
            "broadcast" => ClientPublish::Broadcast,
            "backend" => ClientPublish::Backend,
            other => {
                c.fail(
                    format!("{at}.client_publish"),
                    format!("unknown value {other:?}; use deny, broadcast or backend"),
                );
                ClientPublish::Deny
            }
        };
        for (j, e) in ch.ephemeral.iter().enumerate() {
            if e.is_empty() || e.len() > 64 || e.contains(['\n', '\r']) {
                c.fail(format!("{at}.ephemeral[{j}]"), "event names are 1-64 characters without line breaks");
            }
        }
        out.push(ChannelPolicy {
            pattern,
            history_size: ch.history.size,
            history_ttl: ch.history.ttl.0,
            presence: ch.presence,
            client_publish,
            ephemeral: ch.ephemeral,
            public: ch.public,
        });
    }
    out
}

fn limits(c: &mut Check<'_>, raw: RawLimits) -> LimitsConfig {
    c.positive("limits.max_connections", raw.max_connections);
    c.positive("limits.max_connections_per_ip", raw.max_connections_per_ip);
    c.positive("limits.max_channels_per_connection", raw.max_channels_per_connection);
    c.positive("limits.subscriber_queue", raw.subscriber_queue);
    c.positive("limits.identity_publish_table", raw.identity_publish_table);
    c.positive("limits.history_bytes", raw.history_bytes);
    c.positive("limits.channels", raw.channels);
    c.positive("limits.replay_bytes", raw.replay_bytes);
    c.positive("limits.channels_per_publish", raw.channels_per_publish);
    c.positive("limits.max_open_connections", raw.max_open_connections);
    c.positive("limits.max_open_connections_per_ip", raw.max_open_connections_per_ip);
    if raw.max_message_bytes < 64 || raw.max_message_bytes > MAX_MESSAGE_BYTES {
        c.fail("limits.max_message_bytes", format!("must be between 64 and {MAX_MESSAGE_BYTES}"));
    }
    if raw.client_rate.per_second == 0 || raw.client_rate.burst == 0 {
        c.fail("limits.client_rate", "per_second and burst must be greater than 0");
    }
    if raw.identity_publish_rate.per_second == 0 || raw.identity_publish_rate.burst == 0 {
        c.fail("limits.identity_publish_rate", "per_second and burst must be greater than 0");
    }
    if raw.max_header_bytes < MIN_HEADER_BYTES {
        c.fail("limits.max_header_bytes", format!("must be at least {MIN_HEADER_BYTES}"));
    }
    let mut origins = Vec::new();
    for (i, o) in raw.origins.iter().enumerate() {
        let lower = o.trim_end_matches('/').to_ascii_lowercase();
        let ok = lower == "*"
            || lower.parse::<Uri>().is_ok_and(|u| u.scheme().is_some() && u.authority().is_some() && u.path() == "/");
        if ok {
            origins.push(lower);
        } else {
            c.fail(
                format!("limits.origins[{i}]"),
                format!("{o:?} must be an origin like https://app.example.com or \"*\""),
            );
        }
    }
    LimitsConfig {
        max_connections: raw.max_connections,
        max_connections_per_ip: raw.max_connections_per_ip,
        max_channels_per_connection: raw.max_channels_per_connection,
        max_message_bytes: raw.max_message_bytes,
        client_rate: Rate { per_second: raw.client_rate.per_second, burst: raw.client_rate.burst },
        identity_publish_rate: Rate {
            per_second: raw.identity_publish_rate.per_second,
            burst: raw.identity_publish_rate.burst,
        },
        identity_publish_table: raw.identity_publish_table,
        subscriber_queue: raw.subscriber_queue,
        origins,
        max_header_bytes: raw.max_header_bytes,
        header_read_timeout: c.nonzero_dur("limits.header_read_timeout", raw.header_read_timeout),
        history_bytes: raw.history_bytes,
        channels: raw.channels,
        replay_bytes: raw.replay_bytes,
        channels_per_publish: raw.channels_per_publish,
        max_open_connections: raw.max_open_connections,
        max_open_connections_per_ip: raw.max_open_connections_per_ip,
        h2_idle_timeout: c.nonzero_dur("limits.h2_idle_timeout", raw.h2_idle_timeout),
        body_read_timeout: c.nonzero_dur("limits.body_read_timeout", raw.body_read_timeout),
    }
}

fn broker(c: &mut Check<'_>, raw: RawBroker) -> BrokerConfig {
    match raw.kind.as_str() {
        "memory" => BrokerConfig::Memory,
        "redis" => {
            let ok = ["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|s| raw.url.starts_with(s));
            if !ok {
                c.fail("broker.url", format!("{:?} must be a redis:// or rediss:// URL", raw.url));
            } else if let Err(e) = redis::Client::open(raw.url.as_str()) {
                c.fail("broker.url", format!("{:?} is not a usable Redis URL: {e}", raw.url));
            }
            if raw.key_prefix.contains(['{', '}']) || raw.key_prefix.len() > 64 {
                c.fail("broker.key_prefix", "at most 64 characters, without { or } (they are Redis Cluster hash tags)");
            }
            let timeout = c.nonzero_dur("broker.timeout", raw.timeout);
            BrokerConfig::Redis(RedisConfig { url: raw.url, cluster: raw.cluster, key_prefix: raw.key_prefix, timeout })
        }
        other => {
            c.fail("broker.kind", format!("unknown broker {other:?}; use memory or redis"));
            BrokerConfig::Memory
        }
    }
}
