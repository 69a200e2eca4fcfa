//! Route path templates (`/events/rooms/{room}`) and channel templates (`room:{room}`).
//!
//! Owns: parsing both kinds, matching a request path, and filling a channel template
//! from the captured parameters plus the authenticated `{user}`. Pure: no IO.

use crate::names::{ChannelName, NameError, is_channel_byte};

/// The parameter every channel template may use: the authenticated identity.
pub const USER_PARAM: &str = "user";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A route path: literal segments and `{name}` segments that capture one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    segments: Vec<Segment>,
}

/// Values captured from a request path, in template order.
pub type Params = Vec<(String, String)>;

fn param_name(seg: &str) -> Option<&str> {
    seg.strip_prefix('{')?.strip_suffix('}')
}

fn valid_param(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl PathTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix('/').ok_or("must start with '/'")?;
        if rest.ends_with('/') {
            return Err("must not end with '/'".into());
        }
        let mut segments = Vec::new();
        for seg in rest.split('/').filter(|s| !s.is_empty() || rest.is_empty()) {
            if seg.is_empty() {
                continue;
            }
            if let Some(name) = param_name(seg) {
                if !valid_param(name) {
                    return Err(format!("bad parameter {seg:?}: use {{name}} with [A-Za-z0-9_]"));
                }
                if name == USER_PARAM {
                    return Err("{user} is the authenticated identity; it cannot come from the path".into());
                }
                segments.push(Segment::Param(name.to_owned()));
            } else if seg.contains(['{', '}', '?', '#', '*']) {
                return Err(format!("segment {seg:?} mixes literal text and a parameter"));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        if rest.contains("//") {
            return Err("empty path segment".into());
        }
        Ok(Self { text: text.to_owned(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Names of the `{param}` segments.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a request path (without query). A trailing slash is ignored.
    pub fn matches(&self, path: &str) -> Option<Params> {
        let path = path.strip_prefix('/')?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        let mut params = Params::new();
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), percent_decode(part)?)),
            }
        }
        parts.next().is_none().then_some(params)
    }
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Param(String),
}

/// A channel name with `{param}` holes, e.g. `room:{room}` or `user:{user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTemplate {
    text: String,
    parts: Vec<Part>,
}

impl ChannelTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or("unclosed '{'")?;
                    let name = &rest[1..end];
                    if !valid_param(name) {
                        return Err(format!("bad parameter {{{name}}}"));
                    }
                    parts.push(Part::Param(name.to_owned()));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let lit = &rest[..end];
                    if let Some(c) = lit.chars().find(|&c| !(c.is_ascii() && is_channel_byte(c as u8))) {
                        return Err(format!("character {c:?} is not allowed in a channel name"));
                    }
                    parts.push(Part::Text(lit.to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        if parts.is_empty() {
            return Err("empty channel template".into());
        }
        Ok(Self { text: text.to_owned(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(p) => Some(p.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Whether the template needs the authenticated identity.
    pub fn needs_user(&self) -> bool {
        self.params().any(|p| p == USER_PARAM)
    }

    /// Fills the holes; the result must still be a valid channel name.
    pub fn fill(&self, params: &Params, user: Option<&str>) -> Result<ChannelName, FillError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Param(p) if p == USER_PARAM => out.push_str(user.ok_or(FillError::NoUser)?),
                Part::Param(p) => {
                    let value = params.iter().find(|(k, _)| k == p).map(|(_, v)| v);
                    out.push_str(value.ok_or_else(|| FillError::Missing(p.clone()))?);
                }
            }
        }
        ChannelName::new(&out).map_err(FillError::Name)
    }
}

/// Why a channel template could not be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    #[error("the channel needs an authenticated user")]
    NoUser,
    #[error("no value for parameter {{{0}}}")]
    Missing(String),
    #[error(transparent)]
    Name(NameError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates() {
        let t = PathTemplate::parse("/events/rooms/{room}").unwrap();
        assert_eq!(t.matches("/events/rooms/42"), Some(vec![("room".into(), "42".into())]));
        assert_eq!(t.matches("/events/rooms/42/"), Some(vec![("room".into(), "42".into())]));
        assert_eq!(t.matches("/events/rooms"), None);
        assert_eq!(t.matches("/events/rooms/1/2"), None);
        assert_eq!(t.matches("/events/room/1"), None);
        let ws = PathTemplate::parse("/ws").unwrap();
        assert_eq!(ws.matches("/ws"), Some(vec![]));
        assert_eq!(ws.matches("/wsx"), None);
        assert!(PathTemplate::parse("ws").is_err());
        assert!(PathTemplate::parse("/a/{user}").is_err());
        assert!(PathTemplate::parse("/a/x{y}").is_err());
        assert!(PathTemplate::parse("/a//b").is_err());
        assert_eq!(t.matches("/events/rooms/a%3Ab"), Some(vec![("room".into(), "a:b".into())]));
    }

    #[test]
    fn channel_templates() {
        let t = ChannelTemplate::parse("room:{room}").unwrap();
        let params = vec![("room".to_owned(), "7".to_owned())];
        assert_eq!(t.fill(&params, None).unwrap().as_str(), "room:7");
        let u = ChannelTemplate::parse("user:{user}").unwrap();
        assert!(u.needs_user());
        assert_eq!(u.fill(&vec![], None), Err(FillError::NoUser));
        assert_eq!(u.fill(&vec![], Some("alice")).unwrap().as_str(), "user:alice");
        let bad = vec![("room".to_owned(), "a b".to_owned())];
        assert!(matches!(t.fill(&bad, None), Err(FillError::Name(_))));
        assert!(ChannelTemplate::parse("room {x}").is_err());
        assert!(ChannelTemplate::parse("room:{x").is_err());
    }
}
