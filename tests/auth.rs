//! Authentication through the backend (SPEC §7 auth, §4 close codes, §5 errors, §9
//! backend down): where the credential comes from, what the backend is asked, how its
//! answers map to close codes and statuses, the cache (hits, refusals, single-flight,
//! TTL re-checks), and that no credential ever reaches the logs of the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::backend::{Backend, Verdict, dead_addr, until, ws_at, ws_with};
use support::realtime::{Refusal, eventually, metric, metrics, within};
use support::sse::{SseReader, get_json, h2c, publish_one};
use support::ws::WsClient;
use support::{TestServer, http};
use tokio_tungstenite::tungstenite::Message;

/// `auth_extra` and `backend_extra` go inside the `auth:` and `backend:` maps.
fn yaml(backend: &str, auth_extra: &str, backend_extra: &str) -> String {
    format!(
        r#"
backend: {{ url: "{backend}"{backend_extra} }}
auth: {{ token_cookie: session{auth_extra} }}
routes:
  - {{ path: "/ws", transport: websocket }}
  - {{ path: "/ws/me", transport: websocket, channels: ["user:{{user}}"] }}
  - {{ path: "/events", transport: sse }}
  - {{ path: "/rooms/{{room}}", transport: sse, channels: ["room:{{room}}"] }}
  - {{ path: "/notifications", transport: sse, channels: ["user:{{user}}"] }}
  - {{ path: "/poll", transport: longpoll }}
channels:
  - {{ match: "room:*", client_publish: broadcast }}
  - {{ match: "user:*" }}
  - {{ match: "public:*", public: true }}
"#
    )
}

async fn start(backend: &Backend, auth_extra: &str) -> TestServer {
    TestServer::start(&yaml(&backend.url(), auth_extra, "")).await
}

/// Opens a WebSocket and reads its first frame: `Ok(welcome)`, or `Err((code, reason))`
/// when the server closed it instead.
async fn ws_outcome(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Result<Value, (u16, String)> {
    let mut ws = ws_with(server, path, headers).await.unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    match within("the first websocket frame", futures_util::StreamExt::next(&mut ws)).await {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "welcome", "{v}");
            Ok(v)
        }
        Some(Ok(Message::Close(Some(f)))) => Err((f.code.into(), f.reason.as_str().to_owned())),
        other => panic!("expected welcome or a close frame, got {other:?}"),
    }
}

