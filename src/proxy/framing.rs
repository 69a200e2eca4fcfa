//! Where a backend response body ends, for the HTTP/1.1 path that forwards it byte for
//! byte ([`super::h1`]): RFC 9112 §6.3's rules, and a chunked body scanned as it passes
//! (sizes, extensions, trailers) without being decoded or re-encoded.
//!
//! Invariant: bytes after the end of a body are never counted as body; a malformed
//! chunked body is an error at the first byte that breaks the grammar.

/// Longest chunk-size line extension, and longest trailer section, one body may carry
/// (hyper's decoder allows 16 KiB of extensions per body too).
const MAX_EXTRA: usize = 16 * 1024;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to `HEAD`, or a 1xx, 204 or 304.
    Empty,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    /// `Transfer-Encoding: chunked`, scanned so far.
    Chunked(Chunked),
    /// Neither: the body ends when the backend closes the connection.
    Close,
}

/// A chunked body that breaks the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct Malformed(&'static str);

impl Framing {
    /// Takes the next bytes read from the backend: how many of `buf`'s first bytes are
    /// body, and whether the body is complete with them. [`Framing::Close`] is complete
    /// only at end of stream, which the caller sees.
    pub fn take(&mut self, buf: &[u8]) -> Result<(usize, bool), Malformed> {
        match self {
            Self::Empty => Ok((0, true)),
            Self::Length(left) => {
                let n = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            Self::Chunked(c) => c.scan(buf),
            Self::Close => Ok((buf.len(), false)),
        }
    }

    /// Whether the body is complete before any of it is read (no body, or a length of 0).
    pub fn done(&self) -> bool {
        matches!(self, Self::Empty | Self::Length(0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// After the size: extensions (or whitespace) up to CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// The scanner of one chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// The chunk's size while reading it; then the bytes of data left in it.
    size: u64,
    digits: u8,
    /// Extension and trailer bytes seen so far.
    extra: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self { state: State::Size, size: 0, digits: 0, extra: 0 }
    }
}

impl Chunked {
    fn scan(&mut self, buf: &[u8]) -> Result<(usize, bool), Malformed> {
        let mut i = 0;
        while i < buf.len() {
            if self.state == State::Done {
                return Ok((i, true));
            }
            if self.state == State::Data {
                let n = usize::try_from(self.size).map_or(buf.len() - i, |s| s.min(buf.len() - i));
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.byte(buf[i])?;
            i += 1;
        }
        Ok((i, self.state == State::Done))
    }

    fn byte(&mut self, b: u8) -> Result<(), Malformed> {
        self.state = match (self.state, b) {
            (State::Size, b) if b.is_ascii_hexdigit() => {
                if self.digits == 15 {
                    return Err(Malformed("chunk size too large"));
                }
                self.digits += 1;
                // A hex digit's value: digits are checked above.
                let d = (b as char).to_digit(16).map_or(0, u64::from);
                self.size = self.size * 16 + d;
                State::Size
            }
            (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
            (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => State::Ext,
            (State::Size, _) => return Err(Malformed("bad chunk size")),
            (State::Ext, b'\r') => State::SizeLf,
            (State::Ext, b'\n') => return Err(Malformed("bare LF in a chunk extension")),
            (State::Ext, _) => {
                self.count_extra()?;
                State::Ext
            }
            (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
            (State::SizeLf, b'\n') => State::Data,
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => {
                self.digits = 0;
                State::Size
            }
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::TrailerLine, b'\n') => return Err(Malformed("bare LF in a trailer")),
            (State::TrailerLine, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::TrailerLine, _) => {
                self.count_extra()?;
                State::TrailerLine
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            (State::SizeLf | State::DataCr | State::DataLf | State::TrailerLf | State::EndLf, _) => {
                return Err(Malformed("missing CRLF"));
            }
            (State::Data | State::Done, _) => self.state,
        };
        Ok(())
    }

    fn count_extra(&mut self) -> Result<(), Malformed> {
        self.extra += 1;
        if self.extra > MAX_EXTRA {
            return Err(Malformed("chunk extensions or trailers too long"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes: (body bytes taken, complete).
    fn feed(body: &[u8], step: usize) -> Result<(usize, bool), Malformed> {
        let mut f = Framing::Chunked(Chunked::default());
        let mut taken = 0;
        for piece in body.chunks(step) {
            let (n, done) = f.take(piece)?;
            taken += n;
            if done {
                return Ok((taken, true));
            }
        }
        Ok((taken, false))
    }

    #[test]
    fn finds_the_end_of_a_chunked_body_in_any_split() {
        let body = b"5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 42\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(feed(body, step), Ok((body.len(), true)), "step {step}");
        }
    }

    #[test]
    fn bytes_after_the_end_are_not_body() {
        let mut f = Framing::Chunked(Chunked::default());
        assert_eq!(f.take(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"), Ok((13, true)));
    }

    #[test]
    fn an_unfinished_body_is_not_complete() {
        assert_eq!(feed(b"5\r\nhel", 100), Ok((6, false)));
        assert_eq!(feed(b"0\r\n", 100), Ok((3, false)));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [&b"x\r\n"[..], b"\r\n", b"5\r\nhelloXX", b"5\nhello", b"0\r\nbad\n\r\n", b"12345678123456789\r\n"] {
            assert!(feed(bad, 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_EXTRA + 1]].concat();
        assert!(feed(&long, 100).is_err());
    }

    #[test]
    fn lengths_count_down() {
        let mut f = Framing::Length(10);
        assert_eq!(f.take(b"123456"), Ok((6, false)));
        assert_eq!(f.take(b"7890EXTRA"), Ok((4, true)));
        assert!(Framing::Length(0).done() && Framing::Empty.done());
        let mut close = Framing::Close;
        assert_eq!(close.take(b"abc"), Ok((3, false)));
    }
}
