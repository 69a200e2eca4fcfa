//! Pass-through (SPEC §8, §9) through real sockets: a real sidewire and a real fake
//! backend, both on port 0. Streaming is proved by ordering (the far side saw the first
//! chunk while the near side still held the rest), never by timing.
// `allow-unwrap-in-tests` covers only `#[test]` functions, not the helpers and the
// shared `support` module this test crate compiles: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::raw::{RawConn, header_values, status_of, within};
use support::*;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

fn backend_yaml(backend: &FakeBackend) -> String {
    format!("backend: {{ url: \"{}\" }}", backend.url())
}

/// Sends a request; a hang becomes a test failure.
async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    within("the response head", req.send()).await.unwrap()
}

/// The whole response body as text; a hang becomes a test failure.
async fn text(res: reqwest::Response) -> String {
    within("the response body", res.text()).await.unwrap()
}

/// The one value of `name` the backend saw, or `None`.
fn seen(headers: &HeaderMap, name: &str) -> Option<String> {
    let all: Vec<_> = headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(all.len() <= 1, "{name} arrived {} times: {all:?}", all.len());
    all.into_iter().next()
}

#[tokio::test]
async fn forwards_and_sets_forwarded_headers() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let res = send(http().get(server.url("/hello?x=1")).header("x-forwarded-for", "9.9.9.9")).await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = within("the response body", res.json()).await.unwrap();
    assert_eq!(body["uri"], "/hello?x=1");
    assert_eq!(body["headers"]["x-forwarded-for"], "9.9.9.9, 127.0.0.1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert_eq!(body["headers"]["x-forwarded-host"], server.public.to_string());
    server.stop().await;
}

// ── 1. hop-by-hop hygiene ───────────────────────────────────────────────────────

