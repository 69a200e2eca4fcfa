//! Test harness: a real sidewire on port 0 and a real fake backend on port 0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod browser;
pub mod sse;
pub mod tls;

pub mod raw;
pub mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sidewire::{App, Config, Handle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod realtime;
pub mod redis;
pub mod ws;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// A request as the fake backend saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// A real HTTP/1.1 server on 127.0.0.1:0 answering with a handler, recording requests.
pub struct FakeBackend {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl FakeBackend {
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler = Arc::new(handler);
        let rec = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let rec = Arc::clone(&rec);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        rec.lock().unwrap().push(Recorded {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, requests, task }
    }

    /// Answers every request with 200 and a JSON echo of method, path and headers.
    pub async fn echo() -> Self {
        Self::start(|req: Request<Incoming>| async move {
            let headers: serde_json::Map<String, serde_json::Value> =
                req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into())).collect();
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            Response::builder().header("content-type", "application/json").body(full(body.to_string())).unwrap()
        })
        .await
    }

    /// Accepts any WebSocket upgrade and echoes every data message.
    pub async fn websocket_echo() -> Self {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        use tokio_tungstenite::tungstenite::protocol::Role;
        Self::start(|mut req: Request<Incoming>| {
            let key = req.headers().get("sec-websocket-key").cloned();
            let upgraded = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let io = TokioIo::new(upgraded.await.unwrap());
                let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
            let accept = derive_accept_key(key.unwrap().as_bytes());
            async move {
                Response::builder()
                    .status(http::StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", accept)
                    .body(full(""))
                    .unwrap()
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running sidewire bound on 127.0.0.1:0 (every listener).
pub struct TestServer {
    pub public: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub handle: Handle,
    pub task: JoinHandle<()>,
}

pub fn config(yaml: &str) -> Config {
    let mut config = Config::from_yaml(yaml, &|_| None).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.listen = any;
    config.admin.listen = any;
    if let Some(tls) = &mut config.tls {
        tls.listen = any;
    }
    config
}

impl TestServer {
    /// Starts sidewire with `yaml`; every listen address is replaced by 127.0.0.1:0.
    pub async fn start(yaml: &str) -> Self {
        Self::start_config(config(yaml)).await
    }

    pub async fn start_config(config: Config) -> Self {
        let app = App::bind(config).await.unwrap();
        let addrs = app.local_addrs();
        let handle = app.handle();
        let task = tokio::spawn(app.run());
        Self { public: addrs.public, tls: addrs.tls, admin: addrs.admin, handle, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Triggers shutdown and waits for the drain to finish.
    pub async fn stop(self) {
        self.handle.shutdown();
        self.task.await.unwrap();
    }
}

/// A plain reqwest client (no TLS provider needed for http://).
pub fn http() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A backend whose every request reports its arrival, then waits until released and
/// answers `answer` (so a test can hold a request in flight).
pub struct HeldBackend {
    pub backend: FakeBackend,
    pub arrived: tokio::sync::mpsc::Receiver<()>,
    pub release: tokio::sync::watch::Sender<bool>,
}

pub async fn held_backend(answer: &'static str) -> HeldBackend {
    let (arrived_tx, arrived) = tokio::sync::mpsc::channel(8);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let backend = FakeBackend::start(move |_req| {
        let arrived = arrived_tx.clone();
        let mut release = release_rx.clone();
        async move {
            let _ = arrived.send(()).await;
            // An error means the test is over and dropped the sender: answer anyway.
            let _ = release.wait_for(|go| *go).await;
            Response::new(full(answer))
        }
    })
    .await;
    HeldBackend { backend, arrived, release }
}
