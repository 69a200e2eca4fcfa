//! `GET /metrics` scraped from real servers: every family listed in the README with one
//! meaning per label name, series pre-created at 0, `process_*` from /proc, connection
//! refusals by transport and reason, backend auth calls by outcome with their latency
//! and the cache, webhook latency and errors. The admin listener is loopback without a
//! secret here, so scrapes need no bearer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use support::backend::{Backend, EventReply, SECRET, Verdict, dead_addr, ws_with};
use support::raw::RawConn;
use support::realtime::{metric, metrics, wait_metric, within};
use support::ws::WsClient;
use support::{TestServer, http};

/// Every label name and what it means; a family may use no other.
const LABELS: [&str; 9] =
    ["listener", "class", "transport", "reason", "outcome", "subject", "version", "webhook", "protocol"];

/// `# TYPE` lines: family name → type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// Label names of every sample line.
fn label_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else { continue };
        let labels = &labels[..labels.find('}').unwrap()];
        for pair in labels.split(',') {
            names.insert(pair.split_once('=').unwrap().0.to_owned());
        }
    }
    names
}

/// The sum of every series starting with `prefix`.
fn sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn refused(transport: &str, reason: &str) -> String {
    format!("sidewire_connections_refused_total{{transport=\"{transport}\",reason=\"{reason}\"}}")
}

fn auth_calls(outcome: &str) -> String {
    format!("sidewire_auth_calls_total{{outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn every_family_is_documented_precreated_and_uses_known_labels() {
    let server = TestServer::start("").await;
    let text = metrics(&server).await;
    let families = families(&text);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("\n## Metrics").expect("README has a Metrics section")..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |i| i + 1)];
    for (name, kind) in &families {
        // As exposed: counters carry `_total` (OpenMetrics); histograms are listed bare.
        let exposed = if kind == "counter" { format!("{name}_total") } else { name.clone() };
        assert!(
            section.contains(&format!("`{exposed}`")) || section.contains(&format!("`{exposed}{{")),
            "README Metrics section does not list {exposed}"
        );
    }
    let names = label_names(&text);
    for name in &names {
        assert!(LABELS.contains(&name.as_str()) || name == "le", "unexpected label name {name}");
    }
    assert!(!names.contains("kind"), "`kind` was renamed to reason/outcome/subject");

    // Pre-created at 0 (a missing series reads "no data", not 0, in Prometheus).
    for series in [
        refused("tcp", "limit"),
        refused("websocket", "origin"),
        refused("sse", "auth"),
        refused("longpoll", "auth_unavailable"),
        refused("sse", "channel"),
        auth_calls("ok"),
        auth_calls("timeout"),
        auth_calls("bad_answer"),
        "sidewire_auth_cache_hits_total".into(),
        "sidewire_auth_cache_misses_total".into(),
        "sidewire_auth_call_seconds_count".into(),
        r#"sidewire_webhook_seconds_count{webhook="lifecycle"}"#.into(),
        r#"sidewire_webhook_errors_total{webhook="message",reason="timeout"}"#.into(),
        r#"sidewire_evictions_total{reason="heartbeat_timeout"}"#.into(),
        r#"sidewire_evictions_total{reason="protocol_error"}"#.into(),
        r#"sidewire_evictions_total{reason="auth_revoked"}"#.into(),
        r#"sidewire_reloads_total{subject="config",outcome="refused"}"#.into(),
        r#"sidewire_reloads_total{subject="tls",outcome="failed"}"#.into(),
        r#"sidewire_realtime_connections{transport="sse"}"#.into(),
        r#"sidewire_open_connections{listener="tls"}"#.into(),
        r#"sidewire_upstream_errors_total{reason="timeout"}"#.into(),
        r#"sidewire_webhook_dropped_total{reason="queue_full"}"#.into(),
    ] {
        assert!(text.lines().any(|l| l == format!("{series} 0")), "{series} is not pre-created at 0:\n{text}");
    }
    assert!(!text.contains("connection_limit"), "refusals are not evictions");
    assert!(!text.contains(&refused("websocket", "channel")), "WebSocket channels are refused per subscribe");

    if cfg!(target_os = "linux") {
        assert!(metric(&text, "process_resident_memory_bytes") > 1e6, "{text}");
        assert!(metric(&text, "process_virtual_memory_bytes") >= metric(&text, "process_resident_memory_bytes"));
        assert!(metric(&text, "process_open_fds") >= 3.0, "{text}");
        assert!(metric(&text, "process_max_fds") >= metric(&text, "process_open_fds"), "{text}");
        assert!(metric(&text, "process_cpu_seconds_total") > 0.0, "{text}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = metric(&text, "process_start_time_seconds");
        assert!(started > now - 3600.0 && started <= now + 1.0, "start {started}, now {now}");
        assert_eq!(families.get("process_cpu_seconds").map(String::as_str), Some("counter"));
        // Each scrape reads /proc again: a socket opened since shows up.
        let before = metric(&text, "process_open_fds");
        let held: Vec<_> = (0..5).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        assert!(metric(&metrics(&server).await, "process_open_fds") >= before + 5.0);
        drop(held);
    }
    server.stop().await;
}

