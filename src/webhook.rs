//! Webhooks to the backend (SPEC §7): signed client messages on `client_publish: backend`
//! channels, and lifecycle events (`connect`, `disconnect`, `subscribe`, `unsubscribe`).
//!
//! Every POST carries `X-Sidewire-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`. Lifecycle events never touch the client path: they are `try_send`-ed
//! into a bounded queue (dropped and counted when full); one worker sends them, batched
//! as a JSON array when several wait, retried with exponential backoff, and counted when
//! finally dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{Secret, WebhookEvent};
use crate::proxy::Backend;
use crate::respond::full;
use crate::shutdown::Shutdown;

/// Lifecycle events waiting to be sent; beyond this they are dropped (and counted).
pub const QUEUE: usize = 10_000;
/// Most events in one POST.
const BATCH: usize = 100;
/// Attempts per batch before it is dropped.
const ATTEMPTS: u32 = 5;
/// First retry delay; doubled each attempt.
const BACKOFF: Duration = Duration::from_millis(200);
/// Largest webhook answer read.
const MAX_ANSWER: usize = 1 << 20;

/// `t=<unix>,v1=<hex hmac>` for `body` signed with `secret` at `t`.
pub fn signature(secret: &Secret, t: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a webhook POST came back with.
#[derive(Debug)]
pub enum Reply {
    /// 2xx, with its JSON body (`Null` when empty).
    Accepted(Value),
    /// 4xx: the backend refused.
    Rejected(StatusCode),
    /// Anything else, or no answer.
    Failed(String),
}

/// POSTs `body` (an event object or array) signed to `webhooks.endpoint`.
pub async fn post(backend: &Backend, body: &Value) -> Reply {
    let config = backend.config.load_full();
    let Some(secret) = &config.webhooks.secret else {
        return Reply::Failed("webhooks.secret is not set".into());
    };
    let proxy = backend.pool();
    let uri = match proxy.target(&config.webhooks.endpoint) {
        Ok(u) => u,
        Err(e) => return Reply::Failed(e.to_string()),
    };
    let text = body.to_string();
    let sig = signature(secret, now_unix(), text.as_bytes());
    let mut req = Request::new(full(text));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&sig) {
        req.headers_mut().insert("x-sidewire-signature", v);
    }
    let res = match proxy.send(req, &backend.metrics).await {
        Ok(r) => r,
        Err(e) => return Reply::Failed(e.to_string()),
    };
    let status = res.status();
    if status.is_client_error() {
        return Reply::Rejected(status);
    }
    if !status.is_success() {
        return Reply::Failed(format!("webhook answered {status}"));
    }
    let bytes: Bytes = match Limited::new(res.into_body(), MAX_ANSWER).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return Reply::Failed(format!("reading the webhook answer: {e}")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Reply::Accepted(Value::Null);
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => Reply::Accepted(v),
        Err(e) => Reply::Failed(format!("invalid webhook answer: {e}")),
    }
}

/// The producer side of the lifecycle queue.
#[derive(Clone)]
pub struct Lifecycle {
    tx: mpsc::Sender<Value>,
}

impl Lifecycle {
    /// A queue and its receiver (hand the receiver to [`run`]).
    pub fn new() -> (Self, mpsc::Receiver<Value>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Queues `event` if its type is enabled. Never waits: a full queue drops it.
    pub fn emit(&self, backend: &Backend, kind: WebhookEvent, event: Value) {
        if !backend.config.load().webhooks.events.contains(&kind) {
            return;
        }
        if self.tx.try_send(event).is_err() {
            backend.metrics.webhook_dropped("queue_full");
        }
    }
}

/// The one lifecycle sender: batches what is waiting, retries with backoff.
pub async fn run(backend: Backend, mut rx: mpsc::Receiver<Value>, shutdown: Shutdown) {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let body = if batch.len() == 1 { batch.pop().unwrap_or(Value::Null) } else { Value::Array(batch) };
        deliver(&backend, &body, &shutdown).await;
    }
}

async fn deliver(backend: &Backend, body: &Value, shutdown: &Shutdown) {
    let count = body.as_array().map_or(1, Vec::len) as u64;
    let mut delay = BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match post(backend, body).await {
            Reply::Accepted(_) => return,
            Reply::Rejected(status) => {
                tracing::warn!(status = status.as_u16(), "backend refused lifecycle events; dropped");
                backend.metrics.webhook_dropped_n("rejected", count);
                return;
            }
            Reply::Failed(e) => tracing::warn!(attempt, error = %e, "lifecycle webhook failed"),
        }
        if attempt < ATTEMPTS {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            delay *= 2;
        }
    }
    backend.metrics.webhook_dropped_n("failed", count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_reference() {
        // Reference: python3 -c 'import hmac,hashlib;print(hmac.new(b"s3cret",b"1700000000.{}",hashlib.sha256).hexdigest())'
        let secret =
            crate::Config::from_yaml("webhooks: { secret: s3cret }\n", &|_| None).unwrap().webhooks.secret.unwrap();
        assert_eq!(
            signature(&secret, 1_700_000_000, b"{}"),
            "t=1700000000,v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }
}
