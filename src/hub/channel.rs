//! One channel on this instance: its subscribers and its history ring.
//!
//! Every method runs under the hub shard lock: no `.await`, no encoding, no IO.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::message::{ConnId, Message};
use super::outbox::{Offer, Outbox};

/// History limits of a channel, from its policy.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub size: usize,
    pub ttl: Duration,
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

#[derive(Debug)]
pub struct Channel {
    subscribers: Vec<Outbox>,
    history: VecDeque<Arc<Message>>,
    /// Every message of this channel with `seq <= floor` may be missing from history
    /// (trimmed, expired, or published before this state existed).
    floor: u64,
    /// Limits from the channel's policy, refreshed on every publish and subscribe.
    pub retention: Retention,
}

impl Channel {
    /// A channel state created when the global sequence is at `head`.
    pub fn new(head: u64, retention: Retention) -> Self {
        Self {
            subscribers: Vec::new(),
            history: VecDeque::new(),
            floor: head,
            retention,
        }
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

    /// Adds (or replaces) a subscriber.
    pub fn add(&mut self, outbox: &Outbox) -> bool {
        if self.subscribers.iter().any(|o| o.conn == outbox.conn) {
            return false;
        }
        self.subscribers.push(outbox.clone());
        true
    }

    pub fn remove(&mut self, conn: ConnId) -> bool {
        match self.subscribers.iter().position(|o| o.conn == conn) {
            Some(i) => {
                self.subscribers.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Messages after `seq`, if history covers everything after it; `None` = gap.
    pub fn after(&mut self, seq: u64, now: Instant) -> Option<Vec<Arc<Message>>> {
        self.expire(now);
        if seq < self.floor {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|m| m.id.is_some_and(|id| id.seq > seq))
                .cloned()
                .collect(),
        )
    }

    /// Appends to history (unless ephemeral) and offers to every subscriber.
    /// Returns how many history entries were dropped along with the fan-out counts.
    pub fn deliver(&mut self, msg: &Arc<Message>) -> (Fanout, i64) {
        let retention = self.retention;
        let mut history_delta = 0i64;
        if let Some(id) = msg.id {
            debug_assert!(
                self.history
                    .back()
                    .and_then(|m| m.id)
                    .is_none_or(|last| last < id)
            );
            if retention.size == 0 {
                self.floor = id.seq;
            } else {
                history_delta -= self.expire(msg.at) as i64;
                if self.history.len() >= retention.size
                    && let Some(old) = self.history.pop_front()
                {
                    self.floor = old.id.map_or(self.floor, |i| i.seq);
                    history_delta -= 1;
                }
                self.history.push_back(Arc::clone(msg));
                history_delta += 1;
            }
        }
        let mut out = Fanout::default();
        self.subscribers.retain(|o| match o.offer(msg) {
            Offer::Queued => {
                out.delivered += 1;
                true
            }
            Offer::Skipped => true,
            Offer::Evicted => {
                out.evicted += 1;
                out.removed += 1;
                false
            }
            Offer::Closed => {
                out.removed += 1;
                false
            }
        });
        (out, history_delta)
    }

    /// Drops messages older than the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let retention = self.retention;
        let mut n = 0;
        while let Some(front) = self.history.front() {
            if now.saturating_duration_since(front.at) < retention.ttl
                && self.history.len() <= retention.size
            {
                break;
            }
            self.floor = front.id.map_or(self.floor, |i| i.seq);
            self.history.pop_front();
            n += 1;
        }
        n
    }
}
