//! `GET {prefix}/client.js` and `{prefix}/client.d.ts` (SPEC §8): the HTTP contract
//! (headers, ETag, HEAD, 404s under the prefix) and the client itself, run in headless
//! Chromium against a real sidewire: WebSocket delivery and publish, resume after a cut,
//! the SSE and long-poll fallbacks, and rooms (user and connection, presence, echo, the
//! sender of a message) with two browsers signed in as two users.
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
const CLIENT_DTS: &str = include_str!("../src/assets/client.d.ts");

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
async fn client_d_ts_is_served_like_client_js() {
    let backend = FakeBackend::echo().await;
    let server = server_for(&backend, "").await;
    let client = http();
    let url = server.url("/_sidewire/client.d.ts");
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/typescript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=300");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10, "strong etag, got {etag}");
    assert_eq!(res.text().await.unwrap(), CLIENT_DTS);
    let js = client.head(server.url("/_sidewire/client.js")).send().await.unwrap();
    assert_ne!(js.headers()["etag"], etag.as_str(), "each file has its own tag");

    let again = client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert!(again.bytes().await.unwrap().is_empty());

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/typescript; charset=utf-8");
    assert_eq!(head.headers()["content-length"], CLIENT_DTS.len().to_string().as_str());
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());

    let post = client.post(&url).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert!(backend.recorded().is_empty(), "client.d.ts must not reach the backend");
}