/// A backend that answers with every kind of hop-by-hop header, plus the request body
/// it received in `x-got-body`.
async fn hop_header_backend() -> FakeBackend {
    FakeBackend::start(|req: Request<Incoming>| async move {
        let got = stream::collect(req.into_body()).await.unwrap();
        Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authenticate", "Basic realm=\"x\"")
            .header("upgrade", "h2c")
            .header("transfer-encoding", "gzip, chunked")
            .header("x-resp-end", "kept")
            .header("x-got-body", String::from_utf8(got.data).unwrap())
            .body(full("ok"))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let backend = hop_header_backend().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let mut conn = RawConn::connect(server.public).await;
    conn.send(concat!(
        "POST /hygiene HTTP/1.1\r\n",
        "Host: app.example\r\n",
        "Connection: keep-alive, X-Hop-A, x-hop-b\r\n",
        "Keep-Alive: timeout=5\r\n",
        "Proxy-Connection: keep-alive\r\n",
        "TE: gzip\r\n",
        "Upgrade: h2c\r\n",
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n",
        "X-Hop-A: 1\r\n",
        "X-Hop-B: 2\r\n",
        "X-End-To-End: kept\r\n",
        "Transfer-Encoding: chunked\r\n",
        "\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    ))
    .await;
    let head = conn.read_head().await;
    assert_eq!(status_of(&head), 200, "{head}");

    let req = &backend.recorded()[0].headers;
    for hop in
        ["connection", "keep-alive", "proxy-connection", "te", "upgrade", "proxy-authorization", "x-hop-a", "x-hop-b"]
    {
        assert_eq!(seen(req, hop), None, "request header {hop} reached the backend");
    }
    // Only hyper's own framing of the forwarded body, not the client's `gzip`.
    assert_eq!(seen(req, "transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(seen(req, "host").as_deref(), Some("app.example"));
    assert_eq!(seen(req, "x-end-to-end").as_deref(), Some("kept"));

    for hop in ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "upgrade", "x-resp-hop"] {
        assert!(header_values(&head, hop).is_empty(), "response header {hop} reached the client:\n{head}");
    }
    for te in header_values(&head, "transfer-encoding") {
        assert_eq!(te, "chunked", "backend's transfer-encoding leaked:\n{head}");
    }
    assert_eq!(header_values(&head, "x-resp-end"), ["kept"]);
    assert_eq!(header_values(&head, "x-got-body"), ["hello"]);
    server.stop().await;
}

// ── 2. X-Forwarded-* ────────────────────────────────────────────────────────────

#[tokio::test]
async fn forwarded_headers_extend_the_chain_and_replace_claims() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let req = http()
        .get(server.url("/xff"))
        .header("host", "app.example")
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "2.2.2.2, 3.3.3.3")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example");
    let res = send(req).await;
    assert_eq!(res.status(), 200);
    let req = &backend.recorded()[0].headers;
    assert_eq!(seen(req, "x-forwarded-for").as_deref(), Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"));
    assert_eq!(seen(req, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen(req, "x-forwarded-host").as_deref(), Some("app.example"));
    assert_eq!(seen(req, "host").as_deref(), Some("app.example"));
    server.stop().await;
}

// ── 3. streaming both ways ──────────────────────────────────────────────────────

#[tokio::test]
async fn download_streams_before_the_backend_finishes() {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let backend = FakeBackend::start(move |_req| {
        let release = release.lock().unwrap().take();
        async move {
            let (tx, body) = stream::channel();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first;")).await.unwrap();
                if let Some(release) = release {
                    let _ = release.await;
                }
                let _ = tx.send(Bytes::from_static(b"second")).await;
            });
            Response::new(body)
        }
    })
    .await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let mut res = send(http().get(server.url("/download"))).await;
    assert_eq!(res.status(), 200);
    let mut got = Vec::new();
    while got.len() < b"first;".len() {
        let chunk = within("the first chunk while the backend is still sending", res.chunk()).await.unwrap();
        got.extend_from_slice(&chunk.expect("body ended before the backend was released"));
    }
    assert_eq!(got, b"first;");
    release_tx.send(()).unwrap();
    while let Some(chunk) = within("the rest of the body", res.chunk()).await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"first;second");
    server.stop().await;
}

#[tokio::test]
async fn upload_streams_before_the_client_finishes() {
    let (seen_tx, mut seen_rx) = mpsc::channel::<Bytes>(1);
    let backend = FakeBackend::start(move |req: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            use http_body_util::BodyExt;
            let mut body = req.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let mut total = first.len();
            seen_tx.send(first).await.unwrap();
            total += stream::count(body).await.unwrap() as usize;
            Response::new(full(total.to_string()))
        }
    })
    .await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let (tx, body) = stream::reqwest_channel();
    let upload = tokio::spawn(http().post(server.url("/upload")).body(body).send());
    tx.send(Bytes::from_static(b"chunk-1;")).await.unwrap();
    let first = within("the backend to see chunk 1 while chunk 2 is unsent", seen_rx.recv()).await.unwrap();
    assert_eq!(first, "chunk-1;");
    tx.send(Bytes::from_static(b"chunk-2")).await.unwrap();
    drop(tx);
    let res = within("the upload response", upload).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(text(res).await, "15");
    server.stop().await;
}

// ── 4. large upload in bounded memory ───────────────────────────────────────────

/// Peak resident memory of this test process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn large_upload_streams_in_bounded_memory() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 4096; // 256 MiB
    let backend = FakeBackend::start(|req: Request<Incoming>| async move {
        Response::new(full(stream::count(req.into_body()).await.unwrap().to_string()))
    })
    .await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    // The peak is process-wide, but the other tests here hold a few MiB at most.
    let before = peak_rss_kib();
    let body = stream::repeated(Bytes::from(vec![b'z'; CHUNK]), CHUNKS);
    // Seconds in a debug build; the bound is generous for a loaded machine.
    let upload = http().post(server.url("/big")).body(body).send();
    let res = tokio::time::timeout(Duration::from_secs(60), upload).await.expect("upload hung").unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(text(res).await, (CHUNK * CHUNKS).to_string());
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB for a 256 MiB upload: the body was buffered");
    server.stop().await;
}

// ── 5. chunked bodies and trailers ──────────────────────────────────────────────

fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(name, value.parse().unwrap());
    map
}

/// A body that sends `chunks` and then `trailer`, all queued up front.
fn chunked_with_trailers(chunks: &[&'static str], trailer: HeaderMap) -> Body {
    let (tx, rx) = mpsc::channel(chunks.len() + 1);
    for chunk in chunks {
        tx.try_send(Frame::data(Bytes::from_static(chunk.as_bytes()))).unwrap();
    }
    tx.try_send(Frame::trailers(trailer)).unwrap();
    stream::frames(rx)
}

#[tokio::test]
async fn chunked_bodies_and_trailers_pass_both_ways() {
    let backend = FakeBackend::start(|req: Request<Incoming>| async move {
        let got = stream::collect(req.into_body()).await.unwrap();
        let req_sum = got.trailers.and_then(|t| t.get("x-req-sum").cloned());
        Response::builder()
            .header("trailer", "x-checksum")
            .header("x-req-len", got.data.len())
            .header("x-req-sum", req_sum.unwrap_or_else(|| "missing".parse().unwrap()))
            .body(chunked_with_trailers(&["abc", "def"], trailers("x-checksum", "sum-abcdef")))
            .unwrap()
    })
    .await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let stream = TcpStream::connect(server.public).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/trailers")
        .header("host", "app.example")
        .header("te", "trailers")
        .header("trailer", "x-req-sum")
        .body(chunked_with_trailers(&["hello ", "world"], trailers("x-req-sum", "42")))
        .unwrap();
    let res = within("the response head", sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["transfer-encoding"], "chunked");
    assert_eq!(res.headers()["x-req-len"], "11");
    assert_eq!(res.headers()["x-req-sum"], "42", "request trailers did not reach the backend");
    let got = within("the response body", stream::collect(res.into_body())).await.unwrap();
    assert_eq!(got.data, b"abcdef");
    let trailers = got.trailers.expect("response trailers were dropped");
    assert_eq!(trailers["x-checksum"], "sum-abcdef");

    let req = &backend.recorded()[0].headers;
    assert_eq!(seen(req, "te").as_deref(), Some("trailers"));
    assert_eq!(seen(req, "transfer-encoding").as_deref(), Some("chunked"));
    server.stop().await;
}

// ── 6. Expect: 100-continue ─────────────────────────────────────────────────────

/// A backend answering every request with the request body.
async fn body_echo_backend() -> FakeBackend {
    FakeBackend::start(|req: Request<Incoming>| async move {
        let got = stream::collect(req.into_body()).await.unwrap();
        Response::new(full(got.data))
    })
    .await
}

#[tokio::test]
async fn expect_continue_gets_100_before_the_body() {
    let backend = body_echo_backend().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let mut conn = RawConn::connect(server.public).await;
    conn.send(concat!(
        "POST /upload HTTP/1.1\r\n",
        "Host: app.example\r\n",
        "Content-Length: 11\r\n",
        "Expect: 100-continue\r\n",
        "Connection: close\r\n",
        "\r\n",
    ))
    .await;
    let interim = conn.read_head().await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim}");
    conn.send("hello world").await;
    let head = conn.read_head().await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(conn.read_to_close().await, b"hello world");
    server.stop().await;
}

// ── 7. WebSocket tunnel on a non-realtime path ──────────────────────────────────

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let backend = FakeBackend::websocket_echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let url = format!("ws://{}/app/socket", server.public);
    let (mut ws, res) = within("the WebSocket handshake", tokio_tungstenite::connect_async(url)).await.unwrap();
    assert_eq!(res.status(), 101);
    let messages = [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(100_000)),
        Message::binary(vec![7u8; 70_000]),
    ];
    for msg in messages {
        ws.send(msg.clone()).await.unwrap();
        let echoed = within("the echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, msg);
    }
    ws.close(None).await.unwrap();
    let last = within("the close handshake", ws.next()).await;
    assert!(matches!(last, Some(Ok(Message::Close(_))) | None), "{last:?}");
    assert_eq!(backend.recorded()[0].uri.path(), "/app/socket");
    server.stop().await;
}

