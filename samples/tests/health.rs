//! Hang detection and recycling, end to end with `sample-warp-like` (and `sample-axum`):
//!
//! * a worker blocked in a request (`/block`) is replaced within 2–4 s of a 2 s hang timeout,
//!   its replacement answering, the hung pid gone within the grace, one log line naming it;
//! * a response streamed for 3 × the timeout is not a hang;
//! * a master stopped (with its workers) for 2 × the timeout kills nobody once continued;
//! * `--max-requests 500 -w 2` under 20,000 requests: no failure, ≥ 20 recycles, and at every
//!   10 ms sample of the scoreboard at least 2 ready workers;
//! * `--max-memory-mb 64` and `/grow?mb=100` recycle that worker only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use testkit::load::{Load, LoadSpec};
use testkit::scoreboard::Scoreboard;
use testkit::{
    DEADLINE, Master, Pid, Signal, http_get, listening_addr, state, wait_for, wait_until,
    zombies_of,
};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker on one runtime thread, a 2 s hang timeout, the debug endpoints.
const ONE_WORKER_HANG_2S: &[&str] = &[
    "-w",
    "1",
    "--threads",
    "1",
    "--hang-timeout",
    "2",
    "--debug-endpoints",
];

fn start(bin: &str, args: &[&str]) -> Master {
    let mut cmd = Command::new(bin);
    cmd.args(["-p", "0"])
        .args(args)
        .env("RUST_LOG", "info,prefork_core=debug");
    Master::start(cmd)
}

fn warp(args: &[&str]) -> Master {
    start(env!("CARGO_BIN_EXE_sample-warp-like"), args)
}

/// `SIGTERM`: the master exits 0 and leaves no zombie.
fn stop(mut m: Master) {
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
}

/// Waits until the master logged that `n` workers are armed for hang detection.
fn wait_armed(m: &Master, n: usize) {
    m.stderr
        .wait_count(DEADLINE, n, &|l| l.contains("hang detection armed"));
}

/// Sends `GET path` with `Connection: close` and returns the connection, without reading.
fn send(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    s
}

/// Everything the server sends until it closes (or an error ends it).
fn read_all(mut s: TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn hang_lines(m: &Master) -> Vec<String> {
    m.stderr
        .all()
        .into_iter()
        .filter(|l| l.contains("worker hung"))
        .collect()
}

#[test]
fn a_hung_worker_is_replaced_within_two_to_four_seconds_then_aborted() {
    let m = warp(ONE_WORKER_HANG_2S);
    let addr = listening_addr(&m.stderr);
    let hung = m.wait_workers(1, "id")["0"];
    wait_armed(&m, 1);
    let conn = send(addr, "/block?ms=600000");
    let t0 = Instant::now();
    // A new worker for id 0 that answers.
    let new = wait_for(DEADLINE, "a new worker for id 0 that answers", || {
        let pid = *m.workers_by_arg("id").get("0")?;
        (pid != hung && http_get(addr, "/", IO_TIMEOUT).ok()? == (200, "hello".into()))
            .then_some(pid)
    });
    let took = t0.elapsed();
    eprintln!("replaced by {new} after {took:?}");
    // Beats come every 200 ms: the last one before the block is at most that old.
    assert!(
        took >= Duration::from_millis(1700),
        "judged before its 2 s timeout: {took:?}"
    );
    assert!(took <= Duration::from_secs(4), "took {took:?}");
    // Gone within the 5 s grace (SIGABRT ends it; SIGKILL would at the grace's end).
    wait_until(Duration::from_secs(6), "the hung worker to be gone", || {
        state(hung).is_none()
    });
    let lines = hang_lines(&m);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!("pid={hung}")), "{}", lines[0]);
    assert!(lines[0].contains("kernel="), "{}", lines[0]);
    // The blocked request's connection died with the hung worker.
    let _ = read_all(conn);
    assert_eq!(m.workers_by_arg("id")["0"], new);
    stop(m);
}

#[test]
fn a_response_streamed_for_three_timeouts_is_not_a_hang() {
    let m = warp(ONE_WORKER_HANG_2S);
    let addr = listening_addr(&m.stderr);
    let pid = m.wait_workers(1, "id")["0"];
    wait_armed(&m, 1);
    let t0 = Instant::now();
    // 61 chunks 100 ms apart: 6 s, three times the timeout.
    let body = read_all(send(addr, "/drip?ms=6100"));
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(6), "{took:?}");
    assert_eq!(
        body.matches("drip ").count(),
        61,
        "every chunk arrived: {body}"
    );
    assert!(body.contains("drip 60 pid"), "{body}");
    assert!(hang_lines(&m).is_empty(), "{:?}", hang_lines(&m));
    assert_eq!(
        m.workers_by_arg("id")["0"],
        pid,
        "the worker was not replaced"
    );
    stop(m);
}