#[tokio::test]
async fn other_paths_under_the_prefix_are_404_json() {
    let backend = FakeBackend::echo().await;
    let server = server_for(&backend, "").await;
    let client = http();
    for path in [
        "/_sidewire",
        "/_sidewire/",
        "/_sidewire/other.js",
        "/_sidewire/client.js/x",
        "/_sidewire/client.jsx",
        "/_sidewire/client.ts",
        "/_sidewire/client.d.ts/x",
    ] {
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

/// Over TLS the page is served on HTTP/2, and the client's WebSocket opens as an extended
/// CONNECT stream on that same connection (RFC 8441): one TLS connection in all.
#[tokio::test]
async fn websocket_shares_the_pages_http2_connection() {
    use support::tls::{Cert, CertFiles};
    let _one = ONE_BROWSER.lock().await;
    support::install_crypto();
    let (backend, reports) = browser::app().await;
    let cert = Cert::new("sidewire test");
    let files = CertFiles::new(&cert);
    let server = server_for(&backend, &files.yaml("1h")).await;
    let url = format!("https://localhost:{}/?channels=news", server.tls.unwrap().port());
    let mut page = Page::open_url(&url, reports);
    page.until_subscribed("websocket", &["news"]).await;
    let id = publish_n(&server, "news", 1).await;
    let got = page.messages(1).await;
    assert_eq!(got[0]["id"], id.as_str(), "{}", page.failure("message over HTTP/2"));
    let text = server.handle.metrics().encode();
    let open = text.lines().find_map(|l| l.strip_prefix("sidewire_open_connections{listener=\"https\"} "));
    let h2 = text.lines().find_map(|l| l.strip_prefix("sidewire_websocket_handshakes_total{protocol=\"h2\"} "));
    assert_eq!((open, h2), (Some("1"), Some("1")), "{text}\n{}", page.failure("a WebSocket on the page's connection"));
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

// ---------------------------------------------------------------- rooms

/// Signed-in users (the fake app's auth, [`browser::app_for`]) on presence channels
/// `room:*` where clients publish, each with a control channel `ctl:<user>`.
fn rooms_yaml(backend: &FakeBackend, extra: &str) -> String {
    format!(
        "backend: {{ url: \"{}\" }}\n\
         channels:\n  - {{ match: \"room:*\", presence: true, client_publish: broadcast }}\n  - {{ match: \"ctl:*\" }}\n\
         {extra}\n",
        backend.url()
    )
}

/// A member as the client lists it: `info` is what the app's auth answered.
fn member(user: &str, connections: u32) -> Value {
    json!({ "user": user, "connections": connections, "info": { "name": browser::display_name(user) } })
}

/// Has `user`'s page run `command` (published on its control channel).
async fn command(server: &TestServer, user: &str, command: Value) {
    publish_ok(&http(), server, &format!("ctl:{user}"), command).await;
}

fn is_presence(r: &Value, change: &str, user: Option<&str>) -> bool {
    r["kind"] == "presence"
        && r["channel"] == "room:1"
        && r["change"]["type"] == change
        && user.is_none_or(|u| r["change"]["user"] == u)
}

/// Waits for the page's presence callback to report `change` (of `user`), then checks
/// the list it was given and what `client.members()` said at that moment.
async fn until_presence(page: &mut Page, change: &str, user: Option<&str>, want: &[Value]) -> Value {
    let what = format!("presence {change} {user:?}");
    let report = page.until_seen(&what, |r| is_presence(r, change, user)).await;
    assert_eq!(report["members"], json!(want), "{}", page.failure(&what));
    assert_eq!(report["tracked"], json!(want), "{}", page.failure("client.members()"));
    report
}

/// Two browsers signed in as alice (echo off) and bob on one presence channel: who each
/// client is, the member list with display names through join and leave, a presence
/// query, messages carrying their sender, and alice not getting her own.
#[tokio::test]
async fn rooms_over_websocket_user_presence_echo_and_sender() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, mut queues) = browser::app_for(2).await;
    let server = TestServer::start(&rooms_yaml(&backend, "")).await;
    let (alice_q, bob_q) = (queues.remove(0), queues.remove(0));

    let mut alice = Page::room(server.public, alice_q, 0, "alice", "room:1", "&echo=0");
    alice.until_subscribed("websocket", &["room:1", "ctl:alice"]).await;
    let created = alice.until_seen("created", |r| r["kind"] == "created").await;
    assert_eq!((&created["me"], &created["conn"]), (&Value::Null, &Value::Null), "null before the welcome");
    let welcome = alice.until_seen("welcome", |r| r["kind"] == "welcome").await;
    assert_eq!(welcome["user"], "alice", "{}", alice.failure("welcome"));
    let alice_conn = welcome["connection"].as_str().unwrap_or_default().to_owned();
    assert!(!alice_conn.is_empty(), "{}", alice.failure("connection id"));
    assert_eq!((&welcome["me"], &welcome["conn"]), (&json!("alice"), &json!(alice_conn)), "client.user/.connection");
    until_presence(&mut alice, "sync", None, &[member("alice", 1)]).await;

    let mut bob = Page::room(server.public, bob_q, 1, "bob", "room:1", "");
    bob.until_subscribed("websocket", &["room:1", "ctl:bob"]).await;
    let welcome = bob.until_seen("welcome", |r| r["kind"] == "welcome").await;
    assert_eq!(welcome["me"], "bob");
    assert!(welcome["conn"].is_string() && welcome["conn"] != json!(alice_conn), "{welcome}");
    let both = [member("alice", 1), member("bob", 1)];
    until_presence(&mut bob, "sync", None, &both).await;
    let joined = until_presence(&mut alice, "join", Some("bob"), &both).await;
    assert_eq!(joined["change"]["info"], json!({ "name": "Bob" }));
    let join = alice.until_seen("alice's join event", |r| r["kind"] == "join" && r["user"] == "bob").await;
    assert_eq!(join["info"], json!({ "name": "Bob" }), "the join event carries info");

    // alice publishes: bob gets it with its sender; alice (echo: false) does not.
    command(&server, "alice", json!({ "op": "publish", "event": "chat", "data": { "text": "hi bob" } })).await;
    let from_alice = alice.until("alice's publish reply", |r| r["kind"] == "published").await;
    let got = bob.messages(1).await;
    assert_eq!(got[0]["id"], from_alice["id"], "{}", bob.failure("alice's message"));
    assert_eq!((&got[0]["user"], &got[0]["event"]), (&json!("alice"), &json!("chat")));
    assert_eq!(got[0]["data"], json!({ "text": "hi bob" }));

    // bob answers after alice's message was published: per-channel order means alice's
    // own would reach her before this one, so her first message being bob's shows echo off.
    command(&server, "bob", json!({ "op": "publish", "data": "hi alice" })).await;
    let from_bob = bob.until("bob's publish reply", |r| r["kind"] == "published").await;
    let got = alice.messages(1).await;
    assert_eq!((&got[0]["id"], &got[0]["user"]), (&from_bob["id"], &json!("bob")), "{}", alice.failure("echo"));
    let own = bob.messages(1).await;
    assert_eq!((&own[0]["id"], &own[0]["user"]), (&from_bob["id"], &json!("bob")), "echo is on by default");

    // A backend publish has no sender.
    let id = publish_ok(&http(), &server, "room:1", json!({ "n": 1 })).await;
    for page in [&mut alice, &mut bob] {
        let got = page.messages(1).await;
        assert_eq!(got[0]["id"], id.as_str(), "{}", page.failure("backend message"));
        assert!(got[0].get("user").is_none(), "{}", page.failure("a backend publish has no user"));
    }
    assert!(alice.received().iter().all(|m| m["user"] != "alice"), "{}", alice.failure("echo: false"));

    command(&server, "alice", json!({ "op": "presence" })).await;
    let reply = alice.until("presence reply", |r| r["kind"] == "presence_reply").await;
    assert_eq!(reply["users"], json!(both), "{}", alice.failure("presence()"));

    // bob's browser goes away: alice's list follows.
    drop(bob);
    until_presence(&mut alice, "leave", Some("bob"), &[member("alice", 1)]).await;
    alice.until_seen("alice's leave event", |r| r["kind"] == "leave" && r["user"] == "bob").await;
    assert!(alice.reports("error").is_empty(), "{}", alice.failure("client error"));
}

/// After a cut the client reconnects as the same user on a new connection (`connection`
/// is null meanwhile) and subscribes again with `echo: false`.
#[tokio::test]
async fn rooms_echo_and_identity_survive_a_reconnect() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, mut queues) = browser::app_for(1).await;
    let server = TestServer::start(&rooms_yaml(&backend, "")).await;
    let relay = Relay::start(server.public).await;
    let extra = format!("&echo=0&report=http://{}", server.public);
    let mut alice = Page::room(relay.addr, queues.remove(0), 0, "alice", "room:1", &extra);
    alice.until_subscribed("websocket", &["room:1", "ctl:alice"]).await;
    let first = alice.until_seen("welcome", |r| r["kind"] == "welcome").await;

    assert!(relay.cut() >= 1, "the WebSocket goes through the relay");
    let down =
        alice.until("the client to notice the cut", |r| r["kind"] == "state" && r["state"] == "connecting").await;
    assert_eq!((&down["me"], &down["conn"]), (&json!("alice"), &Value::Null), "user kept, no connection");
    relay.heal();
    let again = alice.until("a second welcome", |r| r["kind"] == "welcome").await;
    assert_eq!(again["user"], "alice");
    assert!(again["connection"].is_string() && again["connection"] != first["connection"], "{again} after {first}");
    assert_eq!(again["conn"], again["connection"], "client.connection is set when welcome fires");
    for channel in ["room:1", "ctl:alice"] {
        alice
            .until(&format!("subscribed to {channel} again"), |r| r["kind"] == "subscribed" && r["channel"] == channel)
            .await;
    }

    command(&server, "alice", json!({ "op": "publish", "data": "mine" })).await;
    alice.until("alice's publish reply", |r| r["kind"] == "published").await;
    let id = publish_ok(&http(), &server, "room:1", json!({ "n": 1 })).await;
    let got = alice.messages(1).await;
    assert_eq!(got[0]["id"], id.as_str(), "{}", alice.failure("echo: false after the reconnect"));
    assert!(alice.reports("error").is_empty() && alice.reports("reset").is_empty(), "{}", alice.failure("errors"));
}

