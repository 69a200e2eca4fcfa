//! The admin listener: the publish API, presence, channel listing, health, readiness and
//! metrics (SPEC §7).
//!
//! Owns: the admin routes, the admin secret check and reading request bodies. Does not:
//! serve anything to the public listeners, or decide what a publish means
//! (`publish.rs` checks it, the broker publishes it).
//!
//! Without a secret the admin listener is on loopback (config validation and reloads
//! insist), which keeps other hosts out but not a browser on this host: a page the
//! operator visits could POST to `http://127.0.0.1:9090/publish`, or rebind its own DNS
//! name to 127.0.0.1 and read the answers. So, secretless, every route but the health
//! probes refuses what only a browser sends cross-site: a foreign `Origin`, a
//! `Sec-Fetch-Site` other than `same-origin`/`none`, a `Host` that is not a loopback
//! address or `localhost`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::broker::Broker;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::respond::{Body, Rejection, json, text, with_body};
use crate::shutdown::Shutdown;
use crate::{Live, policy, router};

/// What the admin API touches.
#[derive(Clone)]
pub struct Admin {
    pub config: Live,
    pub broker: Broker,
    pub metrics: std::sync::Arc<Metrics>,
    pub shutdown: Shutdown,
}

/// prometheus-client writes OpenMetrics (`# TYPE x counter` over `x_total` samples, `# EOF`);
/// labelled as the classic 0.0.4 text format, Prometheus would drop every counter's type.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves one admin request.
pub async fn handle(state: &Admin, req: Request<Incoming>) -> Response<Body> {
    let config = state.config.load_full();
    let path = req.uri().path();
    if !matches!(path, "/healthz" | "/readyz")
        && let Err(refused) = same_host_only(&config, &req)
    {
        return refused.into_response();
    }
    let res = match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET | &Method::HEAD, "/readyz") => Ok(readyz(state)),
        (&Method::GET, "/metrics") => metrics(state, &config, &req).await,
        (&Method::POST, "/publish") => publish(state, &config, req).await,
        (&Method::GET, "/channels") => channels(state, &config, &req),
        (&Method::GET, "/presence") => presence(state, &config, &req).await,
        (_, "/publish" | "/channels" | "/presence") => {
            Err(Rejection::json(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "method not allowed"))
        }
        _ => Err(Rejection::not_found()),
    };
    res.unwrap_or_else(Rejection::into_response)
}

/// `GET /metrics`: behind the secret when one is set, unless `admin.metrics_public`.
async fn metrics(state: &Admin, config: &Config, req: &Request<Incoming>) -> Result<Response<Body>, Rejection> {
    if !config.admin.metrics_public {
        authorized(config, req)?;
    }
    Ok(with_body(StatusCode::OK, METRICS_CONTENT_TYPE, state.metrics.scrape().await))
}

/// Refuses, when no secret is set, a request a browser sent on behalf of another site
/// (see the module docs). With a secret, the secret is the check: a cross-site page
/// cannot send it.
fn same_host_only(config: &Config, req: &Request<Incoming>) -> Result<(), Rejection> {
    if config.admin.secret.is_some() {
        return Ok(());
    }
    let forbidden = |why: &str| {
        Rejection::plain(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: {why}. The admin API without admin.secret only answers local, non-browser clients; set admin.secret to call it from elsewhere."
            ),
        )
    };
    let host = req.headers().get(header::HOST).map(http::HeaderValue::as_bytes).or_else(|| {
        // HTTP/2 carries the host in :authority.
        req.uri().authority().map(|a| a.as_str().as_bytes())
    });
    // Browsers always send a Host; a client that sends none is not one.
    if let Some(host) = host
        && !loopback_host(host)
    {
        return Err(forbidden("Host is not a loopback address or localhost (DNS rebinding?)"));
    }
    if let Some(site) = req.headers().get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err(forbidden("cross-site browser request (Sec-Fetch-Site)"));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let own = host.is_some_and(|h| same_origin(origin.as_bytes(), h));
        if !own {
            return Err(forbidden("cross-site browser request (Origin)"));
        }
    }
    Ok(())
}

