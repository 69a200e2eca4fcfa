//! The hub: this instance's channels, their subscribers and history rings.
//!
//! Owns: the channel map (sharded by name), per-channel history rings, presence, and
//! fan-out into each connection's bounded [`Outbox`].
//! Does not: assign ids or decide which history a cursor may resume (the broker does,
//! and passes [`Seq`] and [`Since`]), encode wire formats (messages carry plain slots the
//! transports fill), authorize (the caller has decided), or talk to other instances.
//!
//! Two modes, chosen by the broker:
//! - *authoritative* (memory broker): the rings are the history. Idle channels are
//!   dropped, remembering their floor.
//! - *cache* (redis broker): the rings hold what this instance has delivered since it
//!   started listening to a channel. A channel is *synced* once the broker has told the
//!   hub where the channel stands ([`Fill`]) or its first message arrived; until then
//!   [`Hub::subscribe`] answers [`Unsynced`] and the broker reads history from Redis.
//!   Messages numbered elsewhere are delivered with [`Seq::Given`]: duplicates are
//!   dropped and a gap is reported ([`Delivery::Gap`]) for the broker to back-fill.
//!
//! Invariants:
//! - Publishing never waits on a subscriber; a full outbox evicts that connection only.
//! - Fan-out happens under the channel's shard lock, after the id is known (assigned
//!   under the same lock in memory mode, checked against the channel's last id in cache
//!   mode), so every subscriber sees a channel's messages in id order, each once.
//! - Subscribing reads history and registers the outbox under one lock, so a resumed or
//!   live subscriber never misses or duplicates a message published meanwhile.
//! - Locks are std mutexes guarding map updates only; never held across `.await`.

mod channel;
pub mod cursor;
pub mod message;
pub mod outbox;
pub mod presence;

use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

pub use channel::Retention;
use channel::{Channel, Fanout, Totals};
use cursor::{Epoch, MessageId};
pub use message::{ConnId, ConnRef, Data, Message};
pub use outbox::{Inbox, Outbox, outbox, outbox_with};
pub use presence::Member;

use crate::names::ChannelName;

/// Shards of the channel map: enough that two cores rarely contend.
const SHARDS: usize = 64;

/// Where a subscription starts, once the broker has checked the cursor's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Only messages published from now on.
    Live,
    /// Everything after this seq that history still holds.
    After(u64),
    /// A cursor that cannot be resumed (another epoch, garbage, from the future).
    Lost,
}

/// How the message being delivered gets its id.
pub enum Seq<'a> {
    /// Ephemeral: no id.
    None,
    /// The next value of this counter, taken under the channel lock (memory broker).
    Next { epoch: u32, counter: &'a AtomicU64 },
    /// Numbered elsewhere (redis broker); `prev` is the channel's id before it, `0` when
    /// the channel's counter started afresh.
    Given { id: MessageId, prev: u64 },
}

/// What [`Hub::deliver`] did.
#[derive(Debug)]
pub enum Delivery {
    Delivered(Arc<Message>),
    /// Already delivered (an id at or below the channel's last): dropped.
    Duplicate,
    /// Cache mode: no state for the channel here (nobody listens); dropped.
    Ignored,
    /// Cache mode: messages between the channel's last id and this one are missing;
    /// nothing was delivered. The broker back-fills from `last` and delivers again.
    Gap {
        last: u64,
    },
}

/// History the broker read from its own store for a channel (cache mode).
#[derive(Debug)]
pub struct Fill {
    /// The channel's last id when the history was read (`0`: no message known).
    pub head: u64,
    /// The messages after the requested cursor, up to `head`, in order.
    pub after: Vec<Arc<Message>>,
    /// Whether `after` is everything after the cursor (nothing trimmed or expired).
    pub complete: bool,
}

