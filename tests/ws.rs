//! WebSocket transport (SPEC §4, §3 resume, §9 shutdown) through real sockets: frames,
//! fields, order and close codes exactly as the spec names them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::ws::{Publisher, RawWs, WsClient, client_frame, encode_frame, metric, opcode, seq, wait_metric};
use support::{TestServer, http};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Anonymous clients on public channels (backend auth is not built yet). `room:*`
/// allows client broadcast with an ephemeral `typing`; `small:*` keeps 2 messages;
/// `news:*` denies client publish; `private:*` is not public; nothing else matches.
/// The client rate is raised so that tests sending many frames are never throttled.
const BASE: &str = r#"
auth: { anonymous: true }
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/ws/rooms/{room}", transport: websocket, channels: ["room:{room}"] }
channels:
  - match: "room:*"
    history: { size: 100, ttl: 1h }
    client_publish: broadcast
    ephemeral: [typing]
    public: true
  - match: "small:*"
    history: { size: 2, ttl: 1h }
    public: true
  - match: "news:*"
    client_publish: deny
    public: true
  - match: "private:*"
    public: false
limits:
  max_message_bytes: 4096
  client_rate: { per_second: 10000, burst: 10000 }
"#;

const WS_GAUGE: &str = r#"sidewire_realtime_connections{transport="websocket"}"#;

async fn start() -> TestServer {
    TestServer::start(BASE).await
}

async fn start_with(extra: &str) -> TestServer {
    TestServer::start(&format!("{BASE}{extra}")).await
}

// 1. welcome, ping, ref

#[tokio::test]
async fn welcome_is_the_first_frame() {
    let server = start().await;
    let (_client, welcome) = WsClient::open(&server, "/ws").await;
    let fields = welcome.as_object().unwrap();
    assert!(fields.contains_key("user"), "{welcome}");
    assert_eq!(welcome["user"], Value::Null, "anonymous clients have no user");
    assert!(welcome["connection"].as_str().is_some_and(|c| !c.is_empty()), "{welcome}");
    let (_other, second) = WsClient::open(&server, "/ws").await;
    assert_ne!(welcome["connection"], second["connection"]);
}

#[tokio::test]
async fn ping_answers_pong() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    client.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(client.next_text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn ref_is_echoed_on_every_reply_and_error() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let refs = [json!(7), json!("r-1"), json!({ "k": [1, 2.5, null] }), json!(null)];
    for r in refs {
        let requests = [
            (json!({ "type": "ping" }), "pong"),
            (json!({ "type": "subscribe", "channel": "room:ref" }), "subscribed"),
            (json!({ "type": "publish", "channel": "room:ref", "data": 1 }), "published"),
            (json!({ "type": "unsubscribe", "channel": "room:ref" }), "unsubscribed"),
            (json!({ "type": "subscribe", "channel": "nowhere:1" }), "error"),
            (json!({ "type": "subscribe", "channel": "private:1" }), "error"),
            (json!({ "type": "subscribe", "channel": "bad name" }), "error"),
            (json!({ "type": "publish", "channel": "news:1", "data": 1 }), "error"),
            (json!({ "type": "nope" }), "error"),
            (json!({ "channel": "room:ref" }), "error"),
            (json!({ "type": "subscribe", "channel": 5 }), "error"),
        ];
        for (mut req, kind) in requests {
            req["ref"] = r.clone();
            client.send_json(req.clone()).await;
            let mut reply = client.next_json().await;
            // The subscriber also gets its own broadcast; it follows the reply.
            if reply["type"] == "message" {
                reply = client.next_json().await;
            } else if kind == "published" {
                client.expect("message").await;
            }
            assert_eq!(reply["type"], kind, "{req} -> {reply}");
            let fields = reply.as_object().unwrap();
            assert!(fields.contains_key("ref"), "{req} -> {reply}");
            assert_eq!(reply["ref"], r, "{req} -> {reply}");
        }
    }
    // A reply to a request without ref carries none; server pushes never do.
    client.subscribe("room:noref", None).await;
    publisher.publish("room:noref", None, "1").await;
    let pushed = client.expect("message").await;
    assert!(!pushed.as_object().unwrap().contains_key("ref"), "{pushed}");
}

// 2. live messages

