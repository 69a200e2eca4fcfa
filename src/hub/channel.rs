//! One channel on this instance: its subscribers and its history ring.
//!
//! Every method runs under the hub shard lock: no `.await`, no encoding, no IO.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::message::{ConnId, Message};
use super::outbox::{Offer, Outbox};
use super::presence::Presence;
use crate::names::ChannelName;

/// What the hub needs of a channel's policy: history limits and presence.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub size: usize,
    pub ttl: Duration,
    pub presence: bool,
}

/// Outcome of fanning one message out.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fanout {
    pub delivered: u64,
    /// Connections this message evicted (slow consumers).
    pub evicted: u64,
    /// Subscribers dropped from this channel: the evicted ones plus sessions already
    /// gone or evicted earlier. Every one is a subscription that no longer exists.
    pub removed: u64,
}

/// What [`Channel::admit`] decided about a message numbered elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The channel's next message: deliver it.
    Next,
    /// At or below the last id delivered: drop it.
    Duplicate,
    /// Messages after this last id are missing.
    Gap(u64),
}

/// A subscriber and the position it joined at: messages at or below it were replayed
/// to it already (or precede its cursor), so fan-out skips them.
#[derive(Debug)]
struct Sub {
    outbox: Outbox,
    after: u64,
}

#[derive(Debug)]
pub struct Channel {
    subscribers: Vec<Sub>,
    history: VecDeque<Arc<Message>>,
    /// Every message of this channel with `seq <= floor` may be missing from history
    /// (trimmed, expired, or published before this state existed).
    floor: u64,
    /// The highest id delivered here (or `floor` before any).
    last: u64,
    /// Cache mode: whether `last` is known (see the hub's module docs).
    synced: bool,
    /// Limits from the channel's policy, refreshed on every publish and subscribe and at
    /// reload (see [`Channel::set_retention`]).
    retention: Retention,
    /// Present users, when the policy enables presence.
    presence: Option<Presence>,
    /// `leave`s caused by evictions during a fan-out, announced right after it.
    pending_leaves: Vec<Arc<Message>>,
    /// Whether this hub announces `join`/`leave` itself (memory mode). In cache mode the
    /// broker decides them cluster-wide: a change of local presence only sets `dirty`.
    announce: bool,
    /// Cache mode: local presence changed since the broker last read it.
    dirty: bool,
    /// Bytes held in `history` (see [`weight`]).
    bytes: usize,
    /// The hub-wide totals this channel counts into (history bytes, channel states).
    totals: Arc<Totals>,
}

/// Hub-wide totals, kept by each channel state as it changes and when it is dropped, so
/// no removal path can forget to count.
#[derive(Debug, Default)]
pub struct Totals {
    pub history_bytes: AtomicUsize,
    pub channels: AtomicUsize,
}

