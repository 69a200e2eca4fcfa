//! Pass-through on HTTP/1.1 without hyper (issue 11): the request head is parsed
//! once (httparse), rewritten straight into the bytes the backend gets, and the
//! response head likewise; bodies are copied between the two sockets as they come,
//! chunked ones byte for byte ([`super::framing`]). No header map, no per-request
//! task or channel: the backend connection ([`super::pool`]) is driven by the client
//! connection's own task. This is what nginx and Pingora do; through hyper's two
//! codecs a request cost 1.5× nginx's CPU.
//!
//! Served on plain (h1c) connections and on TLS connections that did not pick HTTP/2 by
//! ALPN; every response is flushed before the next request is read.
//!
//! Only plain requests are taken: an HTTP/1.1 pass-through route, a `Host`, an
//! origin-form target, no `Transfer-Encoding`, `Expect` or `Upgrade`, and a body (by
//! `Content-Length`) of at most [`MAX_BODY`] bytes, read whole before it is sent. The
//! first request that is anything else — HTTP/1.0, HTTP/2, a realtime route, an
//! upload, a head hyper must refuse — goes to hyper with every byte read so far
//! ([`Handoff::Hyper`]), and hyper serves the connection from then on. An SSE `GET`
//! as the first request goes to [`crate::sse::h1`].
//!
//! The rules are SPEC §8's, as `proxy::forward` applies them: hop-by-hop headers (and
//! those `Connection` names) removed both ways, `X-Forwarded-*` set, 502/504 with the
//! same plain bodies. Different from hyper's path: header order and case are kept as
//! the client and backend sent them; a chunked response (trailers included) passes
//! unchanged; a response without framing ends with the backend's close and closes the
//! client connection (`connection: close`).
//! An idempotent request whose kept-alive backend connection turns out closed before
//! any byte of the answer is retried once on a new connection.

use std::io::IoSlice;
use std::time::{Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::framing::{Chunked, Framing};
use super::pool::{self, Conn};
use super::{Peer, Proxy, ProxyError};
use crate::State;
use crate::config::{Config, Transport};
use crate::respond::Rejection;
use crate::router::{self, Route};

/// Largest request body taken here: it is read whole, then sent with the head in one
/// write. A larger one is streamed by hyper's path.
pub const MAX_BODY: usize = 16 * 1024;
/// hyper's default limit on the number of headers, both ways.
const MAX_HEADERS: usize = 100;
/// The first read of a request head; a longer head grows the buffer up to
/// `limits.max_header_bytes`.
const FIRST_READ: usize = 4096;
/// Most `Connection` headers one message may carry here.
const MAX_CONNECTION_HEADERS: usize = 8;

/// Where a connection goes when this path is done with it.
pub enum Handoff {
    /// To hyper, with the bytes read from the connection and not yet served; `served`
    /// says whether requests were served here before.
    Hyper { read: Bytes, served: bool },
    /// The first request is an SSE `GET` ([`crate::sse::h1::serve`]).
    Sse(Box<Request<()>>),
    /// Closed, or to be closed: why, for the debug log.
    Closed(&'static str),
}

/// Serves the pass-through requests of a plain HTTP/1.1 connection until one is not
/// for this path, or the connection ends. `deadline` bounds the wait for the first
/// head; each later one gets `limits.header_read_timeout` from the end of the last
/// response, which also closes idle kept-alive connections.
pub async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    state: &State,
    peer: Peer,
    deadline: tokio::time::Instant,
) -> Handoff {
    let client = Client { peer, ip: peer.addr.ip().to_canonical().to_string() };
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut deadline = deadline;
    let mut served = false;
    loop {
        let config = state.config.load_full();
        let mut scanned = 0;
        let plan = loop {
            // A head is parsed only once its end may be there: a head sent a byte at a
            // time must not cost a parse per byte.
            let decision =
                if may_end_head(&buf, scanned) { decide(&buf, &config, &client, &mut out) } else { Decision::Partial };
            scanned = buf.len();
            match decision {
                Decision::Pass(plan) => break plan,
                Decision::Partial if buf.len() < config.limits.max_header_bytes => {}
                Decision::Sse if !served => {
                    return match crate::sse::h1::claim(&buf, &config) {
                        crate::sse::h1::Claim::Sse(req) => Handoff::Sse(req),
                        _ => Handoff::Hyper { read: buf.freeze(), served },
                    };
                }
                // Over the size limit (hyper answers 431), or not for this path.
                Decision::Partial | Decision::Sse | Decision::Hyper => {
                    return Handoff::Hyper { read: buf.freeze(), served };
                }
            }
            if let Err(why) = read_head(io, &mut buf, state, deadline, served).await {
                return match why {
                    Cut::Partial => Handoff::Hyper { read: buf.freeze(), served },
                    Cut::Gone(why) => Handoff::Closed(why),
                };
            }
        };
        if plan.body_len > 0 && !read_body(io, &mut buf, &plan, &config).await {
            // A body that stalls or breaks off: hyper answers it (408 or 400).
            return Handoff::Hyper { read: buf.freeze(), served };
        }
        let close = exchange(io, &mut buf, &mut out, &plan, state, &client).await;
        served = true;
        // Over TLS the end of a response may still sit in the session's buffer (a no-op
        // on TCP): it goes out before the wait for the next request, or the close.
        if io.flush().await.is_err() {
            return Handoff::Closed("the client connection failed");
        }
        if close {
            return Handoff::Closed("closed after a pass-through response");
        }
        deadline = tokio::time::Instant::now() + config.limits.header_read_timeout;
    }
}

/// Whether `buf` holds an empty line (`\n\n` or `\n\r\n`, as httparse reads it) that
/// ends after `from`.
fn may_end_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(2)..];
    tail.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (tail.get(i + 1) == Some(&b'\n') || tail.get(i + 1..i + 3) == Some(b"\r\n")))
}

