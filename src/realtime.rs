//! What the realtime transports (WebSocket, SSE, long-poll) and the publish API share:
//! who the client is, which channels a request names and whether it may use them, and
//! the one publish path with the channel policies applied.
//!
//! Does not: speak any wire format (ws.rs, sse.rs, longpoll.rs do) or store anything
//! (the hub does).

use std::net::IpAddr;
use std::sync::Arc;

use http::StatusCode;
use serde_json::value::RawValue;

use crate::State;
use crate::auth::{self, AuthRequest, Credential, Identity};
use crate::broker::{Broker, BrokerError, Outgoing, Resume};
use crate::config::{ChannelPolicy, Config, Transport, WebhookEvent};
use crate::hub::Member;
use crate::hub::cursor::MessageId;
use crate::hub::{ConnId, Draft, Outbox, Retention, Subscribed};
use crate::limits::{Admission, Refused};
use crate::metrics::ConnectionGuard;
use crate::names::ChannelName;
use crate::protocol::ErrorCode;
use crate::respond::Rejection;
use crate::template::{Params, USER_PARAM, percent_decode};

/// Checks `Origin` against `limits.origins` (default: same host only). A request without
/// `Origin` (not from a browser) passes: browsers always send it cross-site.
pub fn check_origin<B>(config: &Config, req: &http::Request<B>) -> Result<(), Rejection> {
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
        origin.split_once("://").is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
    } else {
        config.limits.origins.iter().any(|o| o == "*" || *o == origin)
    };
    if allowed { Ok(()) } else { Err(Rejection::json(StatusCode::FORBIDDEN, "forbidden", "origin not allowed")) }
}

/// Identifies the client of a realtime request (credential, then the auth cache or the
/// backend), after the origin check. `ask` describes the request to the backend.
pub async fn identify(
    state: &State,
    config: &Config,
    req: &http::Request<hyper::body::Incoming>,
    query: &[(String, String)],
    peer: crate::proxy::Peer,
    ask: AuthRequest<'_>,
) -> Result<(Option<Credential>, Arc<Identity>), Rejection> {
    check_origin(config, req)?;
    let cred = auth::credential(&config.auth, req.headers(), query, peer);
    let identity = state.auth.identify(state, cred.as_ref(), ask).await?;
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
pub async fn stream_request(
    state: &State,
    config: &Config,
    target: Target<'_>,
    peer: crate::proxy::Peer,
    req: &http::Request<hyper::body::Incoming>,
) -> Result<StreamRequest, Rejection> {
    let channels = requested_channels(target.route, target.params, target.query);
    let ask = AuthRequest { transport: target.transport, path: req.uri().path(), channels };
    let (cred, identity) = identify(state, config, req, target.query, peer, ask).await?;
    let channels = stream_channels(config, target.route, target.params, target.query, &identity)?;
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

/// The policy of the first `channels` entry matching `name`.
pub fn policy<'a>(config: &'a Config, name: &ChannelName) -> Option<&'a ChannelPolicy> {
    config.channels.iter().find(|p| p.pattern.matches(name.as_str()))
}

/// A refused channel: the WS error code and message, convertible to an HTTP rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChannelError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<ChannelError> for Rejection {
    fn from(e: ChannelError) -> Self {
        let status = match e.code {
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        Rejection::json(status, e.code.as_str(), e.message)
    }
}

/// Parses a channel name from a client.
pub fn channel_name(text: &str) -> Result<ChannelName, ChannelError> {
    ChannelName::new(text).map_err(|e| ChannelError::new(ErrorCode::BadRequest, format!("bad channel {text:?}: {e}")))
}

/// Whether `identity` may subscribe to (or publish on) `name`; returns its policy.
pub fn authorize<'a>(
    config: &'a Config,
    identity: &Identity,
    name: &ChannelName,
) -> Result<&'a ChannelPolicy, ChannelError> {
    let policy = policy(config, name)
        .ok_or_else(|| ChannelError::new(ErrorCode::UnknownChannel, format!("no channel policy matches {name}")))?;
    // A signed-in user may read what anyone without credentials may: being known to the
    // backend must never grant less than being anonymous.
    let public = policy.public && config.auth.anonymous;
    let allowed = match &identity.user {
        None => public,
        Some(_) => public || identity.patterns.iter().any(|p| p.matches(name.as_str())),
    };
    if allowed { Ok(policy) } else { Err(ChannelError::new(ErrorCode::Forbidden, format!("not allowed on {name}"))) }
}

