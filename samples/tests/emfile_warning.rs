//! The warning for a worker out of file descriptors (`accept`: `EMFILE`) is rate-limited: a
//! worker at its fd limit with connections waiting retries its accept every few milliseconds,
//! and must not write a log line for every retry (hundreds a second, per worker, for as long as
//! the limit holds).
//!
//! `sample-warp-like -w 1` runs with `RLIMIT_NOFILE` 24 (set by the test as its parent; the
//! worker inherits it). The test opens 40 idle connections, which the worker accepts until it
//! has no fd left; the rest wait in the queue, so every accept fails with `EMFILE` until the
//! server's header read timeout (10 s) closes the idle ones. In the 3 s after the first
//! warning, at most 10 lines may mention the error.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::parent::with_nofile;
use testkit::probe::assert_running;
use testkit::{DEADLINE, Master, Signal, http_get, listening_addr, wait_for, wait_until};

const NOFILE: u64 = 24;
const CONNECTIONS: usize = 40;
const WINDOW: Duration = Duration::from_secs(3);
const MAX_LINES: usize = 10;

fn is_emfile(l: &str) -> bool {
    l.contains("Too many open files") || l.contains("os error 24") || l.contains("EMFILE")
}

#[test]
fn the_emfile_warning_is_rate_limited() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sample-warp-like"));
    cmd.args(["-p", "0", "-w", "1", "--threads", "1"]);
    with_nofile(&mut cmd, NOFILE);
    let mut m = Master::start(cmd);
    let addr = listening_addr(&m.stderr);
    m.wait_workers(1, "id");
    wait_for(DEADLINE, "GET / answered", || {
        http_get(addr, "/", Duration::from_secs(5)).ok()
    });

    let conns: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap())
        .collect();
    let first = m.stderr.wait_line(DEADLINE, is_emfile);
    let t0 = Instant::now();
    eprintln!("first: {first}");
    wait_until(
        WINDOW + Duration::from_secs(1),
        "the observation window",
        || t0.elapsed() >= WINDOW,
    );
    assert_running(&mut m, "the EMFILE window");
    let n = m.stderr.count(is_emfile);
    eprintln!("{n} lines about EMFILE in {:?}", t0.elapsed());
    assert!(
        n <= MAX_LINES,
        "{n} log lines about EMFILE in {WINDOW:?} (at most {MAX_LINES}): not rate-limited; the \
         first: {first}"
    );
    drop(conns);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
