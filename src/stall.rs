//! A socket whose writes may not stall forever (SPEC §9): once a write has made no
//! progress for the limit (the peer stopped reading: a stalled SSE reader, a WebSocket
//! behind a dead NAT), the write fails with `TimedOut` and the connection is closed,
//! freeing its queue. Works under TLS and for HTTP/1, HTTP/2 and upgraded connections.
//!
//! Cost: one `Option` per connection; the timer is allocated only while a write waits.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct Stall<T> {
    inner: T,
    limit: Duration,
    /// Armed when a write returns `Pending`, disarmed by any progress.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<T> Stall<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self { inner, limit, waiting: None }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// After a write attempt: disarm on progress; on `Pending`, arm the timer (or fail
    /// once it has run out). The timer is polled so it wakes the writer when it fires.
    fn watch<R>(&mut self, cx: &mut Context<'_>, out: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if out.is_ready() {
            self.waiting = None;
            return out;
        }
        let limit = self.limit;
        let timer = self.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.waiting = None;
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading")));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stall<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stall<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let out = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, out)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let out = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, out)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let out = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, out)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_fails_after_the_limit() {
        // A 64-byte pipe nobody reads: the second write waits forever.
        let (a, _b) = tokio::io::duplex(64);
        let mut s = Stall::new(a, Duration::from_secs(60));
        s.write_all(&[0u8; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = s.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_cut() {
        let (a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 64 * 10 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                total += b.read(&mut buf).await.unwrap();
            }
        });
        let mut s = Stall::new(a, Duration::from_secs(60));
        for _ in 0..10 {
            s.write_all(&[1u8; 64]).await.unwrap();
        }
        reader.await.unwrap();
    }
}
