//! `sample-axum`: an axum app served by prefork workers; `kill -HUP <master>` replaces them all
//! without dropping a request.
//!
//! ```text
//! sample-axum -p PORT -w WORKERS [--hang-timeout SECS] [--max-requests N]
//!             [--max-requests-jitter N] [--max-age SECS] [--max-memory-mb N] [--debug-endpoints]
//!             [--control PATH] [--status-file PATH]
//!             [--reuseport]
//! ```
//!
//! With `--reuseport` each worker id gets its own `SO_REUSEPORT` socket (a `ReuseportGroup`),
//! which balances connections over the workers; reloads stay lossless.
//!
//! `GET /` answers `hello`, `GET /id` the id of the worker that answered, `GET /stream` a body
//! streamed in three chunks. The health flags are `sample-warp-like`'s (see
//! `samples::health`); `--debug-endpoints` adds `/block`, `/grow` and `/drip`. This is the smallest complete program: copy it and replace
//! `app`.
//!
//! Socket-activated (a `.socket` unit with `FileDescriptorName=http`, or
//! `systemd-socket-activate`), it serves on the passed socket instead of binding `-p`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::{Router, body::Body, routing::get};
use clap::Parser;
use prefork_core::{
    InheritedListener, ListenerKind, Readiness, ReuseportGroup, Spawner, WorkerContext, WorkerSet,
    default_main, relaunch_settings,
};
use samples::debug;
use samples::health::HealthArgs;
use serde::{Deserialize, Serialize};

/// An axum app in a master and WORKERS workers sharing one listening socket.
#[derive(Debug, Parser)]
#[command(name = "sample-axum", version)]
struct Cli {
    /// TCP port to listen on, on 127.0.0.1 (0: any free port, shown on stderr).
    #[arg(short, long, default_value_t = 3000)]
    port: u16,
    /// Number of worker processes (at start: TTIN, TTOU and `prefork-ctl scale` change it).
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// One SO_REUSEPORT socket per worker id instead of one shared socket.
    #[arg(long)]
    reuseport: bool,
    /// Serve the control socket at PATH (for `prefork-ctl -s PATH`).
    #[arg(long, value_name = "PATH")]
    control: Option<std::path::PathBuf>,
    /// Write the status as JSON to PATH whenever it changes.
    #[arg(long, value_name = "PATH")]
    status_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    health: HealthArgs,
}

/// One worker: `ps` shows `sample-axum id=2`.
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(fd)]
    listener: Option<InheritedListener>,
}

/// The application, with the debug endpoints if asked.
fn app(id: u32, debug_endpoints: bool) -> Router {
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/id", get(move || async move { format!("{id}\n") }))
        .route("/stream", get(stream));
    if !debug_endpoints {
        return app;
    }
    // `block` blocks the runtime thread that runs it, on purpose.
    app.route(
        "/block",
        get(|RawQuery(q): RawQuery| async move { debug::block(q.as_deref()) }),
    )
    .route(
        "/grow",
        get(|RawQuery(q): RawQuery| async move { debug::grow(q.as_deref()) }),
    )
    .route(
        "/drip",
        get(|RawQuery(q): RawQuery| async move {
            use futures_util::StreamExt;
            let chunks = debug::drip(debug::drip_chunks(q.as_deref()));
            Body::from_stream(chunks.map(Ok::<_, Infallible>))
        }),
    )
}

/// Three chunks, 50 ms apart.
async fn stream() -> Body {
    let chunks = futures_util::stream::unfold(0, |i| async move {
        if i == 3 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some((Ok::<_, Infallible>(format!("chunk {i}\n")), i + 1))
    });
    Body::from_stream(chunks)
}

fn main() {
    // The master's argv in both processes: a worker's own argv (`id=0`) is for `ps`.
    let Cli {
        port,
        workers,
        reuseport,
        control,
        status_file,
        health,
    } = Cli::parse_from(prefork_core::args());
    samples::init_tracing();

    // The desired workers, at start, on every SIGHUP, and on every scale change (the scale
    // starts at WORKERS).
    let update = move |set: &mut WorkerSet<Worker>| {
        let n = set.scale().unwrap_or(workers);
        set.set((0..n).map(|id| Worker { id, listener: None }));
        Some(())
    };
    // The socket is bound once, in the master, and inherited by every worker (or, with
    // --reuseport, each id's own socket is made once and inherited by each worker of the id).
    let mut shared: Option<InheritedListener> = None;
    let mut group: Option<ReuseportGroup> = None;
    let fork = move |w: &Worker, spawner: &Spawner| -> prefork_core::Result<_> {
        let listener = if reuseport {
            let g = match &group {
                Some(g) => g,
                None => {
                    let g = ReuseportGroup::bind_tcp(("127.0.0.1", port))?;
                    announce(g.local_addr());
                    group.insert(g)
                }
            };
            g.listener(u64::from(w.id))?
        } else {
            match &shared {
                Some(l) => l.clone(),
                None => {
                    // The socket systemd passed, if it passed one; else a new one.
                    let l = match InheritedListener::from_systemd("http", ListenerKind::Tcp)? {
                        Some(l) => l,
                        None => InheritedListener::bind_tcp(("127.0.0.1", port))?,
                    };
                    announce(l.local_addr()?);
                    shared.insert(l).clone()
                }
            }
        };
        spawner.fork_worker_process(&Worker {
            listener: Some(listener),
            ..w.clone()
        })
    };
    // A new worker takes over once prefork_http::serve says it accepts.
    let mut settings = health
        .apply(relaunch_settings(update, fork))
        .readiness(Readiness::Explicit)
        .scale(workers)
        .scale_bounds(1, 1024);
    if let Some(path) = control {
        settings = settings.control_socket(path);
    }
    if let Some(path) = status_file {
        settings = settings.status_file(path);
    }
    default_main(settings, move |w: Worker| {
        let app = app(w.id, health.debug_endpoints);
        prefork_http::serve(w.listener, app, prefork_http::Options::default())
    })
}

fn announce(addr: std::net::SocketAddr) {
    samples::say(&format!("sample-axum: listening on http://{addr}"));
}
