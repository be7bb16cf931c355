//! A hang-up sent to the whole process group (a closed terminal, `kill -HUP -PGID`) does not
//! kill the workers: they ignore `SIGHUP` unless the program asks otherwise, while the master
//! takes it as its reload signal.
//!
//! The fixture runs with `--default-settings` (haskell-prefork's defaultSettings: each `SIGHUP`
//! calls `update_server`, which starts two more workers, and nothing stops the old ones), in
//! `sleep` mode (workers that do not handle `SIGHUP`), in a process group of its own. After the
//! group's hang-up the two new workers' start lines prove the master handled it; the two old
//! workers must still be there.

use std::os::unix::process::CommandExt;
use std::process::Command;

use testkit::fx::is_start_line;
use testkit::parent::sig_bit;
use testkit::probe::wait_alive;
use testkit::{DEADLINE, Master, Signal, alive, signal_masks};

#[test]
fn a_hangup_to_the_process_group_leaves_the_workers_running() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.args(["--default-settings", "--workers", "2", "--mode", "sleep"])
        .process_group(0);
    let mut m = Master::start(cmd);
    let pgid = m.pid();
    m.stdout.wait_count(DEADLINE, 2, &is_start_line);
    let old: Vec<i32> = wait_alive(&mut m, DEADLINE, "two workers", |m| {
        let w = m.workers();
        (w.len() == 2).then_some(w)
    });

    // The terminal hangs up: SIGHUP to every process of the group.
    nix::sys::signal::killpg(pgid, Signal::SIGHUP).unwrap();
    // The master took it as a reload: update_server started two more workers.
    wait_alive(
        &mut m,
        DEADLINE,
        "the master's reload (two more start lines)",
        |m| (m.stdout.count(is_start_line) >= 4).then_some(()),
    );
    for &pid in &old {
        assert!(
            alive(pid),
            "worker {pid} was killed by the process group's SIGHUP"
        );
    }
    let all = wait_alive(&mut m, DEADLINE, "four workers", |m| {
        let w = m.workers();
        (w.len() == 4).then_some(w)
    });
    // Every worker, old and new, has SIGHUP ignored (or handled): not the default action.
    for pid in all {
        let (_, ign, cgt) = signal_masks(pid).unwrap();
        assert_ne!(
            (ign | cgt) & sig_bit(Signal::SIGHUP),
            0,
            "worker {pid} has the default action for SIGHUP (terminate)"
        );
    }
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