/// What a message costs in history: its data and event name plus a fixed overhead for
/// the message itself and its ring slot.
pub fn weight(msg: &Message) -> usize {
    msg.data.get().len() + msg.event.as_ref().map_or(0, |e| e.len()) + msg.channel.as_str().len() + 160
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.totals.history_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        self.totals.channels.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Channel {
    /// A channel state whose history is complete after `floor`.
    pub fn new(floor: u64, retention: Retention, totals: &Arc<Totals>) -> Self {
        totals.channels.fetch_add(1, Ordering::Relaxed);
        Self {
            subscribers: Vec::new(),
            history: VecDeque::new(),
            floor,
            last: floor,
            synced: true,
            retention,
            presence: retention.presence.then(Presence::default),
            pending_leaves: Vec::new(),
            announce: true,
            dirty: false,
            bytes: 0,
            totals: Arc::clone(totals),
        }
    }

    /// A cache-mode channel state whose position is not known yet.
    pub fn unsynced(retention: Retention, totals: &Arc<Totals>) -> Self {
        let mut c = Self::new(0, retention, totals);
        c.synced = false;
        c.announce = false;
        c
    }

    /// When the newest message in history was published (the channel's last activity).
    pub fn newest(&self) -> Option<Instant> {
        self.history.back().map(|m| m.at)
    }

    /// When the oldest message in history was published.
    pub fn oldest(&self) -> Option<Instant> {
        self.history.front().map(|m| m.at)
    }

    /// Drops the oldest message of history (the hub-wide byte cap); `false` if empty.
    pub fn evict_oldest(&mut self) -> bool {
        self.pop_front().is_some()
    }

    fn pop_front(&mut self) -> Option<Arc<Message>> {
        let old = self.history.pop_front()?;
        self.floor = old.id.map_or(self.floor, |i| i.seq);
        let w = weight(&old);
        self.bytes -= w;
        self.totals.history_bytes.fetch_sub(w, Ordering::Relaxed);
        Some(old)
    }

    fn push_back(&mut self, msg: &Arc<Message>) {
        let w = weight(msg);
        self.bytes += w;
        self.totals.history_bytes.fetch_add(w, Ordering::Relaxed);
        self.history.push_back(Arc::clone(msg));
    }

    /// Messages with `seq <= floor` may be missing from history.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The highest id delivered here.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// `Some(last)` once synced.
    pub fn synced(&self) -> Option<u64> {
        self.synced.then_some(self.last)
    }

    /// Whether a message numbered elsewhere (`seq`, after `prev`) is this channel's next.
    /// The first message of an unsynced channel syncs it: history is complete after `prev`.
    pub fn admit(&mut self, seq: u64, prev: u64) -> Admit {
        if !self.synced {
            self.synced = true;
            self.floor = prev;
            self.last = prev;
            return Admit::Next;
        }
        if seq <= self.last {
            Admit::Duplicate
        } else if prev == self.last || prev == 0 {
            // `prev == 0`: the channel's counter started afresh (its keys had expired):
            // nothing of the old numbering is left to miss.
            Admit::Next
        } else {
            Admit::Gap(self.last)
        }
    }

    /// Whether the ring alone can answer a subscribe from `since` (cache mode).
    pub fn answers(&mut self, since: super::Since, now: Instant) -> bool {
        if !self.synced {
            return false;
        }
        self.expire(now);
        match since {
            super::Since::After(seq) => seq >= self.floor && seq <= self.last,
            super::Since::Live | super::Since::Lost => true,
        }
    }

    /// Replay for a subscribe from `since` given history read from the broker's store
    /// (cache mode); syncs the channel at `fill.head` if it was not. Messages the
    /// store returned beyond what this instance delivered are left to the live path.
    pub fn fill(&mut self, since: super::Since, fill: super::Fill, now: Instant) -> (bool, Vec<Arc<Message>>) {
        if !self.synced {
            self.synced = true;
            self.last = fill.head;
            self.floor = fill.head;
        }
        let seq = match since {
            super::Since::Live => return (true, Vec::new()),
            super::Since::Lost => return (false, Vec::new()),
            super::Since::After(seq) if seq > fill.head || !fill.complete => return (false, Vec::new()),
            super::Since::After(seq) => seq,
        };
        let cut = fill.head.min(self.last);
        let mut out: Vec<Arc<Message>> =
            fill.after.into_iter().filter(|m| m.id.is_some_and(|id| id.seq > seq && id.seq <= cut)).collect();
        match self.after(cut.max(seq), now) {
            Some(tail) => {
                out.extend(tail);
                (true, out)
            }
            None => (false, Vec::new()),
        }
    }

    /// Evicts every subscriber (their sessions resume elsewhere); returns how many.
    pub fn evict_all(self) -> usize {
        for s in &self.subscribers {
            s.outbox.evict();
        }
        self.subscribers.len()
    }

    pub fn presence(&self) -> Option<&Presence> {
        self.presence.as_ref()
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Applies the channel's policy as it is now (a reload may change it under open
    /// subscriptions): history limits take effect at the next trim; presence turned on
    /// counts the current subscribers (no `join`s announced for them), turned off
    /// forgets them.
    pub fn set_retention(&mut self, retention: Retention) {
        if retention.presence != self.presence.is_some() {
            self.presence = retention.presence.then(|| {
                let mut p = Presence::default();
                for member in self.subscribers.iter().filter_map(|s| s.outbox.member.as_deref()) {
                    p.join(member);
                }
                p
            });
            self.dirty = !self.announce;
        }
        self.retention = retention;
    }

    pub fn has(&self, conn: ConnId) -> bool {
        self.subscribers.iter().any(|s| s.outbox.conn == conn)
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    pub fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
    }

    /// Adds a subscriber; `None` when it already was one, else the `join` to announce
    /// (when this is the user's first connection on a presence channel).
    /// Messages at or below `after` are not offered to it.
    pub fn add(&mut self, name: &ChannelName, outbox: &Outbox, after: u64) -> Option<Option<Arc<Message>>> {
        if self.subscribers.iter().any(|s| s.outbox.conn == outbox.conn) {
            return None;
        }
        self.subscribers.push(Sub { outbox: outbox.clone(), after });
        let (Some(presence), Some(member)) = (&mut self.presence, &outbox.member) else {
            return Some(None);
        };
        let first = presence.join(member);
        if !self.announce {
            self.dirty |= first;
            return Some(None);
        }
        Some(first.then(|| Arc::new(Message::presence(name.clone(), true, &member.user, member.info.as_ref()))))
    }

    /// Cache mode: whether local presence changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Removes a subscriber; `None` when it was not one, else the `leave` to announce.
    pub fn remove(&mut self, name: &ChannelName, conn: ConnId) -> Option<Option<Arc<Message>>> {
        let i = self.subscribers.iter().position(|s| s.outbox.conn == conn)?;
        let sub = self.subscribers.swap_remove(i);
        Some(self.left(name, &sub.outbox))
    }

    fn left(&mut self, name: &ChannelName, outbox: &Outbox) -> Option<Arc<Message>> {
        let (Some(presence), Some(member)) = (&mut self.presence, &outbox.member) else {
            return None;
        };
        let last = presence.leave(&member.user);
        if !self.announce {
            self.dirty |= last;
            return None;
        }
        last.then(|| Arc::new(Message::presence(name.clone(), false, &member.user, None)))
    }

    /// Messages after `seq`, if history covers everything after it; `None` = gap.
    pub fn after(&mut self, seq: u64, now: Instant) -> Option<Vec<Arc<Message>>> {
        self.expire(now);
        if seq < self.floor {
            return None;
        }
        Some(self.history.iter().filter(|m| m.id.is_some_and(|id| id.seq > seq)).cloned().collect())
    }

    /// Appends to history (unless ephemeral) and offers to every subscriber.
    /// Returns how many history entries were dropped along with the fan-out counts.
    pub fn deliver(&mut self, msg: &Arc<Message>) -> (Fanout, i64) {
        let retention = self.retention;
        let mut history_delta = 0i64;
        if let Some(id) = msg.id {
            debug_assert!(self.history.back().and_then(|m| m.id).is_none_or(|last| last < id));
            self.last = self.last.max(id.seq);
            if retention.size == 0 {
                self.floor = id.seq;
            } else {
                history_delta -= self.expire(msg.at) as i64;
                if self.history.len() >= retention.size && self.pop_front().is_some() {
                    history_delta -= 1;
                }
                self.push_back(msg);
                history_delta += 1;
            }
        }
        (self.fan_out(msg), history_delta)
    }

    /// Offers `msg` to every subscriber, then announces the `leave` of users whose last
    /// connection was dropped on the way.
    pub fn fan_out(&mut self, msg: &Arc<Message>) -> Fanout {
        let mut out = self.offer_all(msg);
        while let Some(leave) = self.pending_leaves.pop() {
            let more = self.offer_all(&leave);
            out.delivered += more.delivered;
            out.evicted += more.evicted;
            out.removed += more.removed;
        }
        out
    }

    /// Offers `msg` to every subscriber, dropping the evicted and the gone.
    fn offer_all(&mut self, msg: &Arc<Message>) -> Fanout {
        let mut out = Fanout::default();
        let mut dropped = Vec::new();
        let seq = msg.id.map_or(0, |id| id.seq);
        let offer = |s: &Sub| if seq != 0 && seq <= s.after { Offer::Skipped } else { s.outbox.offer(msg) };
        self.subscribers.retain(|s| match offer(s) {
            Offer::Queued => {
                out.delivered += 1;
                true
            }
            Offer::Skipped => true,
            Offer::Evicted => {
                out.evicted += 1;
                out.removed += 1;
                dropped.push(s.outbox.clone());
                false
            }
            Offer::Closed => {
                out.removed += 1;
                dropped.push(s.outbox.clone());
                false
            }
        });
        for o in dropped {
            if let Some(leave) = self.left(&msg.channel, &o) {
                self.pending_leaves.push(leave);
            }
        }
        out
    }

    /// Drops messages older than the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let retention = self.retention;
        let mut n = 0;
        while let Some(front) = self.history.front() {
            if now.saturating_duration_since(front.at) < retention.ttl && self.history.len() <= retention.size {
                break;
            }
            self.pop_front();
            n += 1;
        }
        n
    }
}
