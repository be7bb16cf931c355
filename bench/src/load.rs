//! The load generator: HTTP/1.1 `GET /` over loopback, closed loop, bounded in requests and
//! time, with a latency histogram and an honest count of failures.
//!
//! Each client thread runs a single-threaded tokio runtime with its share of the connections.
//! A connection runs one request at a time (no pipelining): write the request, read until the
//! whole response (status line, headers, `Content-Length` body) is in, record the latency, go
//! again. Two kinds of connection loops:
//!
//! * **keep-alive**: one TCP connection reused; when a response says `Connection: close` (a
//!   draining worker does this) the connection is closed after it and a new one is opened for
//!   the next request. That is a clean close, not a failure.
//! * **fresh**: a new connection per request, sent with `Connection: close`; the client reads
//!   the response and then the server's end-of-file, so the server closes first (its side keeps
//!   the `TIME_WAIT`, the client's ephemeral port is free at once).
//!
//! A request **fails** when the connection cannot be opened, breaks (reset, end-of-file before
//! the whole response), the response is not `200 hello`, or nothing complete arrives within
//! [`REQUEST_TIMEOUT`]. Failed requests are counted by cause and never retried in secret.
//!
//! The response head is parsed by `proc_kit::http::parse_head` (the test kit's parser too,
//! allocation-free): this needs the `\r\n\r\n`, a `Content-Length`, and notes
//! `Connection: close`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proc_kit::http::parse_head;
use tokio::net::TcpStream;

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const REQ_KEEPALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const REQ_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// What load to apply.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Where.
    pub addr: SocketAddr,
    /// Keep-alive connections.
    pub keepalive: usize,
    /// Connection-per-request loops.
    pub fresh: usize,
    /// Client threads; the connections are spread over them.
    pub threads: usize,
    /// Upper bound on the run time.
    pub duration: Duration,
    /// Upper bound on the requests issued.
    pub max_requests: u64,
}

/// A latency histogram: log-linear buckets, 64 per power of two (≤ 1.6 % relative error),
/// values in nanoseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (64 * SUB) as usize],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        let e = 63 - (v | 1).leading_zeros();
        let shift = e.saturating_sub(SUB_BITS);
        (u64::from(shift) * SUB + (v >> shift)) as usize
    }

    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let mantissa = i - shift * SUB;
        // The middle of the bucket.
        (mantissa << shift) + (1 << shift) / 2
    }

    /// Records one value (ns).
    pub fn record(&mut self, ns: u64) {
        let i = Self::index(ns).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }

    /// Number of values recorded.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), ns; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

/// The outcome of a load run.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests answered `200 hello`.
    pub ok: u64,
    /// Requests that failed, by cause.
    pub failed: BTreeMap<String, u64>,
    /// Keep-alive connections closed cleanly by the server (`Connection: close`).
    pub server_closes: u64,
    /// From start until the last connection loop ended.
    pub elapsed: Duration,
    /// Latency of the successful requests.
    pub hist: Histogram,
}

impl Report {
    /// Total failed requests.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The failure causes, `cause×count, …`.
    pub fn failure_summary(&self) -> String {
        self.failed
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Shared {
    stop: AtomicBool,
    deadline: Instant,
    issued: AtomicU64,
    max_requests: u64,
}

impl Shared {
    /// False once the run must end; otherwise takes one request from the budget.
    fn go(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && self.issued.fetch_add(1, Ordering::Relaxed) < self.max_requests
    }
}

/// A load run in progress; [`finish`](Running::finish) ends it.
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<Report>>,
    started: Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Starts the load in the background.
pub fn start(spec: &Spec) -> anyhow::Result<Running> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        deadline: Instant::now() + spec.duration,
        issued: AtomicU64::new(0),
        max_requests: spec.max_requests,
    });
    let threads = spec.threads.max(1);
    let mut handles = Vec::new();
    for t in 0..threads {
        // Connection loops are dealt round-robin over the threads.
        let ka = (0..spec.keepalive).filter(|i| i % threads == t).count();
        let fr = (0..spec.fresh).filter(|i| i % threads == t).count();
        let shared = Arc::clone(&shared);
        let addr = spec.addr;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let mut set = tokio::task::JoinSet::new();
                        for _ in 0..ka {
                            set.spawn(conn_loop(addr, Arc::clone(&shared), true));
                        }
                        for _ in 0..fr {
                            set.spawn(conn_loop(addr, Arc::clone(&shared), false));
                        }
                        let mut total = Report::default();
                        while let Some(r) = set.join_next().await {
                            if let Ok(r) = r {
                                merge(&mut total, r);
                            }
                        }
                        total
                    })
                })?,
        );
    }
    Ok(Running {
        shared,
        threads: handles,
        started: Instant::now(),
    })
}

