//! `bench-baseline`: the throughput baselines. The same HTTP stack as `sample-warp-like` (hyper 1
//! on a multi-threaded tokio runtime, HTTP/1.1 keep-alive, `TCP_NODELAY`, a header read timeout
//! with tokio's timer) and the same response (`GET /` → `200 hello`, `text/plain`,
//! `Content-Length: 5`), served from ONE process, without prefork.
//!
//! ```text
//! bench-baseline [-p PORT] [--threads N] [--mode plain|sample]
//! ```
//!
//! * `--mode plain` (default): the textbook hyper server, one task per connection.
//! * `--mode sample`: the accept loop and connection code of `sample-warp-like` copied as they
//!   are (its byte-activity tracking, in-flight counting, `select!` against the drain watch,
//!   `JoinSet` of connections), with a drain that never starts. Beside `-w N` of the sample it
//!   isolates what prefork itself costs from what the sample's drain machinery costs.
//!
//! It binds `127.0.0.1:PORT` (0: a free port) with a backlog of 1024 (as the prefork listener),
//! prints `bench-baseline: listening on http://ADDR` on standard error, and serves until killed.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// As in `sample-warp-like`.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let mut port: u16 = 0;
    let mut threads: usize = 2;
    let mut sample = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next();
        match (a.as_str(), v.as_deref()) {
            ("-p" | "--port", Some(p)) => port = p.parse()?,
            ("--threads", Some(t)) => threads = t.parse::<usize>()?.max(1),
            ("--mode", Some("plain")) => sample = false,
            ("--mode", Some("sample")) => sample = true,
            _ => {
                anyhow::bail!("usage: bench-baseline [-p PORT] [--threads N] [--mode plain|sample]")
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!(
            "bench-baseline: listening on http://{}",
            listener.local_addr()?
        );
        if sample {
            sample_accept_loop(listener).await
        } else {
            plain_accept_loop(listener).await
        }
    })
}

/// The plain server: accept forever, one task per connection.
async fn plain_accept_loop(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(
                    TokioIo::new(tcp),
                    service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(respond(&req))
                    }),
                )
                .await;
        });
    }
}

/// The same application as `sample-warp-like`.
fn respond(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body): (StatusCode, &'static [u8]) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/") => (StatusCode::OK, b"hello"),
        (_, "/") => (StatusCode::METHOD_NOT_ALLOWED, b"method not allowed\n"),
        _ => (StatusCode::NOT_FOUND, b"not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

// ---------------------------------------------------------------------------------------------
// `--mode sample`: copied from samples/src/bin/sample-warp-like.rs (accept_loop, serve_conn,
// quiet_after_drain, Activity, InFlight, Tracked), minus prefork: the drain never begins.

async fn sample_accept_loop(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    // The sender lives as long as the loop; it never sends.
    let (_drain_tx, drain_rx) = watch::channel(None::<Instant>);
    let mut conns = JoinSet::new();
    let mut stop = drain_rx.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(Option::is_some) => break,
            r = listener.accept() => match r {
                Ok((tcp, _peer)) => {
                    conns.spawn(serve_conn(tcp, drain_rx.clone()));
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    Ok(())
}

async fn serve_conn(tcp: TcpStream, drain: watch::Receiver<Option<Instant>>) {
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tcp,
        activity: Arc::clone(&activity),
    });
    let svc = {
        let activity = Arc::clone(&activity);
        let drain = drain.clone();
        service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::begin(&activity);
            let drain = drain.clone();
            async move {
                let mut resp = respond(&req);
                if drain.borrow().is_some() {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                drop(in_flight);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            () = quiet_after_drain(&activity, drain.clone()), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

async fn quiet_after_drain(activity: &Activity, mut drain: watch::Receiver<Option<Instant>>) {
    let started = loop {
        if let Some(t) = *drain.borrow_and_update() {
            break t;
        }
        if drain.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    loop {
        let due = activity.last().max(started) + DRAIN_GRACE;
        let now = Instant::now();
        if activity.in_flight() == 0 && now >= due {
            return;
        }
        let wake = if now >= due { now + DRAIN_GRACE } else { due };
        tokio::time::sleep_until(wake).await;
    }
}

#[derive(Debug)]
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
