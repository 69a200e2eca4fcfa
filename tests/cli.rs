//! The real binary (SPEC §1, §9): `--check`, `${ENV}` from the process environment,
//! SIGTERM drain, SIGHUP reload, JSON logs, and no secrets in logs.
// Helpers outside #[test] fns panic on failure too (the lint only exempts #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidewire");

/// Upper bound for anything expected to happen promptly (a deadline, never a delay).
const DEADLINE: Duration = Duration::from_secs(15);

/// A config file in its own tempdir.
struct ConfigFile {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConfigFile {
    fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = Self { path: dir.path().join("config.yaml"), _dir: dir };
        file.write(yaml);
        file
    }

    fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).unwrap();
    }
}

fn check(config: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(BIN).arg("--check").arg("--config").arg(config).envs(env.iter().copied()).output().unwrap()
}

/// A running `sidewire` child; its stderr is collected line by line on a thread.
struct Sidewire {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Sidewire {
    /// Starts the binary with JSON logs and waits for its `listening` line.
    async fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(config, env, &["--log-format", "json"]).await
    }

    async fn start_with(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
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
        let mut proc = Self {
            child,
            lines,
            reader: Some(reader),
            public: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let listening = proc.wait_line(|l| l.contains("listening") && l.contains("public")).await;
        let (public, admin) = listen_addrs(&listening);
        proc.public = public;
        proc.admin = admin;
        proc
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Polls the collected stderr until a line matches, or fails with all of it.
    async fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(l) = self.log().into_iter().find(|l| pred(l)) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_reader();
                panic!("sidewire exited ({status}) before the expected log line:\n{}", self.log().join("\n"));
            }
            assert!(tokio::time::Instant::now() < until, "expected log line missing:\n{}", self.log().join("\n"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal with the `kill` utility (no libc in tests).
    fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, then for its stderr to be fully read.
    async fn wait_exit(&mut self) -> ExitStatus {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_reader();
                return status;
            }
            assert!(tokio::time::Instant::now() < until, "sidewire did not exit:\n{}", self.log().join("\n"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
    }
}

impl Drop for Sidewire {
    fn drop(&mut self) {
        // Only this test's own child, by its handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `public` and `admin` from the `listening` line, JSON or human (`public=ip:port`).
fn listen_addrs(line: &str) -> (SocketAddr, SocketAddr) {
    let addr = |k: &str| -> SocketAddr {
        let text = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => v[k].as_str().map(str::to_owned),
            Err(_) => line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).map(str::to_owned),
        };
        text.unwrap_or_else(|| panic!("no {k} in {line}")).parse().unwrap()
    };
    (addr("public"), addr("admin"))
}

fn base_yaml(backend: &str, grace: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\nadmin: {{ listen: \"127.0.0.1:0\" }}\nshutdown_grace: {grace}\nbackend: {{ url: \"{backend}\" }}\n"
    )
}

/// Polls until `addr` refuses connections.
async fn wait_refused(addr: SocketAddr) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < until, "{addr} still accepts connections");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn check_accepts_a_valid_config() {
    let file = ConfigFile::new(&base_yaml("http://127.0.0.1:3000", "5s"));
    let out = check(&file.path, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_reports_every_problem_with_its_key_path() {
    let file = ConfigFile::new(
        "listn: \"0.0.0.0:1\"\nshutdown_grace: 10 parsecs\nroutes:\n  - { path: \"ws\", transport: pigeon }\n",
    );
    let out = check(&file.path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "listn: unknown key",
        "shutdown_grace: invalid duration",
        "routes[0].path:",
        "routes[0].transport: unknown transport",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn check_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let out = check(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no config file") && err.contains("absent.yaml"), "{err}");
    assert!(err.contains("--config"), "says how to start: {err}");
}

#[test]
fn help_shows_examples_signals_and_exit_codes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidewire")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["--check", "RUST_LOG", "SIGHUP", "Exit codes", "POST /publish", "/readyz"] {
        assert!(text.contains(needle), "{needle:?} missing from --help:\n{text}");
    }
}

#[test]
fn check_expands_env_from_the_process_environment() {
    let file = ConfigFile::new("listen: \"${SW_CLI_LISTEN}\"\nbackend: { url: \"${SW_CLI_BACKEND}\" }\n");
    let out = check(&file.path, &[("SW_CLI_LISTEN", "127.0.0.1:0"), ("SW_CLI_BACKEND", "http://127.0.0.1:3000")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&file.path)
        .env_remove("SW_CLI_LISTEN")
        .env_remove("SW_CLI_BACKEND")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen: environment variable SW_CLI_LISTEN is not set"), "{err}");
    assert!(err.contains("backend.url: environment variable SW_CLI_BACKEND is not set"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let HeldBackend { backend, mut arrived, release } = held_backend("slow answer").await;
    // The backend URL comes from the real environment of the child.
    let file = ConfigFile::new(&base_yaml("${SW_CLI_BACKEND_URL}", "60s"));
    let mut sw = Sidewire::start(&file.path, &[("SW_CLI_BACKEND_URL", &backend.url())]).await;
    let url = sw.url("/slow");
    let in_flight = tokio::spawn(async move {
        let res = http().get(url).send().await?;
        Ok::<_, reqwest::Error>((res.status(), res.text().await?))
    });
    arrived.recv().await.unwrap();

    sw.signal("TERM");
    wait_refused(sw.public).await;
    wait_refused(sw.admin).await;
    assert!(!in_flight.is_finished());
    release.send(true).unwrap();
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow answer"));

    // Exits long before the 60s grace: nothing else was left to drain.
    let status = sw.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", sw.log().join("\n"));
}

#[tokio::test]
async fn sigterm_does_not_wait_past_the_grace() {
    let HeldBackend { backend, mut arrived, release: _never_released } = held_backend("slow answer").await;
    let file = ConfigFile::new(&base_yaml(&backend.url(), "300ms"));
    let mut sw = Sidewire::start(&file.path, &[]).await;
    let url = sw.url("/forever");
    let in_flight = tokio::spawn(async move { http().get(url).send().await });
    arrived.recv().await.unwrap();

    sw.signal("TERM");
    let status = sw.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", sw.log().join("\n"));
    assert!(sw.log().iter().any(|l| l.contains("grace elapsed")), "{}", sw.log().join("\n"));
    // The process is gone, so the client's connection is too.
    assert!(tokio::time::timeout(DEADLINE, in_flight).await.unwrap().unwrap().is_err());
}

/// An HTTP/1.1 keep-alive connection kept across reloads.
struct KeepAlive(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl KeepAlive {
    async fn open(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        Self(sender)
    }

    async fn get(&mut self, path: &str) -> Response<Incoming> {
        self.0.ready().await.expect("keep-alive connection dropped");
        let req = Request::get(path).header("host", "sidewire.test").body(Empty::new()).unwrap();
        let res = self.0.send_request(req).await.expect("keep-alive connection dropped");
        assert!(res.status().is_success(), "{}", res.status());
        res
    }

    /// Which backend answered (`x-backend` header), body read so the connection is reusable.
    async fn backend(&mut self, path: &str) -> String {
        let res = self.get(path).await;
        let name = res.headers()["x-backend"].to_str().unwrap().to_owned();
        res.into_body().collect().await.unwrap();
        name
    }
}

async fn named_backend(name: &'static str) -> FakeBackend {
    FakeBackend::start(
        move |_req| async move { Response::builder().header("x-backend", name).body(full(name)).unwrap() },
    )
    .await
}

#[tokio::test]
async fn sighup_applies_a_new_config_without_dropping_connections() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let file = ConfigFile::new(&base_yaml(&a.url(), "60s"));
    let mut sw = Sidewire::start(&file.path, &[]).await;
    let mut conn = KeepAlive::open(sw.public).await;
    assert_eq!(conn.backend("/one").await, "a");

    file.write(&base_yaml(&b.url(), "60s"));
    sw.signal("HUP");
    sw.wait_line(|l| l.contains("config reloaded")).await;
    // The same connection, now routed to the new backend.
    assert_eq!(conn.backend("/two").await, "b");

    // A broken file is refused with a warning; the running config stays.
    file.write("listen: [not, an, address\nbackend: { url: 42 }\n");
    sw.signal("HUP");
    let warning = sw.wait_line(|l| l.contains("config reload refused")).await;
    let warning: serde_json::Value = serde_json::from_str(&warning).unwrap();
    assert_eq!(warning["level"], "WARN");
    assert_eq!(conn.backend("/three").await, "b");
    let fresh = http().get(sw.url("/four")).send().await.unwrap();
    assert_eq!(fresh.headers()["x-backend"], "b");

    sw.signal("TERM");
    assert_eq!(sw.wait_exit().await.code(), Some(0));
}

/// Requests carrying a token in the query, a cookie and an Authorization header, on a
/// pass-through path, a realtime path and a reserved path.
async fn send_secrets(sw: &Sidewire) {
    // HTTP/1.1 and h2c: they log through different code (h2 frames at debug).
    install_crypto();
    let h2c = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    for client in [http(), h2c] {
        for (path, want) in [("/app/page", 200), ("/events", 503), ("/_sidewire/nope", 404)] {
            let res = client
                .get(sw.url(&format!("{path}?token=SECRET123&channel=room:1")))
                .header("cookie", "session=COOKIESECRET456; theme=dark")
                .header("authorization", "Bearer AUTHSECRET789")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), want, "{path}");
        }
    }
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let backend = FakeBackend::echo().await;
    let file = ConfigFile::new(&base_yaml(&backend.url(), "60s"));
    for format in ["human", "json"] {
        let mut sw = start_debug(&file.path, format).await;
        send_secrets(&sw).await;
        sw.signal("TERM");
        assert_eq!(sw.wait_exit().await.code(), Some(0));
        let log = sw.log().join("\n");
        assert!(log.contains("/app/page"), "debug access logs expected:\n{log}");
        for secret in ["SECRET123", "COOKIESECRET456", "AUTHSECRET789"] {
            assert!(!log.contains(secret), "{secret} leaked into the {format} log:\n{log}");
        }
    }
}

async fn start_debug(config: &Path, format: &str) -> Sidewire {
    Sidewire::start_with(config, &[("RUST_LOG", "debug")], &["--log-format", format]).await
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let backend = FakeBackend::echo().await;
    let file = ConfigFile::new(&base_yaml(&backend.url(), "60s"));
    let mut sw = start_debug(&file.path, "json").await;
    send_secrets(&sw).await;
    sw.signal("HUP");
    sw.wait_line(|l| l.contains("config reloaded")).await;
    sw.signal("TERM");
    assert_eq!(sw.wait_exit().await.code(), Some(0));
    let lines = sw.log();
    assert!(lines.len() > 5, "{lines:?}");
    let mut access = 0;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.is_object() && v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        if v["target"] == "sidewire::access" {
            // Every request logs inside its connection's span, HTTP/2 streams included.
            access += 1;
            assert_eq!(v["span"]["name"], "conn", "{line}");
            assert_eq!(v["span"]["listener"], "http", "{line}");
        }
    }
    assert_eq!(access, 6, "{lines:#?}");
}

/// Runs the binary on `config`, expecting it to refuse to start: it must exit non-zero
/// within the deadline without ever listening. Returns its stderr.
async fn refused_start(config: &Path) -> String {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second sidewire on a served address did not exit");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_second_process_on_a_served_address_refuses_to_start() {
    let backend = FakeBackend::echo().await;
    let file = ConfigFile::new(&base_yaml(&backend.url(), "60s"));
    let mut first = Sidewire::start(&file.path, &[]).await;

    // Same public address, its own admin port: SO_REUSEPORT alone would let it in.
    let public = ConfigFile::new(&format!(
        "listen: \"{}\"\nadmin: {{ listen: \"127.0.0.1:0\" }}\nbackend: {{ url: \"{}\" }}\n",
        first.public,
        backend.url()
    ));
    // Same admin address, its own public port.
    let admin = ConfigFile::new(&format!(
        "listen: \"127.0.0.1:0\"\nadmin: {{ listen: \"{}\" }}\nbackend: {{ url: \"{}\" }}\n",
        first.admin,
        backend.url()
    ));
    for (second, addr, what) in [(&public, first.public, "(listen)"), (&admin, first.admin, "(admin.listen)")] {
        let stderr = refused_start(&second.path).await;
        for expected in [&addr.to_string(), what, "another process already serves this address"] {
            assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
        }
    }

    // The first one never noticed.
    let res = http().get(first.url("/still/here")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    first.signal("TERM");
    assert_eq!(first.wait_exit().await.code(), Some(0), "{}", first.log().join("\n"));
}

#[tokio::test]
async fn a_pass_through_502_is_logged_at_the_default_level_with_the_backend() {
    // A backend address nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let file = ConfigFile::new(&base_yaml(&format!("http://{dead}"), "60s"));
    let mut sw = Sidewire::start(&file.path, &[]).await;
    for _ in 0..3 {
        let res = http().get(format!("http://{}/page", sw.public)).send().await.unwrap();
        assert_eq!(res.status(), 502);
    }
    let line = sw.wait_line(|l| l.contains("pass-through request failed")).await;
    assert!(line.contains(&dead.to_string()) && line.contains("WARN"), "{line}");
    sw.signal("TERM");
    assert_eq!(sw.wait_exit().await.code(), Some(0));
    let warned = sw.log().iter().filter(|l| l.contains("pass-through request failed")).count();
    assert_eq!(warned, 1, "one warning per burst");
}

#[tokio::test]
async fn a_session_end_logs_one_line() {
    use futures_util::{SinkExt, StreamExt};
    let backend = FakeBackend::echo().await;
    let yaml = format!(
        "{}auth: {{ anonymous: true }}\nchannels: [ {{ match: \"*\", public: true }} ]\n",
        base_yaml(&backend.url(), "60s")
    );
    let file = ConfigFile::new(&yaml);
    let mut sw = Sidewire::start(&file.path, &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", sw.public)).await.unwrap();
    let sub = serde_json::json!({ "type": "subscribe", "channel": "news" }).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(sub)).await.unwrap();
    let mut seen = 0;
    let mut published = false;
    while seen < 2 {
        let frame = ws.next().await.unwrap().unwrap();
        let text = frame.to_text().unwrap_or("").to_owned();
        if text.contains("\"subscribed\"") && !published {
            published = true;
            for n in 0..2 {
                let body = serde_json::json!({ "channel": "news", "data": n });
                let url = format!("http://{}/publish", sw.admin);
                assert_eq!(http().post(url).json(&body).send().await.unwrap().status(), 200);
            }
        }
        if text.contains("\"message\"") {
            seen += 1;
        }
    }
    ws.close(None).await.unwrap();
    let line = sw.wait_line(|l| l.contains("session ended")).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v;
    assert_eq!((f["transport"].as_str(), f["delivered"].as_u64()), (Some("websocket"), Some(2)), "{line}");
    assert!(f["seconds"].is_number() && f["connection"].is_string(), "{line}");
    sw.signal("TERM");
    assert_eq!(sw.wait_exit().await.code(), Some(0));
}

/// A channel rule covered by an earlier `match` (so never used) is a warning: `--check`
/// prints it to stderr and still exits 0; startup and SIGHUP reloads log it.
#[tokio::test]
async fn shadowed_channel_rules_are_warned_about() {
    let shadowed = |later: &str| {
        format!(
            "{}channels:\n  - {{ match: \"*\", public: true }}\n  - {{ match: \"{later}\", presence: true }}\n",
            base_yaml("http://127.0.0.1:3000", "1s")
        )
    };
    let file = ConfigFile::new(&shadowed("room:*"));
    let out = check(&file.path, &[]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: channels[1].match: \"room:*\" is never used"), "{stderr}");
    assert!(stderr.contains("channels[0] (\"*\")"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    let clean = ConfigFile::new(&base_yaml("http://127.0.0.1:3000", "1s"));
    assert_eq!(String::from_utf8_lossy(&check(&clean.path, &[]).stderr), "");

    let mut sw = Sidewire::start(&file.path, &[]).await;
    let line = sw.wait_line(|l| l.contains("config warning")).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(line.contains("room:*"), "{line}");
    file.write(&shadowed("user:*"));
    sw.signal("HUP");
    sw.wait_line(|l| l.contains("config warning") && l.contains("user:*")).await;
    sw.wait_line(|l| l.contains("config reloaded")).await;
    sw.signal("TERM");
    assert_eq!(sw.wait_exit().await.code(), Some(0));
}
