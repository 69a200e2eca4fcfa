//! Headless Debian `chromium` for the browser tests (`tests/client_js.rs`,
//! `tests/example_app.rs`): one process (and profile, so one cookie jar) per page, killed
//! with its whole process group on drop, so a failing test leaves no browser behind.
//!
//! [`Chromium::open`] only shows a page (the client.js tests' pages report by `fetch`);
//! [`Chromium::devtools`] also opens the DevTools protocol, so a test can drive a page it
//! does not control (fill a form, read the DOM) and take screenshots: [`Devtools`].
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest a single wait may take: a cold Chromium start on two busy cores included.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Headless Chromium showing one page.
pub struct Chromium {
    child: std::process::Child,
    profile: tempfile::TempDir,
}

impl Chromium {
    /// Opens `url`. Fails the test, naming the install command, when Chromium is missing.
    pub fn open(url: &str) -> Self {
        Self::launch(url, &[])
    }

    /// Opens `url` in a 1000×640 window with the DevTools protocol on a free port, and
    /// connects to the page.
    pub async fn devtools(url: &str) -> (Self, Devtools) {
        let browser = Self::launch(url, &["--remote-debugging-port=0", "--window-size=1000,640"]);
        let tools = Devtools::connect(&browser).await;
        (browser, tools)
    }

    fn launch(url: &str, extra: &[&str]) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let spawned = std::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox", // tests run as root, where the sandbox refuses to start
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-proxy-server",
                // The TLS tests serve a certificate made by the test (tests/support/tls.rs).
                "--ignore-certificate-errors",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => Self { child, profile },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("the browser tests need Debian's chromium on PATH: apt-get install -y chromium")
            }
            Err(e) => panic!("cannot start chromium: {e}"),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.profile.path().join("chromium.log")
    }

    /// The last lines of Chromium's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn profile_dir(&self) -> PathBuf {
        self.profile.path().join("profile")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Renderer and zygote processes share the browser's process group: end them all,
        // then reap the browser (instant after SIGKILL).
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol session with a browser's page (a WebSocket of JSON commands).
pub struct Devtools {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Devtools {
    /// Reads the port Chromium chose from `DevToolsActivePort` in its profile, then
    /// attaches to its page.
    async fn connect(browser: &Chromium) -> Self {
        let file = browser.profile_dir().join("DevToolsActivePort");
        let start = Instant::now();
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file).ok().and_then(|t| t.lines().next()?.parse::<u16>().ok())
            {
                break port;
            }
            assert!(start.elapsed() < DEADLINE, "chromium wrote no {}\n{}", file.display(), browser.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let http = crate::support::http();
        let url = loop {
            let list: Option<Value> = match http.get(format!("http://127.0.0.1:{port}/json/list")).send().await {
                Ok(res) => res.json().await.ok(),
                Err(_) => None,
            };
            let page = list.as_ref().and_then(|l| l.as_array()?.iter().find(|t| t["type"] == "page").cloned());
            if let Some(url) = page.as_ref().and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                break url.to_owned();
            }
            assert!(start.elapsed() < DEADLINE, "chromium shows no page\n{}", browser.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        Self { ws, next_id: 0 }
    }

    /// Sends a command and returns its `result` (events met on the way are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(command.to_string())).await.unwrap();
        let answer = tokio::time::timeout(DEADLINE, async {
            loop {
                let frame = self.ws.next().await.expect("devtools closed").unwrap();
                let Message::Text(text) = frame else { continue };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("devtools: no answer to {method}"));
        match answer.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(answer["result"].clone()),
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value;
    /// `Err` when it threw or the page was navigating.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, Value> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params).await?;
        match result.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` every 50 ms until `want` holds for its value; returns that
    /// value. Fails the test after [`DEADLINE`], showing the last value.
    pub async fn until(&mut self, waiting_for: &str, expression: &str, want: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let got = self.eval(expression).await;
            match &got {
                Ok(v) if want(v) => return v.clone(),
                _ if start.elapsed() > DEADLINE => panic!("timed out waiting for {waiting_for}; last: {got:?}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Saves a PNG of the page's viewport to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await.unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
