//! The master never blocks on its log, and neither does a worker: with standard error a pipe
//! that nobody reads (a stalled log shipper), `sample-warp-like` respawns every one of 100
//! killed workers under its id, its workers serve (none is stuck in a log line written after
//! it reported ready), `SIGHUP` replaces them all and `SIGTERM` stops the master with status 0.
//! What did not fit is dropped, and once the reader resumes the master says how many lines it
//! dropped.
//!
//! Workers are killed round robin, each once it is past the startup window, so that every
//! death is one of a worker that served (respawned at once), never a failed start (backoff).
//! The pipe holds one page (4 KiB), so a few dozen log lines fill it; `FIONREAD` on the test's
//! read end proves it filled. The program logs through the samples' `init_tracing`
//! (tracing-subscriber's fmt layer on standard error), in the master and in the workers. The
//! drop report is recognised by `testkit::logpipe::dropped_count` (a line containing
//! `dropped` and a positive count).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::logpipe::{LogPipe, dropped_count};
use testkit::probe::{age, free_port, wait_alive, wait_exit_or_report};
use testkit::{DEADLINE, Master, Pid, Signal, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_sample-warp-like");
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const WORKERS: usize = 8;
const KILLS: usize = 100;
/// A worker is killed only once it is older than the library's default startup window (1 s):
/// a younger one's death is a failed start, retried with a growing backoff, and 100 of those
/// would make this test slow, not stricter.
const SETTLED: Duration = Duration::from_millis(1200);

/// Starts `sample-warp-like -w 8 --threads 1` on a free port with its standard error into
/// `pipe`; waits until it serves. Returns the master, its address and id → pid.
fn start(pipe: &mut LogPipe) -> (Master, SocketAddr, BTreeMap<String, i32>) {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "-p",
        &port.to_string(),
        "-w",
        &WORKERS.to_string(),
        "--threads",
        "1",
    ]);
    pipe.attach(&mut cmd);
    let mut m = Master::start(cmd);
    pipe.spawned();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_alive(&mut m, DEADLINE, "GET / answered", |_| {
        http_get(addr, "/", IO_TIMEOUT).ok()
    });
    let w = wait_alive(&mut m, DEADLINE, "all workers", |m| {
        let w = m.workers_by_arg("id");
        (w.len() == WORKERS && m.workers().len() == WORKERS).then_some(w)
    });
    (m, addr, w)
}

/// Waits until the worker of `id` is older than [`SETTLED`], `SIGKILL`s it and waits until a
/// new process runs that id; returns id → pid.
fn kill_and_respawn(m: &mut Master, id: &str, what: &str) -> BTreeMap<String, i32> {
    let victim = m.workers_by_arg("id")[id];
    wait_alive(m, DEADLINE, &format!("worker id={id} settled"), |_| {
        age(victim).is_some_and(|a| a >= SETTLED).then_some(())
    });
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_alive(m, DEADLINE, what, |m| {
        let w = m.workers_by_arg("id");
        (w.len() == WORKERS && w.get(id).is_some_and(|&p| p != victim)).then_some(w)
    })
}

/// `n` sequential requests, each answered `200 hello` within the I/O timeout.
fn all_answered(m: &mut Master, addr: SocketAddr, n: usize, when: &str) {
    for i in 0..n {
        let r = http_get(addr, "/", IO_TIMEOUT);
        testkit::probe::assert_running(m, when);
        assert_eq!(
            r.as_ref().map_err(|e| e.to_string()),
            Ok(&(200, "hello".to_string())),
            "request {i} {when}: a worker that reported ready does not serve (stuck writing its \
             log?)"
        );
    }
}

#[test]
fn a_log_nobody_reads_stops_nothing() {
    let mut pipe = LogPipe::new();
    let (mut m, addr, workers) = start(&mut pipe);
    let ids: Vec<String> = workers.keys().cloned().collect();

    // 100 kills, round robin over the ids; each id must come back before the next kill.
    for k in 0..KILLS {
        let id = &ids[k % ids.len()];
        kill_and_respawn(
            &mut m,
            id,
            &format!(
                "kill {}/{KILLS}: worker id={id} respawned ({} bytes unread in the log pipe)",
                k + 1,
                pipe.unread()
            ),
        );
    }
    let unread = pipe.unread();
    assert!(
        unread * 2 >= pipe.capacity(),
        "the log pipe filled up (the test stalls the log): {unread} of {} bytes",
        pipe.capacity()
    );
    all_answered(&mut m, addr, 10, "after the kills");

    // A reload, still unread.
    let before = m.workers_by_arg("id");
    m.signal(Signal::SIGHUP);
    wait_alive(
        &mut m,
        DEADLINE,
        "every worker replaced after SIGHUP",
        |m| {
            let w = m.workers_by_arg("id");
            (w.len() == WORKERS
                && m.workers().len() == WORKERS
                && w.iter().all(|(id, p)| before.get(id) != Some(p)))
            .then_some(())
        },
    );
    all_answered(&mut m, addr, 10, "after the reload");

    // The reader resumes; the next log events must carry the count of what was dropped.
    let log = pipe.resume();
    let end = Instant::now() + DEADLINE;
    let mut k = 0;
    let report = loop {
        if let Some(l) = log.wait_line(Duration::from_millis(500), |l| dropped_count(l).is_some()) {
            break l;
        }
        assert!(
            Instant::now() < end,
            "no report of dropped log lines within {DEADLINE:?} after the reader resumed; \
             read since:\n{}",
            log.all().join("\n")
        );
        // Something to log.
        let id = &ids[k % ids.len()];
        kill_and_respawn(&mut m, id, "a respawn after the reader resumed");
        k += 1;
    };
    eprintln!("drop report: {report}");
    assert!(dropped_count(&report).unwrap() > 0);

    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0, "the master exits 0 on SIGTERM");
}

#[test]
fn term_stops_a_master_whose_log_is_not_read() {
    let mut pipe = LogPipe::new();
    let (mut m, addr, workers) = start(&mut pipe);
    let ids: Vec<String> = workers.keys().cloned().collect();
    // Fill the pipe: kill workers (each a log line or two) until it is nearly full.
    let mut k = 0;
    while pipe.unread() + 512 < pipe.capacity() {
        assert!(
            k < KILLS,
            "the log pipe never filled: {} bytes",
            pipe.unread()
        );
        let id = &ids[k % ids.len()];
        kill_and_respawn(
            &mut m,
            id,
            &format!("kill {}: worker id={id} respawned", k + 1),
        );
        k += 1;
    }
    all_answered(&mut m, addr, 5, "with the log pipe full");
    m.signal(Signal::SIGTERM);
    let code = wait_exit_or_report(&mut m, DEADLINE, "SIGTERM, with its log pipe full");
    assert_eq!(code, 0, "the master exits 0 on SIGTERM with its log unread");
}
