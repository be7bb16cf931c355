//! The master in a container: as PID 1 it reaps every orphan of the container, and outside one
//! `child_subreaper` makes it adopt and reap its workers' orphans.
//!
//! A worker in mode `orphan` leaves a `sleep 1` behind (its `sh` exits at once). The orphan
//! must be re-parented to the master, and reaped by it when it exits: no zombie stays.

use std::process::Command;

use testkit::{
    DEADLINE, Master, Signal, children_of, cmdline, fx, ppid, wait_for, wait_until, zombies_of,
};

/// The `sleep 1` orphan among the master's children, once it was re-parented there.
fn orphan_of(master: i32) -> i32 {
    wait_for(
        DEADLINE,
        "the orphan to be re-parented to the master",
        || {
            children_of(master)
                .into_iter()
                .find(|&p| cmdline(p).is_some_and(|c| c.first().is_some_and(|a| a == "sleep")))
        },
    )
}

#[test]
fn a_subreaper_master_adopts_and_reaps_the_orphans_of_its_workers() {
    let mut m = fx!(&["--workers", "1", "--mode", "orphan", "--subreaper"]);
    m.stdout.wait_line(DEADLINE, |l| l.contains(" orphaned "));
    let master = m.pid().as_raw();
    let orphan = orphan_of(master);
    assert_eq!(ppid(orphan), Some(master));
    reaped(master, orphan);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn without_the_option_orphans_go_to_init_as_before() {
    let mut m = fx!(&["--workers", "1", "--mode", "orphan"]);
    let line = m.stdout.wait_line(DEADLINE, |l| l.contains(" orphaned "));
    let orphan: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    // `sh` has exited by the time the worker printed the pid: the orphan has a new parent.
    assert_ne!(ppid(orphan), Some(m.pid().as_raw()));
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn a_master_that_is_pid_1_reaps_every_orphan() {
    // A new pid namespace (root only, as CI runs) makes the master its PID 1, as in a container.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to run `unshare --pid --fork` (root, util-linux)"
        );
        eprintln!("skipped: cannot create a pid namespace here");
        return;
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        env!("CARGO_BIN_EXE_fx-master"),
    ])
    .args(["--workers", "1", "--mode", "orphan"]);
    let mut m = Master::start(cmd);
    m.stdout.wait_line(DEADLINE, |l| l.contains(" orphaned "));
    // The guard's child is `unshare`; the master is its only child.
    let master = wait_for(DEADLINE, "the master inside the namespace", || {
        children_of(m.pid().as_raw()).first().copied()
    });
    let orphan = orphan_of(master);
    reaped(master, orphan);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(master), Signal::SIGTERM).unwrap();
    assert_eq!(
        m.wait_exit(DEADLINE),
        0,
        "unshare passes on the master's status"
    );
}

/// The orphan ends by itself (`sleep 1`); the master reaps it and leaves no zombie.
fn reaped(master: i32, orphan: i32) {
    wait_until(DEADLINE, "the orphan to exit and be reaped", || {
        !children_of(master).contains(&orphan)
    });
    assert!(
        zombies_of(master).is_empty(),
        "zombies: {:?}",
        zombies_of(master)
    );
}