#[test]
fn a_master_stopped_for_two_timeouts_with_its_workers_kills_nobody() {
    let m = warp(&["-w", "2", "--threads", "1", "--hang-timeout", "2"]);
    let addr = listening_addr(&m.stderr);
    let before = m.wait_workers(2, "id");
    wait_armed(&m, 2);
    // Stop the workers, then the master (a Ctrl-Z of the whole group, as it were).
    let all: Vec<i32> = before.values().copied().chain([m.pid().as_raw()]).collect();
    for &p in &all {
        nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGSTOP).unwrap();
    }
    wait_until(DEADLINE, "every process stopped", || {
        all.iter().all(|&p| state(p) == Some('T'))
    });
    let stopped_at = Instant::now();
    // Held for 2 × the timeout (checked, not slept: they must stay stopped).
    wait_until(Duration::from_secs(10), "4 s with everyone stopped", || {
        assert!(all.iter().all(|&p| state(p) == Some('T')));
        stopped_at.elapsed() >= Duration::from_secs(4)
    });
    // The master first: its first read of the scoreboard sees every beat 4 s old.
    m.signal(Signal::SIGCONT);
    m.stderr
        .wait_line(DEADLINE, |l| l.contains("the master itself stalled"));
    for &p in before.values() {
        nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGCONT).unwrap();
    }
    // A whole timeout and more later: the same workers, nobody judged.
    let resumed = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "3 s after the workers resumed",
        || resumed.elapsed() >= Duration::from_secs(3),
    );
    assert!(hang_lines(&m).is_empty(), "{:?}", hang_lines(&m));
    assert_eq!(m.workers_by_arg("id"), before);
    assert_eq!(http_get(addr, "/", IO_TIMEOUT).unwrap().0, 200);
    stop(m);
}

#[test]
fn max_requests_recycles_under_load_without_a_failure_or_a_capacity_dip() {
    let m = warp(&["-w", "2", "--threads", "1", "--max-requests", "500"]);
    let addr = listening_addr(&m.stderr);
    m.wait_workers(2, "id");
    let board = Scoreboard::of(m.pid().as_raw()).expect("the master holds a scoreboard");
    wait_until(DEADLINE, "2 ready workers on the scoreboard", || {
        board.ready(64) == 2
    });
    // Sample the scoreboard every 10 ms for as long as the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut min, mut samples) = (usize::MAX, 0u64);
            while !done.load(Ordering::Relaxed) {
                min = min.min(board.ready(64));
                samples += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (min, samples)
        })
    };
    let load = Load::start(
        addr,
        LoadSpec {
            keepalive: 6,
            fresh: 2,
            max_requests_per_thread: 2500,
            max_time: Duration::from_secs(120),
            io_timeout: Duration::from_secs(15),
        },
    );
    wait_until(Duration::from_secs(120), "20,000 requests", || {
        load.progress() >= 20_000
    });
    let report = load.finish();
    done.store(true, Ordering::Relaxed);
    let (min_ready, samples) = sampler.join().unwrap();
    let recycles = m
        .stderr
        .count(|l| l.contains("worker replaced") && l.contains("reason=max_requests"));
    eprintln!("{report:?}; {recycles} recycles; {samples} samples, min ready {min_ready}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    assert_eq!(report.ok, 20_000);
    assert!(recycles >= 20, "{recycles} recycles");
    assert!(samples > 50, "the sampler ran: {samples}");
    assert!(min_ready >= 2, "a sample saw {min_ready} ready workers");
    stop(m);
}

#[test]
fn max_memory_recycles_the_worker_that_grew_and_no_other() {
    let m = warp(&[
        "-w",
        "2",
        "--threads",
        "1",
        "--max-memory-mb",
        "64",
        "--debug-endpoints",
    ]);
    let addr = listening_addr(&m.stderr);
    let before = m.wait_workers(2, "id");
    let body = read_all(send(addr, "/grow?mb=100"));
    let grown: i32 = body
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"));
    let (id, _) = before
        .iter()
        .find(|(_, p)| **p == grown)
        .expect("the grown worker is one of ours");
    let after = wait_for(DEADLINE, "the grown worker replaced", || {
        let now = m.workers_by_arg("id");
        (now.len() == 2 && now[id] != grown && state(grown).is_none()).then_some(now)
    });
    for (other, pid) in &before {
        if other != id {
            assert_eq!(after[other], *pid, "id {other} was not touched");
        }
    }
    let lines = m.stderr.count(|l| l.contains("reason=max_memory"));
    assert_eq!(lines, 2, "one recycle decision and one replacement logged");
    assert!(
        m.stderr
            .count(|l| l.contains("reason=max_memory") && l.contains(&format!("pid={grown}")))
            >= 1
    );
    stop(m);
}

#[test]
fn sample_axum_recycles_by_request_count_too() {
    let m = start(
        env!("CARGO_BIN_EXE_sample-axum"),
        &["-w", "2", "--max-requests", "50"],
    );
    let addr = listening_addr(&m.stderr);
    m.wait_workers(2, "id");
    let mut failed = 0;
    for _ in 0..300 {
        match http_get(addr, "/", IO_TIMEOUT) {
            Ok((200, _)) => {}
            _ => failed += 1,
        }
    }
    assert_eq!(failed, 0);
    m.stderr.wait_count(DEADLINE, 2, &|l| {
        l.contains("worker replaced") && l.contains("reason=max_requests")
    });
    stop(m);
}
