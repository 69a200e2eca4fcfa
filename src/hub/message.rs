//! A published message, shared by every subscriber as `Arc<Message>`, with a slot per
//! transport where that transport caches its encoding (so it is encoded at most once
//! per transport). The hub never encodes: the transports fill the slots.
//!
//! The data is shared too: one publish to many channels makes one `Message` per channel,
//! all holding the same [`Data`] allocation (SPEC §9: one copy of its data).

use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

use super::Draft;
use super::cursor::MessageId;
use crate::names::ChannelName;
use bytes::Bytes;
use serde_json::value::RawValue;

/// A message's data as published: compact JSON text, shared by every channel of one
/// publish and written out as is by every transport (never re-parsed).
pub type Data = Arc<RawValue>;

/// Identifies a connection within this instance.
pub type ConnId = u64;

/// A connection of any instance: the instance that holds it and its id there. Its text
/// form `<instance>-<hex id>` is the `connection` of `welcome` and what
/// `exclude_connection` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub instance: super::cursor::Epoch,
    pub conn: ConnId,
}

impl ConnRef {
    pub fn parse(text: &str) -> Option<Self> {
        let (instance, n) = text.split_once('-')?;
        if n.is_empty() || n.len() > 16 {
            return None;
        }
        Some(Self { instance: super::cursor::Epoch::parse(instance)?, conn: u64::from_str_radix(n, 16).ok()? })
    }
}

impl std::fmt::Display for ConnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{:x}", self.instance, self.conn)
    }
}

/// What a message is: a publish, or a presence change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Publish,
    Join,
    Leave,
}

/// One message on one channel.
#[derive(Debug)]
pub struct Message {
    pub kind: Kind,
    pub channel: ChannelName,
    /// `None` for ephemeral events: never stored, never replayed, never move a cursor.
    pub id: Option<MessageId>,
    pub event: Option<Box<str>>,
    pub data: Data,
    /// Not delivered to this connection (the sender of a webhook-approved message).
    pub exclude: Option<ConnId>,
    /// The publishing client's user, stamped by sidewire (see [`super::Draft::sender`]).
    pub sender: Option<Option<std::sync::Arc<str>>>,
    /// The connection of this instance that published it, if a client here did.
    pub from: Option<ConnId>,
    /// When it was published: history TTL counts from here.
    pub at: Instant,
    /// The WebSocket text frame's payload, filled by the WebSocket transport.
    pub ws: OnceLock<Bytes>,
    /// The SSE event without its `id:` line, filled by the SSE transport.
    pub sse: OnceLock<Bytes>,
}

impl Message {
    pub fn new(channel: ChannelName, id: Option<MessageId>, event: Option<Box<str>>, data: Data) -> Self {
        Self {
            kind: Kind::Publish,
            channel,
            id,
            event,
            data,
            exclude: None,
            sender: None,
            from: None,
            at: Instant::now(),
            ws: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    /// A `join` or `leave` of `user`: ephemeral, with `{"channel","user"[,"info"]}` as data and
    /// the event name `join`/`leave` on SSE and long-poll.
    /// A `join` carries the member's `info` (`null` when the backend gave none).
    pub fn presence(channel: ChannelName, join: bool, user: &str, info: Option<&serde_json::Value>) -> Self {
        let mut data = serde_json::json!({ "channel": channel.as_str(), "user": user });
        if join {
            data["info"] = info.cloned().unwrap_or(serde_json::Value::Null);
        }
        let data = data.to_string();
        let data = RawValue::from_string(data).unwrap_or_else(|_| RawValue::NULL.to_owned()).into();
        let (kind, event) = if join { (Kind::Join, "join") } else { (Kind::Leave, "leave") };
        let mut msg = Self::new(channel, None, Some(event.into()), data);
        msg.kind = kind;
        msg
    }

    /// The message a draft becomes once numbered, on instance `here` (a connection of
    /// another instance is not here to exclude).
    pub fn from_draft(draft: Draft, id: Option<MessageId>, here: super::cursor::Epoch) -> Self {
        let mut msg = Self::new(draft.channel, id, draft.event, draft.data);
        msg.exclude = draft.exclude.filter(|r| r.instance == here).map(|r| r.conn);
        msg.sender = draft.sender;
        msg.from = draft.from.filter(|r| r.instance == here).map(|r| r.conn);
        msg
    }
}
