//! The publish API (SPEC §7, publish part) through real sockets: the three request
//! forms, idempotency, `exclude_connection`, refusals, ephemeral events, `/channels`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::sse::*;
use support::*;
use tokio_tungstenite::tungstenite::Message as Frame;

const CONFIG: &str = r#"
auth: { anonymous: true }
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/events", transport: sse }
  - { path: "/poll", transport: longpoll }
channels:
  - { match: "room:*", ephemeral: [typing], public: true }
  - { match: "news:*", public: true }
limits: { max_message_bytes: 100 }
"#;

async fn stream(server: &TestServer, channel: &str) -> (SseReader, String) {
    let url = server.url(&format!("/events?channel={channel}"));
    let mut s = SseReader::open(&http(), &url, &[]).await;
    let cursor = parse(&s.expect_block().await).id.unwrap();
    (s, cursor)
}

/// What `channel` holds in history after `cursor` (a `timeout=0` poll).
async fn history_after(server: &TestServer, channel: &str, cursor: &str) -> Value {
    let url = server.url(&format!("/poll?channel={channel}&since={cursor}&timeout=0"));
    let body: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    assert!(body.get("reset").is_none(), "{body}");
    body["messages"].clone()
}

fn seq(id: &Value) -> u64 {
    let text = id.as_str().unwrap();
    text.rsplit_once('.').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn single_message() {
    let server = TestServer::start(CONFIG).await;
    let (mut s, _) = stream(&server, "news:a").await;
    let (status, body) = publish_raw(&server, r#"{"channel":"news:a","event":"chat","data":{"x":1}}"#).await;
    assert_eq!(status, 200);
    let id = body["ids"][0].as_str().unwrap().to_owned();
    assert_eq!(body, json!({ "ids": [id] }));
    assert_eq!(s.expect_block().await, format!("id: {id}\nevent: chat\ndata: {{\"x\":1}}\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn null_data_is_a_json_value_like_any_other() {
    let server = TestServer::start(CONFIG).await;
    let (mut s, _) = stream(&server, "news:a").await;
    let id = publish_one(&server, "news:a", Value::Null).await;
    assert_eq!(s.expect_block().await, format!("id: {id}\ndata: null\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn one_message_to_many_channels() {
    let server = TestServer::start(CONFIG).await;
    let (mut a, _) = stream(&server, "news:a").await;
    let (mut b, _) = stream(&server, "news:b").await;
    let ids = publish(&server, json!({ "channels": ["news:a", "news:b"], "data": "hi" })).await;
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let (ida, idb) = (ids[0].as_str().unwrap(), ids[1].as_str().unwrap());
    assert_eq!(a.expect_block().await, format!("id: {ida}\ndata: hi\n\n"));
    assert_eq!(b.expect_block().await, format!("id: {idb}\ndata: hi\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn batch_ids_and_delivery_in_order() {
    let server = TestServer::start(CONFIG).await;
    let (mut a, start) = stream(&server, "news:a").await;
    let (mut b, _) = stream(&server, "news:b").await;
    let ids = publish(
        &server,
        json!({ "messages": [
            { "channel": "news:a", "data": 1 },
            { "channel": "news:b", "event": "e", "data": 2 },
            { "channel": "news:a", "data": 3 },
        ] }),
    )
    .await;
    assert_eq!(ids.len(), 3);
    assert!(seq(&ids[0]) < seq(&ids[1]) && seq(&ids[1]) < seq(&ids[2]));
    let id = |i: usize| ids[i].as_str().unwrap().to_owned();
    assert_eq!(a.expect_block().await, format!("id: {}\ndata: 1\n\n", id(0)));
    assert_eq!(a.expect_block().await, format!("id: {}\ndata: 3\n\n", id(2)));
    assert_eq!(b.expect_block().await, format!("id: {}\nevent: e\ndata: 2\n\n", id(1)));
    assert_eq!(
        history_after(&server, "news:a", &start).await,
        json!([
            { "channel": "news:a", "id": id(0), "data": 1 },
            { "channel": "news:a", "id": id(2), "data": 3 },
        ])
    );
    server.stop().await;
}

#[tokio::test]
async fn idempotency_key_retry_returns_the_first_ids_and_delivers_once() {
    let server = TestServer::start(CONFIG).await;
    let (mut s, start) = stream(&server, "news:a").await;
    let body = json!({ "channel": "news:a", "data": "once", "idempotency_key": "k1" });
    let first = publish(&server, body.clone()).await;
    let again = publish(&server, body).await;
    assert_eq!(again, first);
    let other = publish(&server, json!({ "channel": "news:a", "data": "other", "idempotency_key": "k2" })).await;
    assert_ne!(other, first);
    // The same key for a different message is a conflict, and publishes nothing.
    let reused = json!({ "channel": "news:a", "data": "changed", "idempotency_key": "k1" }).to_string();
    let (status, answer) = publish_raw(&server, reused).await;
    assert_eq!((status.as_u16(), answer["error"].as_str()), (409, Some("conflict")), "{answer}");
    let id = first[0].as_str().unwrap();
    let other = other[0].as_str().unwrap();
    assert_eq!(s.expect_block().await, format!("id: {id}\ndata: once\n\n"));
    assert_eq!(s.expect_block().await, format!("id: {other}\ndata: other\n\n"));
    assert_eq!(
        history_after(&server, "news:a", &start).await,
        json!([
            { "channel": "news:a", "id": id, "data": "once" },
            { "channel": "news:a", "id": other, "data": "other" },
        ])
    );
    server.stop().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame, within the deadline.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("the socket is open")
            .unwrap();
        if let Frame::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Connects a WebSocket client, subscribes it to `channel`; returns it and its
/// connection id from `welcome`.
async fn ws_subscribed(server: &TestServer, channel: &str) -> (Ws, String) {
    let url = format!("ws://{}/ws", server.public);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let conn = welcome["connection"].as_str().unwrap().to_owned();
    let sub = json!({ "type": "subscribe", "channel": channel });
    ws.send(Frame::Text(sub.to_string().into())).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    (ws, conn)
}

#[tokio::test]
async fn exclude_connection_skips_only_that_connection() {
    let server = TestServer::start(CONFIG).await;
    let (mut sender, sender_conn) = ws_subscribed(&server, "news:a").await;
    let (mut other, other_conn) = ws_subscribed(&server, "news:a").await;
    assert_ne!(sender_conn, other_conn);
    let ids = publish(&server, json!({ "channel": "news:a", "data": "echo", "exclude_connection": sender_conn })).await;
    let marker = publish_one(&server, "news:a", json!("marker")).await;

    let got = next_json(&mut other).await;
    assert_eq!(got["type"], "message");
    assert_eq!(got["id"], ids[0]);
    assert_eq!(got["data"], "echo");
    assert_eq!(next_json(&mut other).await["id"], marker.as_str());
    // The sender's next message is the marker: the excluded one never came.
    let got = next_json(&mut sender).await;
    assert_eq!(got["id"], marker.as_str(), "{got}");
    server.stop().await;
}

#[tokio::test]
async fn refusals_publish_nothing() {
    let server = TestServer::start(CONFIG).await;
    let (mut s, start) = stream(&server, "news:a").await;
    let big = "x".repeat(200);
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (r#"{"channel":"news:a","data":"#.into(), 400, "bad_request", "EOF"),
        ("not json".into(), 400, "bad_request", "expected"),
        (r#"{"chanel":"news:a","data":1}"#.into(), 400, "bad_request", "chanel"),
        (r#"{"channel":"news:a"}"#.into(), 400, "bad_request", "data"),
        (r#"{"data":1}"#.into(), 400, "bad_request", "channel"),
        (r#"{"channel":"news a","data":1}"#.into(), 400, "bad_request", "news a"),
        (r#"{"channel":"nowhere","data":1}"#.into(), 400, "unknown_channel", "nowhere"),
        (format!(r#"{{"channel":"news:a","data":"{big}"}}"#), 413, "too_large", "100"),
        (r#"{"messages":[{"channel":"news:a","data":1}],"event":"e"}"#.into(), 400, "bad_request", "messages"),
        (
            r#"{"messages":[{"channel":"news:a","data":1},{"channel":"news a","data":2}]}"#.into(),
            400,
            "bad_request",
            "messages[1]",
        ),
        (
            format!(r#"{{"messages":[{{"channel":"news:a","data":1}},{{"channel":"news:a","data":"{big}"}}]}}"#),
            413,
            "too_large",
            "messages[1]",
        ),
    ];
    let long_key = "k".repeat(201);
    let more: Vec<(String, u16, &str, &str)> = vec![
        (r#"{"channel":"news:a","event":"reset","data":{"channels":["x"]}}"#.into(), 400, "bad_request", "reserved"),
        (r#"{"channel":"news:a","event":"join","data":1}"#.into(), 400, "bad_request", "reserved"),
        (r#"{"channel":"news:a","event":"sidewire.ping","data":1}"#.into(), 400, "bad_request", "reserved"),
        (format!(r#"{{"channel":"news:a","data":1,"idempotency_key":"{long_key}"}}"#), 400, "bad_request", "200 bytes"),
        (r#"{"channel":"news:a","data":1,"exclude_connection":"nope"}"#.into(), 400, "bad_request", "connection id"),
    ];
    for (body, status, code, mentions) in cases.into_iter().chain(more) {
        let (got, answer) = publish_raw(&server, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        assert_eq!(answer["error"], code, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{body}: {message:?}");
    }
    assert_eq!(history_after(&server, "news:a", &start).await, json!([]));
    let marker = publish_one(&server, "news:a", json!("marker")).await;
    assert_eq!(s.expect_block().await, format!("id: {marker}\ndata: marker\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn admin_secret_is_required_when_set() {
    let config = format!("{CONFIG}admin: {{ secret: s3cret }}\n");
    let server = TestServer::start(&config).await;
    let body = json!({ "channel": "news:a", "data": 1 }).to_string();
    let send = |auth: Option<&'static str>| {
        let mut req = http().post(server.admin_url("/publish")).body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for auth in [None, Some("Bearer wrong"), Some("s3cret"), Some("Basic s3cret")] {
        let res = send(auth).await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"], "unauthorized");
    }
    for auth in ["Bearer s3cret", "bearer s3cret"] {
        let res = send(Some(auth)).await.unwrap();
        assert_eq!(res.status(), 200, "{auth}");
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["ids"].as_array().unwrap().len(), 1);
    }
    server.stop().await;
}

#[tokio::test]
async fn ephemeral_event_has_no_id_and_no_history() {
    let server = TestServer::start(CONFIG).await;
    let (mut s, start) = stream(&server, "room:a").await;
    let ids = publish(&server, json!({ "channel": "room:a", "event": "typing", "data": { "user": "ann" } })).await;
    assert_eq!(ids, vec![Value::Null]);
    assert_eq!(s.expect_block().await, "event: typing\ndata: {\"user\":\"ann\"}\n\n");
    assert_eq!(history_after(&server, "room:a", &start).await, json!([]));
    // Any other event on the same channel is a stored message with an id.
    let ids = publish(&server, json!({ "channel": "room:a", "event": "chat", "data": 1 })).await;
    let id = ids[0].as_str().unwrap();
    assert_eq!(s.expect_block().await, format!("id: {id}\nevent: chat\ndata: 1\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn channels_lists_subscriber_counts() {
    let server = TestServer::start(CONFIG).await;
    let _a1 = stream(&server, "news:a").await;
    let _a2 = stream(&server, "news:a").await;
    let _b = stream(&server, "news:b").await;
    let body: Value = http().get(server.admin_url("/channels")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        body,
        json!({ "channels": [
            { "channel": "news:a", "subscribers": 2 },
            { "channel": "news:b", "subscribers": 1 },
        ] })
    );
    server.stop().await;
}
