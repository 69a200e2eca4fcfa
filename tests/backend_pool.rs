//! The pass-through keep-alive pool (hyper-util's, `src/proxy.rs`) against a raw TCP backend
//! that reports each connection it accepts and each one that closes: connections are
//! reused, one the backend closed while idle is never used, idle ones close after
//! `backend.pool_idle_timeout`, a response head slower than `backend.timeout` is a 504,
//! and a response abandoned half read does not come back to the pool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::raw::{RawConn, status_of, within};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const LARGE: usize = 16 << 20;

/// What the backend saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Accepted(usize),
    /// Connection `n` closed (EOF or error) after `requests` requests.
    Closed {
        conn: usize,
        requests: usize,
    },
}

/// How the backend answers.
#[derive(Clone, Copy)]
enum Mode {
    /// `200 ok`, keep-alive.
    Ok,
    /// `200 ok`, then closes the connection after `after` (as a backend whose
    /// keep-alive timeout is short does), without saying so in the response.
    CloseIdle { after: Duration },
    /// A head after `delay`.
    Slow { delay: Duration },
    /// A 16 MiB body, written as fast as the socket takes it: more than the loopback
    /// socket buffers between backend and client hold, so a client that stops reading
    /// leaves it half sent.
    Large,
}

async fn backend(mode: Mode) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Bounded like every queue: a test sees a handful of events.
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            let (tx, conn) = (tx.clone(), n);
            let _ = tx.try_send(Seen::Accepted(conn));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut requests = 0;
                loop {
                    // One request head (these requests have no body).
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                let _ = tx.try_send(Seen::Closed { conn, requests });
                                return;
                            }
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    requests += 1;
                    let written = match mode {
                        Mode::Ok | Mode::CloseIdle { .. } => {
                            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
                        }
                        Mode::Slow { delay } => {
                            tokio::time::sleep(delay).await;
                            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
                        }
                        Mode::Large => {
                            let body = vec![b'x'; LARGE];
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                            match sock.write_all(head.as_bytes()).await {
                                Ok(()) => sock.write_all(&body).await,
                                Err(e) => Err(e),
                            }
                        }
                    };
                    if written.is_err() {
                        let _ = tx.try_send(Seen::Closed { conn, requests });
                        return;
                    }
                    if let Mode::CloseIdle { after } = mode {
                        tokio::time::sleep(after).await;
                        drop(sock);
                        let _ = tx.try_send(Seen::Closed { conn, requests });
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn next(rx: &mut mpsc::Receiver<Seen>) -> Seen {
    within("the backend's next event", rx.recv()).await.unwrap()
}

fn yaml(addr: SocketAddr, extra: &str) -> String {
    // One serving thread: the pool is per thread, so every request meets the same one.
    format!("workers: 1\nbackend: {{ url: \"http://{addr}\"{extra} }}")
}

/// `GET path` on a keep-alive connection to sidewire; the status and body.
async fn get(conn: &mut RawConn, path: &str) -> (u16, String) {
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n")).await;
    let head = conn.read_head().await;
    let len: usize = support::raw::header_values(&head, "content-length")[0].parse().unwrap();
    let body = conn.read_exact(len).await;
    (status_of(&head), String::from_utf8(body).unwrap())
}

/// A sidewire in front of a `mode` backend (`extra` appended to its `backend` section)
/// that has served one `GET /1` on a fresh backend connection, and the client that sent it.
async fn served_once(mode: Mode, extra: &str) -> (TestServer, RawConn, mpsc::Receiver<Seen>) {
    let (addr, mut seen) = backend(mode).await;
    let server = TestServer::start(&yaml(addr, extra)).await;
    let mut client = RawConn::connect(server.public).await;
    assert_eq!(get(&mut client, "/1").await, (200, "ok".into()));
    assert_eq!(next(&mut seen).await, Seen::Accepted(1));
    (server, client, seen)
}

#[tokio::test]
async fn backend_connections_are_reused_across_requests_and_clients() {
    let (addr, mut seen) = backend(Mode::Ok).await;
    let server = TestServer::start(&yaml(addr, "")).await;
    let mut a = RawConn::connect(server.public).await;
    for _ in 0..5 {
        assert_eq!(get(&mut a, "/x").await, (200, "ok".into()));
    }
    // Another client, after the first is done: the same backend connection.
    let mut b = RawConn::connect(server.public).await;
    assert_eq!(get(&mut b, "/y").await, (200, "ok".into()));
    assert_eq!(next(&mut seen).await, Seen::Accepted(1));
    assert!(seen.try_recv().is_err(), "one backend connection serves all six requests");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_not_used() {
    let (server, mut client, mut seen) = served_once(Mode::CloseIdle { after: Duration::from_millis(50) }, "").await;
    assert_eq!(next(&mut seen).await, Seen::Closed { conn: 1, requests: 1 });
    // The pooled connection is closed by now: the next request takes a new one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&mut client, "/2").await, (200, "ok".into()));
    assert_eq!(next(&mut seen).await, Seen::Accepted(2));
    server.stop().await;
}

#[tokio::test]
async fn idle_backend_connections_close_after_pool_idle_timeout() {
    let (server, mut client, mut seen) = served_once(Mode::Ok, ", pool_idle_timeout: 1s").await;
    // Nothing else is sent: the pool's idle timer closes it.
    assert_eq!(next(&mut seen).await, Seen::Closed { conn: 1, requests: 1 });
    // And the client's next request opens a fresh one.
    assert_eq!(get(&mut client, "/2").await, (200, "ok".into()));
    assert_eq!(next(&mut seen).await, Seen::Accepted(2));
    server.stop().await;
}

#[tokio::test]
async fn a_head_slower_than_backend_timeout_is_504_and_its_connection_is_closed() {
    let (addr, mut seen) = backend(Mode::Slow { delay: Duration::from_millis(1500) }).await;
    let server = TestServer::start(&yaml(addr, ", timeout: 300ms")).await;
    let mut client = RawConn::connect(server.public).await;
    client.send("GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = client.read_head().await;
    assert_eq!(status_of(&head), 504, "{head}");
    assert_eq!(next(&mut seen).await, Seen::Accepted(1));
    // The late answer must never reach another request: the connection is dropped.
    assert_eq!(next(&mut seen).await, Seen::Closed { conn: 1, requests: 1 });
    server.stop().await;
}

#[tokio::test]
async fn a_response_abandoned_half_read_closes_its_backend_connection() {
    let (addr, mut seen) = backend(Mode::Large).await;
    let server = TestServer::start(&yaml(addr, "")).await;
    let mut client = RawConn::connect(server.public).await;
    client.send("GET /large HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = client.read_head().await;
    assert_eq!(status_of(&head), 200, "{head}");
    let _ = client.read_exact(1024).await;
    assert_eq!(next(&mut seen).await, Seen::Accepted(1));
    drop(client);
    // Half a response on it: it cannot serve another request, so it is closed.
    assert!(matches!(next(&mut seen).await, Seen::Closed { conn: 1, .. }));
    // A new client gets a new backend connection and the whole body.
    let mut again = RawConn::connect(server.public).await;
    again.send("GET /large HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = again.read_head().await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(again.read_exact(LARGE).await.len(), LARGE);
    assert_eq!(next(&mut seen).await, Seen::Accepted(2));
    server.stop().await;
}
