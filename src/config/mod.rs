//! Configuration: YAML file → `${ENV}` expansion → raw serde structs → typed [`Config`].
//!
//! Owns: the schema of SPEC §2 (plus a few documented extensions), defaults, and every
//! check. `load` collects *all* problems, each with its key path, so `--check` can print
//! them at once. Later code receives a [`Config`] whose values are already typed
//! (`Duration`, `SocketAddr`, `ChannelPattern`) and never re-checks them.

mod env;
mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::names::ChannelPattern;
use crate::template::{ChannelTemplate, PathTemplate};
use raw::RawConfig;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `limits.client_rate.per_second` or `routes[2].path`.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every problem of a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A secret string (admin secret, webhook key). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret that did not come from a config (a backend's check, a fuzz target).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub watch_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub secret: Option<Secret>,
    /// `/metrics` is served without the secret even when one is set.
    pub metrics_public: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `http://host:port`, no trailing slash.
    pub origin: http::uri::Authority,
    /// Path prefix from the URL (`""` when none), prepended to every forwarded path.
    pub base_path: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// Cap on one backend connection's read buffer: a client reading a large response
    /// slowly pins at most this much of it in sidewire (hyper's default is ~408 KiB).
    pub read_buffer_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub endpoint: String,
    pub token_query: Option<String>,
    pub token_header: Option<HeaderName>,
    pub token_cookie: Option<String>,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub anonymous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    Message,
    Connect,
    Disconnect,
    Subscribe,
    Unsubscribe,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub endpoint: String,
    pub events: Vec<WebhookEvent>,
    pub secret: Option<Secret>,
    /// How long a lifecycle batch is retried before it is dropped (at-least-once).
    pub retry_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub path: PathTemplate,
    pub transport: Transport,
    /// Channels the route subscribes to; empty = from the client (`?channel=` or WS messages).
    pub channels: Vec<ChannelTemplate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPublish {
    Deny,
    Broadcast,
    Backend,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChannelPolicy {
    pub pattern: ChannelPattern,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub presence: bool,
    pub client_publish: ClientPublish,
    pub ephemeral: Vec<String>,
    pub public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_channels_per_connection: usize,
    pub max_message_bytes: usize,
    pub client_rate: Rate,
    /// Client publishes per identity (user; per IP, IPv6 per /64, when anonymous),
    /// shared by all its connections.
    pub identity_publish_rate: Rate,
    /// Identities tracked by `identity_publish_rate` at once; a new one beyond is refused.
    pub identity_publish_table: usize,
    pub subscriber_queue: usize,
    /// Allowed `Origin` values, lowercased; empty = same host only; `*` = any.
    pub origins: Vec<String>,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// Bytes of history held by all channels together; beyond, the oldest go first.
    pub history_bytes: usize,
    /// Channel states held; beyond, the least recently active idle ones are forgotten.
    pub channels: usize,
    /// Most history one resume replays; a larger gap is answered with a reset.
    pub replay_bytes: usize,
    /// Most channels one published message names.
    pub channels_per_publish: usize,
    /// TCP connections on the public and TLS listeners (any protocol); beyond, closed at once.
    pub max_open_connections: usize,
    pub max_open_connections_per_ip: usize,
    /// An HTTP/2 connection with no open stream for this long is closed with GOAWAY.
    pub h2_idle_timeout: Duration,
    /// A request body that sends no byte for this long is answered 408 (or aborted).
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    Memory,
    Redis(RedisConfig),
}

/// `broker` with `kind: redis` (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://`; with `cluster`, one seed node.
    pub url: String,
    pub cluster: bool,
    /// Prefix of every key and pub/sub channel sidewire uses.
    pub key_prefix: String,
    /// A Redis call slower than this is a failure.
    pub timeout: Duration,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    pub tls: Option<TlsConfig>,
    pub admin: AdminConfig,
    pub backend: BackendConfig,
    pub prefix: String,
    pub auth: AuthConfig,
    pub webhooks: WebhookConfig,
    pub routes: Vec<RouteConfig>,
    pub channels: Vec<ChannelPolicy>,
    pub limits: LimitsConfig,
    pub heartbeat: HeartbeatConfig,
    pub broker: BrokerConfig,
}

impl Config {
    /// Reads and validates `path`. `env` resolves `${VAR}` references.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![Problem::new("", format!("cannot read {}: {e}", path.display()))]))?;
        Self::from_yaml(&text, env)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut tree = parse_tree(text).map_err(|p| ConfigError(vec![p]))?;
        env::expand(&mut tree, "", env, &mut problems);
        let env_failed: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
        let raw = to_raw(tree, &mut problems);
        let config = validate::validate(raw, &mut problems);
        // A value whose `${VAR}` failed is reported once, not again as a bad value.
        let mut i = env_failed.len();
        while i < problems.len() {
            if env_failed.contains(&problems[i].path) {
                problems.remove(i);
            } else {
                i += 1;
            }
        }
        if problems.is_empty() { Ok(config) } else { Err(ConfigError(problems)) }
    }

    /// What is valid but surely not meant: a channel rule that an earlier rule's `match`
    /// already covers (the first matching rule applies, so the later one is never used).
    /// `--check` prints these; startup and reloads log them.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (i, later) in self.channels.iter().enumerate() {
            if let Some(j) = self.channels[..i].iter().position(|earlier| earlier.pattern.covers(&later.pattern)) {
                out.push(Problem::new(
                    format!("channels[{i}].match"),
                    format!(
                        "{:?} is never used: channels[{j}] ({:?}) comes first and matches every channel it does",
                        later.pattern.as_str(),
                        self.channels[j].pattern.as_str()
                    ),
                ));
            }
        }
        out
    }

    /// Keys that changed between `self` and `new` but only take effect after a restart.
    pub fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen != new.listen {
            keys.push("listen");
        }
        if self.admin.listen != new.admin.listen {
            keys.push("admin.listen");
        }
        if self.tls.as_ref().map(|t| t.listen) != new.tls.as_ref().map(|t| t.listen) {
            keys.push("tls.listen");
        }
        if self.broker != new.broker {
            keys.push("broker");
        }
        if self.workers != new.workers {
            keys.push("workers");
        }
        keys
    }
}

