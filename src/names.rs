//! Checked identifiers: channel names and channel patterns (SPEC §3).
//!
//! Owns: the channel-name alphabet and the glob semantics of patterns. A value of
//! these types is valid by construction, so no later code re-checks it.

use std::fmt;
use std::sync::Arc;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

/// Whether `b` may appear in a channel name: `[A-Za-z0-9:_\-.@/]`.
pub fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.' | b'@' | b'/')
}

/// Why a channel name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name has a character outside [A-Za-z0-9:_-.@/]: {0:?}")]
    BadChar(char),
}

fn check(text: &str, allow_star: bool) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > MAX_CHANNEL_LEN {
        return Err(NameError::TooLong);
    }
    match text.chars().find(|&c| !(c.is_ascii() && is_channel_byte(c as u8) || allow_star && c == '*')) {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// A valid channel name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn new(text: &str) -> Result<Self, NameError> {
        check(text, false)?;
        Ok(Self(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A glob over channel names: `*` matches any run of characters, `:` and `/` included.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelPattern(Arc<str>);

impl ChannelPattern {
    pub fn new(text: &str) -> Result<Self, NameError> {
        check(text, true)?;
        Ok(Self(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches. Linear in practice: classic two-pointer glob with
    /// backtracking to the last `*` only.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    /// Whether every name `other` matches, `self` matches too (so a rule for `other`
    /// after one for `self` is never used). `other` is matched as text: a literal of
    /// `self` never matches its `*`, while a `*` of `self` matches anything, `*` included.
    pub fn covers(&self, other: &ChannelPattern) -> bool {
        glob(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

fn glob(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pat.len() && pat[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(ChannelName::new("room:1").is_ok());
        assert!(ChannelName::new("user:a@b.c/x_y-z").is_ok());
        assert_eq!(ChannelName::new(""), Err(NameError::Empty));
        assert_eq!(ChannelName::new("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(ChannelName::new("a*"), Err(NameError::BadChar('*')));
        assert_eq!(ChannelName::new(&"a".repeat(201)), Err(NameError::TooLong));
        assert!(ChannelName::new(&"a".repeat(200)).is_ok());
    }

    #[test]
    fn globs() {
        let p = |s| ChannelPattern::new(s).unwrap();
        assert!(p("*").matches("anything:at/all"));
        assert!(p("room:*").matches("room:1"));
        assert!(p("room:*").matches("room:a:b/c"));
        assert!(!p("room:*").matches("rooms:1"));
        assert!(p("a*b*c").matches("axxbyyc"));
        assert!(!p("a*b*c").matches("axxbyy"));
        assert!(p("user:alice").matches("user:alice"));
        assert!(!p("user:alice").matches("user:alice2"));
        assert!(p("*:x").matches("a:b:x"));
    }

    #[test]
    fn coverage() {
        let p = |s| ChannelPattern::new(s).unwrap();
        assert!(p("*").covers(&p("room:*")));
        assert!(p("room:*").covers(&p("room:*")));
        assert!(p("room:*").covers(&p("room:lobby")));
        assert!(p("room:*").covers(&p("room:*:typing")));
        assert!(p("*:typing").covers(&p("room:*:typing")));
        assert!(!p("room:*").covers(&p("*")));
        assert!(!p("room:lobby").covers(&p("room:*")));
        assert!(!p("room:*:typing").covers(&p("room:*")));
        assert!(!p("user:*").covers(&p("room:*")));
        assert!(!p("room:a*").covers(&p("room:*")));
    }
}