pub fn retention(policy: &ChannelPolicy) -> Retention {
    Retention { presence: policy.presence, size: policy.history_size, ttl: policy.history_ttl }
}

/// Decoded query parameters, in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(&k.replace('+', " "))?, percent_decode(&v.replace('+', " "))?))
        })
        .collect()
}

/// The channels of an SSE or long-poll request: the route's templates, or `?channel=`.
/// Sorted and deduplicated (stream cursors list positions in this order), each authorized.
pub fn stream_channels(
    config: &Config,
    route: &crate::config::RouteConfig,
    params: &Params,
    query: &[(String, String)],
    identity: &Identity,
) -> Result<Vec<(ChannelName, Retention)>, Rejection> {
    let mut names = Vec::new();
    if route.channels.is_empty() {
        for (_, v) in query.iter().filter(|(k, _)| k == "channel") {
            names.push(channel_name(v)?);
        }
    } else {
        for t in &route.channels {
            let name = t.fill(params, identity.user.as_deref()).map_err(|e| match e {
                crate::template::FillError::NoUser => Rejection::json(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("{{{USER_PARAM}}} needs an authenticated user"),
                ),
                other => Rejection::json(StatusCode::BAD_REQUEST, "bad_request", other.to_string()),
            })?;
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(Rejection::json(StatusCode::BAD_REQUEST, "bad_request", "no channel: add ?channel=NAME"));
    }
    if names.len() > config.limits.max_channels_per_connection {
        return Err(Rejection::json(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("at most {} channels per connection", config.limits.max_channels_per_connection),
        ));
    }
    names
        .into_iter()
        .map(|n| authorize(config, identity, &n).map(|p| (n, retention(p))).map_err(Rejection::from))
        .collect()
}

/// Refusal of a connection by the limits, as an HTTP 429.
impl From<Refused> for Rejection {
    fn from(e: Refused) -> Self {
        Rejection::json(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", e.to_string())
    }
}

/// A message to publish, as the API or a client gave it.
pub struct Publish<'a> {
    pub channel: &'a ChannelName,
    pub event: Option<&'a str>,
    pub data: &'a RawValue,
    pub exclude: Option<ConnId>,
}

/// Checks a message against its channel policy and the size limit, before anything is
/// published (a batch is checked whole first). Returns the draft and its retention.
pub fn prepare(config: &Config, p: &Publish<'_>) -> Result<(Draft, Retention), ChannelError> {
    let policy = policy(config, p.channel).ok_or_else(|| {
        ChannelError::new(ErrorCode::UnknownChannel, format!("no channel policy matches {}", p.channel))
    })?;
    if p.data.get().len() > config.limits.max_message_bytes {
        return Err(ChannelError::new(
            ErrorCode::TooLarge,
            format!("data is larger than {} bytes", config.limits.max_message_bytes),
        ));
    }
    if let Some(ev) = p.event
        && (ev.is_empty() || ev.len() > 64 || ev.contains(['\n', '\r']))
    {
        return Err(ChannelError::new(ErrorCode::BadRequest, "event names are 1-64 characters without line breaks"));
    }
    let ephemeral = p.event.is_some_and(|e| policy.ephemeral.iter().any(|x| x == e));
    let draft = Draft {
        channel: p.channel.clone(),
        event: p.event.map(Into::into),
        data: compact(p.data),
        ephemeral,
        exclude: p.exclude,
    };
    Ok((draft, retention(policy)))
}

/// Publishes a prepared message through the broker.
pub async fn publish(state: &State, draft: Draft, retention: Retention) -> Result<Option<MessageId>, ChannelError> {
    let item = Outgoing { drafts: vec![(draft, retention)], idempotency: None };
    match state.broker.publish(vec![item]).await {
        Ok(ids) => Ok(ids.into_iter().next().and_then(|i| i.into_iter().next()).flatten()),
        Err(e) => Err(ChannelError::from(e)),
    }
}

impl From<BrokerError> for ChannelError {
    fn from(e: BrokerError) -> Self {
        ChannelError::new(ErrorCode::Unavailable, e.to_string())
    }
}

/// JSON with every insignificant space removed (SSE sends data as compact JSON). Works
/// on the text, so numbers keep their exact digits.
pub fn compact(raw: &RawValue) -> Box<RawValue> {
    let text = raw.get();
    if !text.bytes().any(|b| b.is_ascii_whitespace()) {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    RawValue::from_string(out).unwrap_or_else(|_| raw.to_owned())
}

/// Everything a realtime connection holds for its lifetime; dropping it unsubscribes
/// from every channel and frees the connection slot, however the connection ended.
pub struct Session {
    pub broker: Broker,
    pub conn: ConnId,
    pub channels: Vec<ChannelName>,
    pub identity: Arc<Identity>,
    /// The user as presence sees it (`None` when anonymous, and for long-polls).
    pub member: Option<Arc<Member>>,
    transport: &'static str,
    state: Arc<State>,
    _admission: Admission,
    _gauge: ConnectionGuard,
}

impl Session {
    /// Admits a connection from `ip` (limits) for `transport`.
    pub fn admit(
        state: &Arc<State>,
        config: &Config,
        ip: IpAddr,
        transport: Transport,
        identity: Arc<Identity>,
    ) -> Result<Self, Refused> {
        let admission = state.limits.admit(ip, &config.limits)?;
        Ok(Self::with_admission(state, admission, transport, identity))
    }

    /// A session for a connection already admitted (WebSocket: limits are checked before
    /// the upgrade, identity after it).
    pub fn with_admission(
        state: &Arc<State>,
        admission: Admission,
        transport: Transport,
        identity: Arc<Identity>,
    ) -> Self {
        let label = match transport {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
        };
        // A long-poll is one request of a client that comes back; as a presence it would
        // broadcast a `join` and a `leave` to the whole channel on every poll.
        let member = identity
            .user
            .as_deref()
            .filter(|_| transport != Transport::LongPoll)
            .map(|u| Arc::new(Member { user: u.into(), info: identity.info.clone() }));
        let session = Self {
            broker: state.broker.clone(),
            conn: state.broker.hub().next_conn(),
            channels: Vec::new(),
            identity,
            member,
            transport: label,
            state: Arc::clone(state),
            _admission: admission,
            _gauge: state.metrics.transport(label),
        };
        // Long-polls come and go every few seconds: only streams count as connections.
        if transport != Transport::LongPoll {
            session.emit(WebhookEvent::Connect, None);
        }
        session
    }

    /// Queues a lifecycle webhook event about this connection (never waits).
    pub fn emit(&self, kind: WebhookEvent, channel: Option<&ChannelName>) {
        let name = match kind {
            WebhookEvent::Message => "message",
            WebhookEvent::Connect => "connect",
            WebhookEvent::Disconnect => "disconnect",
            WebhookEvent::Subscribe => "subscribe",
            WebhookEvent::Unsubscribe => "unsubscribe",
        };
        let mut event = serde_json::json!({
            "type": name,
            "connection": self.broker.hub().conn_name(self.conn),
            "user": self.identity.user,
            "info": self.identity.info,
            "transport": self.transport,
        });
        if let Some(ch) = channel {
            event["channel"] = ch.as_str().into();
        }
        self.state.lifecycle.emit(&self.state, kind, event);
    }

    /// Subscribes this connection to `name` and records it (emits `subscribe`).
    pub async fn subscribe(
        &mut self,
        name: &ChannelName,
        outbox: &Outbox,
        resume: Resume,
        retention: Retention,
    ) -> Result<Subscribed, BrokerError> {
        let sub = self.broker.subscribe(name, outbox, resume, retention).await?;
        if sub.added {
            self.channels.push(name.clone());
            if self.transport != "longpoll" {
                self.emit(WebhookEvent::Subscribe, Some(name));
            }
        }
        Ok(sub)
    }

    /// Unsubscribes from `name` (emits `unsubscribe`).
    pub fn unsubscribe(&mut self, name: &ChannelName) {
        if self.broker.hub().unsubscribe(name, self.conn) {
            self.emit(WebhookEvent::Unsubscribe, Some(name));
        }
        self.channels.retain(|c| c != name);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for ch in &self.channels {
            self.broker.hub().unsubscribe(ch, self.conn);
        }
        if self.transport != "longpoll" {
            self.emit(WebhookEvent::Disconnect, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_outside_strings() {
        let raw = RawValue::from_string(r#"{ "a" : [1, 2.50, "x y\" z" ], "b":	true }"#.into()).unwrap();
        assert_eq!(compact(&raw).get(), r#"{"a":[1,2.50,"x y\" z"],"b":true}"#);
    }

    #[test]
    fn query() {
        let q = query_pairs(Some("channel=a&channel=room%3A1&x&lastEventId=ab.1+2"));
        assert_eq!(q[0], ("channel".into(), "a".into()));
        assert_eq!(q[1], ("channel".into(), "room:1".into()));
        assert_eq!(q[2], ("x".into(), "".into()));
        assert_eq!(q[3], ("lastEventId".into(), "ab.1 2".into()));
    }
}