/// On the SSE fallback there is no `welcome` and no snapshot: the member list comes
/// from the stream's `join`/`leave` events, and `presence()` answers from it.
#[tokio::test]
async fn rooms_over_sse_track_presence_from_join_and_leave() {
    let _one = ONE_BROWSER.lock().await;
    let (backend, mut queues) = browser::app_for(2).await;
    let server = TestServer::start(&rooms_yaml(&backend, NO_WEBSOCKET)).await;
    let (alice_q, bob_q) = (queues.remove(0), queues.remove(0));

    let mut alice = Page::room(server.public, alice_q, 0, "alice", "room:1", "");
    // One stream, its channels in sorted order.
    alice.until_subscribed("sse", &["ctl:alice", "room:1"]).await;
    until_presence(&mut alice, "join", Some("alice"), &[member("alice", 1)]).await;

    let mut bob = Page::room(server.public, bob_q, 1, "bob", "room:1", "");
    bob.until_subscribed("sse", &["ctl:bob", "room:1"]).await;
    // bob only knows who joins after his stream opened (no snapshot on SSE).
    until_presence(&mut bob, "join", Some("bob"), &[member("bob", 1)]).await;
    let both = [member("alice", 1), member("bob", 1)];
    until_presence(&mut alice, "join", Some("bob"), &both).await;

    command(&server, "alice", json!({ "op": "presence" })).await;
    let reply = alice.until("presence reply", |r| r["kind"] == "presence_reply").await;
    assert_eq!(reply["users"], json!(both), "{}", alice.failure("presence() over SSE"));

    drop(bob);
    until_presence(&mut alice, "leave", Some("bob"), &[member("alice", 1)]).await;
    assert!(alice.reports("welcome").is_empty(), "no welcome over SSE");
    assert!(alice.seen.iter().all(|r| r["me"].is_null() && r["conn"].is_null()), "{}", alice.failure("user over SSE"));
    assert!(alice.reports("error").is_empty(), "{}", alice.failure("client error"));
}
