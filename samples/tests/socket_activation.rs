//! `sample-warp-like` started by Debian's `systemd-socket-activate` (the `systemd` package):
//! the tool listens, and execs the sample at the first connection with `LISTEN_FDS=1`,
//! `LISTEN_PID` and `LISTEN_FDNAMES=http`. The sample adopts that socket instead of binding
//! `-p`; the first connection (which waited in the queue) is served, and five reloads under load
//! lose nothing.
//!
//! Without the tool the test is skipped, except in CI (`CI` set), where `.ci/run` installs it and
//! its absence is a failure.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;

use testkit::load::reloads_under_load;
use testkit::{DEADLINE, Master, Signal, http_get, listening_addr, zombies_of};

/// The tool, if installed.
fn socket_activate() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/lib/systemd")])
        .map(|d| d.join("systemd-socket-activate"))
        .find(|p| p.is_file())
}

/// The tool, or `None` to skip (never in CI).
pub fn tool_or_skip() -> Option<PathBuf> {
    let tool = socket_activate();
    if tool.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-socket-activate is missing; .ci/run installs it (apt-get install systemd)"
        );
        eprintln!("skipped: systemd-socket-activate is not installed");
    }
    tool
}

/// A port that was free a moment ago (the tool needs a number).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn an_activated_sample_serves_its_first_connection_and_reloads_under_load_losing_nothing() {
    let Some(tool) = tool_or_skip() else { return };
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = Command::new(tool);
    cmd.args([
        "-l",
        &addr.to_string(),
        "--fdname=http",
        "-E",
        "RUST_LOG=info",
    ])
    .arg(env!("CARGO_BIN_EXE_sample-warp-like"))
    // -p 0 would bind an ephemeral port: the sample must use the passed socket instead.
    .args(["-p", "0", "-w", "3", "--threads", "1"]);
    let mut m = Master::start(cmd);
    m.stderr.wait_line(DEADLINE, |l| {
        l.contains("Listening on") || l.contains("listening on")
    });

    // The first connection starts the sample, waits in the queue, and is served.
    let (status, body) = http_get(addr, "/", DEADLINE).expect("the first connection is served");
    assert_eq!((status, body.as_str()), (200, "hello"));
    let adopted = m.stderr.wait_line(DEADLINE, |l| {
        l.contains("adopted the socket systemd passed")
    });
    assert_eq!(listening_addr(&m.stderr), addr, "{adopted}");
    // The tool exec'd the sample in place: the guard's pid is the master's.
    let pids = m.wait_workers(3, "id");
    let report = reloads_under_load(&m, addr, pids, 5, 500);
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    assert!(report.ok > 2500, "the load really ran: {report:?}");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
}
