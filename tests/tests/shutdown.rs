//! Stopping the master: `SIGTERM` gives workers `shutdown_timeout` and then `SIGKILL`s them; a
//! second `SIGTERM` escalates at once; `SIGINT`/`SIGTERM` run their hooks and then `on_finish`;
//! workers that drain on their stop signal end by themselves. The master exits 0 each time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testkit::fx::hook;
use testkit::{DEADLINE, Master, Signal, alive, fx, signal_masks, wait_until};

/// The `SIGTERM` bit of a `/proc/<pid>/status` signal set.
const TERM_BIT: u64 = 1 << (nix::libc::SIGTERM - 1);

fn logged(what: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| l.contains(what)
}

/// Starts `n` workers in `mode` with `--shutdown-ms <shutdown_ms>`, and waits for each to have
/// `SIGTERM` in its ignored (`ign`) or caught (`!ign`) set, so that a stop signal meets the
/// behaviour under test, not the default action.
fn start_with_term(
    n: usize,
    mode: &str,
    shutdown_ms: &str,
    ign: bool,
) -> (Master, BTreeMap<String, i32>) {
    let m = fx!(&[
        "--workers",
        &n.to_string(),
        "--mode",
        mode,
        "--shutdown-ms",
        shutdown_ms,
    ]);
    let w = m.wait_workers(n, "id");
    for &pid in w.values() {
        wait_until(DEADLINE, &format!("worker {pid} handles SIGTERM"), || {
            signal_masks(pid).is_some_and(|(_, i, c)| (if ign { i } else { c }) & TERM_BIT != 0)
        });
    }
    (m, w)
}

/// Asserts that the master's log says each of `pids` exited with `status` (e.g. `signal SIGKILL`).
fn assert_exits(m: &Master, pids: &BTreeMap<String, i32>, status: &str) {
    m.wait_output_closed(DEADLINE);
    let log = m.stderr.all();
    for pid in pids.values() {
        let line = log
            .iter()
            .find(|l| l.contains("worker exited") && l.contains(&format!(" pid={pid} ")))
            .unwrap_or_else(|| panic!("no exit logged for worker {pid}: {log:#?}"));
        assert!(
            line.contains(&format!("status={status}")),
            "worker {pid}: wanted {status}: {line}"
        );
        assert!(!alive(*pid), "worker {pid} is gone");
    }
}

#[test]
fn workers_that_ignore_term_are_killed_at_the_shutdown_deadline() {
    let (mut m, w) = start_with_term(2, "ignore-term", "1500", true);
    let t = Instant::now();
    m.signal(Signal::SIGTERM);
    let code = m.wait_exit(DEADLINE);
    let took = t.elapsed();
    eprintln!("shutdown with workers ignoring TERM took {took:?}");
    m.wait_output_closed(DEADLINE);
    assert_eq!(code, 0, "the master exits 0");
    assert!(
        took >= Duration::from_millis(1500),
        "the master killed the workers before the 1.5 s deadline: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500 + 5000),
        "the master took {took:?} to stop"
    );
    m.stderr.wait_line(
        DEADLINE,
        logged("shutdown deadline passed; sending SIGKILL"),
    );
    // They survived the TERM: SIGKILL is what ended them.
    assert_exits(&m, &w, "signal SIGKILL");
}

#[test]
fn a_second_term_during_shutdown_kills_at_once() {
    let (mut m, w) = start_with_term(2, "ignore-term", "60000", true);
    let t = Instant::now();
    m.signal(Signal::SIGTERM);
    // The first TERM was handled (the two would coalesce otherwise).
    m.stderr.wait_line(DEADLINE, logged("stopping"));
    assert!(m.running(), "the master waits for its ignoring workers");
    let t2 = Instant::now();
    m.signal(Signal::SIGTERM);
    let code = m.wait_exit(DEADLINE);
    let (total, after_second) = (t.elapsed(), t2.elapsed());
    eprintln!("second TERM: exit {after_second:?} after it, {total:?} after the first");
    m.wait_output_closed(DEADLINE);
    assert_eq!(code, 0, "the master exits 0");
    assert!(
        after_second < Duration::from_secs(10),
        "the second TERM did not escalate: {after_second:?}"
    );
    m.stderr
        .wait_line(DEADLINE, logged("second stop signal; sending SIGKILL"));
    assert_eq!(
        m.stderr.count(logged("shutdown deadline passed")),
        0,
        "killed by the second TERM, not by the deadline"
    );
    assert_exits(&m, &w, "signal SIGKILL");
}

/// Index of the one line equal to `hook <name>`; panics if there is not exactly one.
fn hook_at(out: &[String], name: &str) -> usize {
    let want = format!("hook {name}");
    let at: Vec<usize> = (0..out.len()).filter(|&i| out[i] == want).collect();
    assert_eq!(at.len(), 1, "exactly one `{want}`: {out:#?}");
    at[0]
}

fn stop_with_hooks(sig: Signal, called: &str, not_called: &str) {
    let mut m = fx!(&["--hooks", "--workers", "2", "--mode", "serve"]);
    m.stdout.wait_line(DEADLINE, hook("on_start"));
    m.wait_workers(2, "id");
    m.signal(sig);
    assert_eq!(m.wait_exit(DEADLINE), 0, "the master exits 0");
    m.wait_output_closed(DEADLINE);
    let out = m.stdout.all();
    let c = hook_at(&out, called);
    let f = hook_at(&out, "on_finish");
    assert!(c < f, "`{called}` before `on_finish`: {out:#?}");
    assert!(
        !out.iter().any(|l| *l == format!("hook {not_called}")),
        "`{not_called}` was not called: {out:#?}"
    );
}

#[test]
fn sigint_calls_on_interrupt_then_on_finish() {
    stop_with_hooks(Signal::SIGINT, "on_interrupt", "on_terminate");
}

#[test]
fn sigterm_calls_on_terminate_then_on_finish() {
    stop_with_hooks(Signal::SIGTERM, "on_terminate", "on_interrupt");
}

#[test]
fn draining_workers_finish_by_themselves_on_term() {
    let (mut m, w) = start_with_term(3, "drain", "20000", false);
    let t = Instant::now();
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0, "the master exits 0");
    let took = t.elapsed();
    eprintln!("drain shutdown took {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "the master waited for the deadline: {took:?}"
    );
    m.wait_output_closed(DEADLINE);
    let out = m.stdout.all();
    for id in w.keys() {
        let want = format!("worker {id} drained");
        assert_eq!(
            out.iter().filter(|l| **l == want).count(),
            1,
            "`{want}` once: {out:#?}"
        );
    }
    assert_eq!(
        m.stderr.count(logged("shutdown deadline passed")),
        0,
        "nobody needed a SIGKILL"
    );
    assert_exits(&m, &w, "exit status 0");
}
