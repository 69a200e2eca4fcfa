//! Table tests for config parsing and validation.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn problems(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml, &no_env) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn empty_file_is_valid_with_defaults() {
    let c = Config::from_yaml("", &no_env).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    assert_eq!(c.backend.origin.as_str(), "127.0.0.1:3000");
    assert_eq!(c.routes.len(), 3);
    assert_eq!(c.limits.subscriber_queue, 1024);
    assert_eq!(c.broker, BrokerConfig::Memory);
    assert!(c.tls.is_none());
}

#[test]
fn spec_example_is_valid() {
    let yaml = r#"
listen: "0.0.0.0:8080"
shutdown_grace: 10s
tls: { listen: "0.0.0.0:8443", cert: "certs/cert.pem", key: "certs/key.pem" }
admin: { listen: "127.0.0.1:9090", secret: "${SIDEWIRE_SECRET}" }
backend: { url: "http://127.0.0.1:3000", connect_timeout: 2s, timeout: 60s }
prefix: "/_sidewire"
auth:
  endpoint: "/realtime/auth"
  token_query: "token"
  token_header: "authorization"
  token_cookie: null
  cache_ttl: 60s
  negative_ttl: 5s
  anonymous: false
webhooks: { endpoint: "/realtime/events", events: [message], secret: "${SIDEWIRE_SECRET}" }
routes:
  - { path: "/ws", transport: websocket }
  - { path: "/events", transport: sse }
  - { path: "/events/rooms/{room}", transport: sse, channels: ["room:{room}"] }
  - { path: "/notifications", transport: sse, channels: ["user:{user}"] }
  - { path: "/poll", transport: longpoll }
channels:
  - match: "room:*"
    history: { size: 100, ttl: 1h }
    presence: true
    client_publish: broadcast
    ephemeral: [typing]
    public: false
  - match: "user:*"
    history: { size: 50, ttl: 24h }
limits:
  max_connections: 100000
  max_connections_per_ip: 1000
  max_channels_per_connection: 100
  max_message_bytes: 65536
  client_rate: { per_second: 10, burst: 20 }
  subscriber_queue: 1024
  origins: []
heartbeat: { interval: 25s, timeout: 60s }
broker: { kind: memory, url: "redis://127.0.0.1:6379" }
"#;
    let env = |k: &str| (k == "SIDEWIRE_SECRET").then(|| "hunter2".to_owned());
    let c = Config::from_yaml(yaml, &env).unwrap();
    assert_eq!(c.admin.secret.as_ref().unwrap().expose(), "hunter2");
    assert_eq!(format!("{:?}", c.admin.secret), "Some(Secret(***))");
    assert_eq!(c.routes[2].channels[0].as_str(), "room:{room}");
    assert_eq!(c.channels[0].history_ttl, Duration::from_secs(3600));
    assert_eq!(c.channels[0].client_publish, ClientPublish::Broadcast);
}

#[test]
fn collects_every_problem_with_paths() {
    let yaml = r#"
listen: "nope"
lissten: 1
backend: { url: "ftp://x", timeout: 5x }
limits: { subscriber_queue: 0, client_rate: { per_second: 0, burst: 1 } }
routes:
  - { path: "ws", transport: websocket }
  - { path: "/x", transport: carrier-pigeon }
  - { path: "/r/{room}", transport: sse, channels: ["room:{rom}"] }
channels:
  - { match: "bad name", client_publish: maybe }
heartbeat: { interval: 30s, timeout: 10s }
broker: { kind: etcd }
"#;
    let p = problems(yaml);
    let has = |needle: &str| p.iter().any(|l| l.starts_with(needle));
    assert!(has("listen: "), "{p:#?}");
    assert!(has("lissten: unknown key"), "{p:#?}");
    assert!(has("backend.timeout: invalid duration"), "{p:#?}");
    assert!(has("limits.subscriber_queue: must be greater than 0"), "{p:#?}");
    assert!(has("limits.client_rate"), "{p:#?}");
    assert!(has("routes[0].path"), "{p:#?}");
    assert!(has("routes[1].transport"), "{p:#?}");
    assert!(has("routes[2].channels[0]: {rom}"), "{p:#?}");
    assert!(has("channels[0].match"), "{p:#?}");
    assert!(has("heartbeat.timeout"), "{p:#?}");
    assert!(has("broker.kind"), "{p:#?}");
}

#[test]
fn unknown_nested_key_names_its_path() {
    let p = problems("limits: { max_conections: 5 }\n");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with("limits"), "{p:#?}");
    assert!(p[0].contains("max_conections"), "{p:#?}");
}

#[test]
fn backend_url_is_checked_after_env_expansion() {
    let p = problems("backend: { url: \"${BACKEND_URL}\" }\n");
    assert_eq!(p, vec!["backend.url: environment variable BACKEND_URL is not set".to_owned()]);
    let env = |_: &str| Some("http://10.0.0.5:8000/app/".to_owned());
    let c = Config::from_yaml("backend: { url: \"${BACKEND_URL}\" }\n", &env).unwrap();
    assert_eq!(c.backend.origin.as_str(), "10.0.0.5:8000");
    assert_eq!(c.backend.base_path, "/app");
}