#[tokio::test]
async fn live_messages_arrive_in_publish_order() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let mut first = client.subscribe("room:a", None).await;
    // `cursor`: the channel position at subscribe time, `<epoch>.<seq>` (nothing published yet).
    let cursor = first.as_object_mut().unwrap().remove("cursor").unwrap();
    assert!(cursor.as_str().unwrap().ends_with(".0"), "{cursor}");
    assert_eq!(first, json!({ "type": "subscribed", "channel": "room:a", "recovered": true }));
    client.subscribe("room:b", None).await;

    let mut published = [Vec::new(), Vec::new()];
    for n in 0..200 {
        let channel = ["room:a", "room:b"][n % 2];
        let id = publisher.publish(channel, Some("tick"), &format!("{{\"n\":{n}}}")).await;
        published[n % 2].push(id);
    }
    let mut received = [Vec::new(), Vec::new()];
    for _ in 0..200 {
        let msg = client.expect("message").await;
        let which = match msg["channel"].as_str() {
            Some("room:a") => 0,
            Some("room:b") => 1,
            other => panic!("message on {other:?}"),
        };
        assert_eq!(msg["event"], "tick");
        let n = msg["data"]["n"].as_u64().unwrap() as usize;
        assert_eq!(n % 2, which, "{msg}");
        received[which].push((n, msg["id"].clone()));
    }
    for which in 0..2 {
        let got = &received[which];
        let ns: Vec<usize> = got.iter().map(|(n, _)| *n).collect();
        let want: Vec<usize> = (0..200).filter(|n| n % 2 == which).collect();
        assert_eq!(ns, want, "publish order on channel {which}");
        let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str().unwrap()).collect();
        assert_eq!(ids, published[which], "ids are those /publish returned");
        assert!(got.windows(2).all(|w| seq(&w[0].1) < seq(&w[1].1)), "ids strictly increase within a channel");
    }
    client.assert_quiet().await;
}

#[tokio::test]
async fn message_fields_and_data_are_exact() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    client.subscribe("room:exact", None).await;
    // Published with insignificant whitespace; delivered compact, digits and escapes as sent.
    let cases = [
        (Some("chat"), r#"{ "text" : "hi there", "n": 1.50 }"#, r#"{"text":"hi there","n":1.50}"#),
        (None, r#"[1, 12345678901234567890, -0.0, 1e3]"#, r#"[1,12345678901234567890,-0.0,1e3]"#),
        (None, r#""caf\u00e9 \" { x }""#, r#""caf\u00e9 \" { x }""#),
        (Some("n"), r#" "" "#, r#""""#),
    ];
    for (event, data, compact) in cases {
        let id = publisher.publish("room:exact", event, data).await;
        let text = client.next_text().await;
        assert!(text.ends_with(&format!(",\"data\":{compact}}}")), "data not byte-exact: {text}");
        let msg: Value = serde_json::from_str(&text).unwrap();
        let mut want = json!({
            "type": "message",
            "channel": "room:exact",
            "id": id,
            "data": serde_json::from_str::<Value>(compact).unwrap(),
        });
        if let Some(e) = event {
            want["event"] = e.into();
        }
        assert_eq!(msg, want, "event is omitted when absent");
        if event.is_none() {
            assert!(!text.contains("\"event\""), "{text}");
        }
    }
}

// 3. resume

/// Publishes `n` messages with `data` 1..=n on `channel`; returns their ids.
async fn publish_n(publisher: &Publisher, channel: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 1..=n {
        ids.push(publisher.publish(channel, None, &i.to_string()).await);
    }
    ids
}

#[tokio::test]
async fn resume_replays_after_since_then_live() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let ids = publish_n(&publisher, "room:resume", 5).await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let reply = client.subscribe("room:resume", Some(&ids[1])).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for (i, id) in ids.iter().enumerate().skip(2) {
        let msg = client.expect("message").await;
        assert_eq!(msg["id"], id.as_str());
        assert_eq!(msg["data"], i + 1);
    }
    client.assert_quiet().await;
    let live = publisher.publish("room:resume", None, "6").await;
    let msg = client.expect("message").await;
    assert_eq!((msg["id"].as_str(), msg["data"].as_u64()), (Some(live.as_str()), Some(6)));
    client.assert_quiet().await;
}

#[tokio::test]
async fn resume_at_the_latest_id_replays_nothing() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let ids = publish_n(&publisher, "room:latest", 3).await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let reply = client.subscribe("room:latest", Some(&ids[2])).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    client.assert_quiet().await;
}

#[tokio::test]
async fn subscribing_again_changes_nothing_and_replays_nothing() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let ids = publish_n(&publisher, "room:again", 3).await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    client.subscribe("room:again", Some(&ids[0])).await;
    for id in &ids[1..] {
        assert_eq!(client.expect("message").await["id"], id.as_str());
    }
    // Again, even with an older cursor: no replay, no duplicate of what comes next.
    let again = client.subscribe("room:again", Some(&ids[0])).await;
    assert_eq!(again["recovered"], true);
    client.assert_quiet().await;
    let next = publisher.publish("room:again", None, "4").await;
    assert_eq!(client.expect("message").await["id"], next.as_str());
    client.assert_quiet().await;
}

