//! A small, bounded HTTP/1.1 load client for tests.
//!
//! Keep-alive connections send requests back to back on one socket; fresh-connection threads
//! open a socket per request. A client may reconnect after a response that said
//! `Connection: close`; it never retries a request that failed: a refused connect, a reset, an
//! end-of-file or a timeout before a complete response each count as one failure. Every loop is
//! bounded by a request count and by time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a load run saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Complete 200 responses.
    pub ok: u64,
    /// Requests without a complete response.
    pub failed: u64,
    /// Complete responses with another status.
    pub non_200: u64,
    /// Responses that carried `Connection: close`.
    pub closes: u64,
    /// The first few failures, described.
    pub errors: Vec<String>,
}

impl LoadReport {
    fn merge(&mut self, o: LoadReport) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.non_200 += o.non_200;
        self.closes += o.closes;
        for e in o.errors {
            if self.errors.len() < 10 {
                self.errors.push(e);
            }
        }
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.errors.len() < 10 {
            self.errors.push(what);
        }
    }
}

/// A running load. Stop it with [`Load::finish`].
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<JoinHandle<LoadReport>>,
}

/// Bounds and shape of a load.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    /// Keep-alive connections, each sending back to back.
    pub keepalive: usize,
    /// Threads opening a new connection per request.
    pub fresh: usize,
    /// Per-thread request cap.
    pub max_requests_per_thread: u64,
    /// Time cap for the whole run.
    pub max_time: Duration,
    /// Timeout of each connect/read/write.
    pub io_timeout: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            keepalive: 4,
            fresh: 2,
            max_requests_per_thread: 200_000,
            max_time: Duration::from_secs(60),
            io_timeout: Duration::from_secs(10),
        }
    }
}

impl Load {
    /// Starts the load against `addr`, path `/`.
    pub fn start(addr: SocketAddr, spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + spec.max_time;
        let mut threads = Vec::new();
        for i in 0..spec.keepalive + spec.fresh {
            let keepalive = i < spec.keepalive;
            let (stop, done) = (stop.clone(), done.clone());
            threads.push(std::thread::spawn(move || {
                run(addr, keepalive, &stop, &done, deadline, spec)
            }));
        }
        Load {
            stop,
            done,
            threads,
        }
    }

