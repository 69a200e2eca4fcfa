//! HTTP/2 connection lifetime (SPEC §9) with a real h2 client: idle connections are
//! closed with GOAWAY after `limits.h2_idle_timeout` (h2c and TLS), a connection with an
//! open stream is not, and an SSE stream evicted as a slow consumer is reset with
//! RST_STREAM(CANCEL) while the other streams of its connection carry on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use h2::client::SendRequest;
use serde_json::json;
use support::realtime::*;
use support::tls::{Cert, CertFiles, Client};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

const IDLE: &str = "sidewire_evictions_total{reason=\"h2_idle\"}";

/// An HTTP/2 client on `io`; the connection task yields how the connection ended.
async fn handshake<T>(io: T, window: u32) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::Builder::new().initial_window_size(window).handshake(io).await.unwrap();
    (client, tokio::spawn(conn))
}

/// Waits for the server to end the connection gracefully: GOAWAY then close. The
/// client may still be writing (its PING ack) when the socket closes, which it reports
/// as an I/O error; a protocol error (the server sent GOAWAY with an error code, or
/// reset streams) is not acceptable.
async fn closed(conn: JoinHandle<Result<(), h2::Error>>) {
    match within("the idle connection to close", conn).await.unwrap() {
        Ok(()) => {}
        Err(e) => assert!(e.is_io(), "the connection ended with {e}"),
    }
}

/// A GET whose whole body is read (releasing flow control as it goes); returns status and body.
async fn get(client: &mut SendRequest<Bytes>, url: &str) -> (u16, Bytes) {
    let req = http::Request::get(url).body(()).unwrap();
    let (res, _) = client.clone().ready().await.unwrap().send_request(req, true).unwrap();
    let res = within("an h2 response", res).await.unwrap();
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    (status, Bytes::from(out))
}

/// Opens an SSE stream and waits for its first block (`retry:` and the cursor).
async fn open_sse(client: &mut SendRequest<Bytes>, url: &str) -> h2::RecvStream {
    let req = http::Request::get(url).body(()).unwrap();
    let (res, _) = client.clone().ready().await.unwrap().send_request(req, true).unwrap();
    let res = within("the SSE response", res).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = within("the SSE head", body.data()).await.unwrap().unwrap();
    assert!(first.starts_with(b"retry: "), "{first:?}");
    body
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_with_goaway() {
    let server = TestServer::start(&yaml("limits: { h2_idle_timeout: 300ms }")).await;
    let tcp = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let (mut client, conn) = handshake(tcp, 65_535).await;
    let (status, body) = get(&mut client, &server.url("/_sidewire/client.js")).await;
    assert_eq!(status, 200);
    assert!(!body.is_empty());
    // No stream is open any more: the server sends GOAWAY (NO_ERROR) and closes.
    closed(conn).await;
    assert_eq!(metric(&metrics(&server).await, IDLE), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn an_h2c_connection_with_an_open_stream_is_not_idle() {
    let server = TestServer::start(&yaml("limits: { h2_idle_timeout: 200ms }")).await;
    let tcp = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let (mut client, conn) = handshake(tcp, 65_535).await;
    let mut sse = open_sse(&mut client, &server.url("/events?channel=kept")).await;
    // Several idle timeouts pass while the stream is open: the connection stays.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(!conn.is_finished());
    publish_ok(&http(), &server, "kept", json!("still here")).await;
    let chunk = within("the published event", sse.data()).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("data: still here"), "{chunk:?}");
    assert_eq!(metric(&metrics(&server).await, IDLE), 0.0);
    // Once the client drops the stream, the idle timeout runs.
    drop(sse);
    closed(conn).await;
    assert_eq!(metric(&metrics(&server).await, IDLE), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_h2_connection_over_tls_is_closed_with_goaway() {
    let cert = Cert::new("h2-idle");
    let files = CertFiles::new(&cert);
    let extra = format!("limits: {{ h2_idle_timeout: 300ms }}\n{}", files.yaml("1h"));
    let server = TestServer::start(&yaml(&extra)).await;
    let tls = Client::new(&[&cert], &[b"h2"]).connect(server.tls.unwrap()).await.unwrap();
    let (mut client, conn) = handshake(tls, 65_535).await;
    let (status, _) = get(&mut client, "https://localhost/_sidewire/client.js").await;
    assert_eq!(status, 200);
    closed(conn).await;
    assert_eq!(metric(&metrics(&server).await, IDLE), 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_h2_sse_stream_is_reset_and_its_queue_freed() {
    let server = TestServer::start(&yaml("limits: { subscriber_queue: 16 }")).await;
    let tcp = tokio::net::TcpStream::connect(server.public).await.unwrap();
    // A 2 KiB stream window the client never reopens: the server's writes to this stream
    // stop after a couple of events, so its queue fills.
    let (mut client, conn) = handshake(tcp, 2048).await;
    let mut sse = open_sse(&mut client, &server.url("/events?channel=feed")).await;
    wait_metric(&server, &conns("sse"), |v| v == 1.0).await;
    let admin = http();
    for n in 0..100 {
        publish_ok(&admin, &server, "feed", json!({ "n": n, "pad": "x".repeat(1024) })).await;
    }
    wait_metric(&server, "sidewire_evictions_total{reason=\"slow_consumer\"}", |v| v >= 1.0).await;
    // Freed at the eviction, while the client still has not read anything more.
    wait_metric(&server, &conns("sse"), |v| v == 0.0).await;

    // The stream was reset with CANCEL (after the bytes it had been sent).
    let err = within("the reset", async {
        loop {
            match sse.data().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("the evicted stream ended normally instead of being reset"),
            }
        }
    })
    .await;
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    // The connection and its other streams are not affected.
    let (status, _) = get(&mut client, &server.url("/_sidewire/client.js")).await;
    assert_eq!(status, 200);
    assert!(!conn.is_finished());
    server.stop().await;
}
