//! The client requests of the WebSocket protocol (SPEC §4): `subscribe`, `unsubscribe`,
//! `publish`, `presence`, `ping`. Each reply echoes the request's `ref`; refusals are
//! `error` frames, never disconnects.

use std::sync::Arc;

use serde_json::json;
use serde_json::value::RawValue;

use super::{Conn, End};
use crate::broker::Resume;
use crate::config::{ClientPublish, Config};
use crate::hub::cursor::{Epoch, MessageId};
use crate::names::ChannelName;
use crate::policy::{self, ChannelError};
use crate::protocol::{self, ClientMsg, ErrorCode};
use crate::publish::{self, Publish};
use crate::realtime::Realtime;
use crate::webhook::{self, Reply};

fn refuse(code: ErrorCode, message: impl Into<String>) -> ChannelError {
    ChannelError { code, message: message.into() }
}

/// Where `since` points; an unreadable cursor resumes nothing (`recovered: false`).
fn since(text: Option<&str>) -> Resume {
    match text.map(MessageId::parse) {
        None => Resume::Live,
        Some(Some(id)) => Resume::After { epoch: Epoch(id.epoch), seq: id.seq },
        Some(None) => Resume::Invalid,
    }
}

/// `[{user, connections, info}]` of a presence channel (every instance in redis mode).
async fn users(state: &Realtime, name: &ChannelName) -> Result<Vec<serde_json::Value>, ChannelError> {
    let list = state.broker.presence(name).await?;
    Ok(list.into_iter().map(|(user, n, info)| json!({ "user": &*user, "connections": n, "info": info })).collect())
}

