//! The chunked-body scanner of the HTTP/1.1 pass-through (`proxy::framing`), which finds
//! where a backend's chunked response ends without decoding it: checked against a
//! whole-buffer reference parser of the same grammar (RFC 9112 §7.1, sizes of at most 15
//! hex digits, extension and trailer bytes within 16 KiB in all), and for the same answer
//! however the bytes are split across reads. Half the inputs are raw bytes; the other
//! half build a valid body from the input (chunk sizes, extensions, trailers) and append
//! the rest, which must never be counted as body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidewire::proxy::framing::{Chunked, Framing};

const MAX_EXTRA: usize = 16 * 1024;

fuzz_target!(|input: (bool, u16, u16, &[u8])| {
    let (build, a, b, bytes) = input;
    let buf = if build { valid_body(bytes) } else { bytes.to_vec() };
    let whole = scan(&buf, &[]);
    let expected = reference(&buf);
    match whole {
        Ok((n, true)) => assert_eq!(expected, Some(n), "scanner ends at {n}, reference at {expected:?}"),
        Ok((n, false)) => {
            assert_eq!(n, buf.len(), "an unfinished body takes every byte");
            assert_eq!(expected, None, "reference finds an end the scanner missed");
        }
        Err(_) => assert_eq!(expected, None, "scanner refuses a body the reference accepts"),
    }
    if build {
        assert!(expected.is_some(), "a built body is valid: {buf:?}");
    }
    // The same bytes in up to three reads give the same answer.
    let mut cuts = [usize::from(a) % (buf.len() + 1), usize::from(b) % (buf.len() + 1)];
    cuts.sort_unstable();
    let split = scan(&buf, &cuts);
    assert_eq!(split.is_ok(), whole.is_ok(), "cuts {cuts:?}");
    if let (Ok(x), Ok(y)) = (whole, split) {
        assert_eq!(x, y, "cuts {cuts:?}");
    }
});

/// Feeds `buf` cut at `cuts`, as reads would deliver it: (body bytes, complete).
fn scan(buf: &[u8], cuts: &[usize]) -> Result<(usize, bool), ()> {
    let mut framing = Framing::Chunked(Chunked::default());
    let mut from = 0;
    let mut taken = 0;
    for to in cuts.iter().copied().chain([buf.len()]) {
        if to < from {
            continue;
        }
        let (n, done) = framing.take(&buf[from..to]).map_err(|_| ())?;
        assert!(n <= to - from);
        taken += n;
        if done {
            return Ok((taken, true));
        }
        assert_eq!(n, to - from, "an unfinished body takes every byte");
        from = to;
    }
    Ok((taken, false))
}

/// Where a valid chunked body at the start of `buf` ends, if it is complete.
fn reference(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut extra = 0;
    loop {
        let eol = line(buf, at)?;
        let text = &buf[at..eol];
        let digits = text.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 15 {
            return None;
        }
        let rest = &text[digits..];
        if let Some((first, ext)) = rest.split_first() {
            if !matches!(first, b';' | b' ' | b'\t') {
                return None;
            }
            extra += ext.len();
            if extra > MAX_EXTRA {
                return None;
            }
        }
        let size = u64::from_str_radix(std::str::from_utf8(&text[..digits]).ok()?, 16).ok()?;
        at = eol + 2;
        if size == 0 {
            break;
        }
        let end = at.checked_add(usize::try_from(size).ok()?)?;
        if buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        at = end + 2;
    }
    // Trailer lines, then the empty line that ends the body.
    loop {
        let end = line(buf, at)?;
        if end == at {
            return Some(at + 2);
        }
        extra += end - at;
        if extra > MAX_EXTRA {
            return None;
        }
        at = end + 2;
    }
}

/// The end (the CR) of the line starting at `from`: bytes other than CR and LF, then
/// CRLF. `None` when the line is unfinished or malformed.
fn line(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let end = rest.iter().position(|&c| c == b'\r' || c == b'\n')?;
    (rest.get(end..end + 2)? == b"\r\n").then_some(from + end)
}

/// A valid chunked body made from `bytes`, then whatever `bytes` has left, which is not
/// body. Byte 0 picks how many chunks, each chunk takes a size byte, an extension flag
/// and that many bytes of data; one trailer line may follow.
fn valid_body(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = bytes.iter().copied();
    let chunks = it.next().unwrap_or(0) % 8;
    for _ in 0..chunks {
        let size = usize::from(it.next().unwrap_or(1)).max(1);
        let ext = it.next().unwrap_or(0);
        out.extend_from_slice(format!("{size:x}").as_bytes());
        match ext % 4 {
            1 => out.extend_from_slice(b";name=value"),
            2 => out.extend_from_slice(b" ; q=\"x y\""),
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        for _ in 0..size {
            out.push(it.next().unwrap_or(b'x'));
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if it.next().unwrap_or(0) % 2 == 1 {
        out.extend_from_slice(b"x-checksum: 42\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend(it);
    out
}
