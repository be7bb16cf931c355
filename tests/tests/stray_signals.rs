//! No stray signal kills the master: `SIGUSR1`, `SIGALRM`, and every other signal
//! whose default action terminates the process (`SIGVTALRM`, `SIGPROF`, `SIGIO`, `SIGPWR`,
//! `SIGSTKFLT`, `SIGXCPU`, `SIGXFSZ`, the real-time signals) has a defined action in the master
//! (until one is given: logged and ignored). Its workers, which die with it, are untouched.
//! (`SIGUSR2` upgrades the master in place now: `samples/tests/master_upgrade.rs`.)
//!
//! Each signal is followed by a `SIGQUIT`, whose `on_quit` hook prints `hook on_quit`: that line
//! is the master saying it is alive after the signal. Two pending signals are delivered before
//! the loop runs again, so a master that the first one kills never prints the hook's line; and
//! the master's status is checked at every step, so a death fails the test at once, naming the
//! signal.
//! Synchronous signals (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGTRAP`, `SIGSYS`, `SIGABRT`) are
//! out of scope: a process cannot meaningfully ignore its own faults.

use std::collections::BTreeMap;

use testkit::fx::hook;
use testkit::probe::{assert_running, wait_alive};
use testkit::{DEADLINE, Master, Pid, Signal, alive, fx};

/// Starts two serving workers with hooks; returns the master and id → pid.
fn start() -> (Master, BTreeMap<String, i32>) {
    let m = fx!(&["--hooks", "--workers", "2", "--mode", "serve"]);
    m.stdout.wait_line(DEADLINE, hook("on_start"));
    let w = m.wait_workers(2, "id");
    (m, w)
}

/// Sends each of `sigs` (raw numbers, with their names) to the master, each followed by a
/// `SIGQUIT` probe; then checks that the workers are the same processes, that the master still
/// respawns a killed worker, and that it stops cleanly on `SIGTERM`.
fn survive(sigs: &[(i32, String)]) {
    let (mut m, workers) = start();
    let master = m.pid().as_raw();
    for (k, (sig, name)) in sigs.iter().enumerate() {
        // SAFETY: kill(2) with a pid this test started and has not reaped (the guard holds it).
        let r = unsafe { nix::libc::kill(master, *sig) };
        assert_eq!(r, 0, "kill({master}, {name})");
        m.signal(Signal::SIGQUIT);
        let probes = k + 1;
        wait_alive(
            &mut m,
            DEADLINE,
            &format!("the master to answer the SIGQUIT sent after {name}"),
            |m| (m.stdout.count(hook("on_quit")) >= probes).then_some(()),
        );
    }
    assert_running(&mut m, "the last stray signal");
    for (id, pid) in &workers {
        assert!(
            alive(*pid),
            "worker id={id} (pid {pid}) died: the stray signals reached it"
        );
    }
    assert_eq!(m.workers_by_arg("id"), workers, "no worker was replaced");

    // Still supervising: a killed worker comes back under its id.
    let victim = workers["0"];
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_alive(&mut m, DEADLINE, "id 0 respawned", |m| {
        m.workers_by_arg("id")
            .get("0")
            .is_some_and(|&p| p != victim)
            .then_some(())
    });
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0, "the master exits 0 on SIGTERM");
}

fn named(sigs: &[Signal]) -> Vec<(i32, String)> {
    sigs.iter()
        .map(|&s| (s as i32, s.as_str().to_string()))
        .collect()
}

#[test]
fn usr1_and_alrm_do_not_kill_the_master() {
    survive(&named(&[Signal::SIGUSR1, Signal::SIGALRM]));
}

#[test]
fn no_other_terminating_signal_kills_the_master() {
    let mut sigs = named(&[
        Signal::SIGVTALRM,
        Signal::SIGPROF,
        Signal::SIGIO,
        Signal::SIGPWR,
        Signal::SIGSTKFLT,
        Signal::SIGXCPU,
        Signal::SIGXFSZ,
    ]);
    for rt in nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX() {
        sigs.push((rt, format!("SIGRTMIN+{}", rt - nix::libc::SIGRTMIN())));
    }
    survive(&sigs);
}