// ── 8. 502 / 504 and their metrics ──────────────────────────────────────────────

/// The value of `sidewire_upstream_errors_total{reason="…"}` on the admin listener.
async fn upstream_errors(server: &TestServer, kind: &str) -> u64 {
    let text = text(send(http().get(server.admin_url("/metrics"))).await).await;
    let prefix = format!("sidewire_upstream_errors_total{{reason=\"{kind}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
}

async fn assert_plain_error(res: reqwest::Response, status: u16) {
    assert_eq!(res.status(), status);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let body = text(res).await;
    assert!(!body.is_empty() && body.len() < 200, "body should be short plain text: {body:?}");
}

#[tokio::test]
async fn unreachable_backend_is_502() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    // A long header timeout: the 502 must come from the refused connect, not a timer.
    let server = TestServer::start(&format!("backend: {{ url: \"http://{closed}\", timeout: 60s }}")).await;
    let res = send(http().get(server.url("/anything"))).await;
    assert_plain_error(res, 502).await;
    assert_eq!(upstream_errors(&server, "connect").await, 1);
    assert_eq!(upstream_errors(&server, "timeout").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn silent_backend_is_504() {
    let backend = FakeBackend::start(|_req| std::future::pending::<Response<Body>>()).await;
    let server = TestServer::start(&format!("backend: {{ url: \"{}\", timeout: 300ms }}", backend.url())).await;
    let res = send(http().get(server.url("/slow"))).await;
    assert_plain_error(res, 504).await;
    assert_eq!(upstream_errors(&server, "timeout").await, 1);
    assert_eq!(upstream_errors(&server, "connect").await, 0);
    server.stop().await;
}

// ── 9. header limits and slowloris ──────────────────────────────────────────────

#[tokio::test]
async fn oversized_request_head_is_431() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let mut conn = RawConn::connect(server.public).await;
    let huge = "a".repeat(20 * 1024); // over the 16 KiB default
    // The server may answer and hang up before it has read everything we write.
    let _ = conn.try_send(format!("GET / HTTP/1.1\r\nHost: app.example\r\nX-Huge: {huge}\r\n\r\n")).await;
    let reply = String::from_utf8_lossy(&conn.read_to_close().await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply:?}");
    assert!(backend.recorded().is_empty());
    server.stop().await;
}

const SHORT_HEADER_TIMEOUT: &str = "limits: { header_read_timeout: 500ms }";

/// The server closed `conn` (EOF, reset, or an optional 408 first).
async fn assert_closed(conn: &mut RawConn) {
    let reply = String::from_utf8_lossy(&conn.read_to_close().await).into_owned();
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408 "), "{reply:?}");
}

#[tokio::test]
async fn stalled_request_head_is_closed() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&format!("{}\n{SHORT_HEADER_TIMEOUT}", backend_yaml(&backend))).await;
    let mut slow = RawConn::connect(server.public).await;
    slow.send("GET /slow HTTP/1.1\r\nHost: app.example\r\nX-Partial: ").await;
    // Another connection is served normally meanwhile.
    let res = send(http().get(server.url("/other"))).await;
    assert_eq!(res.status(), 200);
    assert_closed(&mut slow).await;
    assert!(backend.recorded().iter().all(|r| r.uri.path() != "/slow"));
    server.stop().await;
}

#[tokio::test]
async fn silent_connection_is_closed() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&format!("{}\n{SHORT_HEADER_TIMEOUT}", backend_yaml(&backend))).await;
    // Nothing at all, and half an HTTP/2 preface: neither has picked a protocol yet.
    let mut silent = RawConn::connect(server.public).await;
    let mut half_preface = RawConn::connect(server.public).await;
    half_preface.send("PRI * HTTP/2.0\r\n").await;
    assert_closed(&mut silent).await;
    assert_closed(&mut half_preface).await;
    server.stop().await;
}

// ── 10. ambiguous framing ───────────────────────────────────────────────────────

