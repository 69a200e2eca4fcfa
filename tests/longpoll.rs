//! Long-poll (SPEC §3, §6) through real sockets: immediate answers, waiting, timeouts,
//! cursor chaining, reset, refusals and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use serde_json::{Value, json};
use support::sse::*;
use support::*;
use tokio::task::JoinHandle;

const CONFIG: &str = r#"
auth: { anonymous: true }
routes:
  - { path: "/poll", transport: longpoll }
channels:
  - { match: "small:*", history: { size: 2, ttl: 1h }, public: true }
  - { match: "secret:*", public: false }
  - { match: "news:*", public: true }
"#;

/// One poll; it must answer 200 with JSON within the test deadline.
async fn poll_url(url: String) -> Value {
    let res = tokio::time::timeout(DEADLINE, http().get(&url).send())
        .await
        .unwrap_or_else(|_| panic!("{url} did not answer within {DEADLINE:?}"))
        .unwrap();
    assert_eq!(res.status(), 200, "{url}");
    res.json().await.unwrap()
}

async fn poll(server: &TestServer, query: &str) -> Value {
    poll_url(server.url(&format!("/poll?{query}"))).await
}

/// Starts a poll in the background and returns once the hub has registered it, so a
/// publish made after this is one the poll is waiting for.
async fn poll_waiting(server: &TestServer, channel: &str, query: &str) -> JoinHandle<Value> {
    let url = server.url(&format!("/poll?channel={channel}&{query}"));
    let task = tokio::spawn(poll_url(url));
    wait_subscribers(server, channel, 1).await;
    task
}

fn message(channel: &str, id: &str, data: Value) -> Value {
    json!({ "channel": channel, "id": id, "data": data })
}

