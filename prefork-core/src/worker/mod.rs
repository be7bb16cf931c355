//! The worker's side: boot, readiness, learning that it should stop.
//!
//! A worker is the same program, started again by the master with the marker environment
//! variable [`PREFORK_WORKER`](crate::protocol::WORKER_ENV) set; its boot (the `boot` module's
//! source says what it checks) hands the decoded context to the worker function.
//!
//! # Readiness and stopping
//!
//! With explicit readiness (see [`Settings::readiness`](crate::Settings::readiness)) the worker
//! calls [`ready`] once it can serve, typically right after its accept loop started. The master
//! replaces an old worker only after its successor said so. To stop a worker, the master sends
//! its stop signal (`SIGTERM` unless [`Settings::stop_signal`](crate::Settings::stop_signal)
//! says otherwise); a worker that wants to drain instead of dying calls [`stop_signal`] early,
//! which installs a handler for exactly that signal (and `SIGINT`), and then waits on it or
//! polls it.
//!
//! # Health
//!
//! A worker that can hang calls [`heartbeat`] from its serving loop every
//! [`heartbeat_interval`], and counts requests with [`request_guard`]; the master reads both
//! from the scoreboard, replaces a worker that stopped beating
//! ([`Settings::hang_timeout`](crate::Settings::hang_timeout)) and recycles one that served
//! its budget ([`Settings::max_requests`](crate::Settings::max_requests)). `prefork_http`
//! does both.
//!
//! A worker ignores `SIGHUP` (set before its exec): a terminal hang-up or a `kill -HUP` to the
//! process group reaches every worker, and must not kill them. A program that wants `SIGHUP`
//! in its workers installs its own handler.

mod boot;
mod health;
mod stop;

use std::io;
use std::sync::atomic::Ordering;

use crate::readiness::Readiness;

pub(crate) use boot::{Boot, Role, role};
pub use health::{RequestGuard, heartbeat, heartbeat_interval, request_guard};
#[cfg(feature = "tokio")]
pub use stop::stopped;
pub use stop::{StopSignal, configured_stop_signal, stop_signal};

static WORKER_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Single-process mode's stand-in for the boot header.
#[derive(Debug)]
pub(crate) struct Single {
    pub stop_signal: crate::process::Signal,
    pub readiness: Readiness,
    pub threads: Option<usize>,
    pub fds: Vec<i32>,
}

static SINGLE: std::sync::OnceLock<Single> = std::sync::OnceLock::new();

/// Single-process mode's settings, once the worker function is about to run in it.
pub(crate) fn single() -> Option<&'static Single> {
    SINGLE.get()
}

/// True when this process runs its worker function in single-process mode
/// ([`PREFORK_SINGLE`](crate::protocol::SINGLE_ENV)): there is no master, [`is_worker`] is
/// false, [`ready`] tells nobody, and [`stop_signal`] handles the configured stop signal as in
/// a worker.
pub fn single_process() -> bool {
    SINGLE.get().is_some()
}

/// This worker's id, as its context's `id()` renders with `{:?}` (`3`, `"fetch"`); `None` in
/// the master, or before `default_main` decoded the context. Handy in log fields deep in the
/// code, where the context is not at hand.
pub fn id() -> Option<&'static str> {
    WORKER_ID.get().map(String::as_str)
}

/// True in a worker process.
pub fn is_worker() -> bool {
    !matches!(role(), Role::Master)
}

/// Reports to the master that this worker is ready to serve. Idempotent; a no-op outside a
/// worker.
///
/// With implicit readiness the library calls it when the worker function is entered.
pub fn ready() {
    let Some(b) = boot::booted() else { return };
    if b.readied.swap(true, Ordering::AcqRel) {
        return;
    }
    if let Some(s) = crate::scoreboard::slot() {
        s.set_state(crate::scoreboard::SlotState::Ready);
    }
    if let Some(fd) = &b.readiness {
        use std::os::fd::AsFd;
        if let Err(e) = crate::readiness::report(fd.as_fd()) {
            tracing::warn!(error = %e, "cannot report readiness to the master");
        }
    }
}

/// The readiness mode the master asked for.
pub fn readiness() -> Readiness {
    boot::booted()
        .map(|b| b.header.readiness)
        .or_else(|| single().map(|s| s.readiness))
        .unwrap_or_default()
}

/// The master's reload generation this worker was started in (0 at start, +1 per reload).
pub fn generation() -> u64 {
    boot::booted().map(|b| b.header.generation).unwrap_or(0)
}

/// The thread count from the context's runtime options, if it set one.
pub fn threads() -> Option<usize> {
    match boot::booted() {
        Some(b) => b.header.threads,
        None => single().and_then(|s| s.threads),
    }
}

/// The fd numbers of the sockets this worker inherited.
///
/// In single-process mode: the numbers of this process's copies of the declared sockets.
pub fn inherited_fds() -> Vec<i32> {
    match boot::booted() {
        Some(b) => b.header.fds.iter().map(|(fd, _)| *fd).collect(),
        None => single().map(|s| s.fds.clone()).unwrap_or_default(),
    }
}

/// Whether inherited fd `fd` is this worker id's own listening socket (a
/// [`ReuseportGroup`](crate::ReuseportGroup)'s, which the worker's successor inherits too),
/// rather than one shared by every worker. The boot header says so.
///
/// A draining worker drops a shared socket at once (its siblings accept what is queued), but
/// keeps accepting on its own socket until the queue stayed empty for a moment: when its id
/// was removed, no other worker will ever accept what is queued there. `false` outside a
/// worker.
pub fn is_per_worker_socket(fd: i32) -> bool {
    crate::fd::is_per_worker_fd(fd)
}

