//! A private `redis-server` per test, on a free loopback port, in its own directory.
//!
//! Tests kill, pause (`SIGSTOP`), resume and restart it to exercise the broker's fault
//! paths. A missing `redis-server` binary fails the test with the install command (the
//! tests are never skipped).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::realtime::eventually;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Whether data survives a kill (AOF, fsync on every write).
    durable: bool,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn spawn(port: u16, dir: &Path, durable: bool, extra: &[&str]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"])
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", if durable { "yes" } else { "no" }, "--appendfsync", "always"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("the Redis tests need redis-server on PATH: apt-get install -y redis-server")
        }
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// One inline command over a fresh connection; the raw reply.
pub async fn command(port: u16, line: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    tcp.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl RedisServer {
    /// A server whose data is lost when it dies.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A server that keeps acknowledged writes across a kill (AOF with fsync always).
    pub async fn start_durable() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = spawn(port, dir.path(), durable, &[]);
        let server = Self { port, child: Some(child), dir, durable };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let port = self.port;
        eventually("redis-server answering PING", || async move {
            command(port, "PING").await.filter(|r| r.starts_with("+PONG")).map(|_| ())
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `SIGKILL`: no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (with its data if durable).
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, self.dir.path(), self.durable, &[]));
        self.wait_ready().await;
    }

    /// Starts it again on the same port with no data at all.
    pub async fn restart_empty(&mut self) {
        self.kill();
        let fresh = tempfile::tempdir().unwrap();
        self.child = Some(spawn(self.port, fresh.path(), self.durable, &[]));
        self.dir = fresh;
        self.wait_ready().await;
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().map(Child::id).expect("redis-server is running");
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// `SIGSTOP`: the server hangs with its connections open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Runs one inline command (e.g. `CLIENT KILL TYPE pubsub`); the raw reply.
    pub async fn cmd(&self, line: &str) -> String {
        command(self.port, line).await.unwrap_or_else(|| panic!("redis did not answer {line:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server would ignore SIGKILL's reaping only until continued; kill works
        // on stopped processes too.
        self.kill();
    }
}

/// A Redis Cluster of `n` masters (no replicas) on free loopback ports, made with
/// `redis-cli --cluster create` as an operator would.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(n: usize) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let port = free_cluster_port();
            let extra =
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"];
            let child = spawn(port, dir.path(), false, &extra);
            let node = RedisServer { port, child: Some(child), dir, durable: false };
            node.wait_ready().await;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli (apt-get install -y redis-tools): {e}"));
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        for node in &nodes {
            let port = node.port;
            eventually("cluster_state:ok", || async move {
                command(port, "CLUSTER INFO").await.filter(|r| r.contains("cluster_state:ok")).map(|_| ())
            })
            .await;
        }
        Self { nodes }
    }

    /// A seed node's URL (the client discovers the others).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}
