//! `sample-warp-like`: haskell-prefork's `prefork-sample-warp`, ported to tokio and hyper.
//!
//! ```text
//! sample-warp-like -p PORT -w WORKERS [--threads N] [--drain-grace SECS] [--drain-timeout SECS]
//!                  [--stop-signal SIG] [--host ADDR] [--shutdown-delay SECS] [--fdstore]
//!                  [--user NAME] [--group NAME] [--hang-timeout SECS] [--max-requests N]
//!                  [--max-requests-jitter N] [--max-age SECS] [--max-memory-mb N]
//!                  [--debug-endpoints] [--no-scoreboard]
//!                  [--control PATH] [--status-file PATH]
//! ```
//!
//! The master binds `127.0.0.1:PORT` (`--host` for another address) once (lazily, in the `fork`
//! callback, as the Haskell sample did) and keeps `WORKERS` workers, `id=0` … `id=WORKERS-1`,
//! each a multi-threaded tokio runtime serving HTTP/1.1 on the inherited socket: `GET /` answers
//! `hello`, anything else 404.
//!
//! Under systemd (see `deploy/`):
//!
//! * socket-activated (a `.socket` unit, or `systemd-socket-activate`), it serves on the passed
//!   socket named `http` (or the only one passed, if it has no name of its own) instead of
//!   binding `-p`;
//! * with `--fdstore` it hands the socket it bound to systemd's fd store under the name `http`,
//!   and a restarted master adopts it from there: `systemctl restart` refuses no connection;
//! * it tells systemd when its workers are ready, reloading and stopping (the library does,
//!   whenever `NOTIFY_SOCKET` is set).
//!
//! `--shutdown-delay SECS` keeps serving that long after `SIGTERM` before draining (a lame duck,
//! for load balancers and Kubernetes). `--user` and `--group` run the workers under another
//! identity: started as root, the master binds a privileged port and the workers do not keep
//! root.
//!
//! * `kill <worker>`: that id comes back with a new pid, the others are untouched.
//! * `kill -HUP <master>`: every worker is replaced; each new one says it is ready (explicit
//!   readiness, once its accept loop runs) before its predecessor is told to stop, and the old
//!   one drains, so a reload drops no request.
//! * `kill -TERM <master>`: every worker drains and exits, then the master exits 0.
//! * `kill -TTIN <master>` / `kill -TTOU <master>`: one worker more (id `WORKERS`, …) or one
//!   fewer (the highest id drains and exits); a reload keeps the new number.
//! * `--control PATH`: `prefork-ctl -s PATH status | reload | scale N | replace ID | stop |
//!   metrics`.
//! * `--hang-timeout 2 --threads 1 --debug-endpoints`, then `curl localhost:PORT/block?ms=600000`:
//!   the worker stops beating; about two seconds later the master starts its replacement, sends
//!   it `SIGABRT`, and logs one `worker hung` line. `--max-requests`, `--max-age` and
//!   `--max-memory-mb` (try `/grow?mb=100`) recycle a worker readiness-gated, one at a time.
//!
//! A stopping worker drops its listener, then drains its keep-alive connections without the
//! keep-alive race, within `--drain-grace` and `--drain-timeout`: `prefork_http::serve` does
//! the serving and the drain; the application is [`samples::warp::App`].

use std::io::Write as _;
use std::time::Duration;

use clap::Parser;
use prefork_core::{
    InheritedListener, ListenerKind, Pid, Readiness, RuntimeOptions, Signal, Spawner,
    WorkerContext, WorkerSet, default_main, relaunch_settings,
};
use prefork_http::Options;
use samples::health::HealthArgs;
use samples::warp::{App, DebugApp};
use serde::{Deserialize, Serialize};

/// The longest drain the flags accept: a day.
const MAX_DRAIN_SECS: u64 = 86_400;

/// A preforking HTTP server: a master and WORKERS workers sharing one listening socket.
#[derive(Debug, Parser)]
#[command(name = "sample-warp-like", version)]
struct Cli {
    /// TCP port to listen on (0: any free port, shown on stderr).
    #[arg(short, long, default_value_t = 11111)]
    port: u16,
    /// Address to listen on (0.0.0.0 in a container).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Number of worker processes.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// Runtime threads per worker (default: WORKERS, as the Haskell sample's `-N`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Seconds a stopping worker leaves a silent keep-alive connection open before closing it.
    #[arg(long, value_name = "SECS", default_value_t = Options::DEFAULT_DRAIN_GRACE.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=MAX_DRAIN_SECS))]
    drain_grace: u64,
    /// Seconds a stopping worker may drain in all before it exits anyway.
    #[arg(long, value_name = "SECS", default_value_t = Options::DEFAULT_DRAIN_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=MAX_DRAIN_SECS))]
    drain_timeout: u64,
    /// The signal that asks a worker to stop and drain (TERM, USR1, QUIT, …).
    #[arg(long, value_name = "SIG", default_value = "TERM")]
    stop_signal: Signal,
    /// Serve the control socket at PATH (for `prefork-ctl -s PATH`).
    #[arg(long, value_name = "PATH")]
    control: Option<std::path::PathBuf>,
    /// Write the status as JSON to PATH whenever it changes.
    #[arg(long, value_name = "PATH")]
    status_file: Option<std::path::PathBuf>,
    /// Seconds the workers keep serving new connections after SIGTERM before they drain.
    #[arg(long, value_name = "SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_DRAIN_SECS))]
    shutdown_delay: u64,
    /// Hand the bound socket to systemd's fd store (FDSTORE=1, FDNAME=http).
    #[arg(long)]
    fdstore: bool,
    /// Run the workers as this user (name or uid); the master needs to be root.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Run the workers with this group (name or gid).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    #[command(flatten)]
    health: HealthArgs,
}

