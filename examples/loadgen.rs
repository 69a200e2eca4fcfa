//! Fan-out load tool: N SSE or WebSocket subscribers against one subscribe URL, M messages
//! published through one HTTP publish URL, publish→deliver latency measured in-process.
//!
//! The same tool drives sidewire, Nchan and Pushpin: the subscribe URL, the optional
//! WebSocket subscribe frame and the publish body template are all arguments.
//!
//! Several instances of one server (e.g. sidewire on Redis): give `--sse-url`/`--ws-url`
//! several times and subscriber i connects to URL i mod k; give `--pub-url` (alias
//! `--publish-url`) several times and publish i (probes included) goes to URL i mod k.
//! `--aux-pid` (e.g. redis-server) and `--redis-info` (a Redis to read `INFO` from) add
//! their CPU and command counts over the measured phase to the report.
//!
//! Phases, each bounded (the whole run also has a hard `--timeout`):
//! 1. server RSS before (`--server-pid`, repeatable: all processes of the server);
//! 2. connect N subscribers, client sockets bound to 127.0.0.1…127.0.0.K round-robin,
//!    at most `--concurrency` attempts in flight; a subscriber counts as connected after
//!    its `200` (SSE), its `101` (WS) or, with `--ws-subscribe-frame`, the reply frame
//!    containing `--ws-subscribed-match`;
//! 3. hold the idle connections `--hold` seconds, then server RSS after;
//! 4. probe: publish marker messages (`n` < 0) until every subscriber has seen one, so
//!    the measured phase never races a subscription that is still being set up;
//! 5. publish M messages at `--rate` msg/s (one publish in flight, in order; a late
//!    publish is followed at once by the next until the schedule is caught up), each body
//!    carrying `{"t": <send time, ns on the tool's monotonic clock>, "n": <index>}`;
//!    wait until every subscriber has all M, or no delivery arrives for `--idle-timeout`;
//! 6. report one JSON line on stdout and a human summary on stderr.
//!
//! Besides the latency of every delivery (`p50_ms`, `p99_ms`), the earliest delivery of
//! each message (`first_p50_ms`, `first_p99_ms`) measures the publish path alone, without
//! the spread of the fan-out over N subscribers.
//!
//! A delivery is any SSE `data:` line or WS text/binary frame with `"t":` and `"n":`.
//! Only 127.0.0.0/8 targets are accepted.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
#[command(about = "Fan-out load generator for SSE/WebSocket pub/sub servers (127.0.0.0/8 only)")]
struct Args {
    /// SSE subscribe URL, e.g. http://127.0.0.1:8080/events?channel=bench
    /// (repeatable: subscriber i connects to URL i mod k).
    #[arg(long, conflicts_with = "ws_url", required_unless_present = "ws_url")]
    sse_url: Vec<String>,
    /// WebSocket subscribe URL, e.g. ws://127.0.0.1:8080/ws (repeatable, like --sse-url).
    #[arg(long)]
    ws_url: Vec<String>,
    /// Text frame sent right after the WebSocket handshake (sidewire: a subscribe request).
    #[arg(long)]
    ws_subscribe_frame: Option<String>,
    /// With --ws-subscribe-frame: the subscriber is ready once a frame contains this.
    #[arg(long, default_value = "\"subscribed\"")]
    ws_subscribed_match: String,
    /// Number of subscribers.
    #[arg(short = 'n', long, default_value_t = 1000)]
    subscribers: usize,
    /// Number of measured messages.
    #[arg(short = 'm', long, default_value_t = 200)]
    messages: usize,
    /// Publish target rate, messages per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// HTTP publish URL (POST; repeatable: publish i goes to URL i mod k, probes included).
    #[arg(long, alias = "publish-url", required = true)]
    pub_url: Vec<String>,
    /// Publish body; `{t}` becomes the send time (ns) and `{n}` the message index.
    #[arg(long, default_value = r#"{"channel":"bench","data":{"t":{t},"n":{n}}}"#)]
    pub_body: String,
    /// Extra publish header `Name: value` (repeatable). Default: Content-Type: application/json.
    #[arg(long)]
    pub_header: Vec<String>,
    /// Client source addresses 127.0.0.1 … 127.0.0.K.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Connection attempts in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Attempts per subscriber (first try included).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds one connection attempt may take.
    #[arg(long, default_value_t = 15.0)]
    connect_timeout: f64,
    /// Seconds the idle connections are held before the RSS-after reading.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Seconds the probe phase may take.
    #[arg(long, default_value_t = 60.0)]
    probe_timeout: f64,
    /// After the last publish, stop waiting once no delivery arrived for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    idle_timeout: f64,
    /// Hard limit for the whole run, seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Server process to account CPU and RSS to (repeatable: every process of the server).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Another process whose CPU over the measured phase is reported apart (repeatable,
    /// e.g. redis-server): `aux_cpu_s`, `aux_cpu_us_per_delivery`.
    #[arg(long)]
    aux_pid: Vec<u32>,
    /// A Redis (127.0.0.1:PORT) whose `INFO stats commandstats cpu` is read before and
    /// after the measured phase: commands, EVALSHA and PUBLISH calls, Redis's own CPU.
    #[arg(long)]
    redis_info: Option<String>,
    /// Free-form label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
}