/// The user a WebSocket with these credentials is welcomed as.
async fn ws_user(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Value {
    ws_outcome(server, path, headers).await.unwrap_or_else(|c| panic!("closed {c:?}"))["user"].clone()
}

/// Status and JSON error of a refused SSE or long-poll request.
async fn refused(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = get_json(&http(), &server.url(path), headers).await;
    assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
    (status.as_u16(), body)
}

async fn sse_open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> SseReader {
    let mut sse = SseReader::open(&http(), &server.url(path), headers).await;
    assert_eq!(sse.event().await.retry, Some(2000));
    sse
}

// ---------------------------------------------------------------- credentials

#[tokio::test]
async fn token_sources_in_order_query_header_cookie() {
    let backend = Backend::start().await;
    for (token, user) in
        [("q-tok", "from-query"), ("h-tok", "from-header"), ("b-tok", "from-bare"), ("c-tok", "from-cookie")]
    {
        backend.allow(token, user, &["room:*"]);
    }
    let server = start(&backend, "").await;
    let all = [("authorization", "Bearer h-tok"), ("cookie", "theme=dark; session=c-tok")];

    assert_eq!(ws_user(&server, "/ws?token=q-tok", &all).await, "from-query");
    assert_eq!(backend.last_auth().body["token"], "q-tok");
    assert_eq!(ws_user(&server, "/ws", &all).await, "from-header");
    assert_eq!(backend.last_auth().body["token"], "h-tok");
    let bare = [("authorization", "b-tok"), ("cookie", "session=c-tok")];
    assert_eq!(ws_user(&server, "/ws", &bare).await, "from-bare");
    assert_eq!(backend.last_auth().body["token"], "b-tok");
    assert_eq!(ws_user(&server, "/ws", &[("cookie", "theme=dark; session=c-tok")]).await, "from-cookie");
    assert_eq!(backend.last_auth().body["token"], "c-tok");
    // An empty `Bearer` is no credential: the cookie is used.
    let empty = [("authorization", "Bearer"), ("cookie", "session=c-tok")];
    assert_eq!(ws_user(&server, "/ws", &empty).await, "from-cookie");

    let tokens: Vec<Value> = backend.auth_calls().iter().map(|c| c.body["token"].clone()).collect();
    assert_eq!(tokens, ["q-tok", "h-tok", "b-tok", "c-tok"], "one call per credential, each the winning source");

    // Same order on SSE and long-poll; only the winning source is a token the backend knows.
    backend.allow("sse-q", "sse", &["room:*"]);
    let losers = [("authorization", "Bearer unknown-h"), ("cookie", "session=unknown-c")];
    sse_open(&server, "/events?channel=room:1&token=sse-q", &losers).await;
    assert_eq!(backend.last_auth().body["token"], "sse-q");
    backend.allow("poll-h", "poll", &["room:*"]);
    let req = http().get(server.url("/poll?channel=room:1&timeout=0")).header("cookie", "session=unknown-c");
    assert_eq!(req.header("authorization", "poll-h").send().await.unwrap().status(), 200);
    assert_eq!(backend.last_auth().body["token"], "poll-h");
    server.stop().await;
}

#[tokio::test]
async fn no_credentials_is_refused_without_asking_the_backend() {
    let backend = Backend::start().await;
    let server = start(&backend, "").await;
    let not_ours = [("cookie", "theme=dark")];
    for headers in [&[][..], &not_ours[..]] {
        let closed = ws_outcome(&server, "/ws", headers).await.unwrap_err();
        assert_eq!(closed, (4001, "Authentication required".to_owned()));
        for path in ["/events?channel=room:1", "/poll?channel=room:1&timeout=0", "/notifications"] {
            let (status, body) = refused(&server, path, headers).await;
            assert_eq!(status, 401, "{path}: {body}");
        }
    }
    assert_eq!(backend.auth_count(), 0, "no credential, no backend call");
    server.stop().await;
}

#[tokio::test]
async fn anonymous_clients_use_public_channels_only() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["room:*"]);
    let server = start(&backend, ", anonymous: true").await;

    let (mut anon, welcome) = WsClient::open(&server, "/ws").await;
    assert_eq!(welcome["user"], Value::Null);
    anon.subscribe("public:news", None).await;
    anon.send_json(json!({ "type": "subscribe", "channel": "room:1", "ref": 1 })).await;
    assert_eq!(anon.expect_error("forbidden").await["ref"], 1);
    sse_open(&server, "/events?channel=public:news", &[]).await;
    assert_eq!(refused(&server, "/events?channel=room:1", &[]).await.0, 403);
    assert_eq!(refused(&server, "/poll?channel=room:1&timeout=0", &[]).await.0, 403);
    // `{user}` needs a user, and an anonymous client has none.
    assert_eq!(refused(&server, "/notifications", &[]).await.0, 401);
    assert_eq!(backend.auth_count(), 0);

    // A signed-in user may read what anonymous clients may, beside its own patterns.
    let (mut alice, welcome) = WsClient::open(&server, "/ws?token=tok-a").await;
    assert_eq!(welcome["user"], "alice");
    alice.subscribe("public:news", None).await;
    alice.subscribe("room:1", None).await;
    // A credential the backend refuses is not downgraded to anonymous.
    assert_eq!(ws_outcome(&server, "/ws?token=bogus", &[]).await.unwrap_err().0, 4002);
    server.stop().await;
}

// ---------------------------------------------------------------- the backend call