/// Whether a `Host` value names this machine: a loopback address (IPv4-mapped too) or
/// `localhost`, with or without a port.
fn loopback_host(host: &[u8]) -> bool {
    let Ok(authority) = std::str::from_utf8(host).map(str::parse::<http::uri::Authority>) else {
        return false;
    };
    let Ok(authority) = authority else { return false };
    let name = authority.host();
    let name = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether `origin` is the admin listener's own (`http://` and the request's Host; the
/// admin listener speaks plain HTTP only).
fn same_origin(origin: &[u8], host: &[u8]) -> bool {
    origin.strip_prefix(b"http://").is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// Ready while the listeners are up, the broker is reachable and we are not draining.
fn readyz(state: &Admin) -> Response<Body> {
    if state.shutdown.is_triggered() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !state.broker.is_ready() {
        text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable\n")
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

/// Checks `Authorization: Bearer <admin.secret>` when a secret is configured.
fn authorized(config: &Config, req: &Request<Incoming>) -> Result<(), Rejection> {
    let Some(secret) = &config.admin.secret else {
        return Ok(());
    };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), secret.expose().as_bytes()) => Ok(()),
        _ => Err(Rejection::json(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong admin secret")),
    }
}

/// The credentials of a `Bearer` authorization; the scheme name is case-insensitive
/// (RFC 9110 §11.1), so `bearer` from a hand-written client counts too.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /publish`.
async fn publish(state: &Admin, config: &Config, req: Request<Incoming>) -> Result<Response<Body>, Rejection> {
    authorized(config, &req)?;
    let limit = (config.limits.max_message_bytes * 4).max(1 << 20);
    let body = read_body(req, limit, config.limits.body_read_timeout).await?;
    let ids = crate::publish::publish_body(&state.broker, config, &body).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "ids": ids })))
}

async fn read_body(req: Request<Incoming>, limit: usize, idle: std::time::Duration) -> Result<Bytes, Rejection> {
    let body = crate::body_timeout::Idle::new(req.into_body(), idle);
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection::json(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than {limit} bytes"),
        )),
        Err(e) if crate::body_timeout::is_timeout(&*e) => Err(Rejection::json(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("no request body byte for {idle:?} (limits.body_read_timeout)"),
        )),
        Err(e) => Err(bad(format!("could not read the body: {e}"))),
    }
}

fn bad(message: impl Into<String>) -> Rejection {
    Rejection::json(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `GET /presence?channel=…`: users present on a presence channel (redis mode: on every
/// instance).
async fn presence(state: &Admin, config: &Config, req: &Request<Incoming>) -> Result<Response<Body>, Rejection> {
    authorized(config, req)?;
    let query = router::query_pairs(req.uri().query());
    let name = query
        .iter()
        .find(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| bad("?channel= is required"))?;
    let channel = policy::channel_name(name)?;
    let policy = policy::policy(config, &channel).ok_or_else(|| {
        Rejection::json(StatusCode::BAD_REQUEST, "unknown_channel", format!("no channel policy matches {channel}"))
    })?;
    if !policy.presence {
        return Err(bad(format!("presence is not enabled on {channel}")));
    }
    let users: Vec<serde_json::Value> = state
        .broker
        .presence(&channel)
        .await?
        .into_iter()
        .map(|(user, n, info)| serde_json::json!({ "user": &*user, "connections": n, "info": info }))
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "channel": channel.as_str(), "users": users })))
}

/// `GET /channels`: channels with subscribers on this instance.
fn channels(state: &Admin, config: &Config, req: &Request<Incoming>) -> Result<Response<Body>, Rejection> {
    authorized(config, req)?;
    let list: Vec<serde_json::Value> = state
        .broker
        .hub()
        .channels()
        .into_iter()
        .map(|(name, n)| serde_json::json!({ "channel": name.as_str(), "subscribers": n }))
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "channels": list })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(bearer("Bearer x"), Some("x"));
        assert_eq!(bearer("bearer x"), Some("x"));
        assert_eq!(bearer("Basic x"), None);
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "127.9.9.9:1",
            "localhost:9090",
            "LOCALHOST",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:80",
            "localhost.:9",
        ] {
            assert!(loopback_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["evil.example:9090", "10.0.0.1:9090", "localhost.evil.example", "[::2]:1", "", "a b"] {
            assert!(!loopback_host(bad.as_bytes()), "{bad}");
        }
        assert!(same_origin(b"http://127.0.0.1:9090", b"127.0.0.1:9090"));
        assert!(same_origin(b"http://LocalHost:9090", b"localhost:9090"));
        assert!(!same_origin(b"https://127.0.0.1:9090", b"127.0.0.1:9090"));
        assert!(!same_origin(b"http://localhost:3000", b"localhost:9090"));
        assert!(!same_origin(b"null", b"localhost:9090"));
    }
}
