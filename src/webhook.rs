//! Webhooks to the backend (SPEC §7): signed client messages on `client_publish: backend`
//! channels, and lifecycle events (`connect`, `disconnect`, `subscribe`, `unsubscribe`).
//!
//! Every POST carries `X-Sidewire-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`. Lifecycle events never touch the client path: they are `try_send`-ed
//! into a bounded queue (dropped and counted when full); one worker sends them, batched
//! as a JSON array when several wait. Delivery is at-least-once: each event has a unique
//! `id`, a batch is retried with capped backoff for `webhooks.retry_for`, and at shutdown
//! the queue is flushed within `shutdown_grace`. Every drop is counted by its reason
//! (`queue_full`, `rejected`, `expired`, `shutdown`) and logged once per burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{Secret, WebhookEvent};
use crate::limits::Limits;
use crate::proxy::Backend;
use crate::respond::full;
use crate::shutdown::Shutdown;

/// Lifecycle events waiting to be sent; beyond this they are dropped (and counted).
pub const QUEUE: usize = 10_000;
/// Most events in one POST.
const BATCH: usize = 100;
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

/// The time a `X-Sidewire-Signature` header signed `body` at, if it is a valid
/// signature with `secret` (the check a backend makes; compares in constant time).
/// Accepts the parts in any order and ignores unknown ones, as a backend should; the
/// caller decides how old a `t` it accepts.
pub fn verify(secret: &Secret, header: &str, body: &[u8]) -> Option<u64> {
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                t = Some(v.parse::<u64>().ok()?)
            }
            Some(("v1", v)) => v1 = Some(hex(v)?),
            _ => {}
        }
    }
    let (t, tag) = (t?, v1?);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let signed = [t.to_string().as_bytes(), b".", body].concat();
    ring::hmac::verify(&key, &signed, &tag).ok().map(|()| t)
}

/// Lowercase or uppercase hex to bytes (`None` for odd length or a non-hex digit).
fn hex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks(2).map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8)).collect()
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

/// POSTs `body` (an event object or array) signed to `webhooks.endpoint`; timed and
/// counted as `webhook` (`message` or `lifecycle`) in the webhook metrics.
pub async fn post(backend: &Backend, webhook: &'static str, body: &Value) -> Reply {
    let started = std::time::Instant::now();
    let (reply, error) = send(backend, body).await;
    match error {
        // Nothing was sent: no latency to record.
        Some("unconfigured") => backend.metrics.webhook_error(webhook, "unconfigured"),
        error => backend.metrics.webhook(webhook, started.elapsed(), error),
    }
    reply
}

/// One webhook POST: the reply, and the reason it failed (`metrics::WEBHOOK_ERROR_REASONS`).
async fn send(backend: &Backend, body: &Value) -> (Reply, Option<&'static str>) {
    let config = backend.config.load_full();
    let Some(secret) = &config.webhooks.secret else {
        return (Reply::Failed("webhooks.secret is not set".into()), Some("unconfigured"));
    };
    let proxy = backend.pool();
    let uri = match proxy.target(&config.webhooks.endpoint) {
        Ok(u) => u,
        Err(e) => return (Reply::Failed(e.to_string()), Some("failed")),
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
        Err(e) => {
            let reason = match e.kind() {
                "timeout" => "timeout",
                "connect" => "connect",
                _ => "failed",
            };
            return (Reply::Failed(e.to_string()), Some(reason));
        }
    };
    let status = res.status();
    if status.is_client_error() {
        return (Reply::Rejected(status), Some("rejected"));
    }
    if !status.is_success() {
        return (Reply::Failed(format!("webhook answered {status}")), Some("status"));
    }
    let bytes: Bytes = match Limited::new(res.into_body(), MAX_ANSWER).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return (Reply::Failed(format!("reading the webhook answer: {e}")), Some("failed")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return (Reply::Accepted(Value::Null), None);
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => (Reply::Accepted(v), None),
        Err(e) => (Reply::Failed(format!("invalid webhook answer: {e}")), Some("bad_answer")),
    }
}

/// The producer side of the lifecycle queue.
#[derive(Clone)]
pub struct Lifecycle {
    tx: mpsc::Sender<Value>,
    /// Names events uniquely: `<instance>-e<n>` (unlike connection ids).
    ids: Arc<Ids>,
    drops: Arc<Drops>,
}

struct Ids {
    instance: String,
    next: AtomicU64,
}

impl Lifecycle {
    /// A queue and its receiver (hand the receiver to [`run`]); `instance` prefixes the
    /// event ids (unique across instances).
    pub fn new(instance: String) -> (Self, mpsc::Receiver<Value>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let ids = Arc::new(Ids { instance, next: AtomicU64::new(1) });
        (Self { tx, ids, drops: Arc::default() }, rx)
    }