/// Nanoseconds on the tool's monotonic clock.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Where a subscriber connects, parsed once.
#[derive(Debug)]
struct Target {
    ws: bool,
    url: String,
    addr: SocketAddr,
    authority: String,
    path_and_query: String,
}

/// Parses `http://` / `ws://` URLs and refuses anything outside 127.0.0.0/8.
fn parse_target(url: &str, ws: bool) -> anyhow::Result<Target> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    let want = if ws { "ws" } else { "http" };
    if scheme != want {
        bail!("{url}: scheme must be {want}:// (no TLS here)");
    }
    let authority = uri.authority().ok_or_else(|| anyhow!("{url}: no host"))?;
    let ip = loopback(authority.host())?;
    let port = authority.port_u16().unwrap_or(80);
    Ok(Target {
        ws,
        url: url.to_owned(),
        addr: SocketAddr::new(IpAddr::V4(ip), port),
        authority: authority.as_str().to_owned(),
        path_and_query: uri.path_and_query().map_or("/".into(), |p| p.as_str().to_owned()),
    })
}

fn loopback(host: &str) -> anyhow::Result<Ipv4Addr> {
    let ip: Ipv4Addr = if host == "localhost" { Ipv4Addr::LOCALHOST } else { host.parse()? };
    if ip.octets()[0] != 127 {
        bail!("{host}: only 127.0.0.0/8 targets are allowed");
    }
    Ok(ip)
}

/// Counters every subscriber task updates.
#[derive(Default)]
struct Shared {
    connected: AtomicU64,
    failed: AtomicU64,
    ready: AtomicU64,
    probe_deliveries: AtomicU64,
    received: AtomicU64,
    last_delivery_ns: AtomicU64,
    /// Earliest end of a stream the server closed before the run was over (ns).
    first_close_ns: AtomicU64,
    /// Per measured message: the earliest delivery's latency (ns) over all subscribers,
    /// i.e. the publish→first-deliver path without the fan-out's spread.
    first_latency_ns: Vec<AtomicU64>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, e: String) {
        // Group by the first words so thousands of similar errors stay one line.
        let key: String = e.chars().take(120).collect();
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(key).or_default() += 1;
        }
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct SubResult {
    connected: bool,
    unique: u64,
    duplicates: u64,
    unexpected: u64,
    closed_early: bool,
    latencies_ns: Vec<u64>,
}

/// Per-subscriber bookkeeping of the measured messages.
struct Seen {
    bits: Vec<u64>,
    ready: bool,
    res: SubResult,
}

impl Seen {
    fn new(m: usize) -> Self {
        Self {
            bits: vec![0; m.div_ceil(64)],
            ready: false,
            res: SubResult { latencies_ns: Vec::with_capacity(m), ..SubResult::default() },
        }
    }

