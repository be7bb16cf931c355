//! One connection, and how it ends when the drain begins.
//!
//! # The keep-alive race
//!
//! An idle keep-alive connection may be closed by the server at the very moment its client
//! sends the next request on it. That request is lost: the client sees a reset or an empty
//! reply and cannot tell whether it was processed, so it cannot safely retry it. Closing every
//! idle connection when the drain begins (what a plain graceful shutdown does) loses a request
//! per busy connection per reload. So, once the drain began, an HTTP/1 connection:
//!
//! * answers its next request with `Connection: close`, after which hyper closes it and the
//!   client knows not to reuse it;
//! * is shut down gracefully (hyper closes it if idle, or after its current response) only
//!   once it has been *silent* for the grace period: no byte read or written and no request in
//!   flight, counted from the later of the drain's start and its last activity;
//! * is dropped in any case at the drain deadline (the caller's job).
//!
//! An HTTP/2 connection has no such race: `GOAWAY` tells the client which streams were
//! processed. It is shut down gracefully as soon as the drain begins.
//!
//! # What it costs
//!
//! Before the drain nothing is timed: activity is recorded only while draining (activity
//! before the drain's start cannot matter, the grace counts from the later of the two). A
//! request costs two atomic additions and one flag load, plus two more atomic additions on the
//! worker's scoreboard slot ([`prefork_core::worker::request_guard`]); a read or write one
//! flag load.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::options::{Options, Protocol};
use crate::{BoxError, HttpBody, HttpService};

/// The target of this crate's log events.
pub(crate) const LOG_TARGET: &str = "prefork_http";

/// The server-wide drain state, shared by every connection.
#[derive(Debug)]
pub(crate) struct Drain {
    /// Set once, when the drain begins; read on every request and every byte moved.
    draining: AtomicBool,
    /// When the drain began; wakes the connections waiting for it.
    started: watch::Sender<Option<Instant>>,
    grace: Duration,
}

impl Drain {
    pub(crate) fn new(grace: Duration) -> Self {
        Drain {
            draining: AtomicBool::new(false),
            started: watch::Sender::new(None),
            grace,
        }
    }

