//! `GET {prefix}/client.js` (SPEC §8): the HTTP contract (headers, ETag, HEAD, 404s
//! under the prefix) and the client itself, run in headless Chromium against a real
//! sidewire: WebSocket delivery and publish, resume after a cut, and the SSE and
//! long-poll fallbacks.
//!
//! The browser tests need Debian's `chromium` (`apt-get install -y chromium`); without
//! it they fail saying so. They run one at a time ([`browser::ONE_BROWSER`]).

#[path = "client_js/browser.rs"]
mod browser;
mod support;

use serde_json::{Value, json};

use browser::{ONE_BROWSER, Page, Relay};
use support::realtime::{publish_ok, yaml};
use support::{FakeBackend, TestServer, http};

const CLIENT_JS: &str = include_str!("../src/assets/client.js");

async fn server_for(backend: &FakeBackend, extra: &str) -> TestServer {
    TestServer::start(&format!("{}backend: {{ url: \"{}\" }}\n", yaml(extra), backend.url())).await
}

// ---------------------------------------------------------------- HTTP

#[tokio::test]
async fn client_js_is_served_with_caching_headers() {
    let backend = FakeBackend::echo().await;
    let server = server_for(&backend, "").await;
    let res = http().get(server.url("/_sidewire/client.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=300");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let etag = h["etag"].to_str().unwrap();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10, "strong etag, got {etag}");
    assert_eq!(res.text().await.unwrap(), CLIENT_JS);
    assert!(backend.recorded().is_empty(), "client.js must not reach the backend");
}

#[tokio::test]
async fn if_none_match_revalidates_with_304() {
    let backend = FakeBackend::echo().await;
    let server = server_for(&backend, "").await;
    let client = http();
    let url = server.url("/_sidewire/client.js");
    let first = client.get(&url).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let again = client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert_eq!(again.headers()["cache-control"], "public, max-age=300");
    assert!(again.bytes().await.unwrap().is_empty());

    let weak = client.get(&url).header("if-none-match", format!("\"stale\", W/{etag}")).send().await.unwrap();
    assert_eq!(weak.status(), 304, "If-None-Match uses the weak comparison");

    let stale = client.get(&url).header("if-none-match", "\"stale\"").send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.text().await.unwrap(), CLIENT_JS);
}

