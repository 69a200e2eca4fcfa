//! Hub unit tests: ids, history, recovery and eviction, without any socket.

use std::time::Duration;

use super::*;
use serde_json::value::RawValue;

/// An authoritative hub with the memory broker's numbering, for tests.
struct Numbered {
    hub: Hub,
    seq: AtomicU64,
}

impl std::ops::Deref for Numbered {
    type Target = Hub;
    fn deref(&self) -> &Hub {
        &self.hub
    }
}

impl Numbered {
    fn publish(&self, draft: Draft, retention: Retention) -> Arc<Message> {
        let seq = if draft.ephemeral { Seq::None } else { Seq::Next { epoch: 77, counter: &self.seq } };
        match self.hub.deliver(draft, Some(retention), seq) {
            Delivery::Delivered(m) => m,
            other => panic!("authoritative hubs deliver: {other:?}"),
        }
    }

    fn subscribe(&self, channel: &ChannelName, outbox: &Outbox, since: Since, retention: Retention) -> Subscribed {
        self.hub.subscribe(channel, outbox, since, retention, None).unwrap()
    }
}

fn hub() -> Numbered {
    Numbered { hub: Hub::new(HubStats::default()), seq: AtomicU64::new(0) }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn draft(channel: &str, n: u32) -> Draft {
    Draft {
        channel: ch(channel),
        event: None,
        data: RawValue::from_string(n.to_string()).unwrap().into(),
        ephemeral: false,
        exclude: None,
        sender: None,
        from: None,
    }
}

const KEEP: Retention = Retention { size: 3, ttl: Duration::from_secs(3600), presence: false };

#[tokio::test]
async fn fan_out_in_order_with_strictly_rising_ids() {
    let hub = hub();
    let (o, mut inbox) = outbox(hub.next_conn(), None, 16);
    hub.subscribe(&ch("a"), &o, Since::Live, KEEP);
    let ids: Vec<MessageId> = (0..5).map(|n| hub.publish(draft("a", n), KEEP).id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    for id in ids {
        assert_eq!(inbox.recv().await.unwrap().id, Some(id));
    }
}

#[test]
fn resume_replays_after_cursor_and_detects_gaps() {
    let hub = hub();
    let ids: Vec<MessageId> = (0..5).map(|n| hub.publish(draft("a", n), KEEP).id.unwrap()).collect();
    // History holds the last 3 (ids[2..]); resuming after ids[1] is complete.
    let (o, _i) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o, Since::After(ids[1].seq), KEEP);
    assert!(sub.recovered);
    assert_eq!(sub.replay.iter().map(|m| m.id.unwrap()).collect::<Vec<_>>(), ids[2..].to_vec());
    // After ids[0]: ids[1] was trimmed, so the gap cannot be filled.
    let (o2, _i2) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o2, Since::After(ids[0].seq), KEEP);
    assert!(!sub.recovered);
    assert!(sub.replay.is_empty());
    // A cursor the broker could not place (another epoch) is never resumable.
    let (o3, _i3) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o3, Since::Lost, KEEP);
    assert!(!sub.recovered);
}

#[test]
fn ephemeral_messages_have_no_id_and_no_history() {
    let hub = hub();
    let mut d = draft("a", 1);
    d.ephemeral = true;
    assert!(hub.publish(d, KEEP).id.is_none());
    let (o, _i) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o, Since::After(0), KEEP);
    assert!(sub.recovered);
    assert!(sub.replay.is_empty());
}

#[tokio::test(start_paused = true)]
async fn history_expires_after_ttl() {
    let hub = hub();
    let short = Retention { size: 10, ttl: Duration::from_secs(60), presence: false };
    let first = hub.publish(draft("a", 1), short).id.unwrap();
    hub.publish(draft("a", 2), short);
    tokio::time::advance(Duration::from_secs(61)).await;
    hub.sweep();
    let (o, _i) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o, Since::After(first.seq - 1), short);
    assert!(!sub.recovered, "expired history cannot fill the gap");
}

#[tokio::test]
async fn full_outbox_evicts_only_that_subscriber() {
    let hub = hub();
    let (slow, slow_inbox) = outbox(hub.next_conn(), None, 2);
    let (fast, mut fast_inbox) = outbox(hub.next_conn(), None, 64);
    hub.subscribe(&ch("a"), &slow, Since::Live, KEEP);
    hub.subscribe(&ch("a"), &fast, Since::Live, KEEP);
    for n in 0..10 {
        hub.publish(draft("a", n), KEEP);
    }
    assert!(slow_inbox.evicted().is_cancelled());
    for _ in 0..10 {
        assert!(fast_inbox.recv().await.is_some());
    }
    assert_eq!(hub.channels(), vec![(ch("a"), 1)]);
}