#[tokio::test]
async fn resume_older_than_history_is_not_recovered() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let ids = publish_n(&publisher, "small:1", 5).await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let reply = client.subscribe("small:1", Some(&ids[0])).await;
    assert_eq!(reply["recovered"], false, "history keeps 2 of 5: {reply}");
    client.assert_quiet().await;
    // Live delivery continues after a failed recovery.
    let live = publisher.publish("small:1", None, "6").await;
    assert_eq!(client.expect("message").await["id"], live.as_str());
}

#[tokio::test]
async fn resume_from_garbage_or_another_epoch_is_not_recovered() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    publish_n(&publisher, "room:epoch", 3).await;
    // An id from another sidewire (a restart, as far as the client can tell).
    let other = start().await;
    let foreign = publish_n(&Publisher::new(&other), "room:epoch", 2).await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    for since in [foreign[0].as_str(), "garbage", "", "1.2.3", "zz.-1"] {
        let reply = client.subscribe("room:epoch", Some(since)).await;
        assert_eq!(reply["recovered"], false, "since {since:?}: {reply}");
        client.assert_quiet().await;
        client.send_json(json!({ "type": "unsubscribe", "channel": "room:epoch" })).await;
        client.expect("unsubscribed").await;
    }
}

// 4. unsubscribe

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    client.subscribe("room:u", None).await;
    client.subscribe("room:stay", None).await;
    publisher.publish("room:u", None, "1").await;
    client.expect("message").await;
    client.send_json(json!({ "type": "unsubscribe", "channel": "room:u" })).await;
    assert_eq!(client.next_json().await, json!({ "type": "unsubscribed", "channel": "room:u" }));
    for n in 0..5 {
        publisher.publish("room:u", None, &n.to_string()).await;
    }
    client.assert_quiet().await;
    // The other subscription is untouched.
    let id = publisher.publish("room:stay", None, "2").await;
    assert_eq!(client.expect("message").await["id"], id.as_str());
}

// 5. client publish

#[tokio::test]
async fn client_publish_reaches_every_subscriber() {
    let server = start().await;
    let (mut alice, _) = WsClient::open(&server, "/ws").await;
    let (mut bob, _) = WsClient::open(&server, "/ws").await;
    alice.subscribe("room:pub", None).await;
    bob.subscribe("room:pub", None).await;
    alice
        .send_json(json!({ "type": "publish", "channel": "room:pub", "event": "chat",
                           "data": { "text": "hi" }, "ref": 1 }))
        .await;
    let mut published = None;
    let mut own = None;
    for _ in 0..2 {
        let frame = alice.next_json().await;
        match frame["type"].as_str() {
            Some("published") => published = Some(frame),
            Some("message") => own = Some(frame),
            _ => panic!("unexpected {frame}"),
        }
    }
    let published = published.unwrap();
    let id = published["id"].as_str().expect("a stored message has an id");
    assert_eq!(published, json!({ "type": "published", "channel": "room:pub", "id": id, "ref": 1 }));
    // A client publish carries its sender: null for an anonymous client (SPEC §3).
    let want = json!({ "type": "message", "channel": "room:pub", "id": id, "event": "chat",
                       "data": { "text": "hi" }, "user": null });
    assert_eq!(own.unwrap(), want);
    assert_eq!(bob.next_json().await, want);
    // A client-published message is stored like any other: a late joiner resumes it.
    let (mut carol, _) = WsClient::open(&server, "/ws").await;
    let before = Publisher::new(&server).publish("room:pub", None, "0").await;
    alice.expect("message").await;
    bob.expect("message").await;
    carol.subscribe("room:pub", Some(id)).await;
    assert_eq!(carol.expect("message").await["id"], before.as_str());
}

