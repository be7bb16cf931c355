//! A real worker: it accepts on the socket it inherited, holds no fd beyond stdio, its declared
//! socket and its readiness socket, shows its context in argv, runs with its runtime options
//! applied and an empty signal mask, and does not see the worker marker.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use testkit::{
    DEADLINE, Master, TempDir, cmdline, fds, fx, inherit_fd, listening_addr, signal_masks,
};

/// Waits until the master listens and its worker 0 started; returns the address and the pid.
fn worker_0(m: &Master) -> (SocketAddr, i32) {
    let addr = listening_addr(&m.stdout);
    let w = m.wait_workers(1, "id");
    m.stdout
        .wait_line(DEADLINE, |l| l.starts_with("worker 0 started"));
    (addr, w["0"])
}

fn ask(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn worker_accepts_on_the_inherited_listener() {
    let m = fx!(&["--workers", "1"]);
    let (addr, pid) = worker_0(&m);
    let answer = ask(addr);
    assert_eq!(answer.trim(), format!("pid {pid} id 0 gen 0"));
}

#[test]
fn worker_holds_only_stdio_its_declared_socket_and_its_readiness_socket() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.args(["--workers", "1"]);
    // A stray fd without close-on-exec in the master's own environment: it must not reach the
    // worker. (The test process's fds are close-on-exec, so make one that is not.)
    let stray = std::fs::File::open("/dev/null").unwrap();
    let stray_fd = std::os::fd::AsRawFd::as_raw_fd(&stray);
    inherit_fd(&mut cmd, stray_fd, stray_fd);
    let m = Master::start(cmd);
    let (_, pid) = worker_0(&m);
    let worker = fds(pid);
    let master = fds(m.pid().as_raw());
    assert!(
        master.contains_key(&stray_fd),
        "the master did inherit the stray fd {stray_fd}: {master:?}"
    );
    let numbers: Vec<i32> = worker.keys().copied().collect();
    // 0-2, the socket, the readiness socket, and the logger's own non-blocking opening of
    // standard error (the same pipe as fd 2, see prefork_core::log).
    assert_eq!(numbers, vec![0, 1, 2, 3, 4, 5], "worker fds: {worker:?}");
    assert_eq!(worker[&5], worker[&2], "fd 5 is standard error, reopened");
    assert_eq!(
        worker[&0], "/dev/null",
        "stdin is /dev/null once the context was read"
    );
    assert!(worker[&3].starts_with("socket:"), "{worker:?}");
    assert!(worker[&4].starts_with("socket:"), "{worker:?}");
    // fd 3 is the very socket the master listens on (same inode).
    assert!(
        master.values().any(|t| t == &worker[&3]),
        "worker fd 3 {} is not one of the master's sockets {master:?}",
        worker[&3]
    );
    // The master holds more than the worker (its context and exec-error pipes while it
    // spawns, its non-blocking opening of stderr, …): this check can fail. A reopened stderr
    // is not a leak.
    let pipes_above_stdio = |t: &std::collections::BTreeMap<i32, String>| {
        t.iter()
            .filter(|(n, p)| **n > 2 && p.starts_with("pipe:") && Some(*p) != t.get(&2))
            .count()
    };
    assert!(master.len() > worker.len(), "{master:?}");
    assert_eq!(pipes_above_stdio(&worker), 0, "{worker:?}");
}

#[test]
fn argv_shows_args_and_runtime_options_which_are_applied() {
    let m = fx!(&[
        "--workers",
        "2",
        "--threads",
        "3",
        "--nice",
        "2",
        "--cpus",
        "0",
    ]);
    let _ = listening_addr(&m.stdout);
    let w = m.wait_workers(2, "id");
    for (id, pid) in &w {
        let argv = cmdline(*pid).unwrap();
        assert_eq!(
            &argv[1..],
            &[
                format!("id={id}"),
                "mode=serve".into(),
                "+RTS".into(),
                "-N3".into(),
                "--cpus=0".into(),
                "--nice=2".into(),
                "-RTS".into()
            ],
            "argv of worker {id}: {argv:?}"
        );
        assert_eq!(
            argv[0],
            cmdline(m.pid().as_raw()).unwrap()[0],
            "same program name as the master"
        );
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let master_stat = std::fs::read_to_string(format!("/proc/{}/stat", m.pid())).unwrap();
        let mfields: Vec<&str> = master_stat[master_stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let nice: i32 = fields[16].parse().unwrap();
        let master_nice: i32 = mfields[16].parse().unwrap();
        assert_eq!(nice, master_nice + 2, "nice is applied");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        assert_eq!(cpus, "0", "CPU affinity is applied");
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            env.split(|&b| b == 0)
                .any(|kv| kv == b"FX_FROM_RUNTIME_OPTIONS=yes"),
            "runtime-option environment is set"
        );
    }
}

#[test]
fn worker_has_an_empty_signal_mask_and_no_marker() {
    let m = fx!(&["--workers", "1"]);
    let (_, pid) = worker_0(&m);
    let (blocked, ignored, _caught) = signal_masks(pid).unwrap();
    assert_eq!(blocked, 0, "signal mask of the worker");
    let sighup_bit = 1u64 << (nix::libc::SIGHUP - 1);
    assert_ne!(
        ignored & sighup_bit,
        0,
        "the worker ignores HUP (a terminal hang-up must not kill it)"
    );
    let usr1_bit = 1u64 << (nix::libc::SIGUSR1 - 1);
    assert_eq!(ignored & usr1_bit, 0, "USR1 has its default action");
    let (_, _, master_caught) = signal_masks(m.pid().as_raw()).unwrap();
    assert_ne!(
        master_caught & sighup_bit,
        0,
        "the master does catch HUP (the check can fail)"
    );
    m.stdout
        .wait_line(DEADLINE, |l| l == "worker env PREFORK_WORKER=unset");
}

#[test]
fn unix_and_tcp_listeners_are_both_inherited_and_rlimits_applied() {
    let dir = TempDir::new("unix");
    let sock = dir.path().join("fx.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.args(["--workers", "1", "--nofile", "512", "--unix"])
        .arg(&sock);
    let m = Master::start(cmd);
    let (addr, pid) = worker_0(&m);
    // Both sockets, in declaration order, then the readiness socket (and the logger's
    // non-blocking standard error).
    let table = fds(pid);
    assert_eq!(
        table.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5, 6],
        "{table:?}"
    );
    assert_eq!(ask(addr).trim(), format!("pid {pid} id 0 gen 0"));
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect unix");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.trim(), format!("unix pid {pid} id 0"));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = nofile.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, vec!["512", "512"], "{nofile}");
}