/// Why no complete head came.
enum Cut {
    /// The client closed after part of a head: hyper answers what it can.
    Partial,
    Gone(&'static str),
}

/// Reads more of a request head, by `deadline`; between requests the drain closes the
/// connection.
async fn read_head<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    state: &State,
    deadline: tokio::time::Instant,
    served: bool,
) -> Result<(), Cut> {
    buf.reserve(FIRST_READ);
    let idle = buf.is_empty();
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, io.read_buf(buf)) => read,
        () = state.shutdown.cancelled(), if idle && served => return Err(Cut::Gone("draining: idle connection closed")),
    };
    match read {
        Err(_) if idle && served => Err(Cut::Gone("idle for header_read_timeout between requests; closed")),
        Err(_) => Err(Cut::Gone("no request head within header_read_timeout; closed")),
        Ok(Ok(0)) if buf.is_empty() => Err(Cut::Gone("closed by the client")),
        Ok(Ok(0)) => Err(Cut::Partial),
        Ok(Err(_)) => Err(Cut::Gone("read failed")),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Reads until the request's whole body is in `buf`; `false` if it stalls for
/// `limits.body_read_timeout` or the client closes first.
async fn read_body<T: AsyncRead + Unpin>(io: &mut T, buf: &mut BytesMut, plan: &Plan, config: &Config) -> bool {
    let want = plan.head_len + plan.body_len;
    while buf.len() < want {
        buf.reserve(want - buf.len());
        match tokio::time::timeout(config.limits.body_read_timeout, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
    true
}

/// The client connection's constants.
struct Client {
    peer: Peer,
    /// The peer's address as `X-Forwarded-For` gets it.
    ip: String,
}

enum Decision {
    /// No complete head yet.
    Partial,
    /// A pass-through request for this path; its backend head is in `out`.
    Pass(Plan),
    /// An SSE route.
    Sse,
    /// Anything else.
    Hyper,
}

/// A request taken by this path.
struct Plan {
    head_len: usize,
    body_len: usize,
    /// `HEAD`: the answer has no body, whatever it says.
    head_only: bool,
    /// Safe to send again if a kept-alive connection fails before any answer.
    idempotent: bool,
    /// The client said `Connection: close`.
    close: bool,
    /// Method and path, only when the access log is on.
    log: Option<(String, String)>,
}

/// The headers this path looks at, by name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Te,
    /// `Expect`, `Upgrade`: requests that carry them are hyper's.
    NotHere,
    /// Hop-by-hop otherwise: `Keep-Alive`, `Proxy-*`, and on responses `Upgrade`.
    Hop,
    Date,
    XForwardedFor,
    /// `X-Forwarded-Proto` and `-Host`: replaced, whatever the client claimed.
    XForwardedOther,
    Other,
}

fn name(n: &str) -> Name {
    let is = |s: &str| n.eq_ignore_ascii_case(s);
    match n.len() {
        2 if is("te") => Name::Te,
        4 if is("host") => Name::Host,
        4 if is("date") => Name::Date,
        6 if is("expect") => Name::NotHere,
        7 if is("upgrade") => Name::NotHere,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::Hop,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::XForwardedFor,
        16 if is("proxy-connection") => Name::Hop,
        16 if is("x-forwarded-host") => Name::XForwardedOther,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::XForwardedOther,
        18 if is("proxy-authenticate") => Name::Hop,
        19 if is("proxy-authorization") => Name::Hop,
        _ => Name::Other,
    }
}

/// The comma-separated tokens of header values.
fn tokens<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'a {
    values.iter().flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii)
}

