//! A realtime connection's lifetime: its id, identity, presence membership, channels
//! and connection slot. Dropping a [`Session`] unsubscribes it everywhere and frees the
//! slot, however the connection ended; lifecycle webhooks are emitted on the way.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::Identity;
use crate::broker::{Broker, BrokerError, Resume};
use crate::config::{Config, Transport, WebhookEvent};
use crate::hub::Member;
use crate::hub::{ConnId, Outbox, Retention, Subscribed};
use crate::limits::{Admission, Refused};
use crate::metrics::ConnectionGuard;
use crate::names::ChannelName;
use crate::realtime::Realtime;

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
    state: Arc<Realtime>,
    /// Messages written to the client (for the end-of-session log line).
    pub delivered: u64,
    /// How the session ended, when sidewire ended it with a close code (WebSocket).
    pub ended: Option<(u16, &'static str)>,
    started: std::time::Instant,
    _admission: Admission,
    _gauge: ConnectionGuard,
}

/// The `transport` label of a transport's metrics.
pub fn transport_label(transport: Transport) -> &'static str {
    match transport {
        Transport::WebSocket => "websocket",
        Transport::Sse => "sse",
        Transport::LongPoll => "longpoll",
    }
}

impl Session {
    /// Admits a connection from `ip` (limits) for `transport`.
    pub fn admit(
        state: &Arc<Realtime>,
        config: &Config,
        ip: IpAddr,
        transport: Transport,
        identity: Arc<Identity>,
    ) -> Result<Self, Refused> {
        let admission = state.limits.admit(ip, &config.limits).inspect_err(|_| {
            state.metrics.refused(transport_label(transport), "limit");
        })?;
        Ok(Self::with_admission(state, admission, transport, identity))
    }

    /// A session for a connection already admitted (WebSocket: limits are checked before
    /// the upgrade, identity after it).
    pub fn with_admission(
        state: &Arc<Realtime>,
        admission: Admission,
        transport: Transport,
        identity: Arc<Identity>,
    ) -> Self {
        let label = transport_label(transport);
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
            delivered: 0,
            ended: None,
            started: std::time::Instant::now(),
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
        self.state.lifecycle.emit(&self.state.backend, kind, event);
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
        let seconds = self.started.elapsed().as_secs_f64();
        let connection = self.broker.hub().conn_name(self.conn);
        let (code, reason) = self.ended.map_or((None, "client left"), |(c, r)| (Some(c), r));
        let user = self.identity.user.as_deref();
        if self.transport == "longpoll" {
            // One per poll: every few seconds per client, so not at the default level.
            tracing::debug!(target: "sidewire::session", transport = self.transport, user, connection,
                seconds, delivered = self.delivered, "poll answered");
        } else {
            self.emit(WebhookEvent::Disconnect, None);
            tracing::info!(target: "sidewire::session", transport = self.transport, user, connection,
                seconds, delivered = self.delivered, close_code = code, close_reason = reason, "session ended");
        }
    }
}
