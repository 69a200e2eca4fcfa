//! Pass-through to the backend (SPEC §8), in the order nginx and Envoy apply it:
//! `check_framing` → `strip_hop_headers` → `add_forwarded` → `send` (until the backend
//! has idled for `backend.timeout`) → `strip_hop_headers(response)` → stream the body
//! back, never buffered.
//! WebSocket (and any other HTTP/1.1) upgrades are tunnelled byte for byte.
//!
//! Plain HTTP/1.1 requests take a shorter path that does the same without hyper
//! ([`h1`], with its own per-thread pool, [`pool`]); this one serves everything else
//! (HTTP/2, TLS, uploads, upgrades, whatever [`h1`] hands over).
//!
//! Owns: the keep-alive connection pool to the backend, which auth and webhooks reuse.
//! Invariant: a request whose body may have been sent is never retried (hyper-util only
//! retries requests that were never written to a connection).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

pub mod framing;
pub mod h1;
mod pool;

use crate::config::BackendConfig;
use crate::metrics::Metrics;
use crate::respond::{Body, Rejection};
use crate::shutdown::Shutdown;

/// Who sent a request: the socket peer and whether it came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Why a forwarded request failed, named by who failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("ambiguous request framing: {0}")]
    BadFraming(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 §6.1: 501).
    #[error("unsupported transfer coding: {0}")]
    Unsupported(&'static str),
    /// The client's request body broke off or was malformed (bad chunk size or line,
    /// oversized chunk extension, fewer bytes than `Content-Length`): hyper found it while
    /// we streamed the body to the backend.
    #[error("client request body: {0}")]
    ClientBody(String),
    #[error("backend unreachable: {0}")]
    BackendUnreachable(String),
    #[error("backend idle for {0:?} without sending response headers")]
    BackendTimeout(Duration),
    #[error("backend request failed: {0}")]
    BackendFailed(String),
    /// The client's request body stalled (`limits.body_read_timeout`): the backend
    /// request is cancelled; not a backend failure.
    #[error("request body stalled")]
    BodyTimeout,
}

impl ProxyError {
    /// The metric label for `upstream_errors`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadFraming(_) | Self::Unsupported(_) | Self::ClientBody(_) => "bad_request",
            Self::BodyTimeout => "body_timeout",
            Self::BackendUnreachable(_) => "connect",
            Self::BackendTimeout(_) => "timeout",
            Self::BackendFailed(_) => "failed",
        }
    }
}

impl ProxyError {
    /// The client's mistake, not the backend's: not counted or logged as a backend failure.
    pub fn is_client(&self) -> bool {
        matches!(self, Self::BadFraming(_) | Self::Unsupported(_) | Self::ClientBody(_) | Self::BodyTimeout)
    }
}

/// An error reading the client's request body, marked on its way into the backend
/// request so that a failed send can be told apart from a backend failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

impl From<ProxyError> for Rejection {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::BadFraming(why) => Rejection::plain(StatusCode::BAD_REQUEST, format!("Bad Request: {why}")),
            ProxyError::Unsupported(why) => {
                Rejection::plain(StatusCode::NOT_IMPLEMENTED, format!("Not Implemented: {why}"))
            }
            ProxyError::ClientBody(_) => {
                Rejection::plain(StatusCode::BAD_REQUEST, "Bad Request: the request body is malformed or incomplete")
            }
            ProxyError::BodyTimeout => {
                Rejection::plain(StatusCode::REQUEST_TIMEOUT, "Request Timeout: the request body stalled")
            }
            ProxyError::BackendTimeout(_) => {
                Rejection::plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout: the backend did not answer in time")
            }
            ProxyError::BackendUnreachable(_) => {
                Rejection::plain(StatusCode::BAD_GATEWAY, "Bad Gateway: the backend is unreachable")
            }
            ProxyError::BackendFailed(_) => {
                Rejection::plain(StatusCode::BAD_GATEWAY, "Bad Gateway: the backend request failed")
            }
        }
    }
}

