//! Who a realtime client is, decided by the backend (SPEC §7): credential extraction,
//! the backend auth call, and a TTL cache with single-flight.
//!
//! Owns: the cache. Keys are SHA-256 digests of the credential, so different
//! credentials never share an entry and no token is kept as a map key. Concurrent
//! checks of one credential share one backend call (a reconnect storm of N clients with
//! one cookie costs one request). Allowed answers live for their `ttl` (or
//! `auth.cache_ttl`), refusals for `auth.negative_ttl`; failures are not cached.
//! Tokens never reach logs: [`Credential`] redacts itself in `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::config::AuthConfig;
use crate::names::ChannelPattern;
use crate::protocol::close_code;
use crate::proxy::Backend;
use crate::proxy::Peer;
use crate::realtime::Realtime;
use crate::respond::{Rejection, full};

/// Most cached answers; beyond it expired ones are dropped, then everything.
const MAX_ENTRIES: usize = 100_000;
/// Largest auth answer read from the backend.
const MAX_ANSWER: usize = 64 * 1024;
/// Longest lifetime of an answer, whatever `ttl` the backend gives.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Who a realtime client is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `None` for an anonymous client (`auth.anonymous`), who may use `public` channels only.
    pub user: Option<String>,
    /// Channel patterns the user may subscribe to.
    pub patterns: Vec<ChannelPattern>,
    pub info: Option<serde_json::Value>,
    /// When this answer must be checked again (`None`: never, anonymous).
    pub expires: Option<Instant>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self { user: None, patterns: Vec::new(), info: None, expires: None }
    }
}

/// Why a client may not connect, named by who decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication required")]
    Missing,
    #[error("Invalid token")]
    Invalid,
    #[error("Forbidden")]
    Forbidden,
    #[error("authentication backend unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Missing => close_code::AUTH_REQUIRED,
            Self::Invalid => close_code::INVALID_TOKEN,
            Self::Forbidden => close_code::FORBIDDEN,
            Self::Unavailable(_) => close_code::INTERNAL,
        }
    }

    /// The `reason` of `sidewire_connections_refused_total` for this refusal.
    pub fn refusal(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "auth_unavailable",
            _ => "auth",
        }
    }

    /// Close reason text (short, fixed: never echoes backend text to clients).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "Authentication required",
            Self::Invalid => "Invalid token",
            Self::Forbidden => "Forbidden",
            Self::Unavailable(_) => "Authentication unavailable",
        }
    }
}

impl From<AuthError> for Rejection {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Rejection::json(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required"),
            AuthError::Invalid => Rejection::json(StatusCode::UNAUTHORIZED, "unauthorized", "Invalid token"),
            AuthError::Forbidden => Rejection::json(StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            AuthError::Unavailable(_) => Rejection::json(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "authentication is unavailable; retry later",
            ),
        }
    }
}

/// What a client presented, and what is forwarded to the backend with it.
#[derive(Clone)]
pub struct Credential {
    token: String,
    cookie: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    key: [u8; 32],
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(***)")
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The token of an authorization value: `Bearer <t>` (the scheme is case-insensitive,
/// RFC 9110 §11.1) or a bare token. A lone `Bearer` is no token at all.
fn without_bearer(value: &str) -> &str {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        None if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    }
}

/// Every `Cookie` field of the request as one value. HTTP/2 clients send one field per
/// crumb (RFC 9113 §8.2.3); forwarding only the first would hide the session cookie
/// from the backend whenever it is not the first crumb.
fn joined_cookies(headers: &HeaderMap) -> Option<HeaderValue> {
    let crumbs: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    match crumbs.as_slice() {
        [] => None,
        [one] => HeaderValue::from_bytes(one).ok(),
        many => HeaderValue::from_bytes(&many.join(&b"; "[..])).ok(),
    }
}

/// Finds the client's credential: `auth.token_query`, then `auth.token_header`
/// (`Bearer <t>` or bare), then `auth.token_cookie`. `None` when there is none.
pub fn credential(cfg: &AuthConfig, headers: &HeaderMap, query: &[(String, String)], peer: Peer) -> Option<Credential> {
    let from_query = cfg.token_query.as_ref().and_then(|q| query.iter().find(|(k, _)| k == q)).map(|(_, v)| v.as_str());
    let from_header =
        cfg.token_header.as_ref().and_then(|h| headers.get(h)).and_then(|v| v.to_str().ok()).map(without_bearer);
    let from_cookie = cfg.token_cookie.as_ref().and_then(|c| cookie_value(headers, c));
    let (source, token) = [("q", from_query), ("h", from_header), ("c", from_cookie)]
        .into_iter()
        .find_map(|(s, t)| t.filter(|t| !t.is_empty()).map(|t| (s, t)))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{source}\0{token}").as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    let mut fwd = HeaderMap::new();
    crate::proxy::add_forwarded(&mut fwd, peer, None);
    let prior: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    let own = fwd.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let chain = if prior.is_empty() { own.to_owned() } else { format!("{}, {own}", prior.join(", ")) };
    Some(Credential {
        token: token.to_owned(),
        cookie: joined_cookies(headers),
        authorization: headers.get(header::AUTHORIZATION).cloned(),
        forwarded_for: HeaderValue::from_str(&chain).ok(),
        key,
    })
}

/// The part of the auth call that describes the connection.
pub struct AuthRequest<'a> {
    pub transport: &'static str,
    pub path: &'a str,
    pub channels: Vec<String>,
}

