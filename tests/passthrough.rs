//! Pass-through (SPEC §8) through real sockets.
mod support;

use support::*;

#[tokio::test]
async fn forwards_and_sets_forwarded_headers() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&format!("backend: {{ url: \"{}\" }}", backend.url())).await;
    let res = http()
        .get(server.url("/hello?x=1"))
        .header("x-forwarded-for", "9.9.9.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["uri"], "/hello?x=1");
    assert_eq!(body["headers"]["x-forwarded-for"], "9.9.9.9, 127.0.0.1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        body["headers"]["x-forwarded-host"],
        server.public.to_string()
    );
    server.stop().await;
}
