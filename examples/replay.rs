//! Resume-cost and idle-memory tool for `bench/replay.sh` (issue 11, target 4): what it
//! costs sidewire to replay history to many clients at once, against delivering the same
//! messages live, and what an idle WebSocket over HTTP/2 (RFC 8441) holds.
//!
//! One mode per run, against one sidewire (`--addr` public, `--admin` admin listener):
//! - `resume-ws`: M messages are published to a fresh channel; N WebSockets connect
//!   (each reads its `welcome`), then all at once subscribe with `since` just before the
//!   first message and read `subscribed` plus the M replayed messages.
//! - `resume-sse`: the same history; N SSE GETs with `Last-Event-ID` just before it, all
//!   started at once (at most `--concurrency` connecting), each reading the M events.
//! - `live-ws` / `live-sse`: N subscribers, then M messages published at `--rate` msg/s.
//! - `idle-h1` / `idle-h2`: N WebSockets subscribed to a channel and held `--hold` s,
//!   over HTTP/1.1 (one TCP connection each) or h2c extended CONNECT (`--per-conn` per
//!   HTTP/2 connection); the server's RSS after − before, per WebSocket. With `--replay`
//!   (`idle-h1`), each WebSocket first resumes M messages of history: what a connection
//!   holds after a mass reconnect.
//!
//! CPU is the server's: the sum of its threads' run time from `/proc/PID/task/*/schedstat`
//! (nanoseconds; utime + stime from `/proc/PID/stat` is reported too, in 10 ms ticks),
//! divided by the messages delivered. (Socket writes are `sendto` calls, which
//! `/proc/PID/io` does not count: `bench/replay.sh` counts them with `strace -c`.)
//! One JSON line on stdout. Only 127.0.0.0/8 targets are accepted; every phase is bounded
//! by `--timeout`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    ResumeWs,
    ResumeSse,
    LiveWs,
    LiveSse,
    IdleH1,
    IdleH2,
}

#[derive(Parser, Debug)]
#[command(about = "Resume cost and idle WebSocket memory against sidewire (127.0.0.0/8 only)")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// sidewire's public listener, e.g. 127.0.0.1:18480.
    #[arg(long)]
    addr: SocketAddr,
    /// sidewire's admin listener (POST /publish).
    #[arg(long)]
    admin: SocketAddr,
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    #[arg(long, default_value = "/events")]
    sse_path: String,
    /// sidewire's pid: its CPU, syscalls and RSS are what is measured.
    #[arg(long)]
    server_pid: u32,
    /// Clients.
    #[arg(short = 'n', long, default_value_t = 1000)]
    clients: usize,
    /// Messages of history (resume) or published live.
    #[arg(short = 'm', long, default_value_t = 100)]
    messages: usize,
    /// Live publish rate, messages per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// WebSockets per HTTP/2 connection (`idle-h2`).
    #[arg(long, default_value_t = 100)]
    per_conn: usize,
    /// `idle-h1`: each WebSocket resumes M messages of history before it idles.
    #[arg(long)]
    replay: bool,
    /// Seconds the idle WebSockets are held before the RSS-after reading.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Client source addresses 127.0.0.1 … 127.0.0.K.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Connection attempts in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds any one phase may take.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Free-form label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
}

fn loopback(addr: SocketAddr) -> anyhow::Result<()> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.octets()[0] == 127 => Ok(()),
        _ => bail!("{addr}: only 127.0.0.0/8 targets are allowed"),
    }
}

/// The server's counters at one instant.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Sum of the threads' on-CPU time, ns.
    run_ns: u64,
    /// utime + stime, clock ticks (1/100 s).
    ticks: u64,
    rss: u64,
    at: Instant,
}

fn probe(pid: u32) -> Probe {
    let run_ns = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks = stat.rfind(')').map_or(0, |i| {
        let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
        let n = |k: usize| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        n(11) + n(12)
    });
    let field = |file: &str, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Probe { run_ns, ticks, rss: field("status", "VmRSS:") * 1024, at: Instant::now() }
}