#[tokio::test]
async fn head_has_the_headers_and_no_body() {
    let backend = FakeBackend::echo().await;
    let server = server_for(&backend, "").await;
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    for client in [http(), h2] {
        let res = client.head(server.url("/_sidewire/client.js")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/javascript; charset=utf-8");
        assert_eq!(res.headers()["content-length"], CLIENT_JS.len().to_string().as_str());
        assert!(res.headers().contains_key("etag"));
        assert!(res.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn other_paths_under_the_prefix_are_404_json() {
    let backend = FakeBackend::echo().await;
    let server = server_for(&backend, "").await;
    let client = http();
    for path in ["/_sidewire", "/_sidewire/", "/_sidewire/other.js", "/_sidewire/client.js/x", "/_sidewire/client.jsx"]
    {
        let res = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
        assert!(body["message"].is_string(), "{path}");
    }
    let post = client.post(server.url("/_sidewire/client.js")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    assert!(backend.recorded().is_empty(), "nothing under the prefix reaches the backend");
    // Only the prefix itself is reserved, not every path that starts with its text.
    let res = client.get(server.url("/_sidewirex/client.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(backend.recorded().len(), 1);
}

#[tokio::test]
async fn a_custom_prefix_moves_client_js() {
    let backend = FakeBackend::echo().await;
    let server = server_for(&backend, "prefix: \"/rt\"").await;
    let client = http();
    let res = client.get(server.url("/rt/client.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), CLIENT_JS);
    let res = client.get(server.url("/_sidewire/client.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["uri"], "/_sidewire/client.js", "the old prefix is an ordinary path now");
}

#[test]
fn a_route_under_the_prefix_is_refused() {
    let yaml = "routes:\n  - { path: \"/_sidewire/ws\", transport: websocket }\n";
    let err = sidewire::Config::from_yaml(yaml, &|_| None).unwrap_err().to_string();
    assert!(err.contains("routes[0].path") && err.contains("reserved prefix"), "{err}");
}

// ---------------------------------------------------------------- browser

/// `n`, published as `{"n": n}` on `channel`; returns the id.
async fn publish_n(server: &TestServer, channel: &str, n: u64) -> String {
    publish_ok(&http(), server, channel, json!({ "n": n })).await
}

/// Asserts `got` are messages on `channel` with these ids and `{"n": …}` data, in order.
fn assert_messages(page: &Page, got: &[Value], channel: &str, want: &[(String, u64)]) {
    let got: Vec<(String, String, Value)> = got
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().unwrap_or("?").to_owned(),
                m["id"].as_str().unwrap_or("?").to_owned(),
                m["data"].clone(),
            )
        })
        .collect();
    let want: Vec<(String, String, Value)> =
        want.iter().map(|(id, n)| (channel.to_owned(), id.clone(), json!({ "n": n }))).collect();
    assert_eq!(got, want, "{}", page.failure("unexpected messages"));
}

fn assert_no_reset(page: &Page) {
    assert!(page.reports("reset").is_empty(), "{}", page.failure("resume reported a reset"));
    assert!(page.reports("error").is_empty(), "{}", page.failure("client reported an error"));
}

#[tokio::test]
async fn websocket_delivers_in_order_and_publishes() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, reports) = browser::app().await;
    let server = server_for(&backend, "").await;
    let mut page = Page::open(server.public, reports, "news", "&publish=1");
    page.until_subscribed("websocket", &["news"]).await;

    // The page publishes once subscribed; its own message comes back to it.
    let published = page.until("the page's publish reply", |r| r["kind"] == "published").await;
    let own = page.messages(1).await;
    assert_eq!(own[0]["id"], published["id"], "{}", page.failure("own message"));
    assert_eq!(own[0]["event"], "chat");
    assert_eq!(own[0]["data"], json!({ "from": "page" }));

    let mut want = Vec::new();
    for n in 1..=5 {
        want.push((publish_n(&server, "news", n).await, n));
    }
    let got = page.messages(5).await;
    assert_messages(&page, &got, "news", &want);
    assert_no_reset(&page);
}

#[tokio::test]
async fn websocket_resumes_every_message_after_a_cut() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, reports) = browser::app().await;
    let server = server_for(&backend, "").await;
    let relay = Relay::start(server.public).await;
    let mut page = Page::open(relay.addr, reports, "news", &format!("&report=http://{}", server.public));
    page.until_subscribed("websocket", &["news"]).await;
    let mut want = vec![(publish_n(&server, "news", 1).await, 1)];
    page.messages(1).await;

    // The network drops the WebSocket and refuses new ones while we publish.
    assert!(relay.cut() >= 1, "the WebSocket goes through the relay");
    page.until("the client to notice the cut", |r| r["kind"] == "state" && r["state"] == "connecting").await;
    for n in 2..=4 {
        want.push((publish_n(&server, "news", n).await, n));
    }
    relay.heal();
    page.until_subscribed("websocket", &["news"]).await;
    want.push((publish_n(&server, "news", 5).await, 5));

    page.messages(4).await;
    assert_messages(&page, &page.received(), "news", &want);
    assert_no_reset(&page);
    assert!(page.reports("state").iter().all(|s| s["transport"] == "websocket"), "{}", page.failure("left WebSocket"));
}

/// Realtime routes without a WebSocket: `/ws` passes through to the backend (404).
const NO_WEBSOCKET: &str =
    "routes:\n  - { path: \"/events\", transport: sse }\n  - { path: \"/poll\", transport: longpoll }";

#[tokio::test]
async fn falls_back_to_sse_when_websocket_is_missing() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, reports) = browser::app().await;
    let server = server_for(&backend, NO_WEBSOCKET).await;
    let mut page = Page::open(server.public, reports, "news,sports", "");
    page.until_subscribed("sse", &["news", "sports"]).await;

    // One stream carries both channels; the client tells them apart and keeps events.
    let admin = http();
    let chat = json!({ "channel": "news", "event": "chat", "data": { "text": "hi" } });
    let res: Value = admin.post(server.admin_url("/publish")).json(&chat).send().await.unwrap().json().await.unwrap();
    let id1 = res["ids"][0].as_str().unwrap().to_owned();
    let id2 = publish_ok(&admin, &server, "sports", json!("a plain string")).await;
    let id3 = publish_ok(&admin, &server, "news", json!([1, 2])).await;

    let got = page.messages(3).await;
    let summary: Vec<Value> = got.iter().map(|m| json!([m["channel"], m["id"], m["event"], m["data"]])).collect();
    let want = vec![
        json!(["news", id1, "chat", { "text": "hi" }]),
        json!(["sports", id2, null, "a plain string"]),
        json!(["news", id3, null, [1, 2]]),
    ];
    assert_eq!(summary, want, "{}", page.failure("SSE messages"));
    assert_no_reset(&page);
    assert!(backend.recorded().iter().any(|r| r.uri.path() == "/ws"), "the WebSocket was tried first");
}

#[tokio::test]
async fn sse_resumes_every_channel_after_a_cut() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, reports) = browser::app().await;
    let server = server_for(&backend, NO_WEBSOCKET).await;
    let relay = Relay::start(server.public).await;
    let mut page = Page::open(relay.addr, reports, "news,sports", &format!("&report=http://{}", server.public));
    page.until_subscribed("sse", &["news", "sports"]).await;
    let mut want = vec![("news", publish_n(&server, "news", 1).await, 1)];
    want.push(("sports", publish_n(&server, "sports", 2).await, 2));
    page.messages(2).await;

    assert!(relay.cut() >= 1, "the SSE stream goes through the relay");
    page.until("the client to notice the cut", |r| r["kind"] == "state" && r["state"] == "connecting").await;
    for (channel, n) in [("sports", 3), ("news", 4), ("news", 5)] {
        want.push((channel, publish_n(&server, channel, n).await, n));
    }
    relay.heal();
    page.until_subscribed("sse", &["news", "sports"]).await;
    want.push(("sports", publish_n(&server, "sports", 6).await, 6));

    page.messages(4).await;
    let got: Vec<Value> = page.received().iter().map(|m| json!([m["channel"], m["id"], m["data"]["n"]])).collect();
    let want: Vec<Value> = want.iter().map(|(c, id, n)| json!([c, id, n])).collect();
    assert_eq!(got, want, "{}", page.failure("SSE resume"));
    assert_no_reset(&page);
}