/// Routes for every transport, `room:*` for signed-in users, `public:*` for anyone, and
/// one realtime connection per address; `origins` only lets `https://app.example` in.
fn refusal_yaml(backend: &str) -> String {
    format!(
        r#"
backend: {{ url: "{backend}", timeout: 2s }}
auth: {{ anonymous: true }}
routes:
  - {{ path: "/ws", transport: websocket }}
  - {{ path: "/events", transport: sse }}
  - {{ path: "/poll", transport: longpoll }}
channels:
  - {{ match: "room:*" }}
  - {{ match: "public:*", public: true }}
limits: {{ max_connections_per_ip: 1, origins: ["https://app.example"] }}
"#
    )
}

async fn status(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = http().get(server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within(path, req.send()).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn refusals_are_counted_by_transport_and_reason() {
    let backend = Backend::start().await;
    let server = TestServer::start(&refusal_yaml(&backend.url())).await;
    let evil = [("origin", "https://evil.example")];

    // origin (checked before any slot is taken)
    assert!(ws_with(&server, "/ws", &evil).await.is_err());
    assert_eq!(status(&server, "/events?channel=public:a", &evil).await, 403);
    assert_eq!(status(&server, "/poll?channel=public:a&timeout=0", &evil).await, 403);
    // limit: one realtime connection per address.
    let (held, _) = WsClient::open(&server, "/ws").await;
    assert!(ws_with(&server, "/ws", &[]).await.is_err());
    assert_eq!(status(&server, "/events?channel=public:a", &[]).await, 429);
    assert_eq!(status(&server, "/poll?channel=public:a&timeout=0", &[]).await, 429);
    drop(held);
    wait_metric(&server, r#"sidewire_realtime_connections{transport="websocket"}"#, |v| v == 0.0).await;
    // auth: an unknown token is refused by the backend (401).
    let (code, _) = support::backend::close_of(&mut ws_with(&server, "/ws?token=nope", &[]).await.unwrap()).await;
    assert_eq!(code, 4002);
    assert_eq!(status(&server, "/events?channel=public:a&token=nope", &[]).await, 401);
    assert_eq!(status(&server, "/poll?channel=public:a&timeout=0&token=nope", &[]).await, 401);
    // channel: anonymous clients may not read `room:*`.
    assert_eq!(status(&server, "/events?channel=room:1", &[]).await, 403);

    let text = metrics(&server).await;
    for transport in ["websocket", "sse", "longpoll"] {
        assert_eq!(metric(&text, &refused(transport, "origin")), 1.0, "{transport}\n{text}");
        assert_eq!(metric(&text, &refused(transport, "auth")), 1.0, "{transport}\n{text}");
        assert_eq!(metric(&text, &refused(transport, "limit")), 1.0, "{transport}\n{text}");
    }
    assert_eq!(metric(&text, &refused("sse", "channel")), 1.0);
    assert_eq!(metric(&text, &refused("tcp", "limit")), 0.0);
    // Refusals are not evictions of admitted connections.
    assert_eq!(sum(&text, "sidewire_evictions_total{"), 0.0, "{text}");
    server.stop().await;

    // auth_unavailable: nobody answers at backend.url.
    let down = TestServer::start(&refusal_yaml(&format!("http://{}", dead_addr().await))).await;
    assert_eq!(status(&down, "/events?channel=public:a&token=t", &[]).await, 503);
    assert_eq!(metric(&metrics(&down).await, &refused("sse", "auth_unavailable")), 1.0);
    assert_eq!(metric(&metrics(&down).await, &auth_calls("error")), 1.0);
    down.stop().await;
}

#[tokio::test]
async fn the_tcp_connection_cap_counts_refusals_not_evictions() {
    let server = TestServer::start("limits: { max_open_connections: 1 }\n").await;
    // The first connection holds the only slot (a request answered proves it was admitted).
    let mut first = RawConn::connect(server.public).await;
    first.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    first.read_head().await;
    let mut second = RawConn::connect(server.public).await;
    assert!(second.read_to_close().await.is_empty(), "over the cap the socket is closed unanswered");
    wait_metric(&server, &refused("tcp", "limit"), |v| v == 1.0).await;
    let text = metrics(&server).await;
    assert!(!text.contains("connection_limit"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn auth_calls_are_counted_by_outcome_timed_and_cached() {
    let backend = Backend::start().await;
    backend.allow("ok", "alice", &["room:*"]);
    backend.set("no", Verdict::Status(403));
    backend.set("broken", Verdict::Status(500));
    backend.set("garbage", Verdict::Allow(json!({ "not": "an answer" })));
    backend.set("slow", Verdict::Hang);
    let yaml = refusal_yaml(&backend.url()).replace("timeout: 2s", "timeout: 300ms");
    let server = TestServer::start(&yaml).await;
    let poll = |token: &str| format!("/poll?channel=room:1&timeout=0&token={token}");

    assert_eq!(status(&server, &poll("ok"), &[]).await, 200);
    assert_eq!(status(&server, &poll("ok"), &[]).await, 200, "answered from the cache");
    assert_eq!(status(&server, &poll("nope"), &[]).await, 401);
    assert_eq!(status(&server, &poll("no"), &[]).await, 403);
    assert_eq!(status(&server, &poll("broken"), &[]).await, 503);
    assert_eq!(status(&server, &poll("garbage"), &[]).await, 503);
    assert_eq!(status(&server, &poll("slow"), &[]).await, 503);

    let text = metrics(&server).await;
    let want = [("ok", 1.0), ("unauthorized", 1.0), ("forbidden", 1.0), ("bad_answer", 2.0), ("timeout", 1.0)];
    for (outcome, n) in want {
        assert_eq!(metric(&text, &auth_calls(outcome)), n, "{outcome}\n{text}");
    }
    assert_eq!(metric(&text, &auth_calls("error")), 0.0);
    assert_eq!(backend.auth_count(), 6);
    assert_eq!(metric(&text, "sidewire_auth_call_seconds_count"), 6.0, "{text}");
    // The hung call took the whole backend.timeout.
    assert!(metric(&text, "sidewire_auth_call_seconds_sum") >= 0.3, "{text}");
    assert_eq!(metric(&text, "sidewire_auth_cache_misses_total"), 6.0, "{text}");
    assert_eq!(metric(&text, "sidewire_auth_cache_hits_total"), 1.0, "{text}");
    server.stop().await;
}

#[tokio::test]
async fn webhooks_are_timed_and_their_errors_counted() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["chat:*"]);
    // Lifecycle `connect` refused (400); message webhooks fail with 502.
    backend.respond(|body, _| match body["type"].as_str() {
        Some("connect") => EventReply::status(400),
        Some("message") => EventReply::status(502),
        _ => EventReply::ok(json!({})),
    });
    let yaml = format!(
        r#"
backend: {{ url: "{}" }}
webhooks: {{ secret: "{SECRET}", events: [message, connect] }}
channels:
  - {{ match: "chat:*", client_publish: backend }}
"#,
        backend.url()
    );
    let server = TestServer::start(&yaml).await;
    let (mut alice, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    alice.subscribe("chat:1", None).await;
    alice.send_json(json!({ "type": "publish", "channel": "chat:1", "data": "hi", "ref": "p1" })).await;
    wait_metric(&server, r#"sidewire_webhook_errors_total{webhook="message",reason="status"}"#, |v| v == 1.0).await;

    let rejected = r#"sidewire_webhook_errors_total{webhook="lifecycle",reason="rejected"}"#;
    wait_metric(&server, rejected, |v| v == 1.0).await;
    let text = metrics(&server).await;
    assert_eq!(metric(&text, r#"sidewire_webhook_errors_total{webhook="message",reason="status"}"#), 1.0, "{text}");
    assert_eq!(metric(&text, r#"sidewire_webhook_seconds_count{webhook="message"}"#), 1.0, "{text}");
    assert_eq!(metric(&text, r#"sidewire_webhook_seconds_count{webhook="lifecycle"}"#), 1.0, "{text}");
    assert_eq!(metric(&text, r#"sidewire_webhook_dropped_total{reason="rejected"}"#), 1.0, "{text}");
    assert_eq!(sum(&text, "sidewire_webhook_errors_total{"), 2.0, "{text}");
    server.stop().await;
}
