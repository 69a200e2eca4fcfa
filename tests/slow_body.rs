//! Stalled request bodies (`limits.body_read_timeout`, SPEC §9) over raw sockets: an
//! admin POST whose body stops is answered 408 (after auth), and a pass-through request
//! whose body stops is cancelled at the backend and answered 408.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use http_body_util::BodyExt;
use support::realtime::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a request head announcing a 100-byte body, then 10 bytes of it, then nothing.
/// Returns the socket (held open) and the response text once the server answers.
async fn stalled_post(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n{extra}\r\n{{\"channel\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within("the answer to a stalled body", s.read(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    (s, text)
}

#[tokio::test]
async fn an_admin_post_whose_body_stalls_is_408() {
    let server = TestServer::start(&yaml("limits: { body_read_timeout: 300ms }")).await;
    let (_s, text) = stalled_post(server.admin, "/publish", "").await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"timeout\""), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn an_unauthenticated_admin_post_is_refused_before_its_body_is_read() {
    // The timeout is far beyond the test's wait: a 401 can only come before the body.
    let server = TestServer::start(&yaml("admin: { secret: s3cret }\nlimits: { body_read_timeout: 1h }")).await;
    let (_s, text) = stalled_post(server.admin, "/publish", "").await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_pass_through_body_that_stalls_is_cancelled_at_the_backend_and_408() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(1);
    let backend = FakeBackend::start(move |req| {
        let tx = tx.clone();
        async move {
            // Reads the whole body; reports whether it was cut off.
            let cut = req.into_body().collect().await.is_err();
            let _ = tx.send(cut).await;
            http::Response::new(full("read"))
        }
    })
    .await;
    let extra = format!("backend: {{ url: \"{}\" }}\nlimits: {{ body_read_timeout: 300ms }}", backend.url());
    let server = TestServer::start(&yaml(&extra)).await;
    let (_s, text) = stalled_post(server.public, "/upload", "").await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let cut = within("the backend to see the request end", rx.recv()).await.unwrap();
    assert!(cut, "the backend request was not cancelled");
    // Not counted as a backend failure.
    let text = metrics(&server).await;
    assert!(text.contains("sidewire_upstream_errors_total"), "{text}");
    for kind in ["failed", "timeout", "connect"] {
        assert_eq!(metric(&text, &format!("sidewire_upstream_errors_total{{reason=\"{kind}\"}}")), 0.0, "{text}");
    }
    server.stop().await;
}
