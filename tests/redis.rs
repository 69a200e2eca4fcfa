//! Many instances on one Redis (SPEC §10), against a real `redis-server` per test: every
//! subscriber on every instance gets each message once and in id order, cursors resume
//! on any instance, idempotency keys hold across instances, and Redis faults (killed,
//! hung, pub/sub connection killed, restarted empty) are survived as the spec says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::backend::Backend;
use support::realtime::{eventually, metric, metrics, sse, within};
use support::redis::RedisServer;
use support::ws::WsClient;
use support::{TestServer, http};

/// Anonymous clients on public channels with history; the broker on `redis`.
fn config(redis: &RedisServer) -> String {
    format!(
        r#"
auth: {{ anonymous: true }}
channels:
  - {{ match: "room:*", public: true, client_publish: broadcast, history: {{ size: 100, ttl: 1h }}, ephemeral: [typing] }}
broker: {{ kind: redis, url: "{}", key_prefix: "t:", timeout: 500ms }}
limits: {{ client_rate: {{ per_second: 1000, burst: 1000 }} }}
"#,
        redis.url()
    )
}

async fn ready(server: &TestServer) {
    eventually("/readyz 200", || async {
        let res = http().get(server.admin_url("/readyz")).send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await;
}

async fn readyz(server: &TestServer) -> u16 {
    http().get(server.admin_url("/readyz")).send().await.unwrap().status().as_u16()
}

async fn start(redis: &RedisServer) -> TestServer {
    let server = TestServer::start(&config(redis)).await;
    ready(&server).await;
    server
}

async fn publish_raw(server: &TestServer, body: Value) -> reqwest::Response {
    within("a publish response", http().post(server.admin_url("/publish")).json(&body).send()).await.unwrap()
}

async fn publish(server: &TestServer, channel: &str, data: Value) -> String {
    let res = publish_raw(server, json!({ "channel": channel, "data": data })).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    v["ids"][0].as_str().unwrap().to_owned()
}

/// The `data` and `id` of the next `message` frame.
async fn next_message(ws: &mut WsClient) -> (Value, String) {
    let m = ws.expect("message").await;
    (m["data"].clone(), m["id"].as_str().unwrap().to_owned())
}

fn seq_of(id: &str) -> u64 {
    id.rsplit('.').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_publish_on_any_instance_reaches_every_instance_once() {
    let redis = RedisServer::start().await;
    let (a, b) = (start(&redis).await, start(&redis).await);
    let (mut on_a, _) = WsClient::open(&a, "/ws").await;
    let (mut on_b, _) = WsClient::open(&b, "/ws").await;
    on_a.subscribe("room:1", None).await;
    on_b.subscribe("room:1", None).await;
    let mut stream = sse(&b, "channel=room:1").await;
    let first = publish(&a, "room:1", json!("from a")).await;
    let second = publish(&b, "room:1", json!("from b")).await;
    assert!(seq_of(&first) < seq_of(&second), "{first} < {second}");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(next_message(ws).await, (json!("from a"), first.clone()));
        assert_eq!(next_message(ws).await, (json!("from b"), second.clone()));
        ws.assert_quiet().await;
    }
    let ev = stream.next().await.unwrap();
    assert_eq!((ev.id.as_deref(), ev.data.as_deref()), (Some(first.as_str()), Some("from a")));
    let ev = stream.next().await.unwrap();
    assert_eq!((ev.id.as_deref(), ev.data.as_deref()), (Some(second.as_str()), Some("from b")));
    // A client broadcast on B reaches A too, stamped with its (anonymous: null) sender;
    // ephemeral events carry no id; with echo off, B does not get its own back.
    on_b.send_json(json!({ "type": "subscribe", "channel": "room:1", "echo": false })).await;
    on_b.expect("subscribed").await;
    on_b.send_json(json!({ "type": "publish", "channel": "room:1", "event": "typing", "data": 1 })).await;
    let typing = on_a.expect("message").await;
    assert_eq!((typing["event"].as_str(), typing.get("id")), (Some("typing"), None));
    assert_eq!(typing["user"], Value::Null);
    assert!(typing.get("user").is_some(), "client publishes carry user: {typing}");
    on_b.expect("published").await;
    on_b.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn concurrent_publishers_on_two_instances_deliver_in_one_order() {
    let redis = RedisServer::start().await;
    let (a, b) = (start(&redis).await, start(&redis).await);
    let (mut on_a, _) = WsClient::open(&a, "/ws").await;
    let (mut on_b, _) = WsClient::open(&b, "/ws").await;
    on_a.subscribe("room:race", None).await;
    on_b.subscribe("room:race", None).await;
    const N: usize = 100;
    let send = |server: &TestServer, tag: &'static str| {
        let url = server.admin_url("/publish");
        async move {
            let client = http();
            for i in 0..N {
                let body = json!({ "channel": "room:race", "data": format!("{tag}{i}") });
                assert_eq!(client.post(&url).json(&body).send().await.unwrap().status(), 200);
            }
        }
    };
    tokio::join!(send(&a, "a"), send(&b, "b"));
    let mut seen = Vec::new();
    for ws in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..2 * N {
            got.push(next_message(ws).await);
        }
        ws.assert_quiet().await;
        let seqs: Vec<u64> = got.iter().map(|(_, id)| seq_of(id)).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ids rise strictly, no duplicate");
        // Each publisher's own messages keep their order.
        for tag in ["a", "b"] {
            let mine: Vec<String> =
                got.iter().filter_map(|(d, _)| d.as_str().filter(|s| s.starts_with(tag)).map(str::to_owned)).collect();
            assert_eq!(mine, (0..N).map(|i| format!("{tag}{i}")).collect::<Vec<_>>());
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "both instances deliver the same sequence");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_cursor_from_one_instance_resumes_on_another() {
    let redis = RedisServer::start().await;
    let (a, b) = (start(&redis).await, start(&redis).await);
    let first = publish(&a, "room:r", json!(1)).await;
    let missed: Vec<String> = vec![publish(&a, "room:r", json!(2)).await, publish(&b, "room:r", json!(3)).await];
    // WebSocket `since` on B (which never listened to room:r).
    let (mut ws, _) = WsClient::open(&b, "/ws").await;
    let sub = ws.subscribe("room:r", Some(&first)).await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(next_message(&mut ws).await, (json!(2), missed[0].clone()));
    assert_eq!(next_message(&mut ws).await, (json!(3), missed[1].clone()));
    ws.assert_quiet().await;
    // SSE Last-Event-ID on A.
    let res = http().get(a.url("/events?channel=room:r")).header("last-event-id", first.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    while !text.contains("data: 3\n") {
        use futures_util::StreamExt;
        let chunk = within("SSE replay", body.next()).await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!text.contains("event: reset"), "{text}");
    assert!(text.find("data: 2\n").unwrap() < text.find("data: 3\n").unwrap(), "{text}");
    // Long-poll `since` on B, answered at once from history.
    let url = b.url(&format!("/poll?channel=room:r&since={first}&timeout=0"));
    let poll: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = poll["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![missed[0].as_str(), missed[1].as_str()]);
    assert_eq!(poll["cursor"], missed[1].as_str());
    // A cursor of another epoch (another Redis, or garbage) is a failed resume.
    let sub = ws.subscribe("room:other", Some("zz.5")).await;
    assert_eq!(sub["recovered"], false);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_multi_channel_stream_cursor_resumes_on_another_instance() {
    let redis = RedisServer::start().await;
    let (a, b) = (start(&redis).await, start(&redis).await);
    publish(&a, "room:x", json!("x0")).await;
    publish(&a, "room:y", json!("y0")).await;
    // A long-poll on A gives a cursor covering both channels.
    let url = a.url("/poll?channel=room:x&channel=room:y&timeout=0");
    let start: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    let y1 = publish(&b, "room:y", json!("y1")).await;
    let x1 = publish(&a, "room:x", json!("x1")).await;
    // Resumed on B, by long-poll and by SSE: exactly what was missed, nothing before.
    let url = b.url(&format!("/poll?channel=room:x&channel=room:y&since={cursor}&timeout=0"));
    let poll: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    let mut got: Vec<&str> = poll["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    got.sort_unstable();
    let mut want = vec![x1.as_str(), y1.as_str()];
    want.sort_unstable();
    assert_eq!(got, want, "{poll}");
    assert!(poll.get("reset").is_none());
    let res = http()
        .get(b.url("/events?channel=room:x&channel=room:y"))
        .header("last-event-id", cursor.as_str())
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let mut text = String::new();
    while !(text.contains("data: x1\n") && text.contains("data: y1\n")) {
        use futures_util::StreamExt;
        let chunk = within("SSE replay", body.next()).await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // `data: x0`, not `x0`: a random epoch in the ids may spell "x0" (seen: `1xlx056`).
    assert!(!text.contains("data: x0\n") && !text.contains("data: y0\n") && !text.contains("event: reset"), "{text}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn idempotency_keys_hold_across_instances() {
    let redis = RedisServer::start().await;
    let (a, b) = (start(&redis).await, start(&redis).await);
    let (mut ws, _) = WsClient::open(&b, "/ws").await;
    ws.subscribe("room:i", None).await;
    let body = json!({ "channels": ["room:i", "room:j"], "data": "once", "idempotency_key": "order-17" });
    let first: Value = publish_raw(&a, body.clone()).await.json().await.unwrap();
    let retry = publish_raw(&b, body).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.json::<Value>().await.unwrap(), first, "the retry returns the first ids");
    assert_eq!(next_message(&mut ws).await.0, json!("once"));
    ws.assert_quiet().await;
    let other = json!({ "channel": "room:i", "data": "different", "idempotency_key": "order-17" });
    let conflict = publish_raw(&b, other).await;
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.json::<Value>().await.unwrap()["error"], "conflict");
    ws.assert_quiet().await;
    // A batch whose second message conflicts publishes nothing at all.
    let batch = json!({ "messages": [
        { "channel": "room:i", "data": "fresh" },
        { "channel": "room:i", "data": "changed", "idempotency_key": "order-17" },
    ]});
    assert_eq!(publish_raw(&a, batch).await.status(), 409);
    ws.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_killed_then_back_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_durable().await;
    let (a, b) = (start(&redis).await, start(&redis).await);
    let (mut ws, _) = WsClient::open(&b, "/ws").await;
    ws.subscribe("room:k", None).await;
    let before = publish(&a, "room:k", json!("before")).await;
    assert_eq!(next_message(&mut ws).await.1, before);
    redis.kill();
    eventually("/readyz 503 on both", || async { (readyz(&a).await == 503 && readyz(&b).await == 503).then_some(()) })
        .await;
    let refused = publish_raw(&a, json!({ "channel": "room:k", "data": "lost" })).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "unavailable");
    // Open connections stay up meanwhile.
    ws.assert_quiet().await;
    redis.restart().await;
    let back = std::time::Instant::now();
    ready(&a).await;
    ready(&b).await;
    assert!(back.elapsed() < Duration::from_secs(5), "ready again {:?} after Redis returned", back.elapsed());
    let after = publish(&a, "room:k", json!("after")).await;
    assert!(seq_of(&after) > seq_of(&before));
    assert_eq!(next_message(&mut ws).await, (json!("after"), after));
    ws.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_killed_pubsub_connection_loses_and_duplicates_nothing() {
    let redis = RedisServer::start().await;
    let (a, b) = (start(&redis).await, start(&redis).await);
    let (mut ws, _) = WsClient::open(&b, "/ws").await;
    ws.subscribe("room:p", None).await;
    const N: usize = 200;
    let url = a.admin_url("/publish");
    let publisher = tokio::spawn(async move {
        let client = http();
        let mut ids = Vec::new();
        for i in 0..N {
            let res = client.post(&url).json(&json!({ "channel": "room:p", "data": i })).send().await.unwrap();
            assert_eq!(res.status(), 200);
            ids.push(res.json::<Value>().await.unwrap()["ids"][0].as_str().unwrap().to_owned());
        }
        ids
    });
    // Kill every pub/sub connection while messages flow, twice.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(redis.cmd("CLIENT KILL TYPE pubsub").await.starts_with(':'));
    }
    let ids = publisher.await.unwrap();
    let mut got = Vec::new();
    for _ in 0..N {
        got.push(next_message(&mut ws).await.1);
    }
    assert_eq!(got, ids, "every acknowledged message, once, in order");
    ws.assert_quiet().await;
    // The kills did happen to B's connection, and it came back by itself.
    let resubscribed = metric(&metrics(&b).await, "sidewire_broker_resubscribes_total");
    assert!(resubscribed >= 1.0, "resubscribes: {resubscribed}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_hung_redis_fails_publishes_within_the_timeout() {
    let redis = RedisServer::start().await;
    let a = start(&redis).await;
    let (mut ws, _) = WsClient::open(&a, "/ws").await;
    ws.subscribe("room:h", None).await;
    redis.pause();
    let started = std::time::Instant::now();
    let res = publish_raw(&a, json!({ "channel": "room:h", "data": "stuck" })).await;
    assert_eq!(res.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(1500), "answered after {:?}", started.elapsed());
    eventually("/readyz 503", || async { (readyz(&a).await == 503).then_some(()) }).await;
    ws.assert_quiet().await;
    redis.resume();
    ready(&a).await;
    let id = publish(&a, "room:h", json!("unstuck")).await;
    assert_eq!(next_message(&mut ws).await, (json!("unstuck"), id));
    a.stop().await;
}

#[tokio::test]
async fn redis_restarted_empty_resets_clients_instead_of_silence() {
    let mut redis = RedisServer::start().await;
    let a = start(&redis).await;
    let (mut ws, _) = WsClient::open(&a, "/ws").await;
    ws.subscribe("room:e", None).await;
    let old = publish(&a, "room:e", json!("old")).await;
    assert_eq!(next_message(&mut ws).await.1, old);
    redis.restart_empty().await;
    ready(&a).await;
    // The first publish after the restart shows the new epoch: subscribers are sent away
    // to resume, and their resume is a reset.
    publish(&a, "room:e", json!("new")).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, 1013);
    let (mut again, _) = WsClient::open(&a, "/ws").await;
    let sub = again.subscribe("room:e", Some(&old)).await;
    assert_eq!(sub["recovered"], false);
    let res = http().get(a.url("/events?channel=room:e")).header("last-event-id", old.as_str()).send().await.unwrap();
    let mut body = res.bytes_stream();
    use futures_util::StreamExt;
    let mut text = String::new();
    while !text.contains("event: reset") {
        let chunk = within("SSE reset", body.next()).await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    a.stop().await;
}

// ---------------------------------------------------------------- presence

/// Signed-in users (alice, bob) on presence channels `room:*`; heartbeat 1s, so a dead
/// instance's members leave within 3 s.
fn presence_config(redis: &RedisServer, backend: &Backend) -> String {
    presence_yaml(&format!("{{ kind: redis, url: \"{}\", key_prefix: \"t:\", timeout: 500ms }}", redis.url()), backend)
}

fn presence_yaml(broker: &str, backend: &Backend) -> String {
    format!(
        r#"
backend: {{ url: "{}" }}
channels:
  - {{ match: "room:*", presence: true, client_publish: broadcast }}
broker: {broker}
heartbeat: {{ interval: 1s, timeout: 10s }}
"#,
        backend.url(),
    )
}

async fn presence_pair(redis: &RedisServer) -> (Backend, TestServer, TestServer) {
    presence_pair_on(&format!("{{ kind: redis, url: \"{}\", key_prefix: \"t:\", timeout: 500ms }}", redis.url())).await
}

async fn presence_pair_on(broker: &str) -> (Backend, TestServer, TestServer) {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["room:*"]);
    backend.allow("tok-b", "bob", &["room:*"]);
    let a = TestServer::start(&presence_yaml(broker, &backend)).await;
    let b = TestServer::start(&presence_yaml(broker, &backend)).await;
    ready(&a).await;
    ready(&b).await;
    (backend, a, b)
}

fn member(user: &str, connections: u32) -> Value {
    json!({ "user": user, "connections": connections, "info": { "name": user } })
}

async fn tab(server: &TestServer, token: &str) -> (WsClient, Value) {
    let (mut ws, _) = WsClient::open(server, &format!("/ws?token={token}")).await;
    let subscribed = ws.subscribe("room:1", None).await;
    (ws, subscribed)
}

#[tokio::test]
async fn presence_is_cluster_wide_and_joins_once_per_user() {
    let redis = RedisServer::start().await;
    let (_backend, a, b) = presence_pair(&redis).await;
    let (mut bob, subscribed) = tab(&a, "tok-b").await;
    assert_eq!(subscribed["presence"], json!([member("bob", 1)]));
    assert_eq!(bob.expect("join").await["user"], "bob");
    // Alice joins on B: bob (on A) sees one join, with her info.
    let (mut alice1, subscribed) = tab(&b, "tok-a").await;
    assert_eq!(subscribed["presence"], json!([member("alice", 1), member("bob", 1)]));
    let join = bob.expect("join").await;
    assert_eq!(join, json!({ "type": "join", "channel": "room:1", "user": "alice", "info": { "name": "alice" } }));
    assert_eq!(alice1.expect("join").await["user"], "alice");
    // A second alice tab, on A this time: counts change, nobody hears a join.
    let (mut alice2, subscribed) = tab(&a, "tok-a").await;
    assert_eq!(subscribed["presence"], json!([member("alice", 2), member("bob", 1)]));
    for ws in [&mut bob, &mut alice1, &mut alice2] {
        ws.assert_quiet().await;
    }
    let (status, body) = support::backend::presence(&b, "room:1").await;
    assert_eq!(status, 200);
    assert_eq!(body["users"], json!([member("alice", 2), member("bob", 1)]));
    // Her tab on B closes: still present through A; then the last one: one leave.
    alice1.ws.close(None).await.unwrap();
    eventually("alice down to 1 connection", || async {
        let (_, body) = support::backend::presence(&a, "room:1").await;
        (body["users"] == json!([member("alice", 1), member("bob", 1)])).then_some(())
    })
    .await;
    bob.assert_quiet().await;
    alice2.ws.close(None).await.unwrap();
    assert_eq!(bob.expect("leave").await, json!({ "type": "leave", "channel": "room:1", "user": "alice" }));
    bob.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}

/// A sidewire process (the real binary) on free ports, killed with SIGKILL on drop.
struct Process {
    child: std::process::Child,
    public: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Process {
    async fn start(yaml: &str) -> Self {
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (public, admin) = (port(), port());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let yaml = format!("listen: \"{public}\"\nadmin: {{ listen: \"{admin}\" }}\n{yaml}");
        std::fs::write(&path, yaml).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sidewire"))
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually("the sidewire process ready", || async move {
            let res = http().get(format!("http://{admin}/readyz")).send().await.ok()?;
            (res.status() == 200).then_some(())
        })
        .await;
        Self { child, public, _dir: dir }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn members_of_an_instance_that_died_leave_within_three_heartbeats() {
    let redis = RedisServer::start().await;
    let (backend, a, b) = presence_pair(&redis).await;
    b.stop().await;
    let (mut bob, _) = tab(&a, "tok-b").await;
    bob.expect("join").await;
    // Alice is on another sidewire process, which then dies without goodbye (SIGKILL).
    let mut other = Process::start(&presence_config(&redis, &backend)).await;
    let url = format!("ws://{}/ws?token=tok-a", other.public);
    let (mut alice, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    use futures_util::SinkExt;
    let sub = json!({ "type": "subscribe", "channel": "room:1" }).to_string();
    alice.send(tokio_tungstenite::tungstenite::Message::text(sub)).await.unwrap();
    assert_eq!(bob.expect("join").await["user"], "alice");
    other.child.kill().unwrap();
    let died = std::time::Instant::now();
    let leave = within("alice's leave", bob.expect("leave")).await;
    assert_eq!(leave["user"], "alice");
    assert!(died.elapsed() < Duration::from_secs(3) + Duration::from_millis(1500), "{:?}", died.elapsed());
    drop(alice);
    a.stop().await;
}

// ---------------------------------------------------------------- Redis Cluster

#[tokio::test]
async fn a_cluster_spreads_channels_over_shards_and_keeps_every_guarantee() {
    let cluster = support::redis::RedisCluster::start(3).await;
    let yaml = format!(
        r#"
auth: {{ anonymous: true }}
channels:
  - {{ match: "room:*", public: true, client_publish: broadcast, history: {{ size: 100, ttl: 1h }} }}
broker: {{ kind: redis, cluster: true, url: "{}", key_prefix: "c:", timeout: 1s }}
limits: {{ client_rate: {{ per_second: 1000, burst: 1000 }} }}
"#,
        cluster.url()
    );
    let a = TestServer::start(&yaml).await;
    let b = TestServer::start(&yaml).await;
    ready(&a).await;
    ready(&b).await;
    let channels: Vec<String> = (0..8).map(|i| format!("room:{i}")).collect();
    let (mut ws, _) = WsClient::open(&a, "/ws").await;
    for c in &channels {
        ws.subscribe(c, None).await;
    }
    // One message to every channel, published on B: all shards take part.
    let body = json!({ "channels": channels, "data": "everywhere", "idempotency_key": "k1" });
    let res = publish_raw(&b, body.clone()).await;
    assert_eq!(res.status(), 200);
    let ids: Vec<String> = res.json::<Value>().await.unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 8);
    let mut got = std::collections::HashMap::new();
    for _ in 0..8 {
        let m = ws.expect("message").await;
        got.insert(m["channel"].as_str().unwrap().to_owned(), m["id"].as_str().unwrap().to_owned());
    }
    ws.assert_quiet().await;
    for (c, id) in channels.iter().zip(&ids) {
        assert_eq!(got.get(c), Some(id), "{c}");
    }
    // Every shard holds some of the channels.
    for node in &cluster.nodes {
        let keys = node.cmd("DBSIZE").await;
        assert_ne!(keys.trim(), ":0", "a shard with no channel: {keys}");
    }
    // The retry on A returns the same ids and delivers nothing.
    let retry = publish_raw(&a, body).await;
    assert_eq!(retry.json::<Value>().await.unwrap()["ids"], json!(ids));
    ws.assert_quiet().await;
    // Order and resume per channel, across instances.
    let first = publish(&b, "room:3", json!(1)).await;
    let second = publish(&a, "room:3", json!(2)).await;
    assert_eq!(next_message(&mut ws).await, (json!(1), first.clone()));
    assert_eq!(next_message(&mut ws).await, (json!(2), second.clone()));
    let (mut late, _) = WsClient::open(&b, "/ws").await;
    let sub = late.subscribe("room:3", Some(&first)).await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(next_message(&mut late).await, (json!(2), second));
    late.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn cluster_presence_joins_and_leaves_once() {
    let cluster = support::redis::RedisCluster::start(3).await;
    let broker =
        format!("{{ kind: redis, cluster: true, url: \"{}\", key_prefix: \"cp:\", timeout: 1s }}", cluster.url());
    let (_backend, a, b) = presence_pair_on(&broker).await;
    let (mut bob, _) = tab(&a, "tok-b").await;
    assert_eq!(bob.expect("join").await["user"], "bob");
    let (alice, subscribed) = tab(&b, "tok-a").await;
    assert_eq!(subscribed["presence"], json!([member("alice", 1), member("bob", 1)]));
    assert_eq!(bob.expect("join").await["user"], "alice");
    drop(alice);
    assert_eq!(bob.expect("leave").await["user"], "alice");
    bob.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}