/// The master's command-line arguments (without the program name) in a worker, this process's
/// own elsewhere.
///
/// A worker's argv carries its context's args (`id=0 +RTS -N5 -RTS`) for `ps` to show, which a
/// CLI parser would reject; parse `args()` instead and master and workers agree:
///
/// ```no_run
/// // With clap: `let cli = Cli::parse_from(prefork_core::args());`
/// let argv: Vec<String> = prefork_core::args();
/// assert!(!argv.is_empty());
/// ```
///
/// The first element is the program name, as `clap` expects. In a worker whose context cannot
/// be read this prints the one-line error and exits with status 1.
pub fn args() -> Vec<String> {
    let launch = crate::launch::launch();
    let name = launch.argv0.to_string_lossy().into_owned();
    match role() {
        Role::Master => std::iter::once(name)
            .chain(launch.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect(),
        Role::Worker(b) => std::iter::once(name)
            .chain(b.header.master_args.iter().cloned())
            .collect(),
        Role::BadWorker(e) => fail_boot(e),
    }
}

/// Ends a worker whose boot failed: one line on standard error, status 1.
pub(crate) fn fail_boot(e: &str) -> ! {
    crate::log::emergency_line(&format!("prefork worker {}: {e}", std::process::id()));
    std::process::exit(1)
}

/// What a worker function may return; turned into the worker's exit status.
pub trait WorkerExit {
    /// The exit status. An error is printed as one line on standard error first.
    fn exit_code(self) -> i32;
}

impl WorkerExit for () {
    fn exit_code(self) -> i32 {
        0
    }
}

impl WorkerExit for i32 {
    fn exit_code(self) -> i32 {
        self
    }
}

impl WorkerExit for std::process::ExitCode {
    fn exit_code(self) -> i32 {
        // `ExitCode` hides its number; its Debug form shows it (`ExitCode(unix_exit_status(3))`).
        // Read the digits out, so the master sees the status the worker chose.
        let text = format!("{self:?}");
        let digits: String = text
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits
            .parse()
            .unwrap_or(if self == std::process::ExitCode::SUCCESS {
                0
            } else {
                1
            })
    }
}

impl<T: WorkerExit, E: std::fmt::Display> WorkerExit for std::result::Result<T, E> {
    fn exit_code(self) -> i32 {
        match self {
            Ok(t) => t.exit_code(),
            Err(e) => {
                // `{:#}` prints the whole chain for error types that have one (anyhow).
                let mut line = format!("prefork worker {}: {e:#}", std::process::id());
                if line.contains("Address already in use") {
                    line.push_str(
                        " (hint: code before default_main runs again in every worker; bind \
                         listeners in the fork callback, which runs only in the master)",
                    );
                }
                crate::log::emergency_line(&line);
                1
            }
        }
    }
}

/// Runs the worker side of `default_main`. Never returns.
pub(crate) fn run<W, F, R>(boot: &'static Boot, worker_fn: F) -> !
where
    W: crate::WorkerContext,
    F: FnOnce(W) -> R,
    R: WorkerExit,
{
    run_context(
        &boot.context,
        boot.header.readiness,
        |id| {
            format!(
                "worker {id} gen {} pid {}",
                boot.header.generation,
                std::process::id()
            )
        },
        worker_fn,
    )
}

/// Runs the worker function in this process, single-process mode: the context and the copies
/// of its sockets that the spawner kept. Never returns.
pub(crate) fn run_single<W, F, R>(
    captured: crate::spawn::Captured,
    stop_signal: crate::process::Signal,
    readiness: Readiness,
    worker_fn: F,
) -> !
where
    W: crate::WorkerContext,
    F: FnOnce(W) -> R,
    R: WorkerExit,
{
    if let Err(e) =
        crate::fd::validate_declared(&captured.fds, &captured.nonblocking, &captured.per_worker)
    {
        fail_boot(&e.report().to_string());
    }
    let _ = SINGLE.set(Single {
        stop_signal,
        readiness,
        threads: captured.threads,
        fds: captured.fds.iter().map(|(fd, _)| *fd).collect(),
    });
    // As in a worker: a terminal hang-up does not end it.
    crate::sys::ignore_signal(nix::libc::SIGHUP);
    run_context(
        &captured.context,
        readiness,
        |id| format!("single {id} pid {}", std::process::id()),
        worker_fn,
    )
}

/// Decodes the context, names the process in logs, reports implicit readiness, runs the worker
/// function and exits with its status.
fn run_context<W, F, R>(
    context: &[u8],
    readiness: Readiness,
    label: impl FnOnce(&str) -> String,
    worker_fn: F,
) -> !
where
    W: crate::WorkerContext,
    F: FnOnce(W) -> R,
    R: WorkerExit,
{
    let ctx = match W::decode(context) {
        Ok(c) => c,
        Err(e) => fail_boot(&e.report().to_string()),
    };
    let id = format!("{:?}", ctx.id());
    crate::log::set_label(label(&id));
    let _ = WORKER_ID.set(id);
    if readiness == Readiness::Implicit {
        ready();
    }
    let code = worker_fn(ctx).exit_code();
    use std::io::Write;
    let _ = io::stdout().flush();
    std::process::exit(code)
}

/// A tokio runtime sized for this worker: [`threads`] worker threads (the context's runtime
/// option), a current-thread runtime for 1, and every driver enabled.
#[cfg(feature = "tokio")]
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    match threads() {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}
