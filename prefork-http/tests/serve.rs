//! `serve_with_shutdown` in one process, without prefork: TCP and Unix listeners, the drain
//! (an idle keep-alive connection still gets its next request answered, with
//! `Connection: close`; a silent one is closed after the grace; a stuck request is cut at the
//! deadline), HTTP/2 drained with `GOAWAY`, and the listeners it refuses.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use prefork_http::{IntoListeners, Options, Protocol, serve_with_shutdown};
use testkit::{DEADLINE, TempDir, parse_response, wait_for};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `/` answers `hello`; `/stuck` counts itself in `stuck` and never answers.
fn app(stuck: Arc<AtomicUsize>) -> Router {
    Router::new().route("/", get(|| async { "hello" })).route(
        "/stuck",
        get(move || async move {
            stuck.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }),
    )
}

/// A server on its own runtime thread; `stop` begins the drain.
struct Server {
    /// Requests to `/stuck` that began.
    stuck: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(listeners: impl IntoListeners + Send + 'static, options: Options) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let stuck = Arc::new(AtomicUsize::new(0));
        let service = app(Arc::clone(&stuck));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(serve_with_shutdown(listeners, service, options, async {
                let _ = stopped.await;
            }));
            let _ = done_tx.send(r);
        });
        Server {
            stuck,
            stop: Some(stop),
            done,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits until the server returned; its result and how long that took from now.
    fn wait_done(&mut self, deadline: Duration) -> (io::Result<()>, Duration) {
        let t = Instant::now();
        let r = self
            .done
            .recv_timeout(deadline)
            .expect("the server to return in time");
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (r, t.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            // The drain deadline of every test is short: the thread ends.
            let _ = t.join();
        }
    }
}

fn tcp_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `GET path` (keep-alive) and reads one response: (status, says `Connection: close`, body).
fn request(s: &mut (impl Read + Write), path: &str) -> (u16, bool, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((status, headers, body)) = parse_response(&buf)
            && headers.iter().any(|(k, _)| k == "content-length")
        {
            let close = headers
                .iter()
                .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
            return (status, close, String::from_utf8_lossy(body).into_owned());
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads to end-of-file: a clean close by the server, with nothing more sent.
fn expect_clean_eof(s: &mut impl Read, what: &str) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{what}: unexpected bytes {rest:?}"),
        Err(e) => panic!("{what}: not a clean close: {e}"),
    }
}

/// Waits until `addr` refuses connections: the server closed its listener, the drain began.
fn wait_refused(addr: SocketAddr) {
    wait_for(
        DEADLINE,
        "the listener to be closed",
        || match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
}

#[test]
fn a_draining_server_answers_idle_keep_alive_connections_once_and_closes_silent_ones() {
    let (l, addr) = tcp_listener();
    let grace = Duration::from_secs(2);
    let mut server = Server::start(l, Options::default().drain_grace(grace));
    let mut busy = connect(addr);
    let mut silent = connect(addr);
    assert_eq!(request(&mut busy, "/"), (200, false, "hello".into()));
    assert_eq!(request(&mut silent, "/"), (200, false, "hello".into()));

    server.stop();
    wait_refused(addr);
    let began = Instant::now();
    // Idle when the drain began, reused now: answered, as its last response.
    assert_eq!(request(&mut busy, "/"), (200, true, "hello".into()));
    expect_clean_eof(&mut busy, "after `Connection: close`");
    // Silent: closed by the server once the grace passed, not before.
    expect_clean_eof(&mut silent, "the silent connection");
    assert!(began.elapsed() >= grace - Duration::from_millis(300));
    let (r, _) = server.wait_done(DEADLINE);
    r.unwrap();
}

#[test]
fn a_unix_listener_is_served_and_drained() {
    let dir = TempDir::new("http-unix");
    let path = dir.path().join("s.sock");
    let l = UnixListener::bind(&path).unwrap();
    l.set_nonblocking(true).unwrap();
    let mut server = Server::start(
        Some(l),
        Options::default().drain_grace(Duration::from_millis(200)),
    );
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(request(&mut s, "/"), (200, false, "hello".into()));
    server.stop();
    expect_clean_eof(&mut s, "the idle Unix connection");
    let (r, _) = server.wait_done(DEADLINE);
    r.unwrap();
}

#[test]
fn a_request_still_running_at_the_drain_deadline_is_cut() {
    let (l, addr) = tcp_listener();
    let mut server = Server::start(
        [l],
        Options::default()
            .drain_grace(Duration::from_millis(100))
            .drain_timeout(Duration::from_millis(500)),
    );
    let mut s = connect(addr);
    assert_eq!(request(&mut s, "/"), (200, false, "hello".into()));
    s.write_all(b"GET /stuck HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    // The request is in the service's hands before the drain begins.
    wait_for(DEADLINE, "the stuck request to begin", || {
        (server.stuck.load(Ordering::SeqCst) == 1).then_some(())
    });
    server.stop();
    let (r, took) = server.wait_done(DEADLINE);
    r.unwrap();
    assert!(took < Duration::from_secs(5), "returned after {took:?}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "no response to the stuck request: {rest:?}"
    );
}

#[test]
fn http2_connections_are_drained_with_goaway_at_once() {
    let (l, addr) = tcp_listener();
    // A grace far longer than the test: only GOAWAY can end the HTTP/2 connection quickly.
    let mut server = Server::start(
        l,
        Options::default()
            .protocol(Protocol::Auto)
            .drain_grace(Duration::from_secs(60))
            .drain_timeout(Duration::from_secs(120)),
    );
    // The client's connection task must keep running (to answer the server's PING) while
    // this thread waits: a runtime with a worker thread of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tcp = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
    let (mut send, conn) = rt
        .block_on(hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        ))
        .unwrap();
    let conn = rt.spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = rt.block_on(send.send_request(req)).unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    // HTTP/1.1 on the same listener still works.
    let mut h1 = connect(addr);
    assert_eq!(request(&mut h1, "/"), (200, false, "hello".into()));
    drop(h1);

    server.stop();
    let (r, took) = server.wait_done(DEADLINE);
    r.unwrap();
    assert!(took < Duration::from_secs(10), "returned after {took:?}");
    let ended = rt.block_on(async { tokio::time::timeout(IO_TIMEOUT, conn).await });
    assert!(
        ended.is_ok(),
        "the client saw its connection end after GOAWAY"
    );
}

#[test]
fn blocking_or_missing_listeners_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let blocking = TcpListener::bind("127.0.0.1:0").unwrap();
    let e = rt
        .block_on(serve_with_shutdown(
            blocking,
            app(Arc::default()),
            Options::default(),
            async {},
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("blocking"), "{e}");

    let none: Option<TcpListener> = None;
    let e = rt
        .block_on(serve_with_shutdown(
            none,
            app(Arc::default()),
            Options::default(),
            async {},
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("no listener"), "{e}");
}
