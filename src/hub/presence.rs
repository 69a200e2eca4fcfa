//! Presence on one channel: which users are subscribed, with how many connections.
//!
//! `join` and `leave` are reported once per user, not per connection: a user's second
//! tab changes only the count. Runs under the hub shard lock with its channel.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

/// The user behind a connection, as presence and webhooks see it.
#[derive(Debug)]
pub struct Member {
    pub user: Arc<str>,
    pub info: Option<Value>,
}

/// One present user: name, connection count, info.
pub type PresentUser = (Arc<str>, u32, Option<Value>);

#[derive(Debug, Default)]
pub struct Presence {
    members: HashMap<Arc<str>, (u32, Option<Value>)>,
}

impl Presence {
    /// Counts a connection of `member`; `true` when the user was not present before.
    pub fn join(&mut self, member: &Member) -> bool {
        let entry = self.members.entry(Arc::clone(&member.user)).or_insert((0, None));
        entry.0 += 1;
        entry.1.clone_from(&member.info);
        entry.0 == 1
    }

    /// Uncounts a connection of `user`; `true` when it was the user's last.
    pub fn leave(&mut self, user: &str) -> bool {
        match self.members.get_mut(user) {
            Some(entry) if entry.0 > 1 => {
                entry.0 -= 1;
                false
            }
            Some(_) => {
                self.members.remove(user);
                true
            }
            None => false,
        }
    }

    /// `(user, connections, info)` for every present user, sorted by user.
    pub fn list(&self) -> Vec<PresentUser> {
        let mut out: Vec<_> = self.members.iter().map(|(u, (n, info))| (Arc::clone(u), *n, info.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_user() {
        let mut p = Presence::default();
        let alice = Member { user: "alice".into(), info: None };
        assert!(p.join(&alice));
        assert!(!p.join(&alice), "second tab");
        assert_eq!(p.list()[0].1, 2);
        assert!(!p.leave("alice"));
        assert!(p.leave("alice"));
        assert!(p.list().is_empty());
        assert!(!p.leave("alice"));
    }
}