/// [`Hub::subscribe`] in cache mode without a [`Fill`], on a channel whose ring cannot
/// answer: the broker must read history first. Nothing was registered.
#[derive(Debug)]
pub struct Unsynced;

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
    /// Bytes held in history (see `channel::weight`).
    pub history_bytes: Gauge,
    /// Messages dropped from history by `limits.history_bytes` (oldest first).
    pub history_evicted: Counter,
    /// Idle channels forgotten by `limits.channels` (least recently active first).
    pub channels_evicted: Counter,
    /// Replays refused by `limits.replay_bytes` (the client was told to reset).
    pub replays_cut: Counter,
}

/// The hub's memory bounds (SPEC §9), changeable on reload.
#[derive(Debug)]
pub struct HubLimits {
    pub history_bytes: AtomicUsize,
    pub channels: AtomicUsize,
    pub replay_bytes: AtomicUsize,
}

impl HubLimits {
    pub fn new(history_bytes: usize, channels: usize, replay_bytes: usize) -> Self {
        Self {
            history_bytes: AtomicUsize::new(history_bytes),
            channels: AtomicUsize::new(channels),
            replay_bytes: AtomicUsize::new(replay_bytes),
        }
    }
}

impl Default for HubLimits {
    fn default() -> Self {
        Self::new(usize::MAX, usize::MAX, usize::MAX)
    }
}

struct Inner {
    /// Names this process's connections (unique across instances and restarts).
    instance: Epoch,
    /// Cache mode: where channels whose local presence changed are sent (the broker
    /// decides `join`/`leave` cluster-wide from them).
    changes: Option<mpsc::Sender<ChannelName>>,
    /// A change could not be queued: the broker re-reads every channel's presence.
    changes_lost: AtomicBool,
    /// Memory mode: the rings are the history.
    authoritative: bool,
    next_conn: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Mutex<Shard>]>,
    stats: HubStats,
    totals: Arc<Totals>,
    limits: HubLimits,
}

/// Cheap-clone handle to this instance's channels.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

impl Hub {
    /// A hub whose rings are the history (memory broker).
    pub fn new(stats: HubStats) -> Self {
        Self::with_mode(stats, None)
    }

    /// A hub whose rings cache a history kept elsewhere (redis broker); channels whose
    /// local presence changes are sent to `changes`.
    pub fn cache(stats: HubStats, changes: mpsc::Sender<ChannelName>) -> Self {
        Self::with_mode(stats, Some(changes))
    }

    fn with_mode(stats: HubStats, changes: Option<mpsc::Sender<ChannelName>>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self(Arc::new(Inner {
            instance: Epoch::fresh(),
            authoritative: changes.is_none(),
            changes,
            changes_lost: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            hasher: Default::default(),
            shards,
            stats,
            totals: Arc::default(),
            limits: HubLimits::default(),
        }))
    }

    /// Applies `limits.history_bytes`, `limits.channels` and `limits.replay_bytes`.
    pub fn set_limits(&self, history_bytes: usize, channels: usize, replay_bytes: usize) {
        let l = &self.0.limits;
        l.history_bytes.store(history_bytes, Ordering::Relaxed);
        l.channels.store(channels, Ordering::Relaxed);
        l.replay_bytes.store(replay_bytes, Ordering::Relaxed);
    }

    /// Bytes of history held now.
    pub fn history_bytes(&self) -> usize {
        self.0.totals.history_bytes.load(Ordering::Relaxed)
    }

    /// Channel states held now.
    pub fn channel_count(&self) -> usize {
        self.0.totals.channels.load(Ordering::Relaxed)
    }

    /// Makes room for the channels of `names` this hub has no state for yet, forgetting
    /// the least recently active idle channels (no subscriber here) when `limits.channels`
    /// would be exceeded. `false`: no room (every channel has subscribers).
    pub fn make_room(&self, names: &[&ChannelName]) -> bool {
        let cap = self.0.limits.channels.load(Ordering::Relaxed);
        let count = self.channel_count();
        if count.saturating_add(names.len()) <= cap {
            return true;
        }
        let new = names.iter().filter(|n| !self.shard(n).channels.contains_key(**n)).count();
        if count + new <= cap {
            return true;
        }
        // Down to 90 % at once, so a stream of new channels does not scan every time.
        let target = (cap - cap / 10).saturating_sub(new);
        self.forget_idle(target);
        self.channel_count() + new <= cap
    }

