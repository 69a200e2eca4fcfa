//! Graceful shutdown in-process (SPEC §9, STYLE 16): in-flight requests finish, upgraded
//! tunnels are closed, and `shutdown_grace` bounds the drain.
// Helpers outside #[test] fns panic on failure too (the lint only exempts #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

/// Upper bound for anything that should happen "promptly"; far below every grace used
/// here, so passing it proves the drain did not wait out the grace.
const DEADLINE: Duration = Duration::from_secs(10);

fn yaml(backend: &FakeBackend, grace: &str) -> String {
    format!("shutdown_grace: {grace}\nbackend: {{ url: \"{}\" }}\n", backend.url())
}

/// Polls until `addr` refuses connections (the accept loop dropped its listener).
async fn wait_refused(addr: SocketAddr) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < until, "{addr} still accepts connections");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn in_flight_request_finishes_after_shutdown() {
    let mut held = held_backend("finally").await;
    let server = TestServer::start(&yaml(&held.backend, "60s")).await;
    // One request over HTTP/1.1 and one over h2c: hyper runs HTTP/2 streams as tasks of
    // their own, and the drain must wait for those too.
    install_crypto();
    let h2c = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let mut in_flight = Vec::new();
    for (client, version) in [(http(), reqwest::Version::HTTP_11), (h2c, reqwest::Version::HTTP_2)] {
        let url = server.url("/slow");
        in_flight.push(tokio::spawn(async move {
            let res = client.get(url).send().await?;
            assert_eq!(res.version(), version);
            Ok::<_, reqwest::Error>((res.status(), res.text().await?))
        }));
        held.arrived.recv().await.unwrap();
    }

    server.handle.shutdown();
    wait_refused(server.public).await;
    wait_refused(server.admin).await;
    assert!(in_flight.iter().all(|t| !t.is_finished()));

    held.release.send(true).unwrap();
    for request in in_flight {
        let (status, body) = request.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "finally");
    }
    tokio::time::timeout(DEADLINE, server.stop()).await.expect("drain did not finish");
}

/// Answers a WebSocket upgrade with 101 and echoes every message on the upgraded socket.
async fn ws_echo(mut req: http::Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return Response::new(full("not a websocket request"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn upgraded_tunnel_is_closed_on_shutdown() {
    let backend = FakeBackend::start(ws_echo).await;
    let server = TestServer::start(&yaml(&backend, "60s")).await;
    // `/app/ws` is no realtime route: the upgrade is tunnelled to the backend.
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{}/app/ws", server.public)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("ping through the tunnel")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.to_text().unwrap(), "ping through the tunnel");

    let stop = tokio::spawn(server.stop());
    let end = tokio::time::timeout(DEADLINE, ws.next()).await.expect("tunnel still open after shutdown");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "unexpected frame: {end:?}");
    tokio::time::timeout(DEADLINE, stop).await.expect("drain waited for the tunnel").unwrap();
}

#[tokio::test]
async fn request_past_the_grace_does_not_block_the_drain() {
    // The backend never answers; `backend.timeout` (60s) is far beyond the grace.
    let (arrived_tx, mut arrived) = mpsc::channel(1);
    let backend = FakeBackend::start(move |_req| {
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(()).await;
            std::future::pending::<Response<Body>>().await
        }
    })
    .await;
    let server = TestServer::start(&yaml(&backend, "300ms")).await;
    let url = server.url("/forever");
    let _in_flight = tokio::spawn(async move { http().get(url).send().await });
    arrived.recv().await.unwrap();

    tokio::time::timeout(DEADLINE, server.stop()).await.expect("drain outlived shutdown_grace");
}
