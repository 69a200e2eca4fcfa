//! The WebSocket JSON protocol (SPEC §4): client requests, server frames, error codes
//! and close codes.
//!
//! Client frames are parsed into [`ClientMsg`] through a flat envelope (serde's
//! internally tagged enums cannot hold `RawValue`); the payload `data` stays raw JSON
//! and is never re-encoded.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hub::Message;

/// Close codes sidewire sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_LARGE: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const RESTART: u16 = 1012;
    pub const SLOW_CONSUMER: u16 = 1013;
    pub const AUTH_REQUIRED: u16 = 4001;
    pub const INVALID_TOKEN: u16 = 4002;
    pub const FORBIDDEN: u16 = 4003;
    /// No pong or frame for `heartbeat.timeout`: the client reconnects as after any
    /// drop (not 1001, which tells clients the server is going away and spreads them).
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
}

/// `error.code` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    UnknownChannel,
    RateLimited,
    TooLarge,
    Rejected,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Forbidden => "forbidden",
            Self::UnknownChannel => "unknown_channel",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A client request.
#[derive(Debug)]
pub enum ClientMsg {
    /// `echo: false`: the connection does not get its own publishes on this channel.
    Subscribe {
        channel: String,
        since: Option<String>,
        echo: bool,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        event: Option<String>,
        data: Box<RawValue>,
    },
    Presence {
        channel: String,
    },
    Ping,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ref", default, deserialize_with = "present")]
    reference: Option<Box<RawValue>>,
    channel: Option<String>,
    since: Option<String>,
    echo: Option<bool>,
    event: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
}

/// `ref` and `data` may be any JSON value, `null` included, so a field that is present
/// is `Some` even when it holds `null` (plain `Option` would read that as absent: a
/// dropped `ref`, or a refused `"data": null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A request that could not be understood: the error to send (with the `ref` when the
/// frame was JSON enough to carry one).
#[derive(Debug)]
pub struct BadRequest {
    pub message: String,
    pub reference: Option<Box<RawValue>>,
}

/// The `ref` of a JSON object whose other fields did not fit the envelope (no `type`, a
/// field of the wrong type), so that even that error echoes it. Only an object has a
/// `ref` (a struct would also accept a JSON array, taking its first element).
fn salvage_ref(text: &str) -> Option<Box<RawValue>> {
    let mut fields: HashMap<String, Box<RawValue>> = serde_json::from_str(text).ok()?;
    fields.remove("ref")
}

/// Parses one text frame into a request and its `ref`.
pub fn parse(text: &str) -> Result<(ClientMsg, Option<Box<RawValue>>), BadRequest> {
    let env: Envelope = serde_json::from_str(text)
        .map_err(|e| BadRequest { message: format!("malformed request: {e}"), reference: salvage_ref(text) })?;
    let reference = env.reference;
    let need = |field: Option<String>, name: &str| field.ok_or_else(|| format!("{} needs \"{name}\"", env.kind));
    let msg = match env.kind.as_str() {
        "subscribe" => need(env.channel, "channel").map(|channel| ClientMsg::Subscribe {
            channel,
            since: env.since,
            echo: env.echo.unwrap_or(true),
        }),
        "unsubscribe" => need(env.channel, "channel").map(|channel| ClientMsg::Unsubscribe { channel }),
        "presence" => need(env.channel, "channel").map(|channel| ClientMsg::Presence { channel }),
        "publish" => need(env.channel, "channel").and_then(|channel| match env.data {
            Some(data) => Ok(ClientMsg::Publish { channel, event: env.event, data }),
            None => Err("publish needs \"data\"".to_owned()),
        }),
        "ping" => Ok(ClientMsg::Ping),
        other => Err(format!("unknown type {other:?}")),
    };
    match msg {
        Ok(m) => Ok((m, reference)),
        Err(message) => Err(BadRequest { message, reference }),
    }
}

#[derive(Serialize)]
struct Out<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: T,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a RawValue>,
}

