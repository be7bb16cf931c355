//! # prefork-http: serve an HTTP service in prefork workers, and reload without dropping a request
//!
//! This crate runs any [`tower_service::Service`] that takes a hyper request, so an axum
//! `Router`, a tower stack, or a hyper `service_fn` (through [`HyperService`]), on the
//! listening sockets a prefork worker inherits, with hyper 1 on tokio. It does the two things
//! a worker must do for the master's rolling reload (`SIGHUP`) to lose nothing:
//!
//! * **It says when it is ready.** Once its listeners are registered with the runtime and the
//!   accept loop is about to run, it calls [`prefork_core::worker::ready`], so with
//!   `Readiness::Explicit` the master retires the old worker only when this one accepts.
//! * **It drains without the keep-alive race** when told to stop: it stops accepting at once
//!   on a shared socket (connections still queued in the kernel go to its siblings, which
//!   share the socket), and on the worker id's own socket (a `ReuseportGroup`'s) after
//!   [`Options::accept_linger`] and an empty queue (when the id was removed, nobody else will
//!   accept what is queued there),
//!   answers the next request on each keep-alive connection with `Connection: close`, closes
//!   a connection that stayed silent for a grace period, lets requests in flight finish, and
//!   returns by a drain deadline. Closing idle keep-alive connections at once instead, as a
//!   plain graceful shutdown does, loses the requests their clients were sending at that
//!   moment; see the `conn` module's source for the whole argument.
//!
//! # The whole program
//!
//! An axum app served by four workers on port 3000, reloaded with `kill -HUP <master>`:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use prefork_core::{InheritedListener, Readiness, Spawner, WorkerContext, WorkerSet,
//!                    default_main, relaunch_settings};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
//! struct Worker {
//!     #[prefork(id, arg)]
//!     id: u32,
//!     #[prefork(fd)]
//!     listener: Option<InheritedListener>,
//! }
//!
//! fn main() {
//!     let update = |set: &mut WorkerSet<Worker>| {
//!         set.set((0..4).map(|id| Worker { id, listener: None }));
//!         Some(())
//!     };
//!     // The socket is bound once, in the master, and inherited by every worker.
//!     let mut shared: Option<InheritedListener> = None;
//!     let fork = move |w: &Worker, spawner: &Spawner| -> prefork_core::Result<_> {
//!         let l = match &shared {
//!             Some(l) => l.clone(),
//!             None => shared.insert(InheritedListener::bind_tcp("127.0.0.1:3000")?).clone(),
//!         };
//!         spawner.fork_worker_process(&Worker { listener: Some(l), ..w.clone() })
//!     };
//!     let settings = relaunch_settings(update, fork).readiness(Readiness::Explicit);
//!     default_main(settings, |w: Worker| {
//!         let app = Router::new().route("/", get(|| async { "hello" }));
//!         prefork_http::serve(w.listener, app, prefork_http::Options::default())
//!     })
//! }
//! ```
//!
//! # Three entry points
//!
//! * [`serve`] blocks: it takes over the worker's stop signal, builds a multi-threaded tokio
//!   runtime with [`prefork_core::worker::threads`] threads (tokio's default outside a worker
//!   or when the context sets none), serves until the master asks the worker to stop, drains
//!   and returns. Most workers need nothing else.
//! * [`serve_until_stopped`] is the same inside a runtime you built.
//! * [`serve_with_shutdown`] drains when a future you give resolves: a channel, `ctrl_c`, a
//!   test's trigger. The two above are it, with the worker's stop signal as that future.
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn run(listener: std::net::TcpListener) -> std::io::Result<()> {
//! use axum::{Router, routing::get};
//! use prefork_http::{Options, serve_with_shutdown};
//!
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(serve_with_shutdown(listener, app, Options::default(), async {
//!     let _ = stopped.await;
//! }));
//! // ... later: drain and wait until every connection is done.
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```
//!
//! # Listeners
//!
//! One listener or many ([`IntoListeners`]): an [`InheritedListener`] (TCP or Unix, as the
//! context declares), std's or tokio's TCP and Unix listeners, or an `Option`, a `Vec` or an
//! array of one of them. The sockets must be non-blocking; the ones the prefork master binds
//! are, and this crate never changes that flag (it is shared with every sibling).
//!
//! # Protocols
//!
//! HTTP/1.1 with keep-alive by default, with hyper's HTTP/1 server directly.
//! [`Protocol::Auto`] adds HTTP/2 by prior knowledge (`h2c`, what a proxy or a gRPC client
//! speaks without TLS), telling them apart by a connection's first bytes; an HTTP/2
//! connection is drained with `GOAWAY`. HTTP upgrades (WebSocket) work with both; an upgraded
//! connection leaves the server's hands, and the drain does not wait for it.
//!
//! # Health
//!
//! Inside a prefork worker with a scoreboard slot, the server beats
//! ([`prefork_core::worker::heartbeat`]) from a task on the runtime that serves, every
//! [`prefork_core::worker::heartbeat_interval`], and counts each request with
//! [`prefork_core::worker::request_guard`] (in flight while its response is produced, served
//! after), so the master's hang detection and request recycling
//! (`Settings::hang_timeout`, `Settings::max_requests`) work with no code of yours. A long
//! request or a streamed response is not a hang: the beat task keeps running beside it.
//!
//! The limit: the beat comes from *some* thread of the runtime. On a current-thread runtime,
//! or a multi-threaded one of one thread ([`serve`] with a context of one thread), a handler
//! that blocks the thread stops the beats and the worker is judged hung. With several runtime
//! threads, one blocked thread is not seen (the beat task runs on another); only a runtime
//! whose every thread is stuck stops beating.
//!
//! # Logs
//!
//! Through `tracing`, target `prefork_http`: `serving` when accepting (`info`), `stop
//! requested: draining` with the number of connections, `drained`, and a warning when the
//! drain deadline cut connections or an accept failed.
//!
//! [`InheritedListener`]: prefork_core::InheritedListener

#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod conn;
mod listener;
mod options;
mod stop;

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::conn::{Builder, Drain, LOG_TARGET, serve_conn};
use crate::listener::{Accepted, Bound, poll_accept_any};

pub use crate::listener::{IntoListener, IntoListeners, Listener};
pub use crate::options::{Options, Protocol};

/// The error type a service and a response body may fail with (anything that converts into
/// it, as in hyper).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service this crate can serve: a [`tower_service::Service`] of hyper requests whose
/// responses have a body of type `B`, cloneable (once per connection and per request) and
/// sendable to the runtime's threads, as an axum `Router` is.
///
/// Implemented for every such service; it only names the bounds.
pub trait HttpService<B>:
    tower_service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> HttpService<B> for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}

/// A response body this crate can send: a hyper [`Body`] that can move between threads.
///
/// Implemented for every such body; it only names the bounds.
pub trait HttpBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> HttpBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

/// Serves `service` on `listeners` until the master asks this worker to stop, then drains;
/// blocks until the drain is over.
///
/// It takes over `SIGTERM`/`SIGINT` first (from then on they drain instead of killing), then
/// builds a multi-threaded tokio runtime of [`Options::threads`] threads, else
/// [`prefork_core::worker::threads`], or tokio's default when the context sets none, and runs [`serve_with_shutdown`] on it. Tasks
/// the service spawned are given 200 ms to end once the drain is over.
///
/// Errors: a listener that cannot be adopted or is blocking, no listener at all, the runtime
/// or the stop signal cannot be set up. See the [crate docs](crate) for a whole program.
pub fn serve<L, S, B>(listeners: L, service: S, options: Options) -> io::Result<()>
where
    L: IntoListeners,
    S: HttpService<B>,
    B: HttpBody,
{
    let stop = stop::stopped()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = options.threads.or_else(prefork_core::worker::threads) {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build()?;
    let r = rt.block_on(serve_with_shutdown(listeners, service, options, stop));
    rt.shutdown_timeout(Duration::from_millis(200));
    r
}

/// [`serve`] inside a runtime you built: serves until the master asks this worker to stop,
/// then drains.
///
/// `SIGTERM`/`SIGINT` are taken over when this future is first polled.
pub async fn serve_until_stopped<L, S, B>(
    listeners: L,
    service: S,
    options: Options,
) -> io::Result<()>
where
    L: IntoListeners,
    S: HttpService<B>,
    B: HttpBody,
{
    let stop = stop::stopped()?;
    serve_with_shutdown(listeners, service, options, stop).await
}

/// Serves `service` on `listeners` until `shutdown` resolves, then drains and returns.
///
/// In order:
///
/// 1. every listener is converted and registered with the current tokio runtime (which must
///    have IO and time enabled);
/// 2. [`prefork_core::worker::ready`] tells the master this worker serves (a no-op outside a
///    worker, or when the master does not wait for readiness);
/// 3. connections are accepted and served, each in its own task, the service cloned per
///    connection and per request, as axum and hyper-util do;
/// 4. when `shutdown` resolves, the shared listeners are closed, the worker's own ones
///    ([`prefork_core::worker::is_per_worker_socket`]) once [`Options::accept_linger`] passed
///    and their queue is empty, and the drain runs as the [crate docs](crate) describe, within
///    [`Options::drain_grace`] and [`Options::drain_timeout`]; the future then resolves with
///    `Ok(())`.
///
/// A failed `accept` (a connection reset before it was accepted, out of fds) is logged and
/// retried 10 ms later; a service that panics ends its connection only.
pub async fn serve_with_shutdown<L, S, B, F>(
    listeners: L,
    service: S,
    options: Options,
    shutdown: F,
) -> io::Result<()>
where
    L: IntoListeners,
    S: HttpService<B>,
    B: HttpBody,
    F: Future<Output = ()>,
{
    let listeners = listeners.into_listeners()?;
    // Which of them are this worker id's own sockets (a reuseport group's), kept while draining.
    let own: Vec<bool> = listeners
        .iter()
        .map(|l| prefork_core::worker::is_per_worker_socket(l.raw_fd()))
        .collect();
    let bound = listeners
        .into_iter()
        .map(Bound::register)
        .collect::<io::Result<Vec<_>>>()?;
    if bound.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no listener to serve on",
        ));
    }
    // Registered, and the accept loop runs next: the master may retire the predecessor.
    prefork_core::worker::ready();
    // Beats from a task of this runtime: a wedged runtime stops beating (see "Health").
    let _beat = prefork_core::worker::heartbeat_interval()
        .map(|every| AbortOnDrop(tokio::spawn(beat(every))));
    let addrs: Vec<String> = bound.iter().map(Bound::describe).collect();
    tracing::info!(
        target: LOG_TARGET,
        pid = std::process::id(),
        generation = prefork_core::worker::generation(),
        listeners = %addrs.join(" "),
        protocol = ?options.protocol,
        "serving"
    );

    let builder = Arc::new(Builder::new(&options));
    let drain = Arc::new(Drain::new(options.drain_grace));
    let mut conns = JoinSet::new();
    let mut next = 0;
    let mut accept_errors = AcceptErrors::default();
    let accept = |cx: &mut Context<'_>, next: &mut usize| poll_accept_any(&bound, next, cx);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = std::future::poll_fn(|cx| accept(cx, &mut next)) => match r {
                Ok(accepted) => {
                    let svc = service.clone();
                    let (builder, drain) = (Arc::clone(&builder), Arc::clone(&drain));
                    conns.spawn(serve_accepted(accepted, svc, builder, drain, options.tcp_nodelay));
                }
                Err(e) => {
                    // ECONNABORTED, EMFILE, …: not fatal; do not spin on it, and do not flood
                    // the log with it either (EMFILE repeats for as long as the fds are gone).
                    accept_errors.record(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(r) = conns.join_next(), if !conns.is_empty() => log_join(r),
        }
    }

    // Stop accepting on shared sockets at once: what their queues hold goes to the siblings.
    // This worker's own sockets are kept a little longer (below).
    let (kept, shared): (Vec<_>, Vec<_>) = bound.into_iter().zip(own).partition(|(_, o)| *o);
    drop(shared);
    let started = Instant::now();
    drain.begin(started);
    tracing::info!(
        target: LOG_TARGET,
        connections = conns.len(),
        own_sockets = kept.len(),
        "stop requested: draining"
    );
    // A worker id's own socket: when the id was removed, nobody else will ever accept what is
    // queued there (the master already steers new connections elsewhere). Keep accepting for
    // the linger, then until the queue is empty.
    let kept: Vec<Bound> = kept.into_iter().map(|(b, _)| b).collect();
    if !kept.is_empty() {
        let linger_end = started + options.accept_linger;
        let mut accepted = 0usize;
        let mut next = 0;
        loop {
            let past_linger = Instant::now() >= linger_end;
            tokio::select! {
                biased;
                r = std::future::poll_fn(|cx| poll_accept_any(&kept, &mut next, cx)) => match r {
                    Ok(a) => {
                        accepted += 1;
                        let svc = service.clone();
                        let (builder, drain) = (Arc::clone(&builder), Arc::clone(&drain));
                        conns.spawn(serve_accepted(a, svc, builder, drain, options.tcp_nodelay));
                    }
                    Err(e) => {
                        accept_errors.record(&e);
                        if past_linger {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                // Past the linger, an accept that is not ready at once means an empty queue.
                () = tokio::time::sleep_until(linger_end), if !past_linger => {}
                () = std::future::ready(()), if past_linger => break,
                Some(r) = conns.join_next(), if !conns.is_empty() => log_join(r),
            }
        }
        drop(kept);
        tracing::debug!(target: LOG_TARGET, accepted, "own sockets closed");
    }
    let all_done = async {
        while let Some(r) = conns.join_next().await {
            log_join(r);
        }
    };
    // A deadline too far to be represented is no deadline.
    let deadline = started.checked_add(options.drain_timeout);
    let in_time = match deadline {
        Some(d) => tokio::time::timeout_at(d, all_done).await.is_ok(),
        None => {
            all_done.await;
            true
        }
    };
    if !in_time {
        tracing::warn!(
            target: LOG_TARGET,
            connections = conns.len(),
            "drain deadline passed; closing the remaining connections"
        );
        conns.shutdown().await;
    }
    tracing::info!(target: LOG_TARGET, "drained");
    Ok(())
}

/// Beats every `every` on the worker's scoreboard slot, for as long as it runs.
async fn beat(every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        prefork_core::worker::heartbeat();
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection's task: the socket options, then [`serve_conn`].
async fn serve_accepted<S, B>(
    accepted: Accepted,
    service: S,
    builder: Arc<Builder>,
    drain: Arc<Drain>,
    nodelay: bool,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    match accepted {
        Accepted::Tcp(s) => {
            if nodelay {
                let _ = s.set_nodelay(true);
            }
            serve_conn(s, service, builder, drain).await;
        }
        Accepted::Unix(s) => serve_conn(s, service, builder, drain).await,
    }
}

/// A connection task's end: a panic in the service is logged (it ended that connection only).
fn log_join(r: Result<(), JoinError>) {
    if let Err(e) = r
        && e.is_panic()
    {
        tracing::warn!(target: LOG_TARGET, "a connection task panicked");
    }
}

/// A hyper [`Service`](hyper::service::Service) as a tower one, to serve a hyper
/// `service_fn` or any other hyper service: always ready, each call handed to the hyper
/// service.
///
/// ```no_run
/// use std::convert::Infallible;
/// use http_body_util::Full;
/// use hyper::body::{Bytes, Incoming};
/// use hyper::{Request, Response};
/// use prefork_http::{HyperService, Options};
///
/// # #[allow(dead_code)]
/// # fn run(listener: std::net::TcpListener) -> std::io::Result<()> {
/// let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
/// });
/// prefork_http::serve(listener, HyperService(svc), Options::default())
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HyperService<S>(pub S);

impl<S, R> tower_service::Service<R> for HyperService<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.0.call(req)
    }
}

/// Accept failures, logged at most once a second with how many were not logged.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const EVERY: Duration = Duration::from_secs(1);

    fn record(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(target: LOG_TARGET, error = %e, repeated = self.unlogged,
            "accept failed (logged at most once a second)");
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}
