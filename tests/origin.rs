//! The `Origin` check of realtime requests (SPEC §2 `limits.origins`): `[]` allows the
//! same host only, a list allows exactly its entries, `*` allows all. A refused origin
//! is a 403 before the upgrade or the stream, and before anyone asks the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::backend::{Backend, ws_with};
use support::realtime::{Refusal, within};
use support::sse::{SseReader, get_json, h2c};
use support::{TestServer, http};

fn yaml(origins: &str) -> String {
    format!(
        "auth: {{ anonymous: true }}\nchannels:\n  - {{ match: \"public:*\", public: true }}\n\
         limits: {{ origins: {origins} }}\n"
    )
}

/// Whether a WebSocket with `origin` is let through (welcome) or refused with 403.
async fn ws_allowed(server: &TestServer, origin: Option<&str>) -> bool {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    match ws_with(server, "/ws", &headers).await {
        Ok(mut ws) => {
            support::realtime::expect_type(&mut ws, "welcome").await;
            true
        }
        Err(Refusal::Status(403)) => false,
        Err(other) => panic!("unexpected refusal {other:?}"),
    }
}

/// The same for SSE and long-poll (on `client`): `true` on 200, `false` on a 403 JSON error.
async fn http_allowed(client: &reqwest::Client, server: &TestServer, path: &str, origin: Option<&str>) -> bool {
    let mut req = client.get(server.url(path));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let res = within("a realtime response", req.send()).await.unwrap();
    let status = res.status().as_u16();
    if status == 200 {
        return true;
    }
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    false
}

/// `origin` on every transport; all must agree.
async fn allowed(server: &TestServer, origin: Option<&str>) -> bool {
    let ws = ws_allowed(server, origin).await;
    let sse = http_allowed(&http(), server, "/events?channel=public:a", origin).await;
    let poll = http_allowed(&http(), server, "/poll?channel=public:a&timeout=0", origin).await;
    assert_eq!((ws, sse, poll), (ws, ws, ws), "transports disagree on {origin:?}");
    ws
}

#[tokio::test]
async fn empty_list_allows_the_same_host_only() {
    let server = TestServer::start(&yaml("[]")).await;
    let same = format!("http://{}", server.public);
    assert!(allowed(&server, Some(&same)).await);
    assert!(allowed(&server, Some(&format!("http://{}/", server.public))).await, "a trailing / aside");
    assert!(!allowed(&server, Some(&format!("https://{}", server.public))).await, "another scheme");
    assert!(allowed(&server, None).await, "no Origin: not a browser");
    assert!(!allowed(&server, Some("http://evil.example")).await);
    assert!(!allowed(&server, Some(&format!("http://{}.evil.example", server.public.ip()))).await);
    assert!(!allowed(&server, Some(&format!("http://{}:1", server.public.ip()))).await, "another port");
    assert!(!allowed(&server, Some("null")).await);
    server.stop().await;
}

#[tokio::test]
async fn behind_a_tls_proxy_the_forwarded_scheme_counts() {
    let server = TestServer::start(&yaml("[]")).await;
    let https = format!("https://{}", server.public);
    let headers = [("origin", https.as_str()), ("x-forwarded-proto", "https")];
    let mut ws = ws_with(&server, "/ws", &headers).await.expect("allowed behind a TLS proxy");
    support::realtime::expect_type(&mut ws, "welcome").await;
    let (status, _) = get_json(&http(), &server.url("/poll?channel=public:a&timeout=0"), &headers).await;
    assert_eq!(status, 200);
    let http_origin = format!("http://{}", server.public);
    let downgraded = [("origin", http_origin.as_str()), ("x-forwarded-proto", "https")];
    assert!(matches!(ws_with(&server, "/ws", &downgraded).await, Err(Refusal::Status(403))));
    server.stop().await;
}

#[tokio::test]
async fn same_host_over_http2_uses_the_authority() {
    // HTTP/2 has no Host header: the host is the request's `:authority`.
    let server = TestServer::start(&yaml("[]")).await;
    let client = h2c();
    let same = format!("http://{}", server.public);
    let url = server.url("/events?channel=public:a");
    let sse = SseReader::open(&client, &url, &[("origin", &same)]).await;
    assert_eq!(sse.response().version(), http::Version::HTTP_2);
    assert!(!http_allowed(&client, &server, "/events?channel=public:a", Some("http://evil.example")).await);
    server.stop().await;
}

#[tokio::test]
async fn a_list_allows_exactly_its_origins() {
    let server = TestServer::start(&yaml("[\"https://app.example.com\"]")).await;
    assert!(allowed(&server, Some("https://app.example.com")).await);
    assert!(allowed(&server, None).await);
    for other in ["http://app.example.com", "https://app.example.com.evil.net", "https://evil.example", "null"] {
        assert!(!allowed(&server, Some(other)).await, "{other}");
    }
    server.stop().await;
}

#[tokio::test]
async fn star_allows_every_origin() {
    let server = TestServer::start(&yaml("[\"*\"]")).await;
    for origin in ["http://evil.example", "https://app.example.com", "null"] {
        assert!(allowed(&server, Some(origin)).await, "{origin}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_refused_origin_never_reaches_the_backend() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["room:*"]);
    let yaml = format!("backend: {{ url: \"{}\" }}\nchannels:\n  - {{ match: \"room:*\" }}\n", backend.url());
    let server = TestServer::start(&yaml).await;
    let evil = [("origin", "http://evil.example")];
    assert!(matches!(ws_with(&server, "/ws?token=tok-a", &evil).await, Err(Refusal::Status(403))));
    let (status, _) = get_json(&http(), &server.url("/events?channel=room:1&token=tok-a"), &evil).await;
    assert_eq!(status, 403);
    assert_eq!(backend.auth_count(), 0);
    server.stop().await;
}
