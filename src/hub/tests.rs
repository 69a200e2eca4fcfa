//! Hub unit tests: ids, history, recovery and eviction, without any socket.

use std::time::Duration;

use super::*;

fn hub() -> Hub {
    Hub::new(Epoch(77), HubStats::default())
}

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn draft(channel: &str, n: u32) -> Draft {
    Draft {
        channel: ch(channel),
        event: None,
        data: RawValue::from_string(n.to_string()).unwrap(),
        ephemeral: false,
        exclude: None,
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
    let sub = hub.subscribe(&ch("a"), &o, Since::After { epoch: Epoch(77), seq: ids[1].seq }, KEEP);
    assert!(sub.recovered);
    assert_eq!(sub.replay.iter().map(|m| m.id.unwrap()).collect::<Vec<_>>(), ids[2..].to_vec());
    // After ids[0]: ids[1] was trimmed, so the gap cannot be filled.
    let (o2, _i2) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o2, Since::After { epoch: Epoch(77), seq: ids[0].seq }, KEEP);
    assert!(!sub.recovered);
    assert!(sub.replay.is_empty());
    // Another epoch (a restart) is never resumable.
    let (o3, _i3) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o3, Since::After { epoch: Epoch(1), seq: 4 }, KEEP);
    assert!(!sub.recovered);
}

#[test]
fn ephemeral_messages_have_no_id_and_no_history() {
    let hub = hub();
    let mut d = draft("a", 1);
    d.ephemeral = true;
    assert!(hub.publish(d, KEEP).id.is_none());
    let (o, _i) = outbox(hub.next_conn(), None, 16);
    let sub = hub.subscribe(&ch("a"), &o, Since::After { epoch: Epoch(77), seq: 0 }, KEEP);
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
    let sub = hub.subscribe(&ch("a"), &o, Since::After { epoch: Epoch(77), seq: first.seq - 1 }, short);
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
    d.exclude = Some(a.conn);
    hub.publish(d, KEEP);
    assert!(bi.recv().await.is_some());
    assert!(ai.try_recv().is_none());
    assert_eq!(hub.parse_conn(&hub.conn_name(a.conn)), Some(a.conn));
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