#[tokio::test]
async fn answers_at_once_when_messages_after_since_exist() {
    let server = TestServer::start(CONFIG).await;
    let id1 = publish_one(&server, "news:a", json!("one")).await;
    let id2 = publish_one(&server, "news:a", json!("two")).await;
    let ids = publish(&server, json!({ "channel": "news:a", "event": "chat", "data": { "x": 1 } })).await;
    let id3 = ids[0].as_str().unwrap();
    let got = poll(&server, &format!("channel=news:a&since={id1}&timeout=5s")).await;
    assert_eq!(
        got,
        json!({
            "messages": [
                message("news:a", &id2, json!("two")),
                { "channel": "news:a", "id": id3, "event": "chat", "data": { "x": 1 } },
            ],
            "cursor": id3,
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn waits_for_the_first_message_to_arrive() {
    let server = TestServer::start(CONFIG).await;
    let id0 = publish_one(&server, "news:a", json!(0)).await;
    let pending = poll_waiting(&server, "news:a", &format!("since={id0}&timeout=5s")).await;
    let id1 = publish_one(&server, "news:a", json!(1)).await;
    assert_eq!(pending.await.unwrap(), json!({ "messages": [message("news:a", &id1, json!(1))], "cursor": id1 }));
    server.stop().await;
}

#[tokio::test]
async fn answers_empty_after_the_timeout() {
    let server = TestServer::start(CONFIG).await;
    let id0 = publish_one(&server, "news:a", json!(0)).await;
    let got = poll(&server, &format!("channel=news:a&since={id0}&timeout=300ms")).await;
    assert_eq!(got, json!({ "messages": [], "cursor": id0 }));
    server.stop().await;
}

#[tokio::test]
async fn timeout_zero_answers_at_once() {
    let server = TestServer::start(CONFIG).await;
    let id0 = publish_one(&server, "news:a", json!(0)).await;
    let got = poll(&server, &format!("channel=news:a&since={id0}&timeout=0")).await;
    assert_eq!(got, json!({ "messages": [], "cursor": id0 }));
    // Without `since` it still answers, with a cursor to continue from.
    let got = poll(&server, "channel=news:a&timeout=0").await;
    assert_eq!(got, json!({ "messages": [], "cursor": id0 }));
    let id1 = publish_one(&server, "news:a", json!(1)).await;
    let got = poll(&server, &format!("channel=news:a&since={id0}&timeout=0")).await;
    assert_eq!(got, json!({ "messages": [message("news:a", &id1, json!(1))], "cursor": id1 }));
    server.stop().await;
}

#[tokio::test]
async fn without_since_waits_for_the_next_message() {
    let server = TestServer::start(CONFIG).await;
    publish_one(&server, "news:a", json!("old")).await;
    let pending = poll_waiting(&server, "news:a", "timeout=5s").await;
    let id = publish_one(&server, "news:a", json!("new")).await;
    assert_eq!(pending.await.unwrap(), json!({ "messages": [message("news:a", &id, json!("new"))], "cursor": id }));
    server.stop().await;
}

#[tokio::test]
async fn several_channels_share_one_cursor() {
    let server = TestServer::start(CONFIG).await;
    // One message in each channel first, so both have history when the cursor is taken
    // (see `polling_a_quiet_channel_while_others_are_busy` for why that matters today).
    publish_one(&server, "news:a", json!("a0")).await;
    publish_one(&server, "news:b", json!("b0")).await;
    let start = poll(&server, "channel=news:b&channel=news:a&timeout=0").await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    let e = epoch_of(&cursor).to_owned();
    // Positions follow the sorted channel order: news:a (id 1), then news:b (id 2).
    assert_eq!(cursor, format!("{e}.1.2"));
    let b = publish_one(&server, "news:b", json!("b")).await;
    let a = publish_one(&server, "news:a", json!("a")).await;
    let got = poll(&server, &format!("channel=news:a&channel=news:b&since={cursor}&timeout=5s")).await;
    assert_eq!(
        got,
        json!({
            "messages": [message("news:b", &b, json!("b")), message("news:a", &a, json!("a"))],
            "cursor": format!("{e}.4.3"),
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn chained_polls_see_every_message_exactly_once() {
    let server = TestServer::start(CONFIG).await;
    let start = poll(&server, "channel=news:a&timeout=0").await;
    let mut cursor = start["cursor"].as_str().unwrap().to_owned();
    let mut seen: Vec<Value> = Vec::new();
    let mut polls = 0;
    for round in 0..5 {
        // Half the rounds publish while a poll waits, half before the poll comes back.
        let pending = if round % 2 == 0 {
            let q = format!("since={cursor}&timeout=5s");
            Some(poll_waiting(&server, "news:a", &q).await)
        } else {
            None
        };
        for i in 0..10 {
            publish_one(&server, "news:a", json!(round * 10 + i)).await;
        }
        let mut answer = match pending {
            Some(task) => task.await.unwrap(),
            None => poll(&server, &format!("channel=news:a&since={cursor}&timeout=5s")).await,
        };
        loop {
            polls += 1;
            let batch = answer["messages"].as_array().unwrap().clone();
            assert!(answer.get("reset").is_none(), "{answer}");
            if let Some(last) = batch.last() {
                assert_eq!(answer["cursor"], last["id"]);
            }
            cursor = answer["cursor"].as_str().unwrap().to_owned();
            seen.extend(batch.iter().map(|m| m["data"].clone()));
            if seen.len() >= (round as usize + 1) * 10 {
                break;
            }
            answer = poll(&server, &format!("channel=news:a&since={cursor}&timeout=5s")).await;
        }
    }
    let expected: Vec<Value> = (0..50).map(|n| json!(n)).collect();
    assert_eq!(seen, expected);
    assert!(polls >= 5);
    let got = poll(&server, &format!("channel=news:a&since={cursor}&timeout=0")).await;
    assert_eq!(got["messages"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn failed_recovery_answers_at_once_with_reset() {
    let server = TestServer::start(CONFIG).await;
    let first = publish_one(&server, "small:x", json!(1)).await;
    let mut last = String::new();
    for n in 2..=5 {
        last = publish_one(&server, "small:x", json!(n)).await;
    }
    let got = poll(&server, &format!("channel=small:x&since={first}&timeout=60s")).await;
    assert_eq!(got, json!({ "messages": [], "cursor": last, "reset": ["small:x"] }));
    let got = poll(&server, "channel=small:x&since=garbage&timeout=60s").await;
    assert_eq!(got, json!({ "messages": [], "cursor": last, "reset": ["small:x"] }));
    server.stop().await;
}

#[tokio::test]
async fn refusals_match_sse() {
    let server = TestServer::start(CONFIG).await;
    let client = http();
    let cases = [
        ("/poll?channel=news%20a", 400, "bad_request"),
        ("/poll?channel=nowhere", 400, "unknown_channel"),
        ("/poll?channel=secret:x", 403, "forbidden"),
        ("/poll?timeout=0", 400, "bad_request"),
    ];
    for (path, status, code) in cases {
        let (got, body) = get_json(&client, &server.url(path), &[]).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    server.stop().await;

    let closed = CONFIG.replace("anonymous: true", "anonymous: false");
    let server = TestServer::start(&closed).await;
    let (got, body) = get_json(&client, &server.url("/poll?channel=news:a"), &[]).await;
    assert_eq!(got, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    server.stop().await;
}

#[tokio::test]
async fn a_poll_pending_at_shutdown_is_answered() {
    let server = TestServer::start(CONFIG).await;
    let id0 = publish_one(&server, "news:a", json!(0)).await;
    let pending = poll_waiting(&server, "news:a", &format!("since={id0}&timeout=60s")).await;
    server.handle.shutdown();
    assert_eq!(pending.await.unwrap(), json!({ "messages": [], "cursor": id0 }));
    server.task.await.unwrap();
}

#[tokio::test]
async fn polling_a_quiet_channel_while_others_are_busy() {
    let server = TestServer::start(CONFIG).await;
    let start = poll(&server, "channel=news:quiet&timeout=0").await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    publish_one(&server, "news:busy", json!(1)).await;
    let got = poll(&server, &format!("channel=news:quiet&since={cursor}&timeout=0")).await;
    assert_eq!(got, json!({ "messages": [], "cursor": cursor }));
    let id = publish_one(&server, "news:quiet", json!("m")).await;
    let got = poll(&server, &format!("channel=news:quiet&since={cursor}&timeout=0")).await;
    assert_eq!(got, json!({ "messages": [message("news:quiet", &id, json!("m"))], "cursor": id }));
    server.stop().await;
}

/// The answer is written around the stored data, never re-parsed: key order, duplicate
/// keys, number spellings and escapes reach the client as published (compacted), which a
/// round trip through a JSON tree would change (`2.50` → `2.5`, keys sorted, `\u00e9` → `é`).
#[tokio::test]
async fn data_goes_out_byte_for_byte_as_stored() {
    let server = TestServer::start(CONFIG).await;
    let start = poll(&server, "channel=news:raw&timeout=0").await;
    let cursor = start["cursor"].as_str().unwrap().to_owned();
    let data = r#"{"z": 1, "a": [2.50, 1e2, -0.0, 123456789012345678901234567890], "z": "\u00e9\/", "n": 1.0E+2}"#;
    let (status, ids) = publish_raw(&server, format!(r#"{{"channel":"news:raw","event":"e","data":{data}}}"#)).await;
    assert_eq!(status, 200, "{ids}");
    let id = ids["ids"][0].as_str().unwrap();
    let res = http().get(server.url(&format!("/poll?channel=news:raw&since={cursor}&timeout=0"))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let compact = r#"{"z":1,"a":[2.50,1e2,-0.0,123456789012345678901234567890],"z":"\u00e9\/","n":1.0E+2}"#;
    let expected = format!(
        r#"{{"cursor":"{id}","messages":[{{"channel":"news:raw","data":{compact},"event":"e","id":"{id}"}}]}}"#
    );
    assert_eq!(res.text().await.unwrap(), expected);
    server.stop().await;
}
