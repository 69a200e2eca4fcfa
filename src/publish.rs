//! The publish API on the admin listener (SPEC §7): `POST /publish` (single message,
//! one message to many `channels`, or a batch of `messages`) and `GET /channels`.
//!
//! A request is checked whole before anything is published, so an error never leaves a
//! batch half-published. `idempotency_key` makes a retried publish return the first ids
//! instead of delivering twice (keys are remembered for 5 minutes, bounded in number).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::State;
use crate::config::Config;
use crate::hub::{ConnId, Draft, Retention};
use crate::names::ChannelName;
use crate::realtime::{self, ChannelError, Publish};
use crate::respond::{Body, Rejection, json};

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);
/// Most idempotency keys remembered; the oldest are forgotten first beyond this.
const IDEMPOTENCY_MAX: usize = 100_000;
/// Most messages in one batch.
const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    event: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    idempotency_key: Option<String>,
    exclude_connection: Option<String>,
}

/// The request body: one message, or `messages` (serde's untagged enums cannot hold
/// `RawValue`, so both forms share one struct).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    messages: Option<Vec<Item>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    event: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    idempotency_key: Option<String>,
    exclude_connection: Option<String>,
}

/// `data` exactly as given. Serde reads a present `null` into an `Option` as `None`,
/// which would refuse `"data": null` as missing although null is valid data (SPEC §3).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl Item {
    /// Whether no message field is set (the top level of a `messages` batch).
    fn is_empty(&self) -> bool {
        self.channel.is_none()
            && self.channels.is_none()
            && self.event.is_none()
            && self.data.is_none()
            && self.idempotency_key.is_none()
            && self.exclude_connection.is_none()
    }
}

impl Payload {
    fn into_items(self) -> Result<Vec<Item>, Rejection> {
        let Payload { messages, channel, channels, event, data, idempotency_key, exclude_connection } = self;
        let single = Item { channel, channels, event, data, idempotency_key, exclude_connection };
        match messages {
            None => Ok(vec![single]),
            // A message field beside `messages` would be silently dropped otherwise.
            Some(_) if !single.is_empty() => {
                Err(bad("give either \"messages\" or a single message's fields, not both"))
            }
            Some(m) if m.is_empty() => Err(bad("\"messages\" is empty")),
            Some(m) if m.len() > MAX_BATCH => Err(bad(format!("at most {MAX_BATCH} messages per batch"))),
            Some(m) => Ok(m),
        }
    }
}

/// A message ready to publish on each of its channels.
struct Checked {
    drafts: Vec<(Draft, Retention)>,
    key: Option<String>,
}

/// Remembered answers to idempotent publishes.
#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<IdemInner>,
}

#[derive(Default)]
struct IdemInner {
    ids: HashMap<String, Vec<Option<String>>>,
    order: VecDeque<(Instant, String)>,
}

impl IdemInner {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < IDEMPOTENCY_TTL && self.order.len() <= IDEMPOTENCY_MAX {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.ids.remove(&key);
            }
        }
    }
}

fn bad(message: impl Into<String>) -> Rejection {
    Rejection::json(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Checks `Authorization: Bearer <admin.secret>` when a secret is configured.
pub fn authorized(config: &Config, req: &Request<Incoming>) -> Result<(), Rejection> {
    let Some(secret) = &config.admin.secret else {
        return Ok(());
    };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), secret.expose().as_bytes()) => Ok(()),
        _ => Err(Rejection::json(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong admin secret")),
    }
}

/// The credentials of a `Bearer` authorization; the scheme name is case-insensitive
/// (RFC 9110 §11.1), so `bearer` from a hand-written client counts too.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /publish`.
pub async fn publish(state: &State, config: &Config, req: Request<Incoming>) -> Result<Response<Body>, Rejection> {
    authorized(config, &req)?;
    let limit = (config.limits.max_message_bytes * 4).max(1 << 20);
    let body = read_body(req, limit).await?;
    let payload: Payload = serde_json::from_slice(&body).map_err(|e| bad(format!("malformed publish request: {e}")))?;
    let items = payload.into_items()?;
    let checked =
        items.iter().enumerate().map(|(i, item)| check(state, config, item, i)).collect::<Result<Vec<_>, _>>()?;
    let mut ids = Vec::new();
    for c in checked {
        ids.extend(apply(state, c)?);
    }
    Ok(json(StatusCode::OK, &serde_json::json!({ "ids": ids })))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Rejection> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection::json(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than {limit} bytes"),
        )),
        Err(e) => Err(bad(format!("could not read the body: {e}"))),
    }
}

