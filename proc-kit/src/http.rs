//! HTTP/1.1 responses read from the client side: the head parser both the test kit and the
//! benchmark's load generator use, and a one-shot `GET`.
//!
//! The parser is deliberately small. It serves clients with one request in flight on a
//! connection, talking to servers under test (hyper, nginx): it finds the `\r\n\r\n` that ends
//! the head, the status code, the headers and `Content-Length`, and notes `Connection: close`.
//! No chunked bodies, no continuation lines, no pipelining. [`parse_head`] allocates nothing,
//! because the benchmark calls it once per response at full load on the same cores as the
//! server it measures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Response headers, names lowercased.
pub type Headers = Vec<(String, String)>;

/// The head of a response: its status and headers, borrowed from the bytes read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// The status code.
    pub status: u16,
    /// Where the body starts in the bytes parsed (just after the `\r\n\r\n`).
    pub body_start: usize,
    /// The header lines, `\r\n`-separated, without the status line.
    fields: &'a str,
}

impl<'a> Head<'a> {
    /// The headers in order, `(name, value)`, both trimmed; lines without a `:` are skipped.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        self.fields.split("\r\n").filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim(), v.trim()))
        })
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first `Content-Length`, if it is there and a number.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.parse().ok()
    }

    /// True if a `Connection` header says `close`: the server closes after this response.
    pub fn closes(&self) -> bool {
        self.headers()
            .any(|(k, v)| k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"))
    }
}

/// A response head that is not UTF-8 or has no status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed HTTP/1.1 response head")
    }
}

impl std::error::Error for Malformed {}

/// Parses the head at the start of `buf`: `Ok(None)` while the `\r\n\r\n` that ends it has not
/// arrived yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head<'_>>, Malformed> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| Malformed)?;
    let (status_line, fields) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed)?;
    Ok(Some(Head {
        status,
        body_start: end + 4,
        fields,
    }))
}

/// Parses one complete HTTP/1.1 response with a `Content-Length` (or read to EOF): (status,
/// headers lowercased, body). `None` if it is incomplete or malformed.
pub fn parse_response(buf: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let head = parse_head(buf).ok()??;
    let headers = head
        .headers()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let body = &buf[head.body_start..];
    match head.content_length() {
        Some(n) if body.len() >= n => Some((head.status, headers, &body[..n])),
        Some(_) => None,
        None => Some((head.status, headers, body)),
    }
}

/// One HTTP/1.1 GET with `Connection: close`; returns (status, body). Bounded by `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf)
        .map(|(status, _, body)| (status, String::from_utf8_lossy(body).into_owned()))
        .ok_or_else(|| {
            std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&buf)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: close\r\n\r\nhello";
        let h = parse_head(r).unwrap().unwrap();
        assert_eq!((h.status, h.body_start), (200, r.len() - 5));
        assert_eq!((h.content_length(), h.closes()), (Some(5), true));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        assert_eq!(parse_head(b"HTTP/1.1 OK\r\n\r\n"), Err(Malformed));
        assert_eq!(parse_head(b"HTTP/1.1 \xff\r\n\r\n"), Err(Malformed));
        let bare = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((bare.headers().count(), bare.closes()), (0, false));
    }

    #[test]
    fn whole_responses() {
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nX-A : b \r\n\r\nnope+";
        let (status, headers, body) = parse_response(r).unwrap();
        assert_eq!((status, body), (404, &b"nope"[..]));
        assert_eq!(headers[1], ("x-a".to_string(), "b".to_string()));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello"),
            None
        );
        let to_eof = parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap();
        assert_eq!(to_eof.2, b"all of it");
    }
}