    /// One payload (an SSE data line or a WS frame).
    fn payload(&mut self, p: &[u8], m: usize, shared: &Shared) {
        let (Some(t), Some(n)) = (field(p, b"\"t\":"), field(p, b"\"n\":")) else {
            return;
        };
        let now = now_ns();
        if n < 0 {
            shared.probe_deliveries.fetch_add(1, Ordering::Relaxed);
            if !self.ready {
                self.ready = true;
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let n = n as usize;
        if n >= m {
            self.res.unexpected += 1;
            return;
        }
        let (w, b) = (n / 64, 1u64 << (n % 64));
        if self.bits[w] & b != 0 {
            self.res.duplicates += 1;
            return;
        }
        self.bits[w] |= b;
        self.res.unique += 1;
        let latency = now.saturating_sub(t.max(0) as u64);
        self.res.latencies_ns.push(latency);
        if let Some(first) = shared.first_latency_ns.get(n) {
            first.fetch_min(latency, Ordering::Relaxed);
        }
        shared.received.fetch_add(1, Ordering::Relaxed);
        shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
    }
}

/// The integer after `key` (e.g. `"t":`), spaces allowed before it.
fn field(p: &[u8], key: &[u8]) -> Option<i64> {
    let at = p.windows(key.len()).position(|w| w == key)? + key.len();
    let mut rest = &p[at..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    let neg = rest.first() == Some(&b'-');
    if neg {
        rest = &rest[1..];
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 18 {
        return None;
    }
    let v = rest[..digits].iter().fold(0i64, |a, c| a * 10 + i64::from(c - b'0'));
    Some(if neg { -v } else { v })
}

async fn tcp(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = sock.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type SseBody = hyper::body::Incoming;
type WsStream = tokio_tungstenite::WebSocketStream<TcpStream>;

enum Conn {
    Sse(SseBody),
    Ws(Box<WsStream>),
}

/// One connection attempt, up to "subscribed".
async fn connect(args: &Args, target: &Target, src: Ipv4Addr) -> anyhow::Result<Conn> {
    let stream = tcp(src, target.addr).await.context("connect")?;
    if target.ws {
        let cfg = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0);
        let (mut ws, _res) = tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(cfg))
            .await
            .context("ws handshake")?;
        if let Some(frame) = &args.ws_subscribe_frame {
            ws.send(Message::text(frame.clone())).await.context("send subscribe")?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if t.as_str().contains(&args.ws_subscribed_match) {
                            break;
                        }
                        if t.as_str().contains("\"error\"") {
                            bail!("subscribe refused: {}", t.as_str());
                        }
                    }
                    Some(Ok(Message::Close(c))) => bail!("closed before subscribed: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => bail!("ws read before subscribed: {e}"),
                    None => bail!("ws closed before subscribed"),
                }
            }
        }
        Ok(Conn::Ws(Box::new(ws)))
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await.context("h1")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(target.path_and_query.as_str())
            .header(http::header::HOST, target.authority.as_str())
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Empty::new())?;
        let res = sender.send_request(req).await.context("sse request")?;
        if res.status() != http::StatusCode::OK {
            let status = res.status();
            let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            bail!("sse status {status}: {}", String::from_utf8_lossy(&body[..body.len().min(100)]));
        }
        Ok(Conn::Sse(res.into_body()))
    }
}

/// One subscriber: connect (bounded, retried), then read until `stop`.
async fn subscriber(
    idx: usize,
    args: Arc<Args>,
    targets: Arc<Vec<Target>>,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
) -> SubResult {
    let src = Ipv4Addr::new(127, 0, 0, 1 + (idx % usize::from(args.sources.max(1))) as u8);
    let target = &targets[idx % targets.len()];
    let m = args.messages;
    let mut conn = None;
    {
        let Ok(_permit) = sem.acquire().await else {
            return SubResult::default();
        };
        for attempt in 0..args.attempts.max(1) {
            if stop.is_cancelled() {
                break;
            }
            match tokio::time::timeout(secs(args.connect_timeout), connect(&args, target, src)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    break;
                }
                Ok(Err(e)) => shared.error(format!("{e:#}")),
                Err(_) => shared.error("connect timeout".into()),
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
        }
    }
    let Some(conn) = conn else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return SubResult::default();
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut seen = Seen::new(m);
    seen.res.connected = true;
    match conn {
        Conn::Sse(mut body) => {
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let frame = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    f = body.frame() => f,
                };
                let data = match frame {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                    Some(Err(e)) => {
                        shared.error(format!("sse read: {e}"));
                        seen.res.closed_early = true;
                        break;
                    }
                    None => {
                        seen.res.closed_early = true;
                        break;
                    }
                };
                sse_lines(&mut carry, &data, |line| {
                    if line.starts_with(b"data:") {
                        seen.payload(line, m, &shared);
                    }
                });
            }
        }
        Conn::Ws(mut ws) => loop {
            let msg = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                f = ws.next() => f,
            };
            match msg {
                Some(Ok(Message::Text(t))) => seen.payload(t.as_bytes(), m, &shared),
                Some(Ok(Message::Binary(b))) => seen.payload(&b, m, &shared),
                Some(Ok(Message::Close(_))) | None => {
                    seen.res.closed_early = true;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    shared.error(format!("ws read: {e}"));
                    seen.res.closed_early = true;
                    break;
                }
            }
        },
    }
    if seen.res.closed_early {
        shared.first_close_ns.fetch_min(now_ns(), Ordering::Relaxed);
    }
    seen.res
}