#[tokio::test]
async fn client_publish_accepts_any_json_data() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    client.subscribe("room:any", None).await;
    for data in [json!(null), json!(0), json!(""), json!([]), json!({})] {
        client.send_json(json!({ "type": "publish", "channel": "room:any", "data": data })).await;
        let published = client.expect("published").await;
        let msg = client.expect("message").await;
        assert_eq!(msg["id"], published["id"]);
        assert!(msg.as_object().unwrap().contains_key("data"), "{msg}");
        assert_eq!(msg["data"], data);
    }
}

#[tokio::test]
async fn client_publish_denied_is_forbidden() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    client.subscribe("news:1", None).await;
    client.send_json(json!({ "type": "publish", "channel": "news:1", "data": 1, "ref": "p" })).await;
    let err = client.expect_error("forbidden").await;
    assert_eq!(err["ref"], "p");
    client.assert_quiet().await;
}

#[tokio::test]
async fn ephemeral_events_are_live_only() {
    let server = start().await;
    let publisher = Publisher::new(&server);
    let (mut alice, _) = WsClient::open(&server, "/ws").await;
    let (mut bob, _) = WsClient::open(&server, "/ws").await;
    bob.subscribe("room:eph", None).await;
    let first = publisher.publish("room:eph", None, "1").await;
    assert_eq!(bob.expect("message").await["id"], first.as_str());

    alice
        .send_json(json!({ "type": "publish", "channel": "room:eph", "event": "typing",
                           "data": { "user": "a" } }))
        .await;
    let published = alice.expect("published").await;
    assert!(published["id"].is_null(), "an ephemeral event has no id: {published}");
    let typing = bob.next_json().await;
    let want =
        json!({ "type": "message", "channel": "room:eph", "event": "typing", "data": { "user": "a" }, "user": null });
    assert_eq!(typing, want);
    let last = publisher.publish("room:eph", None, "2").await;
    assert_eq!(bob.expect("message").await["id"], last.as_str());

    // Resuming from before the typing event replays the stored message only.
    let (mut carol, _) = WsClient::open(&server, "/ws").await;
    let reply = carol.subscribe("room:eph", Some(&first)).await;
    assert_eq!(reply["recovered"], true);
    assert_eq!(carol.expect("message").await["id"], last.as_str());
    carol.assert_quiet().await;
}

// 6. errors that keep the connection