fn has_token(values: &[&[u8]], token: &str) -> bool {
    tokens(values).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// `Connection` header values, as many as this path takes.
#[derive(Default)]
struct ConnectionValues<'a> {
    values: [&'a [u8]; MAX_CONNECTION_HEADERS],
    len: usize,
}

impl<'a> ConnectionValues<'a> {
    /// `false` when there are too many.
    fn push(&mut self, v: &'a [u8]) -> bool {
        let Some(slot) = self.values.get_mut(self.len) else { return false };
        *slot = v;
        self.len += 1;
        true
    }

    fn get(&self) -> &[&'a [u8]] {
        &self.values[..self.len]
    }

    /// Whether a header is named in `Connection` (so hop-by-hop).
    fn names(&self, header: &str) -> bool {
        self.len > 0 && has_token(self.get(), header)
    }
}

/// Parses a request head and, when this path takes it, writes the backend's head
/// into `out`. Synchronous: the header array stays off the connection's future.
fn decide(buf: &[u8], config: &Config, client: &Client, out: &mut BytesMut) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Decision::Partial,
        Err(_) => return Decision::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Decision::Hyper;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Decision::Hyper;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match router::route(config, path) {
        Route::PassThrough => {}
        Route::Realtime(r, _) if r.transport == Transport::Sse => return Decision::Sse,
        _ => return Decision::Hyper,
    }
    let mut host = None;
    let mut hosts = 0;
    let mut length = None;
    let mut connection = ConnectionValues::default();
    let mut trailers = false;
    for h in req.headers.iter() {
        match name(h.name) {
            Name::Host => {
                hosts += 1;
                host = Some(h.value);
            }
            Name::ContentLength if length.is_none() => match content_length(h.value) {
                Some(n) => length = Some(n),
                None => return Decision::Hyper,
            },
            // Several lengths (hyper merges equal ones, refuses others), or a coding.
            Name::ContentLength | Name::TransferEncoding | Name::NotHere => return Decision::Hyper,
            Name::Connection if !connection.push(h.value) => return Decision::Hyper,
            Name::Te => trailers |= has_token(&[h.value], "trailers"),
            _ => {}
        }
    }
    let body_len = match length {
        None => 0,
        Some(n) if n <= MAX_BODY as u64 => n as usize,
        Some(_) => return Decision::Hyper,
    };
    let Some(host) = host.filter(|_| hosts == 1) else { return Decision::Hyper };
    if has_token(connection.get(), "upgrade") {
        return Decision::Hyper;
    }
    out.clear();
    out.reserve(head_len + 256);
    for part in [method.as_bytes(), b" ", config.backend.base_path.as_bytes(), target.as_bytes(), b" HTTP/1.1\r\n"] {
        out.put_slice(part);
    }
    for h in req.headers.iter() {
        match name(h.name) {
            Name::Connection | Name::Hop | Name::Te | Name::XForwardedFor | Name::XForwardedOther => {}
            _ if connection.names(h.name) => {}
            _ => put_header(out, h.name.as_bytes(), h.value),
        }
    }
    forwarded(out, req.headers, client, host);
    if trailers {
        out.put_slice(b"te: trailers\r\n");
    }
    out.put_slice(b"\r\n");
    let log = tracing::enabled!(target: "sidewire::access", tracing::Level::DEBUG)
        .then(|| (method.to_owned(), path.to_owned()));
    Decision::Pass(Plan {
        head_len,
        body_len,
        head_only: method == "HEAD",
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
        close: has_token(connection.get(), "close"),
        log,
    })
}

