//! A worker whose context is missing, truncated or garbage, or whose inherited fd is not what
//! the context says, ends with one line on stderr and a non-zero status: no panic, no hang.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::inherit_fd;

fn run_worker(stdin: &[u8], setup: impl FnOnce(&mut Command)) -> Output {
    run_worker_of(std::process::id(), stdin, setup)
}

/// Runs fx-master as a worker of the master `master` (the marker names it).
fn run_worker_of(master: u32, stdin: &[u8], setup: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.env("PREFORK_WORKER", format!("master:{master}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    setup(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    sin.write_all(stdin).unwrap();
    drop(sin);
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker hung on a bad context");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn assert_one_line_failure(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "status; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got: {err}");
    assert!(lines[0].starts_with("prefork worker "), "{err}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "the worker function never ran");
}

/// A valid header from this test process as the master.
fn header() -> String {
    header_of(std::process::id())
}

fn header_of(master: u32) -> String {
    format!(
        r#"{{"v":2,"generation":0,"readiness":"implicit","stop_signal":15,"readiness_fd":null,"fds":[],"nonblocking":[],"threads":null,"master_args":[],"master_pid":{master}}}"#
    )
}

/// A context that declares `fd` as a TCP listener and gives it to a serving worker.
fn context_with_tcp_fd(fd: i32) -> String {
    let header = header().replace(r#""fds":[]"#, &format!(r#""fds":[[{fd},"tcp"]]"#));
    format!(
        "{header}\n{{\"id\":0,\"mode\":\"serve\",\"listener\":{{\"kind\":\"tcp\",\"fd\":{fd}}},\"threads\":null,\"nice\":null,\"cpus\":null}}"
    )
}

/// Runs a worker whose context declares fd 3 a TCP listener, with this process's `fd` as its
/// fd 3.
fn run_worker_with_fd_3(fd: RawFd) -> Output {
    run_worker(context_with_tcp_fd(3).as_bytes(), |cmd| {
        inherit_fd(cmd, fd, 3)
    })
}

#[test]
fn garbage_context() {
    let out = run_worker(b"\x00\xffthis is not a prefork context at all", |_| {});
    assert_one_line_failure(&out, "cannot decode the worker context");
}

#[test]
fn empty_context() {
    let out = run_worker(b"", |_| {});
    assert_one_line_failure(&out, "no header line");
}

#[test]
fn truncated_context() {
    let doc = format!("{}\n{{\"id\":0,\"mode\":\"serve\",\"listen", header());
    let out = run_worker(doc.as_bytes(), |_| {});
    assert_one_line_failure(&out, "cannot decode the worker context");
}

#[test]
fn context_of_the_wrong_shape() {
    let doc = format!("{}\n{{\"name\":\"not a worker\"}}", header());
    let out = run_worker(doc.as_bytes(), |_| {});
    assert_one_line_failure(&out, "missing field");
}

#[test]
fn declared_fd_that_is_not_open() {
    let doc = context_with_tcp_fd(7);
    let out = run_worker(doc.as_bytes(), |_| {});
    assert_one_line_failure(
        &out,
        "inherited fd 7 is not a listening TCP socket: not an open fd",
    );
}

#[test]
fn declared_fd_that_is_a_file() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let out = run_worker_with_fd_3(file.as_raw_fd());
    assert_one_line_failure(
        &out,
        "inherited fd 3 is not a listening TCP socket: a character device",
    );
}

#[test]
fn declared_fd_that_is_a_connected_socket_not_a_listener() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let out = run_worker_with_fd_3(conn.as_raw_fd());
    assert_one_line_failure(&out, "a stream socket that is not listening");
}

#[test]
fn wrong_header_version() {
    let doc = format!("{}\n{{}}", header().replace(r#""v":2"#, r#""v":99"#));
    let out = run_worker(doc.as_bytes(), |_| {});
    assert_one_line_failure(&out, "header version 99");
}

#[test]
fn readiness_fd_that_is_stdio() {
    let doc = format!(
        "{}\n{{}}",
        header().replace(r#""readiness_fd":null"#, r#""readiness_fd":1"#)
    );
    let out = run_worker(doc.as_bytes(), |_| {});
    assert_one_line_failure(
        &out,
        "inherited fd 1 is not a readiness socket: a number that is stdio or a declared socket",
    );
}

#[test]
fn a_master_that_is_gone() {
    // The header names a master that is not this process's parent: the worker must not start.
    let doc = format!("{}\n{{}}", header_of(1));
    let out = run_worker_of(1, doc.as_bytes(), |_| {});
    assert_one_line_failure(&out, "the master (pid 1) is gone; not starting");
}
