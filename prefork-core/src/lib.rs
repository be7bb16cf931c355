//! # prefork: a master that keeps a declared set of worker processes alive
//!
//! A preforking server runs one *master* process that owns the listening sockets and starts
//! *workers*, each a fresh execution of the same program that inherits the sockets and serves.
//! The master relaunches workers that die, reloads them all on `SIGHUP` without dropping a
//! request, and stops them on `SIGTERM`. This crate is a port of the Haskell library
//! haskell-prefork, with typed worker contexts and a declarative worker set.
//!
//! # The whole program
//!
//! ```no_run
//! use prefork_core::{default_main, relaunch_settings, InheritedListener, Spawner,
//!                    WorkerContext, WorkerSet};
//! use serde::{Deserialize, Serialize};
//! use std::io::Write;
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
//!     let mut shared: Option<InheritedListener> = None;
//!     // update: the desired set. Called at start and on every SIGHUP.
//!     let update = |set: &mut WorkerSet<Worker>| {
//!         set.set((0..4).map(|id| Worker { id, listener: None }));
//!         Some(())
//!     };
//!     // fork: start one worker. The socket is made once, in the master, and inherited.
//!     let fork = move |w: &Worker, spawner: &Spawner| -> prefork_core::Result<_> {
//!         let l = match &shared {
//!             Some(l) => l.clone(),
//!             None => shared.insert(InheritedListener::bind_tcp("127.0.0.1:3000")?).clone(),
//!         };
//!         spawner.fork_worker_process(&Worker { listener: Some(l), ..w.clone() })
//!     };
//!     default_main(relaunch_settings(update, fork), |w: Worker| -> std::io::Result<()> {
//!         let listener = w.listener.ok_or_else(|| std::io::Error::other("no listener"))?;
//!         let listener = listener.into_tcp().map_err(std::io::Error::other)?;
//!         // The master made the shared socket non-blocking (async runtimes need it); this
//!         // plain loop wants blocking accepts. The flag is the shared socket's: a worker must
//!         // not change it, so it waits for readiness with poll instead.
//!         loop {
//!             match listener.accept() {
//!                 Ok((mut conn, _)) => conn.write_all(b"hello\n")?,
//!                 Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
//!                     std::thread::sleep(std::time::Duration::from_millis(5))
//!                 }
//!                 Err(e) => return Err(e),
//!             }
//!         }
//!     })
//! }
//! ```
//!
//! `ps` then shows the master and `prog id=0` … `prog id=3`. `kill` one and the same id comes
//! back; `kill -HUP` the master and all four are replaced, each new one taking over when it is
//! ready; `kill -TERM` the master and everything stops.
//!
//! # The pieces
//!
//! * [`WorkerContext`] (usually derived) is what a worker *is*: an [`id`](WorkerContext::id) the
//!   master diffs by, argv for `ps`, [`RuntimeOptions`] (threads, CPU affinity, nice, rlimits,
//!   environment) and the sockets it inherits ([`InheritedListener`]): one shared by every
//!   worker, or each id's own socket of a [`ReuseportGroup`] (`SO_REUSEPORT`, steered by the
//!   master; balanced, and lossless on reload and on removal of an id: see [`reuseport`]).
//! * [`relaunch_settings`] turns an `update` callback (fills a [`WorkerSet`]) and a `fork`
//!   callback (calls [`Spawner::fork_worker_process`] on the [`Spawner`] the master hands it)
//!   into [`Settings`]; [`default_settings`] is the bare hook set of haskell-prefork. Both take
//!   builder-style setters for every hook and knob.
//! * **Code before `default_main` runs again in every worker**: a worker is a fresh execution
//!   of the same program. That is why the listener is bound lazily, in the `fork` callback
//!   (which runs only in the master), and why `default_main` should come first in `main`.
//! * [`default_main`] decides master or worker. In the master it runs the supervisor; in a
//!   worker it decodes the context and calls your worker function.
//! * [`worker`] is the worker's side: [`worker::ready`], [`worker::stop_signal`],
//!   [`worker::threads`]; [`args`] gives the master's argv to a CLI parser in either process.
//! * [`scoreboard`]: a shared-memory slot per worker for its heartbeats and request counts
//!   ([`worker::heartbeat`], [`worker::request_guard`]), which the master reads to replace a
//!   hung worker ([`Settings::hang_timeout`]) and to recycle one by request count, age or
//!   memory ([`Settings::max_requests`], [`Settings::max_age`], [`Settings::max_memory`]),
//!   readiness-gated.
//! * [`log`]: a log writer that never blocks and never panics, and the default subscriber
//!   that [`default_main`] installs when the program set none.
//! * [`systemd`]: readiness, reload and stop notifications, the watchdog, socket activation
//!   ([`InheritedListener::from_systemd`]) and the fd store
//!   ([`InheritedListener::store_in_systemd`]); all no-ops unless systemd asked for them.
//!
//! # The process model
//!
//! * **Fork, then exec, always.** A worker is a new execution of the program the master was
//!   started from (`argv[0]`, made absolute at start), never a bare `fork` of the master: the
//!   master may have threads, and a fresh image is what makes a code upgrade by `SIGHUP` work.
//!   The master itself keeps running its old code until it is upgraded in place (`SIGUSR2`,
//!   below).
//! * **The context travels on standard input**, as one JSON header line and the encoded
//!   context; the marker variable `PREFORK_WORKER=master:<pid>` says "you are a worker" and is
//!   removed before user code runs (see [`protocol`]).
//! * **Exactly the declared fds are inherited**, at 3, 4, … (see [`fd`]), then the readiness
//!   socket and the scoreboard; everything else stays close-on-exec. Between fork and exec the
//!   child runs only async-signal-safe system calls: no allocation, no locks, no logging (see
//!   the `spawn` module's source).
//! * **Workers die with the master**: `PR_SET_PDEATHSIG(SIGKILL)`, with the race (the master
//!   died before the `prctl`) closed by a `getppid` check. Signal dispositions and the mask are
//!   reset in the child, and `SIGHUP` is ignored (a terminal hang-up must not kill workers).
//! * **Workers share the master's stdout and stderr**; there is no relay.
//! * **Workers stay in the master's process group**, as with nginx: a Ctrl-C in a terminal
//!   reaches them all at once, and the master forwards it too.
//!
//! # Single-process mode
//!
//! `PREFORK_SINGLE=1 prog …` runs the worker function in the calling process, on the first
//! context of the declared set, with no master and no child: the `fork` callback runs as
//! usual, but its [`Spawner`] keeps the context (and a copy of each socket) instead of starting
//! a process. The worker function gets the same context, the same stop signal
//! ([`worker::stop_signal`]) and the same readiness calls as in a worker, so it can be tested
//! and debugged in one process, under a debugger (Parallel::Prefork's point: the worker code
//! does not depend on the process manager). The process exits with the worker function's status;
//! the master's hooks do not run. [`worker::single_process`] tells the worker function where it
//! runs. See [`protocol::SINGLE_ENV`].
//!
//! # Signals
//!
//! | signal | the master |
//! |---|---|
//! | `HUP`  | calls `update` again; stops ids that left, spawns new ones, replaces the others (each new worker takes over once ready) |
//! | `TERM` | graceful stop: `on_terminate` (default: the stop signal, `TERM` unless set, to workers), waits `shutdown_timeout`, `SIGKILL`s the rest, `on_finish`, exits 0 |
//! | `INT`  | as `TERM`, with `on_interrupt` (default: `INT` to workers) |
//! | `QUIT` | calls `on_quit` and keeps running (nginx and unicorn mean "graceful stop" by it; here `TERM` does that) |
//! | `CHLD` | reaps every exited child, respawns what is desired |
//! | a second `TERM`/`INT` | `SIGKILL` to every worker at once |
//! | `TTIN`, `TTOU` | scale up or down by one, with [`Settings::scale`] (see below); logged and ignored without it |
//! | `USR2` | upgrades the master in place (below); unless [`Settings::forward_signal`] forwards it |
//! | `USR1`, `ALRM`, real-time, … | logged and ignored: never fatal (see the master's `signals` module) |
//! | one named by [`Settings::forward_signal`] | passed on to every live worker |
//!
//! # Seeing and steering a running master
//!
//! [`Settings::control_socket`] makes the master listen on a Unix socket (owner-only) for
//! `status`, `reload` (answered when the reload finished, with its outcome), `scale`, `replace`,
//! `stop`, `upgrade` and `metrics` (Prometheus text); [`control`] has the protocol and a client, and the
//! `prefork-ctl` program is that client on a command line. Every answer is a view of one status
//! model, [`status::Status`], which [`Settings::status_file`] also writes to a file whenever it
//! changes. [`Settings::scale`] makes the number of workers a runtime input of `update`
//! ([`WorkerSet::scale`]): `TTIN`/`TTOU` and `scale` change it, only the ids that join or leave
//! start or stop, and a reload keeps it.
//!
//! # Upgrading the master in place
//!
//! `SIGHUP` deploys new code to the workers; `SIGUSR2` (or `prefork-ctl upgrade`, which
//! answers when it has ended) deploys it to the master too, **with the same pid**, so a
//! service manager never loses track of it and no connection is refused:
//!
//! 1. the binary now at the program path is run as a child in a check mode: it must reach
//!    [`default_main`] with settings its master would accept, and decode the master's state
//!    with its own context type within
//!    [`Settings::upgrade_check_timeout`] (10 s), or the upgrade is refused and nothing
//!    changes;
//! 2. the master writes its state (workers, sockets, counters) to a sealed memfd, keeps exactly
//!    the fds the new code needs open, blocks every signal, and execs the new binary in place;
//! 3. the new image adopts the running workers (still its children, still serving), respawns
//!    any that died during the exec, and replaces every worker, readiness-gated, as on
//!    `SIGHUP`; the listening sockets are the same sockets ([`InheritedListener::bind_tcp`],
//!    [`bind_unix`](InheritedListener::bind_unix) and [`ReuseportGroup::bind_tcp`] return
//!    what was handed over on that address);
//! 4. if the new image cannot adopt the state (a context it cannot decode, no configuration
//!    from `update`), it execs the old binary again, which takes its workers back (nothing
//!    handed over is closed before the adoption has succeeded).
//!
//! A signal sent meanwhile is not lost: `SIGHUP` during the check is acted on after the
//! upgrade, `SIGTERM` calls the check off and stops. An upgrade asked for while a start,
//! reload or scale settles waits for it. Under systemd (`Type=notify-reload`) the
//! master says `RELOADING=1` when the upgrade starts and `READY=1` when it has ended, and
//! `MAINPID` never changes. A context type may gain fields with `#[serde(default)]`; a field
//! the old master's contexts lack without a default fails the check. A
//! [`ReuseportGroup`] crosses whole ([`ReuseportGroup::bind_tcp`] returns the handed-over
//! group of that address). The hand-over document has a version; a master reads its own
//! version and older ones.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `derive` | yes | `#[derive(WorkerContext)]` |
//! | `tokio` | no | async workers: [`worker::stopped`] (the stop signal as a future), [`worker::runtime`], `default_main_async` |
//!
//! # Errors
//!
//! Library calls return [`Error`], one enum; each variant's message says what failed and its
//! [`source`](std::error::Error::source) says why. [`default_main`] prints a master error as
//! `prefork: <message>: <cause>` ([`Error::report`]) and exits 1; a worker whose context cannot
//! be read or whose sockets are not what the context says prints one line and exits 1.
//!
//! # Limits
//!
//! Linux only (`PR_SET_PDEATHSIG`, `/proc`). The context must fit in a pipe (1 MiB by default).