    /// Forgets idle channels, least recently active first, until at most `target` remain.
    fn forget_idle(&self, target: usize) {
        let mut idle: Vec<(Option<Instant>, usize, ChannelName)> = Vec::new();
        for (i, shard) in self.0.shards.iter().enumerate() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            idle.extend(
                shard.channels.iter().filter(|(_, c)| c.subscribers() == 0).map(|(n, c)| (c.newest(), i, n.clone())),
            );
        }
        idle.sort_by_key(|(at, _, _)| *at);
        for (_, i, name) in idle {
            if self.channel_count() <= target {
                break;
            }
            let mut shard = self.0.shards[i].lock().unwrap_or_else(PoisonError::into_inner);
            if shard.channels.get(&name).is_some_and(|c| c.subscribers() == 0)
                && let Some(state) = shard.channels.remove(&name)
            {
                if self.0.authoritative {
                    shard.remember(name, state.floor());
                }
                drop(shard);
                self.0.stats.history.dec_by(state.history_len() as i64);
                self.0.stats.channels_evicted.inc();
            }
        }
    }

    /// Drops the oldest history hub-wide (across channels) while `limits.history_bytes`
    /// is exceeded, down to 90 % of it. Runs after a publish, outside every lock but one
    /// shard at a time.
    fn bound_history(&self) {
        let cap = self.0.limits.history_bytes.load(Ordering::Relaxed);
        if self.history_bytes() <= cap {
            return;
        }
        let target = cap - cap / 10;
        let mut heap = BinaryHeap::new();
        for (i, shard) in self.0.shards.iter().enumerate() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, c) in &shard.channels {
                if let Some(at) = c.oldest() {
                    heap.push(std::cmp::Reverse((at, i, name.clone())));
                }
            }
        }
        while self.history_bytes() > target {
            let Some(std::cmp::Reverse((_, i, name))) = heap.pop() else { break };
            let mut shard = self.0.shards[i].lock().unwrap_or_else(PoisonError::into_inner);
            let Some(c) = shard.channels.get_mut(&name) else { continue };
            if c.evict_oldest() {
                self.0.stats.history.dec();
                self.0.stats.history_evicted.inc();
            }
            if let Some(at) = c.oldest() {
                heap.push(std::cmp::Reverse((at, i, name)));
            }
        }
        self.0.stats.history_bytes.set(self.history_bytes() as i64);
    }

    pub fn stats(&self) -> &HubStats {
        &self.0.stats
    }

    /// `limits.replay_bytes`: what one request may replay across all its channels.
    pub fn replay_limit(&self) -> usize {
        self.0.limits.replay_bytes.load(Ordering::Relaxed)
    }

    /// Charges `sub`'s replay to a request's remaining `budget` (SPEC §9: at most
    /// `limits.replay_bytes` per request). A replay that does not fit is dropped whole
    /// and the channel reported as not recovered, so the client resets it.
    pub fn charge_replay(&self, sub: &mut Subscribed, budget: &mut usize) {
        let weight: usize = sub.replay.iter().map(|m| channel::weight(m)).sum();
        if weight > *budget {
            self.0.stats.replays_cut.inc();
            sub.recovered = false;
            sub.replay = Vec::new();
        } else {
            *budget -= weight;
        }
    }

    /// This process's name among instances (the prefix of its connection names).
    pub fn instance(&self) -> String {
        self.0.instance.to_string()
    }

    /// Cache mode: tells the broker `channel`'s local presence changed. Never waits.
    fn changed(&self, channel: &ChannelName) {
        if let Some(tx) = &self.0.changes
            && tx.try_send(channel.clone()).is_err()
        {
            self.0.changes_lost.store(true, Ordering::Release);
        }
    }

    /// Cache mode: whether a presence change was lost (the queue was full) since the
    /// last call; the broker then re-reads every channel.
    pub fn take_changes_lost(&self) -> bool {
        self.0.changes_lost.swap(false, Ordering::AcqRel)
    }

    /// Cache mode: delivers a `join`/`leave` the broker decided, to this channel's
    /// subscribers here (no id, no history).
    pub fn announce(&self, msg: Arc<Message>) {
        let mut shard = self.shard(&msg.channel);
        let Some(state) = shard.channels.get_mut(&msg.channel) else { return };
        let fanout = state.fan_out(&msg);
        let dirty = state.take_dirty();
        drop(shard);
        if dirty {
            self.changed(&msg.channel);
        }
        self.count_fanout(fanout);
    }

    /// A new connection id, unique in this instance.
    pub fn next_conn(&self) -> ConnId {
        self.0.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A connection of this instance as the cluster knows it.
    pub fn conn_ref(&self, conn: ConnId) -> ConnRef {
        ConnRef { instance: self.0.instance, conn }
    }

    /// The textual connection id shown to clients and accepted by `exclude_connection`:
    /// `<instance>-<n>`, unique across instances.
    pub fn conn_name(&self, conn: ConnId) -> String {
        self.conn_ref(conn).to_string()
    }

    /// The instance name messages are numbered against (see [`Message::from_draft`]).
    pub fn me(&self) -> Epoch {
        self.0.instance
    }

    fn shard(&self, name: &ChannelName) -> MutexGuard<'_, Shard> {
        let i = (self.0.hasher.hash_one(name) as usize) % SHARDS;
        // A panic while holding the lock leaves only counters half-updated; keep serving.
        self.0.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers one message on its channel: numbers it (see [`Seq`]), stores it in
    /// history (unless ephemeral) and offers it to every subscriber. Never waits.
    /// `retention` is the channel's policy as the publisher saw it (`None`: keep the one
    /// the channel has, for messages from other instances).
    pub fn deliver(&self, draft: Draft, retention: Option<Retention>, seq: Seq<'_>) -> Delivery {
        let mut shard = self.shard(&draft.channel);
        let channel = match (self.0.authoritative, retention) {
            (true, Some(r)) => shard.entry(&draft.channel, r, &self.0.totals, true),
            _ => match shard.channels.get_mut(&draft.channel) {
                Some(c) => {
                    if let Some(r) = retention {
                        c.set_retention(r);
                    }
                    c
                }
                None => return Delivery::Ignored,
            },
        };
        let id = match seq {
            Seq::None => None,
            Seq::Next { epoch, counter } => Some(MessageId { epoch, seq: counter.fetch_add(1, Ordering::AcqRel) + 1 }),
            Seq::Given { id, prev } => match channel.admit(id.seq, prev) {
                channel::Admit::Next => Some(id),
                channel::Admit::Duplicate => return Delivery::Duplicate,
                channel::Admit::Gap(last) => return Delivery::Gap { last },
            },
        };
        let msg = Arc::new(Message::from_draft(draft, id, self.0.instance));
        let (fanout, history_delta) = channel.deliver(&msg);
        let dirty = channel.take_dirty();
        if self.0.authoritative {
            shard.drop_if_idle(&msg.channel);
        }
        drop(shard);
        if dirty {
            self.changed(&msg.channel);
        }
        self.count(fanout, history_delta);
        if history_delta > 0 {
            self.bound_history();
        }
        Delivery::Delivered(msg)
    }

    fn count(&self, fanout: Fanout, history_delta: i64) {
        let s = &self.0.stats;
        s.published.inc();
        self.count_fanout(fanout);
        if history_delta != 0 {
            s.history.inc_by(history_delta);
            s.history_bytes.set(self.history_bytes() as i64);
        }
    }

    fn count_fanout(&self, fanout: Fanout) {
        let s = &self.0.stats;
        s.delivered.inc_by(fanout.delivered);
        s.evicted_slow.inc_by(fanout.evicted);
        // The session's own unsubscribe will not find these any more, so count them here.
        s.subscriptions.dec_by(fanout.removed as i64);
    }

    /// Cache mode: makes sure `channel` has a state here, so messages arriving from now
    /// on are kept (they sync it) while the broker reads its history.
    pub fn prepare(&self, channel: &ChannelName, retention: Retention) {
        let mut shard = self.shard(channel);
        shard.entry(channel, retention, &self.0.totals, self.0.authoritative);
    }

    /// Subscribes `outbox` to `channel`, replaying what history holds after `since`.
    /// In cache mode without `fill`, answers from the ring only when the channel is
    /// synced and its ring covers `since`; otherwise [`Unsynced`].
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        outbox: &Outbox,
        since: Since,
        retention: Retention,
        fill: Option<Fill>,
    ) -> Result<Subscribed, Unsynced> {
        let mut shard = self.shard(channel);
        let now = Instant::now();
        if !self.0.authoritative
            && fill.is_none()
            && !shard.channels.get_mut(channel).is_some_and(|c| c.answers(since, now))
        {
            return Err(Unsynced);
        }
        let state = shard.entry(channel, retention, &self.0.totals, self.0.authoritative);
        if state.has(outbox.conn) {
            // Subscribing again changes nothing and replays nothing (SPEC §4).
            return Ok(Subscribed { recovered: true, replay: Vec::new(), position: state.last(), added: false });
        }
        let before = state.history_len();
        let (recovered, replay) = match fill {
            None => match since {
                Since::Live => (true, Vec::new()),
                Since::Lost => (false, Vec::new()),
                Since::After(seq) => state.after(seq, now).map_or((false, Vec::new()), |r| (true, r)),
            },
            Some(fill) => state.fill(since, fill, now),
        };
        // A replay larger than `limits.replay_bytes` is refused whole: the client is told
        // to reset and refetch, and no request can pin more than that much at once.
        let cap = self.0.limits.replay_bytes.load(Ordering::Relaxed);
        let (recovered, replay) = if replay.iter().map(|m| channel::weight(m)).sum::<usize>() > cap {
            self.0.stats.replays_cut.inc();
            (false, Vec::new())
        } else {
            (recovered, replay)
        };
        let position = match (since, recovered) {
            (Since::After(seq), true) => replay.last().and_then(|m| m.id).map_or(seq, |id| id.seq),
            _ => state.last(),
        };
        let expired = before.saturating_sub(state.history_len());
        let joined = state.add(channel, outbox, position);
        let added = joined.is_some();
        let mut fanout = Fanout::default();
        if let Some(Some(join)) = &joined {
            fanout = state.fan_out(join);
        }
        let dirty = state.take_dirty();
        drop(shard);
        if dirty {
            self.changed(channel);
        }
        if expired > 0 {
            self.0.stats.history.dec_by(expired as i64);
        }
        if added {
            self.0.stats.subscriptions.inc();
        }
        self.count_fanout(fanout);
        Ok(Subscribed { recovered, replay, position, added })
    }

    /// Removes `conn` from `channel` (announcing `leave` if it was its user's last
    /// connection there); drops the channel state when nothing is left (memory mode).
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
        let dirty = state.take_dirty();
        if self.0.authoritative {
            shard.drop_if_idle(channel);
        }
        drop(shard);
        if dirty {
            self.changed(channel);
        }
        if removed.is_some() {
            self.0.stats.subscriptions.dec();
        }
        self.count_fanout(fanout);
        removed.is_some()
    }

    /// Cache mode: forgets `channel` if nobody here subscribes to it any more (the broker
    /// then stops listening to it). `false` when it still has subscribers.
    pub fn forget(&self, channel: &ChannelName) -> bool {
        let mut shard = self.shard(channel);
        if shard.channels.get(channel).is_some_and(|c| c.subscribers() > 0) {
            return false;
        }
        if let Some(state) = shard.channels.remove(channel) {
            drop(shard);
            self.0.stats.history.dec_by(state.history_len() as i64);
        }
        true
    }

    /// Cache mode: the history of `channel` cannot be completed (trimmed before the
    /// back-fill, or the store lost it). Its subscribers are evicted (they resume from
    /// their cursors and are told what was lost) and the channel becomes unsynced.
    pub fn lose(&self, channel: &ChannelName) {
        let mut shard = self.shard(channel);
        let Some(state) = shard.channels.remove(channel) else { return };
        drop(shard);
        self.0.stats.history.dec_by(state.history_len() as i64);
        let present = state.presence().is_some_and(|p| !p.list().is_empty());
        let n = state.evict_all();
        self.0.stats.subscriptions.dec_by(n as i64);
        if present {
            self.changed(channel);
        }
    }

    /// Cache mode: every channel's history is gone (the store restarted empty): evicts
    /// every subscriber and forgets every channel.
    pub fn lose_all(&self) {
        for name in self.names() {
            self.lose(&name);
        }
    }

    /// Synced channels and the last id delivered on each (cache mode back-fills).
    pub fn positions(&self) -> Vec<(ChannelName, u64, Retention)> {
        let mut out = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(
                shard.channels.iter().filter_map(|(n, c)| c.synced().map(|last| (n.clone(), last, c.retention()))),
            );
        }
        out
    }

    /// Cache mode: where a synced channel stands (its last id) and its retention.
    pub fn position(&self, channel: &ChannelName) -> Option<(u64, Retention)> {
        let shard = self.shard(channel);
        shard.channels.get(channel).and_then(|c| c.synced().map(|last| (last, c.retention())))
    }

    /// Every channel with a state here.
    pub fn names(&self) -> Vec<ChannelName> {
        let mut out = Vec::new();
        for shard in self.0.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(shard.channels.keys().cloned());
        }
        out
    }

    /// Present users of `channel`: `None` when presence is not enabled there (or nobody
    /// ever subscribed on this instance).
    pub fn presence(&self, channel: &ChannelName) -> Option<Vec<presence::PresentUser>> {
        let shard = self.shard(channel);
        shard.channels.get(channel).and_then(|c| c.presence()).map(|p| p.list())
    }

    /// Expires old history everywhere and forgets idle channels (memory mode). Called
    /// periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut expired = 0usize;
        for shard in self.0.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            expired += shard.sweep(now, self.0.authoritative);
        }
        if expired > 0 {
            self.0.stats.history.dec_by(expired as i64);
        }
    }

    /// Applies reloaded channel policies to every channel state held: `policy` gives a
    /// channel's retention now (`None`: no policy matches; left as it is).
    pub fn reconfigure(&self, policy: impl Fn(&ChannelName) -> Option<Retention>) {
        for shard in self.0.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, channel) in shard.channels.iter_mut() {
                if let Some(r) = policy(name) {
                    channel.set_retention(r);
                }
            }
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
    /// In cache mode (`authoritative` false) a new state is unsynced.
    fn entry(
        &mut self,
        name: &ChannelName,
        retention: Retention,
        totals: &Arc<Totals>,
        authoritative: bool,
    ) -> &mut Channel {
        if !self.channels.contains_key(name) {
            let state = if authoritative {
                Channel::new(self.dropped.remove(name).unwrap_or(self.forgotten), retention, totals)
            } else {
                Channel::unsynced(retention, totals)
            };
            self.channels.insert(name.clone(), state);
        }
        let channel = self.channels.entry(name.clone()).or_insert_with(|| Channel::unsynced(retention, totals));
        channel.set_retention(retention);
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
    fn sweep(&mut self, now: Instant, authoritative: bool) -> usize {
        let mut expired = 0;
        let mut idle = Vec::new();
        for (name, ch) in &mut self.channels {
            expired += ch.expire(now);
            if authoritative && ch.is_idle() {
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
    /// Shared with the other channels of the same publish.
    pub data: Data,
    pub ephemeral: bool,
    /// Not delivered to this connection (of whichever instance holds it).
    pub exclude: Option<ConnRef>,
    /// Who published it, for client publishes (`Some(None)`: an anonymous client); `None`
    /// for backend publishes (SPEC §3).
    pub sender: Option<Option<Arc<str>>>,
    /// The client connection that published it (for `echo: false` subscriptions).
    pub from: Option<ConnRef>,
}

#[cfg(test)]
mod tests;
