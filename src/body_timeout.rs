//! Request bodies that may not stall (`limits.body_read_timeout`, SPEC §9): a body
//! whose client sends no byte for the limit fails with [`BodyTimeout`]. Readers answer
//! 408 ([`is_timeout`] finds it in an error chain); pass-through cancels the backend
//! request (its body fails) and answers 408 if no response has started.
//!
//! Only time spent waiting for the client counts: the timer starts when the body is
//! polled and has nothing, so a backend that is slow to take the body (backpressure)
//! never turns into a client timeout. The timer is allocated on the first wait only.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::respond::BoxError;

/// The client sent no body byte for `limits.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body byte for {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether `e` or one of its sources is a [`BodyTimeout`].
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `inner`, failing once the client leaves it waiting for `limit`.
pub struct Idle<B> {
    inner: B,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs (the last poll found nothing).
    waiting: bool,
}

impl<B> Idle<B> {
    pub fn new(inner: B, limit: Duration) -> Self {
        Self { inner, limit, timer: None, waiting: false }
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(out) => {
                this.waiting = false;
                Poll::Ready(out.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.limit;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    this.waiting = true;
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_limit_a_steady_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let mut body = Idle::new(StreamBody::new(Box::pin(stream)), Duration::from_secs(30));
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            }
            // Then nothing, forever (the sender stays alive).
            std::future::pending::<()>().await;
        });
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(is_timeout(&*err));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        feeder.abort();
    }
}
