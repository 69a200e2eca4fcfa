//! Webhooks to the backend (SPEC §7): client messages on `client_publish: backend`
//! channels, decided by the backend, and lifecycle events (connect, disconnect,
//! subscribe, unsubscribe), batched and retried. Every POST is checked for a valid
//! `X-Sidewire-Signature` by the fake backend, as a real one would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::backend::{Backend, EventReply, Gate, SECRET};
use support::sse::SseReader;
use support::ws::{WsClient, metric, wait_metric};
use support::{TestServer, http};

/// `client_publish: backend` on `chat:*`; only `message` events.
fn message_yaml(backend: &Backend) -> String {
    format!(
        r#"
backend: {{ url: "{}" }}
webhooks: {{ secret: "{SECRET}", events: [message] }}
channels:
  - {{ match: "chat:*", client_publish: backend, history: {{ size: 10, ttl: 1h }} }}
"#,
        backend.url()
    )
}

/// Every lifecycle event, no backend-published channel.
fn lifecycle_yaml(backend: &Backend) -> String {
    format!(
        r#"
backend: {{ url: "{}" }}
webhooks: {{ secret: "{SECRET}", events: [connect, disconnect, subscribe, unsubscribe] }}
channels:
  - {{ match: "room:*" }}
"#,
        backend.url()
    )
}

async fn backend() -> Backend {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["chat:*", "room:*"]);
    backend.allow("tok-b", "bob", &["chat:*", "room:*"]);
    backend
}

/// `alice` publishing and `bob` listening on `chat:1`; alice's `connection` id.
async fn chat(server: &TestServer) -> (WsClient, WsClient, Value) {
    let (mut alice, welcome) = WsClient::open(server, "/ws?token=tok-a").await;
    alice.subscribe("chat:1", None).await;
    let (mut bob, _) = WsClient::open(server, "/ws?token=tok-b").await;
    bob.subscribe("chat:1", None).await;
    (alice, bob, welcome["connection"].clone())
}

async fn say(alice: &mut WsClient, text: &str) {
    let req = json!({ "type": "publish", "channel": "chat:1", "event": "chat", "data": { "text": text }, "ref": "p1" });
    alice.send_json(req).await;
}

