//! Bodies a test drives chunk by chunk, so streaming can be proved by ordering
//! (the far side saw chunk 1 before chunk 2 was even produced) rather than by timing.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::HeaderMap;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::{Body, BoxError};

/// A body whose frames come from `rx`; it ends when every sender is dropped.
pub fn frames(rx: mpsc::Receiver<Frame<Bytes>>) -> Body {
    let frames = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (Ok::<_, BoxError>(f), rx)) });
    BodyExt::boxed(StreamBody::new(frames))
}

/// A hyper body fed by the returned sender (data frames only).
pub fn channel() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let data =
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx)) });
    (tx, BodyExt::boxed(StreamBody::new(data)))
}

/// A reqwest body fed by the returned sender.
pub fn reqwest_channel() -> (mpsc::Sender<Bytes>, reqwest::Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let data = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, BoxError>(b), rx)) });
    (tx, reqwest::Body::wrap_stream(data))
}

/// `count` copies of one shared chunk: a large body that costs no memory to produce.
pub fn repeated(chunk: Bytes, count: usize) -> reqwest::Body {
    let data = stream::iter(std::iter::repeat_n(chunk, count)).map(Ok::<_, BoxError>);
    reqwest::Body::wrap_stream(data)
}

/// Everything a body carried: its data, concatenated, and its trailers.
pub struct Collected {
    pub data: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

/// Reads a body frame by frame, keeping the trailers that `collect()` would hide.
pub async fn collect<B>(mut body: B) -> Result<Collected, B::Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut out = Collected { data: Vec::new(), trailers: None };
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => out.data.extend_from_slice(&data),
            Err(frame) => out.trailers = frame.into_trailers().ok(),
        }
    }
    Ok(out)
}

/// Counts the bytes of a body without keeping them.
pub async fn count<B>(mut body: B) -> Result<u64, B::Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}
