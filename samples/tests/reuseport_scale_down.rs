//! Reuseport mode, a smaller set on SIGHUP (`--workers-file`) or by `SIGTTOU` (the control
//! path's scale down): the removed ids' sockets are drained, not dropped.
//!
//! * Scaling 4 → 2 while a client opens a connection every millisecond loses none: no
//!   refused connection, no reset, every response a 200. (Each connection sends its request at
//!   once and its response is read by another thread, so connections do wait in the accept
//!   queues when the sockets of ids 2 and 3 leave.)
//! * Ten cycles 4 → 2 → 4 leave nothing behind in the master: its fd count and the number of
//!   sockets listening on the port come back to where they were.

use std::time::Duration;

use testkit::load::Paced;
use testkit::{DEADLINE, Master, Signal, TempFile, fds, listening_addr, wait_for, zombies_of};

/// Sockets listening on 127.0.0.1:`port` (`/proc/net/tcp`, state `0A`).
fn listening_sockets(port: u16) -> usize {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
        })
        .count()
}

fn start(file: &TempFile) -> (Master, std::net::SocketAddr) {
    let path = file.path().to_str().expect("utf-8 temp path");
    let m = Master::start_program(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &[
            "-p",
            "0",
            "--threads",
            "1",
            "--reuseport",
            "--workers-file",
            path,
        ],
    );
    let addr = listening_addr(&m.stderr);
    (m, addr)
}

/// Sets the worker count and reloads; waits until exactly `n` workers run and the port has
/// exactly `n` listening sockets (the removed ids' sockets closed, or the new ones joined).
fn scale(m: &Master, file: &TempFile, port: u16, n: usize) {
    file.write(n.to_string());
    m.signal(Signal::SIGHUP);
    m.wait_workers(n, "id");
    wait_for(DEADLINE, &format!("{n} sockets listening"), || {
        (listening_sockets(port) == n).then_some(())
    });
}

#[test]
fn scaling_down_while_connections_arrive_every_millisecond_loses_none() {
    let file = TempFile::new("workers");
    file.write("4");
    let (mut m, addr) = start(&file);
    m.wait_workers(4, "id");
    wait_for(DEADLINE, "4 sockets listening", || {
        (listening_sockets(addr.port()) == 4).then_some(())
    });
    let load = Paced::start(addr, Duration::from_millis(1), Duration::from_secs(60));
    wait_for(DEADLINE, "the load to get going", || {
        (load.progress() > 300).then_some(())
    });
    // Down, up and down again, each with connections arriving throughout.
    for n in [2, 4, 2] {
        let before = load.progress();
        scale(&m, &file, addr.port(), n);
        wait_for(DEADLINE, "connections after the change", || {
            (load.progress() > before + 300).then_some(())
        });
    }
    let report = load.finish();
    eprintln!("{report:?}");
    assert_eq!(report.failed, 0, "lost connections: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    assert!(report.ok > 900, "the load really ran: {report:?}");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
}

#[test]
fn scaling_down_by_ttou_while_connections_arrive_every_millisecond_loses_none() {
    let mut m = Master::start_program(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &["-p", "0", "-w", "4", "--threads", "1", "--reuseport"],
    );
    let addr = listening_addr(&m.stderr);
    m.wait_workers(4, "id");
    let load = Paced::start(addr, Duration::from_millis(1), Duration::from_secs(60));
    wait_for(DEADLINE, "the load to get going", || {
        (load.progress() > 300).then_some(())
    });
    for n in [3, 2] {
        let before = load.progress();
        m.signal(Signal::SIGTTOU);
        m.wait_workers(n, "id");
        wait_for(DEADLINE, &format!("{n} sockets listening"), || {
            (listening_sockets(addr.port()) == n).then_some(())
        });
        wait_for(DEADLINE, "connections after the change", || {
            (load.progress() > before + 300).then_some(())
        });
    }
    let report = load.finish();
    eprintln!("{report:?}");
    assert_eq!(report.failed, 0, "lost connections: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
}

#[test]
fn ten_scale_cycles_leave_no_socket_behind_in_the_master() {
    let file = TempFile::new("workers");
    file.write("4");
    let (mut m, addr) = start(&file);
    let port = addr.port();
    m.wait_workers(4, "id");
    wait_for(DEADLINE, "4 sockets listening", || {
        (listening_sockets(port) == 4).then_some(())
    });
    let master = m.pid().as_raw();
    let baseline = fds(master).len();
    let mut counts = Vec::new();
    for _ in 0..10 {
        scale(&m, &file, port, 2);
        scale(&m, &file, port, 4);
        // The master closes a removed id's socket when it reaps the id's last worker, which
        // the listening count above already showed.
        counts.push(wait_for(DEADLINE, "the master's fds to settle", || {
            let n = fds(master).len();
            (n <= baseline).then_some(n)
        }));
    }
    eprintln!("master fds: baseline {baseline}, after each cycle {counts:?}");
    assert!(counts.iter().all(|&n| n == baseline), "{counts:?}");
    assert_eq!(listening_sockets(port), 4);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
}
