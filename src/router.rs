//! Request → [`Route`]: which entry point serves a request. Pure: no IO, no auth.
//!
//! Order: the reserved `prefix` first, then the configured realtime routes (first
//! match wins), else pass-through to the backend.

use crate::config::{Config, RouteConfig};
use crate::template::{Params, percent_decode};

/// Where a request goes.
#[derive(Debug, PartialEq)]
pub enum Route<'a> {
    /// Forward to the backend unchanged (SPEC §8).
    PassThrough,
    /// Under the reserved prefix; holds the rest of the path (`/client.js`).
    Reserved(&'a str),
    /// A realtime endpoint and the parameters captured from its path.
    Realtime(&'a RouteConfig, Params),
}

/// Decides where the request for `path` (no query) goes.
pub fn route<'a>(config: &'a Config, path: &'a str) -> Route<'a> {
    if let Some(rest) = path.strip_prefix(config.prefix.as_str())
        && (rest.is_empty() || rest.starts_with('/'))
    {
        return Route::Reserved(rest);
    }
    for r in &config.routes {
        if let Some(params) = r.path.matches(path) {
            return Route::Realtime(r, params);
        }
    }
    Route::PassThrough
}

/// Decoded query parameters, in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(&k.replace('+', " "))?, percent_decode(&v.replace('+', " "))?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;

    fn config() -> Config {
        let yaml = r#"
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/events", transport: sse }
  - { path: "/events/rooms/{room}", transport: sse, channels: ["room:{room}"] }
  - { path: "/poll", transport: longpoll }
"#;
        Config::from_yaml(yaml, &|_| None).unwrap()
    }

    #[test]
    fn table() {
        let c = config();
        let cases: &[(&str, &str)] = &[
            ("/", "pass"),
            ("/index.html", "pass"),
            ("/wss", "pass"),
            ("/ws", "websocket"),
            ("/ws/", "websocket"),
            ("/events", "sse"),
            ("/events/rooms/7", "sse:7"),
            ("/events/rooms/7/x", "pass"),
            ("/poll", "longpoll"),
            ("/_sidewire/client.js", "reserved:/client.js"),
            ("/_sidewire", "reserved:"),
            ("/_sidewirex", "pass"),
        ];
        for (path, want) in cases {
            let got = match route(&c, path) {
                Route::PassThrough => "pass".to_owned(),
                Route::Reserved(rest) => format!("reserved:{rest}"),
                Route::Realtime(r, params) => {
                    let t = match r.transport {
                        Transport::WebSocket => "websocket",
                        Transport::Sse => "sse",
                        Transport::LongPoll => "longpoll",
                    };
                    match params.first() {
                        Some((_, v)) => format!("{t}:{v}"),
                        None => t.to_owned(),
                    }
                }
            };
            assert_eq!(&got, want, "path {path}");
        }
    }

    #[test]
    fn query() {
        let q = query_pairs(Some("channel=a&channel=room%3A1&x&lastEventId=ab.1+2"));
        assert_eq!(q[0], ("channel".into(), "a".into()));
        assert_eq!(q[1], ("channel".into(), "room:1".into()));
        assert_eq!(q[2], ("x".into(), "".into()));
        assert_eq!(q[3], ("lastEventId".into(), "ab.1 2".into()));
    }
}
