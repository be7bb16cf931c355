//! `sample-warp-like`: haskell-prefork's `prefork-sample-warp`, ported to tokio and hyper.
//!
//! ```text
//! sample-warp-like -p PORT -w WORKERS [--threads N] [--drain-grace SECS] [--drain-timeout SECS]
//! ```
//!
//! The master binds `127.0.0.1:PORT` once (lazily, in the `fork` callback, as the Haskell sample
//! did) and keeps `WORKERS` workers, `id=0` … `id=WORKERS-1`, each a multi-threaded tokio runtime
//! serving HTTP/1.1 on the inherited socket: `GET /` answers `hello`, anything else 404.
//!
//! * `kill <worker>`: that id comes back with a new pid, the others are untouched.
//! * `kill -HUP <master>`: every worker is replaced; each new one says it is ready (explicit
//!   readiness, once its accept loop runs) before its predecessor is told to stop, and the old
//!   one drains, so a reload drops no request.
//! * `kill -TERM <master>`: every worker drains and exits, then the master exits 0.
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
//!   grace period (`--drain-grace`, 1 s) since the drain began is shut down with hyper's
//!   `graceful_shutdown`;
//! * requests in flight finish;
//! * a deadline (`--drain-timeout`, 10 s) bounds it all, then the worker exits 0.
//!
//! `header_read_timeout` (with a timer) keeps a silent or trickling client from pinning a
//! worker in any case.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prefork_core::{
    InheritedListener, Pid, Readiness, WorkerContext, WorkerSet, default_main, fork_worker_process,
    relaunch_settings,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A preforking HTTP server: a master and WORKERS workers sharing one listening socket.
#[derive(Debug, Parser)]
#[command(name = "sample-warp-like", version)]
struct Cli {
    /// TCP port to listen on, on 127.0.0.1 (0: any free port, shown on stderr).
    #[arg(short, long, default_value_t = 11111)]
    port: u16,
    /// Number of worker processes.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// Runtime threads per worker (default: WORKERS, as the Haskell sample's `-N`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Seconds a stopping worker leaves a silent keep-alive connection open before closing it.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    drain_grace: u64,
    /// Seconds a stopping worker may drain in all before it exits anyway.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    drain_timeout: u64,
}

/// How a stopping worker drains (see the module docs).
#[derive(Clone, Copy, Debug)]
struct Drain {
    /// How long a connection may stay silent after the drain began before it is closed.
    grace: Duration,
    /// How long the whole drain may take.
    deadline: Duration,
}

/// One worker: `ps` shows `sample-warp-like id=2 +RTS -N5 -RTS`.
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(fd)]
    listener: Option<InheritedListener>,
    #[prefork(threads)]
    cap: usize,
}

fn main() {
    // `args()` is the master's argv in both processes: a worker's own argv (`id=0 +RTS -N5
    // -RTS`) is for `ps`, not for clap.
    let cli = Cli::parse_from(prefork_core::args());
    init_tracing();
    let port = cli.port;
    let workers = cli.workers;
    let cap = cli.threads.unwrap_or(workers) as usize;
    let drain = Drain {
        grace: Duration::from_secs(cli.drain_grace),
        deadline: Duration::from_secs(cli.drain_timeout),
    };

    let update = move |set: &mut WorkerSet<Worker>| {
        set.set((0..workers).map(|id| Worker {
            id,
            listener: None,
            cap,
        }));
        Some(())
    };
    // The socket is made once, on the first fork, and kept here for every later one.
    let mut shared: Option<InheritedListener> = None;
    let fork = move |w: &Worker| -> prefork_core::Result<Pid> {
        let listener = match &shared {
            Some(l) => l.clone(),
            None => {
                let l = InheritedListener::bind_tcp(("127.0.0.1", port))?;
                eprintln!("sample-warp-like: listening on http://{}", l.local_addr()?);
                shared.insert(l).clone()
            }
        };
        fork_worker_process(&Worker {
            listener: Some(listener),
            ..w.clone()
        })
    };
    let settings = relaunch_settings(update, fork)
        .readiness(Readiness::Explicit)
        .ready_timeout(Duration::from_secs(20))
        // Longer than a worker's own drain deadline, so it exits by itself.
        .stop_timeout(drain.deadline + Duration::from_secs(5))
        .shutdown_timeout(drain.deadline + Duration::from_secs(5));
    default_main(settings, move |w: Worker| serve(w, drain))
}

/// Logs go to standard error (`RUST_LOG`, default `info`).
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The worker function.
fn serve(w: Worker, drain: Drain) -> anyhow::Result<()> {
    // Take over SIGTERM first: from now on a stop request drains instead of killing.
    let stop = prefork_core::worker::stop_signal()?;
    let listener = w
        .listener
        .context("the context carries no listener")?
        .into_tcp()?;
    let threads = prefork_core::worker::threads().unwrap_or(w.cap).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;

    // The stop signal is a blocking wait; a thread turns it into the drain's start time.
    // The sender outlives the runtime (this function holds it), so receivers never see it closed.
    let (drain_tx, drain_rx) = watch::channel(None::<Instant>);
    let drain_tx = Arc::new(drain_tx);
    let bridge_tx = Arc::clone(&drain_tx);
    std::thread::Builder::new()
        .name("stop-bridge".into())
        .spawn(move || {
            stop.wait();
            bridge_tx.send_replace(Some(Instant::now()));
        })
        .context("cannot start the stop thread")?;

    rt.block_on(accept_loop(w.id, threads, listener, drain, drain_rx))?;
    rt.shutdown_timeout(Duration::from_millis(200));
    drop(drain_tx);
    Ok(())
}

/// Accepts until the stop signal, then drains; returns when every connection is done or the
/// drain deadline passed.
async fn accept_loop(
    id: u32,
    threads: usize,
    listener: std::net::TcpListener,
    cfg: Drain,
    drain: watch::Receiver<Option<Instant>>,
) -> io::Result<()> {
    // The master made the socket non-blocking (shared by all workers); it is not touched here.
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut conns = JoinSet::new();
    let mut stop = drain.clone();
    // The listener is registered with the runtime and the loop below runs next: tell the master
    // this worker serves, so that it may retire the one it replaces.
    prefork_core::worker::ready();
    tracing::info!(
        worker = id,
        threads,
        generation = prefork_core::worker::generation(),
        "worker serving"
    );
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
                    tracing::warn!(worker = id, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Stop accepting at once: connections still in the kernel's queue go to the siblings.
    drop(listener);
    tracing::info!(
        worker = id,
        connections = conns.len(),
        "stop requested: draining"
    );
    let started = (*stop.borrow()).unwrap_or_else(Instant::now);
    let deadline = started + cfg.deadline;
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        tracing::warn!(
            worker = id,
            connections = conns.len(),
            "drain deadline passed; closing the remaining connections"
        );
        conns.abort_all();
    }
    tracing::info!(worker = id, "drained; exiting");
    Ok(())
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
                    tracing::debug!(error = %e, "connection ended with an error");
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

/// The application.
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
