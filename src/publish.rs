//! What a publish request says, checked whole, then handed to the broker (SPEC §7): a
//! single message, one message to many `channels`, or a batch of `messages`. Used by the
//! admin API (`POST /publish`, in `admin.rs`) and by webhook answers (`publish` list).
//!
//! A request is checked whole before anything is published, and the broker publishes
//! all of it or none, so an error never leaves a batch half-published. An
//! `idempotency_key` makes a retried publish return the first ids instead of delivering
//! twice (the broker remembers keys for 5 minutes; redis mode: on every instance).
//! Also the checks every message passes whoever publishes it ([`prepare`]: policy, size,
//! event name) and the compaction of its data, done once per message: every channel of
//! one publish shares that one copy (SPEC §9). No HTTP here: the admin handlers read the
//! request and call [`publish_body`].

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use http::StatusCode;

use crate::broker::{Broker, Idempotency, Outgoing};
use crate::config::Config;
use crate::hub::cursor::MessageId;
use crate::hub::{ConnRef, Data, Draft, Retention};
use crate::names::ChannelName;
use crate::policy::{self, ChannelError, policy, retention};
use crate::protocol::ErrorCode;
use crate::respond::Rejection;

/// Longest idempotency key (SPEC §7).
const MAX_IDEMPOTENCY_KEY: usize = 200;
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

