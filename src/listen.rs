//! Listening sockets, and the rule of one sidewire per listen address (SPEC §10).
//!
//! Owns: how every listener is bound. The admin listener is a plain socket
//! ([`single`]); each public and TLS address is an SO_REUSEPORT group with one member
//! per serving thread ([`shared`]), so the kernel spreads connections over the threads.
//!
//! SO_REUSEPORT would also let a second process (same user) join the group: it would
//! start without error and the kernel would split the clients between two hubs. So
//! before a group is bound, [`claim`] proves that nobody serves its address:
//! - a *probe* listens on the address without SO_REUSEPORT. It fails with EADDRINUSE
//!   against any listener there, ours or a stranger's, reuseport or not. It sets
//!   SO_REUSEADDR, so the TIME_WAIT leftovers of an instance that just exited do not
//!   block a restart. The probe is dropped before the group binds.
//! - on Linux, a *lock* closes the window between dropping the probe and binding the
//!   group: an abstract Unix socket named after the port, held while `App::bind` binds.
//!   Abstract names live in the network namespace, exactly where ports do, and vanish
//!   with their process (nothing stale to clean up). Two sidewires starting at once on
//!   one port therefore take turns, and the second one's probe sees the first group.
//!   Only a stranger that binds with SO_REUSEPORT in those microseconds slips through.
//!   Any local user can squat the name and stop sidewire from starting on that port;
//!   for unprivileged ports they could squat the port itself just as well.
//!
//! Port 0 claims nothing: the kernel picks a port nobody uses.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::BindError;

/// Accept queue of each listening socket.
const BACKLOG: u32 = 1024;

/// How long [`claim`] waits for another sidewire that is binding the same port. Binding
/// takes milliseconds; past this the other process is stuck or the name is squatted.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Pause between attempts to take a port lock held by another sidewire.
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// A listen failure. EADDRINUSE is reworded: the OS text does not say that another
/// process holds the address, which is what it means here (unless one config names an
/// address twice).
pub(crate) fn error(what: &'static str, addr: SocketAddr, source: io::Error) -> BindError {
    let source = match source.kind() {
        io::ErrorKind::AddrInUse => {
            io::Error::new(io::ErrorKind::AddrInUse, format!("another process already serves this address ({source})"))
        }
        _ => source,
    };
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

/// Proof that nobody served the claimed addresses; keep it until their groups are bound.
pub(crate) struct Claim {
    /// The port locks (Linux); dropping them lets the next sidewire check.
    _locks: Vec<Lock>,
}

/// Checks that no process serves any of `addrs`, and holds their ports (see the
/// module docs). Fails with [`BindError::Listen`] naming the address that is taken.
pub(crate) async fn claim(addrs: &[(&'static str, SocketAddr)]) -> Result<Claim, BindError> {
    let mut locks: Vec<Lock> = Vec::with_capacity(addrs.len());
    for &(what, addr) in addrs {
        // The public and TLS addresses may share a port (on different IPs): one lock.
        if addr.port() == 0 || locks.iter().any(|l| l.port == addr.port()) {
            continue;
        }
        if let Some(lock) = Lock::take(addr.port()).await.map_err(|source| BindError::Listen { what, addr, source })? {
            locks.push(lock);
        }
    }
    for &(what, addr) in addrs.iter().filter(|(_, a)| a.port() != 0) {
        probe(addr).map_err(|source| error(what, addr, source))?;
    }
    Ok(Claim { _locks: locks })
}

/// Listens on `addr` without SO_REUSEPORT, then lets go.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // Bound is not enough: SO_REUSEADDR lets two sockets bind a port nobody listens on.
    drop(socket.listen(1)?);
    Ok(())
}

/// A held port lock; released on drop or when the process dies.
struct Lock {
    port: u16,
    #[cfg(target_os = "linux")]
    _socket: std::os::unix::net::UnixListener,
}

impl Lock {
    /// Takes the lock of `port`, waiting up to [`LOCK_WAIT`] for another sidewire that
    /// holds it. `None` where abstract sockets do not exist (the probe alone remains).
    #[cfg(target_os = "linux")]
    async fn take(port: u16) -> io::Result<Option<Self>> {
        use std::os::linux::net::SocketAddrExt;
        let name = std::os::unix::net::SocketAddr::from_abstract_name(format!("sidewire/tcp-port/{port}"))?;
        let until = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match std::os::unix::net::UnixListener::bind_addr(&name) {
                Ok(socket) => return Ok(Some(Self { port, _socket: socket })),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tokio::time::Instant::now() < until => {
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    let held = format!("another sidewire is still binding this port (lock @sidewire/tcp-port/{port})");
                    return Err(io::Error::new(io::ErrorKind::AddrInUse, held));
                }
                Err(e) => return Err(e),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    async fn take(_port: u16) -> io::Result<Option<Self>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_reuseport_group_refuses_a_second_claim() {
        let first = shared("listen", local(0)).unwrap();
        let addr = first.local_addr().unwrap();
        // Our own threads may still join the group...
        let second = shared("listen", addr).unwrap();
        // ...but a claim, as a second process would make, fails and says why.
        let Err(BindError::Listen { what, addr: at, source }) = claim(&[("listen", addr)]).await else {
            panic!("claim succeeded on a served address");
        };
        assert_eq!((what, at, source.kind()), ("listen", addr, io::ErrorKind::AddrInUse));
        assert!(source.to_string().contains("another process already serves this address"), "{source}");
        drop((first, second));
        // Served by nobody any more: claimable again.
        assert!(claim(&[("listen", addr)]).await.is_ok());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_port_lock_is_exclusive_and_released_on_drop() {
        let port = std::net::TcpListener::bind(local(0)).unwrap().local_addr().unwrap().port();
        let held = Lock::take(port).await.unwrap().unwrap();
        tokio::time::pause();
        let err = Lock::take(port).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("another sidewire"), "{err}");
        drop(held);
        assert!(Lock::take(port).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn port_zero_claims_nothing() {
        let claim = claim(&[("listen", local(0)), ("tls.listen", local(0))]).await.unwrap();
        assert!(claim._locks.is_empty());
    }
}