fn merge(total: &mut Report, r: Report) {
    total.ok += r.ok;
    total.server_closes += r.server_closes;
    for (k, v) in r.failed {
        *total.failed.entry(k).or_default() += v;
    }
    total.hist.merge(&r.hist);
}

impl Running {
    /// Ends the run (in-flight requests complete) and returns the totals.
    pub fn finish(self) -> Report {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut total = Report::default();
        for h in self.threads {
            if let Ok(r) = h.join() {
                merge(&mut total, r);
            }
        }
        total.elapsed = self.started.elapsed();
        total
    }

    /// Requests issued so far.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::Relaxed)
    }
}

/// Runs the load until its time or request budget is spent.
pub fn run(spec: &Spec) -> anyhow::Result<Report> {
    let r = start(spec)?;
    // The connection loops stop by themselves at the deadline or the budget; this only waits.
    let end = Instant::now() + spec.duration;
    while Instant::now() < end && r.issued() < spec.max_requests {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(r.finish())
}

async fn conn_loop(addr: SocketAddr, shared: Arc<Shared>, keepalive: bool) -> Report {
    let mut rep = Report::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let fail = |rep: &mut Report, why: &str| *rep.failed.entry(why.to_string()).or_default() += 1;
    while shared.go() {
        let t0 = Instant::now();
        if conn.is_none() {
            match tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                Ok(Err(e)) => {
                    fail(&mut rep, &format!("connect: {:?}", e.kind()));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                Err(_) => {
                    fail(&mut rep, "connect: timeout");
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let req = if keepalive { REQ_KEEPALIVE } else { REQ_CLOSE };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange(s, req, &mut buf, !keepalive)).await {
            Ok(Ok(close)) => {
                rep.ok += 1;
                rep.hist.record(t0.elapsed().as_nanos() as u64);
                if close {
                    if keepalive {
                        rep.server_closes += 1;
                    }
                    conn = None;
                }
            }
            Ok(Err(why)) => {
                fail(&mut rep, why);
                conn = None;
            }
            Err(_) => {
                fail(&mut rep, "timeout");
                conn = None;
            }
        }
    }
    rep
}

/// One request and its response. Ok(true) if the server closes the connection after it.
async fn exchange(
    s: &TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
    until_eof: bool,
) -> Result<bool, &'static str> {
    write_all(s, req).await.map_err(|e| io_cause("write", &e))?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let (head_end, len, close, status) = loop {
        let n = read_some(s, &mut chunk)
            .await
            .map_err(|e| io_cause("read", &e))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "closed before the response"
            } else {
                "closed inside the response"
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = parse_head(buf).map_err(|_| "bad response head")? {
            let len = h.content_length().ok_or("no content-length")?;
            break (h.body_start, len, h.closes(), h.status);
        }
    };
    while buf.len() < head_end + len {
        let n = read_some(s, &mut chunk)
            .await
            .map_err(|e| io_cause("read", &e))?;
        if n == 0 {
            return Err("closed inside the body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if status != 200 || &buf[head_end..head_end + len] != b"hello" {
        return Err("not 200 hello");
    }
    if until_eof || close {
        // The server closes after this response; wait for its end-of-file so it closes first.
        loop {
            match read_some(s, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        return Ok(true);
    }
    Ok(false)
}

fn io_cause(op: &'static str, e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match (op, e.kind()) {
        ("write", ConnectionReset) => "write: reset",
        ("write", BrokenPipe) => "write: broken pipe",
        ("write", _) => "write: other error",
        (_, ConnectionReset) => "read: reset",
        _ => "read: other error",
    }
}

/// Reads what is there (at least one byte, or 0 at end-of-file).
async fn read_some(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => s.readable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `data`.
async fn write_all(s: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match s.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => s.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for q in [0.5, 0.9, 0.99] {
            let want = q * 100_000_000.0;
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn histogram_index_is_monotonic_and_value_inverts_it() {
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(37) {
            let i = Histogram::index(v);
            assert!(i >= last);
            last = i;
            let back = Histogram::value(i);
            assert!(
                back.abs_diff(v) as f64 <= (v as f64 / 64.0).max(1.0),
                "{v} → {i} → {back}"
            );
        }
    }
}
