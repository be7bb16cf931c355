//! The stop signal, end to end: a worker handles exactly the signal the master was configured
//! with (carried in its boot header), retired workers and a shutdown use it, a retired worker
//! that dies from it is a warning; and a `SIGTERM` that arrives while a reload is settling
//! sends each worker its stop signal once, never twice.

use std::collections::BTreeMap;

use testkit::{DEADLINE, Master, Signal, fx};

/// Lines `worker <id> pid <pid> got <SIG>` on the master's stdout, counted per pid.
fn stops_per_pid(m: &Master) -> BTreeMap<i32, Vec<String>> {
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for l in m.stdout.all() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let ["worker", _, "pid", pid, "got", sig] = f.as_slice()
            && let Ok(pid) = pid.parse()
        {
            out.entry(pid).or_default().push(sig.to_string());
        }
    }
    out
}

#[test]
fn a_configured_stop_signal_is_the_one_workers_drain_on() {
    let mut m = fx!(&[
        "--workers",
        "2",
        "--mode",
        "drain",
        "--stop-signal",
        "USR1",
        "--readiness",
        "explicit",
        "--stop-ms",
        "20000",
        "--shutdown-ms",
        "20000",
    ]);
    let before = m.wait_workers(2, "id");
    // A reload retires both with SIGUSR1: they drain (exit 0) instead of dying from it.
    m.signal(Signal::SIGHUP);
    let after = m.wait_replaced(&before);
    for id in before.keys() {
        m.stdout
            .wait_line(DEADLINE, |l| l == format!("worker {id} stopped by SIGUSR1"));
    }
    for pid in before.values() {
        let line = m.stderr.wait_line(DEADLINE, |l| {
            l.contains("retired worker") && l.contains(&format!(" pid={pid} "))
        });
        assert!(line.contains("exit status 0"), "drained: {line}");
    }
    // The default on_terminate sends the configured stop signal too.
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    m.wait_output_closed(DEADLINE);
    let out = m.stdout.all();
    for id in after.keys() {
        let n = out
            .iter()
            .filter(|l| **l == format!("worker {id} stopped by SIGUSR1"))
            .count();
        assert_eq!(
            n, 2,
            "both generations of id {id} drained on SIGUSR1: {out:#?}"
        );
    }
    assert_eq!(
        m.stderr.count(|l| l.contains("shutdown deadline passed")),
        0,
        "nobody needed a SIGKILL"
    );
}

#[test]
fn a_retired_worker_that_dies_from_its_stop_signal_is_a_warning() {
    // `sleep` workers do not handle any signal: SIGUSR1's default action kills them.
    let m = fx!(&["--workers", "1", "--mode", "sleep", "--stop-signal", "USR1",]);
    let before = m.wait_workers(1, "id");
    m.signal(Signal::SIGHUP);
    m.wait_replaced(&before);
    let pid = before["0"];
    let line = m.stderr.wait_line(DEADLINE, |l| {
        l.contains("retired worker") && l.contains(&format!(" pid={pid} "))
    });
    assert!(line.contains("WARN"), "a warning: {line}");
    assert!(line.contains("signal SIGUSR1"), "{line}");
    assert!(line.contains("instead of draining"), "{line}");
}

#[test]
fn term_during_a_settling_reload_signals_each_worker_once() {
    // Implicit readiness: a replacement takes over only after the 1 s startup window, so a
    // TERM right after the HUP lands while every replacement is still settling.
    let mut m = fx!(&[
        "--workers",
        "3",
        "--mode",
        "count-stops",
        "--readiness",
        "implicit",
        "--shutdown-ms",
        "20000",
        "--stop-ms",
        "20000",
    ]);
    let before = m.wait_workers(3, "id");
    m.signal(Signal::SIGHUP);
    // All three replacements run beside the old workers (none has taken over yet: the window
    // is 1 s), each with its stop signal blocked, waiting for it (so a TERM is counted, not
    // fatal).
    m.stdout
        .wait_count(DEADLINE, 6, &|l| l.ends_with("counting stops"));
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0, "the master exits 0");
    m.wait_output_closed(DEADLINE);
    let stops = stops_per_pid(&m);
    for pid in before.values() {
        assert_eq!(
            stops.get(pid).map(Vec::len),
            Some(1),
            "old worker {pid} got its stop signal exactly once: {stops:?}"
        );
    }
    assert_eq!(
        stops.len(),
        6,
        "every worker, old and new, was asked to stop: {stops:?}"
    );
    for (pid, sigs) in &stops {
        assert_eq!(sigs.len(), 1, "worker {pid} was signalled twice: {sigs:?}");
    }
    assert_eq!(
        m.stderr.count(|l| l.contains("worker replaced")),
        0,
        "no replacement completed after the shutdown began"
    );
}
