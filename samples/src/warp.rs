//! `sample-warp-like`'s HTTP server: hyper 1 on tokio, HTTP/1.1 with keep-alive, `TCP_NODELAY`
//! and a header read timeout; `GET /` answers `hello`, anything else 404 ([`respond`]).
//!
//! [`accept_loop`] serves until a drain begins, then drains. `sample-warp-like` runs it in every
//! worker; `bench-baseline --mode sample` runs it in one process, with a drain that never
//! begins, to tell what prefork costs from what this code costs.
//!
//! # How a worker stops without dropping a request
//!
//! On its stop signal a worker first drops its listener: connections still queued in the kernel
//! go to its siblings, which share the socket. Then it drains the connections it has, and here
//! lies the classic keep-alive race: an idle keep-alive connection may be closed at the very
//! moment its client sends the next request, which is then lost (the client sees a reset or an
//! empty reply and cannot tell whether the request was processed). So idle connections are not
//! closed at once. Instead:
//!
//! * every response sent while draining carries `Connection: close`, so hyper closes the
//!   connection right after it and the client knows not to reuse it;
//! * a connection that has been silent (no byte read or written, no request in flight) for a
//!   grace period ([`Drain::grace`]: `--drain-grace`, 1 s) since the drain began is shut down
//!   with hyper's `graceful_shutdown`;
//! * requests in flight finish;
//! * a deadline ([`Drain::deadline`]: `--drain-timeout`, 10 s) bounds it all, then the worker
//!   exits 0.
//!
//! `header_read_timeout` (with a timer) keeps a silent or trickling client from pinning a
//! worker in any case.
//!
//! The log events here keep the target `sample_warp_like` they had when this code lived in the
//! binary, so its log lines and `RUST_LOG` filters are unchanged.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The target of this module's log events: the binary's own (see the module docs).
const LOG_TARGET: &str = "sample_warp_like";

/// How a stopping worker drains (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    /// How long a connection may stay silent after the drain began before it is closed.
    pub grace: Duration,
    /// How long the whole drain may take.
    pub deadline: Duration,
}

impl Drain {
    /// The default grace period in seconds (`sample-warp-like --drain-grace`).
    pub const DEFAULT_GRACE_SECS: u64 = 1;
    /// The default drain deadline in seconds (`sample-warp-like --drain-timeout`).
    pub const DEFAULT_DEADLINE_SECS: u64 = 10;
}

impl Default for Drain {
    /// `sample-warp-like`'s defaults: a grace of 1 s, a deadline of 10 s.
    fn default() -> Self {
        Drain {
            grace: Duration::from_secs(Self::DEFAULT_GRACE_SECS),
            deadline: Duration::from_secs(Self::DEFAULT_DEADLINE_SECS),
        }
    }
}

/// Accepts until the drain begins, then drains; returns when every connection is done or the
/// drain deadline passed.
///
/// The drain begins when `drain` holds `Some(start)`; its grace and deadline count from `start`.
/// If it never does (or its sender is dropped), this serves forever. `id` only names the worker
/// in the logs. The caller registers `listener` with the runtime (and may announce readiness)
/// before calling: the loop runs at once.
pub async fn accept_loop(
    id: u32,
    listener: TcpListener,
    cfg: Drain,
    drain: watch::Receiver<Option<Instant>>,
) {
    let mut conns = JoinSet::new();
    let mut stop = drain.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(Option::is_some) => break,
            r = listener.accept() => match r {
                Ok((tcp, _peer)) => {
                    conns.spawn(serve_conn(tcp, cfg.grace, drain.clone()));
                }
                Err(e) => {
                    // ECONNABORTED, EMFILE, …: not fatal; do not spin on it either.
                    tracing::warn!(target: LOG_TARGET, worker = id, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Stop accepting at once: connections still in the kernel's queue go to the siblings.
    drop(listener);
    tracing::info!(
        target: LOG_TARGET,
        worker = id,
        connections = conns.len(),
        "stop requested: draining"
    );
    let started = (*stop.borrow()).unwrap_or_else(Instant::now);
    let deadline = started + cfg.deadline;
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        tracing::warn!(
            target: LOG_TARGET,
            worker = id,
            connections = conns.len(),
            "drain deadline passed; closing the remaining connections"
        );
        conns.abort_all();
    }
    tracing::info!(target: LOG_TARGET, worker = id, "drained; exiting");
}

/// One connection: HTTP/1.1 with keep-alive, closed politely once the drain began.
async fn serve_conn(tcp: TcpStream, grace: Duration, drain: watch::Receiver<Option<Instant>>) {
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
                    // Draining: this is the connection's last response.
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
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(target: LOG_TARGET, error = %e, "connection ended with an error");
                }
                break;
            }
            () = quiet_after_drain(&activity, grace, drain.clone()), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// The application: `GET /` (or `HEAD /`) answers `200 hello` (`text/plain`), another method
/// on `/` 405, any other path 404.
pub fn respond(req: &Request<Incoming>) -> Response<Full<Bytes>> {
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

/// Resolves once the drain began and the connection has then been quiet for `grace`: no byte
/// in either direction and no request in flight. Pending forever if no drain begins.
async fn quiet_after_drain(
    activity: &Activity,
    grace: Duration,
    mut drain: watch::Receiver<Option<Instant>>,
) {
    let started = loop {
        if let Some(t) = *drain.borrow_and_update() {
            break t;
        }
        if drain.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    loop {
        let due = activity.last().max(started) + grace;
        let now = Instant::now();
        if activity.in_flight() == 0 && now >= due {
            return;
        }
        // Busy: look again after a grace period; quiet but not long enough: wake when it is.
        let wake = if now >= due { now + grace } else { due };
        tokio::time::sleep_until(wake).await;
    }
}

/// When a connection last moved a byte, and how many requests it has in flight.
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

/// A request being handled; counts as activity when it starts and when it ends.
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

/// A stream that records in [`Activity`] every time a byte moves.
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