#[tokio::test]
async fn backend_call_follows_the_contract() {
    let backend = Backend::start().await;
    for t in ["tok-sse", "tok-ws", "tok-poll", "tok-room", "tok-me"] {
        backend.allow(t, "alice", &["room:*", "user:alice"]);
    }
    let server = start(&backend, "").await;
    let headers =
        [("cookie", "theme=dark; session=other"), ("authorization", "Bearer hdr"), ("x-forwarded-for", "203.0.113.9")];
    sse_open(&server, "/events?channel=room:1&channel=room:2&token=tok-sse", &headers).await;
    let call = backend.last_auth();
    assert_eq!(
        call.body,
        json!({ "token": "tok-sse", "transport": "sse", "path": "/events", "channels": ["room:1", "room:2"] })
    );
    assert_eq!(call.headers["cookie"], "theme=dark; session=other");
    assert_eq!(call.headers["authorization"], "Bearer hdr");
    assert_eq!(call.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(call.headers["content-type"], "application/json");
    let rec = backend.fake.recorded().pop().unwrap();
    assert_eq!((rec.method.as_str(), rec.uri.path()), ("POST", "/realtime/auth"));

    ws_user(&server, "/ws?token=tok-ws", &[]).await;
    let call = backend.last_auth();
    assert_eq!(call.body, json!({ "token": "tok-ws", "transport": "websocket", "path": "/ws", "channels": [] }));
    assert_eq!(call.headers["x-forwarded-for"], "127.0.0.1");
    assert!(call.headers.get("cookie").is_none() && call.headers.get("authorization").is_none());

    let res = http().get(server.url("/poll?channel=room:1&timeout=0&token=tok-poll")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body = backend.last_auth().body;
    assert_eq!(body, json!({ "token": "tok-poll", "transport": "longpoll", "path": "/poll", "channels": ["room:1"] }));

    // A route's own channels are the requested ones; `{user}` is not known yet.
    sse_open(&server, "/rooms/7?token=tok-room", &[]).await;
    assert_eq!(backend.last_auth().body["channels"], json!(["room:7"]));
    sse_open(&server, "/notifications?token=tok-me", &[]).await;
    assert_eq!(backend.last_auth().body["channels"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn http2_cookie_crumbs_reach_the_backend_joined() {
    let backend = Backend::start().await;
    backend.allow("tok-h2", "hana", &["room:*"]);
    let server = start(&backend, "").await;
    // One `cookie` field per crumb, as browsers send them over HTTP/2.
    let url = server.url("/events?channel=room:1");
    let sse = SseReader::open(&h2c(), &url, &[("cookie", "theme=dark"), ("cookie", "session=tok-h2")]).await;
    assert_eq!(sse.response().version(), http::Version::HTTP_2);
    let call = backend.last_auth();
    assert_eq!(call.body["token"], "tok-h2");
    let cookies: Vec<_> = call.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["theme=dark; session=tok-h2"]);
    server.stop().await;
}

#[tokio::test]
async fn channel_patterns_from_the_backend_limit_subscriptions() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["room:1", "user:alice"]);
    let server = start(&backend, "").await;
    let (mut ws, welcome) = WsClient::open(&server, "/ws?token=tok-a").await;
    assert_eq!(welcome["user"], "alice");
    ws.subscribe("room:1", None).await;
    ws.send_json(json!({ "type": "subscribe", "channel": "room:2" })).await;
    ws.expect_error("forbidden").await;
    ws.send_json(json!({ "type": "publish", "channel": "room:2", "data": 1 })).await;
    ws.expect_error("forbidden").await;

    sse_open(&server, "/events?channel=room:1&token=tok-a", &[]).await;
    assert_eq!(refused(&server, "/events?channel=room:2&token=tok-a", &[]).await.0, 403);
    assert_eq!(refused(&server, "/events?channel=room:1&channel=room:2&token=tok-a", &[]).await.0, 403);
    assert_eq!(refused(&server, "/poll?channel=user:bob&timeout=0&token=tok-a", &[]).await.0, 403);
    server.stop().await;
}

#[tokio::test]
async fn user_templates_resolve_to_the_identity() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["user:alice"]);
    let server = start(&backend, "").await;
    let mut sse = sse_open(&server, "/notifications?token=tok-a", &[]).await;
    let (mut ws, _) = WsClient::open(&server, "/ws/me?token=tok-a").await;
    assert_eq!(ws.expect("subscribed").await["channel"], "user:alice");

    publish_one(&server, "user:bob", json!("for bob")).await;
    publish_one(&server, "user:alice", json!("for alice")).await;
    assert_eq!(sse.event().await.data.as_deref(), Some("for alice"));
    let msg = ws.expect("message").await;
    assert_eq!((&msg["channel"], &msg["data"]), (&json!("user:alice"), &json!("for alice")));
    server.stop().await;
}