/// Least time between two warnings about failing pass-through requests.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Warns that a pass-through request got a 502/504, naming the backend and the cause, at
/// most once per [`FAILURE_LOG_EVERY`] (with how many were not logged since): a backend
/// outage must be visible at the default level without flooding the log.
fn backend_failed(proxy: &Proxy, e: &ProxyError) {
    static LAST: std::sync::Mutex<Option<(Instant, u64)>> = std::sync::Mutex::new(None);
    if e.is_client() {
        return;
    }
    let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    match &mut *last {
        Some((at, quiet)) if now.duration_since(*at) < FAILURE_LOG_EVERY => *quiet += 1,
        other => {
            let suppressed = other.map_or(0, |(_, q)| q);
            tracing::warn!(backend = %format_args!("http://{}{}", proxy.backend.origin, proxy.backend.base_path), error = %e, suppressed,
                "pass-through request failed (502/504): is the app at backend.url up?");
            *other = Some((now, 0));
        }
    }
}

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// RFC 2616 proxy-auth pair). `Trailer` is *not* here: hyper only sends the trailers a
/// response declares in it.
const HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// What talking to the backend needs, for every caller (pass-through, auth calls,
/// webhooks): the pool (rebuilt when `backend` changes on reload), the live config and
/// the metrics the calls record.
#[derive(Clone)]
pub struct Backend {
    pool: Arc<arc_swap::ArcSwap<Proxy>>,
    pub config: crate::Live,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Backend {
    pub fn new(config: crate::Live, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let pool = Arc::new(arc_swap::ArcSwap::from_pointee(Proxy::new(&config.load().backend)));
        Self { pool, config, metrics }
    }

    /// The calling thread's pool for the current backend config.
    pub fn pool(&self) -> Proxy {
        Proxy::local(&self.pool.load())
    }

    /// A new pool for a reloaded `backend` section.
    pub fn rebuild(&self, backend: &BackendConfig) {
        self.pool.store(Arc::new(Proxy::new(backend)));
    }
}

/// The backend client: a keep-alive pool plus the target and timeouts.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    backend: Arc<BackendConfig>,
    /// Unique per `Proxy::new`: lets each serving thread tell whether its own pool was
    /// built from the current backend config.
    id: u64,
}

