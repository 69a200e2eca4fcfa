//! Limits (SPEC §9, §4 close codes) through real sockets: one test per `limits` key,
//! each showing the refusal and that nothing else is affected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::realtime::*;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const LOCALHOST_2: &str = "127.0.0.2";

fn pad(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// Starts a long-poll that stays pending (nothing is published on its channel) and
/// waits until the server counts it.
async fn pending_poll(server: &TestServer, expected: f64) -> tokio::task::JoinHandle<u16> {
    let url = server.url("/poll?channel=idle&timeout=60s");
    let task = tokio::spawn(async move {
        let res = http().get(url).send().await.unwrap();
        res.status().as_u16()
    });
    wait_metric(server, &conns("longpoll"), |v| v == expected).await;
    task
}

#[tokio::test]
async fn max_connections_refuses_the_next_realtime_connection() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&yaml(&format!(
        "backend: {{ url: \"{}\" }}\nlimits: {{ max_connections: 3 }}",
        backend.url()
    )))
    .await;
    let client = http();
    let first = ws(&server).await;
    let _sse = sse(&server, "channel=a").await;
    let poll_task = pending_poll(&server, 1.0).await;

    assert_refused(&sse_try(&server, "channel=a").await.err().unwrap(), 429);
    assert_refused(&poll_refused(&client, &server, "channel=a&timeout=0").await, 429);
    match ws_try(&server, "/ws").await {
        Err(Refusal::Status(429)) => {}
        other => panic!("expected HTTP 429 before the upgrade, got {other:?}"),
    }
    // Pass-through is not a realtime connection and is never counted.
    let res = client.get(server.url("/plain")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    hang_up(first).await;
    let again = eventually("a freed slot", || async { ws_try(&server, "/ws").await.ok() }).await;
    hang_up(again).await;

    publish_ok(&client, &server, "idle", json!("wake")).await;
    assert_eq!(within("the pending poll", poll_task).await.unwrap(), 200);
    server.stop().await;
}

#[tokio::test]
async fn max_connections_per_ip_counts_each_address() {
    let server = TestServer::start(&yaml("limits: { max_connections_per_ip: 2 }")).await;
    let client = http();
    let first = ws(&server).await;
    let _sse = sse(&server, "channel=a").await;

    assert_refused(&sse_try(&server, "channel=a").await.err().unwrap(), 429);
    assert_refused(&poll_refused(&client, &server, "channel=a&timeout=0").await, 429);
    match ws_try(&server, "/ws").await {
        Err(Refusal::Status(429)) => {}
        other => panic!("expected HTTP 429 before the upgrade, got {other:?}"),
    }
    // Another address has its own allowance.
    let other: IpAddr = LOCALHOST_2.parse().unwrap();
    let from_other =
        ws_raw(&server, Some(other), false).await.unwrap_or_else(|r| panic!("{LOCALHOST_2} refused: {r:?}"));
    let _sse_other = sse_from(&http_from(other), &server, "channel=a").await.unwrap();

    hang_up(first).await;
    let again = eventually("a freed slot", || async { ws_try(&server, "/ws").await.ok() }).await;
    hang_up(again).await;
    hang_up(from_other).await;
    server.stop().await;
}

#[tokio::test]
async fn max_channels_per_connection() {
    let server = TestServer::start(&yaml("limits: { max_channels_per_connection: 2 }")).await;
    let client = http();
    let mut ws = ws(&server).await;
    subscribe(&mut ws, "a").await;
    subscribe(&mut ws, "b").await;
    send_json(&mut ws, json!({ "type": "subscribe", "channel": "c", "ref": 3 })).await;
    let err = expect_type(&mut ws, "error").await;
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["ref"], 3);
    // Still usable: resubscribing counts no new channel, and messages keep flowing.
    subscribe(&mut ws, "a").await;
    publish_ok(&client, &server, "b", json!({ "n": 1 })).await;
    let msg = expect_type(&mut ws, "message").await;
    assert_eq!((msg["channel"].clone(), msg["data"].clone()), (json!("b"), json!({ "n": 1 })));
    // Unsubscribing frees a place.
    send_json(&mut ws, json!({ "type": "unsubscribe", "channel": "a" })).await;
    expect_type(&mut ws, "unsubscribed").await;
    subscribe(&mut ws, "c").await;

    let three = "channel=a&channel=b&channel=c";
    assert_refused(&sse_try(&server, three).await.err().unwrap(), 400);
    assert_refused(&poll_refused(&client, &server, &format!("{three}&timeout=0")).await, 400);
    let _two = sse(&server, "channel=a&channel=b").await;
    hang_up(ws).await;
    server.stop().await;
}