/// A settled answer, as cached.
#[derive(Clone)]
enum Outcome {
    Allowed(Arc<Identity>),
    Denied(AuthError, Instant),
    Failed(AuthError),
}

#[derive(Deserialize)]
struct Answer {
    user: String,
    #[serde(default)]
    channels: Vec<String>,
    ttl: Option<u64>,
    info: Option<serde_json::Value>,
}

/// The auth cache (cheap to share behind the app state).
#[derive(Default)]
pub struct Auth {
    cells: Mutex<HashMap<[u8; 32], Arc<OnceCell<Outcome>>>>,
}

impl Auth {
    /// Identifies a client: anonymous when it has no credential and that is allowed,
    /// else the cached or fresh answer of the backend.
    pub async fn identify(
        &self,
        backend: &Backend,
        cred: Option<&Credential>,
        req: AuthRequest<'_>,
    ) -> Result<Arc<Identity>, AuthError> {
        let config = backend.config.load_full();
        let Some(cred) = cred else {
            return if config.auth.anonymous { Ok(Arc::new(Identity::anonymous())) } else { Err(AuthError::Missing) };
        };
        let cell = self.cell(cred.key);
        let mut asked = false;
        let ask = || {
            asked = true;
            ask_backend(backend, &config.auth, cred, req)
        };
        let outcome = cell.get_or_init(ask).await.clone();
        let stats = &backend.metrics.auth;
        let counter = if asked { &stats.cache_misses } else { &stats.cache_hits };
        counter.inc();
        match outcome {
            Outcome::Allowed(id) => Ok(id),
            Outcome::Denied(e, _) => Err(e),
            Outcome::Failed(e) => {
                self.forget(cred.key, &cell);
                Err(e)
            }
        }
    }

    /// The cell for `key`: the live one, or a fresh one when it expired or failed.
    fn cell(&self, key: [u8; 32]) -> Arc<OnceCell<Outcome>> {
        let now = Instant::now();
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = cells.get(&key)
            && !cell.get().is_some_and(|o| expired(o, now))
        {
            return Arc::clone(cell);
        }
        if cells.len() >= MAX_ENTRIES {
            cells.retain(|_, c| !c.get().is_some_and(|o| expired(o, now)));
            if cells.len() >= MAX_ENTRIES {
                evict_soonest(&mut cells, MAX_ENTRIES / 10);
            }
        }
        let cell = Arc::new(OnceCell::new());
        cells.insert(key, Arc::clone(&cell));
        cell
    }

    fn forget(&self, key: [u8; 32], cell: &Arc<OnceCell<Outcome>>) {
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        if cells.get(&key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            cells.remove(&key);
        }
    }
}

/// Forgets the `n` settled answers closest to expiring (the oldest, in effect), so a full
/// cache keeps most of its answers instead of sending every client back to the backend at
/// once. Calls still in flight are kept: their waiters share them.
fn evict_soonest(cells: &mut HashMap<[u8; 32], Arc<OnceCell<Outcome>>>, n: usize) {
    let mut settled: Vec<(Instant, [u8; 32])> = cells
        .iter()
        .filter_map(|(k, c)| {
            let until = match c.get()? {
                Outcome::Allowed(id) => id.expires.unwrap_or(Instant::now() + MAX_TTL),
                Outcome::Denied(_, until) => *until,
                Outcome::Failed(_) => Instant::now(),
            };
            Some((until, *k))
        })
        .collect();
    let n = n.min(settled.len());
    if n == 0 {
        return;
    }
    settled.select_nth_unstable_by_key(n - 1, |(until, _)| *until);
    for (_, key) in &settled[..n] {
        cells.remove(key);
    }
}

