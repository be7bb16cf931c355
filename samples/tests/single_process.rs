//! Single-process mode: `PREFORK_SINGLE=1` runs the first worker in the calling process, with
//! no master and no child, the same stop signal and the same readiness calls.

use std::process::Command;
use std::time::Duration;

use samples::jobs::{self, QueueSpec};
use testkit::{DEADLINE, Master, Signal, TempDir, http_get, listening_addr, wait_for};

/// Every process whose parent is `pid`, by scanning `/proc` (children of any of its threads).
fn any_children(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if testkit::ppid(p) == Some(pid) {
            kids.push(p);
        }
    }
    kids
}

fn single(program: &str, args: &[&str]) -> Master {
    let mut cmd = Command::new(program);
    cmd.args(args).env("PREFORK_SINGLE", "1");
    Master::start(cmd)
}

#[test]
fn warp_like_serves_hello_in_one_process_and_exits_0_on_term() {
    let mut m = single(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &["-p", "0", "-w", "3", "--threads", "2"],
    );
    let addr = listening_addr(&m.stderr);
    let body = wait_for(DEADLINE, "hello", || {
        http_get(addr, "/", Duration::from_secs(5)).ok()
    });
    assert_eq!(body.0, 200);
    assert_eq!(body.1.trim(), "hello");
    for _ in 0..20 {
        let (code, _) = http_get(addr, "/", Duration::from_secs(5)).unwrap();
        assert_eq!(code, 200);
    }
    assert_eq!(
        any_children(m.pid().as_raw()),
        Vec::<i32>::new(),
        "no child was started"
    );
    assert!(
        m.stderr.all().iter().all(|l| !l.contains("master started")),
        "no master ran"
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(m.stderr.all().iter().any(|l| l.contains("drained")));
}

#[test]
fn job_worker_runs_jobs_in_one_process_and_finishes_them_on_term() {
    let dir = TempDir::new("single-jobs");
    let spool = dir.path().join("spool");
    let spec = QueueSpec::Spool { dir: spool.clone() };
    let bin = env!("CARGO_BIN_EXE_sample-job-worker");
    let out = Command::new(bin)
        .args([
            "--spool",
            spool.to_str().unwrap(),
            "--enqueue",
            "200",
            "--job-ms",
            "20",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut m = single(
        bin,
        &["--spool", spool.to_str().unwrap(), "-w", "4", "-c", "3"],
    );
    wait_for(DEADLINE, "50 jobs done", || {
        (jobs::counts(&spec).ok()?.done >= 50).then_some(())
    });
    assert_eq!(any_children(m.pid().as_raw()), Vec::<i32>::new());
    // The claims are this process's own.
    assert!(
        spool
            .join("claimed")
            .join(m.pid().as_raw().to_string())
            .exists()
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    let c = jobs::counts(&spec).unwrap();
    assert_eq!(c.claimed, 0, "the jobs in hand were finished: {c:?}");
    assert_eq!(c.queued + c.done, 200);
}
