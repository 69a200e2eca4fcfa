//! Raw-TCP client for tests that need exact bytes on the wire (framing, slowloris,
//! `Expect: 100-continue`), plus a deadline guard so a broken proxy fails a test
//! instead of hanging it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for anything a test waits on. Never a performance claim: only there so
/// a bug shows up as a failure with a message rather than a stuck test run.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Awaits `fut`, panicking with `what` if it takes longer than [`PATIENCE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// One client connection speaking whatever bytes the test writes.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read past the last head returned by [`RawConn::read_head`].
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self { stream, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Like [`RawConn::send`], for tests where the server may legitimately hang up
    /// before the client has finished writing.
    pub async fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.stream.write_all(bytes.as_ref()).await
    }

    /// Closes the sending half (the client has nothing more to say), keeping the reading
    /// half open for the answer.
    pub async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.unwrap();
    }

    /// Reads up to and including the next blank line, returning the head as text.
    /// Panics on EOF before a full head.
    pub async fn read_head(&mut self) -> String {
        String::from_utf8_lossy(&self.read_until(b"\r\n\r\n").await).into_owned()
    }

    /// Reads up to and including `needle`. Panics on EOF before it.
    pub async fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        within("bytes from the server", async {
            loop {
                if let Some(end) = find(&self.buf, needle) {
                    return self.buf.drain(..end + needle.len()).collect();
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "EOF before {:?}; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.buf)
                );
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
    }

    /// Reads until the server closes the connection (EOF or reset) and returns
    /// everything not yet consumed.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        within("the server to close the connection", async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }

    /// Reads exactly `n` body bytes after a head.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        within("body bytes", async {
            let mut chunk = [0u8; 4096];
            while self.buf.len() < n {
                let got = self.stream.read(&mut chunk).await.unwrap();
                assert!(got > 0, "EOF after {} of {n} body bytes", self.buf.len());
                self.buf.extend_from_slice(&chunk[..got]);
            }
            self.buf.drain(..n).collect()
        })
        .await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every value of header `name` (case-insensitive) in a raw head.
pub fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// The status code of a raw head (`HTTP/1.1 200 OK` → 200).
pub fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"))
}
