//! One child of a shared [`CancellationToken`] per thread, for the waits on the fan-out
//! hot path (issue 11, target 3).
//!
//! Every poll of a token's wait takes that token's locks (its `is_cancelled` mutex and
//! its `Notify`'s waiter list). The shutdown and reload tokens are waited on by every
//! session, and each session polls them again after each delivery, so with one token
//! the serving threads took turns on one pair of locks about twice per delivery, each
//! time moving their cache lines between cores. A session waits on its own thread's
//! child instead: the same wake-ups (cancelling a token cancels its children at once),
//! locks only that thread's sessions share.

use std::sync::Mutex;
use std::thread::ThreadId;

use tokio_util::sync::CancellationToken;

/// Threads given a child of their own; any further thread waits on the parent. Serving
/// threads and the admin runtime's workers are far fewer.
const MAX_THREADS: usize = 64;

/// A token and its children by thread.
#[derive(Default)]
pub struct PerThread {
    parent: CancellationToken,
    children: Mutex<Vec<(ThreadId, CancellationToken)>>,
}

impl PerThread {
    /// Cancels the token and so every child.
    pub fn cancel(&self) {
        self.parent.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.parent.is_cancelled()
    }

    /// The token itself: for waits off the hot path.
    pub fn token(&self) -> &CancellationToken {
        &self.parent
    }

    /// The calling thread's child (made on first use). Cancelled with the token, never
    /// on its own: callers may cancel it only to cancel the token.
    pub fn local(&self) -> CancellationToken {
        let id = std::thread::current().id();
        let Ok(mut children) = self.children.lock() else { return self.parent.clone() };
        if let Some((_, child)) = children.iter().find(|(t, _)| *t == id) {
            return child.clone();
        }
        if children.len() >= MAX_THREADS {
            return self.parent.clone();
        }
        let child = self.parent.child_token();
        children.push((id, child.clone()));
        child
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_child_per_thread_cancelled_with_the_token() {
        let token = std::sync::Arc::new(PerThread::default());
        let here = token.local();
        assert!(!here.is_cancelled());
        let other = {
            let token = std::sync::Arc::clone(&token);
            std::thread::spawn(move || token.local()).join().unwrap()
        };
        token.cancel();
        assert!(here.is_cancelled() && other.is_cancelled() && token.local().is_cancelled());
        assert_eq!(token.children.lock().unwrap().len(), 2);
    }
}
