//! WebSocket over HTTP/2 (RFC 8441) through real sockets: the server advertises
//! SETTINGS_ENABLE_CONNECT_PROTOCOL on h2c and TLS, a realtime route answers an extended
//! CONNECT with 200 and then speaks the same protocol as over HTTP/1.1 (SPEC §4), several
//! WebSockets and plain requests share one connection, and a pass-through path reaches
//! the backend as an HTTP/1.1 upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::raw::within;
use support::ws::Publisher;
use support::{FakeBackend, TestServer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const CONFIG: &str = r#"
auth: { anonymous: true }
routes:
  - { path: "/ws", transport: websocket }
channels:
  - match: "room:*"
    history: { size: 100, ttl: 1h }
    client_publish: broadcast
    public: true
"#;

type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An HTTP/2 connection over `io` (h2c prior knowledge or TLS with ALPN h2).
async fn h2<T>(io: T) -> SendRequest<Empty<Bytes>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    send
}

fn connect(authority: &str, path: &str) -> Request<Empty<Bytes>> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{authority}{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut().insert(Protocol::from_static("websocket"));
    req
}

/// Opens a WebSocket on a stream of `send`'s connection; returns the answer's status and
/// the socket when it is 200.
async fn open(send: &mut SendRequest<Empty<Bytes>>, authority: &str, path: &str) -> (StatusCode, Option<H2Ws>) {
    let res = within("the CONNECT answer", send.send_request(connect(authority, path))).await.unwrap();
    let status = res.status();
    if status != StatusCode::OK {
        return (status, None);
    }
    let io = within("the upgrade", hyper::upgrade::on(res)).await.unwrap();
    (status, Some(WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None).await))
}