/// Sends one raw request and returns the reply up to the server's close.
async fn raw_exchange(server: &TestServer, request: &str) -> String {
    let mut conn = RawConn::connect(server.public).await;
    let _ = conn.try_send(request).await;
    String::from_utf8_lossy(&conn.read_to_close().await).into_owned()
}

#[tokio::test]
async fn conflicting_content_lengths_are_400() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let reply = raw_exchange(
        &server,
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply:?}");
    assert!(backend.recorded().is_empty());
    server.stop().await;
}

// hyper settles the next two before any handler runs, as RFC 9110 §8.6 and RFC 9112
// §6.1 allow, and leaves no trace of it in the request: a 400 would need a patched
// parser. What the tests pin down is the safety property: the backend gets exactly one
// framing, hyper's re-encoding, and nothing can be smuggled behind the body.

#[tokio::test]
async fn duplicate_equal_content_length_is_merged() {
    let backend = body_echo_backend().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let reply = raw_exchange(
        &server,
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 ") && reply.ends_with("\r\n\r\nhello"), "{reply:?}");
    let rec = backend.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(seen(&rec[0].headers, "content-length").as_deref(), Some("5"));
    server.stop().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_uses_chunked_and_closes() {
    let backend = body_echo_backend().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    for framing in
        ["Content-Length: 5\r\nTransfer-Encoding: chunked", "Transfer-Encoding: chunked\r\nContent-Length: 5"]
    {
        let request = format!("POST /x HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}");
        // No `Connection: close` asked for: reading to the close proves the server closes.
        let reply = raw_exchange(&server, &request).await;
        assert!(reply.starts_with("HTTP/1.1 200 ") && reply.ends_with("\r\n\r\nhello"), "{framing:?}: {reply:?}");
        assert_eq!(header_values(&reply, "connection"), ["close"], "{framing:?}");
    }
    for rec in backend.recorded() {
        assert_eq!(rec.uri.path(), "/x", "a request was smuggled past the body");
        assert_eq!(seen(&rec.headers, "content-length"), None);
        assert_eq!(seen(&rec.headers, "transfer-encoding").as_deref(), Some("chunked"));
    }
    assert_eq!(backend.recorded().len(), 2);
    server.stop().await;
}

/// A refused framing closes the connection: the bytes after the refused request are
/// never read as a next request (found by `checks/smuggling.sh`).
#[tokio::test]
async fn refused_framing_closes_the_connection() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    for (head, status) in [
        ("Host: a\r\nTransfer-Encoding: gzip, chunked", "501"),
        ("Host: a\r\nTransfer-Encoding: x-custom\r\nTransfer-Encoding: chunked", "501"),
        ("Host: a\r\nHost: b\r\nTransfer-Encoding: chunked", "400"),
    ] {
        // No `Connection: close` asked for: reading to the close proves the server closes.
        let reply = raw_exchange(&server, &format!("POST /x HTTP/1.1\r\n{head}\r\n\r\n0\r\n\r\n{smuggled}")).await;
        assert!(reply.starts_with(&format!("HTTP/1.1 {status} ")), "{head:?}: {reply:?}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{head:?}: {reply:?}");
        assert_eq!(header_values(&reply, "connection"), ["close"], "{head:?}");
    }
    assert!(backend.recorded().is_empty(), "{:?}", backend.recorded());
    server.stop().await;
}

/// HTTP/2 has no Transfer-Encoding, and h2 only checks the first `content-length`:
/// a repeated one reaches our own framing check.
#[tokio::test]
async fn h2_duplicate_content_length_is_400() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let stream = TcpStream::connect(server.public).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(server.url("/x"))
        .header("content-length", "5")
        .header("content-length", "5")
        .body(full("hello"))
        .unwrap();
    let res = within("the h2 response", sender.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(backend.recorded().is_empty());
    server.stop().await;
}

// ── 11. HTTP/2 cleartext ────────────────────────────────────────────────────────

#[tokio::test]
async fn h2c_prior_knowledge_reaches_the_backend_as_http11() {
    let backend = hop_header_backend().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    install_crypto();
    let client = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let req = client.post(server.url("/h2?q=1")).header("cookie", "a=1").header("cookie", "b=2").body("hello");
    let res = send(req).await;
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-got-body"], "hello");
    assert_eq!(text(res).await, "ok");

    let rec = &backend.recorded()[0];
    assert_eq!(rec.version, http::Version::HTTP_11);
    assert_eq!(rec.uri, "/h2?q=1");
    assert_eq!(seen(&rec.headers, "host"), Some(server.public.to_string()));
    assert_eq!(seen(&rec.headers, "x-forwarded-host"), Some(server.public.to_string()));
    // RFC 9113 §8.2.3: split cookie crumbs are joined for an HTTP/1.1 hop.
    assert_eq!(seen(&rec.headers, "cookie").as_deref(), Some("a=1; b=2"));
    server.stop().await;
}

// ── 12. backend dies mid-response ───────────────────────────────────────────────

/// Answers with "partial" and then, once `kill` is notified, fails the body, which
/// makes hyper drop the connection mid-response. `/sized` declares a length, `/ok` is
/// a normal answer.
async fn dying_backend(kill: Arc<tokio::sync::Notify>) -> FakeBackend {
    use futures_util::stream::once;
    FakeBackend::start(move |req: Request<Incoming>| {
        let kill = Arc::clone(&kill);
        async move {
            if req.uri().path() == "/ok" {
                return Response::new(full("fine"));
            }
            let partial = once(async { Ok(Frame::data(Bytes::from_static(b"partial"))) });
            let crash = once(async move {
                kill.notified().await;
                Err::<_, BoxError>("backend crashed".into())
            });
            let mut res =
                Response::new(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(partial.chain(crash))));
            if req.uri().path() == "/sized" {
                res.headers_mut().insert("content-length", "1000".parse().unwrap());
            }
            res
        }
    })
    .await
}

