//! The plain HTTP/1.1 pass-through path (`src/proxy/h1.rs`), against a scripted raw TCP
//! backend: responses keep the backend's framing (chunked with extensions and
//! trailers, close-delimited, HEAD, 1xx skipped), pipelined requests and a hand-over
//! to hyper mid-connection keep their order, a kept-alive backend connection that
//! dies unanswered is retried for idempotent requests only, and idle client
//! connections close after `limits.header_read_timeout` or on shutdown; over TLS
//! (ALPN http/1.1) the same path serves, flushes every response and ends a
//! close-delimited body with close_notify.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::raw::{RawConn, header_values, status_of, within};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend read it.
struct Req {
    method: String,
    path: String,
    head: String,
    body: Vec<u8>,
}

/// Reads one request (head, then a `content-length` body); `None` at EOF.
async fn read_req(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Req> {
    let mut chunk = vec![0u8; 65536];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let len: usize = header_values(&head, "content-length").first().map_or(0, |v| v.parse().unwrap());
    while buf.len() < len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf.drain(..len).collect();
    let mut line = head.split(' ');
    let (method, path) = (line.next().unwrap().to_owned(), line.next().unwrap().to_owned());
    Some(Req { method, path, head, body })
}

/// The length of `/big`'s body.
const BIG: usize = 4 << 20;

/// Tells the backend to send the rest of `/bad-chunk-late`.
static LATE_CHUNK: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A backend answering by path; returns its address and how many connections it took.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                while let Some(req) = read_req(&mut sock, &mut buf).await {
                    served += 1;
                    let answer: Vec<u8> = match req.path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
                        "/close" => {
                            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nX-Framing: none\r\n\r\nuntil the end").await;
                            return;
                        }
                        "/garbage" => b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
                        // A chunk longer than its size says: the grammar breaks after "hello".
                        "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n".to_vec(),
                        "/bad-chunk-late" => {
                            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello").await;
                            // Only once the client has the head and the first chunk.
                            LATE_CHUNK.notified().await;
                            b"XX\r\n0\r\n\r\n".to_vec()
                        }
                        "/head" => {
                            let body = req.head.clone();
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
                        }
                        "/big" => {
                            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
                            out.resize(out.len() + BIG, b'b');
                            out
                        }
                        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                        // Answers a connection's first request only; a second one finds the
                        // connection closed, as when a backend's keep-alive timer fires.
                        "/once" if served > 1 => return,
                        _ => {
                            let body = format!("{} {} {}", req.method, req.path, req.body.len());
                            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                            if req.method != "HEAD" {
                                out.extend_from_slice(body.as_bytes());
                            }
                            let _ = req.head;
                            out
                        }
                    };
                    if sock.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn yaml(addr: SocketAddr, extra: &str) -> String {
    // One serving thread: the pool is per thread, so every request meets the same one.
    format!("workers: 1\nbackend: {{ url: \"http://{addr}\" }}\n{extra}")
}

/// Reads one response with a `content-length` body: status, head, body.
async fn response(conn: &mut RawConn) -> (u16, String, String) {
    let head = conn.read_head().await;
    let len: usize = header_values(&head, "content-length").first().map_or(0, |v| v.parse().unwrap());
    let body = conn.read_exact(len).await;
    (status_of(&head), head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn responses_keep_the_backends_framing() {
    let (addr, _) = backend().await;
    let server = TestServer::start(&yaml(addr, "")).await;
    let mut conn = RawConn::connect(server.public).await;

    // Chunked: extensions and trailers pass as sent; the connection stays usable.
    conn.send("GET /chunked HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = conn.read_head().await;
    assert_eq!(status_of(&head), 200);
    assert_eq!(header_values(&head, "transfer-encoding"), ["chunked"]);
    assert_eq!(header_values(&head, "date").len(), 1, "date added: {head}");
    assert_eq!(conn.read_until(b"\r\n\r\n").await, b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n");

    // HEAD: a length but no body, and the next request still parses.
    conn.send("HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = conn.read_head().await;
    assert_eq!(header_values(&head, "content-length"), ["9"]); // "HEAD /h 0"
    conn.send("GET /after-head HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.2, "GET /after-head 0");

    // 1xx interim answers are dropped (hyper's client does the same).
    conn.send("GET /early HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let (status, head, body) = response(&mut conn).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "{head}");

    // No framing: the body ends with the backend's close, and so does the connection.
    conn.send("GET /close HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = conn.read_head().await;
    assert_eq!(header_values(&head, "connection"), ["close"]);
    assert_eq!(header_values(&head, "x-framing"), ["none"]);
    assert_eq!(conn.read_to_close().await, b"until the end");
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_and_a_hand_over_to_hyper_keep_their_order() {
    let (addr, _) = backend().await;
    let server = TestServer::start(&yaml(addr, "")).await;
    let mut conn = RawConn::connect(server.public).await;
    // Two requests in one write, then an upload too large for the plain path (hyper
    // streams it), then one more: four answers, in order, on one connection.
    let upload = "x".repeat(100_000);
    conn.send(format!(
        "GET /a HTTP/1.1\r\nHost: app.test\r\n\r\nPOST /b HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc\
         PUT /c HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n{upload}\
         GET /d HTTP/1.1\r\nHost: app.test\r\n\r\n",
        upload.len()
    ))
    .await;
    for expected in ["GET /a 0", "POST /b 3", "PUT /c 100000", "GET /d 0"] {
        let (status, head, body) = response(&mut conn).await;
        assert_eq!((status, body.as_str()), (200, expected), "{head}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_dead_kept_alive_connection_is_retried_for_idempotent_requests_only() {
    let (addr, accepted) = backend().await;
    let server = TestServer::start(&yaml(addr, "")).await;
    let mut conn = RawConn::connect(server.public).await;
    conn.send("GET /once HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.2, "GET /once 0");
    // The pooled connection dies without an answer: a GET goes again on a new one.
    conn.send("GET /once HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.2, "GET /once 0");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // A POST may have been acted on: it is not sent twice, the client gets a 502.
    conn.send("POST /once HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi").await;
    let (status, head, body) = response(&mut conn).await;
    assert_eq!(status, 502, "{head}");
    assert_eq!(body, "Bad Gateway: the backend request failed\n");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "no retry on a new connection");
    // The request was read whole: the client connection goes on.
    assert!(header_values(&head, "connection").is_empty(), "{head}");
    conn.send("GET /after HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.2, "GET /after 0");
    server.stop().await;
}

#[tokio::test]
async fn idle_kept_alive_connections_close_after_header_read_timeout() {
    let (addr, _) = backend().await;
    let server = TestServer::start(&yaml(addr, "limits: { header_read_timeout: 300ms }")).await;
    let mut conn = RawConn::connect(server.public).await;
    conn.send("GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.0, 200);
    let started = tokio::time::Instant::now();
    assert!(conn.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "closed after {:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_kept_alive_connections() {
    let (addr, _) = backend().await;
    let server = TestServer::start(&yaml(addr, "")).await;
    let mut conn = RawConn::connect(server.public).await;
    conn.send("GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.0, 200);
    let stop = tokio::spawn(server.stop());
    assert!(conn.read_to_close().await.is_empty());
    within("shutdown", stop).await.unwrap();
}

#[tokio::test]
async fn a_malformed_backend_answer_is_502_or_cuts_the_response() {
    let (addr, _) = backend().await;
    let server = TestServer::start(&yaml(addr, "")).await;
    let mut conn = RawConn::connect(server.public).await;
    // A head that is not HTTP: 502 with a short plain body, and the client connection
    // (whose request was read whole) serves the next request.
    conn.send("GET /garbage HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let (status, head, body) = response(&mut conn).await;
    assert_eq!(status, 502, "{head}");
    assert_eq!(body, "Bad Gateway: the backend request failed\n");
    conn.send("GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.2, "GET /next 0");

    // The same when the body that came with the head already breaks its framing.
    conn.send("GET /bad-chunk HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let (status, head, _) = response(&mut conn).await;
    assert_eq!(status, 502, "{head}");

    // A chunked body that breaks its grammar after the head went out: the body is cut
    // where the grammar broke and the connection closed, so the client sees a truncated
    // response (no last chunk), never bytes it would read as a complete one.
    conn.send("GET /bad-chunk-late HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = conn.read_head().await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(header_values(&head, "transfer-encoding"), ["chunked"]);
    assert_eq!(conn.read_until(b"hello").await, b"5\r\nhello");
    LATE_CHUNK.notify_one();
    let rest = conn.read_to_close().await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    server.stop().await;
}

/// Reads one response with a `content-length` body from a TLS stream: (head, body).
async fn tls_response(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    within("a response over TLS", async {
        let mut want = None;
        loop {
            if want.is_none()
                && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            {
                let head = String::from_utf8(buf[..end + 4].to_vec()).unwrap();
                let len: usize = header_values(&head, "content-length").first().map_or(0, |v| v.parse().unwrap());
                want = Some((head, end + 4, len));
            }
            if let Some((head, start, len)) = &want
                && buf.len() >= start + len
            {
                let body = buf[*start..start + len].to_vec();
                buf.drain(..start + len);
                return (head.clone(), body);
            }
            buf.reserve(64 * 1024);
            assert!(stream.read_buf(buf).await.unwrap() > 0, "EOF inside a response");
        }
    })
    .await
}

#[tokio::test]
async fn http1_over_tls_takes_the_same_path() {
    use support::tls::{CertFiles, Client};
    let (addr, _) = backend().await;
    let cert = support::tls::Cert::new("sidewire test");
    let files = CertFiles::new(&cert);
    let server = TestServer::start(&format!("{}\n{}", yaml(addr, ""), files.yaml("1h"))).await;
    let mut stream = Client::new(&[&cert], &[b"http/1.1"]).connect(server.tls.unwrap()).await.unwrap();
    let mut buf = Vec::new();

    // Header names reach the backend as the client spelled them (hyper's path would
    // lower-case them), with the https scheme.
    stream.write_all(b"GET /head HTTP/1.1\r\nHost: app.test\r\nX-Mixed-Case: v\r\n\r\n").await.unwrap();
    let (head, body) = tls_response(&mut stream, &mut buf).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let seen = String::from_utf8(body).unwrap();
    assert!(seen.contains("\r\nX-Mixed-Case: v\r\n"), "{seen}");
    assert!(seen.contains("\r\nx-forwarded-proto: https\r\n"), "{seen}");

    // A body larger than any buffer on the way arrives whole, and the connection serves
    // the next request: each response was flushed out of the TLS session.
    for _ in 0..2 {
        stream.write_all(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
        // Not reading for a while fills the socket buffers, so that the response's last
        // writes may leave TLS records in the session, where only a flush sends them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (head, body) = tls_response(&mut stream, &mut buf).await;
        assert_eq!((status_of(&head), body.len()), (200, BIG), "{head}");
        assert!(body.iter().all(|&b| b == b'b'));
    }

    // A close-delimited body ends with close_notify: the client sees a clean end, not
    // a truncation.
    stream.write_all(b"GET /close HTTP/1.1\r\nHost: app.test\r\n\r\n").await.unwrap();
    let mut rest = std::mem::take(&mut buf);
    within("the close-delimited body", stream.read_to_end(&mut rest)).await.unwrap();
    let text = String::from_utf8(rest).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nuntil the end"), "{text}");
    server.stop().await;
}