impl Proxy {
    pub fn new(backend: &BackendConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(backend.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(backend.pool_idle_timeout)
            .pool_max_idle_per_host(backend.pool_max_idle)
            .http1_max_buf_size(backend.read_buffer_bytes)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self { client, backend: Arc::new(backend.clone()), id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// This thread's pool for the same backend (see [`Proxy::local`]).
    fn rebuilt(&self) -> Self {
        Self { id: self.id, ..Self::new(&self.backend) }
    }

    /// The pool of the calling thread for `shared`'s backend. Each serving thread keeps
    /// its own keep-alive pool: a pooled backend connection is a task on the thread that
    /// opened it, so sharing one pool across threads would turn every request into
    /// cross-thread wake-ups (measured: ~20 % more CPU per proxied request).
    pub fn local(shared: &Proxy) -> Proxy {
        thread_local! {
            static LOCAL: std::cell::RefCell<Option<Proxy>> = const { std::cell::RefCell::new(None) };
        }
        LOCAL.with(|cell| {
            let mut local = cell.borrow_mut();
            match &*local {
                Some(p) if p.id == shared.id => p.clone(),
                _ => {
                    let p = shared.rebuilt();
                    *local = Some(p.clone());
                    p
                }
            }
        })
    }

    pub fn backend(&self) -> &BackendConfig {
        &self.backend
    }

    /// The backend URI for a request target (`/path?query`).
    pub fn target(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        let pq = format!("{}{}", self.backend.base_path, path_and_query);
        Uri::builder()
            .scheme("http")
            .authority(self.backend.origin.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::BadFraming("invalid request target"))
    }

    /// Sends a request to the backend and waits for its response headers until the
    /// backend has been idle for `backend.timeout`. Used by pass-through, auth and webhooks.
    pub async fn send(&self, req: Request<Body>, metrics: &Metrics) -> Result<Response<Incoming>, ProxyError> {
        use http_body::Body as _;
        let started = Instant::now();
        let timeout = self.backend.timeout;
        // Most requests have no body: a plain timeout then, without the progress watch.
        let answer = if req.body().is_end_stream() {
            tokio::time::timeout(timeout, self.client.request(req)).await.ok()
        } else {
            let (req, progress) = watch_progress(req);
            until_idle(self.client.request(req), progress, timeout).await
        };
        let result = match answer {
            None => Err(ProxyError::BackendTimeout(timeout)),
            Some(Err(e)) if e.is_connect() => Err(ProxyError::BackendUnreachable(error_chain(&e))),
            Some(Err(e)) if crate::body_timeout::is_timeout(&e) => Err(ProxyError::BodyTimeout),
            Some(Err(e)) if caused_by_client(&e) => Err(ProxyError::ClientBody(error_chain(&e))),
            Some(Err(e)) => Err(ProxyError::BackendFailed(error_chain(&e))),
            Some(Ok(res)) => Ok(res),
        };
        match &result {
            Ok(_) => metrics.upstream_latency(started.elapsed()),
            Err(e) if e.is_client() => {}
            Err(e) => metrics.upstream_error(e.kind()),
        }
        result
    }
}

/// Signals each request body frame the backend connection takes. The header timeout
/// restarts on it, so it measures backend idleness, not upload time: a 1 GiB upload
/// over a slow link must not become a 504 (Envoy likewise starts its route timeout at
/// the end of the request).
fn watch_progress(req: Request<Body>) -> (Request<Body>, watch::Receiver<()>) {
    let (tx, rx) = watch::channel(());
    let req = req.map(|inner| Progress { inner, tx }.boxed_unsync());
    (req, rx)
}

/// A request body that signals each frame the backend connection takes. It keeps the
/// body's length (`MapFrame` drops it): with an unknown length hyper sends the body
/// chunked, which many legacy stacks (Python's `http.server`, WSGI, PHP) read as empty.
struct Progress {
    inner: Body,
    tx: watch::Sender<()>,
}

impl http_body::Body for Progress {
    type Data = bytes::Bytes;
    type Error = crate::respond::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let out = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &out {
            this.tx.send_replace(());
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves to `fut`'s output, or `None` once `idle` passes without it finishing or
/// `progress` ticking.
async fn until_idle<F: Future>(fut: F, mut progress: watch::Receiver<()>, idle: Duration) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            changed = progress.changed() => if changed.is_err() {
                // The body is done and dropped: only the response is left to wait for.
                return tokio::time::timeout(idle, fut).await.ok();
            },
            () = tokio::time::sleep(idle) => return None,
        }
    }
}

/// Whether a [`ClientBodyError`] is somewhere in `e`'s chain of causes.
fn caused_by_client(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<ClientBodyError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Forwards one request and streams the response back.
pub async fn forward(
    proxy: &Proxy,
    metrics: &Metrics,
    shutdown: &Shutdown,
    peer: Peer,
    body_timeout: Duration,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Rejection> {
    // The client's mistakes: answered here, never sent on, not counted as backend failures.
    if let Err(e) = check_framing(req.version(), req.uri(), req.headers()) {
        let mut refused = Rejection::from(e);
        // What follows on the connection may be framed otherwise than we would read it
        // (RFC 9112 §6.3): close it after the answer instead of reading a next request.
        if req.version() < Version::HTTP_2 {
            refused.headers.push((header::CONNECTION, HeaderValue::from_static("close")));
        }
        return Err(refused);
    }
    let upgrade = upgrade_protocol(&req);
    // An HTTP/2 WebSocket (RFC 8441) reaches the backend as the HTTP/1.1 upgrade it knows.
    let connect = upgrade.is_none() && is_websocket_connect(&req);
    let client_upgrade = (upgrade.is_some() || connect).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = request_host(&parts.uri, &parts.headers);
    let wants_trailers = te_trailers(&parts.headers);
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    strip_hop_headers(&mut parts.headers);
    if let Some(proto) = &upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    let key = connect.then(|| websocket_get(&mut parts));
    if wants_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    add_forwarded(&mut parts.headers, peer, host.as_ref());
    if let (Some(h), false) = (&host, parts.headers.contains_key(header::HOST)) {
        parts.headers.insert(header::HOST, h.clone());
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = proxy.target(target)?;
    parts.version = Version::HTTP_11;
    // A client whose body stalls cancels the backend request (see `body_timeout`); its
    // framing errors are marked as its own (`ClientBodyError`).
    let body = if http_body::Body::is_end_stream(&body) {
        body.map_err(Into::into).boxed_unsync()
    } else {
        let body = body.map_err(ClientBodyError);
        crate::body_timeout::Idle::new(body, body_timeout).boxed_unsync()
    };
    let out = Request::from_parts(parts, body);
    let mut res = proxy.send(out, metrics).await.inspect_err(|e| backend_failed(proxy, e))?;
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, res.status()) {
        if let Some(key) = key {
            check_accept(&res, &key)?;
            let mut ok = tunnel(shutdown, client_upgrade, &mut res);
            // RFC 8441 §5: the stream opens with a 2xx and no upgrade headers.
            *ok.status_mut() = StatusCode::OK;
            for name in [header::CONNECTION, header::UPGRADE, header::SEC_WEBSOCKET_ACCEPT] {
                ok.headers_mut().remove(name);
            }
            return Ok(ok);
        }
        return Ok(tunnel(shutdown, client_upgrade, &mut res));
    }
    strip_hop_headers(res.headers_mut());
    // hyper writes the status line from this field: answer in our own protocol version.
    *res.version_mut() = Version::HTTP_11;
    Ok(res.map(|b| b.map_err(Into::into).boxed_unsync()))
}

/// Refuses requests whose length is ambiguous (request smuggling): several
/// `Content-Length` headers, or `Content-Length` together with `Transfer-Encoding`.
/// hyper's HTTP/1 parser settles both before we see them (equal lengths merged,
/// differing ones a 400, Transfer-Encoding wins and the connection closes), so this
/// mostly guards HTTP/2, where h2 checks only the first `content-length`.
pub fn check_framing(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), ProxyError> {
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(ProxyError::BadFraming("more than one Host"));
    }
    if version == Version::HTTP_11 && hosts == 0 {
        return Err(ProxyError::BadFraming("an HTTP/1.1 request needs a Host header"));
    }
    if version == Version::HTTP_2
        && let (Some(host), Some(authority)) = (headers.get(header::HOST), uri.authority())
        && !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(ProxyError::BadFraming("Host differs from :authority"));
    }
    let codings = headers.get_all(header::TRANSFER_ENCODING).iter().filter_map(|v| v.to_str().ok());
    if codings.flat_map(|v| v.split(',')).any(|c| !c.trim().eq_ignore_ascii_case("chunked")) {
        return Err(ProxyError::Unsupported("only the chunked transfer coding is supported"));
    }
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(ProxyError::BadFraming("more than one Content-Length"));
    }
    if lengths == 1 && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadFraming("both Content-Length and Transfer-Encoding"));
    }
    Ok(())
}

