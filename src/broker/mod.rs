//! The broker: the one path every published message takes (STYLE 13) and the one place
//! resume asks for history. It assigns ids, makes sure every instance's hub receives each
//! message once and in id order per channel, and answers "what came after this cursor".
//!
//! - [`Memory`] serves a single instance: ids come from one counter per process epoch,
//!   taken under the channel's hub lock; the hub's rings are the history.
//! - [`Redis`] serves many instances (SPEC §10): ids come from Redis, history lives in
//!   Redis streams, and messages reach every instance's hub over Redis pub/sub. The hub
//!   is a cache there (see `hub` module docs).
//!
//! Callers never see which variant they talk to; the hub never knows Redis exists.

mod link;
mod memory;
mod redis;
mod script;

use std::sync::Arc;

use http::StatusCode;

pub use memory::Memory;
pub use redis::Redis;

use crate::hub::cursor::{Epoch, MessageId};
use crate::hub::presence::PresentUser;
use crate::hub::{Draft, Hub, Outbox, Retention, Subscribed};
use crate::names::ChannelName;
use crate::respond::Rejection;

/// Why a publish or a subscribe did not happen. Nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis could not be reached or dropped the connection.
    #[error("broker unavailable: {0}")]
    Down(String),
    /// Redis did not answer within `broker.timeout`.
    #[error("broker did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Redis answered something sidewire did not expect (a bug, or a foreign key).
    #[error("unexpected broker reply: {0}")]
    Protocol(String),
    /// A bound was reached (too many idempotency keys in the window); retry later.
    #[error("{0}")]
    Saturated(String),
    /// An idempotency key already names a different message.
    #[error("idempotency key {0:?} was already used for a different message")]
    Conflict(String),
}

impl From<BrokerError> for Rejection {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Conflict(_) => Rejection::json(StatusCode::CONFLICT, "conflict", e.to_string()),
            _ => Rejection::json(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        }
    }
}

/// One message to publish, on each of its channels (all or none).
pub struct Outgoing {
    pub drafts: Vec<(Draft, Retention)>,
    pub idempotency: Option<Idempotency>,
}

/// An idempotency key as the broker stores it: hashed, with a fingerprint of the message
/// it was first used for.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Hex SHA-256 of the key.
    pub key: String,
    /// Hex SHA-256 of the message (channels, event, data).
    pub fingerprint: String,
    /// The key as given, for error messages (never stored).
    pub shown: String,
}

impl Idempotency {
    pub fn new(key: &str, drafts: &[(Draft, Retention)]) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for (d, _) in drafts {
            ctx.update(d.channel.as_str().as_bytes());
            ctx.update(b"\0");
            ctx.update(d.event.as_deref().unwrap_or("").as_bytes());
            ctx.update(b"\0");
            ctx.update(d.data.get().as_bytes());
            ctx.update(b"\0");
        }
        let shown: String = key.chars().take(40).collect();
        Self {
            key: hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref()),
            fingerprint: hex(ctx.finish().as_ref()),
            shown,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ids of one [`Outgoing`], one per channel (`None` for ephemeral events).
pub type Ids = Vec<Option<MessageId>>;

/// Where a subscriber wants to start, as the client said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No cursor: live messages only.
    Live,
    /// After this position of this epoch.
    After { epoch: Epoch, seq: u64 },
    /// A cursor that could not be read: resuming is impossible, and the client is told.
    Invalid,
}

impl Resume {
    /// The hub's view of this cursor under the current `epoch`; `known` says whether a
    /// seq of that epoch could have been handed out (the memory broker refuses cursors
    /// from the future; Redis checks against the channel's head itself).
    pub fn since(self, epoch: Epoch, known: impl FnOnce(u64) -> bool) -> crate::hub::Since {
        use crate::hub::Since;
        match self {
            Resume::Live => Since::Live,
            Resume::After { epoch: e, seq } if e == epoch && known(seq) => Since::After(seq),
            Resume::After { .. } | Resume::Invalid => Since::Lost,
        }
    }
}

impl BrokerError {
    /// `limits.channels` is reached and no idle channel could be forgotten.
    pub fn no_room() -> Self {
        BrokerError::Saturated("limits.channels reached and every channel has subscribers".into())
    }
}

#[derive(Clone)]
pub enum Broker {
    Memory(Arc<Memory>),
    Redis(Redis),
}

impl Broker {
    /// This instance's hub (delivery to local subscribers).
    pub fn hub(&self) -> &Hub {
        match self {
            Broker::Memory(m) => m.hub(),
            Broker::Redis(r) => r.hub(),
        }
    }

    /// The epoch cursors are written in now.
    pub fn epoch(&self) -> Epoch {
        match self {
            Broker::Memory(m) => m.epoch(),
            Broker::Redis(r) => r.epoch(),
        }
    }

    /// Publishes every message (each on all its channels) or none; returns their ids in
    /// order. A message whose idempotency key was seen returns its first ids instead.
    pub async fn publish(&self, items: Vec<Outgoing>) -> Result<Vec<Ids>, BrokerError> {
        match self {
            Broker::Memory(m) => m.publish(items),
            Broker::Redis(r) => r.publish(items).await,
        }
    }

    /// Subscribes `outbox` to `channel` from `resume`, with the replay history holds.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        outbox: &Outbox,
        resume: Resume,
        retention: Retention,
    ) -> Result<Subscribed, BrokerError> {
        match self {
            Broker::Memory(m) => m.subscribe(channel, outbox, resume, retention),
            Broker::Redis(r) => r.subscribe(channel, outbox, resume, retention).await,
        }
    }

    /// Present users of a presence channel (redis mode: on every instance).
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresentUser>, BrokerError> {
        match self {
            Broker::Memory(m) => Ok(m.hub().presence(channel).unwrap_or_default()),
            Broker::Redis(r) => r.presence(channel).await,
        }
    }

    /// Whether publishing can succeed now (`/readyz`).
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(r) => r.is_ready(),
        }
    }
}