/// Writes the `X-Forwarded-*` headers: the client's chain (its `X-Forwarded-For`
/// values, in order) with the peer appended, the scheme, and the client's `Host`.
fn forwarded(out: &mut BytesMut, headers: &[httparse::Header<'_>], client: &Client, host: &[u8]) {
    out.put_slice(b"x-forwarded-for: ");
    for h in headers.iter().filter(|h| name(h.name) == Name::XForwardedFor) {
        out.put_slice(h.value);
        out.put_slice(b", ");
    }
    out.put_slice(client.ip.as_bytes());
    out.put_slice(if client.peer.tls {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    put_header(out, b"x-forwarded-host", host);
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), no sign, no list.
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Sends the request, reads the answer's head, writes the response to the client and
/// copies its body. Returns whether the client connection must close.
async fn exchange<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    plan: &Plan,
    state: &State,
    client: &Client,
) -> bool {
    let started = Instant::now();
    let proxy = state.backend.pool();
    // The whole body is in `buf`: it leaves with the head, in one write.
    out.extend_from_slice(&buf[plan.head_len..plan.head_len + plan.body_len]);
    buf.advance(plan.head_len + plan.body_len);
    let answered = tokio::time::timeout(proxy.backend.timeout, ask(&proxy, out, plan, state)).await;
    let (mut conn, head) = match answered {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return refuse(io, &proxy, state, plan, e).await,
        Err(_) => return refuse(io, &proxy, state, plan, ProxyError::BackendTimeout(proxy.backend.timeout)).await,
    };
    state.metrics.upstream_latency(started.elapsed());
    // A body that breaks its framing in what came with the head is still a 502: nothing
    // has been written to the client yet.
    let mut framing = head.framing;
    let first = match framing.take(&conn.buf) {
        Ok(first) => first,
        Err(e) => return refuse(io, &proxy, state, plan, ProxyError::BackendFailed(e.to_string())).await,
    };
    state.metrics.request(http::StatusCode::from_u16(head.status).unwrap_or(http::StatusCode::BAD_GATEWAY));
    if let Some((method, path)) = &plan.log {
        tracing::debug!(target: "sidewire::access", %method, %path, status = head.status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3, peer = %client.peer.addr);
    }
    let close = plan.close || head.framing == Framing::Close || state.shutdown.is_triggered();
    match relay(io, &mut conn, out, framing, first, proxy.backend.read_buffer_bytes.max(FIRST_READ)).await {
        Relayed::Whole { extra } => {
            if head.keep && !extra {
                pool::checkin(&proxy, &state.shutdown, conn);
            }
            close
        }
        Relayed::Cut => true,
    }
}

/// A backend answer's head, rewritten for the client into `out`.
struct Head {
    status: u16,
    framing: Framing,
    /// The backend connection may serve another request once this body is read.
    keep: bool,
}

/// Sends the request in `out` on a kept-alive or new connection and reads until the
/// head of a final answer is complete, then rewrites it into `out`. A kept-alive
/// connection that fails before any byte of an answer gets an idempotent request
/// again, once, on a new connection.
async fn ask(proxy: &Proxy, out: &mut BytesMut, plan: &Plan, state: &State) -> Result<(Conn, Head), ProxyError> {
    let max = proxy.backend.read_buffer_bytes.max(FIRST_READ);
    let mut fresh = false;
    let mut conn = loop {
        let (mut conn, pooled) = match if fresh { None } else { pool::checkout(proxy) } {
            Some(conn) => (conn, true),
            None => (pool::connect(proxy).await?, false),
        };
        conn.buf.clear();
        conn.buf.reserve(max);
        let sent = match conn.io.write_all(out).await {
            Ok(()) => conn.io.read_buf(&mut conn.buf).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(n) if n > 0 => break conn,
            Err(_) | Ok(_) if pooled && plan.idempotent => fresh = true,
            Ok(_) => {
                return Err(ProxyError::BackendFailed("the backend closed the connection without answering".into()));
            }
            Err(e) => return Err(ProxyError::BackendFailed(format!("backend connection: {e}"))),
        }
    };
    let close = plan.close || state.shutdown.is_triggered();
    loop {
        match answer(&conn.buf, plan.head_only, close, out) {
            Answer::Final(len, head) => {
                conn.buf.advance(len);
                return Ok((conn, head));
            }
            Answer::Interim(len) => {
                conn.buf.advance(len);
                continue;
            }
            Answer::Bad(why) => return Err(ProxyError::BackendFailed(why.into())),
            Answer::Partial if conn.buf.len() >= max => {
                return Err(ProxyError::BackendFailed("response head larger than backend.read_buffer_bytes".into()));
            }
            Answer::Partial => {}
        }
        conn.buf.reserve(max - conn.buf.len());
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(n) if n > 0 => {}
            Ok(_) => return Err(ProxyError::BackendFailed("the backend closed the connection mid-head".into())),
            Err(e) => return Err(ProxyError::BackendFailed(format!("backend connection: {e}"))),
        }
    }
}

enum Answer {
    Partial,
    /// A 1xx other than 101, this long: skipped, as hyper's client does.
    Interim(usize),
    /// The final head, this long.
    Final(usize, Head),
    Bad(&'static str),
}

/// Parses a response head and rewrites it for the client into `out`: hop-by-hop
/// headers out, `date` in if missing, `connection: close` when the client connection
/// will close (`close`, or a body that ends with the backend's close).
fn answer(buf: &[u8], head_only: bool, close: bool, out: &mut BytesMut) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Answer::Partial,
        Err(_) => return Answer::Bad("malformed response head"),
    };
    let (Some(status), Some(version)) = (res.code, res.version) else { return Answer::Bad("malformed status line") };
    match status {
        101 => return Answer::Bad("101 to a request that asked for no upgrade"),
        100..=199 => return Answer::Interim(len),
        200..=999 => {}
        _ => return Answer::Bad("status code out of range"),
    }
    let mut connection = ConnectionValues::default();
    let mut length = None;
    let mut coded = false;
    let mut chunked = false;
    let mut dated = false;
    for h in res.headers.iter() {
        match name(h.name) {
            Name::Connection if !connection.push(h.value) => return Answer::Bad("too many Connection headers"),
            Name::ContentLength => match (content_length(h.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Answer::Bad("bad or conflicting Content-Length"),
            },
            Name::TransferEncoding => {
                coded = true;
                chunked = tokens(&[h.value]).last().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            }
            Name::Date => dated = true,
            _ => {}
        }
    }
    let framing = if head_only || status == 204 || status == 304 {
        Framing::Empty
    } else if coded && chunked {
        Framing::Chunked(Chunked::default())
    } else if coded {
        return Answer::Bad("a transfer coding other than chunked");
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    let keep = version == 1 && !has_token(connection.get(), "close") && framing != Framing::Close;
    out.clear();
    out.reserve(len + 64);
    out.put_slice(b"HTTP/1.1 ");
    // 200..=999: three digits.
    out.put_slice(&[b'0' + (status / 100) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]);
    out.put_u8(b' ');
    out.put_slice(res.reason.unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for h in res.headers.iter() {
        match name(h.name) {
            Name::Connection | Name::Hop | Name::Te | Name::NotHere | Name::TransferEncoding => {}
            Name::ContentLength if coded => {}
            _ if connection.names(h.name) => {}
            _ => put_header(out, h.name.as_bytes(), h.value),
        }
    }
    if coded && !matches!(framing, Framing::Empty) {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if !dated {
        put_date(out);
    }
    if close || framing == Framing::Close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    Answer::Final(len, Head { status, framing, keep })
}

/// `date: <now>\r\n`, formatted once a second per thread.
fn put_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        put_header(out, b"date", text.as_bytes());
    });
}

enum Relayed {
    /// The body was written to its end; `extra`: the backend sent bytes after it.
    Whole { extra: bool },
    /// Either side failed mid-body: the client connection must close unfinished.
    Cut,
}

/// Writes the response head in `out` and the body after it, as the backend sends it;
/// `first` is what `framing` took of the bytes read with the head.
async fn relay<T: AsyncWrite + Unpin>(
    io: &mut T,
    conn: &mut Conn,
    out: &BytesMut,
    mut framing: Framing,
    first: (usize, bool),
    max: usize,
) -> Relayed {
    let (n, mut done) = first;
    if write_two(io, out, &conn.buf[..n]).await.is_err() {
        return Relayed::Cut;
    }
    let mut extra = conn.buf.len() > n;
    while !done {
        conn.buf.clear();
        conn.buf.reserve(max);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if framing == Framing::Close => break,
            Ok(0) | Err(_) => return Relayed::Cut,
            Ok(_) => {}
        }
        let Ok((n, end)) = framing.take(&conn.buf) else { return Relayed::Cut };
        if io.write_all(&conn.buf[..n]).await.is_err() {
            return Relayed::Cut;
        }
        done = end;
        extra = conn.buf.len() > n;
    }
    Relayed::Whole { extra }
}

