//! A connection's bounded queue of messages, as the hub (producer) and the session
//! (consumer) see it. One queue per connection, shared by all its channels.
//!
//! Invariant: the hub only ever calls [`Outbox::offer`], which never waits. A full
//! queue marks the connection evicted (slow consumer) and it is dropped from the
//! channel; the session sees [`Inbox::evicted`] and closes with 1013 / ends its stream.

use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use super::message::{ConnId, Message};
use super::presence::Member;

/// The hub's end: cheap to clone into every channel the connection subscribes to.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub conn: ConnId,
    /// The user behind the connection (presence); `None` when anonymous.
    pub member: Option<Arc<Member>>,
    tx: mpsc::Sender<Arc<Message>>,
    evicted: CancellationToken,
}

/// The session's end.
#[derive(Debug)]
pub struct Inbox {
    pub conn: ConnId,
    rx: mpsc::Receiver<Arc<Message>>,
    evicted: CancellationToken,
}

/// What an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Not for this connection (`exclude_connection`).
    Skipped,
    /// Queue full: the connection was marked evicted; remove it.
    Evicted,
    /// The session is gone or already evicted (through another channel); remove it.
    Closed,
}

/// A queue of `capacity` messages for connection `conn` of `member`.
pub fn outbox(conn: ConnId, member: Option<Arc<Member>>, capacity: usize) -> (Outbox, Inbox) {
    outbox_with(conn, member, capacity, CancellationToken::new())
}

/// Like [`outbox`], with the token eviction cancels chosen by the caller (SSE passes its
/// connection's abort token, so an eviction closes the socket).
pub fn outbox_with(
    conn: ConnId,
    member: Option<Arc<Member>>,
    capacity: usize,
    evicted: CancellationToken,
) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Outbox { conn, member, tx, evicted: evicted.clone() }, Inbox { conn, rx, evicted })
}

impl Outbox {
    /// Never waits.
    pub fn offer(&self, msg: &Arc<Message>) -> Offer {
        if msg.exclude == Some(self.conn) {
            return Offer::Skipped;
        }
        match self.tx.try_send(Arc::clone(msg)) {
            Ok(()) => Offer::Queued,
            // Already evicted (through another of its channels) or shutting down: it is
            // closing; counting its full queue again would count one eviction per channel.
            // Checked only here, off the hot path (the token check takes a lock).
            Err(TrySendError::Full(_)) if self.evicted.is_cancelled() => Offer::Closed,
            Err(TrySendError::Full(_)) => {
                self.evicted.cancel();
                Offer::Evicted
            }
            Err(TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Marks the connection evicted without a message (e.g. replay overflow).
    pub fn evict(&self) {
        self.evicted.cancel();
    }
}

impl Inbox {
    /// Next message; `None` once every outbox clone is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        self.rx.recv().await
    }

    /// A message if one is queued now.
    pub fn try_recv(&mut self) -> Option<Arc<Message>> {
        self.rx.try_recv().ok()
    }

    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Arc<Message>>> {
        self.rx.poll_recv(cx)
    }

    /// Cancelled when the hub evicted this connection for overflowing its queue.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}
