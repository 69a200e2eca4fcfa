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
