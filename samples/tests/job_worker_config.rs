//! `sample-job-worker`'s configuration file: a broken one at start is one line and status 2; a
//! broken one on `SIGHUP` keeps what runs; a fixed one on the next `SIGHUP` applies.

use std::process::Command;
use std::time::Duration;

use testkit::{DEADLINE, Master, Signal, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_sample-job-worker");

#[test]
fn a_broken_file_at_start_is_one_line_and_status_2() {
    let dir = TempDir::new("jobconf");
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "workers = many\n").unwrap();
    let spool = dir.path().join("spool");
    let out = Command::new(BIN)
        .args(["--spool", spool.to_str().unwrap(), "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("sample-job-worker: ") && err.contains("line 1: workers"),
        "{err}"
    );
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no queue"));
}

#[test]
fn a_broken_file_on_sighup_keeps_what_runs() {
    let dir = TempDir::new("jobconf");
    let conf = dir.path().join("job.conf");
    std::fs::write(&conf, "workers = 2\n").unwrap();
    let spool = dir.path().join("spool");
    let mut m = Master::start_program(
        BIN,
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--config",
            conf.to_str().unwrap(),
        ],
    );
    let before = m.wait_workers(2, "id");
    std::fs::write(&conf, "workers = 3\nqueue_depth = 9\n").unwrap();
    m.signal(Signal::SIGHUP);
    m.stderr.wait_line(DEADLINE, |l| {
        l.contains("unknown key \"queue_depth\"") && l.contains("keeping the running workers")
    });
    m.stderr
        .wait_line(DEADLINE, |l| l.contains("update returned no configuration"));
    assert_eq!(m.workers_by_arg("id"), before, "nothing was replaced");
    std::fs::write(&conf, "workers = 3\n").unwrap();
    m.signal(Signal::SIGHUP);
    let after = m.wait_workers(3, "id");
    assert!(before.iter().all(|(id, pid)| after[id] != *pid), "replaced");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(Duration::from_secs(30)), 0);
}