#[tokio::test]
async fn exclude_connection_is_skipped() {
    let hub = hub();
    let (a, mut ai) = outbox(hub.next_conn(), None, 8);
    let (b, mut bi) = outbox(hub.next_conn(), None, 8);
    hub.subscribe(&ch("x"), &a, Since::Live, KEEP);
    hub.subscribe(&ch("x"), &b, Since::Live, KEEP);
    let mut d = draft("x", 1);
    d.exclude = Some(hub.conn_ref(a.conn));
    hub.publish(d, KEEP);
    assert!(bi.recv().await.is_some());
    assert!(ai.try_recv().is_none());
    assert_eq!(ConnRef::parse(&hub.conn_name(a.conn)), Some(hub.conn_ref(a.conn)));
}

#[tokio::test]
async fn presence_joins_and_leaves_once_per_user() {
    let hub = hub();
    let with = Retention { presence: true, ..KEEP };
    let alice = Some(Arc::new(Member { user: "alice".into(), info: None }));
    let (watcher, mut wi) = outbox(hub.next_conn(), None, 16);
    hub.subscribe(&ch("p"), &watcher, Since::Live, with);
    let (tab1, _t1) = outbox(hub.next_conn(), alice.clone(), 16);
    let (tab2, _t2) = outbox(hub.next_conn(), alice, 16);
    hub.subscribe(&ch("p"), &tab1, Since::Live, with);
    hub.subscribe(&ch("p"), &tab2, Since::Live, with);
    let join = wi.recv().await.unwrap();
    assert_eq!(join.kind, message::Kind::Join);
    assert_eq!(hub.presence(&ch("p")).unwrap()[0].1, 2);
    hub.unsubscribe(&ch("p"), tab1.conn);
    assert!(wi.try_recv().is_none(), "one tab left: no leave yet");
    hub.unsubscribe(&ch("p"), tab2.conn);
    assert_eq!(wi.recv().await.unwrap().kind, message::Kind::Leave);
    assert!(hub.presence(&ch("p")).unwrap().is_empty());
}

#[test]
fn an_eviction_counts_once_and_leaves_every_channel() {
    let hub = hub();
    let (slow, _slow_inbox) = outbox(hub.next_conn(), None, 1);
    let (fast, _fast_inbox) = outbox(hub.next_conn(), None, 64);
    for c in ["a", "b", "c"] {
        hub.subscribe(&ch(c), &slow, Since::Live, KEEP);
    }
    hub.subscribe(&ch("a"), &fast, Since::Live, KEEP);
    assert_eq!(hub.stats().subscriptions.get(), 4);
    // Fills the queue on "a", overflows it on "b"; "c" finds an evicted connection.
    for c in ["a", "b", "c"] {
        hub.publish(draft(c, 1), KEEP);
    }
    assert_eq!(hub.stats().evicted_slow.get(), 1, "one connection, one eviction");
    assert_eq!(hub.channels(), vec![(ch("a"), 2)]);
    // "a" still lists it until its next message finds it evicted.
    hub.publish(draft("a", 2), KEEP);
    assert_eq!(hub.channels(), vec![(ch("a"), 1)]);
    assert_eq!(hub.stats().subscriptions.get(), 1);
    assert_eq!(hub.stats().evicted_slow.get(), 1);
}

#[test]
fn a_gone_session_leaves_the_subscription_count() {
    let hub = hub();
    let (o, inbox) = outbox(hub.next_conn(), None, 8);
    hub.subscribe(&ch("a"), &o, Since::Live, KEEP);
    drop(inbox);
    hub.publish(draft("a", 1), KEEP);
    assert!(hub.channels().is_empty());
    assert_eq!(hub.stats().subscriptions.get(), 0);
}

fn given(channel: &str, n: u32) -> (Draft, Option<Retention>) {
    (draft(channel, n), None)
}

fn id(seq: u64) -> MessageId {
    MessageId { epoch: 9, seq }
}

