//! The keep-alive connections of the HTTP/1.1 pass-through path ([`super::h1`]): one
//! idle list per serving thread, so a checkout is a `Vec::pop` with no lock and no
//! cross-thread wake-up, and the connection is driven by the request's own task.
//!
//! Invariants: a connection is parked only after its response was read to the end with
//! nothing after it; one the backend closed (or wrote to) while idle is never handed
//! out; idle ones close after `backend.pool_idle_timeout`, at most
//! `backend.pool_max_idle` are kept per thread, and a reload that changes `backend`
//! empties the list (the [`Proxy`] id changes).

use std::cell::RefCell;
use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::{Proxy, ProxyError};
use crate::shutdown::Shutdown;

/// Parked connections that keep their read buffer; the others give it back (it is
/// `backend.read_buffer_bytes`, 64 KiB by default) and allocate one when next used.
const RETAINED_BUFFERS: usize = 32;

/// Longest wait between two sweeps for connections the backend closed while idle.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A connection to the backend and its read buffer.
pub struct Conn {
    pub io: TcpStream,
    pub buf: BytesMut,
}

struct Parked {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Idle {
    /// The [`Proxy`] the parked connections belong to.
    id: u64,
    /// Oldest first.
    parked: Vec<Parked>,
    sweeping: bool,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// A parked connection to `proxy`'s backend, the most recently used first.
pub fn checkout(proxy: &Proxy) -> Option<Conn> {
    let timeout = proxy.backend.pool_idle_timeout;
    IDLE.with_borrow_mut(|idle| {
        if idle.id != proxy.id {
            idle.parked.clear();
            idle.id = proxy.id;
            return None;
        }
        while let Some(p) = idle.parked.pop() {
            if p.since.elapsed() < timeout && quiet(&p.conn.io) {
                return Some(p.conn);
            }
        }
        None
    })
}

/// Parks a connection whose response was read to its end.
pub fn checkin(proxy: &Proxy, shutdown: &Shutdown, mut conn: Conn) {
    let max = proxy.backend.pool_max_idle;
    let start_sweeper = IDLE.with_borrow_mut(|idle| {
        if idle.id != proxy.id {
            idle.parked.clear();
            idle.id = proxy.id;
        }
        if max == 0 {
            return false;
        }
        if idle.parked.len() >= max {
            idle.parked.remove(0);
        }
        if idle.parked.len() >= RETAINED_BUFFERS {
            conn.buf = BytesMut::new();
        }
        conn.buf.clear();
        idle.parked.push(Parked { conn, since: Instant::now() });
        !std::mem::replace(&mut idle.sweeping, true)
    });
    if start_sweeper {
        shutdown.spawn(sweep(proxy.backend.pool_idle_timeout, shutdown.clone()));
    }
}

/// A new connection to `proxy`'s backend, within `backend.connect_timeout`.
pub async fn connect(proxy: &Proxy) -> Result<Conn, ProxyError> {
    let backend = &proxy.backend;
    let host = backend.origin.host().trim_start_matches('[').trim_end_matches(']');
    let port = backend.origin.port_u16().unwrap_or(80);
    let io = match tokio::time::timeout(backend.connect_timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => return Err(ProxyError::BackendUnreachable(format!("connect to {}: {e}", backend.origin))),
        Err(_) => {
            return Err(ProxyError::BackendUnreachable(format!(
                "connect to {} timed out after {:?}",
                backend.origin, backend.connect_timeout
            )));
        }
    };
    let _ = io.set_nodelay(true);
    Ok(Conn { io, buf: BytesMut::new() })
}

/// Whether an idle connection has nothing to read: neither the backend's close nor
/// bytes it should not have sent. Costs no system call unless the socket was
/// reported readable.
fn quiet(io: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// This thread's sweeper: closes connections past `timeout` and those the backend
/// closed, until none is left (or shutdown).
async fn sweep(timeout: Duration, shutdown: Shutdown) {
    loop {
        let wait = IDLE.with_borrow_mut(|idle| {
            idle.parked.retain(|p| p.since.elapsed() < timeout && quiet(&p.conn.io));
            match idle.parked.first() {
                None => {
                    idle.sweeping = false;
                    None
                }
                Some(oldest) => Some(timeout.saturating_sub(oldest.since.elapsed()).min(SWEEP_EVERY)),
            }
        });
        let Some(wait) = wait else { return };
        tokio::select! {
            () = shutdown.cancelled() => {
                return IDLE.with_borrow_mut(|idle| {
                    idle.parked.clear();
                    idle.sweeping = false;
                });
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}
