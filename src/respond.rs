//! The one response body type, small constructors, and [`Rejection`]: an error that
//! knows its status and JSON body.
//!
//! Every handler returns `Result<Response<Body>, Rejection>`; `lib.rs` turns the error
//! side into a response in one place, so hyper only ever sees `Infallible`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Boxed error of any body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response sidewire produces or forwards.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A response with a fixed body and content type.
pub fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// A short plain-text response, as the pass-through errors use.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_body(status, "text/plain; charset=utf-8", body)
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    with_body(status, "application/json", value.to_string())
}

/// A refused request: status, a machine code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Plain-text body instead of JSON (the pass-through errors, SPEC §8).
    pub plain: bool,
    /// Extra response headers (e.g. `Sec-WebSocket-Version` on a 426).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl Rejection {
    pub fn json(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), plain: false, headers: Vec::new() }
    }

    pub fn plain(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, code: "", message: message.into(), plain: true, headers: Vec::new() }
    }

    pub fn not_found() -> Self {
        Self::json(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn into_response(self) -> Response<Body> {
        let mut res = if self.plain {
            let mut res = with_body(self.status, "text/plain; charset=utf-8", format!("{}\n", self.message));
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        } else {
            json(self.status, &serde_json::json!({ "error": self.code, "message": self.message }))
        };
        for (name, value) in self.headers {
            res.headers_mut().insert(name, value);
        }
        res
    }
}

/// Writes a whole response (a refusal: its body is small and complete) to an HTTP/1.1
/// connection; `close` says (in the head) that the connection closes after it.
pub async fn write_h1<T: tokio::io::AsyncWrite + Unpin>(
    io: &mut T,
    res: Response<Body>,
    close: bool,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let res = Response::from_parts(parts, ());
    let mut out = bytes::BytesMut::from(&h1_head(&res, Some(body.len()), close)[..]);
    out.extend_from_slice(&body);
    io.write_all(&out).await
}

/// The HTTP/1.1 status line and headers of `res`, with `date` (and `connection: close`
/// if `close`); chunked unless `length` is given. For the paths that write responses
/// without hyper.
pub fn h1_head(res: &Response<()>, length: Option<usize>, close: bool) -> Bytes {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(256);
    let status = res.status();
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    for (name, value) in res.headers() {
        let _ = write!(out, "{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes()));
    }
    match length {
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        None => out.push_str("transfer-encoding: chunked\r\n"),
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    let _ = write!(out, "date: {}\r\n\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()));
    Bytes::from(out)
}
