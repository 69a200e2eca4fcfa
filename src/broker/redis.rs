//! The redis broker (SPEC §10): many sidewire instances act as one through Redis.
//!
//! - Publishing runs one Lua script (see `script`) that numbers, stores and publishes
//!   every message of the request atomically, and checks idempotency keys first.
//! - Delivery: each instance listens on the pub/sub channel of every channel it has
//!   subscribers for, on a dedicated connection. Messages are handed to the hub as they
//!   arrive (in the connection's push callback, which never waits); the hub delivers a
//!   message only when its `prev` is the channel's last id, so each arrives once and in
//!   order. A gap (a lost pub/sub message, a dropped connection, an overflow of the
//!   receive queue) is back-filled from the channel's stream by the broker task; when the
//!   stream cannot fill it, the channel's subscribers are evicted and resume from their
//!   cursors, which tells them what was lost.
//! - Resume reads the stream when the hub's ring cannot answer.
//! - Redis down or hung: publish and subscribes that need Redis fail with
//!   [`BrokerError`] (503), `/readyz` says not ready, open connections stay up. When the
//!   pub/sub connection comes back, every channel is resubscribed and back-filled.
//! - Redis restarted empty: a new epoch appears; every subscriber is evicted and
//!   resumes into a `reset`.
//!
//! Locks: `listening` is a tokio mutex held across SUBSCRIBE/UNSUBSCRIBE, so a sweep
//! cannot unsubscribe a channel a subscriber is joining (the only await under a lock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::{AsyncCommands, PushInfo, PushKind, RedisError, Value};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::link::Link;
use super::script::{Keys, Scripts, Wire};
use super::{BrokerError, Ids, Outgoing, Resume};
use crate::config::RedisConfig;
use crate::hub::cursor::{Epoch, MessageId};
use crate::hub::presence::PresentUser;
use crate::hub::{ConnRef, Delivery, Draft, Fill, Hub, HubStats, Message, Outbox, Retention, Seq, Subscribed};
use crate::metrics::BrokerStats;
use crate::names::ChannelName;
use crate::shutdown::Shutdown;

/// Back-fill requests waiting for the broker task; beyond this, one full resync.
const EVENT_QUEUE: usize = 4096;
/// How often the task checks Redis (readiness) and forgets idle channels.
const TICK: Duration = Duration::from_secs(1);
/// Ticks between sweeps of channels nobody here listens to any more.
const SWEEP_TICKS: u32 = 5;
/// Shortest lifetime of a channel's keys (its counter must outlive quiet spells).
const MIN_KEY_TTL: Duration = Duration::from_secs(60);

/// What the push callback asks of the broker task.
#[derive(Debug)]
enum Event {
    /// Messages of this channel after its last delivered id are missing.
    Gap(ChannelName),
    /// The pub/sub connection dropped: resubscribe and back-fill everything.
    Disconnected,
}

/// What the push callback and the broker share.
struct Shared {
    hub: Hub,
    keys: Keys,
    /// The history epoch; 0 until Redis has been asked.
    epoch: AtomicU32,
    events: mpsc::Sender<Event>,
    /// An event could not be queued: the task resyncs every channel.
    overflow: AtomicBool,
    /// The pub/sub connection is down until resubscribed.
    pubsub_down: AtomicBool,
    stats: BrokerStats,
}

/// Cheap-clone handle.
#[derive(Clone)]
pub struct Redis(Arc<Inner>);

struct Inner {
    shared: Arc<Shared>,
    scripts: Scripts,
    cmd: Link,
    pubsub: Link,
    timeout: Duration,
    /// The last command round trip succeeded.
    up: AtomicBool,
    /// Channels whose pub/sub channel we are subscribed to, with how many subscribes are
    /// in progress on each.
    listening: tokio::sync::Mutex<HashMap<ChannelName, Arc<AtomicUsize>>>,
    /// The task's ends of `events` and of the hub's presence changes, taken once by
    /// [`Redis::run`].
    events: Mutex<Option<(mpsc::Receiver<Event>, mpsc::Receiver<ChannelName>)>>,
    heartbeat: Duration,
}

