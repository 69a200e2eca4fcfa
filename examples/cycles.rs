//! Connection-cycle driver for `checks/cycles.sh`: N connect → subscribe → disconnect
//! cycles against one sidewire, split over WebSocket, SSE and long-poll, to find what a
//! session leaves behind (fds, memory, hub entries) once its client is gone.
//!
//! Cycle `i` uses transport `i mod 3` and, within it, one of two endings, so every
//! teardown path is taken:
//! - WebSocket: handshake, `welcome`, `subscribe` → `subscribed`; then a closing
//!   handshake (even cycles) or the socket dropped without one (odd cycles);
//! - SSE: request, `200` head and the first `retry:` bytes; then the socket dropped
//!   (the only way an SSE client leaves);
//! - long-poll: `timeout=0` read to the end of its `200` (even cycles), or `timeout=30s`
//!   dropped while it waits (odd cycles).
//!
//! Channels are `cycles:<i mod --channels>`. Client sockets are bound to 127.0.0.1 …
//! 127.0.0.K round-robin so TIME_WAIT never exhausts the ports of one source address.
//! Prints one JSON line (`cycles`, `failed`, `seconds`, `per_second`) on stdout; exits 1
//! if any cycle failed or the run hit `--timeout`.
//!
//! ```sh
//! cargo run --release --example cycles -- --addr 127.0.0.1:8080 --cycles 30000
//! ```
//! Only 127.0.0.0/8 targets are accepted.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "connect/subscribe/disconnect cycles over WS, SSE and long-poll (127.0.0.0/8 only)")]
struct Args {
    /// The public listener.
    #[arg(long)]
    addr: SocketAddr,
    /// Total cycles, split evenly over the three transports.
    #[arg(long, default_value_t = 30_000)]
    cycles: u64,
    /// Cycles in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Distinct channels used.
    #[arg(long, default_value_t = 50)]
    channels: u64,
    /// Client source addresses 127.0.0.1 … 127.0.0.K.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Seconds one cycle may take.
    #[arg(long, default_value_t = 10.0)]
    cycle_timeout: f64,
    /// Hard limit for the whole run, seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

/// Largest response head or first SSE bytes read before giving up on a cycle.
const MAX_READ: usize = 16 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Arc::new(Args::parse());
    if !args.addr.ip().is_loopback() {
        eprintln!("cycles: only loopback targets are accepted");
        std::process::exit(2);
    }
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (args, next, failed) = (Arc::clone(&args), Arc::clone(&next), Arc::clone(&failed));
        workers.spawn(worker(args, next, failed));
    }
    let all = async { while workers.join_next().await.is_some() {} };
    let timed_out = tokio::time::timeout(Duration::from_secs_f64(args.timeout), all).await.is_err();
    let seconds = start.elapsed().as_secs_f64();
    let done = next.load(Ordering::Relaxed).min(args.cycles);
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "cycles": done, "failed": failed, "timed_out": timed_out,
            "seconds": (seconds * 100.0).round() / 100.0,
            "per_second": (done as f64 / seconds).round(),
        })
    );
    if failed > 0 || timed_out {
        std::process::exit(1);
    }
}

async fn worker(args: Arc<Args>, next: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= args.cycles {
            return;
        }
        let limit = Duration::from_secs_f64(args.cycle_timeout);
        let outcome = match tokio::time::timeout(limit, cycle(&args, i)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("timed out")),
        };
        if let Err(e) = outcome {
            // The first few failures say why; the count says how many.
            if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("cycles: cycle {i} failed: {e:#}");
            }
        }
    }
}

async fn cycle(args: &Args, i: u64) -> anyhow::Result<()> {
    let src = Ipv4Addr::new(127, 0, 0, 1 + (i % u64::from(args.sources.max(1))) as u8);
    let stream = tcp(src, args.addr).await.context("connect")?;
    let channel = format!("cycles:{}", i % args.channels.max(1));
    let graceful = (i / 3).is_multiple_of(2);
    match i % 3 {
        0 => websocket(stream, args.addr, &channel, graceful).await,
        1 => sse(stream, args.addr, &channel).await,
        _ => longpoll(stream, args.addr, &channel, graceful).await,
    }
}

async fn tcp(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = sock.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn websocket(stream: TcpStream, addr: SocketAddr, channel: &str, graceful: bool) -> anyhow::Result<()> {
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), stream).await.context("ws handshake")?;
    let subscribe = serde_json::json!({"type": "subscribe", "channel": channel}).to_string();
    ws.send(Message::text(subscribe)).await.context("send subscribe")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"subscribed\"") => break,
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"error\"") => bail!("refused: {}", t.as_str()),
            Some(Ok(Message::Close(c))) => bail!("closed before subscribed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("ws read: {e}"),
            None => bail!("ws closed before subscribed"),
        }
    }
    if graceful {
        ws.close(None).await.context("close")?;
        // Read to the server's close frame: the closing handshake completes.
        while let Some(Ok(_)) = ws.next().await {}
    }
    Ok(())
}

async fn sse(mut stream: TcpStream, addr: SocketAddr, channel: &str) -> anyhow::Result<()> {
    let req = format!("GET /events?channel={channel} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let buf =
        read_until(&mut stream, |b| find(b, b"\r\n\r\n").is_some_and(|h| find(&b[h..], b"retry:").is_some())).await?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!("sse: {}", head(&buf));
    }
    Ok(()) // dropped: the client leaves
}

async fn longpoll(mut stream: TcpStream, addr: SocketAddr, channel: &str, complete: bool) -> anyhow::Result<()> {
    let timeout = if complete { "0" } else { "30s" };
    let req =
        format!("GET /poll?channel={channel}&timeout={timeout} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    if !complete {
        // Give the request a moment to reach its wait, then leave mid-poll.
        tokio::time::sleep(Duration::from_millis(2)).await;
        return Ok(());
    }
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    if !buf.starts_with(b"HTTP/1.1 200") || find(&buf, b"\"messages\"").is_none() {
        bail!("poll: {}", head(&buf));
    }
    Ok(())
}

async fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !done(&buf) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > MAX_READ {
            bail!("stream ended early: {}", head(&buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn head(buf: &[u8]) -> String {
    String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned()
}