/// CPU and wall time between two probes, per `per` units of work.
fn phase(name: &str, a: Probe, b: Probe, per: f64) -> Value {
    let run_us = (b.run_ns - a.run_ns) as f64 / 1e3;
    json!({
        format!("{name}_cpu_ms"): run_us / 1e3,
        format!("{name}_ticks_ms"): (b.ticks - a.ticks) * 10,
        format!("{name}_us_per_msg"): run_us / per,
        format!("{name}_wall_ms"): b.at.duration_since(a.at).as_secs_f64() * 1e3,
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// A TCP connection from 127.0.0.`1 + i mod sources`.
async fn tcp(args: &Args, i: usize) -> anyhow::Result<TcpStream> {
    let src = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(args.sources.max(1))) as u8);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = sock.connect(args.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn bounded<T>(args: &Args, what: &str, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs_f64(args.timeout), fut).await.map_err(|_| anyhow!("{what}: timed out"))?
}

/// Publishes through the admin API; returns the ids.
struct Publisher {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    admin: SocketAddr,
}

impl Publisher {
    async fn new(admin: SocketAddr) -> anyhow::Result<Self> {
        let io = TokioIo::new(TcpStream::connect(admin).await?);
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Self { send, admin })
    }

    async fn publish(&mut self, channel: &str, n: usize) -> anyhow::Result<String> {
        let body = json!({ "channel": channel, "data": { "n": n } }).to_string();
        let req = http::Request::post(format!("http://{}/publish", self.admin))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.send.ready().await?;
        let res = self.send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&body).with_context(|| format!("publish answered {status}"))?;
        v["ids"][0].as_str().map(str::to_owned).ok_or_else(|| anyhow!("publish answered {status}: {v}"))
    }

    /// Publishes `m` messages as history; returns the cursor just before the first.
    async fn history(&mut self, channel: &str, m: usize) -> anyhow::Result<String> {
        let first = self.publish(channel, 0).await?;
        for n in 1..m {
            self.publish(channel, n).await?;
        }
        let (epoch, seq) = first.split_once('.').ok_or_else(|| anyhow!("odd id {first}"))?;
        let seq: u64 = seq.parse()?;
        Ok(format!("{epoch}.{}", seq.saturating_sub(1)))
    }
}

type Ws<S> = WebSocketStream<S>;

/// Reads text frames until one contains `needle`; an `error` frame fails.
async fn until<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, needle: &str) -> anyhow::Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains(needle) => return Ok(()),
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"type\":\"error\"") => bail!("error frame: {t}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed before {needle}"),
        }
    }
}

/// Reads until `m` messages have arrived.
async fn messages<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, m: usize) -> anyhow::Result<u64> {
    let mut got = 0;
    while got < m {
        until(ws, "\"type\":\"message\"").await?;
        got += 1;
    }
    Ok(got as u64)
}

/// N WebSockets over HTTP/1.1, each past its `welcome`.
async fn open_ws(args: &Arc<Args>) -> anyhow::Result<Vec<Ws<TcpStream>>> {
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            let (args, gate) = (Arc::clone(args), Arc::clone(&gate));
            tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let url = format!("ws://{}{}", args.addr, args.ws_path);
                let (mut ws, _) = tokio_tungstenite::client_async(url, tcp(&args, i).await?).await?;
                until(&mut ws, "\"type\":\"welcome\"").await?;
                anyhow::Ok(ws)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

fn subscribe_frame(channel: &str, since: Option<&str>) -> Message {
    let mut f = json!({ "type": "subscribe", "channel": channel });
    if let Some(s) = since {
        f["since"] = s.into();
    }
    Message::text(f.to_string())
}

/// An SSE stream: the request written, the answer read as it comes.
struct Sse {
    io: TcpStream,
    carry: Vec<u8>,
    data_lines: usize,
    retry_seen: bool,
}

impl Sse {
    async fn open(args: &Args, i: usize, channel: &str, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        let mut io = tcp(args, i).await?;
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let req = format!(
            "GET {}?channel={channel} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            args.sse_path, args.addr
        );
        io.write_all(req.as_bytes()).await?;
        Ok(Self { io, carry: Vec::new(), data_lines: 0, retry_seen: false })
    }

    /// Reads until `done` holds.
    async fn read_until(&mut self, done: impl Fn(&Self) -> bool) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        while !done(self) {
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                bail!("SSE stream closed after {} events", self.data_lines);
            }
            self.carry.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(end) = self.carry[start..].iter().position(|&b| b == b'\n') {
                let line = &self.carry[start..start + end];
                self.data_lines += usize::from(line.starts_with(b"data:"));
                self.retry_seen |= line.starts_with(b"retry:");
                start += end + 1;
            }
            self.carry.drain(..start);
        }
        Ok(())
    }
}

