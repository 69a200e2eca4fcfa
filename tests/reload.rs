//! Reloads (SPEC §9): a reload applies to open connections too, and a reload that would
//! leave a non-loopback admin listener without a secret is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::realtime::{metric, yaml};
use support::ws::WsClient;
use support::{TestServer, config, http};

#[tokio::test]
async fn open_websockets_follow_the_reloaded_channel_policy() {
    let server = TestServer::start(&yaml("")).await;
    let (mut ws, _) = WsClient::open(&server, "/ws").await;
    ws.subscribe("room:1", None).await;
    ws.send_json(json!({ "type": "publish", "channel": "room:1", "data": 1, "ref": 1 })).await;
    ws.expect("published").await;
    ws.expect("message").await;
    // Reload: clients may no longer publish anywhere.
    let denied = "auth: { anonymous: true }\nchannels:\n  - { match: \"*\", public: true, client_publish: deny }\n";
    server.handle.reload(config(denied)).await.unwrap();
    ws.send_json(json!({ "type": "publish", "channel": "room:1", "data": 2, "ref": 2 })).await;
    let refused = ws.expect_error("forbidden").await;
    assert_eq!(refused["ref"], 2);
    ws.assert_quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn a_reload_cannot_leave_a_non_loopback_admin_without_its_secret() {
    // Bound to an IPv4-mapped loopback, which the loopback exemption does not cover.
    let mut cfg = config("admin: { secret: s3cret }\n");
    cfg.admin.listen = "[::ffff:127.0.0.1]:0".parse().unwrap();
    let server = TestServer::start_config(cfg).await;
    let refused = server.handle.reload(config("")).await;
    assert!(refused.unwrap_err().contains("admin.secret"));
    // With a secret set, /metrics wants it too.
    let res = http().get(server.admin_url("/metrics")).bearer_auth("s3cret").send().await.unwrap();
    let text = res.text().await.unwrap();
    assert_eq!(metric(&text, "sidewire_reloads_total{subject=\"config\",outcome=\"refused\"}"), 1.0, "{text}");
    // The secret still guards the admin API.
    let res =
        http().post(server.admin_url("/publish")).json(&json!({ "channel": "a", "data": 1 })).send().await.unwrap();
    assert_eq!(res.status(), 401);
    server.stop().await;
}