#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]
// Raw system calls live in `sys` and in the spawner's child code, each with its safety
// argument; everything else is safe Rust.
#![deny(unsafe_code)]

pub mod context;
pub mod control;
mod error;
pub mod fd;
mod launch;
pub mod log;
mod master;
mod process;
pub mod protocol;
pub mod readiness;
mod report;
pub mod reuseport;
pub mod scoreboard;
mod settings;
mod single;
mod spawn;
pub mod status;
mod sys;
pub mod systemd;
mod upgrade;
pub mod worker;

pub use context::{Rlimit, RlimitResource, RuntimeOptions, WorkerContext, WorkerSet};
pub use error::{Error, Report, Result};
pub use fd::{InheritedListener, ListenerKind, VisitFds};
pub use master::run_master;
pub use process::{ChildExit, Pid, Signal, UnknownSignal};
pub use readiness::Readiness;
pub use report::{ExitReason, ReloadOutcome, ReloadReport, ReplaceReason, WorkerEnded};
pub use reuseport::ReuseportGroup;
pub use settings::{
    DEFAULT_SPARE_IDLE_TIMEOUT, DEFAULT_SPARE_INTERVAL, Settings, default_settings,
    relaunch_settings,
};
pub use spawn::{FIRST_INHERITED_FD, Spawner};
pub use systemd::Systemd;
pub use worker::{WorkerExit, args, is_worker};

