//! A worker's boot bounds what it reads from standard input: the context document travels in
//! a pipe (1 MiB by default), so a worker handed an endless stream stops reading well before
//! 100 MiB, and exits with one line and a non-zero status instead of reading (and holding) it
//! all.
//!
//! The test learns the marker the master really sets from a real worker's initial environment
//! (`/proc/<pid>/environ`: what `exec` received, whatever the worker did with its environment
//! since), then starts the fixture binary itself with that marker and feeds its standard input
//! up to 100 MiB of a header line that never ends. The write count says how much the "worker"
//! took before it stopped reading.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use testkit::{DEADLINE, fx, wait_for};

/// What a worker must not swallow.
const STREAM: u64 = 100 << 20;

/// `PREFORK_WORKER=<value>` of a live worker's initial environment.
fn marker_of(pid: i32) -> String {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    env.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"PREFORK_WORKER="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| panic!("worker {pid} was not started with PREFORK_WORKER"))
}

/// Kills and reaps the child on drop, so a failing test leaves nothing behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_worker_does_not_read_an_endless_context() {
    let marker = {
        let m = fx!(&["--workers", "1", "--mode", "sleep"]);
        marker_of(m.wait_workers(1, "id")["0"])
    };

    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_fx-master"))
            .env("PREFORK_WORKER", &marker)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&written);
    let writer = std::thread::spawn(move || {
        // A header line that never ends: `{"v":1,"pad":"xxxx…`.
        let _ = stdin.write_all(b"{\"v\":1,\"pad\":\"");
        let chunk = vec![b'x'; 64 * 1024];
        while w.load(Ordering::Relaxed) < STREAM {
            match stdin.write(&chunk) {
                Ok(n) => {
                    w.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => break, // EPIPE: the reader is gone
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_for(DEADLINE, "the started-by-hand worker to exit", || {
        child.0.try_wait().unwrap()
    });
    let _ = writer.join();
    let took = written.load(Ordering::Relaxed);
    let err = err_reader.join().unwrap();
    eprintln!(
        "the worker took {took} bytes ({} MiB) and exited with {status}: {}",
        took >> 20,
        err.trim()
    );
    assert!(
        took < STREAM,
        "the worker's boot read all {} MiB offered (exit {status}, stderr {:?})",
        STREAM >> 20,
        err.trim()
    );
    assert!(!status.success(), "{status}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line on standard error: {err:?}"
    );
}
