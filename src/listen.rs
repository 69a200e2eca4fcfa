//! Listening sockets.
//!
//! Owns: how every listener is bound. The admin listener is a plain socket
//! ([`single`]); each public and TLS address is an SO_REUSEPORT group with one member
//! per serving thread ([`shared`]), so the kernel spreads connections over the threads.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use crate::BindError;

/// Accept queue of each listening socket.
const BACKLOG: u32 = 1024;

/// A listen failure.
pub(crate) fn error(what: &'static str, addr: SocketAddr, source: io::Error) -> BindError {
    BindError::Listen { what, addr, source }
}

/// A listener nobody else may share (the admin listener).
pub(crate) async fn single(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| error(what, addr, source))
}

/// One member of the SO_REUSEPORT group on `addr`. Registers with the runtime of the
/// calling thread, which is the one that must serve it.
pub(crate) fn shared(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let fail = |source| error(what, addr, source);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.set_reuseport(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(BACKLOG).map_err(fail)
}
