//! Stream-side helpers: an SSE reader over a real response body that yields raw blocks
//! (for byte-exact assertions) or parsed events, plus the admin-side calls the stream
//! tests need around it (publish, waiting for a subscriber to register).
//!
//! Every read has a deadline so a missing event fails the test with what was read so
//! far instead of hanging it.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use super::TestServer;

/// How long any single expected thing may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// One parsed SSE block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    /// `data:` lines joined with `\n`, as EventSource does; `None` without any.
    pub data: Option<String>,
    pub retry: Option<u64>,
    /// Comment lines without the leading `:` and space.
    pub comments: Vec<String>,
}

/// Parses one block (without caring about the blank line that ended it).
pub fn parse(block: &str) -> Event {
    let mut ev = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix(':') {
            ev.comments.push(c.trim_start().to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => ev.id = Some(value.to_owned()),
            "event" => ev.event = Some(value.to_owned()),
            "data" => data.push(value),
            "retry" => ev.retry = Some(value.parse().expect("retry is a number")),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if !data.is_empty() {
        ev.data = Some(data.join("\n"));
    }
    ev
}

/// Reads an SSE response body block by block.
pub struct SseReader {
    res: reqwest::Response,
    buf: Vec<u8>,
    ended: bool,
}

impl SseReader {
    /// Wraps a response after checking it is a 200 event stream.
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), StatusCode::OK, "SSE response status");
        assert_eq!(res.headers().get("content-type").map(|v| v.to_str().unwrap()), Some("text/event-stream"));
        Self { res, buf: Vec::new(), ended: false }
    }

    /// `GET url` with optional extra headers, as a stream.
    pub async fn open(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Self {
        let mut req = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::new(req.send().await.expect("SSE request"))
    }

    pub fn response(&self) -> &reqwest::Response {
        &self.res
    }

    /// The next block including its terminating blank line, or `None` once the body ended.
    pub async fn block(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(String::from_utf8(block).expect("SSE is UTF-8"));
            }
            if self.ended {
                assert!(self.buf.is_empty(), "stream ended inside a block: {:?}", String::from_utf8_lossy(&self.buf));
                return None;
            }
            self.fill().await;
        }
    }

    /// The next block, which must exist.
    pub async fn expect_block(&mut self) -> String {
        self.block().await.expect("the stream ended early")
    }

    /// The next block that is not only comments (heartbeats), parsed.
    pub async fn event(&mut self) -> Event {
        loop {
            let ev = parse(&self.expect_block().await);
            if ev.id.is_some() || ev.event.is_some() || ev.data.is_some() || ev.retry.is_some() {
                return ev;
            }
        }
    }

    /// Reads until the body ends; returns every remaining block.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(b) = self.block().await {
            out.push(b);
        }
        out
    }

    async fn fill(&mut self) {
        let chunk = tokio::time::timeout(DEADLINE, self.res.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!("no SSE bytes within {DEADLINE:?}; buffered: {:?}", String::from_utf8_lossy(&self.buf))
            })
            .expect("SSE body error");
        match chunk {
            Some(bytes) => self.buf.extend_from_slice(&bytes),
            None => self.ended = true,
        }
    }
}

/// A client that speaks HTTP/2 without TLS (h2c prior knowledge).
pub fn h2c() -> reqwest::Client {
    super::install_crypto();
    reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap()
}

/// The epoch part of an id or cursor (`<epoch>.<seq>…`).
pub fn epoch_of(id: &str) -> &str {
    id.split_once('.').map_or(id, |(e, _)| e)
}

/// `POST /publish` on the admin listener; returns the status and the JSON body.
pub async fn publish_raw(server: &TestServer, body: impl Into<String>) -> (StatusCode, Value) {
    let res = super::http()
        .post(server.admin_url("/publish"))
        .header("content-type", "application/json")
        .body(body.into())
        .send()
        .await
        .expect("publish request");
    let status = res.status();
    let text = res.text().await.expect("publish body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("publish answered non-JSON {text:?}: {e}"));
    (status, json)
}

/// Publishes `body` (a JSON value) and returns the ids, asserting success.
pub async fn publish(server: &TestServer, body: Value) -> Vec<Value> {
    let (status, json) = publish_raw(server, body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "publish {body}: {json}");
    json["ids"].as_array().expect("ids").clone()
}

/// Publishes one message on `channel` and returns its id.
pub async fn publish_one(server: &TestServer, channel: &str, data: Value) -> String {
    let ids = publish(server, serde_json::json!({ "channel": channel, "data": data })).await;
    ids[0].as_str().expect("a string id").to_owned()
}

/// Subscriber count of `channel` from `GET /channels` (0 when not listed).
pub async fn subscribers(server: &TestServer, channel: &str) -> u64 {
    let body: Value = super::http()
        .get(server.admin_url("/channels"))
        .send()
        .await
        .expect("channels request")
        .json()
        .await
        .expect("channels JSON");
    body["channels"]
        .as_array()
        .expect("channels list")
        .iter()
        .find(|c| c["channel"] == channel)
        .map_or(0, |c| c["subscribers"].as_u64().expect("count"))
}

/// Polls `GET /channels` until `channel` has exactly `n` subscribers (0: every stream
/// on it has been noticed closed).
pub async fn wait_subscribers(server: &TestServer, channel: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if subscribers(server, channel).await == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{channel} never had exactly {n} subscribers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GETs `url` and returns the status and JSON body (for error answers).
pub async fn get_json(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(DEADLINE, req.send()).await.expect("answer within the deadline").expect("request");
    let status = res.status();
    let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.expect("body");
    assert_eq!(ct.as_deref(), Some("application/json"), "body {text:?}");
    (status, serde_json::from_str(&text).expect("JSON body"))
}
