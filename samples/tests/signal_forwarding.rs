//! The master's signal mapping (`Settings::forward_signal`, Parallel::Prefork's
//! `trap_signals`): `sample-job-worker` forwards `USR1` to every worker as `USR1` (each logs its
//! progress), `--forward USR2:USR1` adds a mapping, and a reserved signal is refused at start
//! with one line.

use std::process::Command;

use testkit::{DEADLINE, Master, Signal, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_sample-job-worker");

fn is_progress(l: &str) -> bool {
    l.contains("SIGUSR1: jobs done so far")
}

#[test]
fn usr1_and_a_mapped_usr2_reach_every_worker_as_usr1() {
    let dir = TempDir::new("forward");
    let spool = dir.path().join("spool");
    let mut m = Master::start_program(
        BIN,
        &[
            "--spool",
            spool.to_str().unwrap(),
            "-w",
            "3",
            "--forward",
            "USR2:USR1",
        ],
    );
    let workers = m.wait_workers(3, "id");
    // Each worker handles USR1 before it says it is taking jobs.
    m.stderr
        .wait_count(DEADLINE, 3, &|l| l.contains("taking jobs"));
    m.signal(Signal::SIGUSR1);
    let lines = m.stderr.wait_count(DEADLINE, 3, &is_progress);
    for pid in workers.values() {
        assert!(
            lines.iter().any(|l| l.contains(&format!("pid {pid} "))),
            "worker {pid} got it: {lines:?}"
        );
    }
    m.stderr.wait_line(DEADLINE, |l| {
        l.contains("signal forwarded to the workers") && l.contains("workers=3")
    });
    m.signal(Signal::SIGUSR2);
    m.stderr.wait_count(DEADLINE, 6, &is_progress);
    assert_eq!(m.workers_by_arg("id"), workers, "nobody died of it");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn a_reserved_signal_is_refused_at_start_with_one_line() {
    let dir = TempDir::new("forward");
    let spool = dir.path().join("spool");
    for (mapping, why) in [
        (
            "HUP:TERM",
            "cannot forward SIGHUP to the workers: the master reloads on it",
        ),
        (
            "TERM:USR1",
            "cannot forward SIGTERM to the workers: the master stops on it",
        ),
        ("CHLD:USR1", "cannot forward SIGCHLD to the workers"),
    ] {
        let out = Command::new(BIN)
            .args(["--spool", spool.to_str().unwrap(), "--forward", mapping])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{mapping}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("prefork: invalid setting: ") && err.contains(why),
            "{mapping}: {err}"
        );
    }
}
