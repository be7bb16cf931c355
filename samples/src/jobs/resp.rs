//! A minimal Redis client: RESP2 over one blocking `TcpStream`, with timeouts.
//!
//! The job queue needs nine commands (`LPUSH`, `BLMOVE`, `LMOVE`, `HSETNX`, `LREM`, `SADD`,
//! `SREM`, `SMEMBERS`, `HLEN`…), all request/response, no pub/sub, no pipelining, no cluster.
//! That is a hundred lines of protocol, so the sample speaks it itself instead of pulling a
//! client crate and its dependency tree into every build of the workspace. A real application
//! with more needs would use the `redis` crate; nothing here depends on this choice beyond
//! [`Conn::cmd`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `:42`.
    Int(i64),
    /// `$…`: `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*…`: `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The bytes of a bulk string; `None` for a null reply (or anything else).
    pub fn into_bulk(self) -> Option<Vec<u8>> {
        match self {
            Reply::Bulk(b) => b,
            _ => None,
        }
    }

    /// The integer of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply, as bulk strings (others skipped).
    pub fn into_bulks(self) -> Vec<Vec<u8>> {
        match self {
            Reply::Array(Some(items)) => items.into_iter().filter_map(Reply::into_bulk).collect(),
            _ => Vec::new(),
        }
    }
}

/// Where a Redis server is: `redis://HOST:PORT[/DB]` (port 6379 by default).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedisUrl {
    /// `host:port`.
    pub addr: String,
    /// The database number (`SELECT`), 0 by default.
    pub db: u32,
}

impl std::str::FromStr for RedisUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{s:?} is not a redis:// URL"))?;
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse()
                    .map_err(|_| format!("{s:?}: the database must be a number"))?,
            ),
            None => (rest, 0),
        };
        if hostport.is_empty() || hostport.contains('@') {
            return Err(format!("{s:?}: expected redis://HOST:PORT[/DB]"));
        }
        let addr = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty())
        {
            hostport.to_string()
        } else {
            format!("{}:6379", hostport.trim_end_matches(':'))
        };
        Ok(RedisUrl { addr, db })
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}/{}", self.addr, self.db)
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    /// Connects within `timeout`; every later read and write times out after `io_timeout`.
    pub fn connect(url: &RedisUrl, timeout: Duration, io_timeout: Duration) -> io::Result<Conn> {
        let mut last = None;
        for a in url.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(io_timeout))?;
                    s.set_write_timeout(Some(io_timeout))?;
                    let mut c = Conn {
                        reader: BufReader::new(s.try_clone()?),
                        writer: s,
                    };
                    if url.db != 0 {
                        c.cmd(&[b"SELECT", url.db.to_string().as_bytes()])?;
                    }
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| proto(format!("{}: no address", url.addr))))
    }

    /// Sends one command and reads its reply. A Redis error reply is an `io::Error` of kind
    /// `Other` carrying the server's message.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&buf)?;
        self.read_reply()
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        if !line.ends_with(b"\r\n") {
            return Err(proto("a reply line without CRLF"));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| proto("a reply line that is not UTF-8"))
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let num = || {
            rest.parse::<i64>()
                .map_err(|_| proto(format!("bad number in {line:?}")))
        };
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Err(io::Error::other(format!("redis: {rest}"))),
            ":" => Ok(Reply::Int(num()?)),
            "$" => {
                let n = num()?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut data = vec![0; n as usize + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(n as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let n = num()?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    items.push(self.read_reply()?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(proto(format!("unknown reply {line:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: RedisUrl = "redis://127.0.0.1:7000/2".parse().unwrap();
        assert_eq!(u.addr, "127.0.0.1:7000");
        assert_eq!(u.db, 2);
        let u: RedisUrl = "redis://localhost".parse().unwrap();
        assert_eq!(u.addr, "localhost:6379");
        assert!("http://x".parse::<RedisUrl>().is_err());
        assert!("redis://127.0.0.1:1/x".parse::<RedisUrl>().is_err());
    }
}