fn parse_tree(text: &str) -> Result<Value, Problem> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match serde_saphyr::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Value::Object(Default::default())),
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Problem::new("", "the config file must be a YAML mapping")),
        Err(e) => Err(Problem::new("", format!("invalid YAML: {e}"))),
    }
}

/// Deserializes `value` into `T`, recording a problem (with the full key path) on failure.
fn section<T: DeserializeOwned>(value: Value, path: &str, problems: &mut Vec<Problem>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = match (path, inner.as_str()) {
                (p, ".") => p.to_owned(),
                (p, i) if i.starts_with('[') => format!("{p}{i}"),
                (p, i) => format!("{p}.{i}"),
            };
            problems.push(Problem::new(full, e.into_inner().to_string()));
            None
        }
    }
}

fn set<T: DeserializeOwned>(slot: &mut T, value: Value, path: &str, problems: &mut Vec<Problem>) {
    if let Some(v) = section(value, path, problems) {
        *slot = v;
    }
}

/// Deserializes a list element by element so each bad entry is reported.
fn list<T: DeserializeOwned>(slot: &mut Vec<T>, value: Value, path: &str, problems: &mut Vec<Problem>) {
    let Value::Array(items) = value else {
        problems.push(Problem::new(path, "expected a list"));
        return;
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if let Some(v) = section(item, &format!("{path}[{i}]"), problems) {
            out.push(v);
        }
    }
    *slot = out;
}

fn to_raw(tree: Value, problems: &mut Vec<Problem>) -> RawConfig {
    let mut raw = RawConfig::default();
    let Value::Object(map) = tree else { return raw };
    for (key, value) in map {
        let p = key.as_str();
        match p {
            "listen" => set(&mut raw.listen, value, p, problems),
            "shutdown_grace" => set(&mut raw.shutdown_grace, value, p, problems),
            "workers" => set(&mut raw.workers, value, p, problems),
            "tls" => set(&mut raw.tls, value, p, problems),
            "admin" => set(&mut raw.admin, value, p, problems),
            "backend" => set(&mut raw.backend, value, p, problems),
            "prefix" => set(&mut raw.prefix, value, p, problems),
            "auth" => set(&mut raw.auth, value, p, problems),
            "webhooks" => set(&mut raw.webhooks, value, p, problems),
            "routes" => list(&mut raw.routes, value, p, problems),
            "channels" => list(&mut raw.channels, value, p, problems),
            "limits" => set(&mut raw.limits, value, p, problems),
            "heartbeat" => set(&mut raw.heartbeat, value, p, problems),
            "broker" => set(&mut raw.broker, value, p, problems),
            other => problems.push(Problem::new(other, "unknown key")),
        }
    }
    raw
}

#[cfg(test)]
mod tests;