fn expired(outcome: &Outcome, now: Instant) -> bool {
    match outcome {
        Outcome::Allowed(id) => id.expires.is_some_and(|e| e <= now),
        Outcome::Denied(_, until) => *until <= now,
        Outcome::Failed(_) => true,
    }
}

/// One backend auth call, mapped to an outcome; counted and timed by its outcome label.
async fn ask_backend(backend: &Backend, cfg: &AuthConfig, cred: &Credential, req: AuthRequest<'_>) -> Outcome {
    let started = std::time::Instant::now();
    let (outcome, label) = call_backend(backend, cfg, cred, req).await;
    backend.metrics.auth.call(label, started.elapsed());
    outcome
}

/// The auth call itself: the outcome, and its label in `sidewire_auth_calls_total`
/// (`metrics::AUTH_OUTCOMES`).
async fn call_backend(
    backend: &Backend,
    cfg: &AuthConfig,
    cred: &Credential,
    req: AuthRequest<'_>,
) -> (Outcome, &'static str) {
    let proxy = backend.pool();
    let body = serde_json::json!({
        "token": cred.token,
        "transport": req.transport,
        "path": req.path,
        "channels": req.channels,
    });
    let uri = match proxy.target(&cfg.endpoint) {
        Ok(u) => u,
        Err(e) => return (Outcome::Failed(AuthError::Unavailable(e.to_string())), "error"),
    };
    let url = uri.to_string();
    let mut call = Request::new(full(body.to_string()));
    *call.method_mut() = Method::POST;
    *call.uri_mut() = uri;
    let h = call.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in [(header::COOKIE, &cred.cookie), (header::AUTHORIZATION, &cred.authorization)] {
        if let Some(v) = value {
            h.insert(name, v.clone());
        }
    }
    if let Some(v) = &cred.forwarded_for {
        h.insert("x-forwarded-for", v.clone());
    }
    let res = match proxy.send(call, &backend.metrics).await {
        Ok(res) => res,
        Err(e) => {
            tracing::warn!(%url, error = %e,
                "auth call failed: is the app listening at backend.url, and does it serve POST auth.endpoint?");
            let label = if e.kind() == "timeout" { "timeout" } else { "error" };
            return (Outcome::Failed(AuthError::Unavailable(e.to_string())), label);
        }
    };
    let now = Instant::now();
    match res.status() {
        StatusCode::OK => parse_answer(res, cfg, now, &url).await,
        StatusCode::UNAUTHORIZED => (Outcome::Denied(AuthError::Invalid, now + cfg.negative_ttl), "unauthorized"),
        StatusCode::FORBIDDEN => (Outcome::Denied(AuthError::Forbidden, now + cfg.negative_ttl), "forbidden"),
        other => {
            tracing::warn!(%url, status = other.as_u16(),
                "auth endpoint answered an unexpected status (expected 200 with JSON, 401 or 403)");
            (Outcome::Failed(AuthError::Unavailable(format!("auth endpoint answered {other}"))), "bad_answer")
        }
    }
}

async fn parse_answer(
    res: http::Response<hyper::body::Incoming>,
    cfg: &AuthConfig,
    now: Instant,
    url: &str,
) -> (Outcome, &'static str) {
    let bytes: Bytes = match Limited::new(res.into_body(), MAX_ANSWER).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return (Outcome::Failed(AuthError::Unavailable(format!("reading the auth answer: {e}"))), "error");
        }
    };
    let answer: Answer = match serde_json::from_slice(&bytes) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%url, error = %e,
                "auth endpoint answered 200 with an invalid body (expected {{\"user\": ..., \"channels\": [...]}})");
            return (Outcome::Failed(AuthError::Unavailable(format!("invalid auth answer: {e}"))), "bad_answer");
        }
    };
    let patterns = answer
        .channels
        .iter()
        .filter_map(|p| match ChannelPattern::new(p) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(pattern = %p, error = %e, "auth answer has an invalid channel pattern; ignored");
                None
            }
        })
        .collect();
    // Capped: `now + ttl` panics on overflow, and the ttl is the backend's input.
    let ttl = answer.ttl.map_or(cfg.cache_ttl, Duration::from_secs).min(MAX_TTL);
    let identity = Identity { user: Some(answer.user), patterns, info: answer.info, expires: Some(now + ttl) };
    (Outcome::Allowed(Arc::new(identity)), "ok")
}