#[tokio::test]
async fn errors_are_replies_not_disconnects() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let cases: &[(&str, &str, Option<Value>)] = &[
        ("not json", "bad_request", None),
        (r#"{"type":"subscribe","channel":"room:1""#, "bad_request", None),
        ("[1,2]", "bad_request", None),
        (r#"{"type":"frobnicate","ref":42}"#, "bad_request", Some(json!(42))),
        (r#"{"ref":"t"}"#, "bad_request", Some(json!("t"))),
        (r#"{"type":"subscribe","ref":3}"#, "bad_request", Some(json!(3))),
        (r#"{"type":"publish","channel":"room:1","ref":4}"#, "bad_request", Some(json!(4))),
        (r#"{"type":"subscribe","channel":"nomatch:1","ref":"u"}"#, "unknown_channel", Some(json!("u"))),
        (r#"{"type":"subscribe","channel":"private:1","ref":"f"}"#, "forbidden", Some(json!("f"))),
        (r#"{"type":"subscribe","channel":"bad channel!","ref":"b"}"#, "bad_request", Some(json!("b"))),
        (r#"{"type":"subscribe","channel":""}"#, "bad_request", None),
        (r#"{"type":"unsubscribe","channel":"no/spaces here"}"#, "bad_request", None),
    ];
    for (text, code, reference) in cases {
        client.send_text(text).await;
        let err = client.expect("error").await;
        assert_eq!(err["code"], *code, "{text} -> {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
        match reference {
            Some(r) => assert_eq!(err["ref"], *r, "{text} -> {err}"),
            None => assert!(!err.as_object().unwrap().contains_key("ref"), "{err}"),
        }
        client.assert_quiet().await;
    }
    client.send_frame(Message::binary(vec![1, 2, 3])).await;
    client.expect_error("bad_request").await;
    client.assert_quiet().await;
    // Still a working subscriber after all that.
    let id = Publisher::new(&server).publish("room:ok", None, "1").await;
    client.subscribe("room:ok", Some(&id)).await;
    client.assert_quiet().await;
}

// 7. close codes

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000));
    client.send_text(&big).await;
    assert_eq!(client.expect_close().await.0, 1009);
}

#[tokio::test]
async fn oversized_fragmented_message_closes_1009() {
    let server = start().await;
    let mut raw = RawWs::connect(server.public, "/ws").await;
    let chunk = vec![b'x'; 3000];
    let key = Some([1, 2, 3, 4]);
    raw.write(&encode_frame(false, 0, opcode::TEXT, &chunk, key)).await;
    raw.write(&encode_frame(true, 0, 0x0, &chunk, key)).await;
    assert_eq!(raw.expect_close().await, 1009);
}

#[tokio::test]
async fn oversized_frame_close_ends_in_a_fin_not_a_reset() {
    let server = start().await;
    let mut raw = RawWs::connect(server.public, "/ws").await;
    // Refused on its header while the rest is still arriving: closing the socket with
    // those bytes unread would make the kernel answer with a reset.
    raw.write(&encode_frame(true, 0, opcode::BINARY, &vec![b'x'; 256 * 1024], Some([1, 2, 3, 4]))).await;
    assert_eq!(raw.expect_close().await, 1009);
    raw.write(&client_frame(opcode::CLOSE, &1009u16.to_be_bytes())).await;
    raw.expect_fin().await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let frame = Frame::message(vec![b'"', 0xC3, 0x28, b'"'], OpCode::Data(Data::Text), true);
    client.send_frame(Message::Frame(frame)).await;
    assert_eq!(client.expect_close().await.0, 1007);
}

#[tokio::test]
async fn reserved_bits_close_1002() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    let mut frame = Frame::message(r#"{"type":"ping"}"#, OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    client.send_frame(Message::Frame(frame)).await;
    assert_eq!(client.expect_close().await.0, 1002);
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    let server = start().await;
    let mut raw = RawWs::connect(server.public, "/ws").await;
    let welcome = raw.next_frame().await.unwrap();
    assert_eq!(welcome.opcode, opcode::TEXT);
    raw.write(&encode_frame(true, 0, opcode::TEXT, br#"{"type":"ping"}"#, None)).await;
    assert_eq!(raw.expect_close().await, 1002);
}

#[tokio::test]
async fn anonymous_not_allowed_closes_4001() {
    let server = TestServer::start(
        r#"
routes: [{ path: "/ws", transport: websocket }]
channels: [{ match: "*", public: true }]
"#,
    )
    .await;
    let mut client = WsClient::connect(&server, "/ws").await;
    assert_eq!(client.expect_close().await, (4001, "Authentication required".to_owned()));
}

#[tokio::test]
async fn shutdown_closes_1001() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    client.subscribe("room:bye", None).await;
    server.handle.shutdown();
    assert_eq!(client.expect_close().await.0, 1001);
    // The drain finishes once the session has closed.
    tokio::time::timeout(Duration::from_secs(10), server.task).await.expect("drain finishes").unwrap();
}

#[tokio::test]
async fn client_close_is_answered_and_frees_the_connection() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws").await;
    wait_metric(&server, WS_GAUGE, 1.0).await;
    client.ws.close(None).await.unwrap();
    // tungstenite yields the server's close reply and then the end of the stream.
    while let Some(frame) = client.next_frame().await {
        assert!(matches!(frame, Message::Close(_)), "{frame:?}");
    }
    wait_metric(&server, WS_GAUGE, 0.0).await;
}

#[tokio::test]
async fn abrupt_disconnect_is_not_a_protocol_error() {
    let server = start().await;
    let raw = RawWs::connect(server.public, "/ws").await;
    wait_metric(&server, WS_GAUGE, 1.0).await;
    drop(raw);
    wait_metric(&server, WS_GAUGE, 0.0).await;
    let series = r#"sidewire_evictions_total{reason="protocol_error"}"#;
    // The series is pre-created at 0, so a missing series fails here too.
    assert_eq!(metric(&server, series).await, Some(0.0));
}

// 8. heartbeats

const HEARTBEAT: &str = "heartbeat: { interval: 200ms, timeout: 600ms }\n";

#[tokio::test]
async fn server_sends_pings() {
    let server = start_with(HEARTBEAT).await;
    let mut client = WsClient::connect(&server, "/ws").await;
    let mut pings = 0;
    while pings < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut client.ws))
            .await
            .expect("a ping within the deadline")
            .unwrap()
            .unwrap();
        if matches!(frame, Message::Ping(_)) {
            pings += 1;
        }
    }
}

#[tokio::test]
async fn silent_client_is_closed() {
    let server = start_with(HEARTBEAT).await;
    let mut raw = RawWs::connect(server.public, "/ws").await;
    wait_metric(&server, WS_GAUGE, 1.0).await;
    // Never answers: read until the server hangs up (RawWs fails after 10 s of silence).
    let seen = raw.until_closed().await;
    assert!(seen.iter().any(|f| f.opcode == opcode::PING), "{seen:?}");
    let close = seen.iter().find(|f| f.opcode == opcode::CLOSE).unwrap_or_else(|| panic!("no close: {seen:?}"));
    // 4000, not 1001: 1001 tells the client the server is going away.
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 4000, "{close:?}");
    assert_eq!(&close.payload[2..], b"heartbeat timeout");
    wait_metric(&server, WS_GAUGE, 0.0).await;
}

#[tokio::test]
async fn client_answering_pings_stays_connected() {
    let server = start_with(HEARTBEAT).await;
    let mut raw = RawWs::connect(server.public, "/ws").await;
    // Three times the timeout, answering each ping with its pong and sending nothing else.
    let until = tokio::time::Instant::now() + Duration::from_millis(1800);
    let mut pings = 0;
    while tokio::time::Instant::now() < until {
        let frame = raw.next_frame().await.expect("still connected");
        assert_ne!(frame.opcode, opcode::CLOSE, "closed although it answered pings");
        if frame.opcode == opcode::PING {
            pings += 1;
            raw.write(&client_frame(opcode::PONG, &frame.payload)).await;
        }
    }
    assert!(pings >= 3, "only {pings} pings");
    raw.write(&client_frame(opcode::TEXT, br#"{"type":"ping","ref":"end"}"#)).await;
    loop {
        let frame = raw.next_frame().await.expect("still connected");
        if frame.opcode == opcode::TEXT {
            assert_eq!(frame.payload, br#"{"type":"pong","ref":"end"}"#);
            break;
        }
        assert_ne!(frame.opcode, opcode::CLOSE);
    }
}

// 9. handshake refusals

#[tokio::test]
async fn plain_get_on_ws_route_is_400() {
    let server = start().await;
    let res = http().get(server.url("/ws")).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn unsupported_version_is_426() {
    let server = start().await;
    let res = http()
        .get(server.url("/ws"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "8")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 426);
    assert_eq!(res.headers()["sec-websocket-version"], "13");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
}

// 10. route channels

#[tokio::test]
async fn route_channels_are_subscribed_after_welcome() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws/rooms/42").await;
    let mut subscribed = client.next_json().await;
    assert!(subscribed.as_object_mut().unwrap().remove("cursor").is_some());
    assert_eq!(subscribed, json!({ "type": "subscribed", "channel": "room:42", "recovered": true }));
    let id = Publisher::new(&server).publish("room:42", None, "1").await;
    assert_eq!(client.expect("message").await["id"], id.as_str());
}

#[tokio::test]
async fn bad_route_channel_is_a_bad_request() {
    let server = start().await;
    let (mut client, _) = WsClient::open(&server, "/ws/rooms/a%20b").await;
    client.expect_error("bad_request").await;
    client.assert_quiet().await;
}

// 11. metrics

#[tokio::test]
async fn connection_gauge_follows_the_session() {
    let server = start().await;
    let (client, _) = WsClient::open(&server, "/ws").await;
    wait_metric(&server, WS_GAUGE, 1.0).await;
    drop(client);
    wait_metric(&server, WS_GAUGE, 0.0).await;
}
