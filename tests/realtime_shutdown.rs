//! Graceful shutdown of realtime clients (SPEC §9, STYLE 16): WebSocket close 1001, SSE
//! streams end with a spread-out `retry:`, pending long-polls are answered, and the
//! drain finishes as soon as they are gone instead of waiting out `shutdown_grace`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use support::realtime::*;
use support::*;

const SSE_CLIENTS: usize = 20;

#[tokio::test]
async fn shutdown_closes_every_realtime_client_and_drains_promptly() {
    let server = TestServer::start(&yaml("shutdown_grace: 30s")).await;
    let mut ws = ws(&server).await;
    subscribe(&mut ws, "news").await;
    let mut streams = Vec::new();
    for _ in 0..SSE_CLIENTS {
        streams.push(sse(&server, "channel=news").await);
    }
    let url = server.url("/poll?channel=news&timeout=60s");
    let pending_poll = tokio::spawn(async move { http().get(url).send().await.unwrap() });
    wait_metric(&server, &conns("longpoll"), |v| v == 1.0).await;

    server.handle.shutdown();

    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, Some(1001), "WebSocket clients get 1001 on shutdown");

    let mut delays = HashSet::new();
    for mut s in streams {
        let events = s.drain().await;
        let last = events.last().expect("the stream ended without a farewell");
        let retry = last.retry.expect("the last SSE block is a retry: line");
        assert!(retry >= 2000, "reconnect delay {retry} ms is below the normal 2000");
        delays.insert(retry);
    }
    assert!(delays.len() > 1, "{SSE_CLIENTS} streams all asked to reconnect after the same delay");

    let res = within("the pending long-poll", pending_poll).await.unwrap();
    assert_eq!(res.status(), 200);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["messages"], serde_json::json!([]));

    // Every client is gone, so the drain has nothing left to wait for: it must not sit
    // out the 30 s grace.
    within("the drain", server.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stopped_reading_does_not_hold_up_the_drain() {
    let server = TestServer::start(&yaml("shutdown_grace: 30s")).await;
    let mut stalled = ws_raw(&server, None, true).await.unwrap();
    subscribe(&mut stalled, "feed").await;
    // Megabytes: more than its socket buffers take, so its session is stuck in a
    // write, yet far fewer messages than its queue holds (1024), so it is not evicted.
    let client = http();
    for n in 0..600 {
        let data = serde_json::json!({ "n": n, "pad": "x".repeat(8 * 1024) });
        publish_ok(&client, &server, "feed", data).await;
    }
    let text = metrics(&server).await;
    assert_eq!(metric(&text, &conns("websocket")), 1.0);
    assert_eq!(metric(&text, "sidewire_evictions_total{reason=\"slow_consumer\"}"), 0.0);

    // Shutdown starts while the session is stuck in a write; the client, slow but
    // alive, reads again: after what its socket held comes 1001 (the messages queued
    // but not written are dropped, not sent first). The session must not wait for the
    // heartbeat timeout (60 s) nor hold the drain for the whole 30 s grace.
    server.handle.shutdown();
    let (code, _) = close_code(&mut stalled).await;
    assert_eq!(code, Some(1001), "a slow client gets 1001 at shutdown");
    within("the drain", server.stop()).await;
}
