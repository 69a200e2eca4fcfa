//! Reloads (SPEC §9): a reload applies to open connections too, and a reload that would
//! leave a non-loopback admin listener without a secret is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::backend::{Backend, counts};
use support::realtime::{conns, metric, sse, wait_metric, within, yaml};
use support::ws::WsClient;
use support::{TestServer, config, http};

#[tokio::test]
async fn open_websockets_follow_the_reloaded_channel_policy() {
    let server = TestServer::start(&yaml("")).await;
    let (mut ws, _) = WsClient::open(&server, "/ws").await;
    ws.subscribe("room:1", None).await;
    ws.send_json(json!({ "type": "publish", "channel": "room:1", "data": 1, "ref": 1 })).await;
    ws.expect("published").await;
    ws.expect("message").await;
    // Reload: clients may no longer publish anywhere.
    let denied = "auth: { anonymous: true }\nchannels:\n  - { match: \"*\", public: true, client_publish: deny }\n";
    server.handle.reload(config(denied)).await.unwrap();
    ws.send_json(json!({ "type": "publish", "channel": "room:1", "data": 2, "ref": 2 })).await;
    let refused = ws.expect_error("forbidden").await;
    assert_eq!(refused["ref"], 2);
    ws.assert_quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn a_reload_cannot_leave_a_non_loopback_admin_without_its_secret() {
    // Bound to an IPv4-mapped loopback, which the loopback exemption does not cover.
    let mut cfg = config("admin: { secret: s3cret }\n");
    cfg.admin.listen = "[::ffff:127.0.0.1]:0".parse().unwrap();
    let server = TestServer::start_config(cfg).await;
    let refused = server.handle.reload(config("")).await;
    assert!(refused.unwrap_err().contains("admin.secret"));
    // With a secret set, /metrics wants it too.
    let res = http().get(server.admin_url("/metrics")).bearer_auth("s3cret").send().await.unwrap();
    let text = res.text().await.unwrap();
    assert_eq!(metric(&text, "sidewire_reloads_total{subject=\"config\",outcome=\"refused\"}"), 1.0, "{text}");
    // The secret still guards the admin API.
    let res =
        http().post(server.admin_url("/publish")).json(&json!({ "channel": "a", "data": 1 })).send().await.unwrap();
    assert_eq!(res.status(), 401);
    server.stop().await;
}

/// Sends a request with an `X-Pad` header of `pad` bytes on a new connection; the status.
async fn status_with_header(server: &TestServer, pad: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let req = format!("GET /_sidewire/client.js HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(pad));
    let _ = s.write_all(req.as_bytes()).await;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[tokio::test]
async fn max_header_bytes_and_header_read_timeout_apply_to_new_connections_after_a_reload() {
    use tokio::io::AsyncReadExt;
    // Before: a minute for a request head (longer than any test wait).
    let server = TestServer::start(&yaml("limits: { header_read_timeout: 60s }")).await;
    assert_eq!(status_with_header(&server, 12_000).await, 200);
    let open = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let restart = server
        .handle
        .reload(config(&yaml("limits: { max_header_bytes: 8192, header_read_timeout: 200ms }")))
        .await
        .unwrap();
    assert!(restart.is_empty(), "{restart:?}");
    assert_eq!(status_with_header(&server, 12_000).await, 431);
    assert_eq!(status_with_header(&server, 1000).await, 200);
    // A new connection that sends nothing is closed after the new header_read_timeout.
    let mut silent = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(within("the silent connection to close", silent.read_to_end(&mut buf)).await.unwrap(), 0);
    drop(open);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_closes_anonymous_sessions_on_channels_no_longer_public() {
    let server = TestServer::start(&yaml("")).await;
    let (mut ws, _) = WsClient::open(&server, "/ws").await;
    ws.subscribe("room:1", None).await;
    // Subscribed to nothing: only the anonymous switch below can close it.
    let (mut idle, _) = WsClient::open(&server, "/ws").await;
    let mut stream = sse(&server, "channel=room:1").await;
    let url = server.url("/poll?channel=room:1&timeout=60s");
    let poll = tokio::spawn(async move { http().get(url).send().await.unwrap() });
    wait_metric(&server, &conns("longpoll"), |v| v == 1.0).await;

    // Reload: room:* is no longer public (anonymous clients stay allowed elsewhere).
    let closed =
        "auth: { anonymous: true }\nchannels:\n  - { match: \"room:*\" }\n  - { match: \"*\", public: true }\n";
    server.handle.reload(config(closed)).await.unwrap();
    assert_eq!(ws.expect_close().await.0, 4001);
    let rest = within("the SSE stream to end", stream.drain()).await;
    assert!(rest.iter().all(|e| e.data.is_none()), "{rest:?}");
    let res = within("the waiting long-poll", poll).await.unwrap();
    assert_eq!(res.status(), 401);
    // The one on no channel stays until anonymous access itself is turned off.
    idle.send_json(json!({ "type": "ping", "ref": 1 })).await;
    idle.expect("pong").await;
    let off = "auth: { anonymous: false }\nchannels:\n  - { match: \"*\", public: true }\n";
    server.handle.reload(config(off)).await.unwrap();
    assert_eq!(idle.expect_close().await.0, 4001);
    server.stop().await;
}

fn signed_in(backend: &Backend, channels: &str) -> String {
    format!("backend: {{ url: \"{}\" }}\nchannels:\n{channels}", backend.url())
}

#[tokio::test]
async fn a_reload_applies_presence_to_open_channels_and_forbids_lost_ones() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["room:*"]);
    let server = TestServer::start(&signed_in(&backend, "  - { match: \"room:*\" }\n")).await;
    let (mut ws, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    ws.subscribe("room:1", None).await;
    let (status, _) = support::backend::presence(&server, "room:1").await;
    assert_ne!(status, 200, "presence is off on room:*");

    // Presence turned on: the channel that already exists lists its subscriber.
    let on = signed_in(&backend, "  - { match: \"room:*\", presence: true }\n");
    server.handle.reload(config(&on)).await.unwrap();
    assert_eq!(counts(&server, "room:1").await, vec![("alice".to_owned(), 1)]);

    // No policy covers room:* any more: the signed-in client is forbidden (4003).
    let gone = signed_in(&backend, "  - { match: \"other:*\" }\n");
    server.handle.reload(config(&gone)).await.unwrap();
    assert_eq!(ws.expect_close().await.0, 4003);
    server.stop().await;
}
