//! A graceful stop refuses the connections it could not serve: once no worker accepts any more
//! (each stopping worker dropped its listener), the listening socket is closed in the master
//! too, so a new connection is refused at once, while the last worker is still draining. It
//! must not be accepted by the kernel into a queue nobody reads, hang, and be reset when the
//! master exits.
//!
//! `sample-warp-like` with two workers and a long drain grace: the test holds an idle
//! keep-alive connection, so the worker that has it keeps draining until the server's header
//! read timeout (10 s after the connection's last request) closes it, then sends `SIGTERM` and
//! connects again and again. A refusal must come within 5 s of the workers' stop, while the
//! master is still running; the test then closes its connection, and the master exits 0.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use samples::warp::HEADER_READ_TIMEOUT;
use testkit::probe::assert_running;
use testkit::{DEADLINE, Master, Signal, listening_addr, parse_response};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The drain grace: longer than the header read timeout, which ends the drain instead.
const GRACE_SECS: u64 = 20;
/// The refusal must come well within the time the idle connection holds the drain (the header
/// read timeout, 10 s).
const REFUSED_WITHIN: Duration = Duration::from_secs(HEADER_READ_TIMEOUT.as_secs() / 2);

/// `GET /` on a keep-alive connection; returns the status.
fn get(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((status, _, _)) = parse_response(&buf) {
            return status;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection attempt: `Ok(true)` if refused, `Ok(false)` if the kernel accepted it.
fn refused(addr: SocketAddr) -> Result<bool, String> {
    match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn new_connections_are_refused_once_no_worker_accepts() {
    let grace = GRACE_SECS.to_string();
    let timeout = (GRACE_SECS + 5).to_string();
    let mut m = Master::start_program(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &[
            "-p",
            "0",
            "-w",
            "2",
            "--threads",
            "1",
            "--drain-grace",
            &grace,
            "--drain-timeout",
            &timeout,
        ],
    );
    let addr = listening_addr(&m.stderr);
    m.wait_workers(2, "id");
    let mut idle = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    idle.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(get(&mut idle), 200);
    assert_eq!(
        refused(addr),
        Ok(false),
        "serving: connections are accepted"
    );

    m.signal(Signal::SIGTERM);
    // Both workers stopped accepting; one of them drains the idle connection.
    m.stderr.wait_count(DEADLINE, 2, &|l: &str| {
        l.contains("stop requested: draining")
    });
    m.stderr.wait_line(DEADLINE, |l| {
        // The idle connection (and perhaps the probe's, not yet seen closed by the worker).
        l.contains("stop requested: draining") && !l.contains("connections=0")
    });
    let stopped_accepting = Instant::now();
    let mut accepted = 0u32;
    loop {
        assert_running(
            &mut m,
            "waiting for a refused connection (the idle connection should hold the drain)",
        );
        match refused(addr) {
            Ok(true) => break,
            Ok(false) => accepted += 1,
            Err(e) => panic!("connect to {addr}: {e}"),
        }
        assert!(
            stopped_accepting.elapsed() < REFUSED_WITHIN,
            "{accepted} new connections were accepted by the kernel in the {REFUSED_WITHIN:?} \
             after every worker stopped accepting (none was refused): the listener stays open \
             during the drain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "refused {:?} after the workers stopped accepting ({accepted} accepted before)",
        stopped_accepting.elapsed()
    );
    assert_running(&mut m, "the refusal (the drain must still be running)");

    // The drain ends with the idle connection; the master exits 0.
    drop(idle);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
