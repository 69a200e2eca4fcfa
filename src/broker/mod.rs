//! The broker: the one path every published message takes (STYLE 13). It assigns the id
//! and delivers to the hub of every instance, in id order per channel.
//!
//! `Memory` serves a single instance: the hub itself assigns ids under the channel lock.
//! A `Redis` variant (pub/sub + streams) joins this enum for multi-instance deployments;
//! the hub does not know which variant delivers to it.

use std::sync::Arc;

use crate::hub::{Draft, Hub, Message, Retention};

/// Why a publish did not happen (nothing was published).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Down(String),
}

#[derive(Clone)]
pub enum Broker {
    Memory(Hub),
}

impl Broker {
    /// Publishes one message; returns it with its id assigned.
    pub fn publish(&self, draft: Draft, retention: Retention) -> Result<Arc<Message>, BrokerError> {
        match self {
            Broker::Memory(hub) => Ok(hub.publish(draft, retention)),
        }
    }

    /// Whether publishing can succeed now (`/readyz`).
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
        }
    }
}