#[tokio::test]
async fn client_message_goes_to_the_backend_which_publishes_its_own() {
    let backend = backend().await;
    backend.respond(|event, _| {
        let moderated = json!({ "text": "HELLO (moderated)", "by": event["user"] });
        let publish = json!([{ "channel": event["channel"], "event": "chat", "data": moderated }]);
        EventReply::ok(json!({ "publish": publish, "reply": { "accepted": true } }))
    });
    let server = TestServer::start(&message_yaml(&backend)).await;
    let (mut alice, mut bob, connection) = chat(&server).await;
    say(&mut alice, "hello").await;

    let msg = bob.expect("message").await;
    assert_eq!((&msg["channel"], &msg["event"]), (&json!("chat:1"), &json!("chat")));
    assert_eq!(
        msg["data"],
        json!({ "text": "HELLO (moderated)", "by": "alice" }),
        "the backend's message, not the original"
    );
    // The sender sees its reply and (being subscribed) the message, in either order.
    let (a, b) = (alice.next_json().await, alice.next_json().await);
    let published = if a["type"] == "published" { a } else { b };
    assert_eq!(published["ref"], "p1");
    assert_eq!(published["channel"], "chat:1");
    assert_eq!(published["reply"], json!({ "accepted": true }));
    assert_eq!(published["id"], msg["id"]);

    let posts = backend.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let post = &posts[0];
    assert!(post.signed, "X-Sidewire-Signature must verify: {:?}", post.headers);
    let sig = post.headers["x-sidewire-signature"].to_str().unwrap();
    assert!(sig.starts_with("t=") && sig.contains(",v1="), "{sig}");
    assert_eq!(post.headers["content-type"], "application/json");
    let id = post.body["id"].as_str().expect("every event has an id").to_owned();
    assert_ne!(json!(id), connection, "event ids are not connection ids");
    let expected = json!({
        "type": "message",
        "id": id,
        "connection": connection,
        "user": "alice",
        "info": { "name": "alice" },
        "channel": "chat:1",
        "event": "chat",
        "data": { "text": "hello" },
    });
    assert_eq!(post.body, expected);
    bob.assert_quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn backend_may_accept_without_publishing() {
    let backend = backend().await;
    backend.respond(|_, _| EventReply::ok(json!({ "reply": "noted" })));
    let server = TestServer::start(&message_yaml(&backend)).await;
    let (mut alice, mut bob, _) = chat(&server).await;
    say(&mut alice, "hello").await;
    let published = alice.expect("published").await;
    assert_eq!((&published["reply"], &published["id"]), (&json!("noted"), &Value::Null));
    alice.assert_quiet().await;
    bob.assert_quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn backend_refusal_is_rejected_and_failure_unavailable() {
    let backend = backend().await;
    backend.respond(|event, _| match event["data"]["text"].as_str() {
        Some("spam") => EventReply::status(422),
        _ => EventReply::status(500),
    });
    let server = TestServer::start(&message_yaml(&backend)).await;
    let (mut alice, mut bob, _) = chat(&server).await;
    say(&mut alice, "spam").await;
    assert_eq!(alice.expect_error("rejected").await["ref"], "p1");
    say(&mut alice, "hello").await;
    assert_eq!(alice.expect_error("unavailable").await["ref"], "p1");
    bob.assert_quiet().await;
    assert!(backend.posts().iter().all(|p| p.signed));
    server.stop().await;
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn lifecycle_events_describe_the_connection() {
    let backend = backend().await;
    let server = TestServer::start(&lifecycle_yaml(&backend)).await;
    let (mut alice, welcome) = WsClient::open(&server, "/ws?token=tok-a").await;
    alice.subscribe("room:1", None).await;
    alice.send_json(json!({ "type": "unsubscribe", "channel": "room:1" })).await;
    alice.expect("unsubscribed").await;
    alice.ws.close(None).await.unwrap();
    while alice.next_frame().await.is_some() {}
    backend.wait_event("disconnect", |e| e["type"] == "disconnect").await;

    let events = backend.events();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["connect", "subscribe", "unsubscribe", "disconnect"]);
    for e in &events {
        assert_eq!(e["connection"], welcome["connection"], "{e}");
        assert_eq!(e["user"], "alice", "{e}");
        assert_eq!(e["info"], json!({ "name": "alice" }), "{e}");
        let channel = matches!(e["type"].as_str(), Some("subscribe" | "unsubscribe"));
        assert_eq!(e.get("channel").cloned(), channel.then(|| json!("room:1")), "{e}");
    }
    assert!(backend.posts().iter().all(|p| p.signed));
    server.stop().await;
}

#[tokio::test]
async fn sse_streams_report_their_lifecycle_too() {
    let backend = backend().await;
    let server = TestServer::start(&lifecycle_yaml(&backend)).await;
    let url = server.url("/events?channel=room:1&channel=room:2&token=tok-a");
    let mut sse = SseReader::open(&http(), &url, &[]).await;
    sse.event().await;
    backend.wait_event("subscribe room:2", |e| e["type"] == "subscribe" && e["channel"] == "room:2").await;
    drop(sse);
    backend.wait_event("disconnect", |e| e["type"] == "disconnect").await;
    let events = backend.events();
    let seen: Vec<(&str, Option<&str>)> =
        events.iter().map(|e| (e["type"].as_str().unwrap(), e["channel"].as_str())).collect();
    assert_eq!(
        seen,
        [("connect", None), ("subscribe", Some("room:1")), ("subscribe", Some("room:2")), ("disconnect", None)]
    );
    assert!(events.iter().all(|e| e["connection"] == events[0]["connection"] && e["user"] == "alice"));
    server.stop().await;
}

#[tokio::test]
async fn waiting_events_are_batched_into_one_post() {
    let backend = backend().await;
    let gate = Gate::new();
    let first = gate.clone();
    backend.respond(move |_, i| EventReply { status: 200, body: json!({}), hold: (i == 0).then(|| first.clone()) });
    let server = TestServer::start(&lifecycle_yaml(&backend)).await;
    let (mut alice, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    backend.wait_posts(1).await;
    // The sender is stuck on the first POST; each reply below means its event is queued.
    for room in ["room:1", "room:2", "room:3"] {
        alice.subscribe(room, None).await;
    }
    let (_bob, _) = WsClient::open(&server, "/ws?token=tok-b").await;
    gate.open();

    let posts = backend.wait_posts(2).await;
    assert_eq!(posts[0].body["type"], "connect");
    let batch = posts[1].body.as_array().unwrap_or_else(|| panic!("not a batch: {}", posts[1].body));
    let seen: Vec<(&str, &str)> =
        batch.iter().map(|e| (e["type"].as_str().unwrap(), e["user"].as_str().unwrap())).collect();
    assert_eq!(seen, [("subscribe", "alice"), ("subscribe", "alice"), ("subscribe", "alice"), ("connect", "bob")]);
    assert!(posts.iter().all(|p| p.signed));
    server.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_until_the_events_arrive() {
    let backend = backend().await;
    // Six failures: more than the five attempts an older sidewire gave a batch.
    backend.respond(|_, i| if i < 6 { EventReply::status(500) } else { EventReply::ok(json!({})) });
    let server = TestServer::start(&lifecycle_yaml(&backend)).await;
    let dropped = r#"sidewire_webhook_dropped_total{reason="expired"}"#;
    assert_eq!(metric(&server, dropped).await, Some(0.0), "the series exists before anything is dropped");
    let (_alice, welcome) = WsClient::open(&server, "/ws?token=tok-a").await;
    let posts = backend.wait_posts(7).await;
    for post in &posts {
        assert_eq!(post.body["type"], "connect");
        assert_eq!(post.body["connection"], welcome["connection"]);
        assert_eq!(post.body["id"], posts[0].body["id"], "a retry carries the same id");
        assert!(post.signed);
    }
    assert_eq!(metric(&server, dropped).await, Some(0.0));
    server.stop().await;
}

#[tokio::test]
async fn refused_lifecycle_events_are_dropped_and_counted() {
    let backend = backend().await;
    backend.respond(|_, _| EventReply::status(400));
    let server = TestServer::start(&lifecycle_yaml(&backend)).await;
    let (mut alice, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    backend.wait_posts(1).await;
    alice.subscribe("room:1", None).await;
    wait_metric(&server, r#"sidewire_webhook_dropped_total{reason="rejected"}"#, 2.0).await;
    assert_eq!(backend.posts().len(), 2, "a refusal is not retried");
    // The client path never noticed.
    alice.assert_quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn events_give_up_after_retry_for_and_are_counted() {
    let backend = backend().await;
    backend.respond(|_, _| EventReply::status(500));
    let yaml = lifecycle_yaml(&backend).replace("events: [connect", "retry_for: 1s, events: [connect");
    let server = TestServer::start(&yaml).await;
    let (_alice, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    wait_metric(&server, r#"sidewire_webhook_dropped_total{reason="expired"}"#, 1.0).await;
    server.stop().await;
}

#[tokio::test]
async fn every_event_has_its_own_id_and_shutdown_flushes_the_disconnects() {
    let backend = backend().await;
    let server = TestServer::start(&lifecycle_yaml(&backend)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(WsClient::open(&server, "/ws?token=tok-a").await.0);
    }
    backend.wait_event("three connects", |_| backend_connects(&backend) == 3).await;
    // Shutdown closes the three sessions; their disconnects still reach the backend.
    let closing: Vec<_> =
        clients.into_iter().map(|mut c| tokio::spawn(async move { c.expect_close().await })).collect();
    server.stop().await;
    for c in closing {
        assert_eq!(c.await.unwrap().0, 1001);
    }
    let events = backend.events();
    let disconnects = events.iter().filter(|e| e["type"] == "disconnect").count();
    assert_eq!(disconnects, 3, "{events:#?}");
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "ids are unique");
}

fn backend_connects(backend: &Backend) -> usize {
    backend.events().iter().filter(|e| e["type"] == "connect").count()
}