/// The protocol an HTTP/1.1 client asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441 §4).
fn is_websocket_connect<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req.method() == Method::CONNECT
        && req.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns an RFC 8441 CONNECT into the RFC 6455 GET a backend expects, with a fresh key;
/// returns the key so the backend's accept can be checked. The client's
/// `Sec-WebSocket-Protocol` / `-Extensions` / `-Version` go through unchanged: the
/// frames are spliced end to end, so what the two ends agree on holds.
fn websocket_get(parts: &mut http::request::Parts) -> String {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    parts.method = Method::GET;
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        parts.headers.insert(header::SEC_WEBSOCKET_KEY, v);
    }
    key
}

/// A backend that answers 101 with the wrong accept key did not understand the request.
fn check_accept(res: &Response<Incoming>, key: &str) -> Result<(), ProxyError> {
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    match res.headers().get(header::SEC_WEBSOCKET_ACCEPT) {
        Some(v) if v.as_bytes() == expected.as_bytes() => Ok(()),
        _ => Err(ProxyError::BackendFailed("the backend's 101 carries a wrong Sec-WebSocket-Accept".into())),
    }
}

/// Whether any `Connection` header lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_HEADERS {
        headers.remove(name);
    }
}

/// HTTP/2 clients may send one `Cookie` field per crumb; before an HTTP/1.1 hop they
/// must be joined with "; " (RFC 9113 §8.2.3), as many backends read only the first.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let crumbs: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(joined) = HeaderValue::from_bytes(&crumbs.join(&b"; "[..])) {
        headers.insert(header::COOKIE, joined);
    }
}