#[tokio::test]
async fn backend_answers_map_to_close_codes_and_statuses() {
    let backend = Backend::start().await;
    backend.set("t401", Verdict::Status(401));
    backend.set("t403", Verdict::Status(403));
    backend.set("t500", Verdict::Status(500));
    backend.set("t302", Verdict::Status(302));
    backend.set("tbad", Verdict::Allow(json!({ "no_user": true })));
    let server = start(&backend, "").await;
    let cases = [
        ("t401", 4002, "Invalid token", 401),
        ("t403", 4003, "Forbidden", 403),
        ("t500", 1011, "", 503),
        ("t302", 1011, "", 503),
        ("tbad", 1011, "", 503),
    ];
    for (token, code, reason, status) in cases {
        let (got, why) = ws_outcome(&server, &format!("/ws?token={token}"), &[]).await.unwrap_err();
        assert_eq!(got, code, "{token}");
        if !reason.is_empty() {
            assert_eq!(why, reason);
        }
        let (got, body) = refused(&server, &format!("/events?channel=room:1&token={token}"), &[]).await;
        assert_eq!(got, status, "{token}: {body}");
        let (got, _) = refused(&server, &format!("/poll?channel=room:1&timeout=0&token={token}"), &[]).await;
        assert_eq!(got, status, "{token}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_absurd_ttl_is_capped_not_a_crash() {
    let backend = Backend::start().await;
    backend.set("tok-inf", Verdict::Allow(json!({ "user": "ines", "channels": ["room:*"], "ttl": u64::MAX })));
    let server = start(&backend, "").await;
    assert_eq!(ws_user(&server, "/ws?token=tok-inf", &[]).await, "ines");
    assert_eq!(ws_user(&server, "/ws?token=tok-inf", &[]).await, "ines");
    sse_open(&server, "/events?channel=room:1&token=tok-inf", &[]).await;
    assert_eq!(backend.auth_count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn backend_that_never_answers_is_unavailable() {
    let backend = Backend::start().await;
    backend.set("slow", Verdict::Hang);
    let server = TestServer::start(&yaml(&backend.url(), "", ", timeout: 300ms")).await;
    assert_eq!(ws_outcome(&server, "/ws?token=slow", &[]).await.unwrap_err().0, 1011);
    assert_eq!(refused(&server, "/events?channel=room:1&token=slow", &[]).await.0, 503);
    assert_eq!(refused(&server, "/poll?channel=room:1&token=slow", &[]).await.0, 503);
    server.stop().await;
}

// ---------------------------------------------------------------- the cache

#[tokio::test]
async fn answers_are_cached_per_credential() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["room:*"]);
    backend.allow("tok-b", "bob", &["room:*"]);
    let server = start(&backend, "").await;
    assert_eq!(ws_user(&server, "/ws?token=tok-a", &[]).await, "alice");
    assert_eq!(ws_user(&server, "/ws?token=tok-a", &[]).await, "alice");
    sse_open(&server, "/events?channel=room:1&token=tok-a", &[]).await;
    assert_eq!(backend.auth_count(), 1, "a cached credential does not ask again");
    assert_eq!(ws_user(&server, "/ws?token=tok-b", &[]).await, "bob");
    assert_eq!(backend.auth_count(), 2, "another credential is asked about");
    assert_eq!(ws_user(&server, "/ws", &[("cookie", "session=tok-b")]).await, "bob");
    assert_eq!(ws_user(&server, "/ws", &[("cookie", "session=tok-b")]).await, "bob");
    assert_eq!(backend.auth_count(), 3, "one call per credential source too");
    server.stop().await;
}

#[tokio::test]
async fn refusals_are_cached_for_negative_ttl_and_failures_not_at_all() {
    let backend = Backend::start().await;
    backend.set("tok-x", Verdict::Status(401));
    backend.set("tok-f", Verdict::Status(500));
    let server = start(&backend, ", negative_ttl: 1s").await;
    assert_eq!(ws_outcome(&server, "/ws?token=tok-x", &[]).await.unwrap_err().0, 4002);
    assert_eq!(ws_outcome(&server, "/ws?token=tok-x", &[]).await.unwrap_err().0, 4002);
    assert_eq!(refused(&server, "/events?channel=room:1&token=tok-x", &[]).await.0, 401);
    assert_eq!(backend.auth_count(), 1, "a refusal is cached");

    // Allowed now: the refusal is served from the cache until `negative_ttl` has passed.
    backend.allow("tok-x", "xavier", &["room:*"]);
    eventually("the refusal to expire", || async { ws_outcome(&server, "/ws?token=tok-x", &[]).await.ok() }).await;
    assert_eq!(backend.auth_count(), 2);

    // A backend failure is not an answer: the next connection asks again.
    assert_eq!(ws_outcome(&server, "/ws?token=tok-f", &[]).await.unwrap_err().0, 1011);
    backend.allow("tok-f", "fred", &["room:*"]);
    assert_eq!(ws_user(&server, "/ws?token=tok-f", &[]).await, "fred");
    assert_eq!(backend.auth_count(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_with_one_credential_share_one_backend_call() {
    const CLIENTS: usize = 200;
    let backend = Backend::start().await;
    backend.allow("crowd-cookie", "crowd", &["room:*"]);
    let server = start(&backend, "").await;
    // The answer waits until every client is connected and waiting for it.
    let gate = backend.hold_auth();
    let client = http();
    let url = server.url("/events?channel=room:1");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let req = client.get(&url).header("cookie", "session=crowd-cookie");
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    until("the first auth call", || backend.auth_count() >= 1).await;
    let open = r#"sidewire_open_connections{listener="http"}"#;
    eventually("every client connected", || async {
        (metric(&metrics(&server).await, open) >= CLIENTS as f64).then_some(())
    })
    .await;
    gate.open();
    let mut streams = Vec::new();
    for t in tasks {
        let res = within("an SSE response", t).await.unwrap();
        assert_eq!(res.status(), 200);
        streams.push(res);
    }
    assert_eq!(backend.auth_count(), 1, "{CLIENTS} connects with one cookie cost one backend call");
    drop(streams);
    server.stop().await;
}

#[tokio::test]
async fn expired_answers_are_checked_again_and_revoked_connections_closed() {
    let backend = Backend::start().await;
    let short = json!({ "user": "tim", "channels": ["room:*"], "ttl": 1 });
    backend.set("tok-t", Verdict::Allow(short));
    let server = start(&backend, "").await;
    let (mut ws, _) = WsClient::open(&server, "/ws?token=tok-t").await;
    ws.subscribe("room:1", None).await;
    let mut sse = sse_open(&server, "/events?channel=room:1&token=tok-t", &[]).await;
    backend.set("tok-t", Verdict::Status(401));

    assert_eq!(ws.expect_close().await, (4002, "Invalid token".to_owned()));
    assert!(sse.rest().await.iter().all(|b| !b.contains("data:")), "the SSE stream ends");
    assert!(backend.auth_count() >= 2);
    let revoked = metric(&metrics(&server).await, r#"sidewire_evictions_total{reason="auth_revoked"}"#);
    assert_eq!(revoked, 2.0, "the WebSocket and the SSE stream");
    server.stop().await;
}

#[tokio::test]
async fn a_recheck_that_narrows_the_channels_closes_4003() {
    let backend = Backend::start().await;
    backend.set("tok-n", Verdict::Allow(json!({ "user": "nina", "channels": ["room:*"], "ttl": 1 })));
    let server = start(&backend, "").await;
    let (mut ws, _) = WsClient::open(&server, "/ws?token=tok-n").await;
    ws.subscribe("room:1", None).await;
    let mut sse = sse_open(&server, "/events?channel=room:1&token=tok-n", &[]).await;
    backend.set("tok-n", Verdict::Allow(json!({ "user": "nina", "channels": ["room:2"], "ttl": 1 })));
    assert_eq!(ws.expect_close().await, (4003, "Forbidden".to_owned()));
    assert!(sse.rest().await.iter().all(|b| !b.contains("data:")), "the SSE stream ends");
    let revoked = metric(&metrics(&server).await, r#"sidewire_evictions_total{reason="auth_revoked"}"#);
    assert_eq!(revoked, 2.0, "the WebSocket and the SSE stream");
    server.stop().await;
}

#[tokio::test]
async fn connections_the_backend_still_accepts_outlive_the_ttl() {
    let backend = Backend::start().await;
    let short = json!({ "user": "kim", "channels": ["room:*"], "ttl": 1 });
    backend.set("tok-k", Verdict::Allow(short));
    let server = start(&backend, "").await;
    let (mut ws, _) = WsClient::open(&server, "/ws?token=tok-k").await;
    ws.subscribe("room:1", None).await;
    let mut sse = sse_open(&server, "/events?channel=room:1&token=tok-k", &[]).await;
    // Two rounds of re-checks at least.
    until("two re-checks", || backend.auth_count() >= 3).await;
    ws.assert_quiet().await;
    publish_one(&server, "room:1", json!("still here")).await;
    assert_eq!(ws.expect("message").await["data"], "still here");
    assert_eq!(sse.event().await.data.as_deref(), Some("still here"));
    server.stop().await;
}

#[tokio::test]
async fn ttl_zero_is_rechecked_without_a_busy_loop() {
    let backend = Backend::start().await;
    backend.set("tok-z", Verdict::Allow(json!({ "user": "zed", "channels": ["room:*"], "ttl": 0 })));
    let server = start(&backend, "").await;
    let (mut ws, _) = WsClient::open(&server, "/ws?token=tok-z").await;
    until("a re-check", || backend.auth_count() >= 2).await;
    // A busy loop would have asked hundreds of times by now; re-checks are spaced.
    assert!(backend.auth_count() <= 3, "{} auth calls", backend.auth_count());
    ws.assert_quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn backend_down_cached_credentials_still_connect() {
    let backend = Backend::start().await;
    backend.allow("tok-a", "alice", &["room:*"]);
    backend.allow("tok-b", "bob", &["room:*"]);
    backend.set("tok-s", Verdict::Allow(json!({ "user": "sue", "channels": ["room:*"], "ttl": 1 })));
    let server = start(&backend, "").await;
    let (mut open, _) = WsClient::open(&server, "/ws?token=tok-a").await;
    open.subscribe("room:1", None).await;
    let (mut short, _) = WsClient::open(&server, "/ws?token=tok-s").await;
    short.subscribe("room:1", None).await;

    // The backend goes away (a fresh pool, pointed where nothing listens).
    let down = format!("http://{}", dead_addr().await);
    server.handle.reload(support::config(&yaml(&down, "", ""))).await.unwrap();
    let unreachable = r#"sidewire_upstream_errors_total{reason="connect"}"#;
    let before = metric(&metrics(&server).await, unreachable);

    assert_eq!(ws_user(&server, "/ws?token=tok-a", &[]).await, "alice");
    sse_open(&server, "/events?channel=room:1&token=tok-a", &[]).await;
    assert_eq!(ws_outcome(&server, "/ws?token=tok-b", &[]).await.unwrap_err().0, 1011);
    assert_eq!(refused(&server, "/events?channel=room:1&token=tok-b", &[]).await.0, 503);
    // `short` outlives its TTL: a re-check that cannot reach the backend keeps it.
    // Two for bob's attempts above, one (at least) for a re-check of `short`.
    eventually("a re-check against the dead backend", || async {
        (metric(&metrics(&server).await, unreachable) >= before + 3.0).then_some(())
    })
    .await;
    publish_one(&server, "room:1", json!("open connections keep working")).await;
    assert_eq!(open.expect("message").await["data"], "open connections keep working");
    assert_eq!(short.expect("message").await["data"], "open connections keep working");
    server.stop().await;
}

// ---------------------------------------------------------------- logs of the real binary

/// The real binary with debug logs; stderr collected line by line on a thread.
struct Binary {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    public: SocketAddr,
}

impl Binary {
    async fn start(config: &Path, format: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sidewire"))
            .arg("--config")
            .arg(config)
            .args(["--log-format", format])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut bin = Self { child, lines, reader: Some(reader), public: SocketAddr::from(([0, 0, 0, 0], 0)) };
        let line = bin.wait_line(|l| l.contains("listening") && l.contains("public")).await;
        bin.public = public_addr(&line);
        bin
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    async fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let found = eventually("a log line", || async {
            let lines = self.lines.lock().unwrap().clone();
            lines.into_iter().find(|l| pred(l))
        });
        within("a log line", found).await
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{name} failed");
    }

    /// SIGTERM, then the exit status once stderr is fully read.
    async fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        let deadline = tokio::time::Instant::now() + support::realtime::DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(tokio::time::Instant::now() < deadline, "sidewire did not exit:\n{}", self.log());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        status.code()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Only this test's own child, by its handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `public` from the `listening` line, JSON or human (`public=ip:port`).
fn public_addr(line: &str) -> SocketAddr {
    let text = match serde_json::from_str::<Value>(line) {
        Ok(v) => v["public"].as_str().map(str::to_owned),
        Err(_) => line.split_whitespace().find_map(|w| w.strip_prefix("public=")).map(str::to_owned),
    };
    text.unwrap_or_else(|| panic!("no public address in {line}")).parse().unwrap()
}

const SECRETS: [&str; 6] = ["QRYSECRET1", "HDRSECRET2", "CKSECRET3", "BADSECRET4", "DOWNSECRET5", "LATESECRET6"];

fn binary_yaml(backend: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\nadmin: {{ listen: \"127.0.0.1:0\" }}\nbackend: {{ url: \"{backend}\", timeout: 2s }}\n\
         auth: {{ token_cookie: session }}\nchannels:\n  - {{ match: \"room:*\" }}\n"
    )
}

/// WS, SSE and long-poll with `token` in the query, as a Bearer header or as the cookie.
async fn every_source(bin: &Binary, token: &str, ws_codes: &[u16], http_status: u16) {
    let bearer = format!("Bearer {token}");
    let cookie = format!("theme=dark; session={token}");
    let query = format!("token={token}");
    let cases: [(&str, Vec<(&str, &str)>); 3] =
        [(&query, vec![]), ("", vec![("authorization", &bearer)]), ("", vec![("cookie", &cookie)])];
    for (q, headers) in &cases {
        let mut ws = ws_at(bin.public, &format!("/ws?{q}"), headers).await.unwrap_or_else(|r: Refusal| panic!("{r:?}"));
        let first = next_or_close(&mut ws).await;
        assert!(ws_codes.contains(&first), "{token}: {first}");
        for path in [format!("/events?channel=room:1&{q}"), format!("/poll?channel=room:1&timeout=0&{q}")] {
            let mut req = http().get(bin.url(&path));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let res = within("a realtime response", req.send()).await.unwrap();
            assert_eq!(res.status(), http_status, "{path} with {headers:?}");
        }
    }
}

/// 0 for a welcome, else the close code.
async fn next_or_close(ws: &mut support::realtime::Ws) -> u16 {
    match within("a frame", futures_util::StreamExt::next(ws)).await {
        Some(Ok(Message::Text(t))) => {
            assert!(t.contains("welcome"), "{t}");
            0
        }
        Some(Ok(Message::Close(Some(f)))) => f.code.into(),
        other => panic!("expected welcome or a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn credentials_never_reach_the_logs() {
    let backend = Backend::start().await;
    for t in ["QRYSECRET1", "HDRSECRET2", "CKSECRET3"] {
        backend.allow(t, "alice", &["room:*"]);
    }
    backend.set("BADSECRET4", Verdict::Status(401));
    backend.allow("LATESECRET6", "late", &["room:*"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    for format in ["human", "json"] {
        std::fs::write(&path, binary_yaml(&backend.url())).unwrap();
        let mut bin = Binary::start(&path, format).await;
        for t in ["QRYSECRET1", "HDRSECRET2", "CKSECRET3"] {
            every_source(&bin, t, &[0], 200).await;
        }
        every_source(&bin, "BADSECRET4", &[4002], 401).await;
        // A cached token, then the backend goes down: cached still works, new ones fail.
        every_source(&bin, "LATESECRET6", &[0], 200).await;
        std::fs::write(&path, binary_yaml(&format!("http://{}", dead_addr().await))).unwrap();
        bin.signal("HUP");
        bin.wait_line(|l| l.contains("config reloaded")).await;
        every_source(&bin, "LATESECRET6", &[0], 200).await;
        every_source(&bin, "DOWNSECRET5", &[1011], 503).await;
        assert_eq!(bin.stop().await, Some(0), "{}", bin.log());
        let log = bin.log();
        assert!(log.contains("/events"), "debug access logs expected:\n{log}");
        assert!(log.contains("auth call failed"), "the backend-down case was logged:\n{log}");
        for secret in SECRETS {
            assert!(!log.contains(secret), "{secret} leaked into the {format} log:\n{log}");
        }
    }
}