/// A fresh channel name for this run (short: it is in every message).
fn channel() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("replay:{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

async fn resume_ws(args: Arc<Args>) -> anyhow::Result<Value> {
    let ch = channel();
    let since = Publisher::new(args.admin).await?.history(&ch, args.messages).await?;
    let before_connect = probe(args.server_pid);
    let socks = bounded(&args, "connect", open_ws(&args)).await?;
    let before = probe(args.server_pid);
    let received = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = socks
        .into_iter()
        .map(|mut ws| {
            let (since, ch, m, received) = (since.clone(), ch.clone(), args.messages, Arc::clone(&received));
            tokio::spawn(async move {
                ws.send(subscribe_frame(&ch, Some(&since))).await?;
                until(&mut ws, "\"type\":\"subscribed\"").await?;
                received.fetch_add(messages(&mut ws, m).await?, Ordering::Relaxed);
                anyhow::Ok(ws)
            })
        })
        .collect();
    let mut keep = Vec::with_capacity(tasks.len());
    bounded(&args, "replay", async {
        for t in tasks {
            keep.push(t.await??);
        }
        Ok(())
    })
    .await?;
    let after = probe(args.server_pid);
    let total = received.load(Ordering::Relaxed);
    let mut out = json!({ "received": total });
    merge(&mut out, phase("replay", before, after, total as f64));
    merge(&mut out, phase("resume", before_connect, after, total as f64));
    merge(&mut out, phase("connect", before_connect, before, total as f64));
    Ok(out)
}

async fn resume_sse(args: Arc<Args>) -> anyhow::Result<Value> {
    let ch = channel();
    let since = Publisher::new(args.admin).await?.history(&ch, args.messages).await?;
    let before = probe(args.server_pid);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            let (args, gate, ch, since) = (Arc::clone(&args), Arc::clone(&gate), ch.clone(), since.clone());
            tokio::spawn(async move {
                let permit = gate.acquire().await?;
                let mut sse = Sse::open(&args, i, &ch, Some(&since)).await?;
                drop(permit);
                let m = args.messages;
                sse.read_until(|s| s.data_lines >= m).await?;
                anyhow::Ok(sse)
            })
        })
        .collect();
    let mut keep = Vec::with_capacity(tasks.len());
    bounded(&args, "resume", async {
        for t in tasks {
            keep.push(t.await??);
        }
        Ok(())
    })
    .await?;
    let after = probe(args.server_pid);
    let total: usize = keep.iter().map(|s| s.data_lines).sum();
    let mut out = json!({ "received": total });
    merge(&mut out, phase("resume", before, after, total as f64));
    Ok(out)
}

/// Publishes `m` messages at `rate` on `ch` while `wait` collects the deliveries.
/// `wait` returns the deliveries and the connections, which stay open until the server
/// has been probed (their closing is not part of the phase).
async fn live<W>(args: &Args, ch: &str, wait: W) -> anyhow::Result<Value>
where
    W: Future<Output = anyhow::Result<(u64, Box<dyn Send>)>>,
{
    let mut publisher = Publisher::new(args.admin).await?;
    let before = probe(args.server_pid);
    let publish = async {
        let start = tokio::time::Instant::now();
        for n in 0..args.messages {
            tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / args.rate)).await;
            publisher.publish(ch, n).await?;
        }
        anyhow::Ok(())
    };
    let (published, waited) = bounded(args, "live", async { anyhow::Ok(tokio::join!(publish, wait)) }).await?;
    published?;
    let (total, held) = waited?;
    let after = probe(args.server_pid);
    drop(held);
    let mut out = json!({ "received": total });
    merge(&mut out, phase("live", before, after, total as f64));
    Ok(out)
}

async fn live_ws(args: Arc<Args>) -> anyhow::Result<Value> {
    let ch = channel();
    let mut socks = bounded(&args, "connect", open_ws(&args)).await?;
    bounded(&args, "subscribe", async {
        for ws in &mut socks {
            ws.send(subscribe_frame(&ch, None)).await?;
        }
        for ws in &mut socks {
            until(ws, "\"type\":\"subscribed\"").await?;
        }
        Ok(())
    })
    .await?;
    let m = args.messages;
    let tasks: Vec<_> = socks
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { anyhow::Ok((messages(&mut ws, m).await?, ws)) }))
        .collect();
    let wait = async {
        let mut total = 0;
        let mut keep = Vec::with_capacity(tasks.len());
        for t in tasks {
            let (n, ws) = t.await??;
            total += n;
            keep.push(ws);
        }
        anyhow::Ok((total, Box::new(keep) as Box<dyn Send>))
    };
    live(&args, &ch, wait).await
}