    /// A fresh event id, for this queue's events and for message webhooks.
    pub fn next_id(&self) -> String {
        format!("{}-e{:x}", self.ids.instance, self.ids.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues `event` (given its `id` here) if its type is enabled. Never waits: a full
    /// queue drops it (counted, and logged once per burst).
    pub fn emit(&self, backend: &Backend, kind: WebhookEvent, mut event: Value) {
        if !backend.config.load().webhooks.events.contains(&kind) {
            return;
        }
        event["id"] = self.next_id().into();
        if self.tx.try_send(event).is_err() {
            self.drops.dropped(backend, "queue_full", 1);
        }
    }
}

/// Drop accounting: every drop is counted; a warning is logged at most once per
/// [`DROP_LOG_EVERY`] with the number dropped since the last one.
#[derive(Default)]
struct Drops {
    last: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// Least time between two "webhook events dropped" warnings.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

impl Drops {
    fn dropped(&self, backend: &Backend, reason: &'static str, n: u64) {
        backend.metrics.webhook_dropped_n(reason, n);
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        match &mut *last {
            Some((at, pending)) if now.duration_since(*at) < DROP_LOG_EVERY => *pending += n,
            other => {
                let before = other.map_or(0, |(_, p)| p);
                tracing::warn!(reason, dropped = n + before, "lifecycle webhook events dropped");
                *other = Some((now, 0));
            }
        }
    }
}

/// The one lifecycle sender: batches what is waiting, retries each batch until the
/// backend takes it or `webhooks.retry_for` has passed (at-least-once; events carry an
/// `id` so the backend can drop a duplicate). At shutdown it keeps sending — including
/// the `disconnect`s the drain produces — until the queue is empty and every realtime
/// connection (`sessions`) has closed, or `shutdown_grace` is over.
pub async fn run(
    backend: Backend,
    lifecycle: Lifecycle,
    mut rx: mpsc::Receiver<Value>,
    sessions: Limits,
    shutdown: Shutdown,
) {
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled(), if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + backend.config.load().shutdown_grace);
                continue;
            }
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            () = tokio::time::sleep(DRAIN_POLL), if deadline.is_some() => {
                if sessions.total() == 0 || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return drop_rest(&backend, &lifecycle, &mut rx, "shutdown");
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let body = if batch.len() == 1 { batch.pop().unwrap_or(Value::Null) } else { Value::Array(batch) };
        if let Err(reason) = deliver(&backend, &body, deadline).await {
            lifecycle.drops.dropped(&backend, reason, count);
        }
    }
}

/// Counts what is still queued as dropped for `reason`.
fn drop_rest(backend: &Backend, lifecycle: &Lifecycle, rx: &mut mpsc::Receiver<Value>, reason: &'static str) {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    if n > 0 {
        lifecycle.drops.dropped(backend, reason, n);
    }
}

/// How often a draining sender checks whether the last session has closed.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// Longest pause between two attempts of one batch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Sends one batch until the backend takes it; `Err(reason)` when it is dropped.
async fn deliver(
    backend: &Backend,
    body: &Value,
    shutdown_deadline: Option<tokio::time::Instant>,
) -> Result<(), &'static str> {
    let retry_for = backend.config.load().webhooks.retry_for;
    let give_up = tokio::time::Instant::now() + retry_for;
    let mut delay = BACKOFF;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match post(backend, "lifecycle", body).await {
            Reply::Accepted(_) => return Ok(()),
            Reply::Rejected(status) => {
                tracing::warn!(status = status.as_u16(), "backend refused lifecycle events; dropped");
                return Err("rejected");
            }
            Reply::Failed(e) => tracing::warn!(attempt, error = %e, "lifecycle webhook failed; retrying"),
        }
        let next = tokio::time::Instant::now() + delay;
        if next > give_up {
            return Err("expired");
        }
        if shutdown_deadline.is_some_and(|d| next > d) {
            return Err("shutdown");
        }
        tokio::time::sleep_until(next).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
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

    #[test]
    fn verify_accepts_only_a_valid_signature() {
        let secret = Secret::new("s3cret");
        let header = signature(&secret, 1_700_000_000, b"{}");
        assert_eq!(verify(&secret, &header, b"{}"), Some(1_700_000_000));
        let swapped = header.split(',').rev().collect::<Vec<_>>().join(", ");
        assert_eq!(verify(&secret, &swapped, b"{}"), Some(1_700_000_000));
        assert_eq!(verify(&secret, &header, b"{ }"), None);
        assert_eq!(verify(&Secret::new("other"), &header, b"{}"), None);
        for bad in ["", "t=,v1=", "t=1700000000", "v1=00", "t=+1,v1=00", "t=1,v1=0", "t=99999999999999999999,v1=00"] {
            assert_eq!(verify(&secret, bad, b"{}"), None, "{bad:?}");
        }
    }
}