    /// Requests completed so far (any outcome).
    pub fn progress(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the load and returns what it saw.
    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut r = LoadReport::default();
        for t in self.threads {
            match t.join() {
                Ok(part) => r.merge(part),
                Err(_) => r.fail("a load thread panicked".into()),
            }
        }
        r
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

fn run(
    addr: SocketAddr,
    keepalive: bool,
    stop: &AtomicBool,
    done: &AtomicU64,
    deadline: Instant,
    spec: LoadSpec,
) -> LoadReport {
    let mut r = LoadReport::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..spec.max_requests_per_thread {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        done.fetch_add(1, Ordering::Relaxed);
        let mut s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, spec.io_timeout) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(spec.io_timeout));
                    let _ = s.set_write_timeout(Some(spec.io_timeout));
                    let _ = s.set_nodelay(true);
                    s
                }
                Err(e) => {
                    r.fail(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let req = if keepalive { REQUEST } else { REQUEST_CLOSE };
        if let Err(e) = s.write_all(req) {
            r.fail(format!("write: {e}"));
            continue;
        }
        buf.clear();
        let outcome = loop {
            if let Some((status, headers, body)) = crate::parse_response(&buf) {
                let close = headers
                    .iter()
                    .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
                let has_len = headers.iter().any(|(k, _)| k == "content-length");
                if has_len || close {
                    break Ok((status, close, body.len()));
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) => {
                    // End-of-file: complete only if the response had no length and said close.
                    break Err(format!(
                        "end-of-file after {} bytes: {:?}",
                        buf.len(),
                        String::from_utf8_lossy(&buf)
                    ));
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => break Err(format!("read after {} bytes: {e}", buf.len())),
            }
        };
        match outcome {
            Ok((status, close, _)) => {
                if status == 200 {
                    r.ok += 1;
                } else {
                    r.non_200 += 1;
                    if r.errors.len() < 10 {
                        r.errors.push(format!("status {status}"));
                    }
                }
                if close {
                    r.closes += 1;
                } else if keepalive {
                    conn = Some(s);
                }
            }
            Err(e) => r.fail(e),
        }
    }
    r
}

/// Fresh connections opened at a steady pace: one every `interval`, each sending one
/// `GET /` with `Connection: close` at once, its response read by a second thread. So while the
/// reader waits, connections sit in the server's accept queues, which is where a listening
/// socket that closes would lose them.
#[derive(Debug)]
pub struct Paced {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    opener: JoinHandle<LoadReport>,
    reader: JoinHandle<LoadReport>,
}

impl Paced {
    /// Starts opening connections to `addr`, one per `interval`, for at most `max_time`.
    pub fn start(addr: SocketAddr, interval: Duration, max_time: Duration) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<(u64, TcpStream)>();
        let deadline = Instant::now() + max_time;
        let opener = {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                let mut r = LoadReport::default();
                let mut next = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        Ok(mut s) => {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                            match s.write_all(REQUEST_CLOSE) {
                                Ok(()) => {
                                    let _ = tx.send((n, s));
                                }
                                Err(e) => r.fail(format!("connection {n}: write: {e}")),
                            }
                        }
                        Err(e) => r.fail(format!("connection {n}: connect: {e}")),
                    }
                    opened.fetch_add(1, Ordering::Relaxed);
                    // The pace: the next connection is due one interval after this one was.
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                r
            })
        };
        let reader = std::thread::spawn(move || {
            let mut r = LoadReport::default();
            for (n, mut s) in rx {
                let mut buf = Vec::new();
                match s.read_to_end(&mut buf) {
                    Ok(_) => match crate::parse_response(&buf) {
                        Some((200, _, _)) => r.ok += 1,
                        Some((status, _, _)) => {
                            r.non_200 += 1;
                            if r.errors.len() < 10 {
                                r.errors.push(format!("connection {n}: status {status}"));
                            }
                        }
                        None => r.fail(format!(
                            "connection {n}: incomplete response ({} bytes)",
                            buf.len()
                        )),
                    },
                    Err(e) => r.fail(format!("connection {n}: read: {e}")),
                }
            }
            r
        });
        Paced {
            stop,
            opened,
            opener,
            reader,
        }
    }

    /// Connections opened (or attempted) so far.
    pub fn progress(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Stops opening, waits for every response, and returns what was seen.
    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut r = LoadReport::default();
        for t in [self.opener, self.reader] {
            match t.join() {
                Ok(part) => r.merge(part),
                Err(_) => r.fail("a load thread panicked".into()),
            }
        }
        r
    }
}

/// `rounds` `SIGHUP` reloads of `m` under a load of 8 keep-alive and 2 fresh-connection clients
/// on `addr`: after each signal, every worker of `workers` (id → pid, as
/// [`Master::wait_workers`](crate::Master::wait_workers) returns it) is replaced and the load
/// makes `after_each` more requests before the next round. Returns what the load saw; the
/// caller asserts on it.
pub fn reloads_under_load(
    m: &crate::Master,
    addr: SocketAddr,
    mut workers: std::collections::BTreeMap<String, i32>,
    rounds: usize,
    after_each: u64,
) -> LoadReport {
    let load = Load::start(
        addr,
        LoadSpec {
            keepalive: 8,
            fresh: 2,
            max_requests_per_thread: 1_000_000,
            max_time: Duration::from_secs(120),
            io_timeout: Duration::from_secs(15),
        },
    );
    crate::wait_for(crate::DEADLINE, "the load to get going", || {
        (load.progress() > 200).then_some(())
    });
    for round in 1..=rounds {
        let before = load.progress();
        m.signal(crate::Signal::SIGHUP);
        workers = m.wait_replaced(&workers);
        // Let the load run on the new workers too before the next reload.
        crate::wait_for(crate::DEADLINE, "requests after the reload", || {
            (load.progress() > before + after_each).then_some(())
        });
        eprintln!(
            "reload {round}: workers {workers:?}, {} requests so far",
            load.progress()
        );
    }
    let report = load.finish();
    eprintln!("{report:?}");
    report
}