async fn next_json(ws: &mut H2Ws) -> Value {
    loop {
        match within("a frame", ws.next()).await.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn until_type(ws: &mut H2Ws, kind: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

#[tokio::test]
async fn websocket_over_h2c_speaks_the_protocol_and_shares_the_connection() {
    let server = TestServer::start(CONFIG).await;
    let authority = server.public.to_string();
    let tcp = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let mut send = h2(tcp).await;
    send.ready().await.unwrap();

    let (status, a) = open(&mut send, &authority, "/ws").await;
    assert_eq!(status, StatusCode::OK);
    let mut a = a.unwrap();
    let welcome = next_json(&mut a).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");

    // A second WebSocket on the same connection.
    let (_, b) = open(&mut send, &authority, "/ws").await;
    let mut b = b.unwrap();
    assert_eq!(next_json(&mut b).await["type"], "welcome");

    for ws in [&mut a, &mut b] {
        ws.send(Message::text(json!({"type": "subscribe", "channel": "room:h2", "ref": 1}).to_string())).await.unwrap();
        let sub = until_type(ws, "subscribed").await;
        assert_eq!(sub["channel"], "room:h2");
    }

    // Published by the backend: both get it.
    let id = Publisher::new(&server).publish("room:h2", Some("chat"), r#"{"text":"hi"}"#).await;
    for ws in [&mut a, &mut b] {
        let msg = until_type(ws, "message").await;
        assert_eq!(
            (msg["id"].as_str(), msg["event"].as_str(), &msg["data"]),
            (Some(id.as_str()), Some("chat"), &json!({"text":"hi"}))
        );
    }

    // Client broadcast from one reaches the other.
    a.send(Message::text(
        json!({"type": "publish", "channel": "room:h2", "event": "chat", "data": 7, "ref": 2}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(until_type(&mut b, "message").await["data"], 7);

    // A plain request on the same connection meanwhile: the realtime prefix serves client.js.
    let req = Request::builder().uri(format!("http://{authority}/_sidewire/client.js")).body(Empty::new()).unwrap();
    let res = within("client.js over the same connection", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());

    // Closing one WebSocket ends only its stream: the other and the connection go on.
    a.close(None).await.unwrap();
    let id = Publisher::new(&server).publish("room:h2", None, "9").await;
    assert_eq!(until_type(&mut b, "message").await["id"], id);
    let (status, c) = open(&mut send, &authority, "/ws").await;
    assert_eq!(status, StatusCode::OK);
    drop(c);

    // Shutdown closes an HTTP/2 WebSocket with 1001 like an HTTP/1.1 one.
    server.handle.shutdown();
    loop {
        match within("the shutdown close", b.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                // Completes the closing handshake (tungstenite queued the reply).
                let _ = b.close(None).await;
                break;
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => panic!("no close code at shutdown"),
            Some(Ok(_)) => continue,
        }
    }
    server.task.await.unwrap();
}

#[tokio::test]
async fn bad_extended_connects_are_refused() {
    let server = TestServer::start(CONFIG).await;
    let authority = server.public.to_string();
    let mut send = h2(tokio::net::TcpStream::connect(server.public).await.unwrap()).await;
    send.ready().await.unwrap();

    // Another :protocol on a WebSocket route.
    let mut req = connect(&authority, "/ws");
    req.extensions_mut().insert(Protocol::from_static("webtransport"));
    let res = within("the answer", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // A wrong WebSocket version.
    let mut req = connect(&authority, "/ws");
    req.headers_mut().insert("sec-websocket-version", "8".parse().unwrap());
    let res = within("the answer", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(res.headers()["sec-websocket-version"], "13");

    // A plain GET on the route is no handshake.
    let req = Request::builder().uri(format!("http://{authority}/ws")).body(Empty::new()).unwrap();
    let res = within("the answer", send.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // The connection survives all three.
    let (status, ws) = open(&mut send, &authority, "/ws").await;
    assert_eq!(status, StatusCode::OK);
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn pass_through_websocket_over_h2_reaches_the_backend_as_an_http11_upgrade() {
    let backend = FakeBackend::websocket_echo().await;
    let server = TestServer::start(&format!("backend: {{ url: \"{}\" }}\n{CONFIG}", backend.url())).await;
    let authority = server.public.to_string();
    let mut send = h2(tokio::net::TcpStream::connect(server.public).await.unwrap()).await;
    send.ready().await.unwrap();

    let (status, ws) = open(&mut send, &authority, "/app/socket?x=1").await;
    assert_eq!(status, StatusCode::OK);
    let mut ws = ws.unwrap();
    for msg in [Message::text("hello"), Message::binary(vec![0u8, 1, 255]), Message::text("x".repeat(100_000))] {
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(within("the echo", ws.next()).await.unwrap().unwrap(), msg);
    }
    let seen = &backend.recorded()[0];
    assert_eq!((seen.method.as_str(), seen.version), ("GET", http::Version::HTTP_11));
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/app/socket?x=1");
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["sec-websocket-version"], "13");
    assert_eq!(seen.headers["sec-websocket-key"].len(), 24);
    ws.close(None).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn websocket_over_tls_h2() {
    use support::tls::{self, Cert, CertFiles, Client};
    support::install_crypto();
    let cert = Cert::new("sidewire test");
    let files = CertFiles::new(&cert);
    let server = TestServer::start(&format!("{}{CONFIG}", files.yaml("1h"))).await;
    let addr = server.tls.unwrap();
    let stream = Client::new(&[&cert], &[b"h2"]).connect(addr).await.unwrap();
    assert_eq!(tls::alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let mut send = h2(stream).await;
    send.ready().await.unwrap();
    let (status, ws) = open(&mut send, &format!("localhost:{}", addr.port()), "/ws").await;
    assert_eq!(status, StatusCode::OK);
    let mut ws = ws.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws.send(Message::text(json!({"type": "subscribe", "channel": "room:tls", "ref": 1}).to_string())).await.unwrap();
    until_type(&mut ws, "subscribed").await;
    let id = Publisher::new(&server).publish("room:tls", None, "1").await;
    assert_eq!(until_type(&mut ws, "message").await["id"], id);
    drop(ws);
    server.stop().await;
}

/// An open WebSocket stream keeps its HTTP/2 connection from counting as idle
/// (`limits.h2_idle_timeout`): no GOAWAY while it lives, and it keeps delivering.
#[tokio::test]
async fn an_open_h2_websocket_keeps_its_connection_from_idling_out() {
    let server = TestServer::start(&format!("{CONFIG}limits: {{ h2_idle_timeout: 300ms }}\n")).await;
    let authority = server.public.to_string();
    let mut send = h2(tokio::net::TcpStream::connect(server.public).await.unwrap()).await;
    send.ready().await.unwrap();
    let (_, ws) = open(&mut send, &authority, "/ws").await;
    let mut ws = ws.unwrap();
    ws.send(Message::text(json!({"type": "subscribe", "channel": "room:idle", "ref": 1}).to_string())).await.unwrap();
    until_type(&mut ws, "subscribed").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let id = Publisher::new(&server).publish("room:idle", None, "1").await;
    assert_eq!(until_type(&mut ws, "message").await["id"], id);
    // The connection still takes new streams.
    let (status, _second) = open(&mut send, &authority, "/ws").await;
    assert_eq!(status, StatusCode::OK);
    drop((ws, _second));
    server.stop().await;
}