/// Writes `a` then `b`, in one system call when the socket takes both.
async fn write_two<T: AsyncWrite + Unpin>(io: &mut T, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
    while !a.is_empty() {
        if b.is_empty() {
            return io.write_all(a).await;
        }
        let n = io.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    io.write_all(b).await
}

/// Answers a failed request (502/504, as `proxy::forward` does); returns whether the
/// connection must close. The request was read whole, so the connection can serve the
/// next one, as hyper's path does.
async fn refuse<T: AsyncWrite + Unpin>(io: &mut T, proxy: &Proxy, state: &State, plan: &Plan, e: ProxyError) -> bool {
    state.metrics.upstream_error(e.kind());
    super::backend_failed(proxy, &e);
    let res = Rejection::from(e).into_response();
    state.metrics.request(res.status());
    if let Some((method, path)) = &plan.log {
        tracing::debug!(target: "sidewire::access", %method, %path, status = res.status().as_u16());
    }
    let close = plan.close || state.shutdown.is_triggered();
    crate::respond::write_h1(io, res, close).await.is_err() || close
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(head: &str, head_only: bool, close: bool) -> (String, Head) {
        let mut out = BytesMut::new();
        match answer(head.as_bytes(), head_only, close, &mut out) {
            Answer::Final(n, h) => {
                assert_eq!(n, head.len());
                (String::from_utf8(out.to_vec()).unwrap(), h)
            }
            _ => panic!("not a final head: {head}"),
        }
    }

    #[test]
    fn response_heads_lose_hop_headers_and_keep_the_rest() {
        let (out, head) = answered(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-App: yes\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-App: yes\r\n\r\n"
        );
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep);
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nDate: x\r\n\r\n";
        let (out, head) = answered(chunked, false, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nDate: x\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(matches!(head.framing, Framing::Chunked(_)));
        let (out, head) = answered("HTTP/1.1 200 OK\r\nDate: x\r\n\r\n", false, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nDate: x\r\nconnection: close\r\n\r\n");
        assert_eq!((head.framing, head.keep), (Framing::Close, false));
        let (_, head) = answered("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nDate: x\r\n\r\n", true, false);
        assert_eq!(head.framing, Framing::Empty);
        let (_, head) = answered("HTTP/1.1 304 Not Modified\r\nDate: x\r\n\r\n", false, false);
        assert_eq!((head.framing, head.keep), (Framing::Empty, true));
        let (_, head) =
            answered("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\nDate: x\r\n\r\n", false, false);
        assert!(!head.keep);
        let (_, head) = answered("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nDate: x\r\n\r\n", false, false);
        assert!(!head.keep);
        let mut out = BytesMut::new();
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(matches!(answer(bad.as_bytes(), false, false, &mut out), Answer::Bad(_)), "{bad}");
        }
        assert!(matches!(
            answer(b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n", false, false, &mut out),
            Answer::Interim(37)
        ));
    }

    #[test]
    fn a_head_end_is_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 0..head.len() {
            let found = may_end_head(&head[..split], 0) || may_end_head(head, split);
            assert!(found, "split at {split}");
            assert!(!may_end_head(&head[..head.len() - 1], 0));
        }
        assert!(may_end_head(b"GET / HTTP/1.1\nHost: a\n\n", 20));
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b"42"), Some(42));
        assert_eq!(content_length(b" 0 "), Some(0));
        for bad in [&b""[..], b"-1", b"+1", b"1,1", b"0x10", b"99999999999999999999"] {
            assert_eq!(content_length(bad), None);
        }
    }
}
