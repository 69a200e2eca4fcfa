//! The config file as written: serde structs mirroring SPEC §2 key for key.
//!
//! Owns: field names, defaults and primitive types (durations are parsed here, as
//! `humantime` strings). Does not: check cross-field rules or build typed values
//! (`validate.rs` does), or expand `${ENV}` (done on the YAML tree before this).
//! Every struct denies unknown fields so a typo is an error, never a silent default.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `250ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration as YAML gives it: a string, or (a common slip) a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurText {
    Text(String),
    Number(f64),
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match DurText::deserialize(d)? {
            DurText::Text(t) => t,
            DurText::Number(n) => {
                return Err(serde::de::Error::custom(format!(
                    "{n} has no unit: write a duration such as \"{n}s\" (also 250ms, 5m, 1h)"
                )));
            }
        };
        let d = humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {text:?} ({e}); write it like 250ms, 30s, 5m or 1h"))
        })?;
        // Deadlines are `now + duration`: an absurd one would overflow the clock.
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!("duration {text:?} is longer than the 10 years allowed")));
        }
        Ok(Dur(d))
    }
}

const fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    pub listen: String,
    pub cert: String,
    pub key: String,
    /// How often the certificate files are checked for changes (extension).
    pub watch_interval: Dur,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            cert: "certs/cert.pem".into(),
            key: "certs/key.pem".into(),
            watch_interval: secs(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
    pub secret: Option<String>,
    /// `/metrics` without the secret even when one is set.
    pub metrics_public: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9090".into(), secret: None, metrics_public: false }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBackend {
    pub url: String,
    pub connect_timeout: Dur,
    pub timeout: Dur,
    /// Idle keep-alive connections are closed after this long (extension).
    pub pool_idle_timeout: Dur,
    /// Idle keep-alive connections kept to the backend (extension).
    pub pool_max_idle: usize,
    /// Most bytes read ahead from one backend connection (extension; ≥ 8192).
    pub read_buffer_bytes: usize,
}

impl Default for RawBackend {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:3000".into(),
            connect_timeout: secs(2),
            timeout: secs(60),
            pool_idle_timeout: secs(90),
            pool_max_idle: 256,
            read_buffer_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub endpoint: String,
    pub token_query: Option<String>,
    pub token_header: Option<String>,
    pub token_cookie: Option<String>,
    pub cache_ttl: Dur,
    pub negative_ttl: Dur,
    pub anonymous: bool,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            endpoint: "/realtime/auth".into(),
            token_query: Some("token".into()),
            token_header: Some("authorization".into()),
            token_cookie: None,
            cache_ttl: secs(60),
            negative_ttl: secs(5),
            anonymous: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhooks {
    pub endpoint: String,
    pub events: Vec<String>,
    pub secret: Option<String>,
    pub retry_for: Dur,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self { endpoint: "/realtime/events".into(), events: vec!["message".into()], secret: None, retry_for: secs(300) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub transport: String,
    #[serde(default)]
    pub channels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHistory {
    pub size: usize,
    pub ttl: Dur,
}

impl Default for RawHistory {
    fn default() -> Self {
        Self { size: 100, ttl: secs(3600) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub history: RawHistory,
    #[serde(default)]
    pub presence: bool,
    #[serde(default = "deny")]
    pub client_publish: String,
    #[serde(default)]
    pub ephemeral: Vec<String>,
    #[serde(default)]
    pub public: bool,
}

fn deny() -> String {
    "deny".into()
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_channels_per_connection: usize,
    pub max_message_bytes: usize,
    pub client_rate: RawRate,
    /// Client publishes per identity (user, or IP when anonymous), all connections together.
    pub identity_publish_rate: RawRate,
    /// Identities `identity_publish_rate` tracks at once.
    pub identity_publish_table: usize,
    pub subscriber_queue: usize,
    pub origins: Vec<String>,
    /// Largest request head (request line + headers) accepted; beyond it: 431 (extension).
    pub max_header_bytes: usize,
    /// A client must finish sending its request head within this (slowloris guard; extension).
    pub header_read_timeout: Dur,
    pub history_bytes: usize,
    pub channels: usize,
    pub replay_bytes: usize,
    pub channels_per_publish: usize,
    pub max_open_connections: usize,
    pub max_open_connections_per_ip: usize,
    /// An HTTP/2 connection with no open stream for this long is closed with GOAWAY.
    pub h2_idle_timeout: Dur,
    /// A request body that sends no byte for this long is answered 408 (or aborted).
    pub body_read_timeout: Dur,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            max_channels_per_connection: 100,
            max_message_bytes: 65_536,
            client_rate: RawRate { per_second: 10, burst: 20 },
            identity_publish_rate: RawRate { per_second: 20, burst: 40 },
            identity_publish_table: 100_000,
            subscriber_queue: 1024,
            origins: Vec::new(),
            max_header_bytes: 16 * 1024,
            header_read_timeout: secs(10),
            history_bytes: 64 << 20,
            channels: 100_000,
            replay_bytes: 4 << 20,
            channels_per_publish: 100,
            max_open_connections: 200_000,
            max_open_connections_per_ip: 2000,
            h2_idle_timeout: secs(120),
            body_read_timeout: secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeartbeat {
    pub interval: Dur,
    pub timeout: Dur,
}

impl Default for RawHeartbeat {
    fn default() -> Self {
        Self { interval: secs(25), timeout: secs(60) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBroker {
    pub kind: String,
    pub url: String,
    pub cluster: bool,
    pub key_prefix: String,
    pub timeout: Dur,
}

impl Default for RawBroker {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            key_prefix: "sidewire:".into(),
            timeout: secs(2),
        }
    }
}

/// The whole file. Top-level keys are deserialized one by one (see `mod.rs`) so that
/// one bad section does not hide the problems of the others.
#[derive(Debug, Clone)]
pub struct RawConfig {
    pub listen: String,
    pub shutdown_grace: Dur,
    /// Runtime worker threads; 0 = one per core (extension).
    pub workers: usize,
    pub tls: Option<RawTls>,
    pub admin: RawAdmin,
    pub backend: RawBackend,
    pub prefix: String,
    pub auth: RawAuth,
    pub webhooks: RawWebhooks,
    pub routes: Vec<RawRoute>,
    pub channels: Vec<RawChannel>,
    pub limits: RawLimits,
    pub heartbeat: RawHeartbeat,
    pub broker: RawBroker,
}

impl Default for RawConfig {
    fn default() -> Self {
        let route = |path: &str, transport: &str| RawRoute {
            path: path.into(),
            transport: transport.into(),
            channels: Vec::new(),
        };
        Self {
            listen: "0.0.0.0:8080".into(),
            shutdown_grace: secs(10),
            workers: 0,
            tls: None,
            admin: RawAdmin::default(),
            backend: RawBackend::default(),
            prefix: "/_sidewire".into(),
            auth: RawAuth::default(),
            webhooks: RawWebhooks::default(),
            routes: vec![route("/ws", "websocket"), route("/events", "sse"), route("/poll", "longpoll")],
            channels: vec![RawChannel {
                pattern: "*".into(),
                history: RawHistory::default(),
                presence: false,
                client_publish: deny(),
                ephemeral: Vec::new(),
                public: false,
            }],
            limits: RawLimits::default(),
            heartbeat: RawHeartbeat::default(),
            broker: RawBroker::default(),
        }
    }
}
