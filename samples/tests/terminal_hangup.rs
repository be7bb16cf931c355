//! `kill -HUP -PGID` (a terminal hanging up on `sample-warp-like` and its workers) is a reload,
//! not a massacre: the workers, which do not handle `SIGHUP`, ignore it; the master replaces
//! them rolling, and each old worker ends by draining (exit status 0), not by the hang-up.
//!
//! The master runs in a process group of its own (its workers share it), so the hang-up
//! reaches exactly the processes under test.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use testkit::{DEADLINE, Master, Signal, http_get, listening_addr, wait_for};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// True for the master's log line that says `pid` exited (`… exited … pid=<pid> …`).
fn exit_line_of(pid: i32) -> impl Fn(&str) -> bool {
    let field = format!("pid={pid}");
    move |l: &str| l.contains("exited") && l.split_whitespace().any(|t| t == field)
}

#[test]
fn a_hangup_to_the_process_group_is_a_rolling_reload() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sample-warp-like"));
    cmd.args(["-p", "0", "-w", "2", "--threads", "1"])
        .process_group(0);
    let mut m = Master::start(cmd);
    let addr = listening_addr(&m.stderr);
    let old = m.wait_workers(2, "id");
    wait_for(DEADLINE, "GET / answered", || {
        http_get(addr, "/", IO_TIMEOUT).ok()
    });

    nix::sys::signal::killpg(m.pid(), Signal::SIGHUP).unwrap();

    for (id, &pid) in &old {
        let line = m.stderr.wait_line(DEADLINE, exit_line_of(pid));
        assert!(
            !line.contains("SIGHUP"),
            "worker id={id} (pid {pid}) was killed by the process group's SIGHUP: {line}"
        );
        assert!(
            line.contains("status=exit status 0"),
            "worker id={id} (pid {pid}) did not drain and exit 0: {line}"
        );
    }
    m.wait_replaced(&old);
    assert_eq!(
        http_get(addr, "/", IO_TIMEOUT).unwrap(),
        (200, "hello".to_string())
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