/// The message as stored and published, without its id.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    /// `join` / `leave` for presence announcements (made by the `PRESENCE` script).
    #[serde(rename = "k", skip_serializing_if = "Option::is_none", borrow, default)]
    kind: Option<&'a str>,
    #[serde(rename = "u", skip_serializing_if = "Option::is_none", borrow, default)]
    user: Option<&'a str>,
    #[serde(rename = "i", skip_serializing_if = "Option::is_none", borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(rename = "e", skip_serializing_if = "Option::is_none", borrow)]
    event: Option<&'a str>,
    #[serde(rename = "d", borrow)]
    data: &'a RawValue,
    /// `exclude_connection`, as a connection name (only its own instance resolves it).
    #[serde(rename = "x", skip_serializing_if = "Option::is_none", borrow)]
    exclude: Option<&'a str>,
    /// Client publishes: set, with the sender in `u` (absent: anonymous).
    #[serde(rename = "c", skip_serializing_if = "Option::is_none", default)]
    client: Option<bool>,
    /// The publishing client connection (its instance skips it for `echo: false`).
    #[serde(rename = "f", skip_serializing_if = "Option::is_none", borrow, default)]
    from: Option<&'a str>,
}

fn classify(e: RedisError, timeout: Duration) -> BrokerError {
    if e.is_timeout() {
        BrokerError::Timeout(timeout)
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error() {
        BrokerError::Down(e.to_string())
    } else {
        BrokerError::Protocol(e.to_string())
    }
}

impl Redis {
    /// Prepares the connections (made lazily: sidewire starts while Redis is down and
    /// reports not ready until it answers).
    /// `heartbeat` paces the liveness key: an instance that dies without goodbye has its
    /// members leave within 3 heartbeat intervals.
    pub fn new(
        config: &RedisConfig,
        hub_stats: HubStats,
        stats: BrokerStats,
        heartbeat: Duration,
    ) -> Result<Self, BrokerError> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (presence_tx, presence_rx) = mpsc::channel(EVENT_QUEUE);
        let hub = Hub::cache(hub_stats, presence_tx);
        let shared = Arc::new(Shared {
            hub,
            keys: Keys::new(&config.key_prefix),
            epoch: AtomicU32::new(0),
            events: tx,
            overflow: AtomicBool::new(false),
            pubsub_down: AtomicBool::new(false),
            stats,
        });
        let setup = |e: RedisError| BrokerError::Protocol(format!("cannot set up the Redis connection: {e}"));
        let cmd = Link::new(config, None::<fn(PushInfo) -> Result<(), std::convert::Infallible>>).map_err(setup)?;
        let receiver = Arc::clone(&shared);
        let push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            receiver.on_push(info);
            Ok(())
        };
        let pubsub = Link::new(config, Some(push)).map_err(setup)?;
        Ok(Self(Arc::new(Inner {
            shared,
            scripts: Scripts::new(),
            cmd,
            pubsub,
            timeout: config.timeout,
            up: AtomicBool::new(false),
            listening: tokio::sync::Mutex::default(),
            events: Mutex::new(Some((rx, presence_rx))),
            heartbeat,
        })))
    }

    pub fn hub(&self) -> &Hub {
        &self.0.shared.hub
    }

    pub fn epoch(&self) -> Epoch {
        Epoch(self.0.shared.epoch.load(Ordering::Acquire))
    }

    pub fn is_ready(&self) -> bool {
        self.0.up.load(Ordering::Acquire) && !self.0.shared.pubsub_down.load(Ordering::Acquire)
    }

    /// Runs a Redis call under `broker.timeout`, keeping readiness up to date.
    async fn call<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BrokerError> {
        let timeout = self.0.timeout;
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(e, timeout)),
            Err(_) => Err(BrokerError::Timeout(timeout)),
        };
        if let Err(BrokerError::Down(_) | BrokerError::Timeout(_)) = &result {
            self.set_up(false);
        }
        result
    }

    fn set_up(&self, up: bool) {
        self.0.up.store(up, Ordering::Release);
        self.0.shared.stats.up.set(i64::from(up && !self.0.shared.pubsub_down.load(Ordering::Acquire)));
    }

    /// Publishes in one script call on one Redis. In a cluster, one call per shard the
    /// request's channels live on, in order: each part is atomic, and a request cut
    /// between shards (503) is completed by its retry when it has an idempotency key.
    pub async fn publish(&self, items: Vec<Outgoing>) -> Result<Vec<Ids>, BrokerError> {
        let started = std::time::Instant::now();
        let mut ids: Vec<Ids> = items.iter().map(|i| vec![None; i.drafts.len()]).collect();
        for part in self.parts(&items) {
            let (epoch, got) = self.publish_part(&items, &part).await?;
            for ((item, msg), seq) in part.into_iter().zip(got) {
                ids[item][msg] = seq.map(|seq| MessageId { epoch, seq });
            }
        }
        self.0.shared.stats.publish_seconds.observe(started.elapsed().as_secs_f64());
        Ok(ids)
    }

    /// The request's messages as `(item, message)` positions, grouped by shard (one
    /// group on a single Redis), each group in request order.
    fn parts(&self, items: &[Outgoing]) -> Vec<Vec<(usize, usize)>> {
        let all = items.iter().enumerate().flat_map(|(i, item)| (0..item.drafts.len()).map(move |m| (i, m)));
        if !self.0.cmd.is_cluster() {
            return vec![all.collect()];
        }
        let keys = &self.0.shared.keys;
        let mut groups: Vec<(Slot, Vec<(usize, usize)>)> = Vec::new();
        for (i, m) in all {
            let slot = Slot::for_key(keys.seq(items[i].drafts[m].0.channel.as_str()));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push((i, m)),
                None => groups.push((slot, vec![(i, m)])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// One script call for the messages at `part`; their seqs (`None`: ephemeral).
    async fn publish_part(
        &self,
        items: &[Outgoing],
        part: &[(usize, usize)],
    ) -> Result<(u32, Vec<Option<u64>>), BrokerError> {
        let shared = &self.0.shared;
        let cluster = self.0.cmd.is_cluster();
        let epoch = if cluster { self.known_epoch().await? } else { Epoch::fresh().0 };
        // Items in order of appearance, each with its messages in this part.
        let mut order: Vec<(usize, Vec<usize>)> = Vec::new();
        for &(i, m) in part {
            match order.last_mut() {
                Some((item, msgs)) if *item == i => msgs.push(m),
                _ => order.push((i, vec![m])),
            }
        }
        let mut inv = self.0.scripts.publish.prepare_invoke();
        inv.arg(epoch).arg(u8::from(!cluster)).arg(super::memory::IDEMPOTENCY_TTL.as_secs()).arg(order.len());
        let mut idem_keys = Vec::new();
        for (i, msgs) in &order {
            let item = &items[*i];
            let ki = match &item.idempotency {
                Some(idem) => {
                    let first = item.drafts[msgs[0]].0.channel.as_str();
                    idem_keys.push(shared.keys.idempotency(first, &idem.key));
                    2 * part.len() + idem_keys.len()
                }
                None => 0,
            };
            let fingerprint = item.idempotency.as_ref().map_or("", |i| i.fingerprint.as_str());
            inv.arg(msgs.len()).arg(ki).arg(fingerprint);
            for &m in msgs {
                let (draft, retention) = &item.drafts[m];
                let name = draft.channel.as_str();
                inv.key(shared.keys.seq(name)).key(shared.keys.log(name));
                let ttl = retention.ttl.max(MIN_KEY_TTL).as_millis().min(u128::from(u64::MAX)) as u64;
                let exclude = draft.exclude.map(|c| c.to_string());
                let from = draft.from.map(|c| c.to_string());
                let env = Envelope {
                    kind: None,
                    user: draft.sender.as_ref().and_then(|u| u.as_deref()),
                    info: None,
                    event: draft.event.as_deref(),
                    data: &draft.data,
                    exclude: exclude.as_deref(),
                    client: draft.sender.is_some().then_some(true),
                    from: from.as_deref(),
                };
                let env = serde_json::to_string(&env).map_err(|e| BrokerError::Protocol(e.to_string()))?;
                inv.arg(shared.keys.pubsub(name)).arg(retention.size).arg(ttl).arg(u8::from(draft.ephemeral)).arg(env);
            }
        }
        for k in idem_keys {
            inv.key(k);
        }
        if !cluster {
            inv.key(shared.keys.epoch());
        }
        let mut con = self.0.cmd.clone();
        let (epoch, conflict, out): (u32, usize, Vec<String>) = self.call(inv.invoke_async(&mut con)).await?;
        self.set_up(true);
        shared.observe_epoch(epoch);
        if conflict > 0 {
            let shown =
                order.get(conflict - 1).and_then(|(i, _)| items[*i].idempotency.as_ref()).map(|i| i.shown.clone());
            return Err(BrokerError::Conflict(shown.unwrap_or_default()));
        }
        let seqs = out
            .iter()
            .flat_map(|list| list.split(',').map(|s| s.parse::<u64>().ok().filter(|&n| n > 0)))
            .collect::<Vec<_>>();
        if seqs.len() != part.len() {
            return Err(BrokerError::Protocol(format!("{} ids for {} messages", seqs.len(), part.len())));
        }
        Ok((epoch, seqs))
    }

    /// The epoch, read from Redis when not known yet (cluster: scripts cannot read it).
    async fn known_epoch(&self) -> Result<u32, BrokerError> {
        match self.0.shared.epoch.load(Ordering::Acquire) {
            0 => self.ensure_epoch().await,
            e => Ok(e),
        }
    }

    /// Reads the epoch key, setting a fresh one when Redis has none (first start, or
    /// restarted empty), and notes it.
    async fn ensure_epoch(&self) -> Result<u32, BrokerError> {
        let key = self.0.shared.keys.epoch();
        let mut con = self.0.cmd.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(Epoch::fresh().0).arg("NX").ignore().get(&key);
        let (epoch,): (u32,) = self.call(pipe.query_async(&mut con)).await?;
        self.set_up(true);
        self.0.shared.observe_epoch(epoch);
        Ok(epoch)
    }

    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        outbox: &Outbox,
        resume: Resume,
        retention: Retention,
    ) -> Result<Subscribed, BrokerError> {
        let hub = &self.0.shared.hub;
        let epoch = self.epoch();
        if epoch.0 != 0
            && let Ok(sub) = hub.subscribe(channel, outbox, resume.since(epoch, |_| true), retention, None)
        {
            self.joined(channel, outbox, retention).await;
            return Ok(sub);
        }
        if !hub.make_room(&[channel]) {
            return Err(BrokerError::no_room());
        }
        let _joining = self.listen(channel).await?;
        hub.prepare(channel, retention);
        let after = match resume {
            Resume::After { seq, .. } => Some(seq),
            Resume::Live | Resume::Invalid => None,
        };
        let (epoch, fill) = self.read(channel, after, retention.size).await?;
        let sub = hub.subscribe(channel, outbox, resume.since(epoch, |_| true), retention, Some(fill));
        let sub = sub.map_err(|_| BrokerError::Protocol("the hub refused a filled subscribe".into()))?;
        self.joined(channel, outbox, retention).await;
        Ok(sub)
    }

    /// After a subscribe on a presence channel: writes this instance's presence there
    /// now, so the `subscribed` reply's member list includes the new member. A failure
    /// is left to the broker task, which was told of the change too.
    async fn joined(&self, channel: &ChannelName, outbox: &Outbox, retention: Retention) {
        if retention.presence && outbox.member.is_some() {
            let _ = self.sync_presence(channel).await;
        }
    }

    /// Present users of `channel` on every instance, sorted by user.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresentUser>, BrokerError> {
        let keys = &self.0.shared.keys;
        let mut con = self.0.cmd.clone();
        let mut pipe = redis::pipe();
        pipe.hgetall(keys.present(channel.as_str())).hgetall(keys.present_info(channel.as_str()));
        let (counts, infos): (HashMap<String, i64>, HashMap<String, String>) =
            self.call(pipe.query_async(&mut con)).await?;
        let mut out: Vec<PresentUser> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(user, n)| {
                let info = infos
                    .get(&user)
                    .and_then(|i| serde_json::from_str(i).ok())
                    .filter(|v: &serde_json::Value| !v.is_null());
                (Arc::from(user.as_str()), u32::try_from(n).unwrap_or(u32::MAX), info)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes this instance's members of `channel` to Redis (announcing cluster-wide
    /// joins and leaves).
    async fn sync_presence(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        let shared = &self.0.shared;
        let local = shared.hub.presence(channel).unwrap_or_default();
        self.write_presence(channel, &shared.hub.instance(), &local).await
    }

    async fn write_presence(
        &self,
        channel: &ChannelName,
        instance: &str,
        local: &[PresentUser],
    ) -> Result<(), BrokerError> {
        let keys = &self.0.shared.keys;
        let name = channel.as_str();
        let mut inv = self.0.scripts.presence.prepare_invoke();
        inv.key(keys.present(name)).key(keys.present_info(name)).key(keys.present_on(name, instance));
        inv.arg(keys.pubsub(name)).arg(if self.0.cmd.is_cluster() { "SPUBLISH" } else { "PUBLISH" });
        for (user, n, info) in local {
            let info = info.as_ref().map_or_else(|| "null".to_owned(), ToString::to_string);
            inv.arg(user.as_ref()).arg(*n).arg(info);
        }
        let mut con = self.0.cmd.clone();
        let here: usize = self.call(inv.invoke_async(&mut con)).await?;
        let mut con = self.0.cmd.clone();
        let set = keys.presence_of(instance);
        if here > 0 {
            // Known as an instance as soon as it has members, so it can be reaped.
            let mut pipe = redis::pipe();
            pipe.sadd(set, name).ignore().sadd(keys.instances(), instance).ignore();
            if instance == self.0.shared.hub.instance() {
                pipe.cmd("SET").arg(keys.alive(instance)).arg(1).arg("PX").arg(self.alive_ttl()).ignore();
            }
            self.call(pipe.query_async::<()>(&mut con)).await
        } else {
            self.call(con.srem::<_, _, ()>(set, name)).await
        }
    }

    /// Lifetime of the liveness key, ms: two heartbeat intervals (refreshed every second),
    /// so a dead instance's members leave within three.
    fn alive_ttl(&self) -> u64 {
        u64::try_from((self.0.heartbeat * 2).as_millis()).unwrap_or(u64::MAX).max(1000)
    }

    /// Keeps this instance's liveness key and makes the members of instances whose key
    /// expired (they died without goodbye) leave.
    async fn liveness(&self) {
        let keys = &self.0.shared.keys;
        let me = self.0.shared.hub.instance();
        let ttl = self.alive_ttl();
        let mut con = self.0.cmd.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(keys.alive(&me)).arg(1).arg("PX").arg(ttl).ignore();
        pipe.sadd(keys.instances(), &me).ignore();
        pipe.smembers(keys.instances());
        let Ok((instances,)): Result<(Vec<String>,), _> = self.call(pipe.query_async(&mut con)).await else { return };
        for other in instances.into_iter().filter(|i| *i != me) {
            let mut con = self.0.cmd.clone();
            if let Ok(false) = self.call(con.exists::<_, bool>(keys.alive(&other))).await {
                tracing::info!(instance = other, "a sidewire instance stopped without goodbye: its members leave");
                self.reap(&other).await;
            }
        }
    }

    /// Makes every member of `instance` leave and forgets the instance.
    async fn reap(&self, instance: &str) {
        let keys = &self.0.shared.keys;
        let mut con = self.0.cmd.clone();
        let Ok(channels) = self.call(con.smembers::<_, Vec<String>>(keys.presence_of(instance))).await else { return };
        for name in channels {
            if let Ok(channel) = ChannelName::new(&name)
                && self.write_presence(&channel, instance, &[]).await.is_err()
            {
                return;
            }
        }
        let mut con = self.0.cmd.clone();
        let _ = self.call(con.srem::<_, _, ()>(keys.instances(), instance)).await;
    }

    /// Re-writes the presence of every channel that has members here.
    async fn sync_all_presence(&self) {
        for channel in self.0.shared.hub.names() {
            if self.0.shared.hub.presence(&channel).is_some() {
                let _ = self.sync_presence(&channel).await;
            }
        }
    }

    /// Where `channel` stands in Redis and, with `after`, its history after that position.
    async fn read(
        &self,
        channel: &ChannelName,
        after: Option<u64>,
        count: usize,
    ) -> Result<(Epoch, Fill), BrokerError> {
        let shared = &self.0.shared;
        let name = channel.as_str();
        let cluster = self.0.cmd.is_cluster();
        let epoch = if cluster { self.known_epoch().await? } else { Epoch::fresh().0 };
        let mut inv = self.0.scripts.read.prepare_invoke();
        inv.key(shared.keys.seq(name)).key(shared.keys.log(name));
        if !cluster {
            inv.key(shared.keys.epoch());
        }
        let after_arg = after.map_or_else(|| "-1".to_owned(), |a| a.to_string());
        inv.arg(epoch).arg(u8::from(!cluster)).arg(after_arg).arg(count.max(1));
        let mut con = self.0.cmd.clone();
        let (epoch, head, entries): (u32, u64, Value) = self.call(inv.invoke_async(&mut con)).await?;
        self.set_up(true);
        shared.observe_epoch(epoch);
        let entries = parse_entries(channel, epoch, entries, &shared.hub)?;
        let complete = match (after, entries.first(), entries.last()) {
            (None, ..) => true,
            (Some(a), None, _) => head == a,
            (Some(a), Some((_, prev)), Some((last, _))) => *prev == a && last.id.is_some_and(|id| id.seq == head),
            (Some(_), Some(_), None) => false,
        };
        let after = entries.into_iter().map(|(m, _)| m).collect();
        Ok((Epoch(epoch), Fill { head, after, complete }))
    }

    /// Subscribes to `channel`'s pub/sub channel unless already subscribed; the guard
    /// keeps the sweep away until the subscribe has registered in the hub.
    async fn listen(&self, channel: &ChannelName) -> Result<Joining, BrokerError> {
        let mut listening = self.0.listening.lock().await;
        if let Some(n) = listening.get(channel) {
            n.fetch_add(1, Ordering::AcqRel);
            return Ok(Joining(Arc::clone(n)));
        }
        let mut con = self.0.pubsub.clone();
        self.call(con.listen(vec![self.0.shared.keys.pubsub(channel.as_str())])).await?;
        let n = Arc::new(AtomicUsize::new(1));
        listening.insert(channel.clone(), Arc::clone(&n));
        Ok(Joining(n))
    }

    /// The broker task: readiness checks, back-fills, resubscribes, sweeps. Until shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        let Some((mut events, mut presence)) = self.0.events.lock().unwrap_or_else(PoisonError::into_inner).take()
        else {
            return;
        };
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(event) = events.recv() => match event {
                    Event::Gap(channel) => self.backfill(&channel).await,
                    Event::Disconnected => self.reconnect(&shutdown).await,
                },
                Some(channel) = presence.recv() => {
                    let _ = self.sync_presence(&channel).await;
                }
                _ = tick.tick() => {
                    self.check().await;
                    self.liveness().await;
                    if self.0.shared.overflow.swap(false, Ordering::AcqRel) {
                        self.resync().await;
                    }
                    if self.0.shared.hub.take_changes_lost() {
                        self.sync_all_presence().await;
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(SWEEP_TICKS) {
                        self.sweep().await;
                        // A cluster shard's pub/sub connection may drop (failover, slot
                        // move) without this instance hearing of it: catch up regularly.
                        if self.0.cmd.is_cluster() {
                            self.resync().await;
                        }
                    }
                }
            }
        }
        // Goodbye: this instance's members leave everywhere now, not at reaping time.
        self.reap(&self.0.shared.hub.instance()).await;
        let mut con = self.0.cmd.clone();
        let _ = self.call(con.del::<_, ()>(self.0.shared.keys.alive(&self.0.shared.hub.instance()))).await;
    }

    /// One round trip: readiness, and the epoch (a Redis restarted empty shows here
    /// even when nothing is published).
    async fn check(&self) {
        let _ = self.ensure_epoch().await;
    }

    /// Delivers what `channel` missed since its last delivered id, from its stream.
    async fn backfill(&self, channel: &ChannelName) {
        let shared = &self.0.shared;
        let Some((last, retention)) = shared.hub.position(channel) else { return };
        let epoch = self.epoch();
        let Ok((now, fill)) = self.read(channel, Some(last), retention.size).await else {
            // Redis is away: the reconnect or the next overflow tick retries.
            shared.overflow.store(true, Ordering::Release);
            return;
        };
        shared.stats.backfills.inc();
        if now != epoch || !fill.complete {
            shared.hub.lose(channel);
            return;
        }
        let mut prev = last;
        for msg in fill.after {
            let Some(id) = msg.id else { continue };
            let draft = Draft {
                channel: msg.channel.clone(),
                event: msg.event.clone(),
                data: msg.data.clone(),
                ephemeral: false,
                exclude: msg.exclude.map(|c| shared.hub.conn_ref(c)),
                sender: msg.sender.clone(),
                from: msg.from.map(|c| shared.hub.conn_ref(c)),
            };
            if let Delivery::Gap { .. } = shared.hub.deliver(draft, None, Seq::Given { id, prev }) {
                shared.hub.lose(channel);
                return;
            }
            prev = id.seq;
        }
    }

    /// Back-fills every synced channel.
    async fn resync(&self) {
        for (channel, _, _) in self.0.shared.hub.positions() {
            self.backfill(&channel).await;
        }
    }

    /// After the pub/sub connection dropped: subscribe again to every channel (until it
    /// works or shutdown), then back-fill what was published meanwhile.
    async fn reconnect(&self, shutdown: &Shutdown) {
        let shared = &self.0.shared;
        shared.pubsub_down.store(true, Ordering::Release);
        self.set_up(self.0.up.load(Ordering::Acquire));
        let mut delay = Duration::from_millis(100);
        loop {
            let names: Vec<String> = {
                let listening = self.0.listening.lock().await;
                listening.keys().map(|c| shared.keys.pubsub(c.as_str())).collect()
            };
            let mut con = self.0.pubsub.clone();
            let done =
                if names.is_empty() { self.call(con.ping::<()>()).await } else { self.call(con.listen(names)).await };
            if done.is_ok() {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        shared.stats.resubscribes.inc();
        shared.pubsub_down.store(false, Ordering::Release);
        self.set_up(self.0.up.load(Ordering::Acquire));
        self.resync().await;
    }

    /// Stops listening to channels nobody here subscribes to.
    async fn sweep(&self) {
        let mut listening = self.0.listening.lock().await;
        let idle: Vec<ChannelName> =
            listening.iter().filter(|(_, n)| n.load(Ordering::Acquire) == 0).map(|(c, _)| c.clone()).collect();
        for channel in idle {
            if self.0.shared.hub.forget(&channel) {
                listening.remove(&channel);
                let mut con = self.0.pubsub.clone();
                let _ = self.call(con.unlisten(self.0.shared.keys.pubsub(channel.as_str()))).await;
            }
        }
    }
}

/// A subscribe in progress on a channel (see [`Redis::listen`]).
struct Joining(Arc<AtomicUsize>);

impl Drop for Joining {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// The pub/sub connection's push callback: never waits.
    fn on_push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                if let [Value::BulkString(channel), Value::BulkString(payload)] = info.data.as_slice() {
                    self.receive(channel, payload);
                }
            }
            PushKind::Disconnection => self.signal(Event::Disconnected),
            _ => {}
        }
    }

    fn signal(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.overflow.store(true, Ordering::Release);
        }
    }

    /// Notes the epoch Redis answered with; a new one means Redis lost its data.
    fn observe_epoch(&self, epoch: u32) {
        let old = self.epoch.swap(epoch, Ordering::AcqRel);
        if old != 0 && old != epoch {
            tracing::warn!(
                old,
                new = epoch,
                "Redis history epoch changed (Redis restarted empty?): clients resume into a reset"
            );
            self.stats.epoch_changes.inc();
            self.hub.lose_all();
        }
    }

    fn receive(&self, channel: &[u8], payload: &[u8]) {
        let (Ok(channel), Ok(payload)) = (std::str::from_utf8(channel), std::str::from_utf8(payload)) else { return };
        let Some(name) = self.keys.channel_of(channel).and_then(|c| ChannelName::new(c).ok()) else { return };
        let Some(wire) = Wire::parse(payload) else {
            tracing::warn!(channel, "unreadable message on a sidewire pub/sub channel; ignored");
            return;
        };
        if wire.epoch == 0 {
            return self.announce(name, wire.envelope);
        }
        self.observe_epoch(wire.epoch);
        let Some(draft) = draft(&name, wire.envelope, wire.seq == 0) else { return };
        let seq = match wire.seq {
            0 => Seq::None,
            seq => Seq::Given { id: MessageId { epoch: wire.epoch, seq }, prev: wire.prev },
        };
        if let Delivery::Gap { .. } = self.hub.deliver(draft, None, seq) {
            self.signal(Event::Gap(name));
        }
    }
}

