//! Stopping the master: `SIGTERM` gives workers `shutdown_timeout` and then `SIGKILL`s them; a
//! second `SIGTERM` escalates at once; `SIGINT`/`SIGTERM` run their hooks and then `on_finish`;
//! workers that drain on their stop signal end by themselves. The master exits 0 each time.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{DEADLINE, Master, Signal, alive, signal_masks, wait_until};

/// The `SIGTERM` bit of a `/proc/<pid>/status` signal set.
const TERM_BIT: u64 = 1 << (nix::libc::SIGTERM - 1);

fn fx(args: &[&str]) -> Master {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.args(args);
    Master::start(cmd)
}

/// The log text without its ANSI colour codes (tracing-subscriber colours even into a pipe).
fn plain(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut it = l.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn logged(what: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| plain(l).contains(what)
}

/// Waits for `n` workers and for each to have `SIGTERM` in its ignored (`ign`) or caught
/// (`!ign`) set, so that a stop signal meets the behaviour under test, not the default action.
fn workers_with_term(m: &Master, n: usize, ign: bool) -> BTreeMap<String, i32> {
    let w = m.wait_workers(n, "id");
    for &pid in w.values() {
        wait_until(DEADLINE, &format!("worker {pid} handles SIGTERM"), || {
            signal_masks(pid).is_some_and(|(_, i, c)| (if ign { i } else { c }) & TERM_BIT != 0)
        });
    }
    w
}

/// Waits until the master and every worker are gone and their output is read to the end
/// (both pipes closed), so that what follows sees every line.
fn wait_output_closed(m: &Master) {
    wait_until(DEADLINE, "the master's stdout and stderr closed", || {
        m.stdout.closed() && m.stderr.closed()
    });
}

/// Asserts that the master's log says each of `pids` exited with `status` (e.g. `signal SIGKILL`).
fn assert_exits(m: &Master, pids: &BTreeMap<String, i32>, status: &str) {
    wait_output_closed(m);
    let log: Vec<String> = m.stderr.all().iter().map(|l| plain(l)).collect();
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
    let mut m = fx(&[
        "--workers",
        "2",
        "--mode",
        "ignore-term",
        "--shutdown-ms",
        "1500",
    ]);
    let w = workers_with_term(&m, 2, true);
    let t = Instant::now();
    m.signal(Signal::SIGTERM);
    let code = m.wait_exit(DEADLINE);
    let took = t.elapsed();
    eprintln!("shutdown with workers ignoring TERM took {took:?}");
    wait_output_closed(&m);
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
    let mut m = fx(&[
        "--workers",
        "2",
        "--mode",
        "ignore-term",
        "--shutdown-ms",
        "60000",
    ]);
    let w = workers_with_term(&m, 2, true);
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
    wait_output_closed(&m);
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

fn hook(name: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| l == format!("hook {name}")
}

/// Index of the one line equal to `hook <name>`; panics if there is not exactly one.
fn hook_at(out: &[String], name: &str) -> usize {
    let want = format!("hook {name}");
    let at: Vec<usize> = (0..out.len()).filter(|&i| out[i] == want).collect();
    assert_eq!(at.len(), 1, "exactly one `{want}`: {out:#?}");
    at[0]
}

fn stop_with_hooks(sig: Signal, called: &str, not_called: &str) {
    let mut m = fx(&["--hooks", "--workers", "2", "--mode", "serve"]);
    m.stdout.wait_line(DEADLINE, hook("on_start"));
    m.wait_workers(2, "id");
    m.signal(sig);
    assert_eq!(m.wait_exit(DEADLINE), 0, "the master exits 0");
    wait_output_closed(&m);
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
    let mut m = fx(&[
        "--workers",
        "3",
        "--mode",
        "drain",
        "--shutdown-ms",
        "20000",
    ]);
    let w = workers_with_term(&m, 3, false);
    let t = Instant::now();
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0, "the master exits 0");
    let took = t.elapsed();
    eprintln!("drain shutdown took {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "the master waited for the deadline: {took:?}"
    );
    wait_output_closed(&m);
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