#[tokio::test]
async fn backend_dying_mid_response_fails_the_client_response() {
    let kill = Arc::new(tokio::sync::Notify::new());
    let backend = dying_backend(Arc::clone(&kill)).await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    for path in ["/chunked", "/sized"] {
        let mut res = send(http().get(server.url(path))).await;
        assert_eq!(res.status(), 200, "{path}");
        let first = within("the first chunk", res.chunk()).await.unwrap().unwrap();
        assert_eq!(first, "partial");
        kill.notify_one();
        let rest = within("the truncated body to fail", res.chunk()).await;
        assert!(rest.is_err(), "{path}: a truncated body must end in an error, got {rest:?}");
    }
    let res = send(http().get(server.url("/ok"))).await;
    assert_eq!(text(res).await, "fine");
    server.stop().await;
}

// ── backend.timeout is about the backend, not the upload ────────────────────────

#[tokio::test]
async fn slow_upload_longer_than_backend_timeout_succeeds() {
    let backend = FakeBackend::start(|req: Request<Incoming>| async move {
        Response::new(full(stream::count(req.into_body()).await.unwrap().to_string()))
    })
    .await;
    let server = TestServer::start(&format!("backend: {{ url: \"{}\", timeout: 1s }}", backend.url())).await;
    let (tx, body) = stream::reqwest_channel();
    let upload = tokio::spawn(http().post(server.url("/upload")).body(body).send());
    // 20 × 100 ms: the upload takes twice the timeout, the backend never idles for it.
    for _ in 0..20 {
        tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(tx);
    let res = within("the upload response", upload).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(text(res).await, "200");
    server.stop().await;
}

/// The idle timer of `slow_upload_…` must still fire when the backend stops reading
/// an upload: its socket buffers fill, no frame moves, and the client gets its 504.
#[tokio::test]
async fn backend_not_reading_an_upload_is_504() {
    let backend = FakeBackend::start(|_req| std::future::pending::<Response<Body>>()).await;
    // hyper flushes before closing a backend connection, which never completes while
    // the backend reads nothing, so this connection lingers past the 504: keep the
    // drain at stop short instead of waiting out the default grace.
    let yaml = format!("shutdown_grace: 1s\nbackend: {{ url: \"{}\", timeout: 300ms }}", backend.url());
    let server = TestServer::start(&yaml).await;
    // Far more than the socket buffers between here and the backend can absorb.
    let body = stream::repeated(Bytes::from(vec![b'z'; 64 * 1024]), 16 * 1024);
    let res = send(http().post(server.url("/upload")).body(body)).await;
    assert_plain_error(res, 504).await;
    server.stop().await;
}

#[tokio::test]
async fn ambiguous_hosts_and_unknown_codings_are_refused_not_forwarded() {
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let cases: [(&str, u16); 3] = [
        ("GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n", 400),
        ("GET /none HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        ("POST /gz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n", 501),
    ];
    for (request, status) in cases {
        let mut conn = RawConn::connect(server.public).await;
        conn.send(request).await;
        let head = conn.read_head().await;
        assert_eq!(status_of(&head), status, "{request:?} -> {head}");
    }
    assert!(backend.recorded().is_empty(), "nothing reached the backend: {:?}", backend.recorded());
    let text = support::realtime::metrics(&server).await;
    let backend_errors: f64 = ["connect", "timeout", "failed"]
        .iter()
        .map(|k| support::realtime::metric(&text, &format!("sidewire_upstream_errors_total{{reason=\"{k}\"}}")))
        .sum();
    assert_eq!(backend_errors, 0.0, "client mistakes are not backend failures");
    server.stop().await;
}

/// A backend that reads the whole request body before answering (as a form handler
/// does), answering with its length; a body that breaks off gets a 500 it never sees.
async fn body_reading_backend() -> FakeBackend {
    FakeBackend::start(|req: Request<Incoming>| async move {
        match stream::collect(req.into_body()).await {
            Ok(got) => Response::new(full(got.data.len().to_string())),
            Err(_) => Response::builder().status(500).body(full("broken body")).unwrap(),
        }
    })
    .await
}

#[tokio::test]
async fn client_body_framing_errors_are_400_not_backend_failures() {
    let backend = body_reading_backend().await;
    let server = TestServer::start(&backend_yaml(&backend)).await;
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let huge_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(64 * 1024));
    let cases = [
        ("bad chunk size", "5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n".to_owned()),
        ("bare-LF chunk line", "5\r\nhello\r\n5\nhello\n0\n\n".to_owned()),
        ("huge chunk extension", huge_extension),
    ];
    for (what, body) in cases {
        let mut conn = RawConn::connect(server.public).await;
        conn.send(head).await;
        // The server may answer and hang up before it has read everything.
        let _ = conn.try_send(body).await;
        let answer = conn.read_head().await;
        assert_eq!(status_of(&answer), 400, "{what}: {answer}");
        assert_eq!(header_values(&answer, "content-type"), ["text/plain; charset=utf-8"], "{what}");
        let rest = String::from_utf8_lossy(&conn.read_to_close().await).into_owned();
        assert!(rest.contains("Bad Request"), "{what}: short plain-text body, got {rest:?}");
    }
    // A body shorter than its Content-Length: the client gives up half way.
    let mut conn = RawConn::connect(server.public).await;
    conn.send("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly twenty bytes...").await;
    conn.shutdown_write().await;
    let answer = String::from_utf8_lossy(&conn.read_to_close().await).into_owned();
    assert!(!answer.contains(" 502 "), "an incomplete body is not a backend failure: {answer}");

    let text = support::realtime::metrics(&server).await;
    for kind in ["connect", "timeout", "failed"] {
        let n = support::realtime::metric(&text, &format!("sidewire_upstream_errors_total{{reason=\"{kind}\"}}"));
        assert_eq!(n, 0.0, "client framing errors counted as backend failures ({kind}):\n{text}");
    }
    assert_eq!(support::realtime::metric(&text, "sidewire_requests_total{class=\"5xx\"}"), 0.0, "{text}");
    server.stop().await;
}
