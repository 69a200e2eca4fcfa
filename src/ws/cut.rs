//! Lets a closing WebSocket skip its backlog: once [`Cut::cut`] is called, frames that
//! tungstenite has queued but not yet written are dropped (the frame already on the wire
//! is finished first), so the close frame goes out next. A slow-but-alive client then
//! reads 1013 (slow consumer) or 1001 (shutdown) right after what its socket already
//! holds, instead of after up to `max_write_buffer_size` of abandoned messages.
//!
//! How: the outgoing byte stream is parsed into frames (headers only; payloads are
//! skipped by length) as tungstenite writes it. Before the cut every byte passes; after
//! it, a frame that starts is written only if it is a close frame. Server frames are
//! never fragmented by tungstenite, so dropping whole frames keeps the stream valid.
//!
//! Cost: 32 bytes per connection and a few comparisons per frame. Before the cut, what
//! tungstenite writes reaches the socket in one write however many frames it holds.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Opcode of a close frame.
const CLOSE: u8 = 0x8;

pub struct Cut<T> {
    inner: T,
    cut: bool,
    frame: Frame,
}

impl<T> Cut<T> {
    pub fn new(inner: T) -> Self {
        Self { inner, cut: false, frame: Frame::default() }
    }

    /// From now on, only the frame on the wire and close frames are written.
    pub fn cut(&mut self) {
        self.cut = true;
    }
}

/// Where the outgoing stream is: in a frame's header, its payload, or between frames.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    head: [u8; 14],
    /// Header bytes seen; 0 between frames.
    head_len: usize,
    /// Payload bytes still to come once the header is complete.
    left: u64,
    /// Whether the current frame is written (or dropped).
    pass: bool,
}

impl Frame {
    /// Header length, as far as the bytes seen tell.
    fn head_needed(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        let h = &self.head;
        match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        }
    }

    /// Consumes the bytes of `buf` that belong to the current frame (a frame starting at
    /// `buf[0]` is admitted or dropped by `cut`); returns how many, stopping at its end.
    fn take(&mut self, buf: &[u8], cut: bool) -> usize {
        if self.head_len == 0
            && let Some(&first) = buf.first()
        {
            self.pass = !cut || first & 0x0f == CLOSE;
        }
        let mut i = 0;
        while i < buf.len() {
            if self.head_len < self.head_needed() {
                self.head[self.head_len] = buf[i];
                self.head_len += 1;
                i += 1;
                if self.head_len == self.head_needed() {
                    self.left = self.payload_len();
                    if self.left == 0 {
                        self.head_len = 0;
                        return i;
                    }
                }
            } else {
                let n = self.left.min((buf.len() - i) as u64);
                i += n as usize;
                self.left -= n;
                if self.left == 0 {
                    self.head_len = 0;
                    return i;
                }
            }
        }
        i
    }

    /// Follows frames over `buf`, written before the cut (every frame passes).
    fn skip(&mut self, buf: &[u8]) {
        let mut i = 0;
        while i < buf.len() {
            i += self.take(&buf[i..], false);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Cut<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Cut<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if !this.cut {
            // Before the cut every frame passes: the whole buffer goes out in one write
            // (tungstenite hands over everything it has queued, e.g. a whole replay) and
            // the frame boundaries are tracked over what the socket took.
            let out = Pin::new(&mut this.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(written)) = out {
                this.frame.skip(&buf[..written]);
            }
            return out;
        }
        // After the cut, one frame's worth at a time: all of it is written, or all of it
        // dropped.
        let mut probe = this.frame;
        let n = probe.take(buf, this.cut);
        if !probe.pass {
            this.frame = probe;
            return Poll::Ready(Ok(n));
        }
        let out = Pin::new(&mut this.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(written)) = out {
            this.frame.take(&buf[..written], this.cut);
        }
        out
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// An unmasked server frame.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// A socket that takes at most `limit` bytes per write and records every write.
    struct Socket {
        limit: usize,
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn before_the_cut_many_frames_go_out_in_one_write() {
        // A replay: 100 messages queued by tungstenite, handed over as one buffer.
        let stream: Vec<u8> = (0..100).flat_map(|i| frame(0x1, format!("message {i}").as_bytes())).collect();
        let mut cut = Cut::new(Socket { limit: usize::MAX, writes: Vec::new() });
        cut.write_all(&stream).await.unwrap();
        assert_eq!(cut.inner.writes, vec![stream]);
    }

    #[tokio::test]
    async fn a_cut_after_a_short_write_of_many_frames_finishes_the_frame_on_the_wire() {
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(0x1, &[b'a' + i; 100])).collect();
        let close = frame(CLOSE, &[0x03, 0xe9]);
        let mut cut = Cut::new(Socket { limit: 150, writes: Vec::new() });
        // The socket takes 150 bytes of the three frames: the first whole and half of the
        // second, which the cut must still finish; the third is dropped.
        let all = frames.concat();
        let n = std::future::poll_fn(|cx| Pin::new(&mut cut).poll_write(cx, &all)).await.unwrap();
        assert_eq!(n, 150);
        cut.cut();
        cut.inner.limit = usize::MAX;
        cut.write_all(&all[n..]).await.unwrap();
        cut.write_all(&close).await.unwrap();
        let mut want = frames[0].clone();
        want.extend_from_slice(&frames[1]);
        want.extend_from_slice(&close);
        assert_eq!(cut.inner.writes.concat(), want);
    }

    #[tokio::test]
    async fn before_the_cut_every_byte_passes_in_any_split() {
        let mut stream = frame(0x1, b"hello");
        stream.extend(frame(0x2, &[7u8; 300]));
        stream.extend(frame(0x1, &vec![b'x'; 70_000]));
        stream.extend(frame(0x9, b""));
        for chunk in [1, 2, 3, 7, 4096] {
            let mut cut = Cut::new(Vec::new());
            for piece in stream.chunks(chunk) {
                cut.write_all(piece).await.unwrap();
            }
            assert_eq!(cut.inner, stream, "chunk size {chunk}");
        }
    }

    #[tokio::test]
    async fn after_the_cut_the_frame_on_the_wire_ends_then_only_closes_pass() {
        let first = frame(0x1, &[b'a'; 200]);
        let dropped = [frame(0x1, &[b'b'; 70_000]), frame(0x9, b"p"), frame(0x1, b"c")];
        let close = frame(CLOSE, &[0x03, 0xf5]);
        let mut cut = Cut::new(Vec::new());
        // Half of the first frame is written before the cut.
        cut.write_all(&first[..100]).await.unwrap();
        cut.cut();
        let mut rest = first[100..].to_vec();
        for f in &dropped {
            rest.extend_from_slice(f);
        }
        rest.extend_from_slice(&close);
        for piece in rest.chunks(5) {
            cut.write_all(piece).await.unwrap();
        }
        let mut want = first.clone();
        want.extend_from_slice(&close);
        assert_eq!(cut.inner, want);
    }
}
