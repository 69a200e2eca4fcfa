//! Message ids and resume cursors (SPEC §3).
//!
//! A message id is `<epoch>.<seq>`: `seq` comes from one counter per epoch shared by every
//! channel, assigned under the channel's lock, so ids rise strictly within a channel and a
//! channel's state can be dropped when idle without ever reusing an id. The epoch names
//! the history's lifetime (a process start in memory mode); a cursor from another epoch
//! cannot be resumed, which the client is told (`recovered: false`, `event: reset`).
//!
//! A stream cursor (SSE `id:`, long-poll `cursor`) covers several channels at once:
//! `<epoch>.<seq_1>.<seq_2>…`, one position per channel of the stream in sorted order.
//! For a one-channel stream it is exactly the last message id.

use std::fmt;

/// The lifetime of a history; ids and cursors of another epoch are not resumable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u32);

impl Epoch {
    /// A fresh epoch: the low bits of the clock mixed with the process id, so two
    /// instances (or restarts) practically never share one.
    pub fn fresh() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        let x = mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Never 0, so an all-zero cursor is never valid by accident.
        Self(((x >> 32) as u32).max(1))
    }
}

impl Epoch {
    /// The base-36 text form back (`None` for 0 or garbage).
    pub fn parse(text: &str) -> Option<Self> {
        let n = u32::try_from(parse_base36(text)?).ok()?;
        (n != 0).then_some(Self(n))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", base36(u64::from(self.0)))
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = Vec::new();
    loop {
        buf.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    buf.reverse();
    String::from_utf8(buf).unwrap_or_default()
}

fn parse_base36(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 13 {
        return None;
    }
    u64::from_str_radix(text, 36).ok()
}

/// A message id: `<epoch>.<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub epoch: u32,
    pub seq: u64,
}

impl MessageId {
    pub fn parse(text: &str) -> Option<Self> {
        let cursor = Cursor::parse(text)?;
        match cursor.positions.as_slice() {
            [seq] => Some(Self { epoch: cursor.epoch.0, seq: *seq }),
            _ => None,
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", Epoch(self.epoch), self.seq)
    }
}

/// A position in several channels at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Epoch,
    /// Last seq covered, one per channel of the stream (sorted channel order).
    pub positions: Vec<u64>,
}

/// Longest cursor text accepted (100 channels × 20 digits and some).
const MAX_CURSOR_LEN: usize = 4096;

impl Cursor {
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_CURSOR_LEN {
            return None;
        }
        let mut parts = text.trim().split('.');
        let epoch = u32::try_from(parse_base36(parts.next()?)?).ok()?;
        let positions: Option<Vec<u64>> = parts.map(|p| p.parse::<u64>().ok()).collect();
        let positions = positions?;
        if positions.is_empty() || epoch == 0 {
            return None;
        }
        Some(Self { epoch: Epoch(epoch), positions })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.epoch)?;
        for p in &self.positions {
            write!(f, ".{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let id = MessageId { epoch: 123_456, seq: 42 };
        assert_eq!(id.to_string(), "2n9c.42");
        assert_eq!(MessageId::parse("2n9c.42"), Some(id));
        let c = Cursor { epoch: Epoch(7), positions: vec![1, 0, 99] };
        assert_eq!(c.to_string(), "7.1.0.99");
        assert_eq!(Cursor::parse("7.1.0.99"), Some(c));
        assert_eq!(MessageId::parse("7.1.0"), None);
        for bad in ["", ".", "x", "7", "7.", "7.a", "0.1", "7.-1", "!!.1"] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
        assert!(Epoch::fresh().0 != 0);
    }
}