/// Calls `f` on every complete line of `carry + data`; keeps the incomplete tail.
fn sse_lines(carry: &mut Vec<u8>, data: &[u8], mut f: impl FnMut(&[u8])) {
    let mut rest = data;
    if !carry.is_empty() {
        match rest.iter().position(|&c| c == b'\n') {
            Some(i) => {
                carry.extend_from_slice(&rest[..i]);
                f(carry.as_slice());
                carry.clear();
                rest = &rest[i + 1..];
            }
            None => {
                if carry.len() < 1 << 20 {
                    carry.extend_from_slice(rest);
                }
                return;
            }
        }
    }
    while let Some(i) = rest.iter().position(|&c| c == b'\n') {
        f(&rest[..i]);
        rest = &rest[i + 1..];
    }
    carry.extend_from_slice(rest);
}

/// utime + stime of a process, seconds (USER_HZ = 100).
fn proc_cpu(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ut + st) as f64 / 100.0)
}

/// Resident set, bytes.
fn proc_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Proportional set size, bytes (shared pages split between the processes sharing them).
fn proc_pss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn sum_pss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| proc_pss(p)).sum()
}

fn sum_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| proc_cpu(p)).sum()
}

fn sum_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| proc_rss(p)).sum()
}

/// Busy CPU time of the whole machine (all cores), seconds: user+nice+system+irq+softirq+steal.
fn machine_busy() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = s.lines().next() else {
        return 0.0;
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum::<u64>();
    busy as f64 / 100.0
}

fn self_cpu() -> f64 {
    proc_cpu(std::process::id()).unwrap_or(0.0)
}

/// Sends publishes, one in flight, in order.
struct Publisher {
    client: reqwest::Client,
    urls: Vec<String>,
    body: String,
    headers: reqwest::header::HeaderMap,
}

impl Publisher {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if args.pub_url.is_empty() {
            bail!("--pub-url is required");
        }
        for url in &args.pub_url {
            let uri: http::Uri = url.parse().with_context(|| format!("bad --pub-url {url:?}"))?;
            if uri.scheme_str() != Some("http") {
                bail!("--pub-url must be http://");
            }
            loopback(uri.host().unwrap_or(""))?;
        }
        let mut headers = reqwest::header::HeaderMap::new();
        let mut given = args.pub_header.clone();
        if given.is_empty() {
            given.push("Content-Type: application/json".into());
        }
        for h in &given {
            let (k, v) = h.split_once(':').ok_or_else(|| anyhow!("--pub-header {h:?}: want `Name: value`"))?;
            headers.insert(reqwest::header::HeaderName::from_bytes(k.trim().as_bytes())?, v.trim().parse()?);
        }
        let client =
            reqwest::Client::builder().no_proxy().pool_max_idle_per_host(2).timeout(Duration::from_secs(60)).build()?;
        Ok(Self { client, urls: args.pub_url.clone(), body: args.pub_body.clone(), headers })
    }

    /// Publishes message `n` (to URL `n` mod k); returns the call's duration.
    async fn publish(&self, n: i64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let url = &self.urls[n.unsigned_abs() as usize % self.urls.len()];
        let body = self.body.replace("{t}", &now_ns().to_string()).replace("{n}", &n.to_string());
        let res = self.client.post(url).headers(self.headers.clone()).body(body).send().await?;
        let status = res.status();
        let text = res.bytes().await.unwrap_or_default();
        if !status.is_success() {
            bail!("publish {status}: {}", String::from_utf8_lossy(&text[..text.len().min(200)]));
        }
        Ok(started.elapsed())
    }
}

/// `INFO stats commandstats cpu` of a Redis on 127.0.0.0/8 as numbers: every `key:value`
/// with a numeric value, `cmdstat_<name>` as its `calls` and `cmdstat_<name>_usec` as its `usec`.
async fn redis_info(addr: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| anyhow!("--redis-info {addr:?}: want HOST:PORT"))?;
    let addr = SocketAddr::new(IpAddr::V4(loopback(host)?), port.parse().context("--redis-info port")?);
    let mut s =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.context("redis connect")??;
    s.write_all(b"INFO stats commandstats cpu\r\n").await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    // Bulk reply `$<len>\r\n<text>\r\n`: read until all of it is here (bounded).
    let text = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let k = s.read(&mut chunk).await?;
            if k == 0 {
                bail!("redis closed the connection");
            }
            buf.extend_from_slice(&chunk[..k]);
            if let Some(i) = buf.iter().position(|&c| c == b'\n') {
                let head = buf.get(1..i.saturating_sub(1)).unwrap_or_default();
                let len: usize = std::str::from_utf8(head)?.parse().with_context(|| {
                    format!("redis reply {:?}", String::from_utf8_lossy(&buf[..buf.len().min(100)]))
                })?;
                if buf.len() >= i + 1 + len {
                    return Ok(String::from_utf8_lossy(&buf[i + 1..i + 1 + len]).into_owned());
                }
            }
        }
    })
    .await
    .context("redis INFO timeout")??;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        if let Some(cmd) = k.strip_prefix("cmdstat_") {
            for (field, suffix) in [("calls=", ""), ("usec=", "_usec")] {
                if let Some(x) = v.split(',').find_map(|f| f.strip_prefix(field)).and_then(|c| c.parse().ok()) {
                    out.insert(format!("cmdstat_{cmd}{suffix}"), x);
                }
            }
        } else if let Ok(x) = v.trim().parse::<f64>() {
            out.insert(k.to_owned(), x);
        }
    }
    Ok(out)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

