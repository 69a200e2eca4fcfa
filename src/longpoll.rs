//! Long-poll (SPEC §6): `GET /poll?channel=a&since=<cursor>&timeout=30s` answers at once
//! when messages after `since` exist, else with the first message to arrive, else empty
//! when the timeout (at most 60 s) passes. `timeout=0` is plain polling.
//!
//! The response is `{"messages": [...], "cursor": "..."}`; when history could not fill
//! the gap since `cursor`, it also carries `"reset": [channels]` and answers at once, so
//! the client refetches its state (the long-poll form of SSE's `event: reset`).
//!
//! The answer is written around each message's stored data, never re-parsed: the data
//! goes out byte for byte as stored (as on WebSocket and SSE), and a large replay costs
//! its own size once more, not a JSON tree per payload.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::{Config, RouteConfig, Transport};
use crate::hub::Message;
use crate::proxy::Peer;
use crate::realtime::Realtime;
use crate::respond::{Body, Rejection, with_body};
use crate::session::Session;
use crate::stream::Stream;
use crate::template::Params;
use crate::{identity, router};

/// Longest wait a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait used when the client names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most messages in one answer; the cursor lets the client fetch the rest at once.
const MAX_BATCH: usize = 1000;

fn timeout(query: &[(String, String)]) -> Result<Duration, Rejection> {
    let Some((_, text)) = query.iter().find(|(k, _)| k == "timeout") else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let parsed = match text.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(text),
    };
    parsed.map(|d| d.min(MAX_TIMEOUT)).map_err(|_| {
        Rejection::json(StatusCode::BAD_REQUEST, "bad_request", format!("bad timeout {text:?}: use e.g. 30s or 0"))
    })
}

/// Serves one poll.
pub async fn wait(
    state: &Arc<Realtime>,
    config: &Arc<Config>,
    route: &RouteConfig,
    params: Params,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Rejection> {
    if req.method() != Method::GET {
        return Err(Rejection::json(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "long-poll uses GET"));
    }
    // Taken before anything is checked against `config`: a reload from here on is seen.
    let mut reload = state.next_reload();
    let query = router::query_pairs(req.uri().query());
    let timeout = timeout(&query)?;
    let target = identity::Target { route, params: &params, query: &query, transport: "longpoll" };
    let opening = identity::stream_request(state, config, target, peer, &req).await?;
    let (identity, channels) = (opening.identity, opening.channels);
    let since = query.iter().find(|(k, _)| k == "since").map(|(_, v)| v.as_str());
    let session = Session::admit(state, config, peer.addr.ip(), Transport::LongPoll, identity)?;
    let (mut stream, opened) = Stream::open(session, channels, since, config.limits.subscriber_queue, None).await?;
    let mut messages = opened.replay;
    let mut draining = false;
    if messages.is_empty() && opened.reset.is_empty() && !timeout.is_zero() {
        let evicted = stream.inbox.evicted().clone();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                msg = stream.inbox.recv() => {
                    messages.extend(msg);
                    break;
                }
                () = &mut deadline => break,
                () = state.shutdown.cancelled() => {
                    draining = true;
                    break;
                }
                () = evicted.cancelled() => break,
                // A reload may take the channels away from this client: 401/403 now.
                () = reload.cancelled() => {
                    reload = state.next_reload();
                    let config = state.config.load();
                    crate::realtime::still_allowed(&config, &stream.session.identity, &stream.session.channels)?;
                }
            }
        }
    }
    while messages.len() < MAX_BATCH {
        match stream.inbox.try_recv() {
            Some(m) => messages.push(m),
            None => break,
        }
    }
    messages.truncate(MAX_BATCH);
    stream.session.delivered = messages.len() as u64;
    let mut res = with_body(StatusCode::OK, "application/json", answer(&mut stream, &messages, &opened.reset));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if draining {
        let secs = 1 + crate::sse::spread_ms(stream.session.conn, config.shutdown_grace) / 1000;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    Ok(res)
}

/// The response body. Fields are in alphabetical order, as this answer was always written.
#[derive(Serialize)]
struct Answer<'a> {
    cursor: String,
    messages: Vec<Entry<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    reset: Vec<&'a str>,
}

/// One message: `{channel, data, event?, id?, user?}`.
#[derive(Serialize)]
struct Entry<'a> {
    channel: &'a str,
    /// Written as stored: serde_json copies a `RawValue` through without parsing it.
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Client publishes only: the sender (`null` when anonymous).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Option<&'a str>>,
}

fn answer(stream: &mut Stream, messages: &[Arc<Message>], reset: &[crate::names::ChannelName]) -> Vec<u8> {
    let messages = messages
        .iter()
        .map(|m| {
            stream.advance(m);
            Entry {
                channel: m.channel.as_str(),
                data: &m.data,
                event: m.event.as_deref(),
                id: m.id.map(|id| id.to_string()),
                user: m.sender.as_ref().map(|u| u.as_deref()),
            }
        })
        .collect();
    let reset = reset.iter().map(|c| c.as_str()).collect();
    let answer = Answer { cursor: stream.cursor().to_string(), messages, reset };
    // Cannot fail: every field is a string, an option or valid JSON text.
    serde_json::to_vec(&answer).unwrap_or_default()
}
