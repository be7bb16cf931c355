//! `sample-warp-like`: haskell-prefork's `prefork-sample-warp`, ported to tokio and hyper.
//!
//! ```text
//! sample-warp-like -p PORT -w WORKERS [--threads N] [--drain-grace SECS] [--drain-timeout SECS]
//!                  [--stop-signal SIG] [--host ADDR] [--shutdown-delay SECS] [--fdstore]
//!                  [--user NAME] [--group NAME] [--hang-timeout SECS] [--max-requests N]
//!                  [--max-requests-jitter N] [--max-age SECS] [--max-memory-mb N]
//!                  [--debug-endpoints] [--no-scoreboard]
//!                  [--control PATH] [--status-file PATH]
//!                  [--reuseport [--no-steering]] [--workers-file PATH]
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
//!
//! * `--reuseport`: each worker id gets a socket of its own (a `ReuseportGroup`), so the kernel
//!   spreads connections evenly over the workers; a reload still loses nothing (an id's old and
//!   new worker share its socket), and so does a smaller set (the master steers new connections
//!   away from a removed id's socket, and its worker empties the queue before it exits).
//! * `--workers-file PATH`: the number of workers is read from PATH at start and on every
//!   `SIGHUP` (instead of `-w`), so `echo 2 > PATH; kill -HUP <master>` scales down.
//! * Runtime threads: `--threads N` gives each worker N. Without it `ps` still shows `-N` as the
//!   worker count (the Haskell sample's `+RTS -N5 -RTS` for `-w 5`), but the runtime gets the
//!   worker's share of the CPUs, `max(1, CPUs / WORKERS)` and at most N: more threads than
//!   cores only cost context switches (BENCHMARKS.md, section 10).

use std::time::Duration;

use clap::Parser;
use prefork_core::{
    InheritedListener, ListenerKind, Pid, Readiness, ReuseportGroup, RuntimeOptions, Signal,
    Spawner, WorkerContext, WorkerSet, default_main, relaunch_settings,
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
    /// Runtime threads per worker (default: `ps` shows `-N` WORKERS, as the Haskell sample,
    /// and the runtime gets max(1, CPUs / WORKERS) threads, at most WORKERS).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// One SO_REUSEPORT socket per worker id instead of one shared socket.
    #[arg(long)]
    reuseport: bool,
    /// With --reuseport: let the kernel's hash choose the socket instead of the master's
    /// steering program (for measurement; a removed id's queued connections can be reset).
    #[arg(long, requires = "reuseport")]
    no_steering: bool,
    /// Read the number of workers from this file at start and on every SIGHUP.
    #[arg(long, value_name = "PATH")]
    workers_file: Option<std::path::PathBuf>,
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
    let explicit_threads = cli.threads;
    let drain_timeout = Duration::from_secs(cli.drain_timeout);
    let options = Options::default()
        .drain_grace(Duration::from_secs(cli.drain_grace))
        .drain_timeout(drain_timeout);
    let workers_file = cli.workers_file.clone();

    let (user, group, fdstore) = (cli.user.clone(), cli.group.clone(), cli.fdstore);
    // The scale starts at WORKERS; TTIN/TTOU and `prefork-ctl scale` change it, and a reload
    // keeps it.
    let update = move |set: &mut WorkerSet<Worker>| {
        let n = match &workers_file {
            None => set.scale().unwrap_or(workers),
            Some(path) => match read_workers(path) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e,
                        "cannot read the number of workers; keeping the running set");
                    return None;
                }
            },
        };
        // `-N` shows the worker count unless --threads says otherwise (see the module docs).
        let cap = explicit_threads.unwrap_or(n) as usize;
        set.set((0..n).map(|id| Worker {
            id,
            listener: None,
            cap,
            user: user.clone(),
            group: group.clone(),
        }));
        Some(())
    };
    // The socket (or the group of sockets) is made once, on the first fork, and kept here.
    let mut listen = Listen {
        host,
        port,
        fdstore,
        reuseport: cli.reuseport,
        steering: !cli.no_steering,
        shared: None,
        group: None,
    };
    let fork = move |w: &Worker, spawner: &Spawner| -> prefork_core::Result<Pid> {
        let listener = listen.listener(w.id)?;
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
        let threads = match explicit_threads {
            Some(_) => None, // the context's count, as asked
            None => Some(samples::share_of_cpus(w.cap)),
        };
        let options = options.clone().threads(threads);
        if debug {
            prefork_http::serve(w.listener, DebugApp, options)
        } else {
            prefork_http::serve(w.listener, App, options)
        }
    })
}

/// The master's listening socket(s), made on the first fork.
struct Listen {
    host: std::net::IpAddr,
    port: u16,
    fdstore: bool,
    reuseport: bool,
    steering: bool,
    shared: Option<InheritedListener>,
    group: Option<ReuseportGroup>,
}

impl Listen {
    /// The socket worker `id` inherits: the shared one, or the id's own in the group.
    fn listener(&mut self, id: u32) -> prefork_core::Result<InheritedListener> {
        if self.reuseport {
            let group = match &self.group {
                Some(g) => g,
                None => {
                    let g =
                        ReuseportGroup::bind_tcp((self.host, self.port))?.steering(self.steering);
                    announce(g.local_addr());
                    self.group.insert(g)
                }
            };
            return group.listener(u64::from(id));
        }
        Ok(match &self.shared {
            Some(l) => l.clone(),
            None => self
                .shared
                .insert(open_listener((self.host, self.port), self.fdstore)?)
                .clone(),
        })
    }
}

fn announce(addr: std::net::SocketAddr) {
    samples::say(&format!("sample-warp-like: listening on http://{addr}"));
}

/// The worker count in `path`: one number, 1 to 1024.
fn read_workers(path: &std::path::Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("{:?} is not a number from 1 to 1024", text.trim())),
    }
}

/// The socket systemd passed (socket activation, or the fd store of a previous master), or a
/// new one on `addr`, handed to the fd store with `--fdstore`.
fn open_listener(
    addr: (std::net::IpAddr, u16),
    fdstore: bool,
) -> prefork_core::Result<InheritedListener> {
    if let Some(l) = InheritedListener::from_systemd(SOCKET_NAME, ListenerKind::Tcp)? {
        samples::say(&format!(
            "sample-warp-like: adopted the socket systemd passed; listening on http://{}",
            l.local_addr()?
        ));
        return Ok(l);
    }
    let l = InheritedListener::bind_tcp(addr)?;
    samples::say(&format!(
        "sample-warp-like: listening on http://{}",
        l.local_addr()?
    ));
    if fdstore {
        l.store_in_systemd(SOCKET_NAME)?;
    }
    Ok(l)
}