async fn live_sse(args: Arc<Args>) -> anyhow::Result<Value> {
    let ch = channel();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let opening: Vec<_> = (0..args.clients)
        .map(|i| {
            let (args, gate, ch) = (Arc::clone(&args), Arc::clone(&gate), ch.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let mut sse = Sse::open(&args, i, &ch, None).await?;
                sse.read_until(|s| s.retry_seen).await?;
                anyhow::Ok(sse)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(opening.len());
    bounded(&args, "connect", async {
        for t in opening {
            streams.push(t.await??);
        }
        Ok(())
    })
    .await?;
    let m = args.messages;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut sse| {
            tokio::spawn(async move {
                sse.read_until(|s| s.data_lines >= m).await?;
                anyhow::Ok(sse)
            })
        })
        .collect();
    let wait = async {
        let mut keep = Vec::with_capacity(tasks.len());
        for t in tasks {
            keep.push(t.await??);
        }
        let total = keep.iter().map(|s| s.data_lines as u64).sum();
        anyhow::Ok((total, Box::new(keep) as Box<dyn Send>))
    };
    live(&args, &ch, wait).await
}

/// An extended CONNECT for a WebSocket on `path` (RFC 8441 §4).
fn connect_request(args: &Args) -> anyhow::Result<http::Request<Empty<Bytes>>> {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}{}", args.addr, args.ws_path))
        .header("sec-websocket-version", "13")
        .body(Empty::new())?;
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    Ok(req)
}

/// `per_conn` WebSockets over one h2c connection, each subscribed to `ch`.
async fn open_h2(
    args: Arc<Args>,
    i: usize,
    count: usize,
    ch: String,
) -> anyhow::Result<Vec<Ws<TokioIo<hyper::upgrade::Upgraded>>>> {
    let io = TokioIo::new(tcp(&args, i).await?);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    send.ready().await?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let res = send.send_request(connect_request(&args)?).await?;
        if res.status() != http::StatusCode::OK {
            bail!("extended CONNECT answered {}", res.status());
        }
        let io = TokioIo::new(hyper::upgrade::on(res).await?);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
        until(&mut ws, "\"type\":\"welcome\"").await?;
        ws.send(subscribe_frame(&ch, None)).await?;
        until(&mut ws, "\"type\":\"subscribed\"").await?;
        out.push(ws);
    }
    Ok(out)
}

async fn idle(args: Arc<Args>) -> anyhow::Result<Value> {
    let ch = channel();
    let since = match args.replay {
        true => Some(Publisher::new(args.admin).await?.history(&ch, args.messages).await?),
        false => None,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = probe(args.server_pid);
    let mut held: Vec<Box<dyn Send>> = Vec::new();
    let conns;
    if args.mode == Mode::IdleH2 {
        let per = args.per_conn.max(1);
        conns = args.clients.div_ceil(per);
        let gate = Arc::new(Semaphore::new(args.concurrency));
        let tasks: Vec<_> = (0..conns)
            .map(|i| {
                let count = per.min(args.clients - i * per);
                let (args, gate, ch) = (Arc::clone(&args), Arc::clone(&gate), ch.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire().await?;
                    open_h2(args, i, count, ch).await
                })
            })
            .collect();
        bounded(&args, "open", async {
            for t in tasks {
                held.push(Box::new(t.await??));
            }
            Ok(())
        })
        .await?;
    } else {
        conns = args.clients;
        let mut socks = bounded(&args, "connect", open_ws(&args)).await?;
        bounded(&args, "subscribe", async {
            for ws in &mut socks {
                ws.send(subscribe_frame(&ch, since.as_deref())).await?;
            }
            for ws in &mut socks {
                until(ws, "\"type\":\"subscribed\"").await?;
                if since.is_some() {
                    messages(ws, args.messages).await?;
                }
            }
            Ok(())
        })
        .await?;
        held.push(Box::new(socks));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let after = probe(args.server_pid);
    let per_ws = (after.rss as f64 - before.rss as f64) / args.clients as f64 / 1024.0;
    drop(held);
    Ok(json!({
        "websockets": args.clients,
        "replayed": if since.is_some() { args.messages } else { 0 },
        "tcp_connections": conns,
        "rss_before_kib": before.rss / 1024,
        "rss_after_kib": after.rss / 1024,
        "kib_per_ws": per_ws,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    loopback(args.addr)?;
    loopback(args.admin)?;
    let out = match args.mode {
        Mode::ResumeWs => resume_ws(Arc::clone(&args)).await,
        Mode::ResumeSse => resume_sse(Arc::clone(&args)).await,
        Mode::LiveWs => live_ws(Arc::clone(&args)).await,
        Mode::LiveSse => live_sse(Arc::clone(&args)).await,
        Mode::IdleH1 | Mode::IdleH2 => idle(Arc::clone(&args)).await,
    };
    let mut out = out?;
    let mode = format!("{:?}", args.mode);
    merge(&mut out, json!({ "mode": mode, "label": args.label, "clients": args.clients, "messages": args.messages }));
    println!("{out}");
    Ok(())
}