    /// Begins the drain. The flag first: a connection woken by the watch must see it.
    pub(crate) fn begin(&self, at: Instant) {
        self.draining.store(true, Ordering::Release);
        self.started.send_replace(Some(at));
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves with the drain's start, when it began.
    async fn started(&self) -> Instant {
        let mut rx = self.started.subscribe();
        loop {
            if let Some(t) = *rx.borrow_and_update() {
                return t;
            }
            if rx.changed().await.is_err() {
                // The sender is `self.started`, alive while `self` is: cannot happen.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The HTTP machinery, built once per server from its [`Options`].
#[derive(Debug)]
pub(crate) enum Builder {
    Http1(hyper::server::conn::http1::Builder),
    Auto(hyper_util::server::conn::auto::Builder<TokioExecutor>),
}

impl Builder {
    pub(crate) fn new(o: &Options) -> Self {
        match o.protocol {
            Protocol::Http1 => {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(o.header_read_timeout)
                    .keep_alive(true);
                Builder::Http1(b)
            }
            Protocol::Auto => {
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(o.header_read_timeout)
                    .keep_alive(true);
                b.http2().timer(TokioTimer::new());
                Builder::Auto(b)
            }
        }
    }
}

/// One connection's state: its activity, as the drain sees it.
#[derive(Debug)]
struct Conn {
    drain: Arc<Drain>,
    base: Instant,
    /// Milliseconds after `base` of the last activity while draining (0: none).
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// An HTTP/2 request was seen: this connection is drained with `GOAWAY` at once.
    http2: AtomicBool,
}

impl Conn {
    fn new(drain: Arc<Drain>) -> Self {
        Conn {
            drain,
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
        }
    }

    /// Records activity now, if it can matter (see the module docs).
    fn touch(&self) {
        if self.drain.is_draining() {
            let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once the drain began and the connection then stayed silent for the grace
    /// period (at once for HTTP/2). Pending for ever if no drain begins.
    async fn quiet_after_drain(&self) {
        let started = self.drain.started().await;
        if self.http2.load(Ordering::Relaxed) {
            return;
        }
        let grace = self.drain.grace;
        loop {
            // A grace too long to be represented never ends: the drain deadline rules.
            let Some(due) = self.last().max(started).checked_add(grace) else {
                return std::future::pending().await;
            };
            let now = Instant::now();
            if self.in_flight() == 0 && now >= due {
                return;
            }
            // Busy: look again after a grace period; quiet but not long enough: wake when it is.
            let wake = if now >= due {
                now.checked_add(grace)
            } else {
                Some(due)
            };
            let Some(wake) = wake else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request being handled; counts as activity when it starts and when it ends, and on the
/// worker's scoreboard slot (in flight, then served).
#[derive(Debug)]
struct InFlight(
    Arc<Conn>,
    // Held for its drop, which counts the request as served.
    #[allow(dead_code)] prefork_core::worker::RequestGuard,
);

impl InFlight {
    fn begin(conn: &Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.touch();
        InFlight(Arc::clone(conn), prefork_core::worker::request_guard())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The user's service as hyper sees it on one connection: counts requests in flight and marks
/// the last response of a draining HTTP/1 connection.
#[derive(Debug)]
struct ConnService<S> {
    inner: TowerToHyperService<S>,
    conn: Arc<Conn>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<TowerToHyperServiceFuture<S, Request<Incoming>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() != Version::HTTP_2;
        if !http1 {
            self.conn.http2.store(true, Ordering::Relaxed);
        }
        let guard = InFlight::begin(&self.conn);
        ResponseFuture {
            inner: hyper::service::Service::call(&self.inner, req),
            guard: Some(guard),
            http1,
        }
    }
}

pin_project! {
    /// The user's response future, plus the drain's bookkeeping.
    struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
        http1: bool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut r = ready!(this.inner.poll(cx));
        if let Some(guard) = this.guard.take() {
            if *this.http1
                && guard.0.drain.is_draining()
                && let Ok(resp) = &mut r
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                // Draining: this is the connection's last response (an upgrade, already
                // accepted, leaves the connection to the application instead).
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            drop(guard);
        }
        Poll::Ready(r)
    }
}

/// Serves one accepted connection until it ends: by the client, by an error, or by the drain.
pub(crate) async fn serve_conn<T, S, B>(io: T, service: S, builder: Arc<Builder>, drain: Arc<Drain>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let conn = Arc::new(Conn::new(drain));
    let io = TokioIo::new(Tracked {
        inner: io,
        conn: Arc::clone(&conn),
    });
    let svc = ConnService {
        inner: TowerToHyperService::new(service),
        conn: Arc::clone(&conn),
    };
    // Polls the connection; once it has been quiet after the drain began, asks it to finish
    // (graceful shutdown) and polls it to the end.
    macro_rules! drive {
        ($c:expr) => {{
            let c = $c;
            tokio::pin!(c);
            let mut shutting_down = false;
            loop {
                tokio::select! {
                    r = c.as_mut() => break r.map_err(BoxError::from),
                    () = conn.quiet_after_drain(), if !shutting_down => {
                        c.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
            }
        }};
    }
    let r: Result<(), BoxError> = match &*builder {
        Builder::Http1(b) => drive!(b.serve_connection(io, svc).with_upgrades()),
        Builder::Auto(b) => drive!(b.serve_connection_with_upgrades(io, svc)),
    };
    if let Err(e) = r {
        tracing::debug!(target: LOG_TARGET, error = %e, "connection ended with an error");
    }
}

/// A stream that records in its [`Conn`] every time a byte moves (while draining).
#[derive(Debug)]
struct Tracked<T> {
    inner: T,
    conn: Arc<Conn>,
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
            self.conn.touch();
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
            self.conn.touch();
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
            self.conn.touch();
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
