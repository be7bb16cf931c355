//! A stopping `sample-warp-like` worker drains keep-alive connections without the keep-alive
//! race: a connection that was idle when the drain began still gets its next request answered
//! (with `Connection: close`), a connection that stays silent is closed cleanly after the grace
//! period, and the worker then exits 0 by itself, long before its drain deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use testkit::{
    DEADLINE, Master, Signal, alive, http_get, listening_addr, parse_response, wait_until,
};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive connection.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `GET /` without `Connection: close` and reads one whole response: (status, whether it
/// says `Connection: close`, body).
fn get(s: &mut TcpStream) -> (u16, bool, String) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((status, headers, body)) = parse_response(&buf) {
            let close = headers
                .iter()
                .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
            return (status, close, String::from_utf8_lossy(body).into_owned());
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until end-of-file; panics on a reset or on unexpected bytes.
fn expect_clean_eof(s: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{what}: unexpected bytes {rest:?}"),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            panic!("{what}: still open after {IO_TIMEOUT:?}")
        }
        Err(e) => panic!("{what}: not a clean close: {e}"),
    }
}

#[test]
fn idle_keep_alive_connections_are_not_cut_mid_request() {
    // One worker, so both connections belong to it; a grace period that leaves this test ample
    // time to send its request after seeing the drain begin.
    let mut m = Master::start_program(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &["-p", "0", "-w", "1", "--drain-grace", "3"],
    );
    let addr = listening_addr(&m.stderr);
    let old = m.wait_workers(1, "id")["0"];

    let mut busy = connect(addr);
    let mut silent = connect(addr);
    assert_eq!(get(&mut busy), (200, false, "hello".into()));
    assert_eq!(get(&mut silent), (200, false, "hello".into()));

    // Reload: the replacement becomes ready, then the old worker is told to stop and drains
    // both connections, idle at that moment.
    m.signal(Signal::SIGHUP);
    m.stderr.wait_line(DEADLINE, |l| {
        l.contains("stop requested: draining") && l.contains("connections=2")
    });

    // The idle connection is still there: its next request is answered, as its last one.
    assert_eq!(get(&mut busy), (200, true, "hello".into()));
    expect_clean_eof(
        &mut busy,
        "the connection after its `Connection: close` response",
    );

    // The silent one is closed by the server once the grace period passed: a clean close.
    expect_clean_eof(&mut silent, "the silent keep-alive connection");

    // With both connections gone the old worker exits by itself, status 0, not killed.
    wait_until(DEADLINE, "the old worker to exit", || !alive(old));
    let pid = format!("pid={old}");
    let exit = m.stderr.wait_line(DEADLINE, |l| {
        l.contains("retired worker exited") && l.contains(&pid)
    });
    assert!(
        exit.contains("status=exit status 0") && exit.contains("killed=false"),
        "{exit}"
    );

    // The replacement serves.
    assert_eq!(
        http_get(addr, "/", IO_TIMEOUT).unwrap(),
        (200, "hello".into())
    );
    let new = m.wait_workers(1, "id")["0"];
    assert_ne!(new, old);

    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(!m.stderr.all().join("\n").contains("panicked"));
}
