//! A multi-channel subscription with one cursor, shared by SSE and long-poll.
//!
//! Owns: resuming every channel of a stream from one [`Cursor`] and moving that cursor
//! as messages are sent. Positions are kept in the stream's sorted channel order.

use std::sync::Arc;

use crate::broker::{BrokerError, Resume};
use crate::hub::cursor::{Cursor, Epoch};
use crate::hub::{Inbox, Message, Retention, outbox_with};
use crate::names::ChannelName;
use crate::session::Session;

/// A live multi-channel subscription.
pub struct Stream {
    pub session: Session,
    pub inbox: Inbox,
    epoch: Epoch,
    /// Last seq covered per channel, aligned with `session.channels` (sorted).
    positions: Vec<u64>,
}

/// What opening a stream produced besides the stream.
pub struct Opened {
    /// History to send first, in id order (already merged across channels).
    pub replay: Vec<Arc<Message>>,
    /// Channels whose history could not fill the gap since the cursor.
    pub reset: Vec<ChannelName>,
}

impl Stream {
    /// Subscribes `session` to `channels` (sorted, deduplicated), resuming from `cursor`.
    pub async fn open(
        mut session: Session,
        channels: Vec<(ChannelName, Retention)>,
        cursor: Option<&str>,
        queue: usize,
        evicted: Option<tokio_util::sync::CancellationToken>,
    ) -> Result<(Self, Opened), BrokerError> {
        let epoch = session.broker.epoch();
        let evicted = evicted.unwrap_or_default();
        let (outbox, inbox) = outbox_with(session.conn, session.member.clone(), queue, evicted);
        // `Some(None)`: the client gave a cursor we cannot use (garbage, or one for another
        // channel list, which cannot be mapped position by position). That is a failed
        // resume the client must hear about, not a fresh start.
        let cursor = cursor.map(|text| Cursor::parse(text).filter(|c| c.positions.len() == channels.len()));
        let mut replay = Vec::new();
        let mut reset = Vec::new();
        let mut positions = Vec::with_capacity(channels.len());
        // One `limits.replay_bytes` for the whole request, not one per channel.
        let mut budget = session.broker.hub().replay_limit();
        for (i, (name, retention)) in channels.into_iter().enumerate() {
            let resume = match &cursor {
                Some(Some(c)) => Resume::After { epoch: c.epoch, seq: c.positions[i] },
                // Unparseable or mismatched cursor: resume is impossible; say so.
                Some(None) => Resume::Invalid,
                None => Resume::Live,
            };
            let mut sub = session.subscribe(&name, &outbox, resume, retention).await?;
            session.broker.hub().charge_replay(&mut sub, &mut budget);
            positions.push(match resume {
                Resume::After { seq, .. } if sub.recovered => seq,
                _ => sub.position,
            });
            if !sub.recovered {
                reset.push(name.clone());
            }
            replay.extend(sub.replay);
        }
        replay.sort_by_key(|m| m.id);
        // The broker may have learnt its epoch during the subscribes (redis: first use).
        let epoch = if epoch.0 == 0 { session.broker.epoch() } else { epoch };
        Ok((Self { session, inbox, epoch, positions }, Opened { replay, reset }))
    }

    /// Moves the cursor past `msg`; `false` for ephemeral messages (no id, no move).
    pub fn advance(&mut self, msg: &Message) -> bool {
        let Some(id) = msg.id else { return false };
        if let Ok(i) = self.session.channels.binary_search(&msg.channel) {
            self.positions[i] = self.positions[i].max(id.seq);
        }
        true
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { epoch: self.epoch, positions: self.positions.clone() }
    }

    /// Writes the cursor text into `out` (no allocation beyond `out`).
    pub fn write_cursor(&self, out: &mut impl std::fmt::Write) {
        let _ = write!(out, "{}", self.epoch);
        for p in &self.positions {
            let _ = write!(out, ".{p}");
        }
    }
}