fn request_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    match headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto` / `-Host` from
/// the real connection (whatever the client claimed for those two is replaced).
pub fn add_forwarded(headers: &mut HeaderMap, peer: Peer, host: Option<&HeaderValue>) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    let ip = peer.addr.ip().to_canonical().to_string();
    let prior: Vec<&str> = headers.get_all(&XFF).iter().filter_map(|v| v.to_str().ok()).collect();
    let chain = if prior.is_empty() { ip } else { format!("{}, {ip}", prior.join(", ")) };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(XFF, v);
    }
    headers.insert(XFP, HeaderValue::from_static(if peer.tls { "https" } else { "http" }));
    match host {
        Some(h) => headers.insert(XFH, h.clone()),
        None => headers.remove(XFH),
    };
}

/// Answers the client's upgrade with the backend's 101 and splices the two upgraded
/// connections in a tracked task; shutdown closes both ends.
fn tunnel(
    shutdown: &Shutdown,
    client: hyper::upgrade::OnUpgrade,
    backend_res: &mut Response<Incoming>,
) -> Response<Body> {
    let backend = hyper::upgrade::on(&mut *backend_res);
    let token = shutdown.token().clone();
    shutdown.spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => return tracing::debug!(error = %e, "upgrade tunnel did not start"),
        };
        let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(backend));
        tokio::select! {
            res = tokio::io::copy_bidirectional(&mut a, &mut b) => {
                if let Err(e) = res { tracing::debug!(error = %e, "upgrade tunnel ended"); }
            }
            () = token.cancelled() => {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::join!(a.shutdown(), b.shutdown());
            }
        }
    });
    let mut res = Response::new(crate::respond::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let upgrade = backend_res.headers().get(header::UPGRADE).cloned();
    *res.headers_mut() = std::mem::take(backend_res.headers_mut());
    strip_hop_headers(res.headers_mut());
    res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade {
        res.headers_mut().insert(header::UPGRADE, u);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret-Hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("trailer", "x-checksum".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_headers(&mut h);
        // HeaderMap does not keep insertion order once entries are removed.
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["trailer", "x-keep"]);
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let peer = Peer { addr: "[::ffff:10.0.0.9]:5000".parse().unwrap(), tls: false };
        add_forwarded(&mut h, peer, Some(&HeaderValue::from_static("app.test")));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.test");
    }

    #[test]
    fn framing() {
        let check = |v: Version, uri: &str, pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, val) in pairs {
                h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), val.parse().unwrap());
            }
            check_framing(v, &uri.parse().unwrap(), &h)
        };
        let v11 = Version::HTTP_11;
        assert!(check(v11, "/", &[("host", "a"), ("content-length", "5")]).is_ok());
        assert!(check(v11, "/", &[("host", "a"), ("content-length", "5"), ("content-length", "5")]).is_err());
        assert!(check(v11, "/", &[("host", "a"), ("content-length", "5"), ("transfer-encoding", "chunked")]).is_err());
        assert!(check(v11, "/", &[("host", "a"), ("host", "b")]).is_err());
        assert!(check(v11, "/", &[]).is_err(), "HTTP/1.1 without Host");
        assert!(check(Version::HTTP_10, "/", &[]).is_ok());
        assert!(matches!(
            check(v11, "/", &[("host", "a"), ("transfer-encoding", "gzip, chunked")]),
            Err(ProxyError::Unsupported(_))
        ));
        assert!(check(Version::HTTP_2, "http://a/", &[("host", "b")]).is_err());
        assert!(check(Version::HTTP_2, "http://a/", &[("host", "A")]).is_ok());
    }
}