fn round(x: f64, digits: i32) -> serde_json::Value {
    if !x.is_finite() {
        return serde_json::Value::Null;
    }
    let k = 10f64.powi(digits);
    serde_json::json!((x * k).round() / k)
}

#[tokio::main]
async fn main() {
    now_ns();
    let args = Args::parse();
    let hard = secs(args.timeout);
    let out = match tokio::time::timeout(hard, run(args.clone())).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => serde_json::json!({"label": args.label, "error": format!("{e:#}")}),
        Err(_) => serde_json::json!({"label": args.label, "error": format!("hard timeout after {}s", args.timeout)}),
    };
    println!("{out}");
    let code = i32::from(out.get("error").is_some());
    // Exit at once: dropping thousands of sockets and tasks gracefully is not needed.
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let targets = match (args.sse_url.as_slice(), args.ws_url.as_slice()) {
        (urls, []) if !urls.is_empty() => urls.iter().map(|u| parse_target(u, false)).collect::<Result<Vec<_>, _>>()?,
        ([], urls) if !urls.is_empty() => urls.iter().map(|u| parse_target(u, true)).collect::<Result<Vec<_>, _>>()?,
        _ => bail!("give --sse-url or --ws-url (either, repeatable), not both"),
    };
    let ws = targets[0].ws;
    if args.subscribers == 0 || args.messages == 0 || args.rate <= 0.0 {
        bail!("--subscribers, --messages and --rate must be positive");
    }
    let publisher = Publisher::new(&args)?;
    let args = Arc::new(args);
    let targets = Arc::new(targets);
    let n = args.subscribers;
    let m = args.messages;
    let pids = args.server_pid.clone();
    let shared = Arc::new(Shared {
        first_close_ns: AtomicU64::new(u64::MAX),
        first_latency_ns: (0..m).map(|_| AtomicU64::new(u64::MAX)).collect(),
        ..Shared::default()
    });
    let stop = CancellationToken::new();
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut human = Vec::new();

    // 1. RSS before.
    let rss_before = sum_rss(&pids);
    let pss_before = sum_pss(&pids);

    // 2. Connect.
    let t_connect = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for idx in 0..n {
        tasks.push(tokio::spawn(subscriber(
            idx,
            Arc::clone(&args),
            Arc::clone(&targets),
            Arc::clone(&shared),
            Arc::clone(&sem),
            stop.clone(),
        )));
    }
    let per_attempt = args.connect_timeout + 1.0;
    let connect_deadline =
        Instant::now() + secs(per_attempt * f64::from(args.attempts.max(1)) + n as f64 / 50.0 + 30.0);
    loop {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= n as u64 || Instant::now() > connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    let connected = shared.connected.load(Ordering::Relaxed);
    let failed = n as u64 - connected;
    human.push(format!("connected {connected}/{n} in {connect_s:.1}s ({failed} failed)"));
    if connected == 0 {
        stop.cancel();
        let errors = shared.errors.lock().map(|m| m.clone()).unwrap_or_default();
        bail!("no subscriber connected: {errors:?}");
    }

    // 3. Hold idle, then RSS after. Redis's idle CPU (its own timers, the servers' periodic
    // checks) is read over the hold, to tell it from the cost of the measured messages.
    let redis_idle0 = match &args.redis_info {
        Some(addr) => Some((redis_info(addr).await?, Instant::now())),
        None => None,
    };
    tokio::time::sleep(secs(args.hold)).await;
    let redis_idle_cpu_per_s = match (&redis_idle0, &args.redis_info) {
        (Some((a, t0)), Some(addr)) => {
            let b = redis_info(addr).await?;
            let cpu = |i: &BTreeMap<String, f64>| {
                i.get("used_cpu_sys").copied().unwrap_or(0.0) + i.get("used_cpu_user").copied().unwrap_or(0.0)
            };
            (cpu(&b) - cpu(a)) / t0.elapsed().as_secs_f64().max(1e-3)
        }
        _ => f64::NAN,
    };
    let rss_after = sum_rss(&pids);
    let pss_after = sum_pss(&pids);

    // 4. Probe until every connected subscriber has seen a probe.
    let t_probe = Instant::now();
    let mut probes = 0i64;
    let probe_deadline = Instant::now() + secs(args.probe_timeout);
    while shared.ready.load(Ordering::Relaxed) < shared.connected.load(Ordering::Relaxed)
        && Instant::now() < probe_deadline
    {
        probes += 1;
        if let Err(e) = publisher.publish(-probes).await {
            shared.error(format!("probe: {e:#}"));
        }
        let wait_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < wait_until
            && shared.ready.load(Ordering::Relaxed) < shared.connected.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let ready = shared.ready.load(Ordering::Relaxed);
    // Let the probes' deliveries drain (bounded) so they do not overlap the measurement.
    let want_probe = ready * probes as u64;
    let drain_until = Instant::now() + Duration::from_secs(10);
    let mut last_seen = (shared.probe_deliveries.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < drain_until {
        let got = shared.probe_deliveries.load(Ordering::Relaxed);
        if got >= want_probe {
            break;
        }
        if got != last_seen.0 {
            last_seen = (got, Instant::now());
        } else if last_seen.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    human.push(format!("ready {ready}/{connected} after {probes} probe(s) in {:.1}s", t_probe.elapsed().as_secs_f64()));

    // 5. Measured phase.
    let expected = connected * m as u64;
    let redis0 = match &args.redis_info {
        Some(addr) => Some(redis_info(addr).await?),
        None => None,
    };
    let aux0 = sum_cpu(&args.aux_pid);
    let cpu0 = sum_cpu(&pids);
    let self0 = self_cpu();
    let busy0 = machine_busy();
    let first_pub_ns = now_ns();
    let wall0 = Instant::now();
    let publisher = Arc::new(publisher);
    let pub_task = {
        let publisher = Arc::clone(&publisher);
        let shared = Arc::clone(&shared);
        let rate = args.rate;
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut errors = 0u64;
            let mut durations = Vec::with_capacity(m);
            for i in 0..m {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                match publisher.publish(i as i64).await {
                    Ok(d) => durations.push(d.as_nanos() as u64),
                    Err(e) => {
                        errors += 1;
                        shared.error(format!("{e:#}"));
                    }
                }
            }
            (errors, durations, start.elapsed())
        })
    };
    let mut pub_task = Some(pub_task);
    let mut pub_result = None;
    let mut last = (0u64, Instant::now());
    let mut end_reason = "all delivered";
    loop {
        if let Some(t) = pub_task.as_ref()
            && t.is_finished()
            && let Some(t) = pub_task.take()
        {
            pub_result = t.await.ok();
        }
        let got = shared.received.load(Ordering::Relaxed);
        if got >= expected && pub_result.is_some() {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if pub_result.is_some() && last.1.elapsed() > secs(args.idle_timeout) {
            end_reason = "idle timeout";
            break;
        }
        if wall0.elapsed() > secs(args.timeout) {
            end_reason = "deadline";
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu1 = sum_cpu(&pids);
    let aux1 = sum_cpu(&args.aux_pid);
    let self1 = self_cpu();
    let busy1 = machine_busy();
    let wall = wall0.elapsed().as_secs_f64();
    let redis1 = match &args.redis_info {
        Some(addr) => redis_info(addr).await.ok(),
        None => None,
    };
    stop.cancel();

    // 6. Collect and report.
    let mut lat = Vec::with_capacity(expected as usize);
    let (mut unique, mut dups, mut unexpected, mut closed_early) = (0u64, 0u64, 0u64, 0u64);
    let mut per_target = vec![serde_json::json!({"connected": 0, "received": 0, "duplicates": 0}); targets.len()];
    let collect_deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (idx, t) in tasks.into_iter().enumerate() {
        if let Ok(Ok(r)) = tokio::time::timeout_at(collect_deadline, t).await {
            let pt = &mut per_target[idx % targets.len()];
            for (k, v) in [("connected", u64::from(r.connected)), ("received", r.unique), ("duplicates", r.duplicates)]
            {
                pt[k] = serde_json::json!(pt[k].as_u64().unwrap_or(0) + v);
            }
            unique += r.unique;
            dups += r.duplicates;
            unexpected += r.unexpected;
            closed_early += u64::from(r.connected && r.closed_early);
            lat.extend_from_slice(&r.latencies_ns);
        }
    }
    lat.sort_unstable();
    let last_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    let span_s = last_ns.saturating_sub(first_pub_ns) as f64 / 1e9;
    let dps = if span_s > 0.0 { unique as f64 / span_s } else { f64::NAN };
    let lost = expected.saturating_sub(unique) + dups;
    let (pub_errors, pub_durs, pub_elapsed) = pub_result.unwrap_or((m as u64, Vec::new(), Duration::ZERO));
    let mut pub_durs = pub_durs;
    pub_durs.sort_unstable();
    let pub_rate = if pub_elapsed.as_secs_f64() > 0.0 { m as f64 / pub_elapsed.as_secs_f64() } else { f64::NAN };
    let server_cpu = cpu1 - cpu0;
    let cpu_us_per = if unique > 0 && !pids.is_empty() { server_cpu * 1e6 / unique as f64 } else { f64::NAN };
    let idle_kib =
        if pids.is_empty() { f64::NAN } else { (rss_after as f64 - rss_before as f64) / connected as f64 / 1024.0 };
    let idle_kib_pss =
        if pids.is_empty() { f64::NAN } else { (pss_after as f64 - pss_before as f64) / connected as f64 / 1024.0 };
    let tool_cpu = self1 - self0;
    // CPU used by everything else on the machine while we measured (other jobs = noise;
    // --aux-pid processes are not "other").
    let other_cpu = ((busy1 - busy0) - server_cpu - tool_cpu - (aux1 - aux0)).max(0.0);
    let aux_cpu = aux1 - aux0;
    let aux_us_per = if unique > 0 && !args.aux_pid.is_empty() { aux_cpu * 1e6 / unique as f64 } else { f64::NAN };
    let published = m as u64 - pub_errors;
    let redis = match (&redis0, &redis1) {
        (Some(a), Some(b)) => {
            let d = |k: &str| b.get(k).copied().unwrap_or(0.0) - a.get(k).copied().unwrap_or(0.0);
            let cpu = d("used_cpu_sys") + d("used_cpu_user");
            let per_msg = |x: f64| if published > 0 { x / published as f64 } else { f64::NAN };
            // Above the idle baseline measured over the hold: what the messages cost.
            let cpu_net = (cpu - redis_idle_cpu_per_s * wall).max(0.0);
            let evalsha_usec = d("cmdstat_evalsha_usec") / d("cmdstat_evalsha").max(1.0);
            human.push(format!(
                "redis: {:.0} commands ({:.1}/message, {:.0}/s), {:.0} EVALSHA ({evalsha_usec:.1} µs each inside Redis), {:.0} PUBLISH, CPU {cpu:.2}s = {:.1} µs/message ({:.1} above the idle {:.1}% of a core)",
                d("total_commands_processed"),
                per_msg(d("total_commands_processed")),
                d("total_commands_processed") / wall,
                d("cmdstat_evalsha"),
                d("cmdstat_publish"),
                per_msg(cpu) * 1e6,
                per_msg(cpu_net) * 1e6,
                redis_idle_cpu_per_s * 100.0
            ));
            serde_json::json!({
                "commands": d("total_commands_processed"),
                "commands_per_s": round(d("total_commands_processed") / wall, 0),
                "commands_per_message": round(per_msg(d("total_commands_processed")), 2),
                "evalsha": d("cmdstat_evalsha"),
                "publish": d("cmdstat_publish"),
                "cpu_s": round(cpu, 3),
                "cpu_us_per_message": round(per_msg(cpu) * 1e6, 1),
                "idle_cpu_pct": round(redis_idle_cpu_per_s * 100.0, 2),
                "cpu_us_per_message_above_idle": round(per_msg(cpu_net) * 1e6, 1),
                "evalsha_usec_per_call": round(evalsha_usec, 1),
                "cpu_us_per_delivery": round(if unique > 0 { cpu * 1e6 / unique as f64 } else { f64::NAN }, 3),
            })
        }
        _ => serde_json::Value::Null,
    };
    if !args.aux_pid.is_empty() {
        human.push(format!("aux processes CPU {aux_cpu:.2}s = {aux_us_per:.3} µs/delivery"));
    }
    let errors = shared.errors.lock().map(|m| m.clone()).unwrap_or_default();
    let first_close = shared.first_close_ns.load(Ordering::Relaxed);
    let first_close_s =
        if first_close == u64::MAX { f64::NAN } else { (first_close as f64 - first_pub_ns as f64) / 1e9 };
    let kind = if ws { "ws" } else { "sse" };
    let mut first: Vec<u64> =
        shared.first_latency_ns.iter().map(|a| a.load(Ordering::Relaxed)).filter(|&x| x != u64::MAX).collect();
    first.sort_unstable();

    human.push(format!(
        "{kind} {connected}x{m}: {unique}/{expected} delivered ({lost} lost, {dups} dup, {unexpected} unexpected, {closed_early} closed early), {end_reason}"
    ));
    human.push(format!(
        "deliveries/s {dps:.0} over {span_s:.2}s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    ));
    human.push(format!(
        "first delivery of each message: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&first, 0.5),
        percentile(&first, 0.99)
    ));
    human.push(format!(
        "publish: {m} at {pub_rate:.1}/s achieved ({pub_errors} errors), call p50 {:.1} ms, max {:.1} ms",
        percentile(&pub_durs, 0.5),
        percentile(&pub_durs, 1.0)
    ));
    human.push(format!(
        "server CPU {server_cpu:.2}s = {cpu_us_per:.2} µs/delivery; tool CPU {tool_cpu:.2}s ({:.0}% of a core over {wall:.1}s)",
        100.0 * tool_cpu / wall
    ));
    human.push(format!(
        "other processes on the machine used {other_cpu:.2}s CPU ({:.0}% of a core) meanwhile",
        100.0 * other_cpu / wall
    ));
    human.push(format!(
        "server RSS {:.1} MiB -> {:.1} MiB idle with {connected} conns = {idle_kib:.2} KiB/conn (PSS {idle_kib_pss:.2})",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    ));
    if first_close_s.is_finite() {
        human.push(format!("first stream closed by the server {first_close_s:.2}s after the first publish"));
    }
    for (e, c) in &errors {
        human.push(format!("error x{c}: {e}"));
    }
    for line in &human {
        eprintln!("loadgen: {line}");
    }

    let mut out = serde_json::json!({
        "label": args.label,
        "transport": kind,
        "subscribers": n,
        "connected": connected,
        "connect_failed": failed,
        "connect_s": round(connect_s, 2),
        "ready": ready,
        "probes": probes,
        "messages": m,
        "rate_target": args.rate,
        "publish_rate": round(pub_rate, 1),
        "publish_errors": pub_errors,
        "publish_call_p50_ms": round(percentile(&pub_durs, 0.5), 2),
        "publish_call_max_ms": round(percentile(&pub_durs, 1.0), 2),
        "expected": expected,
        "received": unique,
        "duplicates": dups,
        "unexpected": unexpected,
        "closed_early": closed_early,
        "first_close_s": round(first_close_s, 2),
        "lost": lost,
        "end": end_reason,
        "span_s": round(span_s, 3),
        "deliveries_per_s": round(dps, 0),
        "p50_ms": round(percentile(&lat, 0.5), 2),
        "p99_ms": round(percentile(&lat, 0.99), 2),
        "max_ms": round(percentile(&lat, 1.0), 2),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_delivery": round(cpu_us_per, 2),
        "server_rss_before": rss_before,
        "server_rss_after": rss_after,
        "idle_kib_per_conn": round(idle_kib, 2),
        "server_pss_before": pss_before,
        "server_pss_after": pss_after,
        "idle_kib_per_conn_pss": round(idle_kib_pss, 2),
        "tool_cpu_s": round(tool_cpu, 2),
        "tool_cpu_pct": round(100.0 * tool_cpu / wall, 1),
        "measure_wall_s": round(wall, 2),
        "other_cpu_pct": round(100.0 * other_cpu / wall, 1),
        "errors": errors,
    });
    // Added apart: one json! with every field exceeds the macro recursion limit.
    let extra = [
        ("aux_cpu_s", round(aux_cpu, 2)),
        ("aux_cpu_us_per_delivery", round(aux_us_per, 3)),
        ("redis", redis),
        ("targets", serde_json::json!(targets.len())),
        ("per_target", serde_json::json!(per_target)),
        ("publish_urls", serde_json::json!(args.pub_url.len())),
        ("first_p50_ms", round(percentile(&first, 0.5), 3)),
        ("first_p99_ms", round(percentile(&first, 0.99), 3)),
    ];
    for (k, v) in extra {
        out[k] = v;
    }
    Ok(out)
}