#[tokio::test]
async fn cache_mode_delivers_in_order_once_and_reports_gaps() {
    let hub = cache_hub();
    let a = ch("a");
    let (o, mut inbox) = outbox(hub.next_conn(), None, 16);
    // Nothing known about "a": the broker must read history first.
    assert!(hub.subscribe(&a, &o, Since::Live, KEEP, None).is_err());
    assert!(matches!(hub.deliver(draft("a", 0), None, Seq::Given { id: id(5), prev: 4 }), Delivery::Ignored));
    hub.prepare(&a, KEEP);
    let fill = Fill { head: 10, after: Vec::new(), complete: true };
    let sub = hub.subscribe(&a, &o, Since::Live, KEEP, Some(fill)).unwrap();
    assert_eq!(sub.position, 10);
    let (d, r) = given("a", 1);
    assert!(matches!(hub.deliver(d, r, Seq::Given { id: id(11), prev: 10 }), Delivery::Delivered(_)));
    let (d, r) = given("a", 1);
    assert!(matches!(hub.deliver(d, r, Seq::Given { id: id(11), prev: 10 }), Delivery::Duplicate));
    let (d, r) = given("a", 3);
    assert!(matches!(hub.deliver(d, r, Seq::Given { id: id(13), prev: 12 }), Delivery::Gap { last: 11 }));
    let (d, r) = given("a", 2);
    assert!(matches!(hub.deliver(d, r, Seq::Given { id: id(12), prev: 11 }), Delivery::Delivered(_)));
    // A counter that started afresh (prev 0) continues the channel.
    let (d, r) = given("a", 4);
    assert!(matches!(hub.deliver(d, r, Seq::Given { id: id(5000), prev: 0 }), Delivery::Delivered(_)));
    let got: Vec<u64> = [inbox.recv().await, inbox.recv().await, inbox.recv().await]
        .into_iter()
        .map(|m| m.unwrap().id.unwrap().seq)
        .collect();
    assert_eq!(got, vec![11, 12, 5000]);
    assert_eq!(hub.position(&a).map(|p| p.0), Some(5000));
    // The ring answers a resume it covers without the broker.
    let (o2, _i2) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&a, &o2, Since::After(11), KEEP, None).unwrap();
    assert!(sub.recovered);
    assert_eq!(sub.replay.iter().map(|m| m.id.unwrap().seq).collect::<Vec<_>>(), vec![12, 5000]);
}

#[tokio::test]
async fn a_fill_beyond_what_arrived_here_is_not_replayed_twice() {
    let hub = cache_hub();
    let a = ch("a");
    let (first, _fi) = outbox(hub.next_conn(), None, 16);
    hub.prepare(&a, KEEP);
    hub.subscribe(&a, &first, Since::Live, KEEP, Some(Fill { head: 3, after: Vec::new(), complete: true })).unwrap();
    // Redis already holds 4 and 5; pub/sub has not brought them here yet.
    let stored: Vec<Arc<Message>> =
        [4, 5].iter().map(|&s| Arc::new(Message::from_draft(draft("a", s as u32), Some(id(s)), hub.me()))).collect();
    let (o, mut inbox) = outbox(hub.next_conn(), None, 16);
    let fill = Fill { head: 5, after: stored, complete: true };
    let sub = hub.subscribe(&a, &o, Since::After(3), KEEP, Some(fill)).unwrap();
    assert!(sub.recovered);
    assert!(sub.replay.is_empty(), "4 and 5 come live");
    for (s, prev) in [(4, 3), (5, 4)] {
        let (d, r) = given("a", s as u32);
        hub.deliver(d, r, Seq::Given { id: id(s), prev });
    }
    assert_eq!(inbox.recv().await.unwrap().id.unwrap().seq, 4);
    assert_eq!(inbox.recv().await.unwrap().id.unwrap().seq, 5);
    // A subscriber whose cursor is ahead of this instance skips what it has seen.
    let (o3, mut i3) = outbox(hub.next_conn(), None, 16);
    hub.subscribe(&a, &o3, Since::After(7), KEEP, Some(Fill { head: 7, after: Vec::new(), complete: true })).unwrap();
    for (s, prev) in [(6, 5), (7, 6), (8, 7)] {
        let (d, r) = given("a", s as u32);
        hub.deliver(d, r, Seq::Given { id: id(s), prev });
    }
    assert_eq!(i3.recv().await.unwrap().id.unwrap().seq, 8);
}

#[test]
fn losing_a_channel_evicts_its_subscribers() {
    let hub = cache_hub();
    let a = ch("a");
    let (o, inbox) = outbox(hub.next_conn(), None, 16);
    hub.prepare(&a, KEEP);
    hub.subscribe(&a, &o, Since::Live, KEEP, Some(Fill { head: 0, after: Vec::new(), complete: true })).unwrap();
    assert!(!hub.forget(&a), "still subscribed");
    hub.lose(&a);
    assert!(inbox.evicted().is_cancelled());
    assert!(hub.position(&a).is_none());
    assert_eq!(hub.stats().subscriptions.get(), 0);
}

fn cache_hub() -> Hub {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    drop(rx);
    Hub::cache(HubStats::default(), tx)
}
