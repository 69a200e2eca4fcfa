//! The admin listener: health, readiness, Prometheus metrics, JSON 404.
// Helpers outside #[test] fns panic on failure too (the lint only exempts #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start("{}").await;
    let client = http();
    let res = client.get(server.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = client.get(server.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ready\n");
    let res = client.head(server.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&format!("backend: {{ url: \"{}\" }}", backend.url())).await;
    let client = http();
    // One request that reaches the backend, one that cannot (port 1 on loopback refuses).
    assert_eq!(client.get(server.url("/ok")).send().await.unwrap().status(), 200);
    let down = TestServer::start("backend: { url: \"http://127.0.0.1:1\" }").await;
    assert_eq!(client.get(down.url("/down")).send().await.unwrap().status(), 502);

    let res = client.get(server.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    // prometheus-client writes OpenMetrics, and Prometheus needs to be told so.
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    let text = res.text().await.unwrap();
    for family in [
        "sidewire_open_connections",
        "sidewire_requests_total",
        "sidewire_upstream_latency_seconds",
        "sidewire_upstream_errors",
    ] {
        assert!(text.lines().any(|l| l.starts_with(family)), "no {family} samples in:\n{text}");
    }
    assert!(text.contains("sidewire_requests_total{class=\"2xx\"} 1"), "{text}");
    assert!(text.contains("sidewire_upstream_latency_seconds_count 1"), "{text}");
    // This very scrape arrives on an open admin connection.
    assert!(text.contains("sidewire_open_connections{listener=\"admin\"} 1"), "{text}");
    // Series exist from startup, so a rate over them is 0, not "no data".
    assert!(text.contains("sidewire_upstream_errors_total{reason=\"connect\"} 0"), "{text}");
    assert!(text.contains("sidewire_requests_total{class=\"5xx\"} 0"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    let down_text = client.get(down.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(down_text.contains("sidewire_upstream_errors_total{reason=\"connect\"} 1"), "{down_text}");
    assert!(down_text.contains("sidewire_requests_total{class=\"5xx\"} 1"), "{down_text}");
    server.stop().await;
    down.stop().await;
}

#[tokio::test]
async fn unknown_admin_path_is_json_404() {
    let server = TestServer::start("{}").await;
    let res = http().get(server.admin_url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    server.stop().await;
}

/// One raw HTTP/1.1 request to the admin listener with `headers`; the status and body.
async fn admin_raw(server: &TestServer, request_line: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut conn = support::raw::RawConn::connect(server.admin).await;
    let mut req = format!("{request_line}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if request_line.starts_with("POST") {
        let body = r#"{"channel":"room:1","data":1}"#;
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        req.push_str("\r\n");
    }
    conn.send(req).await;
    let head = conn.read_head().await;
    let body = String::from_utf8_lossy(&conn.read_to_close().await).into_owned();
    (support::raw::status_of(&head), body)
}

const ROOMS: &str = "channels:\n  - { match: \"room:*\" }\n";

#[tokio::test]
async fn secretless_admin_refuses_what_a_browser_sends_cross_site() {
    let server = TestServer::start(ROOMS).await;
    let own = server.admin.to_string();
    let own_origin = format!("http://{own}");
    let refused: [(&str, Vec<(&str, &str)>); 6] = [
        ("foreign Origin", vec![("Host", &own), ("Origin", "http://evil.example")]),
        ("another local origin", vec![("Host", &own), ("Origin", "http://localhost:3000")]),
        ("opaque Origin", vec![("Host", &own), ("Origin", "null")]),
        ("cross-site fetch", vec![("Host", &own), ("Sec-Fetch-Site", "cross-site")]),
        ("same-site fetch", vec![("Host", &own), ("Sec-Fetch-Site", "same-site")]),
        ("DNS rebinding", vec![("Host", "evil.example:9090")]),
    ];
    for (what, headers) in &refused {
        for line in ["POST /publish HTTP/1.1", "GET /metrics HTTP/1.1", "GET /channels HTTP/1.1"] {
            let (status, body) = admin_raw(&server, line, headers).await;
            assert_eq!(status, 403, "{what}: {line}");
            assert!(body.starts_with("Forbidden: ") && body.contains("admin.secret"), "{what}: {body}");
        }
    }
    // Nothing a browser refused got published.
    let text = support::realtime::metrics(&server).await;
    assert_eq!(support::realtime::metric(&text, "sidewire_messages_published_total"), 0.0, "{text}");

    let allowed: [(&str, Vec<(&str, &str)>); 6] = [
        ("curl", vec![("Host", &own)]),
        ("localhost", vec![("Host", "localhost:9090")]),
        ("IPv6 loopback", vec![("Host", "[::1]:9090")]),
        ("own origin", vec![("Host", &own), ("Origin", &own_origin)]),
        ("typed into the address bar", vec![("Host", &own), ("Sec-Fetch-Site", "none")]),
        ("same-origin fetch", vec![("Host", &own), ("Sec-Fetch-Site", "same-origin")]),
    ];
    for (what, headers) in &allowed {
        let (status, body) = admin_raw(&server, "POST /publish HTTP/1.1", headers).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    // Health probes answer whatever the headers.
    for path in ["/healthz", "/readyz"] {
        let (status, _) = admin_raw(&server, &format!("GET {path} HTTP/1.1"), &refused[5].1).await;
        assert_eq!(status, 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn with_a_secret_the_secret_decides_not_the_browser_headers() {
    let server = TestServer::start(&format!("{ROOMS}admin: {{ secret: s3cret }}\n")).await;
    let cross_site = [("Host", "evil.example"), ("Origin", "http://evil.example"), ("Sec-Fetch-Site", "cross-site")];
    let (status, _) = admin_raw(&server, "POST /publish HTTP/1.1", &cross_site).await;
    assert_eq!(status, 401);
    let mut with_secret = cross_site.to_vec();
    with_secret.push(("Authorization", "Bearer s3cret"));
    let (status, body) = admin_raw(&server, "POST /publish HTTP/1.1", &with_secret).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_need_the_secret_when_one_is_set() {
    let client = http();
    let server = TestServer::start("admin: { secret: s3cret }\n").await;
    let res = client.get(server.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = client.get(server.admin_url("/metrics")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = client.get(server.admin_url("/metrics")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("sidewire_build_info"));
    for path in ["/healthz", "/readyz"] {
        assert_eq!(client.get(server.admin_url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    server.stop().await;

    let public = TestServer::start("admin: { secret: s3cret, metrics_public: true }\n").await;
    let res = client.get(public.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // Only the metrics: the rest of the API still wants the secret.
    assert_eq!(client.get(public.admin_url("/channels")).send().await.unwrap().status(), 401);
    public.stop().await;
}
