//! The hub: this instance's channels, their subscribers and history.
//!
//! Owns: the channel map (sharded by name), per-channel history rings, the id sequence
//! of this epoch, and fan-out into each connection's bounded [`Outbox`].
//! Does not: encode wire formats (messages cache their own frames), authorize (the
//! caller has decided), or talk to other instances (the broker calls [`Hub::publish`]).
//!
//! Invariants:
//! - Publishing never waits on a subscriber; a full outbox evicts that connection only.
//! - A message's id is assigned under its channel's shard lock, and fan-out happens under
//!   the same lock, so every subscriber sees a channel's messages in id order.
//! - Subscribing reads history and registers the outbox under one lock, so a resumed or
//!   live subscriber never misses or duplicates a message published meanwhile.
//! - Locks are std mutexes guarding map updates only; never held across `.await`.

mod channel;
pub mod cursor;
pub mod message;
pub mod outbox;
pub mod presence;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

use serde_json::value::RawValue;

pub use channel::Retention;
use channel::{Channel, Fanout};
use cursor::{Epoch, MessageId};
pub use message::{ConnId, Message};
pub use outbox::{Inbox, Outbox, outbox, outbox_with};
pub use presence::Member;

use crate::names::ChannelName;

/// Shards of the channel map: enough that two cores rarely contend.
const SHARDS: usize = 64;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Only messages published from now on.
    Live,
    /// Everything after this position of this epoch that history still holds.
    After { epoch: Epoch, seq: u64 },
}

/// Result of a subscribe.
#[derive(Debug)]
pub struct Subscribed {
    /// Whether history covered everything after the requested position (`true` for live).
    pub recovered: bool,
    /// Messages to deliver before the live ones, in order.
    pub replay: Vec<Arc<Message>>,
    /// The channel position this subscriber now stands at (for stream cursors).
    pub position: u64,
    /// `false` when the connection was already subscribed (nothing changed).
    pub added: bool,
}

/// The metrics the hub keeps (prometheus handles: cheap atomics, shared with the registry).
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    pub published: Counter,
    pub delivered: Counter,
    pub evicted_slow: Counter,
    pub subscriptions: Gauge,
    pub history: Gauge,
}

struct Inner {
    epoch: Epoch,
    /// Last id seq handed out in this epoch.
    seq: AtomicU64,
    next_conn: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Mutex<Shard>]>,
    stats: HubStats,
}

/// Cheap-clone handle to this instance's channels.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

impl Hub {
    pub fn new(epoch: Epoch, stats: HubStats) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self(Arc::new(Inner {
            epoch,
            seq: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            hasher: Default::default(),
            shards,
            stats,
        }))
    }

    pub fn epoch(&self) -> Epoch {
        self.0.epoch
    }

    pub fn stats(&self) -> &HubStats {
        &self.0.stats
    }

    /// A new connection id, unique in this instance.
    pub fn next_conn(&self) -> ConnId {
        self.0.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The textual connection id shown to clients and accepted by `exclude_connection`.
    pub fn conn_name(&self, conn: ConnId) -> String {
        format!("{}-{conn:x}", self.0.epoch)
    }

    /// Parses a textual connection id of this instance.
    pub fn parse_conn(&self, text: &str) -> Option<ConnId> {
        let (epoch, n) = text.split_once('-')?;
        (epoch == self.0.epoch.to_string()).then(|| u64::from_str_radix(n, 16).ok())?
    }

    fn shard(&self, name: &ChannelName) -> MutexGuard<'_, Shard> {
        let i = (self.0.hasher.hash_one(name) as usize) % SHARDS;
        // A panic while holding the lock leaves only counters half-updated; keep serving.
        self.0.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes on one channel: assigns the id (unless `ephemeral`), stores it in
    /// history, and offers it to every subscriber. Never waits.
    pub fn publish(&self, draft: Draft, retention: Retention) -> Arc<Message> {
        let mut shard = self.shard(&draft.channel);
        let channel = shard.entry(&draft.channel, retention);
        let id = (!draft.ephemeral)
            .then(|| MessageId { epoch: self.0.epoch.0, seq: self.0.seq.fetch_add(1, Ordering::AcqRel) + 1 });
        let msg = Arc::new(Message::new(draft.channel, id, draft.event, draft.data).with_exclude(draft.exclude));
        let (fanout, history_delta) = channel.deliver(&msg);
        shard.drop_if_idle(&msg.channel);
        drop(shard);
        self.count(fanout, history_delta);
        msg
    }

    fn count(&self, fanout: Fanout, history_delta: i64) {
        let s = &self.0.stats;
        s.published.inc();
        self.count_fanout(fanout);
        if history_delta != 0 {
            s.history.inc_by(history_delta);
        }
    }

    fn count_fanout(&self, fanout: Fanout) {
        let s = &self.0.stats;
        s.delivered.inc_by(fanout.delivered);
        s.evicted_slow.inc_by(fanout.evicted);
        // The session's own unsubscribe will not find these any more, so count them here.
        s.subscriptions.dec_by(fanout.removed as i64);
    }

    /// Subscribes `outbox` to `channel`, replaying what history holds after `since`.
    pub fn subscribe(&self, channel: &ChannelName, outbox: &Outbox, since: Since, retention: Retention) -> Subscribed {
        let mut shard = self.shard(channel);
        let head = self.0.seq.load(Ordering::Acquire);
        let state = shard.entry(channel, retention);
        let before = state.history_len();
        let (recovered, replay) = match since {
            Since::Live => (true, Vec::new()),
            Since::After { epoch, seq } if epoch == self.0.epoch && seq <= head => {
                match state.after(seq, Instant::now()) {
                    Some(replay) => (true, replay),
                    None => (false, Vec::new()),
                }
            }
            Since::After { .. } => (false, Vec::new()),
        };
        let position = match (since, recovered) {
            (Since::After { seq, .. }, true) => replay.last().and_then(|m| m.id).map_or(seq, |id| id.seq),
            _ => head,
        };
        let expired = before - state.history_len();
        let joined = state.add(channel, outbox);
        let added = joined.is_some();
        let mut fanout = Fanout::default();
        if let Some(Some(join)) = &joined {
            fanout = state.fan_out(join);
        }
        drop(shard);
        if expired > 0 {
            self.0.stats.history.dec_by(expired as i64);
        }
        if added {
            self.0.stats.subscriptions.inc();
        }
        self.count_fanout(fanout);
        Subscribed { recovered, replay, position, added }
    }

    /// Removes `conn` from `channel` (announcing `leave` if it was its user's last
    /// connection there); drops the channel state when nothing is left.
    pub fn unsubscribe(&self, channel: &ChannelName, conn: ConnId) -> bool {
        let mut shard = self.shard(channel);
        let Some(state) = shard.channels.get_mut(channel) else {
            return false;
        };
        let removed = state.remove(channel, conn);
        let fanout = match &removed {
            Some(Some(leave)) => state.fan_out(leave),
            _ => Fanout::default(),
        };
        shard.drop_if_idle(channel);
        drop(shard);
        if removed.is_some() {
            self.0.stats.subscriptions.dec();
        }
        self.count_fanout(fanout);
        removed.is_some()
    }

    /// Present users of `channel`: `None` when presence is not enabled there (or nobody
    /// ever subscribed on this instance).
    pub fn presence(&self, channel: &ChannelName) -> Option<Vec<presence::PresentUser>> {
        let shard = self.shard(channel);
        shard.channels.get(channel).and_then(|c| c.presence()).map(|p| p.list())
    }

    /// Expires old history everywhere and forgets idle channels. Called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut expired = 0usize;
        for shard in self.0.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            expired += shard.sweep(now);
        }
        if expired > 0 {
            self.0.stats.history.dec_by(expired as i64);
        }
    }

    /// Channels with at least one subscriber on this instance, and their counts.
    pub fn channels(&self) -> Vec<(ChannelName, usize)> {
        let mut out = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(
                shard.channels.iter().filter(|(_, c)| c.subscribers() > 0).map(|(n, c)| (n.clone(), c.subscribers())),
            );
        }
        out.sort();
        out
    }
}

