//! Server-Sent Events (SPEC §3, §5) through real sockets: headers, byte-exact framing,
//! stream cursors, resume, reset, heartbeats, refusals, HTTP/2, TLS and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use serde_json::json;
use support::sse::*;
use support::*;

const CONFIG: &str = r#"
auth: { anonymous: true }
routes:
  - { path: "/events", transport: sse }
  - { path: "/events/rooms/{room}", transport: sse, channels: ["room:{room}"] }
channels:
  - { match: "small:*", history: { size: 2, ttl: 1h }, public: true }
  - { match: "secret:*", public: false }
  - { match: "room:*", public: true }
  - { match: "news:*", public: true }
"#;

fn id_of(block: &str) -> String {
    parse(block).id.expect("block has an id")
}

#[tokio::test]
async fn headers_and_first_bytes() {
    let server = TestServer::start(CONFIG).await;
    // The stream opens at its channel's last id (publishes elsewhere do not move it).
    publish_one(&server, "news:other", json!(1)).await;
    let head = publish_one(&server, "news:a", json!(1)).await;
    publish_one(&server, "news:other", json!(2)).await;
    let mut s = SseReader::open(&http(), &server.url("/events?channel=news:a"), &[]).await;
    let h = s.response().headers();
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(s.expect_block().await, format!("retry: 2000\nid: {head}\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn event_framing_is_exact() {
    let server = TestServer::start(CONFIG).await;
    let mut s = SseReader::open(&http(), &server.url("/events?channel=news:a"), &[]).await;
    s.expect_block().await;

    let (status, body) = publish_raw(
        &server,
        r#"{"channel":"news:a","event":"chat","data": { "text" : "hi there", "n" : [1, 2.50] } }"#,
    )
    .await;
    assert_eq!(status, 200);
    let id = body["ids"][0].as_str().unwrap();
    assert_eq!(
        s.expect_block().await,
        format!("id: {id}\nevent: chat\ndata: {{\"text\":\"hi there\",\"n\":[1,2.50]}}\n\n")
    );

    let id = publish_one(&server, "news:a", json!(42)).await;
    assert_eq!(s.expect_block().await, format!("id: {id}\ndata: 42\n\n"));

    let id = publish_one(&server, "news:a", json!("line one\nline two")).await;
    assert_eq!(s.expect_block().await, format!("id: {id}\ndata: line one\ndata: line two\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn one_cursor_covers_every_channel_of_the_stream() {
    let server = TestServer::start(CONFIG).await;
    let url = server.url("/events?channel=news:b&channel=news:a");
    let mut s = SseReader::open(&http(), &url, &[]).await;
    let head = id_of(&s.expect_block().await);
    let e = epoch_of(&head).to_owned();
    // Positions follow the sorted channel order: news:a, then news:b.
    assert_eq!(head, format!("{e}.0.0"));

    let a1 = publish_one(&server, "news:a", json!("a1")).await;
    assert_eq!(a1, format!("{e}.1"));
    assert_eq!(s.expect_block().await, format!("id: {e}.1.0\ndata: a1\n\n"));
    publish_one(&server, "news:b", json!("b1")).await;
    assert_eq!(s.expect_block().await, format!("id: {e}.1.2\ndata: b1\n\n"));
    publish_one(&server, "news:c", json!("not mine")).await;
    publish_one(&server, "news:a", json!("a2")).await;
    assert_eq!(s.expect_block().await, format!("id: {e}.4.2\ndata: a2\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn route_template_names_the_channel() {
    let server = TestServer::start(CONFIG).await;
    let mut s = SseReader::open(&http(), &server.url("/events/rooms/lobby"), &[]).await;
    s.expect_block().await;
    publish_one(&server, "room:other", json!("no")).await;
    let id = publish_one(&server, "room:lobby", json!("yes")).await;
    assert_eq!(s.expect_block().await, format!("id: {id}\ndata: yes\n\n"));
    server.stop().await;
}

/// Opens news:a, sees one message, drops, misses two, resumes with `resume(cursor)`.
async fn resume_delivers_missed_then_live(resume: impl Fn(&TestServer, &str) -> SseRequest) {
    let server = TestServer::start(CONFIG).await;
    let client = http();
    let mut s = SseReader::open(&client, &server.url("/events?channel=news:a"), &[]).await;
    s.expect_block().await;
    let id1 = publish_one(&server, "news:a", json!("one")).await;
    assert_eq!(s.event().await.id.as_deref(), Some(id1.as_str()));
    drop(s);

    let id2 = publish_one(&server, "news:a", json!("two")).await;
    let id3 = publish_one(&server, "news:a", json!("three")).await;
    let req = resume(&server, &id1);
    let mut s = SseReader::open(&client, &req.url, &req.headers()).await;
    assert_eq!(s.expect_block().await, format!("retry: 2000\nid: {id1}\n\n"));
    assert_eq!(s.expect_block().await, format!("id: {id2}\ndata: two\n\n"));
    assert_eq!(s.expect_block().await, format!("id: {id3}\ndata: three\n\n"));
    let id4 = publish_one(&server, "news:a", json!("four")).await;
    assert_eq!(s.expect_block().await, format!("id: {id4}\ndata: four\n\n"));
    server.stop().await;
}

struct SseRequest {
    url: String,
    last_event_id: Option<String>,
}

impl SseRequest {
    fn headers(&self) -> Vec<(&str, &str)> {
        self.last_event_id.iter().map(|v| ("last-event-id", v.as_str())).collect()
    }
}

#[tokio::test]
async fn resume_with_last_event_id_header() {
    resume_delivers_missed_then_live(|server, cursor| SseRequest {
        url: server.url("/events?channel=news:a"),
        last_event_id: Some(cursor.to_owned()),
    })
    .await;
}

#[tokio::test]
async fn resume_with_last_event_id_query() {
    resume_delivers_missed_then_live(|server, cursor| SseRequest {
        url: server.url(&format!("/events?channel=news:a&lastEventId={cursor}")),
        last_event_id: None,
    })
    .await;
}

#[tokio::test]
async fn resume_multi_channel_stream() {
    let server = TestServer::start(CONFIG).await;
    let client = http();
    let url = server.url("/events?channel=news:a&channel=news:b");
    let mut s = SseReader::open(&client, &url, &[]).await;
    let e = epoch_of(&id_of(&s.expect_block().await)).to_owned();
    publish_one(&server, "news:a", json!("a1")).await;
    publish_one(&server, "news:b", json!("b1")).await;
    let after_a1 = s.event().await.id.unwrap();
    assert_eq!(after_a1, format!("{e}.1.0"));
    assert_eq!(s.event().await.id.unwrap(), format!("{e}.1.2"));
    drop(s);

    publish_one(&server, "news:b", json!("b2")).await;
    publish_one(&server, "news:a", json!("a2")).await;
    let mut s = SseReader::open(&client, &url, &[("last-event-id", &after_a1)]).await;
    assert_eq!(s.expect_block().await, format!("retry: 2000\nid: {after_a1}\n\n"));
    // Missed messages of both channels in id order, each exactly once.
    assert_eq!(s.expect_block().await, format!("id: {e}.1.2\ndata: b1\n\n"));
    assert_eq!(s.expect_block().await, format!("id: {e}.1.3\ndata: b2\n\n"));
    assert_eq!(s.expect_block().await, format!("id: {e}.4.3\ndata: a2\n\n"));
    publish_one(&server, "news:b", json!("b3")).await;
    assert_eq!(s.expect_block().await, format!("id: {e}.4.5\ndata: b3\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn incomplete_recovery_sends_reset_before_live_events() {
    let server = TestServer::start(CONFIG).await;
    let client = http();
    let url = server.url("/events?channel=small:x");
    let mut s = SseReader::open(&client, &url, &[]).await;
    s.expect_block().await;
    let first = publish_one(&server, "small:x", json!(1)).await;
    assert_eq!(s.event().await.id.as_deref(), Some(first.as_str()));
    drop(s);
    let mut last = String::new();
    for n in 2..=5 {
        last = publish_one(&server, "small:x", json!(n)).await;
    }

    let mut s = SseReader::open(&client, &url, &[("last-event-id", &first)]).await;
    assert_eq!(s.expect_block().await, format!("retry: 2000\nid: {last}\n\n"));
    assert_eq!(s.expect_block().await, format!("id: {last}\nevent: reset\ndata: {{\"channels\":[\"small:x\"]}}\n\n"));
    let live = publish_one(&server, "small:x", json!(6)).await;
    assert_eq!(s.expect_block().await, format!("id: {live}\ndata: 6\n\n"));
    server.stop().await;
}

/// Opens news:a with `cursor` and expects the head then a reset, then live events.
async fn expect_reset(server: &TestServer, cursor: &str) {
    let url = server.url("/events?channel=news:a");
    let mut s = SseReader::open(&http(), &url, &[("last-event-id", cursor)]).await;
    let head = s.expect_block().await;
    assert!(head.starts_with("retry: 2000\nid: "), "{head:?}");
    let at = id_of(&head);
    assert_eq!(
        s.expect_block().await,
        format!("id: {at}\nevent: reset\ndata: {{\"channels\":[\"news:a\"]}}\n\n"),
        "cursor {cursor:?}"
    );
    let live = publish_one(server, "news:a", json!("live")).await;
    assert_eq!(s.expect_block().await, format!("id: {live}\ndata: live\n\n"));
}

#[tokio::test]
async fn cursor_of_another_epoch_or_garbage_resets() {
    let other = TestServer::start(CONFIG).await;
    let foreign = publish_one(&other, "news:a", json!(1)).await;
    other.stop().await;

    let server = TestServer::start(CONFIG).await;
    let own = publish_one(&server, "news:a", json!(1)).await;
    assert_ne!(epoch_of(&own), epoch_of(&foreign));
    expect_reset(&server, &foreign).await;
    let e = epoch_of(&own).to_owned();
    for cursor in [
        "garbage".to_owned(),
        format!("{e}.999"), // beyond anything published
        format!("{e}.0.0"), // two positions for a one-channel stream
    ] {
        expect_reset(&server, &cursor).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_comment() {
    let config = format!("{CONFIG}heartbeat: {{ interval: 200ms, timeout: 1s }}\n");
    let server = TestServer::start(&config).await;
    let mut s = SseReader::open(&http(), &server.url("/events?channel=news:a"), &[]).await;
    s.expect_block().await;
    assert_eq!(s.expect_block().await, ": ping\n\n");
    assert_eq!(s.expect_block().await, ": ping\n\n");
    server.stop().await;
}

#[tokio::test]
async fn refusals_before_the_stream_starts() {
    let server = TestServer::start(CONFIG).await;
    let client = http();
    let cases = [
        ("/events?channel=news%20a", 400, "bad_request"),
        ("/events?channel=news:a&channel=a!b", 400, "bad_request"),
        ("/events?channel=nowhere", 400, "unknown_channel"),
        ("/events?channel=secret:x", 403, "forbidden"),
        ("/events?channel=news:a&channel=secret:x", 403, "forbidden"),
        ("/events", 400, "bad_request"),
        ("/events/rooms/a%20b", 400, "bad_request"),
    ];
    for (path, status, code) in cases {
        let (got, body) = get_json(&client, &server.url(path), &[]).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(subscribers(&server, "news:a").await, 0);
    server.stop().await;

    let closed = CONFIG.replace("anonymous: true", "anonymous: false");
    let server = TestServer::start(&closed).await;
    let (got, body) = get_json(&client, &server.url("/events?channel=news:a"), &[]).await;
    assert_eq!(got, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    server.stop().await;
}

#[tokio::test]
async fn works_over_h2c() {
    let server = TestServer::start(CONFIG).await;
    let mut s = SseReader::open(&h2c(), &server.url("/events?channel=news:a"), &[]).await;
    assert_eq!(s.response().version(), http::Version::HTTP_2);
    assert_eq!(s.response().headers()["cache-control"], "no-cache");
    let head = s.expect_block().await;
    assert!(head.starts_with("retry: 2000\nid: "), "{head:?}");
    let id = publish_one(&server, "news:a", json!({"k": "v"})).await;
    assert_eq!(s.expect_block().await, format!("id: {id}\ndata: {{\"k\":\"v\"}}\n\n"));
    server.stop().await;
}

#[tokio::test]
async fn stream_ends_on_shutdown_with_a_retry_hint() {
    let server = TestServer::start(CONFIG).await;
    let mut s = SseReader::open(&http(), &server.url("/events?channel=news:a"), &[]).await;
    s.expect_block().await;
    server.handle.shutdown();
    let rest = s.rest().await;
    let last = rest.last().expect("a farewell block");
    let retry = parse(last).retry.expect("a retry field");
    assert!(retry >= 2000, "{last:?}");
    assert_eq!(*last, format!("retry: {retry}\n\n"));
    server.task.await.unwrap();
}

#[tokio::test]
async fn resume_on_a_quiet_channel_while_others_are_busy() {
    let server = TestServer::start(CONFIG).await;
    let client = http();
    let url = server.url("/events?channel=news:quiet");
    let mut s = SseReader::open(&client, &url, &[]).await;
    let cursor = id_of(&s.expect_block().await);
    drop(s);
    // Once the stream is gone the hub may forget the channel: nothing is left in it.
    wait_subscribers(&server, "news:quiet", 0).await;
    publish_one(&server, "news:busy", json!(1)).await;
    let missed = publish_one(&server, "news:quiet", json!("missed")).await;

    let mut s = SseReader::open(&client, &url, &[("last-event-id", &cursor)]).await;
    assert_eq!(s.expect_block().await, format!("retry: 2000\nid: {cursor}\n\n"));
    assert_eq!(s.expect_block().await, format!("id: {missed}\ndata: missed\n\n"));
    server.stop().await;
}

/// Reads from `io` into `got` until it holds `needle`.
async fn read_until(io: &mut (impl tokio::io::AsyncRead + Unpin), got: &mut Vec<u8>, needle: &[u8]) {
    use tokio::io::AsyncReadExt;
    support::raw::within("bytes over TLS", async {
        while !got.windows(needle.len()).any(|w| w == needle) {
            got.reserve(4096);
            assert!(io.read_buf(got).await.unwrap() > 0, "EOF; got {:?}", String::from_utf8_lossy(got));
        }
    })
    .await;
}

#[tokio::test]
async fn works_over_tls_http1_without_hyper() {
    use support::tls::{Cert, CertFiles, Client};
    use tokio::io::AsyncWriteExt;
    let cert = Cert::new("sidewire test");
    let files = CertFiles::new(&cert);
    let server = TestServer::start(&format!("{CONFIG}{}", files.yaml("1h"))).await;
    let mut tls = Client::new(&[&cert], &[b"http/1.1"]).connect(server.tls.unwrap()).await.unwrap();
    tls.write_all(b"GET /events?channel=news:a HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(&mut tls, &mut got, b"retry: 2000\n").await;
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-type: text/event-stream"), "{head}");
    // The stream is served by `sse::h1`, which says so (hyper's stream keeps the
    // connection open for more requests and does not).
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    // Each frame is flushed out of the TLS session as it is written.
    let id = publish_one(&server, "news:a", json!({"k": "v"})).await;
    read_until(&mut tls, &mut got, format!("id: {id}\ndata: {{\"k\":\"v\"}}\n\n").as_bytes()).await;
    server.stop().await;
}
