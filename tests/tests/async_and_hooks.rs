//! Async workers and the hooks that tell the truth, with `fx-async` (an async program that
//! installs no log subscriber): the stop signal as a future; the exit hook's id, pid,
//! generation, status and reason; the pool-ready and reload-finished hooks (a broken deploy is
//! reported incomplete, naming the ids); the library's default logging; Unix socket files
//! cleaned up; a worker's exit status reaching the master unchanged.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use testkit::{DEADLINE, Master, Signal, TempDir, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_fx-async");

fn start(args: &[&str]) -> Master {
    Master::start_program(BIN, args)
}

/// `async worker <id> ready pid <pid> gen <g>` lines: (id, pid, gen).
fn ready_lines(m: &Master) -> Vec<(u32, i32, u64)> {
    m.stdout
        .all()
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["async", "worker", id, "ready", "pid", pid, "gen", g] => {
                    Some((id.parse().ok()?, pid.parse().ok()?, g.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn the_stop_signal_is_a_future_in_async_workers() {
    let mut m = start(&["--workers", "2"]);
    m.stdout.wait_count(DEADLINE, 2, &|l| {
        l.starts_with("async worker") && l.contains(" ready ")
    });
    m.signal(Signal::SIGHUP);
    // Both old workers await stopped() and return; the new ones are up.
    m.stdout
        .wait_count(DEADLINE, 2, &|l| l.ends_with("stopped by SIGTERM"));
    wait_until(DEADLINE, "two generation-1 workers", || {
        ready_lines(&m).iter().filter(|r| r.2 == 1).count() == 2
    });
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    m.wait_output_closed(DEADLINE);
    assert_eq!(
        m.stdout.count(|l| l.ends_with("stopped by SIGTERM")),
        4,
        "every worker, old and new, stopped through the future: {:#?}",
        m.stdout.all()
    );
}

#[test]
fn the_exit_hook_says_who_ended_how_and_why() {
    let m = start(&["--workers", "2", "--hooks"]);
    m.stdout
        .wait_line(DEADLINE, |l| l == "pool-ready gen=0 outcome=complete");
    wait_until(DEADLINE, "both workers say ready", || {
        ready_lines(&m).len() == 2
    });
    let first = ready_lines(&m);
    let (_, victim, _) = first.iter().find(|r| r.0 == 0).copied().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let line = m.stdout.wait_line(DEADLINE, |l| {
        l.starts_with(&format!("exit id=0 pid={victim} "))
    });
    assert_eq!(
        line,
        format!("exit id=0 pid={victim} gen=0 status=signal SIGKILL reason=crashed")
    );
    // A reload retires the others: reason retired, status 0 (they returned).
    wait_until(DEADLINE, "id 0 respawned", || ready_lines(&m).len() == 3);
    let before: Vec<i32> = ready_lines(&m)
        .iter()
        .map(|r| r.1)
        .filter(|p| *p != victim)
        .collect();
    m.signal(Signal::SIGHUP);
    m.stdout
        .wait_line(DEADLINE, |l| l == "reload-finished gen=1 outcome=complete");
    for pid in before {
        let line = m.stdout.wait_line(DEADLINE, |l| {
            l.starts_with("exit id=") && l.contains(&format!(" pid={pid} "))
        });
        assert!(
            line.ends_with("status=exit status 0 reason=retired"),
            "{line}"
        );
    }
}

#[test]
fn a_failed_start_and_an_exit_code_reach_the_hook_unchanged() {
    let m = start(&[
        "--workers",
        "1",
        "--hooks",
        "--mode",
        "exit-code",
        "--code",
        "7",
    ]);
    let line = m
        .stdout
        .wait_line(DEADLINE, |l| l.starts_with("exit id=0 "));
    assert!(
        line.ends_with("gen=0 status=exit status 7 reason=failed start"),
        "the ExitCode 7 of the worker function, as a failed start: {line}"
    );
}

/// Writes `content` beside `target` and renames it over `target`, as a deploy does.
fn deploy(target: &Path, content: &[u8]) {
    let tmp = target.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

#[test]
fn a_broken_deploy_is_reported_incomplete_with_the_failed_ids() {
    let dir = TempDir::new("broken-async");
    let bin = dir.path().join("fx-async");
    std::fs::copy(BIN, &bin).unwrap();
    // Another test thread may be between fork and exec with the copy's write fd inherited for
    // a moment (exec would then fail with ETXTBSY): wait until the copy runs.
    wait_until(DEADLINE, "the copied binary can be executed", || {
        let run = Command::new(&bin).arg("--no-such-flag").output();
        !matches!(run, Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY))
    });
    let m = Master::start_program(&bin, &["--workers", "2", "--hooks"]);
    m.stdout
        .wait_line(DEADLINE, |l| l == "pool-ready gen=0 outcome=complete");
    deploy(&bin, b"#!/bin/sh\nexit 1\n");
    m.signal(Signal::SIGHUP);
    let line = m
        .stdout
        .wait_line(DEADLINE, |l| l.starts_with("reload-finished gen=1 "));
    assert_eq!(line, "reload-finished gen=1 outcome=incomplete:0,1");
    let reason = m
        .stderr
        .wait_line(DEADLINE, |l| l.contains("reload finished"));
    assert!(reason.contains("incomplete"), "{reason}");
}

#[test]
fn a_crash_loop_is_logged_by_default() {
    // fx-async installs no subscriber: the library's default one logs at info.
    let mut cmd = Command::new(BIN);
    cmd.args(["--workers", "1", "--mode", "crash"])
        .env_remove("RUST_LOG");
    let m = Master::start(cmd);
    let line = m
        .stderr
        .wait_line(DEADLINE, |l| l.contains("worker died while starting"));
    assert!(line.contains("exit status 3"), "{line}");
    assert!(
        line.starts_with("master "),
        "the line names its process: {line}"
    );
    m.stderr
        .wait_count(DEADLINE, 3, &|l| l.contains("worker died while starting"));
}

#[test]
fn a_unix_socket_file_is_reclaimed_when_stale_and_removed_at_exit() {
    let dir = TempDir::new("unix-async");
    let path = dir.path().join("app.sock");
    // A stale socket file: bound, then its listener dropped (nobody accepts any more).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let p = path.to_str().unwrap();
    let mut m = start(&["--workers", "1", "--unix", p]);
    m.stdout.wait_count(DEADLINE, 1, &|l| {
        l.starts_with("async worker") && l.contains(" ready ")
    });
    std::os::unix::net::UnixStream::connect(&path).expect("the new socket accepts");
    // A live socket is not taken over: a second master fails to bind it.
    let mut second = start(&["--workers", "1", "--unix", p]);
    assert_ne!(second.wait_exit(DEADLINE), 0);
    second.wait_output_closed(DEADLINE);
    assert!(
        second
            .stderr
            .all()
            .iter()
            .any(|l| l.contains("cannot listen on")),
        "{:#?}",
        second.stderr.all()
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(!path.exists(), "the master removed its socket file");
}
