//! The memory broker: one instance, history in the hub's rings.
//!
//! Ids are `<epoch>.<seq>` with one counter per process shared by every channel, taken
//! under the channel's hub lock (so a channel's ids rise in fan-out order and a dropped
//! idle channel never reuses one). A restart is a new epoch: old cursors get a reset.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{BrokerError, Ids, Outgoing, Resume};
use crate::hub::cursor::Epoch;
use crate::hub::{Delivery, Hub, Outbox, Retention, Seq, Subscribed};
use crate::names::ChannelName;

/// How long an idempotency key is remembered (SPEC §7).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);
/// Most idempotency keys remembered; the oldest are forgotten first beyond this.
const IDEMPOTENCY_MAX: usize = 100_000;

pub struct Memory {
    hub: Hub,
    epoch: Epoch,
    /// The last seq handed out in this epoch.
    seq: AtomicU64,
    idempotency: Mutex<Remembered>,
}

/// Answers to idempotent publishes: hashed key → (fingerprint, ids).
#[derive(Default)]
struct Remembered {
    ids: HashMap<String, (String, Ids)>,
    order: VecDeque<(Instant, String)>,
}

impl Remembered {
    /// Forgets keys older than the window (never younger ones: at the cap, publishes
    /// with new keys are refused instead, so a retry within 5 minutes is never delivered
    /// twice).
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < IDEMPOTENCY_TTL {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.ids.remove(&key);
            }
        }
    }
}

impl Memory {
    pub fn new(hub: Hub) -> Self {
        Self::with_epoch(hub, Epoch::fresh())
    }

    pub fn with_epoch(hub: Hub, epoch: Epoch) -> Self {
        Self { hub, epoch, seq: AtomicU64::new(0), idempotency: Mutex::default() }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Never waits: delivery is synchronous, and everything was checked before.
    pub fn publish(&self, items: Vec<Outgoing>) -> Result<Vec<Ids>, BrokerError> {
        // Check every key first, so a conflict publishes nothing of the batch.
        let mut remembered = self.idempotency.lock().unwrap_or_else(PoisonError::into_inner);
        remembered.expire(Instant::now());
        for item in &items {
            if let Some(idem) = &item.idempotency
                && let Some((fingerprint, _)) = remembered.ids.get(&idem.key)
                && *fingerprint != idem.fingerprint
            {
                return Err(BrokerError::Conflict(idem.shown.clone()));
            }
        }
        let fresh =
            items.iter().filter(|i| i.idempotency.as_ref().is_some_and(|k| !remembered.ids.contains_key(&k.key)));
        if remembered.order.len() + fresh.count() > IDEMPOTENCY_MAX {
            return Err(BrokerError::Saturated(format!(
                "{IDEMPOTENCY_MAX} idempotency keys were used in the last 5 minutes; retry later"
            )));
        }
        let names: Vec<&ChannelName> = items.iter().flat_map(|i| i.drafts.iter().map(|(d, _)| &d.channel)).collect();
        if !self.hub.make_room(&names) {
            return Err(BrokerError::no_room());
        }
        // Held through the (synchronous, non-blocking) deliveries below so two concurrent
        // retries of one key cannot both deliver.
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(idem) = &item.idempotency
                && let Some((_, ids)) = remembered.ids.get(&idem.key)
            {
                out.push(ids.clone());
                continue;
            }
            let ids: Ids = item.drafts.into_iter().map(|(draft, retention)| self.deliver(draft, retention)).collect();
            if let Some(idem) = item.idempotency {
                remembered.ids.insert(idem.key.clone(), (idem.fingerprint, ids.clone()));
                remembered.order.push_back((Instant::now(), idem.key));
            }
            out.push(ids);
        }
        Ok(out)
    }

    fn deliver(&self, draft: crate::hub::Draft, retention: Retention) -> Option<crate::hub::cursor::MessageId> {
        let seq = if draft.ephemeral { Seq::None } else { Seq::Next { epoch: self.epoch.0, counter: &self.seq } };
        match self.hub.deliver(draft, Some(retention), seq) {
            Delivery::Delivered(msg) => msg.id,
            // Authoritative hubs deliver every message.
            Delivery::Duplicate | Delivery::Ignored | Delivery::Gap { .. } => None,
        }
    }

    pub fn subscribe(
        &self,
        channel: &ChannelName,
        outbox: &Outbox,
        resume: Resume,
        retention: Retention,
    ) -> Result<Subscribed, BrokerError> {
        if !self.hub.make_room(&[channel]) {
            return Err(BrokerError::no_room());
        }
        // A cursor from the future was not handed out by this process.
        let since = resume.since(self.epoch, |seq| seq <= self.seq.load(Ordering::Acquire));
        match self.hub.subscribe(channel, outbox, since, retention, None) {
            Ok(sub) => Ok(sub),
            // An authoritative hub always answers; keep the type honest anyway.
            Err(_) => Ok(Subscribed { recovered: false, replay: Vec::new(), position: 0, added: false }),
        }
    }
}
