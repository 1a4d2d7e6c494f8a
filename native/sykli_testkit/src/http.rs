//! HTTP/1.1 messages as the test servers read them ([`crate::git_server`]'s smart HTTP,
//! [`crate::http_proxy`]): request and response heads with bounded lines and headers, and
//! request bodies as their headers frame them.

use std::io::{self, BufRead, Read, Write};

/// The longest line accepted (request, status, header or chunk line), its line end included.
const MAX_LINE: usize = 8 << 10;
/// The most header lines in a head (and trailer lines after a chunked body).
const MAX_HEADERS: usize = 100;

/// A request head.
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    /// As received (name case kept), in order.
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    /// The first header of that name (compared without case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How the headers frame the request's body; Err when they contradict themselves or
    /// name a transfer coding other than chunked last.
    pub(crate) fn body(&self) -> Result<Body, ()> {
        if let Some(te) = self.header("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            return if last.eq_ignore_ascii_case("chunked") {
                Ok(Body::Chunked)
            } else {
                Err(())
            };
        }
        let lengths: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_str())
            .collect();
        match lengths.first() {
            None => Ok(Body::None),
            Some(first) => {
                if lengths.iter().any(|l| l != first)
                    || first.is_empty()
                    || !first.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(());
                }
                first.parse().map(Body::Length).map_err(|_| ())
            }
        }
    }
}

/// A request head that could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// No request line: an unreadable line (too long, cut short, not UTF-8), or only empty
    /// lines.
    NoRequestLine,
    /// A line that is not `METHOD target HTTP/1.x`, or whose target the reader refused.
    RequestLine(String),
    /// A good request line, then bad header lines.
    Headers { method: String, target: String },
}

/// Reads a request head. Ok(None): the input ended cleanly before a request line. With
/// `leading_empty_line`, one empty line before the request line is skipped (RFC 9112, 2.2).
pub(crate) fn read_request_head(
    input: &mut impl BufRead,
    leading_empty_line: bool,
    target_ok: impl Fn(&str) -> bool,
) -> Result<Option<Head>, Malformed> {
    let mut request_line = match read_line(input) {
        Ok(None) => return Ok(None),
        Ok(Some(line)) => line,
        Err(()) => return Err(Malformed::NoRequestLine),
    };
    if leading_empty_line && request_line.is_empty() {
        request_line = match read_line(input) {
            Ok(None) => return Ok(None),
            Ok(Some(line)) if line.is_empty() => return Err(Malformed::NoRequestLine),
            Ok(Some(line)) => line,
            Err(()) => return Err(Malformed::NoRequestLine),
        };
    }
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(Malformed::RequestLine(request_line));
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target_ok(target) || !version.starts_with("HTTP/1.") {
        return Err(Malformed::RequestLine(request_line));
    }
    let headers = read_headers(input).map_err(|()| Malformed::Headers {
        method: method.to_string(),
        target: target.to_string(),
    })?;
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    }))
}

/// A response head: (status line, headers).
pub(crate) fn read_response_head(
    input: &mut impl BufRead,
) -> Result<(String, Vec<(String, String)>), ()> {
    let status_line = read_line(input)?.ok_or(())?;
    if !status_line.starts_with("HTTP/1.") {
        return Err(());
    }
    Ok((status_line, read_headers(input)?))
}

/// Header lines up to the empty line: (name as received, value trimmed).
fn read_headers(input: &mut impl BufRead) -> Result<Vec<(String, String)>, ()> {
    let mut headers = Vec::new();
    for _ in 0..=MAX_HEADERS {
        let line = read_line(input)?.ok_or(())?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line.split_once(':').ok_or(())?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(());
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Err(()) // too many headers
}

/// A line with its line end; None at a clean end of input before it.
fn read_raw_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>, ()> {
    let mut line = Vec::new();
    let n = input
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .map_err(|_| ())?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(()); // too long, or cut short
    }
    Ok(Some(line))
}

/// A raw line's text, without its LF or CRLF.
fn line_text(mut line: Vec<u8>) -> Result<String, ()> {
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| ())
}

/// A line without its CRLF (or LF); None at a clean end of input before it.
fn read_line(input: &mut impl BufRead) -> Result<Option<String>, ()> {
    read_raw_line(input)?.map(line_text).transpose()
}

/// A request's body, as its headers frame it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Body {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the limits.
    TooLarge,
    /// Cut short, badly framed, or not written.
    Bad,
}

/// What [`copy_body`] accepts at most.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    /// Body bytes (content, without chunk framing).
    pub(crate) bytes: u64,
    /// Chunks, the last (empty) one excluded.
    pub(crate) chunks: usize,
}

impl Limits {
    pub(crate) const NONE: Limits = Limits {
        bytes: u64::MAX,
        chunks: usize::MAX,
    };
}

/// What [`copy_body`] writes of a chunked body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// The content only.
    Decode,
    /// The body verbatim: chunk lines, chunks, trailers and the final empty line.
    Keep,
}

/// Copies a request body from `input` to `out` (then flushes it), reading exactly the body.
pub(crate) fn copy_body(
    input: &mut impl BufRead,
    body: Body,
    out: &mut impl Write,
    framing: Framing,
    limits: Limits,
) -> Result<(), BodyError> {
    match body {
        Body::None => {}
        Body::Length(n) if n > limits.bytes => return Err(BodyError::TooLarge),
        Body::Length(n) => copy_exact(input, n, out)?,
        Body::Chunked => copy_chunked(input, out, framing, limits)?,
    }
    out.flush().map_err(|_| BodyError::Bad)
}

