//! The master does not keep the signal state its parent left it: started with `SIGCHLD`,
//! `SIGHUP` and `SIGTERM` blocked, it still reaps and respawns a killed worker, reloads on
//! `SIGHUP` and stops on `SIGTERM` well within its deadline; started with `SIGUSR1`, `SIGUSR2`
//! and `SIGPIPE` ignored, its workers still start with the default dispositions and an empty
//! mask.
//!
//! A blocked mask and `SIG_IGN` survive `exec`: a shell script, a supervisor or a CI runner
//! that blocked or ignored signals hands them down. The parent here is the test itself, through
//! `pre_exec` (see `testkit::parent`).
//!
//! `SIGPIPE` cannot be checked in a worker: a Rust program ignores it at start by itself; the
//! worker check is on `SIGUSR1` and `SIGUSR2`.

use std::process::Command;

use testkit::parent::{sig_bit, with_signal_state};
use testkit::probe::wait_alive;
use testkit::{DEADLINE, Master, Pid, Signal, signal_masks, zombies_of};

fn fx_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.args(args);
    cmd
}

#[test]
fn a_master_started_with_chld_hup_term_blocked_reaps_reloads_and_stops() {
    let mut cmd = fx_command(&["--workers", "2", "--mode", "serve", "--shutdown-ms", "3000"]);
    with_signal_state(
        &mut cmd,
        &[Signal::SIGCHLD, Signal::SIGHUP, Signal::SIGTERM],
        &[],
    );
    let mut m = Master::start(cmd);
    let master = m.pid().as_raw();
    let w = m.wait_workers(2, "id");

    // A killed worker is reaped and respawned under its id.
    let victim = w["0"];
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_alive(
        &mut m,
        DEADLINE,
        "worker id=0 reaped and respawned after SIGKILL (a blocked SIGCHLD leaves it a zombie)",
        |m| {
            let now = m.workers_by_arg("id");
            (now.get("0").is_some_and(|&p| p != victim) && !zombies_of(master).contains(&victim))
                .then_some(())
        },
    );

    // SIGHUP reloads: every worker is replaced.
    let before = m.wait_workers(2, "id");
    m.signal(Signal::SIGHUP);
    wait_alive(
        &mut m,
        DEADLINE,
        "every worker replaced after SIGHUP",
        |m| {
            let now = m.workers_by_arg("id");
            (now.len() == 2
                && m.workers().len() == 2
                && now.iter().all(|(id, pid)| before.get(id) != Some(pid)))
            .then_some(())
        },
    );

    // SIGTERM stops it, with exit status 0, long before its 3 s shutdown deadline would even
    // matter (the workers do not ignore TERM).
    m.signal(Signal::SIGTERM);
    let code = m.wait_exit(DEADLINE);
    assert_eq!(code, 0, "the master exits 0 on SIGTERM");
}

#[test]
fn workers_start_with_default_dispositions_when_the_parent_ignored_signals() {
    let mut cmd = fx_command(&["--workers", "2", "--mode", "serve"]);
    with_signal_state(
        &mut cmd,
        &[],
        &[Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGPIPE],
    );
    // The set-up works: a shell started the same way reports SIGUSR1 ignored. (The master's
    // own /proc status cannot show it: it resets inherited ignores first thing.)
    let mut probe = std::process::Command::new("/bin/sh");
    probe.args(["-c", "grep SigIgn /proc/self/status"]);
    with_signal_state(
        &mut probe,
        &[],
        &[Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGPIPE],
    );
    let out = String::from_utf8(probe.output().unwrap().stdout).unwrap();
    let ign = u64::from_str_radix(out.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
    assert_ne!(
        ign & sig_bit(Signal::SIGUSR1),
        0,
        "the test's parent set-up works: {out}"
    );
    let m = Master::start(cmd);
    let w = m.wait_workers(2, "id");
    for (id, &pid) in &w {
        let (blk, ign, _) = signal_masks(pid).unwrap();
        assert_eq!(blk, 0, "worker id={id}: blocked signals {blk:#x}");
        for s in [Signal::SIGUSR1, Signal::SIGUSR2] {
            assert_eq!(
                ign & sig_bit(s),
                0,
                "worker id={id} (pid {pid}) inherited SIG_IGN for {} (ignored set {ign:#x})",
                s.as_str()
            );
        }
    }
}