#[tokio::test]
async fn falls_back_to_long_poll_when_sse_is_missing_too() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, reports) = browser::app().await;
    let server = server_for(&backend, "routes:\n  - { path: \"/poll\", transport: longpoll }").await;
    let mut page = Page::open(server.public, reports, "news", "");
    page.until_subscribed("longpoll", &["news"]).await;
    let mut want = Vec::new();
    for n in 1..=3 {
        want.push((publish_n(&server, "news", n).await, n));
    }
    let got = page.messages(3).await;
    assert_messages(&page, &got, "news", &want);
    assert_no_reset(&page);
    let transports: Vec<Value> = page.reports("state").iter().map(|s| s["transport"].clone()).collect();
    assert_eq!(transports.first(), Some(&json!("websocket")), "{transports:?}");
    assert!(transports.contains(&json!("sse")), "SSE is tried before long-poll: {transports:?}");
}

#[tokio::test]
async fn an_authentication_close_stops_the_client() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, reports) = browser::app().await;
    // No `auth.anonymous`: a client without credentials is closed with 4001.
    let server = TestServer::start(&format!("backend: {{ url: \"{}\" }}\n", backend.url())).await;
    let mut page = Page::open(server.public, reports, "news", "");
    let error = page.until("the client's error", |r| r["kind"] == "error").await;
    assert_eq!(error["code"], "auth_required", "{}", page.failure("error code"));
    assert_eq!(error["transport"], "websocket");
    page.until("state closed", |r| r["kind"] == "state" && r["state"] == "closed").await;
}
