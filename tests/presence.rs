//! Presence (SPEC §4 `join`/`leave`/`presence`, §7 `GET /presence`): once per user, not
//! per connection; connection counts in `subscribed`, in the `presence` reply and on the
//! admin endpoint; and counts that return to zero however a connection ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::TestServer;
use support::backend::{Backend, counts, presence, wait_counts, ws_stalled};
use support::realtime::{DEADLINE, expect_type, send_json};
use support::sse::SseReader;
use support::ws::{Publisher, WsClient};

fn yaml(backend: &Backend, limits: &str) -> String {
    format!(
        r#"
backend: {{ url: "{}" }}
channels:
  - {{ match: "room:*", presence: true, client_publish: broadcast }}
  - {{ match: "plain:*" }}
limits: {{ client_rate: {{ per_second: 1000, burst: 1000 }}{limits} }}
"#,
        backend.url()
    )
}

async fn start(limits: &str) -> (Backend, TestServer) {
    let backend = Backend::start().await;
    for (token, user) in [("tok-a", "alice"), ("tok-b", "bob"), ("tok-c", "carol"), ("tok-s", "sam")] {
        backend.allow(token, user, &["room:*", "plain:*"]);
    }
    let server = TestServer::start(&yaml(&backend, limits)).await;
    (backend, server)
}

/// Opens a tab of the user behind `token` and subscribes it to `room:1`.
async fn tab(server: &TestServer, token: &str) -> (WsClient, serde_json::Value) {
    let (mut ws, _) = WsClient::open(server, &format!("/ws?token={token}")).await;
    let subscribed = ws.subscribe("room:1", None).await;
    (ws, subscribed)
}

async fn hang_up(mut ws: WsClient) {
    ws.ws.close(None).await.unwrap();
    while ws.next_frame().await.is_some() {}
}

/// A `join` carries the member's `info` from the auth answer (SPEC §4).
fn join(user: &str) -> serde_json::Value {
    json!({ "type": "join", "channel": "room:1", "user": user, "info": { "name": user } })
}

/// A member as `subscribed.presence` and the `presence` reply list it.
fn member(user: &str, connections: u32) -> serde_json::Value {
    json!({ "user": user, "connections": connections, "info": { "name": user } })
}

#[tokio::test]
async fn join_and_leave_once_per_user_with_connection_counts() {
    let (_backend, server) = start("").await;
    let (mut bob, subscribed) = tab(&server, "tok-b").await;
    assert_eq!(subscribed["presence"], json!([member("bob", 1)]));
    assert_eq!(bob.next_json().await, join("bob"));

    let (mut tab1, subscribed) = tab(&server, "tok-a").await;
    let both = json!([member("alice", 1), member("bob", 1)]);
    assert_eq!(subscribed["presence"], both);
    assert_eq!(tab1.next_json().await, join("alice"));
    assert_eq!(bob.next_json().await, join("alice"));

    // A second tab of alice changes only her count.
    let (mut tab2, subscribed) = tab(&server, "tok-a").await;
    let two_tabs = json!([member("alice", 2), member("bob", 1)]);
    assert_eq!(subscribed["presence"], two_tabs);
    for ws in [&mut bob, &mut tab1, &mut tab2] {
        ws.assert_quiet().await;
    }
    bob.send_json(json!({ "type": "presence", "channel": "room:1", "ref": 9 })).await;
    assert_eq!(bob.next_json().await, json!({ "type": "presence", "channel": "room:1", "users": two_tabs, "ref": 9 }));
    let (status, body) = presence(&server, "room:1").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "channel": "room:1", "users": two_tabs }));

    hang_up(tab2).await;
    wait_counts(&server, "room:1", &[("alice", 1), ("bob", 1)]).await;
    bob.assert_quiet().await;
    tab1.assert_quiet().await;

    hang_up(tab1).await;
    assert_eq!(bob.next_json().await, json!({ "type": "leave", "channel": "room:1", "user": "alice" }));
    wait_counts(&server, "room:1", &[("bob", 1)]).await;
    bob.send_json(json!({ "type": "unsubscribe", "channel": "room:1" })).await;
    bob.expect("unsubscribed").await;
    wait_counts(&server, "room:1", &[]).await;
    server.stop().await;
}

