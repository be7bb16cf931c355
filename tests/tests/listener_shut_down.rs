//! One buggy worker does not close the port for good: when a worker calls `shutdown(SHUT_RD)`
//! on the shared listener (which takes the socket out of the listening state for every process
//! that holds it), the master notices that its listener stopped listening (a replacement's boot
//! check reports it) and puts it back (`listen` again on the same socket), loudly; the same
//! address answers again without a restart.
//!
//! The listener is bound to an explicit port, as `sample-warp-like -p PORT` does. (The kernel
//! releases an ephemeral port, one bound as port 0, when the socket is shut down: `listen`
//! alone would then pick another port; putting such a listener back means binding its old
//! address first.)
//!
//! Worker id=0 runs `shut-rd` once (`--once`): it reports ready, shuts the listener, prints
//! `worker 0 shut the listener`, and dies on its next `accept`. Its later starts serve normally.
//! Without the repair every connection is refused and every replacement fails its boot check
//! ("not listening"), retried with backoff forever.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use testkit::probe::{assert_running, free_port};
use testkit::{DEADLINE, TempFile, fx, listening_addr};

/// One connection: the worker's line (`pid … id … gen …`), or why there is none.
fn ask(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("pid ") {
        Ok(out)
    } else {
        Err(format!("unexpected answer {out:?}"))
    }
}

/// A log line at `WARN` or `ERROR` level (tracing's format) that mentions listening.
fn loud_about_listening(l: &str) -> bool {
    (l.contains(" WARN ") || l.contains(" ERROR ")) && l.to_ascii_lowercase().contains("listen")
}

#[test]
fn a_listener_shut_by_a_worker_is_listening_again() {
    let once = TempFile::new("shut-rd-once");
    let port = free_port().to_string();
    let mut m = fx!(&[
        "--port",
        &port,
        "--workers",
        "2",
        "--mode",
        "serve",
        "--mode-of",
        "0=shut-rd",
        "--once",
        once.path().to_str().unwrap(),
        "--backoff-ms",
        "50,500",
    ]);
    let addr = listening_addr(&m.stdout);
    let master = m.pid();
    m.stdout
        .wait_line(DEADLINE, |l| l == "worker 0 shut the listener");

    let end = Instant::now() + DEADLINE;
    let answer = loop {
        assert_running(&mut m, "waiting for the port to answer again");
        let last = match ask(addr) {
            Ok(a) => break a,
            Err(e) => e,
        };
        if Instant::now() > end {
            let log = m.stderr.all();
            panic!(
                "{addr} did not answer within {DEADLINE:?} after a worker shut the listener \
                 (last attempt: {last}); the master's last log lines:\n{}",
                log[log.len().saturating_sub(6)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("answered again: {answer:?}");
    assert_eq!(m.pid(), master, "the same master, no restart");
    // Both ids serve again, and the repair was logged loudly.
    m.wait_workers(2, "id");
    for _ in 0..5 {
        ask(addr).unwrap();
    }
    let log = m.stderr.all();
    assert!(
        log.iter().any(|l| loud_about_listening(l)),
        "the repair of the listener was not logged at WARN or ERROR (a line that mentions \
         listening): {log:#?}"
    );
}