#[test]
fn admin_secret_required_off_loopback() {
    let p = problems("admin: { listen: \"0.0.0.0:9090\" }\n");
    assert_eq!(p, vec!["admin.secret: required when admin.listen is not a loopback address".to_owned()]);
    assert!(problems("admin: { listen: \"0.0.0.0:9090\", secret: s }\n").is_empty());
}

#[test]
fn webhook_secret_required_when_used() {
    let p = problems("channels: [{ match: \"*\", client_publish: backend }]\n");
    assert!(p[0].starts_with("webhooks.secret"), "{p:#?}");
}

#[test]
fn invalid_yaml_is_one_problem() {
    let p = problems("listen: [\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("invalid YAML"), "{p:#?}");
}

#[test]
fn restart_required_lists_listeners() {
    let a = Config::from_yaml("", &no_env).unwrap();
    let b = Config::from_yaml("listen: \"127.0.0.1:1\"\nbackend: { timeout: 1s }\n", &no_env).unwrap();
    assert_eq!(a.restart_required(&b), vec!["listen"]);
}

#[test]
fn redis_broker() {
    let yaml = r#"broker: { kind: redis, url: "rediss://user:pw@redis.internal:6380/0", cluster: true, key_prefix: "app:", timeout: 750ms }"#;
    let c = Config::from_yaml(yaml, &|_| None).unwrap();
    let BrokerConfig::Redis(r) = &c.broker else { panic!("{:?}", c.broker) };
    assert!(r.cluster);
    assert_eq!((r.key_prefix.as_str(), r.timeout), ("app:", Duration::from_millis(750)));
    let p = problems(r#"broker: { kind: redis, url: "http://x", key_prefix: "a{b}", timeout: 0s }"#);
    let has = |needle: &str| p.iter().any(|l| l.starts_with(needle));
    assert!(has("broker.url: "), "{p:#?}");
    assert!(has("broker.key_prefix: "), "{p:#?}");
    assert!(has("broker.timeout: "), "{p:#?}");
}

#[test]
fn absurd_durations_are_refused() {
    let p = problems("auth: { negative_ttl: 500000000000y }\nheartbeat: { interval: 20y }\n");
    let has = |needle: &str| p.iter().any(|l| l.starts_with(needle));
    assert!(has("auth.negative_ttl: "), "{p:#?}");
    assert!(has("heartbeat.interval: "), "{p:#?}");
    let p = problems("auth: { cache_ttl: 60 }\n");
    assert!(p.iter().any(|l| l.starts_with("auth.cache_ttl: ") && l.contains("\"60s\"")), "{p:#?}");
}

#[test]
fn shadowed_channel_rules_are_warned_about() {
    let yaml = "channels:\n  - match: \"room:*\"\n  - match: \"user:*\"\n  - match: \"room:lobby\"\n  - match: \"*\"\n  - match: \"news:*\"\n  - match: \"user:*\"\n";
    let c = Config::from_yaml(yaml, &no_env).unwrap();
    let warnings: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "channels[2].match: \"room:lobby\" is never used: channels[0] (\"room:*\") comes first and matches every channel it does",
            "channels[4].match: \"news:*\" is never used: channels[3] (\"*\") comes first and matches every channel it does",
            "channels[5].match: \"user:*\" is never used: channels[1] (\"user:*\") comes first and matches every channel it does",
        ]
    );
    assert!(Config::from_yaml("", &no_env).unwrap().warnings().is_empty());
}

#[test]
fn publish_budgets_and_metrics_public() {
    let p = problems("limits: { identity_publish_rate: { per_second: 0, burst: 1 }, identity_publish_table: 0 }\n");
    let has = |needle: &str| p.iter().any(|l| l.starts_with(needle));
    assert!(has("limits.identity_publish_rate: "), "{p:#?}");
    assert!(has("limits.identity_publish_table: "), "{p:#?}");
    let c = Config::from_yaml("", &no_env).unwrap();
    assert_eq!(c.limits.identity_publish_rate, Rate { per_second: 20, burst: 40 });
    assert_eq!(c.limits.identity_publish_table, 100_000);
    assert!(!c.admin.metrics_public);
    assert!(Config::from_yaml("admin: { secret: s, metrics_public: true }", &no_env).unwrap().admin.metrics_public);
}

#[test]
fn backend_read_buffer_has_hypers_minimum() {
    let p = problems("backend: { read_buffer_bytes: 4096 }\n");
    assert!(p.iter().any(|l| l.starts_with("backend.read_buffer_bytes: ") && l.contains("8192")), "{p:#?}");
    let c = Config::from_yaml("backend: { read_buffer_bytes: 8192 }\n", &no_env).unwrap();
    assert_eq!(c.backend.read_buffer_bytes, 8192);
    assert_eq!(Config::from_yaml("", &no_env).unwrap().backend.read_buffer_bytes, 65536);
}