/// How long an open connection keeps its identity when a re-check cannot reach the
/// backend (open connections keep working while the backend is down, SPEC §9).
const RECHECK_RETRY: Duration = Duration::from_secs(5);
/// Shortest time between two re-checks of one connection. `ttl` is in whole seconds;
/// `ttl: 0` ("do not cache") must not make every open connection re-ask the backend in
/// a busy loop.
const MIN_RECHECK: Duration = Duration::from_secs(1);

/// Resolves when `current` has expired and been checked again: `Ok` with the fresh
/// identity, or `Err` when the backend now refuses the credential. Anonymous identities
/// never expire. Cancel-safe (only sleeps and the cached, shared auth call).
pub async fn recheck(
    state: Arc<Realtime>,
    cred: Option<Credential>,
    current: Arc<Identity>,
    transport: &'static str,
    path: String,
) -> Result<Arc<Identity>, AuthError> {
    let mut at = current.expires.map(|e| e.max(Instant::now() + MIN_RECHECK));
    loop {
        let Some(deadline) = at else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(deadline).await;
        let ask = AuthRequest { transport, path: &path, channels: Vec::new() };
        match state.auth.identify(&state.backend, cred.as_ref(), ask).await {
            Ok(id) => return Ok(id),
            Err(AuthError::Unavailable(e)) => {
                tracing::debug!(error = %e, "re-check could not reach the backend; keeping the connection");
                at = Some(Instant::now() + RECHECK_RETRY);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> AuthConfig {
        crate::Config::from_yaml(yaml, &|_| None).unwrap().auth
    }

    fn peer() -> Peer {
        Peer { addr: "10.1.2.3:5555".parse().unwrap(), tls: false }
    }

    #[test]
    fn credential_sources_in_order() {
        let c = cfg("auth: { token_cookie: session }\n");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer hdr"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; session=ck"));
        let q = vec![("token".to_owned(), "qt".to_owned())];
        assert_eq!(credential(&c, &h, &q, peer()).unwrap().token, "qt");
        assert_eq!(credential(&c, &h, &[], peer()).unwrap().token, "hdr");
        h.remove(header::AUTHORIZATION);
        let cred = credential(&c, &h, &[], peer()).unwrap();
        assert_eq!(cred.token, "ck");
        assert_eq!(format!("{cred:?}"), "Credential(***)");
        assert_eq!(cred.forwarded_for.unwrap(), "10.1.2.3");
        assert!(credential(&c, &HeaderMap::new(), &[], peer()).is_none());
    }

    #[test]
    fn header_tokens_and_cookie_crumbs() {
        assert_eq!(without_bearer("Bearer abc"), "abc");
        assert_eq!(without_bearer("BEARER  abc "), "abc");
        assert_eq!(without_bearer("abc"), "abc");
        assert_eq!(without_bearer("Bearer"), "");
        let c = cfg("auth: { token_cookie: session }\n");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        h.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        h.append(header::COOKIE, HeaderValue::from_static("session=ck"));
        let cred = credential(&c, &h, &[], peer()).unwrap();
        assert_eq!(cred.token, "ck", "an empty Bearer is no credential; the cookie is");
        assert_eq!(cred.cookie.unwrap(), "theme=dark; session=ck");
    }

    #[test]
    fn different_credentials_have_different_keys() {
        let c = cfg("");
        let q = |t: &str| vec![("token".to_owned(), t.to_owned())];
        let a = credential(&c, &HeaderMap::new(), &q("a"), peer()).unwrap();
        let b = credential(&c, &HeaderMap::new(), &q("b"), peer()).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("a"));
        let ha = credential(&c, &h, &[], peer()).unwrap();
        assert_ne!(a.key, b.key);
        assert_ne!(a.key, ha.key, "same text from another source is another credential");
    }

    #[test]
    fn a_full_cache_forgets_the_answers_closest_to_expiring() {
        let now = Instant::now();
        let mut cells = HashMap::new();
        for i in 0..10u8 {
            let cell = OnceCell::new();
            let until = now + Duration::from_secs(u64::from(i) + 1);
            let _ = cell.set(Outcome::Denied(AuthError::Invalid, until));
            cells.insert([i; 32], Arc::new(cell));
        }
        cells.insert([99; 32], Arc::new(OnceCell::new()));
        evict_soonest(&mut cells, 3);
        assert_eq!(cells.len(), 8);
        for i in 0..3u8 {
            assert!(!cells.contains_key(&[i; 32]), "{i} expires soonest");
        }
        assert!(cells.contains_key(&[99; 32]), "a call in flight is kept");
    }
}
