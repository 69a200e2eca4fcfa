//! Who the client of a realtime request is: the `Origin` check, the credential, and the
//! identity the auth cache or the backend gives it; and what SSE and long-poll settle
//! before their stream starts (identity, then the channels it may stream).

use std::sync::Arc;

use http::StatusCode;

use crate::auth::{self, AuthRequest, Credential, Identity};
use crate::config::Config;
use crate::hub::Retention;
use crate::names::ChannelName;
use crate::policy::stream_channels;
use crate::realtime::Realtime;
use crate::respond::Rejection;
use crate::template::Params;

/// Checks `Origin` against `limits.origins` (default: same scheme and host only). A
/// request without `Origin` (not from a browser) passes: browsers always send it
/// cross-site. The request's scheme is that of the listener (`tls`), or the first
/// `X-Forwarded-Proto` when a TLS-terminating proxy sits in front (a browser cannot set
/// that header on a WebSocket or EventSource request, so it cannot forge it here).
pub fn check_origin<B>(config: &Config, req: &http::Request<B>, tls: bool) -> Result<(), Rejection> {
    let headers = req.headers();
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
    let allowed = if config.limits.origins.is_empty() {
        // HTTP/2 carries the host as `:authority`, not as a `Host` header.
        let host = match headers.get(http::header::HOST) {
            Some(h) => h.to_str().unwrap_or(""),
            None => req.uri().authority().map_or("", |a| a.as_str()),
        };
        let forwarded = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok());
        let scheme = match forwarded.and_then(|v| v.split(',').next()) {
            Some(p) => p.trim().to_ascii_lowercase(),
            None if tls => "https".to_owned(),
            None => "http".to_owned(),
        };
        origin.split_once("://").is_some_and(|(s, rest)| s == scheme && rest.eq_ignore_ascii_case(host))
    } else {
        config.limits.origins.iter().any(|o| o == "*" || *o == origin)
    };
    if allowed { Ok(()) } else { Err(Rejection::json(StatusCode::FORBIDDEN, "forbidden", "origin not allowed")) }
}

/// Identifies the client of a realtime request (credential, then the auth cache or the
/// backend), after the origin check. `ask` describes the request to the backend.
pub async fn identify<B>(
    state: &Realtime,
    config: &Config,
    req: &http::Request<B>,
    query: &[(String, String)],
    peer: crate::proxy::Peer,
    ask: AuthRequest<'_>,
) -> Result<(Option<Credential>, Arc<Identity>), Rejection> {
    let transport = ask.transport;
    check_origin(config, req, peer.tls).inspect_err(|_| state.metrics.refused(transport, "origin"))?;
    let cred = auth::credential(&config.auth, req.headers(), query, peer);
    let identity = state
        .auth
        .identify(&state.backend, cred.as_ref(), ask)
        .await
        .inspect_err(|e| state.metrics.refused(transport, e.refusal()))?;
    Ok((cred, identity))
}

/// What an SSE or long-poll request names: its route, path parameters and query.
pub struct Target<'a> {
    pub route: &'a crate::config::RouteConfig,
    pub params: &'a Params,
    pub query: &'a [(String, String)],
    pub transport: &'static str,
}

/// What SSE and long-poll settle before their stream starts.
pub struct StreamRequest {
    pub cred: Option<Credential>,
    pub identity: Arc<Identity>,
    /// Sorted, deduplicated and authorized.
    pub channels: Vec<(ChannelName, Retention)>,
}

/// The common start of an SSE or long-poll request: origin, identity (the auth call names
/// the channels the request asks for), then the channels it may stream.
pub async fn stream_request<B>(
    state: &Realtime,
    config: &Config,
    target: Target<'_>,
    peer: crate::proxy::Peer,
    req: &http::Request<B>,
) -> Result<StreamRequest, Rejection> {
    let channels = requested_channels(target.route, target.params, target.query);
    let ask = AuthRequest { transport: target.transport, path: req.uri().path(), channels };
    let (cred, identity) = identify(state, config, req, target.query, peer, ask).await?;
    let channels = stream_channels(config, target.route, target.params, target.query, &identity).inspect_err(|e| {
        if e.status == StatusCode::FORBIDDEN {
            state.metrics.refused(target.transport, "channel");
        }
    })?;
    Ok(StreamRequest { cred, identity, channels })
}

/// The channels a request names before its identity is known, for the auth call: the
/// route's templates, or `?channel=` when it has none. Templates on `{user}` are left
/// out: they name whatever user the backend is about to answer with.
pub fn requested_channels(
    route: &crate::config::RouteConfig,
    params: &Params,
    query: &[(String, String)],
) -> Vec<String> {
    if route.channels.is_empty() {
        return query.iter().filter(|(k, _)| k == "channel").map(|(_, v)| v.clone()).collect();
    }
    route.channels.iter().filter_map(|t| t.fill(params, None).ok()).map(|n| n.as_str().to_owned()).collect()
}
