//! Channel policy: which `channels` entry governs a channel, whether an identity may
//! use it, and the refusals (`ChannelError`) the transports and the publish API share.

use http::StatusCode;

use crate::auth::Identity;
use crate::broker::BrokerError;
use crate::config::{ChannelPolicy, Config};
use crate::hub::Retention;
use crate::names::ChannelName;
use crate::protocol::ErrorCode;
use crate::respond::Rejection;
use crate::template::{Params, USER_PARAM};

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
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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

impl From<BrokerError> for ChannelError {
    fn from(e: BrokerError) -> Self {
        ChannelError::new(ErrorCode::Unavailable, e.to_string())
    }
}