fn copy_chunked(
    input: &mut impl BufRead,
    out: &mut impl Write,
    framing: Framing,
    limits: Limits,
) -> Result<(), BodyError> {
    let mut total = 0u64;
    for _ in 0..limits.chunks {
        let line = framing_line(input, out, framing)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| BodyError::Bad)?;
        if size == 0 {
            // Trailers, up to the empty line.
            for _ in 0..=MAX_HEADERS {
                if framing_line(input, out, framing)?.is_empty() {
                    return Ok(());
                }
            }
            return Err(BodyError::Bad);
        }
        total = total.saturating_add(size);
        if total > limits.bytes {
            return Err(BodyError::TooLarge);
        }
        copy_exact(input, size, out)?;
        if !framing_line(input, out, framing)?.is_empty() {
            return Err(BodyError::Bad);
        }
    }
    Err(BodyError::TooLarge)
}

/// A line of a chunked body's framing (written out with [`Framing::Keep`]), as text.
fn framing_line(
    input: &mut impl BufRead,
    out: &mut impl Write,
    framing: Framing,
) -> Result<String, BodyError> {
    let line = read_raw_line(input)
        .map_err(|()| BodyError::Bad)?
        .ok_or(BodyError::Bad)?;
    if framing == Framing::Keep {
        out.write_all(&line).map_err(|_| BodyError::Bad)?;
    }
    line_text(line).map_err(|()| BodyError::Bad)
}

fn copy_exact(input: &mut impl BufRead, n: u64, out: &mut impl Write) -> Result<(), BodyError> {
    match io::copy(&mut input.take(n), out) {
        Ok(copied) if copied == n => Ok(()),
        _ => Err(BodyError::Bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], leading_empty_line: bool) -> Result<Option<Head>, Malformed> {
        let mut input = raw;
        read_request_head(&mut input, leading_empty_line, |t| t.starts_with('/'))
    }

    #[test]
    fn request_heads_parse() {
        let h = head(
            b"GET /x?y HTTP/1.1\r\nHost: h\r\nGit-Protocol:  version=2 \r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/x?y"));
        assert_eq!(h.header("git-protocol"), Some("version=2"));
        assert_eq!(h.headers[0], ("Host".to_string(), "h".to_string()));
        assert_eq!(h.body(), Ok(Body::None));

        assert!(head(b"", false).unwrap().is_none());
        assert!(head(b"\r\n", true).unwrap().is_none());
        assert!(head(b"\r\nGET / HTTP/1.1\r\n\r\n", true).unwrap().is_some());
        assert_eq!(
            head(b"\r\nGET / HTTP/1.1\r\n\r\n", false).err(),
            Some(Malformed::RequestLine(String::new()))
        );
        assert_eq!(
            head(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", true).err(),
            Some(Malformed::NoRequestLine)
        );
        assert_eq!(
            head(b"GET x HTTP/1.1\r\n\r\n", false).err(),
            Some(Malformed::RequestLine("GET x HTTP/1.1".to_string()))
        );
        assert_eq!(
            head(b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n", false).err(),
            Some(Malformed::Headers {
                method: "GET".to_string(),
                target: "/".to_string()
            })
        );
    }

    #[test]
    fn body_framing_follows_the_headers() {
        let with = |headers: &[(&str, &str)]| Head {
            method: "POST".to_string(),
            target: "/".to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        assert_eq!(
            with(&[("Content-Length", "12")]).body(),
            Ok(Body::Length(12))
        );
        assert_eq!(
            with(&[("transfer-encoding", "gzip, Chunked")]).body(),
            Ok(Body::Chunked)
        );
        assert!(with(&[("Transfer-Encoding", "gzip")]).body().is_err());
        assert!(with(&[("Content-Length", "1"), ("content-length", "2")])
            .body()
            .is_err());
        assert!(with(&[("Content-Length", "+1")]).body().is_err());
    }

    #[test]
    fn chunked_bodies_decode() {
        let mut input: &[u8] = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let mut out = Vec::new();
        let decode = |input: &mut &[u8], out: &mut Vec<u8>| {
            copy_body(input, Body::Chunked, out, Framing::Decode, Limits::NONE)
        };
        assert!(decode(&mut input, &mut out).is_ok());
        assert_eq!(out, b"Wikipedia");
        let mut bad: &[u8] = b"4\r\nWikiX\r\n0\r\n\r\n";
        assert!(decode(&mut bad, &mut Vec::new()).is_err());

        let limits = Limits {
            bytes: 8,
            chunks: 10,
        };
        let mut input: &[u8] = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        assert_eq!(
            copy_body(
                &mut input,
                Body::Chunked,
                &mut Vec::new(),
                Framing::Decode,
                limits
            ),
            Err(BodyError::TooLarge)
        );
        let mut input: &[u8] = b"abcdefghi";
        assert_eq!(
            copy_body(
                &mut input,
                Body::Length(9),
                &mut Vec::new(),
                Framing::Decode,
                limits
            ),
            Err(BodyError::TooLarge)
        );
    }

    #[test]
    fn chunked_bodies_are_kept_verbatim() {
        let keep = |input: &mut &[u8], body: Body, out: &mut Vec<u8>| {
            copy_body(input, body, out, Framing::Keep, Limits::NONE)
        };
        let raw: &[u8] = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut input = raw;
        let mut out = Vec::new();
        assert!(keep(&mut input, Body::Chunked, &mut out).is_ok());
        assert_eq!(out, &raw[..raw.len() - 4]);
        assert_eq!(input, b"NEXT");

        let mut bad: &[u8] = b"4\r\nWikiX\r\n0\r\n\r\n";
        assert!(keep(&mut bad, Body::Chunked, &mut Vec::new()).is_err());

        let mut input: &[u8] = b"abcdef";
        let mut out = Vec::new();
        assert!(keep(&mut input, Body::Length(4), &mut out).is_ok());
        assert_eq!(out, b"abcd");
    }
}