fn check(state: &State, config: &Config, item: &Item, index: usize) -> Result<Checked, Rejection> {
    let at = |msg: String| {
        if index == 0 { msg } else { format!("messages[{index}]: {msg}") }
    };
    let mut names: Vec<&String> = match (&item.channel, &item.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) if !cs.is_empty() => cs.iter().collect(),
        (Some(_), Some(_)) => {
            return Err(bad(at("give either \"channel\" or \"channels\", not both".into())));
        }
        _ => {
            return Err(bad(at("\"channel\" (or a non-empty \"channels\") is required".into())));
        }
    };
    // A channel named twice gets the message once (its id is listed once).
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.as_str()));
    let data = item.data.as_deref().ok_or_else(|| bad(at("\"data\" is required".into())))?;
    let exclude: Option<ConnId> = match &item.exclude_connection {
        // A connection of another instance is not here to exclude.
        Some(text) => state.hub.parse_conn(text),
        None => None,
    };
    let mut drafts = Vec::with_capacity(names.len());
    for name in names {
        let channel: ChannelName = realtime::channel_name(name).map_err(|e| with_index(e, index))?;
        let p = Publish { channel: &channel, event: item.event.as_deref(), data, exclude };
        drafts.push(realtime::prepare(config, &p).map_err(|e| with_index(e, index))?);
    }
    Ok(Checked { drafts, key: item.idempotency_key.clone().filter(|k| !k.is_empty()) })
}

fn with_index(mut e: ChannelError, index: usize) -> Rejection {
    if index > 0 {
        e.message = format!("messages[{index}]: {}", e.message);
    }
    e.into()
}

/// Publishes one checked message, or returns the ids of its first publish.
fn apply(state: &State, checked: Checked) -> Result<Vec<Option<String>>, Rejection> {
    let Some(key) = checked.key else {
        return publish_all(state, checked.drafts);
    };
    // Held across the (synchronous) publish so two concurrent retries cannot both deliver.
    let mut idem = state.idempotency.inner.lock().unwrap_or_else(PoisonError::into_inner);
    idem.expire(Instant::now());
    if let Some(ids) = idem.ids.get(&key) {
        return Ok(ids.clone());
    }
    let ids = publish_all(state, checked.drafts)?;
    idem.ids.insert(key.clone(), ids.clone());
    idem.order.push_back((Instant::now(), key));
    Ok(ids)
}

fn publish_all(state: &State, drafts: Vec<(Draft, Retention)>) -> Result<Vec<Option<String>>, Rejection> {
    drafts
        .into_iter()
        .map(|(draft, retention)| realtime::publish(state, draft, retention).map(|id| id.map(|i| i.to_string())))
        .collect::<Result<_, _>>()
        .map_err(Rejection::from)
}

/// Publishes a JSON array of messages in the publish API's item form (the `publish`
/// list of a webhook answer); checked whole first, like a batch.
pub fn publish_list(
    state: &State,
    config: &Config,
    list: &serde_json::Value,
) -> Result<Vec<Option<String>>, Rejection> {
    // Items hold `RawValue`, which only deserializes from text.
    let items: Vec<Item> =
        serde_json::from_str(&list.to_string()).map_err(|e| bad(format!("malformed publish list: {e}")))?;
    let checked =
        items.iter().enumerate().map(|(i, item)| check(state, config, item, i)).collect::<Result<Vec<_>, _>>()?;
    let mut ids = Vec::new();
    for c in checked {
        ids.extend(apply(state, c)?);
    }
    Ok(ids)
}

/// `GET /presence?channel=…`: users present on a presence channel of this instance.
pub fn presence(state: &State, config: &Config, req: &Request<Incoming>) -> Result<Response<Body>, Rejection> {
    authorized(config, req)?;
    let query = realtime::query_pairs(req.uri().query());
    let name = query
        .iter()
        .find(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| bad("?channel= is required"))?;
    let channel = realtime::channel_name(name)?;
    let policy = realtime::policy(config, &channel).ok_or_else(|| {
        Rejection::json(StatusCode::BAD_REQUEST, "unknown_channel", format!("no channel policy matches {channel}"))
    })?;
    if !policy.presence {
        return Err(bad(format!("presence is not enabled on {channel}")));
    }
    let users: Vec<serde_json::Value> = state
        .hub
        .presence(&channel)
        .unwrap_or_default()
        .into_iter()
        .map(|(user, n, info)| serde_json::json!({ "user": &*user, "connections": n, "info": info }))
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "channel": channel.as_str(), "users": users })))
}

/// `GET /channels`: channels with subscribers on this instance.
pub fn channels(state: &State, config: &Config, req: &Request<Incoming>) -> Result<Response<Body>, Rejection> {
    authorized(config, req)?;
    let list: Vec<serde_json::Value> = state
        .hub
        .channels()
        .into_iter()
        .map(|(name, n)| serde_json::json!({ "channel": name.as_str(), "subscribers": n }))
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "channels": list })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_forms() {
        let one: Payload = serde_json::from_str(r#"{"channel":"a","data":{"x": 1}}"#).unwrap();
        assert_eq!(one.into_items().unwrap()[0].data.as_ref().unwrap().get(), r#"{"x": 1}"#);
        let batch: Payload =
            serde_json::from_str(r#"{"messages":[{"channel":"a","data":1},{"channel":"b","data":2}]}"#).unwrap();
        assert_eq!(batch.into_items().unwrap().len(), 2);
        assert!(serde_json::from_str::<Payload>(r#"{"chanel":"a","data":1}"#).is_err());
        let null: Payload = serde_json::from_str(r#"{"channel":"a","data":null}"#).unwrap();
        assert_eq!(null.data.as_ref().unwrap().get(), "null");
        let mixed: Payload = serde_json::from_str(r#"{"messages":[{"channel":"a","data":1}],"event":"e"}"#).unwrap();
        assert!(mixed.into_items().is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