impl Shared {
    /// A `join`/`leave` decided by the `PRESENCE` script.
    fn announce(&self, channel: ChannelName, envelope: &str) {
        let Ok(env) = serde_json::from_str::<Envelope<'_>>(envelope) else { return };
        let (Some(kind), Some(user)) = (env.kind, env.user) else { return };
        let info: Option<serde_json::Value> = env.info.and_then(|i| serde_json::from_str(i.get()).ok());
        let msg = Message::presence(channel, kind == "join", user, info.as_ref());
        self.hub.announce(Arc::new(msg));
    }
}

/// A draft from a stored or published envelope.
fn draft(channel: &ChannelName, envelope: &str, ephemeral: bool) -> Option<Draft> {
    let env: Envelope<'_> = serde_json::from_str(envelope).ok()?;
    Some(Draft {
        channel: channel.clone(),
        event: env.event.map(Into::into),
        data: env.data.to_owned().into(),
        ephemeral,
        exclude: env.exclude.and_then(ConnRef::parse),
        sender: env.client.filter(|c| *c).map(|_| env.user.map(Arc::from)),
        from: env.from.and_then(ConnRef::parse),
    })
}

/// Stream entries (`XRANGE` shape) as messages, each with its `prev`.
fn parse_entries(
    channel: &ChannelName,
    epoch: u32,
    entries: Value,
    hub: &Hub,
) -> Result<Vec<(Arc<Message>, u64)>, BrokerError> {
    let bad = || BrokerError::Protocol(format!("unreadable history entry of {channel}"));
    let Value::Array(entries) = entries else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(pair) = entry else { return Err(bad()) };
        let [id, fields] = pair.as_slice() else { return Err(bad()) };
        let id: String = redis::from_redis_value_ref(id).map_err(|_| bad())?;
        let seq: u64 = id.split('-').next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let fields: Vec<String> = redis::from_redis_value_ref(fields).map_err(|_| bad())?;
        let mut prev = None;
        let mut env = None;
        for pair in fields.chunks(2) {
            match pair {
                [k, v] if k == "p" => prev = v.parse::<u64>().ok(),
                [k, v] if k == "m" => env = Some(v.as_str()),
                _ => {}
            }
        }
        let (Some(prev), Some(env)) = (prev, env) else { return Err(bad()) };
        let draft = draft(channel, env, false).ok_or_else(bad)?;
        out.push((Arc::new(Message::from_draft(draft, Some(MessageId { epoch, seq }), hub.me())), prev));
    }
    Ok(out)
}