/// `#[derive(WorkerContext)]`: see [`WorkerContext`] for the attributes.
#[cfg(feature = "derive")]
pub use prefork_macros::WorkerContext;

/// Runs the program as a master or as a worker, and never returns.
///
/// In a worker (started by a master), it decodes the context, applies what must be applied,
/// reports readiness if it is implicit, calls `worker_fn` and exits with its status (see
/// [`WorkerExit`]). A context that cannot be read ends the worker with one line on stderr and
/// status 1.
///
/// In the master, it runs [`run_master`] with `settings` and exits 0 when the master stopped
/// cleanly, or prints `prefork: <error>` and exits 1.
///
/// With [`PREFORK_SINGLE=1`](protocol::SINGLE_ENV) in the environment (and not in a worker), it
/// runs the first worker in this process instead, with no master (see the crate docs).
///
/// In both, unless the program already installed a `tracing` subscriber, it installs the
/// library's default ([`log::init_default`]: `RUST_LOG` filtering, lines that never block and
/// say which process wrote them).
///
/// Call it first thing in `main` (before starting threads): it may remove the worker marker from
/// the environment. Everything before it runs in every worker too.
pub fn default_main<C, W, F, R>(settings: Settings<C, W>, worker_fn: F) -> !
where
    C: 'static,
    W: WorkerContext,
    F: FnOnce(W) -> R,
    R: WorkerExit,
{
    log::init_default();
    // The check of an upgrade in place runs this binary with the state on standard input:
    // it answers and exits here, before anything of the master or a worker starts.
    upgrade::check_if_asked::<W>(|| {
        master::validate(&settings).map_err(|e| e.report().to_string())
    });
    match worker::role() {
        worker::Role::Worker(boot) => worker::run::<W, F, R>(boot, worker_fn),
        worker::Role::BadWorker(e) => worker::fail_boot(e),
        worker::Role::Master => {}
    }
    if single::requested() {
        single::run(settings, worker_fn)
    }
    log::set_label(format!("master {}", std::process::id()));
    let code = match run_master(settings) {
        Ok(()) => 0,
        Err(e) => {
            log::emergency_line(&format!("prefork: {}", e.report()));
            1
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// [`default_main`] for an `async` worker function: in a worker, it runs `worker_fn` on a tokio
/// runtime sized from the context's thread count ([`worker::runtime`]); pair it with
/// [`worker::stopped`] to learn when to stop.
///
/// ```no_run
/// use prefork_core::{default_main_async, relaunch_settings, Spawner, WorkerContext, WorkerSet};
/// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, WorkerContext)]
/// # struct Worker { #[prefork(id)] id: u32 }
/// fn main() {
///     let settings = relaunch_settings(
///         |set: &mut WorkerSet<Worker>| { set.set((0..2).map(|id| Worker { id })); Some(()) },
///         |w: &Worker, spawner: &Spawner| spawner.fork_worker_process(w),
///     );
///     default_main_async(settings, |w: Worker| async move {
///         prefork_core::worker::stopped().await?;
///         println!("worker {} stops", w.id);
///         Ok::<(), prefork_core::Error>(())
///     })
/// }
/// ```
#[cfg(feature = "tokio")]
pub fn default_main_async<C, W, F, Fut, R>(settings: Settings<C, W>, worker_fn: F) -> !
where
    C: 'static,
    W: WorkerContext,
    F: FnOnce(W) -> Fut,
    Fut: std::future::Future<Output = R>,
    R: WorkerExit,
{
    default_main(
        settings,
        move |w: W| -> std::result::Result<R, std::io::Error> {
            let rt = worker::runtime()?;
            Ok(rt.block_on(worker_fn(w)))
        },
    )
}