#[tokio::test]
async fn max_message_bytes() {
    let server = TestServer::start(&yaml("limits: { max_message_bytes: 1024 }")).await;
    let client = http();
    let mut ws = ws(&server).await;
    subscribe(&mut ws, "a").await;
    // Below the limit: a client publish works.
    send_json(&mut ws, json!({ "type": "publish", "channel": "a", "data": pad(500) })).await;
    let mut kinds = vec![next_json(&mut ws).await["type"].clone(), next_json(&mut ws).await["type"].clone()];
    kinds.sort_by_key(Value::to_string);
    assert_eq!(kinds, vec![json!("message"), json!("published")]);

    // The publish API: data above the limit is 413 and nothing is delivered.
    let res = publish(&client, &server, "a", json!(pad(2000))).await;
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
    publish_ok(&client, &server, "a", json!("small")).await;
    let msg = expect_type(&mut ws, "message").await;
    assert_eq!(msg["data"], "small", "the oversized message must not be delivered");

    // A frame above the limit closes the connection with 1009.
    let frame = json!({ "type": "publish", "channel": "a", "data": pad(2000) }).to_string();
    ws.send(Message::text(frame)).await.unwrap();
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, Some(1009));
    server.stop().await;
}

#[tokio::test]
async fn client_rate_limits_then_closes_abusers() {
    let server = TestServer::start(&yaml("limits: { client_rate: { per_second: 2, burst: 3 } }")).await;
    let mut ws = ws(&server).await;
    // Four at once: the burst of three passes, the fourth is refused.
    for r in 0..4 {
        ws.feed(Message::text(json!({ "type": "ping", "ref": r }).to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let replies: Vec<Value> =
        [next_json(&mut ws).await, next_json(&mut ws).await, next_json(&mut ws).await, next_json(&mut ws).await].into();
    let pongs = replies.iter().filter(|v| v["type"] == "pong").count();
    let limited: Vec<&Value> = replies.iter().filter(|v| v["type"] == "error").collect();
    assert_eq!(pongs, 3, "{replies:?}");
    assert_eq!(limited.len(), 1, "{replies:?}");
    assert_eq!(limited[0]["code"], "rate_limited");

    // Still open: the next request gets an answer (pong or another rate_limited).
    send_json(&mut ws, json!({ "type": "ping" })).await;
    let v = next_json(&mut ws).await;
    assert!(v["type"] == "pong" || v["code"] == "rate_limited", "{v}");

    // Sustained abuse: keep sending until the server gives up with 1008.
    let ping = Message::text(json!({ "type": "ping" }).to_string());
    let mut sent = 0;
    while ws.send(ping.clone()).await.is_ok() && sent < 200 {
        sent += 1;
    }
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, Some(1008));
    server.stop().await;
}

#[tokio::test]
async fn client_rate_closes_a_steady_over_rate_sender() {
    let server = TestServer::start(&yaml("limits: { client_rate: { per_second: 2, burst: 3 } }")).await;
    let mut ws = ws(&server).await;
    // Five times the allowed rate, paced: every half second one message is within the
    // rate again, yet most are refused. That is abuse too, not only a single flood.
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
    let code = within("the over-rate sender to be closed", async {
        loop {
            pace.tick().await;
            if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                return close_code(&mut ws).await.0;
            }
            match futures_util::StreamExt::next(&mut ws).await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert!(v["type"] == "pong" || v["code"] == "rate_limited", "{v}");
                }
                Some(Ok(Message::Close(frame))) => {
                    // Finish the closing handshake so the server's session ends now.
                    close_code(&mut ws).await;
                    return frame.map(|f| u16::from(f.code));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(code, Some(1008));
    server.stop().await;
}

/// Data of message `n`: large, so a stalled reader's buffers fill quickly.
fn bulky(n: usize) -> Value {
    json!({ "n": n, "pad": pad(8 * 1024) })
}

const FLOOD: usize = 2000;
/// Small enough that a stalled reader overflows within the flood (its socket buffers
/// take a few MB, the flood is 16 MB), large enough that a reader which is merely
/// descheduled for a moment on a loaded 2-core CI box is not mistaken for a slow one.
const SMALL_QUEUE: &str = "limits: { subscriber_queue: 128 }";

/// Reads `FLOOD` messages from a WebSocket and checks they are `0..FLOOD` in order.
async fn read_all_ws<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, progress: Progress) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for n in 0..FLOOD {
        let v = expect_type(&mut ws, "message").await;
        assert_eq!(v["data"]["n"], n, "websocket subscriber saw a gap or reorder");
        progress.store(n + 1, Ordering::Relaxed);
    }
    hang_up(ws).await;
    FLOOD
}

async fn read_all_sse(mut sse: Sse, progress: Progress) -> usize {
    for n in 0..FLOOD {
        let ev = sse.next().await.expect("SSE stream of a fast reader ended");
        let data: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
        assert_eq!(data["n"], n, "SSE subscriber saw a gap or reorder");
        progress.store(n + 1, Ordering::Relaxed);
    }
    FLOOD
}

/// Publishes `FLOOD` bulky messages one request at a time; every one must be a 200.
/// How many messages a fast reader has read.
type Progress = Arc<AtomicUsize>;

/// Messages a fast reader may lag behind the publisher: half of `SMALL_QUEUE`, so a
/// reader descheduled on a loaded machine (the suite runs beside builds) is never taken
/// for a slow consumer, while the stalled one, which reads nothing, still overflows.
const LAG: usize = 64;

/// Publishes `FLOOD` bulky messages one request at a time; every one must be a 200. The
/// publisher waits while a fast reader is more than [`LAG`] messages behind.
async fn flood(server: &TestServer, channel: &str, fast: &[Progress]) {
    let client = http();
    for n in 0..FLOOD {
        let res = publish(&client, server, channel, bulky(n)).await;
        assert_eq!(res.status(), 200, "publish {n} failed");
        within("fast readers to keep up", async {
            while fast.iter().any(|p| p.load(Ordering::Relaxed) + LAG <= n) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
}

fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_consumer_is_dropped_and_nobody_else_notices() {
    let server = TestServer::start(&yaml(SMALL_QUEUE)).await;
    let mut slow = ws_raw(&server, None, true).await.unwrap();
    subscribe(&mut slow, "feed").await;
    let mut readers = Vec::new();
    let progress: Vec<Progress> = (0..5).map(|_| Progress::default()).collect();
    for p in &progress[..3] {
        let mut w = ws(&server).await;
        subscribe(&mut w, "feed").await;
        readers.push(spawn(read_all_ws(w, Arc::clone(p))));
    }
    for p in &progress[3..] {
        readers.push(spawn(read_all_sse(sse(&server, "channel=feed").await, Arc::clone(p))));
    }

    // From here on `slow` is never polled until the flood is over.
    flood(&server, "feed", &progress).await;
    for r in readers {
        assert_eq!(within("a fast reader", r).await.unwrap(), FLOOD);
    }
    wait_metric(&server, "sidewire_evictions_total{reason=\"slow_consumer\"}", |v| v >= 1.0).await;
    // Dropped means dropped now, while it still reads nothing: not at its next read,
    // nor at the heartbeat timeout. The fast readers have all hung up by now.
    wait_metric(&server, &conns("websocket"), |v| v == 0.0).await;

    let (code, seen) = close_code(&mut slow).await;
    // Slow but alive: once it reads again it gets what its socket held, then the 1013
    // (the messages sidewire had queued but not written were dropped, not sent first).
    assert_eq!(code, Some(1013), "a slow consumer is closed with 1013");
    assert!(seen < FLOOD, "the slow consumer was never dropped");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sse_reader_stream_ends() {
    let server = TestServer::start(&yaml(SMALL_QUEUE)).await;
    let stalled = sse_stalled(&server, "channel=feed").await;
    wait_metric(&server, &conns("sse"), |v| v == 1.0).await;
    let mut w = ws(&server).await;
    subscribe(&mut w, "feed").await;
    let progress = [Progress::default(), Progress::default()];
    let readers = vec![
        spawn(read_all_ws(w, Arc::clone(&progress[0]))),
        spawn(read_all_sse(sse(&server, "channel=feed").await, Arc::clone(&progress[1]))),
    ];

    flood(&server, "feed", &progress).await;
    for r in readers {
        assert_eq!(within("a fast reader", r).await.unwrap(), FLOOD);
    }
    wait_metric(&server, "sidewire_evictions_total{reason=\"slow_consumer\"}", |v| v >= 1.0).await;

    // The eviction closes the stalled connection at once (server::Abort), before the
    // client reads anything: its slot is free while its socket is still full.
    wait_metric(&server, &conns("sse"), |v| v == 0.0).await;
    let text = read_stalled_sse(stalled).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
    let delivered = text.matches("\"n\":").count();
    assert!(delivered < FLOOD, "the stalled reader was never dropped");
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_and_return_to_zero() {
    let server = TestServer::start(&yaml("")).await;
    let client = http();
    let mut a = ws(&server).await;
    let mut b = ws(&server).await;
    subscribe(&mut a, "m").await;
    subscribe(&mut b, "m").await;
    subscribe(&mut b, "m2").await;
    let mut s = sse(&server, "channel=m").await;
    let text = metrics(&server).await;
    assert_eq!(metric(&text, &conns("websocket")), 2.0);
    assert_eq!(metric(&text, &conns("sse")), 1.0);
    assert_eq!(metric(&text, "sidewire_subscriptions"), 4.0);

    for n in 0..5 {
        publish_ok(&client, &server, "m", json!(n)).await;
    }
    for n in 0..3 {
        publish_ok(&client, &server, "m2", json!(n)).await;
    }
    for _ in 0..5 {
        expect_type(&mut a, "message").await;
        s.next().await.unwrap();
    }
    for _ in 0..8 {
        expect_type(&mut b, "message").await;
    }
    let text = metrics(&server).await;
    assert_eq!(metric(&text, "sidewire_messages_published_total"), 8.0);
    assert_eq!(metric(&text, "sidewire_messages_delivered_total"), 18.0);

    let res = poll(&client, &server, "channel=m&timeout=0").await;
    assert_eq!(res.status(), 200);
    hang_up(a).await;
    hang_up(b).await;
    drop(s);
    for t in ["websocket", "sse", "longpoll"] {
        wait_metric(&server, &conns(t), |v| v == 0.0).await;
    }
    wait_metric(&server, "sidewire_subscriptions", |v| v == 0.0).await;
    server.stop().await;
}

// ---------------------------------------------------------------- memory bounds (SPEC §9)

async fn publish_body(server: &TestServer, body: Value) -> (u16, Value) {
    let res = within("a publish response", http().post(server.admin_url("/publish")).json(&body).send()).await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

fn seq_of(id: &str) -> u64 {
    id.rsplit('.').next().unwrap().parse().unwrap()
}

async fn poll_since(server: &TestServer, channel: &str, since: &str) -> Value {
    let url = server.url(&format!("/poll?channel={channel}&since={since}&timeout=0"));
    http().get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn history_bytes_bounds_all_history_dropping_the_oldest_first() {
    let server = TestServer::start(&yaml("limits: { history_bytes: 200000 }")).await;
    let data = pad(20_000);
    let mut ids = Vec::new();
    // 30 rooms × 20 kB: 600 kB asked, 200 kB allowed.
    for i in 0..30 {
        ids.push(publish_ok(&http(), &server, &format!("room:{i}"), json!(data)).await);
    }
    let text = metrics(&server).await;
    let held = metric(&text, "sidewire_history_bytes");
    assert!(held > 0.0 && held <= 200_000.0, "history bytes {held}");
    assert!(metric(&text, "sidewire_history_evicted_total") >= 20.0, "{text}");
    // The newest rooms still resume; the oldest were dropped first and say so.
    let epoch = ids[0].split('.').next().unwrap().to_owned();
    let newest = poll_since(&server, "room:29", &format!("{epoch}.{}", seq_of(&ids[28]))).await;
    assert!(newest.get("reset").is_none(), "{newest}");
    assert_eq!(newest["messages"][0]["id"], ids[29].as_str());
    let oldest = poll_since(&server, "room:0", &format!("{epoch}.0")).await;
    assert_eq!(oldest["reset"], json!(["room:0"]), "{oldest}");
    server.stop().await;
}

#[tokio::test]
async fn channels_bounds_channel_states_forgetting_idle_ones() {
    let server = TestServer::start(&yaml("limits: { channels: 10 }")).await;
    for i in 0..30 {
        publish_ok(&http(), &server, &format!("room:{i}"), json!(i)).await;
    }
    assert!(metric(&metrics(&server).await, "sidewire_channels_evicted_total") >= 20.0);
    // Ten channels held by subscribers: a new one cannot be made, and says why.
    let mut held = Vec::new();
    for i in 0..10 {
        held.push(sse(&server, &format!("channel=busy:{i}")).await);
    }
    let (status, answer) = publish_body(&server, json!({ "channel": "room:new", "data": 1 })).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("unavailable")), "{answer}");
    let refused = sse_try(&server, "channel=other:x").await.err().expect("no room for another channel");
    assert_refused(&refused, 503);
    // A channel that exists still works.
    publish_ok(&http(), &server, "busy:3", json!("still here")).await;
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn replay_bytes_caps_a_resume_with_a_reset() {
    let server = TestServer::start(&yaml("limits: { replay_bytes: 50000 }")).await;
    let data = pad(10_000);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(publish_ok(&http(), &server, "room:big", json!(data)).await);
    }
    // From the start: 100 kB to replay, over the cap → reset, nothing replayed.
    let all = poll_since(&server, "room:big", &ids[0]).await;
    assert_eq!(all["reset"], json!(["room:big"]), "{}", all["reset"]);
    assert_eq!(all["messages"], json!([]));
    // The last three: within the cap.
    let tail = poll_since(&server, "room:big", &ids[6]).await;
    assert!(tail.get("reset").is_none());
    assert_eq!(tail["messages"].as_array().unwrap().len(), 3);
    assert!(metric(&metrics(&server).await, "sidewire_replays_refused_total") >= 1.0);
    server.stop().await;
}

#[tokio::test]
async fn replay_bytes_is_one_budget_for_the_whole_request() {
    // Each channel's replay (~41 kB) fits the cap; all three together (~124 kB) do not.
    let server = TestServer::start(&yaml("limits: { replay_bytes: 100000 }")).await;
    let url = server.url("/poll?channel=a&channel=b&channel=c&timeout=0");
    let start: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    let cursor = start["cursor"].as_str().expect("a cursor").to_string();
    let data = pad(10_000);
    for ch in ["a", "b", "c"] {
        for _ in 0..4 {
            publish_ok(&http(), &server, ch, json!(data)).await;
        }
    }
    let url = server.url(&format!("/poll?channel=a&channel=b&channel=c&since={cursor}&timeout=0"));
    let res: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    // Channels are resumed in sorted order: a and b fit, c is reset.
    assert_eq!(res["reset"], json!(["c"]), "{}", res["reset"]);
    let channels: Vec<&str> =
        res["messages"].as_array().unwrap().iter().map(|m| m["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["a", "a", "a", "a", "b", "b", "b", "b"]);
    assert!(metric(&metrics(&server).await, "sidewire_replays_refused_total") >= 1.0);
    server.stop().await;
}

#[tokio::test]
async fn channels_per_publish_is_a_bad_request() {
    let server = TestServer::start(&yaml("limits: { channels_per_publish: 2 }")).await;
    let (status, answer) = publish_body(&server, json!({ "channels": ["a", "b", "c"], "data": 1 })).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("channels_per_publish"));
    let (status, _) = publish_body(&server, json!({ "channels": ["a", "b"], "data": 1 })).await;
    assert_eq!(status, 200);
    server.stop().await;
}

// ---------------------------------------------------------------- stalled and excess connections

#[tokio::test]
async fn an_sse_stream_whose_writes_stall_is_closed_and_freed() {
    // A queue far larger than what is published: no slow-consumer eviction can happen;
    // only the write-stall timeout (heartbeat.timeout) can free this connection.
    let extra = "limits: { subscriber_queue: 100000 }\nheartbeat: { interval: 500ms, timeout: 1s }";
    let server = TestServer::start(&yaml(extra)).await;
    let stalled = sse_stalled(&server, "channel=feed").await;
    wait_metric(&server, &conns("sse"), |v| v == 1.0).await;
    // 12 MB: more than loopback's socket buffers can hold, far less than the queue.
    let big = pad(40_000);
    for _ in 0..300 {
        publish_ok(&http(), &server, "feed", json!(big)).await;
    }
    wait_metric(&server, &conns("sse"), |v| v == 0.0).await;
    assert_eq!(metric(&metrics(&server).await, "sidewire_evictions_total{reason=\"slow_consumer\"}"), 0.0);
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn open_connections_are_capped_per_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&yaml("limits: { max_open_connections_per_ip: 3 }")).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(server.public).await.unwrap();
        s.write_all(b"GET /_sidewire/client.js HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    // The fourth from the same address is closed at once, unread.
    let mut s = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let _ = s.write_all(b"GET /_sidewire/client.js HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let n = within("the refused connection closing", s.read_to_end(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
    // Another address is not affected.
    let other = http_from(LOCALHOST_2.parse::<IpAddr>().unwrap());
    let res = other.get(server.url("/_sidewire/client.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    drop(held);
    server.stop().await;
}

/// Publishes `n` messages at once on `ws` (refs `first..first + n`) and returns the
/// replies: `published`, or `error` frames carrying the request's ref.
async fn publish_burst<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, first: u64, n: u64) -> Vec<Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for r in first..first + n {
        let frame = json!({ "type": "publish", "channel": "budget", "data": r, "ref": r });
        ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(next_json(ws).await);
    }
    replies
}

fn count(replies: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    replies.iter().filter(|v| pred(v)).count()
}

/// Budgets that refill at 1/s: a test exchange takes milliseconds, and each assertion
/// allows for a refill of a token or two on a loaded machine.
const BUDGET: &str =
    "limits: { client_rate: { per_second: 1000, burst: 1000 }, identity_publish_rate: { per_second: 1, burst: 3 } }";

#[tokio::test]
async fn identity_publish_rate_is_shared_by_all_connections_of_an_identity() {
    let server = TestServer::start(&yaml(BUDGET)).await;
    // Two anonymous connections from one address: one identity, one budget.
    let mut a = ws(&server).await;
    let mut b = ws(&server).await;
    let from_a = publish_burst(&mut a, 0, 3).await;
    assert_eq!(count(&from_a, |v| v["type"] == "published"), 3, "the burst passes: {from_a:?}");
    let from_b = publish_burst(&mut b, 10, 3).await;
    let refused: Vec<&Value> = from_b.iter().filter(|v| v["type"] == "error").collect();
    assert!(!refused.is_empty(), "a second connection does not get a budget of its own: {from_b:?}");
    for e in &refused {
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert!(e["ref"].as_u64().is_some_and(|r| (10..13).contains(&r)), "the refusal answers its request: {e}");
    }
    // Another address is another identity, with its own budget.
    let other: IpAddr = LOCALHOST_2.parse().unwrap();
    let mut c = ws_raw(&server, Some(other), false).await.unwrap();
    let from_c = publish_burst(&mut c, 20, 3).await;
    assert_eq!(count(&from_c, |v| v["type"] == "published"), 3, "{from_c:?}");
    let text = metrics(&server).await;
    let over = metric(&text, "sidewire_publish_budget_refused_total{reason=\"over_budget\"}");
    assert_eq!(over, refused.len() as f64, "{text}");
    assert_eq!(metric(&text, "sidewire_publish_budget_refused_total{reason=\"table_full\"}"), 0.0, "{text}");
    // Subscribing and pinging cost nothing from the publish budget.
    send_json(&mut b, json!({ "type": "ping" })).await;
    assert_eq!(next_json(&mut b).await["type"], "pong");
    hang_up(a).await;
    hang_up(b).await;
    hang_up(c).await;
    server.stop().await;
}

#[tokio::test]
async fn sustained_publishing_over_the_identity_budget_closes_with_1008() {
    let server = TestServer::start(&yaml(BUDGET)).await;
    let mut ws = ws(&server).await;
    let publish = Message::text(json!({ "type": "publish", "channel": "budget", "data": 1 }).to_string());
    let mut sent = 0;
    while ws.send(publish.clone()).await.is_ok() && sent < 200 {
        sent += 1;
    }
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, Some(1008));
    server.stop().await;
}

#[tokio::test]
async fn a_full_identity_table_refuses_new_publishers_without_growing() {
    let limits = "limits: { identity_publish_rate: { per_second: 1, burst: 3 }, identity_publish_table: 1 }";
    let server = TestServer::start(&yaml(limits)).await;
    let mut first = ws(&server).await;
    // The only slot is taken, and stays taken while its bucket is not full again (3 s).
    let replies = publish_burst(&mut first, 0, 3).await;
    assert_eq!(count(&replies, |v| v["type"] == "published"), 3, "{replies:?}");
    let mut second = ws_raw(&server, Some(LOCALHOST_2.parse().unwrap()), false).await.unwrap();
    let refused = publish_burst(&mut second, 10, 1).await;
    assert_eq!(refused[0]["type"], "error", "{refused:?}");
    assert_eq!(refused[0]["code"], "unavailable", "not the client's fault: {refused:?}");
    assert_eq!(refused[0]["ref"], 10);
    let text = metrics(&server).await;
    assert_eq!(metric(&text, "sidewire_publish_budget_refused_total{reason=\"table_full\"}"), 1.0, "{text}");
    // Refused, not closed: the connection goes on.
    send_json(&mut second, json!({ "type": "ping" })).await;
    assert_eq!(next_json(&mut second).await["type"], "pong");
    hang_up(first).await;
    hang_up(second).await;
    server.stop().await;
}