fn bad(message: impl Into<String>) -> Rejection {
    Rejection::json(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Publishes the body of a `POST /publish`; returns the ids, in order.
pub async fn publish_body(broker: &Broker, config: &Config, body: &[u8]) -> Result<Vec<Option<String>>, Rejection> {
    let checked = parse_body(config, body)?;
    publish_checked(broker, checked).await
}

/// The body of a `POST /publish` read and checked whole, as the broker takes it (pure;
/// also the fuzz target's entry point).
pub fn parse_body(config: &Config, body: &[u8]) -> Result<Vec<Outgoing>, Rejection> {
    let payload: Payload = serde_json::from_slice(body).map_err(|e| bad(format!("malformed publish request: {e}")))?;
    check_items(config, &payload.into_items()?)
}

fn check_items(config: &Config, items: &[Item]) -> Result<Vec<Outgoing>, Rejection> {
    items.iter().enumerate().map(|(i, item)| check(config, item, i)).collect()
}

async fn publish_checked(broker: &Broker, checked: Vec<Outgoing>) -> Result<Vec<Option<String>>, Rejection> {
    let ids = broker.publish(checked).await?;
    Ok(ids.into_iter().flatten().map(|id| id.map(|i| i.to_string())).collect())
}

fn check(config: &Config, item: &Item, index: usize) -> Result<Outgoing, Rejection> {
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
    let most = config.limits.channels_per_publish;
    if names.len() > most {
        return Err(bad(at(format!("at most {most} channels per message (limits.channels_per_publish)"))));
    }
    let data = item.data.as_deref().ok_or_else(|| bad(at("\"data\" is required".into())))?;
    let data = Shared::new(data);
    let exclude = match &item.exclude_connection {
        Some(text) => Some(ConnRef::parse(text).ok_or_else(|| {
            bad(at(format!("\"exclude_connection\" {text:?} is not a connection id (the `connection` of `welcome`)")))
        })?),
        None => None,
    };
    if let Some(key) = &item.idempotency_key
        && key.len() > MAX_IDEMPOTENCY_KEY
    {
        return Err(bad(at(format!("\"idempotency_key\" is longer than {MAX_IDEMPOTENCY_KEY} bytes"))));
    }
    let mut drafts = Vec::with_capacity(names.len());
    for name in names {
        let channel: ChannelName = policy::channel_name(name).map_err(|e| with_index(e, index))?;
        let p =
            Publish { channel: &channel, event: item.event.as_deref(), data: &data, exclude, sender: None, from: None };
        drafts.push(prepare(config, &p).map_err(|e| with_index(e, index))?);
    }
    let idempotency = item.idempotency_key.as_deref().filter(|k| !k.is_empty()).map(|k| Idempotency::new(k, &drafts));
    Ok(Outgoing { drafts, idempotency })
}

fn with_index(mut e: ChannelError, index: usize) -> Rejection {
    if index > 0 {
        e.message = format!("messages[{index}]: {}", e.message);
    }
    e.into()
}

/// Publishes a JSON array of messages in the publish API's item form (the `publish`
/// list of a webhook answer); checked whole first, like a batch.
pub async fn publish_list(
    broker: &Broker,
    config: &Config,
    list: &serde_json::Value,
) -> Result<Vec<Option<String>>, Rejection> {
    // Items hold `RawValue`, which only deserializes from text.
    let items: Vec<Item> =
        serde_json::from_str(&list.to_string()).map_err(|e| bad(format!("malformed publish list: {e}")))?;
    publish_checked(broker, check_items(config, &items)?).await
}

/// Published data, compacted once and shared by every channel it goes to (SPEC §9: one
/// publish to 2,000 channels holds one copy of its data, not 2,000).
#[derive(Debug, Clone)]
pub struct Shared {
    /// Length as given: the size limit applies to what the publisher sent.
    given: usize,
    data: Data,
}

impl Shared {
    pub fn new(raw: &RawValue) -> Self {
        Self { given: raw.get().len(), data: compact(raw) }
    }
}

/// A message to publish, as the API or a client gave it.
pub struct Publish<'a> {
    pub channel: &'a ChannelName,
    pub event: Option<&'a str>,
    pub data: &'a Shared,
    pub exclude: Option<ConnRef>,
    /// The publishing client's user (`Some(None)`: anonymous); `None` from the backend.
    pub sender: Option<Option<std::sync::Arc<str>>>,
    /// The publishing client connection (for its `echo: false` subscriptions).
    pub from: Option<ConnRef>,
}

/// Checks a message against its channel policy and the size limit, before anything is
/// published (a batch is checked whole first). Returns the draft and its retention.
pub fn prepare(config: &Config, p: &Publish<'_>) -> Result<(Draft, Retention), ChannelError> {
    let policy = policy(config, p.channel).ok_or_else(|| {
        ChannelError::new(ErrorCode::UnknownChannel, format!("no channel policy matches {}", p.channel))
    })?;
    if p.data.given > config.limits.max_message_bytes {
        return Err(ChannelError::new(
            ErrorCode::TooLarge,
            format!("data is larger than {} bytes", config.limits.max_message_bytes),
        ));
    }
    if let Some(ev) = p.event
        && (ev.is_empty() || ev.len() > 64 || ev.contains(['\n', '\r']))
    {
        return Err(ChannelError::new(ErrorCode::BadRequest, "event names are 1-64 characters without line breaks"));
    }
    if let Some(ev) = p.event.filter(|e| reserved(e)) {
        let msg = format!("the event name {ev:?} is reserved for sidewire (reset, join, leave, error, sidewire*)");
        return Err(ChannelError::new(ErrorCode::BadRequest, msg));
    }
    let ephemeral = p.event.is_some_and(|e| policy.ephemeral.iter().any(|x| x == e));
    let draft = Draft {
        channel: p.channel.clone(),
        event: p.event.map(Into::into),
        data: Data::clone(&p.data.data),
        ephemeral,
        exclude: p.exclude,
        sender: p.sender.clone(),
        from: p.from,
    };
    Ok((draft, retention(policy)))
}

/// Publishes one prepared message (a client's) through the broker.
pub async fn publish_one(
    broker: &Broker,
    draft: Draft,
    retention: Retention,
) -> Result<Option<MessageId>, ChannelError> {
    let item = Outgoing { drafts: vec![(draft, retention)], idempotency: None };
    match broker.publish(vec![item]).await {
        Ok(ids) => Ok(ids.into_iter().next().and_then(|i| i.into_iter().next()).flatten()),
        Err(e) => Err(ChannelError::from(e)),
    }
}

/// Event names sidewire itself sends (SPEC §3): a publish using one could make clients
/// act on a forged `reset` or presence change.
fn reserved(event: &str) -> bool {
    matches!(event, "reset" | "join" | "leave" | "error") || event.starts_with("sidewire")
}

/// JSON with every insignificant space removed (SSE sends data as compact JSON). Works
/// on the text, so numbers keep their exact digits.
pub fn compact(raw: &RawValue) -> Data {
    let text = raw.get();
    if !text.bytes().any(|b| b.is_ascii_whitespace()) {
        return raw.to_owned().into();
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    RawValue::from_string(out).unwrap_or_else(|_| raw.to_owned()).into()
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
    }

    /// SPEC §9: one publish to many channels stores one copy of its data, whichever
    /// channel's history it is read back from.
    #[tokio::test]
    async fn one_publish_to_many_channels_stores_one_copy_of_its_data() {
        use crate::broker::{Memory, Resume};
        use crate::hub::{Hub, HubStats, outbox};
        use std::sync::Arc;

        let config = Config::from_yaml("", &|_| None).unwrap();
        let broker = Broker::Memory(Arc::new(Memory::new(Hub::new(HubStats::default()))));
        let body = br#"{"channels":["a","b","c"],"data":{ "x": [1, 2.50] }}"#;
        assert_eq!(publish_body(&broker, &config, body).await.unwrap().len(), 3);
        let retention = Retention { size: 10, ttl: std::time::Duration::from_secs(60), presence: false };
        let mut stored = Vec::new();
        for name in ["a", "b", "c"] {
            let (o, _inbox) = outbox(broker.hub().next_conn(), None, 4);
            let resume = Resume::After { epoch: broker.epoch(), seq: 0 };
            let sub = broker.subscribe(&ChannelName::new(name).unwrap(), &o, resume, retention).await.unwrap();
            assert_eq!(sub.replay.len(), 1, "{name}");
            stored.push(Data::clone(&sub.replay[0].data));
        }
        assert_eq!(stored[0].get(), r#"{"x":[1,2.50]}"#);
        assert!(stored.iter().all(|d| Arc::ptr_eq(d, &stored[0])), "one allocation for every channel");
        // The three history entries and the three clones above: no other copy holds it.
        assert_eq!(Arc::strong_count(&stored[0]), 6);
    }

    #[test]
    fn compacts_outside_strings() {
        let raw = RawValue::from_string(r#"{ "a" : [1, 2.50, "x y\" z" ], "b":	true }"#.into()).unwrap();
        assert_eq!(compact(&raw).get(), r#"{"a":[1,2.50,"x y\" z"],"b":true}"#);
    }
}