/// Most dropped-channel floors remembered per shard (~100 bytes each).
const MAX_DROPPED: usize = 4096;

/// One shard of the channel map, plus what it remembers of channels it dropped.
#[derive(Default)]
struct Shard {
    channels: HashMap<ChannelName, Channel>,
    /// History floors of idle channels whose state was dropped. A recreated state starts
    /// from its old floor, so resuming a quiet channel is not a false reset.
    dropped: HashMap<ChannelName, u64>,
    /// The highest floor forgotten when `dropped` overflowed: a channel not in `dropped`
    /// starts here (0 while nothing was forgotten: such a channel never had a message).
    forgotten: u64,
}

impl Shard {
    /// The state of `name`, created from its remembered floor when needed.
    fn entry(&mut self, name: &ChannelName, retention: Retention) -> &mut Channel {
        if !self.channels.contains_key(name) {
            let floor = self.dropped.remove(name).unwrap_or(self.forgotten);
            self.channels.insert(name.clone(), Channel::new(floor, retention));
        }
        let channel = self.channels.entry(name.clone()).or_insert_with(|| Channel::new(0, retention));
        channel.retention = retention;
        channel
    }

    /// Drops the state of `name` if nothing is left in it, remembering its floor.
    fn drop_if_idle(&mut self, name: &ChannelName) {
        if self.channels.get(name).is_some_and(Channel::is_idle)
            && let Some(ch) = self.channels.remove(name)
        {
            self.remember(name.clone(), ch.floor());
        }
    }

    fn remember(&mut self, name: ChannelName, floor: u64) {
        if self.dropped.len() >= MAX_DROPPED {
            // Forget half (arbitrary ones); their floors fold into `forgotten`, which is
            // conservative: a forgotten channel may report a reset it could have avoided.
            let forget: Vec<ChannelName> = self.dropped.keys().take(MAX_DROPPED / 2).cloned().collect();
            for key in forget {
                if let Some(f) = self.dropped.remove(&key) {
                    self.forgotten = self.forgotten.max(f);
                }
            }
        }
        self.dropped.insert(name, floor);
    }

    /// Expires history and drops idle channels; returns how many messages expired.
    fn sweep(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        let mut idle = Vec::new();
        for (name, ch) in &mut self.channels {
            expired += ch.expire(now);
            if ch.is_idle() {
                idle.push(name.clone());
            }
        }
        for name in idle {
            self.drop_if_idle(&name);
        }
        expired
    }
}

/// A message before it has an id.
#[derive(Debug)]
pub struct Draft {
    pub channel: ChannelName,
    pub event: Option<Box<str>>,
    pub data: Box<RawValue>,
    pub ephemeral: bool,
    pub exclude: Option<ConnId>,
}

#[cfg(test)]
mod tests;
