//! A log write that fails is dropped, never fatal: with its standard error on a full disk
//! (`2>/dev/full`, every write `ENOSPC`) or a pipe whose reader went away (a log shipper
//! restarting, every write `EPIPE`), `sample-warp-like` keeps serving, respawns a killed
//! worker, reloads on `SIGHUP` and stops with status 0 on `SIGTERM`. (A panic in the master
//! would take every worker with it, through the parent-death signal.)
//!
//! The program logs through the samples' `init_tracing` (tracing-subscriber's fmt layer on
//! standard error), in the master and in the workers. Its log cannot be read here, so the
//! address is a port chosen by the test, and the master and workers are watched through
//! `/proc` and the port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use testkit::logpipe::{LogPipe, dev_full, stderr_to};
use testkit::probe::{free_port, wait_alive};
use testkit::{DEADLINE, Master, Pid, Signal, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_sample-warp-like");
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `sample-warp-like -p <a free port> -w 2 --threads 1`, and the address it will listen on.
fn command() -> (Command, SocketAddr) {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["-p", &port.to_string(), "-w", "2", "--threads", "1"]);
    (cmd, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Waits until the master serves with its two workers; returns id → pid.
fn serving(m: &mut Master, addr: SocketAddr) -> BTreeMap<String, i32> {
    wait_alive(m, DEADLINE, "GET / answered", |_| {
        http_get(addr, "/", IO_TIMEOUT).ok()
    });
    wait_alive(m, DEADLINE, "two workers", |m| {
        let w = m.workers_by_arg("id");
        (w.len() == 2 && m.workers().len() == 2).then_some(w)
    })
}

/// Kill a worker (a log event), reload, stop: every step must work, the master must survive
/// each, and the port must answer between them.
fn respawn_reload_stop(m: &mut Master, addr: SocketAddr, workers: &BTreeMap<String, i32>) {
    let victim = workers["0"];
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let after_kill = wait_alive(m, DEADLINE, "worker id=0 respawned", |m| {
        let w = m.workers_by_arg("id");
        (w.len() == 2 && w.get("0").is_some_and(|&p| p != victim)).then_some(w)
    });
    wait_alive(m, DEADLINE, "GET / answered after the respawn", |_| {
        http_get(addr, "/", IO_TIMEOUT).ok()
    });

    m.signal(Signal::SIGHUP);
    wait_alive(m, DEADLINE, "every worker replaced after SIGHUP", |m| {
        let w = m.workers_by_arg("id");
        (w.len() == 2
            && m.workers().len() == 2
            && w.iter().all(|(id, p)| after_kill.get(id) != Some(p)))
        .then_some(())
    });
    for _ in 0..5 {
        let r = wait_alive(m, DEADLINE, "GET / answered after the reload", |_| {
            http_get(addr, "/", IO_TIMEOUT).ok()
        });
        assert_eq!(r, (200, "hello".to_string()));
    }

    m.signal(Signal::SIGTERM);
    let code = m.wait_exit(DEADLINE);
    assert_eq!(code, 0, "the master exits 0 on SIGTERM");
}

#[test]
fn a_full_disk_under_stderr_is_not_fatal() {
    let (mut cmd, addr) = command();
    let full = dev_full();
    stderr_to(&mut cmd, &full);
    let mut m = Master::start(cmd);
    drop(full);
    let workers = serving(&mut m, addr);
    respawn_reload_stop(&mut m, addr, &workers);
}

#[test]
fn a_log_reader_that_went_away_is_not_fatal() {
    let (mut cmd, addr) = command();
    let mut pipe = LogPipe::new();
    pipe.attach(&mut cmd);
    let mut m = Master::start(cmd);
    pipe.spawned();
    let workers = serving(&mut m, addr);
    assert!(pipe.unread() > 0, "the master logs into the pipe");
    // The log shipper goes away: every later write fails with EPIPE.
    pipe.close_reader();
    respawn_reload_stop(&mut m, addr, &workers);
}