/// The socket's name in systemd's world (`FileDescriptorName=`, `FDNAME=`).
const SOCKET_NAME: &str = "http";

/// One worker: `ps` shows `sample-warp-like id=2 +RTS -N5 -RTS`.
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[prefork(runtime_options = identity)]
struct Worker {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(fd)]
    listener: Option<InheritedListener>,
    #[prefork(threads)]
    cap: usize,
    /// `--user`, `--group`.
    user: Option<String>,
    group: Option<String>,
}

/// The worker's identity, as runtime options.
fn identity(w: &Worker) -> RuntimeOptions {
    let mut o = RuntimeOptions::default();
    if let Some(u) = &w.user {
        o = o.user(u);
    }
    if let Some(g) = &w.group {
        o = o.group(g);
    }
    o
}

fn main() {
    // `args()` is the master's argv in both processes: a worker's own argv (`id=0 +RTS -N5
    // -RTS`) is for `ps`, not for clap.
    let cli = Cli::parse_from(prefork_core::args());
    samples::init_tracing();
    let (host, port) = (cli.host, cli.port);
    let workers = cli.workers;
    let cap = cli.threads.unwrap_or(workers) as usize;
    let drain_timeout = Duration::from_secs(cli.drain_timeout);
    let options = Options::default()
        .drain_grace(Duration::from_secs(cli.drain_grace))
        .drain_timeout(drain_timeout);

    let (user, group, fdstore) = (cli.user.clone(), cli.group.clone(), cli.fdstore);
    // The scale starts at WORKERS; TTIN/TTOU and `prefork-ctl scale` change it, and a reload
    // keeps it.
    let update = move |set: &mut WorkerSet<Worker>| {
        let n = set.scale().unwrap_or(workers);
        set.set((0..n).map(|id| Worker {
            id,
            listener: None,
            cap,
            user: user.clone(),
            group: group.clone(),
        }));
        Some(())
    };
    // The socket is made once, on the first fork, and kept here for every later one.
    let mut shared: Option<InheritedListener> = None;
    let fork = move |w: &Worker, spawner: &Spawner| -> prefork_core::Result<Pid> {
        let listener = match &shared {
            Some(l) => l.clone(),
            None => shared.insert(open_listener((host, port), fdstore)?).clone(),
        };
        spawner.fork_worker_process(&Worker {
            listener: Some(listener),
            ..w.clone()
        })
    };
    let debug = cli.health.debug_endpoints;
    let mut settings = cli
        .health
        .apply(relaunch_settings(update, fork))
        .readiness(Readiness::Explicit)
        .scale(workers)
        .scale_bounds(1, 1024)
        .shutdown_delay(Duration::from_secs(cli.shutdown_delay))
        .stop_signal(cli.stop_signal)
        .ready_timeout(Duration::from_secs(20))
        // Longer than a worker's own drain deadline, so it exits by itself.
        .stop_timeout(drain_timeout.saturating_add(Duration::from_secs(5)))
        .shutdown_timeout(drain_timeout.saturating_add(Duration::from_secs(5)));
    if let Some(path) = &cli.control {
        settings = settings.control_socket(path);
    }
    if let Some(path) = &cli.status_file {
        settings = settings.status_file(path);
    }
    default_main(settings, move |w: Worker| {
        // The worker's logs carry its id; prefork_http::serve logs `serving` once it accepts
        // (and has told the master it is ready), then `stop requested: draining`, `drained`.
        let _span = tracing::info_span!("worker", id = w.id).entered();
        if debug {
            prefork_http::serve(w.listener, DebugApp, options.clone())
        } else {
            prefork_http::serve(w.listener, App, options.clone())
        }
    })
}

/// The socket systemd passed (socket activation, or the fd store of a previous master), or a
/// new one on `addr`, handed to the fd store with `--fdstore`.
fn open_listener(
    addr: (std::net::IpAddr, u16),
    fdstore: bool,
) -> prefork_core::Result<InheritedListener> {
    // Not eprintln!: it panics when stderr is a full disk or a closed pipe.
    if let Some(l) = InheritedListener::from_systemd(SOCKET_NAME, ListenerKind::Tcp)? {
        let _ = writeln!(
            std::io::stderr(),
            "sample-warp-like: adopted the socket systemd passed; listening on http://{}",
            l.local_addr()?
        );
        return Ok(l);
    }
    let l = InheritedListener::bind_tcp(addr)?;
    let _ = writeln!(
        std::io::stderr(),
        "sample-warp-like: listening on http://{}",
        l.local_addr()?
    );
    if fdstore {
        l.store_in_systemd(SOCKET_NAME)?;
    }
    Ok(l)
}