#[tokio::test]
async fn long_polls_do_not_flap_presence() {
    let (_backend, server) = start("").await;
    let (mut bob, _) = tab(&server, "tok-b").await;
    bob.expect("join").await;
    let client = support::http();
    for _ in 0..3 {
        let res = client.get(server.url("/poll?channel=room:1&timeout=0&token=tok-a")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    // Each poll is a request, not a presence: no join/leave per poll.
    bob.assert_quiet().await;
    wait_counts(&server, "room:1", &[("bob", 1)]).await;
    server.stop().await;
}

#[tokio::test]
async fn presence_is_refused_where_it_is_not_enabled() {
    let (_backend, server) = start("").await;
    let (mut ws, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    let subscribed = ws.subscribe("plain:1", None).await;
    assert!(subscribed.get("presence").is_none(), "{subscribed}");
    ws.send_json(json!({ "type": "presence", "channel": "plain:1" })).await;
    ws.expect_error("bad_request").await;
    assert_eq!(presence(&server, "plain:1").await.0, 400);
    server.stop().await;
}

#[tokio::test]
async fn counts_return_to_zero_after_a_normal_close_and_a_tcp_drop() {
    let (_backend, server) = start("").await;
    let (mut carol, _) = tab(&server, "tok-c").await;
    carol.expect("join").await;

    let (a, _) = tab(&server, "tok-a").await;
    let (b, _) = tab(&server, "tok-a").await;
    wait_counts(&server, "room:1", &[("alice", 2), ("carol", 1)]).await;
    hang_up(a).await;
    // The socket goes away without a closing handshake.
    drop(b);
    wait_counts(&server, "room:1", &[("carol", 1)]).await;
    assert_eq!(carol.expect("join").await["user"], "alice");
    assert_eq!(carol.expect("leave").await["user"], "alice");
    carol.assert_quiet().await;

    // SSE streams count too, and leave when the client goes.
    let url = server.url("/events?channel=room:1&token=tok-b");
    let sse = SseReader::open(&support::http(), &url, &[]).await;
    wait_counts(&server, "room:1", &[("bob", 1), ("carol", 1)]).await;
    drop(sse);
    wait_counts(&server, "room:1", &[("carol", 1)]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_slow_consumer_leaves() {
    let (_backend, server) = start(", subscriber_queue: 32").await;
    let (mut carol, _) = tab(&server, "tok-c").await;
    carol.expect("join").await;
    let mut slow = ws_stalled(&server, "/ws?token=tok-s").await;
    send_json(&mut slow, json!({ "type": "subscribe", "channel": "room:1" })).await;
    expect_type(&mut slow, "subscribed").await;
    wait_counts(&server, "room:1", &[("carol", 1), ("sam", 1)]).await;
    assert_eq!(carol.expect("join").await["user"], "sam");

    // From here on `slow` reads nothing; publish until the hub drops it.
    let publisher = Publisher::new(&server);
    let data = json!({ "pad": "x".repeat(32 * 1024) }).to_string();
    let carol_reads = tokio::spawn(async move {
        loop {
            let frame = carol.next_json().await;
            if frame["type"] == "leave" {
                return (carol, frame);
            }
        }
    });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut sent = 0;
    while counts(&server, "room:1").await.len() == 2 {
        assert!(tokio::time::Instant::now() < deadline, "{sent} messages and the slow consumer is still there");
        for _ in 0..10 {
            publisher.publish("room:1", None, &data).await;
        }
        sent += 10;
    }
    wait_counts(&server, "room:1", &[("carol", 1)]).await;
    // Carol saw sam leave and was never disturbed otherwise.
    let (_carol, leave) = carol_reads.await.unwrap();
    assert_eq!(leave, json!({ "type": "leave", "channel": "room:1", "user": "sam" }));
    drop(slow);
    server.stop().await;
}

#[tokio::test]
async fn client_publishes_carry_the_sender_and_echo_false_skips_ones_own() {
    let (_backend, server) = start("").await;
    let (mut bob, _) = tab(&server, "tok-b").await;
    bob.expect("join").await;
    let (mut alice, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    alice.send_json(json!({ "type": "subscribe", "channel": "room:1", "echo": false })).await;
    alice.expect("subscribed").await;
    alice.expect("join").await;
    bob.expect("join").await;
    // The data claims to be from bob; the stamped user says who really sent it.
    let typing =
        json!({ "type": "publish", "channel": "room:1", "event": "typing", "data": { "user": "bob" }, "ref": 1 });
    alice.send_json(typing).await;
    assert_eq!(alice.expect("published").await["ref"], 1);
    let got = bob.expect("message").await;
    assert_eq!((got["user"].as_str(), got["data"]["user"].as_str()), (Some("alice"), Some("bob")), "{got}");
    // Alice does not get her own message back; bob's reaches her, stamped with his name.
    alice.assert_quiet().await;
    bob.send_json(json!({ "type": "publish", "channel": "room:1", "data": "hi" })).await;
    assert_eq!(alice.expect("message").await["user"], "bob");
    bob.expect("published").await;
    assert_eq!(bob.expect("message").await["user"], "bob", "echo is on by default");
    // Backend publishes carry no user at all.
    let admin = Publisher::new(&server);
    admin.publish("room:1", None, "1").await;
    let from_backend = bob.expect("message").await;
    assert!(from_backend.get("user").is_none(), "{from_backend}");
    server.stop().await;
}