/// Encodes a server frame `{"type": kind, ...body, "ref"?}`.
pub fn encode<T: Serialize>(kind: &str, body: T, reference: Option<&RawValue>) -> String {
    serde_json::to_string(&Out { kind, body, reference }).unwrap_or_else(|_| format!("{{\"type\":\"{kind}\"}}"))
}

/// `error {code, message, ref?}`.
pub fn error(code: ErrorCode, message: &str, reference: Option<&RawValue>) -> String {
    encode("error", serde_json::json!({ "code": code, "message": message }), reference)
}

#[derive(Serialize)]
struct MessageBody<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    data: &'a RawValue,
    /// Client publishes only: the sender (`null` when anonymous).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Option<&'a str>>,
}

/// `message {channel, id, event?, data}` (or `join`/`leave {channel, user}`); encoded
/// once per message into its `ws` slot (see `ws::text_frame`).
pub fn encode_message(msg: &Message) -> String {
    if msg.kind != crate::hub::message::Kind::Publish {
        let kind = if msg.kind == crate::hub::message::Kind::Join { "join" } else { "leave" };
        // The data of a presence message is exactly `{"channel","user"}` (+ `info` on a join).
        let body: serde_json::Value = serde_json::from_str(msg.data.get()).unwrap_or_default();
        return encode(kind, body, None);
    }
    let body = MessageBody {
        channel: msg.channel.as_str(),
        id: msg.id.map(|id| id.to_string()),
        event: msg.event.as_deref(),
        data: &msg.data,
        user: msg.sender.as_ref().map(|u| u.as_deref()),
    };
    encode("message", body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let (m, r) = parse(r#"{"type":"subscribe","channel":"room:1","since":"a.1","ref":7}"#).unwrap();
        assert!(
            matches!(m, ClientMsg::Subscribe { ref channel, since: Some(ref s), echo: true } if channel == "room:1" && s == "a.1")
        );
        assert_eq!(r.unwrap().get(), "7");
        let (m, _) = parse(r#"{"type":"publish","channel":"c","event":"chat","data":{"x":[1,2]}}"#).unwrap();
        assert!(matches!(m, ClientMsg::Publish { ref data, .. } if data.get() == r#"{"x":[1,2]}"#));
        let e = parse(r#"{"type":"nope","ref":"r1"}"#).unwrap_err();
        assert!(e.message.contains("unknown type"));
        assert_eq!(e.reference.unwrap().get(), r#""r1""#);
        assert!(parse("not json").unwrap_err().reference.is_none());
        let e = parse(r#"{"type":"subscribe","channel":5,"ref":[1]}"#).unwrap_err();
        assert_eq!(e.reference.unwrap().get(), "[1]");
        assert!(parse("[7]").unwrap_err().reference.is_none());
        let e = parse(r#"{"ref":{"a":1}}"#).unwrap_err();
        assert_eq!(e.reference.unwrap().get(), r#"{"a":1}"#);
        let (_, r) = parse(r#"{"type":"ping","ref":null}"#).unwrap();
        assert_eq!(r.unwrap().get(), "null");
        assert!(parse(r#"{"type":"publish","channel":"c"}"#).is_err());
        let (m, _) = parse(r#"{"type":"publish","channel":"c","data":null}"#).unwrap();
        assert!(matches!(m, ClientMsg::Publish { ref data, .. } if data.get() == "null"));
    }

    #[test]
    fn encodes_frames() {
        let r = RawValue::from_string("{\"a\":1}".into()).unwrap();
        assert_eq!(
            error(ErrorCode::Forbidden, "no", Some(&r)),
            r#"{"type":"error","code":"forbidden","message":"no","ref":{"a":1}}"#
        );
        assert_eq!(encode("pong", serde_json::json!({}), None), r#"{"type":"pong"}"#);
        let msg = Message::new(
            crate::names::ChannelName::new("room:1").unwrap(),
            Some(crate::hub::cursor::MessageId { epoch: 10, seq: 3 }),
            Some("chat".into()),
            RawValue::from_string("\"hi\"".into()).unwrap().into(),
        );
        assert_eq!(
            encode_message(&msg),
            r#"{"type":"message","channel":"room:1","id":"a.3","event":"chat","data":"hi"}"#
        );
    }
}