impl Conn {
    pub(super) async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let (msg, reference) = match protocol::parse(text) {
            Ok(pair) => pair,
            Err(bad) => {
                let frame = protocol::error(ErrorCode::BadRequest, &bad.message, bad.reference.as_deref());
                return self.send(frame).await;
            }
        };
        let r = reference.as_deref();
        match msg {
            ClientMsg::Subscribe { channel, since, echo } => {
                self.quiet(&channel, echo);
                self.subscribe(&channel, since.as_deref(), r).await
            }
            ClientMsg::Unsubscribe { channel } => self.unsubscribe(&channel, r).await,
            ClientMsg::Publish { channel, event, data } => self.publish(&channel, event.as_deref(), &data, r).await,
            ClientMsg::Presence { channel } => self.presence(&channel, r).await,
            ClientMsg::Ping => self.send(protocol::encode("pong", json!({}), r)).await,
        }
    }

    /// Records `echo` for `channel` (a name that is not valid is refused by `subscribe`).
    fn quiet(&mut self, channel: &str, echo: bool) {
        let Ok(name) = crate::names::ChannelName::new(channel) else { return };
        self.quiet.retain(|c| *c != name);
        if !echo {
            self.quiet.push(name);
        }
    }

    /// Sends `error` for `e` (the connection goes on).
    async fn refused(&mut self, e: ChannelError, r: Option<&RawValue>) -> Result<(), End> {
        self.send(protocol::error(e.code, &e.message, r)).await
    }

    pub(super) async fn subscribe(
        &mut self,
        channel: &str,
        since_text: Option<&str>,
        r: Option<&RawValue>,
    ) -> Result<(), End> {
        // Every request is checked against the current config (a reload applies to
        // open connections too), not the one of the handshake.
        let config = self.ctx.state.config.load_full();
        let checked = policy::channel_name(channel).and_then(|name| {
            let policy = policy::authorize(&config, &self.session.identity, &name)?;
            Ok((name, policy::retention(policy)))
        });
        let (name, retention) = match checked {
            Ok(pair) => pair,
            Err(e) => return self.refused(e, r).await,
        };
        let max = config.limits.max_channels_per_connection;
        if !self.session.channels.contains(&name) && self.session.channels.len() >= max {
            return self
                .refused(refuse(ErrorCode::Forbidden, format!("at most {max} channels per connection")), r)
                .await;
        }
        let from = since(since_text);
        let sub = match self.session.subscribe(&name, &self.outbox, from, retention).await {
            Ok(sub) => sub,
            Err(e) => return self.refused(e.into(), r).await,
        };
        // Where this subscription stands before the replay: a client that sees no message
        // before its next reconnect resumes from here without a gap (extension to §4).
        let position = match from {
            Resume::After { seq, .. } if sub.recovered => seq,
            _ => sub.position,
        };
        let cursor = MessageId { epoch: self.ctx.state.broker.epoch().0, seq: position };
        let mut body = json!({ "channel": name.as_str(), "recovered": sub.recovered, "cursor": cursor.to_string() });
        if retention.presence {
            match users(&self.ctx.state, &name).await {
                Ok(list) => body["presence"] = list.into(),
                Err(e) => return self.refused(e, r).await,
            }
        }
        // The reply and the replay leave in one write.
        self.replay(protocol::encode("subscribed", body, r), sub.replay).await
    }

    async fn unsubscribe(&mut self, channel: &str, r: Option<&RawValue>) -> Result<(), End> {
        let name = match policy::channel_name(channel) {
            Ok(n) => n,
            Err(e) => return self.refused(e, r).await,
        };
        self.session.unsubscribe(&name);
        self.quiet.retain(|c| *c != name);
        self.send(protocol::encode("unsubscribed", json!({ "channel": name.as_str() }), r)).await
    }

    async fn presence(&mut self, channel: &str, r: Option<&RawValue>) -> Result<(), End> {
        // Every request is checked against the current config (a reload applies to
        // open connections too), not the one of the handshake.
        let config = self.ctx.state.config.load_full();
        let checked = policy::channel_name(channel).and_then(|name| {
            let policy = policy::authorize(&config, &self.session.identity, &name)?;
            if policy.presence {
                Ok(name)
            } else {
                Err(refuse(ErrorCode::BadRequest, format!("presence is not enabled on {name}")))
            }
        });
        match checked {
            Ok(name) => match users(&self.ctx.state, &name).await {
                Ok(list) => {
                    let body = json!({ "channel": name.as_str(), "users": list });
                    self.send(protocol::encode("presence", body, r)).await
                }
                Err(e) => self.refused(e, r).await,
            },
            Err(e) => self.refused(e, r).await,
        }
    }

    async fn publish(
        &mut self,
        channel: &str,
        event: Option<&str>,
        data: &RawValue,
        r: Option<&RawValue>,
    ) -> Result<(), End> {
        // Every request is checked against the current config (a reload applies to
        // open connections too), not the one of the handshake.
        let config = self.ctx.state.config.load_full();
        let checked = policy::channel_name(channel).and_then(|name| {
            let policy = policy::authorize(&config, &self.session.identity, &name)?;
            // Size and event checks apply whoever ends up publishing.
            // The sender is stamped from the identity, never taken from the client.
            let sender = Some(self.session.identity.user.as_deref().map(std::sync::Arc::from));
            let from = Some(self.ctx.state.broker.hub().conn_ref(self.session.conn));
            let data = publish::Shared::new(data);
            let p = Publish { channel: &name, event, data: &data, exclude: None, sender, from };
            let prepared = publish::prepare(&config, &p)?;
            Ok((name, policy.client_publish, prepared))
        });
        let (name, mode, (draft, retention)) = match checked {
            Ok(t) => t,
            Err(e) => return self.refused(e, r).await,
        };
        if mode != ClientPublish::Deny && self.over_budget(&config, r).await? {
            return Ok(());
        }
        match mode {
            ClientPublish::Deny => {
                self.refused(refuse(ErrorCode::Forbidden, format!("clients may not publish on {name}")), r).await
            }
            ClientPublish::Broadcast => {
                let frame = match publish::publish_one(&self.ctx.state.broker, draft, retention).await {
                    Ok(id) => protocol::encode(
                        "published",
                        json!({ "channel": name.as_str(), "id": id.map(|i| i.to_string()) }),
                        r,
                    ),
                    Err(e) => protocol::error(e.code, &e.message, r),
                };
                self.send(frame).await
            }
            ClientPublish::Backend => self.publish_via_backend(&name, event, data, r).await,
        }
    }

    /// Takes one publish from the identity's budget (`limits.identity_publish_rate`). Over
    /// budget is a strike like `client_rate`; a full table refuses with `unavailable` (the
    /// client did nothing wrong). `Ok(true)`: refused, and the refusal is sent.
    async fn over_budget(&mut self, config: &Config, r: Option<&RawValue>) -> Result<bool, End> {
        let key = crate::budget::Key::of(self.session.identity.user.as_deref(), self.ctx.ip);
        match self.ctx.state.budgets.spend(&key, &config.limits) {
            Ok(()) => {
                self.strikes.budget = self.strikes.budget.saturating_sub(1);
                Ok(false)
            }
            Err(refusal) => {
                self.ctx.state.metrics.publish_budget_refused(refusal.reason());
                match refusal {
                    crate::budget::Refusal::OverBudget => {
                        self.strikes.budget += 1;
                        self.strike(self.strikes.budget, &refusal.to_string(), r).await?;
                    }
                    crate::budget::Refusal::TableFull => {
                        self.refused(refuse(ErrorCode::Unavailable, refusal.to_string()), r).await?;
                    }
                }
                Ok(true)
            }
        }
    }

    /// Hands the message to the backend webhook in a tracked task, so the session keeps
    /// serving meanwhile; the outcome comes back as a frame on `replies`.
    async fn publish_via_backend(
        &mut self,
        name: &ChannelName,
        event: Option<&str>,
        data: &RawValue,
        r: Option<&RawValue>,
    ) -> Result<(), End> {
        let (tx, _) = self.replies.get_or_insert_with(|| tokio::sync::mpsc::channel(super::MAX_PENDING_WEBHOOKS));
        let Ok(permit) = tx.clone().try_reserve_owned() else {
            let e = refuse(ErrorCode::RateLimited, "too many messages awaiting the backend");
            return self.refused(e, r).await;
        };
        let identity = &self.session.identity;
        let data_value: serde_json::Value = serde_json::from_str(data.get()).unwrap_or_default();
        let mut body = json!({
            "type": "message",
            "id": self.ctx.state.lifecycle.next_id(),
            "connection": self.ctx.state.broker.hub().conn_name(self.session.conn),
            "user": identity.user,
            "info": identity.info,
            "channel": name.as_str(),
            "data": data_value,
        });
        if let Some(ev) = event {
            body["event"] = ev.into();
        }
        let state = Arc::clone(&self.ctx.state);
        // Every request is checked against the current config (a reload applies to
        // open connections too), not the one of the handshake.
        let config = self.ctx.state.config.load_full();
        let channel = name.clone();
        let reference = r.map(ToOwned::to_owned);
        self.ctx.state.shutdown.spawn(async move {
            let reply = webhook::post(&state.backend, "message", &body).await;
            permit.send(webhook_outcome(&state, &config, &channel, reply, reference.as_deref()).await);
        });
        Ok(())
    }
}

/// The frame that answers a client publish once the backend has decided.
async fn webhook_outcome(
    state: &Realtime,
    config: &Config,
    channel: &ChannelName,
    reply: Reply,
    r: Option<&RawValue>,
) -> String {
    match reply {
        Reply::Accepted(answer) => {
            let ids = match answer.get("publish") {
                Some(list) => match crate::publish::publish_list(&state.broker, config, list).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "backend webhook answered an unusable publish list");
                        return protocol::error(
                            ErrorCode::Unavailable,
                            "the backend's answer could not be published",
                            r,
                        );
                    }
                },
                None => Vec::new(),
            };
            let mut body = json!({ "channel": channel.as_str(), "id": ids.into_iter().flatten().next() });
            if let Some(reply) = answer.get("reply") {
                body["reply"] = reply.clone();
            }
            protocol::encode("published", body, r)
        }
        Reply::Rejected(status) => {
            protocol::error(ErrorCode::Rejected, &format!("the backend rejected the message ({status})"), r)
        }
        Reply::Failed(e) => {
            tracing::warn!(error = %e, "message webhook failed");
            protocol::error(ErrorCode::Unavailable, "the backend is unavailable; retry later", r)
        }
    }
}
