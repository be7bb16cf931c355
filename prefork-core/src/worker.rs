//! The worker's side: boot, readiness, learning that it should stop.
//!
//! A worker is the same program, started again by the master with the marker environment
//! variable [`PREFORK_WORKER`](crate::protocol::WORKER_ENV) set. At boot (the first call of
//! [`default_main`](crate::default_main) or [`args`]) it:
//!
//! 1. removes the marker, so the worker's own children are not mistaken for workers;
//! 2. reads the whole context document from standard input, then points fd 0 at `/dev/null`;
//! 3. checks every declared fd (open, a listening stream socket of the declared family) and
//!    makes it close-on-exec again;
//! 4. hands the decoded context to the worker function.
//!
//! A missing, truncated or garbage document, or an fd that is not what the context says, ends
//! the worker with one line on standard error and exit status 1: never a panic or a hang.
//!
//! # Readiness and stopping
//!
//! With explicit readiness (see [`Settings::readiness`](crate::Settings::readiness)) the worker
//! calls [`ready`] once it can serve, typically right after its accept loop started. The master
//! replaces an old worker only after its successor said so. To stop a worker, the master sends
//! `SIGTERM`; a worker that wants to drain instead of dying calls [`stop_signal`] early, which
//! installs a handler, and then waits on it or polls it.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol::{Header, Readiness, WORKER_ENV};

/// What a worker learned at boot.
#[derive(Debug)]
pub(crate) struct Boot {
    pub header: Header,
    pub context: Vec<u8>,
    notify: Option<OwnedFd>,
    readied: AtomicBool,
}

static BOOT: OnceLock<Option<std::result::Result<Boot, String>>> = OnceLock::new();

/// Reads the worker's boot document once. `None` in the master.
pub(crate) fn boot() -> Option<std::result::Result<&'static Boot, &'static str>> {
    BOOT.get_or_init(|| {
        let _ = crate::spawn::launch();
        std::env::var_os(WORKER_ENV)?;
        // SAFETY: this runs once, at the very start of the program (default_main or args() is
        // the first thing a prefork program calls), before the program starts threads of its
        // own; std's own environment accesses are serialised by its lock.
        unsafe { std::env::remove_var(WORKER_ENV) };
        Some(read_boot().map_err(|e| e.to_string()))
    })
    .as_ref()
    .map(|r| r.as_ref().map_err(|s| s.as_str()))
}

fn read_boot() -> Result<Boot> {
    if std::io::IsTerminal::is_terminal(&io::stdin()) {
        return Err(Error::Decode(
            "standard input is a terminal: this process was not started by a prefork master \
             (unset PREFORK_WORKER)"
                .into(),
        ));
    }
    let mut doc = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut doc)
        .map_err(Error::ReadContext)?;
    point_stdin_at_dev_null();
    let nl = doc.iter().position(|&b| b == b'\n').ok_or_else(|| {
        Error::Decode("no header line (truncated or not from a prefork master)".into())
    })?;
    let header: Header = serde_json::from_slice(&doc[..nl])
        .map_err(|e| Error::Decode(format!("bad header: {e}")))?;
    if header.v != crate::protocol::VERSION {
        return Err(Error::Decode(format!(
            "header version {} (this program speaks {})",
            header.v,
            crate::protocol::VERSION
        )));
    }
    rearm_parent_death(header.master_pid)?;
    crate::fd::validate_declared(&header.fds)?;
    let notify = match header.notify_fd {
        None => None,
        Some(fd) if fd <= 2 || header.fds.iter().any(|(d, _)| *d == fd) => {
            return Err(Error::InvalidInheritedFd {
                fd,
                expected: "readiness socket",
                found: "a number that is stdio or a declared socket".into(),
            });
        }
        Some(fd) => {
            // SAFETY: F_GETFD has no memory-safety preconditions.
            let flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
            if flags < 0 {
                return Err(Error::InvalidInheritedFd {
                    fd,
                    expected: "readiness socket",
                    found: "not an open fd".into(),
                });
            }
            // SAFETY: fd is open (checked above), was put there by the master for this purpose,
            // and nothing else in this process claims it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: setting FD_CLOEXEC on an fd we own.
            unsafe {
                nix::libc::fcntl(
                    owned.as_raw_fd(),
                    nix::libc::F_SETFD,
                    flags | nix::libc::FD_CLOEXEC,
                )
            };
            Some(owned)
        }
    };
    Ok(Boot {
        header,
        context: doc[nl + 1..].to_vec(),
        notify,
        readied: AtomicBool::new(false),
    })
}

/// The kernel clears the parent-death signal on an exec that raises privileges (a setuid binary,
/// or one with file capabilities such as `cap_net_bind_service`): set it again, and close the
/// race where the master died before this point.
fn rearm_parent_death(master: Option<i32>) -> Result<()> {
    let Some(master) = master else { return Ok(()) };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| Error::sys("cannot set the parent-death signal", e))?;
    if nix::unistd::getppid().as_raw() != master {
        return Err(Error::Decode(format!(
            "the master (pid {master}) is gone; not starting"
        )));
    }
    Ok(())
}

fn point_stdin_at_dev_null() {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0, which std's stdin handle reads through the same number; the
        // lock on stdin above has been released.
        unsafe { nix::libc::dup2(null.as_raw_fd(), 0) };
    }
}

fn booted() -> Option<&'static Boot> {
    boot().and_then(|r| r.ok())
}

/// True in a worker process.
pub fn is_worker() -> bool {
    boot().is_some()
}

/// Reports to the master that this worker is ready to serve. Idempotent; a no-op outside a
/// worker or when the master does not listen for readiness.
///
/// With implicit readiness the library calls it when the worker function is entered.
pub fn ready() {
    let Some(b) = booted() else { return };
    if b.readied.swap(true, Ordering::AcqRel) {
        return;
    }
    if let Some(fd) = &b.notify {
        let msg = crate::protocol::ready_message(std::process::id());
        let r = nix::sys::socket::send(
            fd.as_raw_fd(),
            msg.as_bytes(),
            nix::sys::socket::MsgFlags::empty(),
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot report readiness to the master");
        }
    }
}

/// The readiness mode the master asked for.
pub fn readiness() -> Readiness {
    booted().map(|b| b.header.readiness).unwrap_or_default()
}

/// The master's reload generation this worker was started in (0 at start, +1 per reload).
pub fn generation() -> u64 {
    booted().map(|b| b.header.generation).unwrap_or(0)
}

/// The thread count from the context's runtime options, if it set one.
pub fn threads() -> Option<usize> {
    booted().and_then(|b| b.header.threads)
}

/// The fd numbers of the sockets this worker inherited.
pub fn inherited_fds() -> Vec<i32> {
    booted()
        .map(|b| b.header.fds.iter().map(|(fd, _)| *fd).collect())
        .unwrap_or_default()
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
    let launch = crate::spawn::launch();
    let name = launch.argv0.to_string_lossy().into_owned();
    match boot() {
        None => std::iter::once(name)
            .chain(launch.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect(),
        Some(Ok(b)) => std::iter::once(name)
            .chain(b.header.master_args.iter().cloned())
            .collect(),
        Some(Err(e)) => fail_boot(e),
    }
}

pub(crate) fn fail_boot(e: &str) -> ! {
    eprintln!("prefork worker {}: {e}", std::process::id());
    std::process::exit(1)
}

/// A handle that tells a worker the master wants it to stop (`SIGTERM` or `SIGINT` arrived).
///
/// Made by [`stop_signal`]. Cloning is cheap; all clones see the same signal.
#[derive(Clone, Debug)]
pub struct StopSignal {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    stopping: AtomicBool,
    lock: Mutex<bool>,
    cond: Condvar,
}

static STOP: OnceLock<std::result::Result<StopSignal, String>> = OnceLock::new();

/// Installs `SIGTERM`/`SIGINT` handling (once) and returns the handle.
///
/// Until this is called, `SIGTERM` kills the worker at once (the default action), which is what
/// a worker with nothing to drain wants. After it, the signals only set the handle: the worker
/// must stop by itself, and the master `SIGKILL`s it after its stop deadline.
pub fn stop_signal() -> Result<StopSignal> {
    STOP.get_or_init(|| install_stop().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Signal(io::Error::other(e)))
}

fn install_stop() -> Result<StopSignal> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(Error::Signal)?;
    let inner = Arc::new(StopInner {
        stopping: AtomicBool::new(false),
        lock: Mutex::new(false),
        cond: Condvar::new(),
    });
    let weak = Arc::downgrade(&inner);
    std::thread::Builder::new()
        .name("prefork-stop".into())
        .spawn(move || {
            // Keep the iterator (and so the handlers' actions) alive for the worker's whole
            // life: a second TERM must not fall into a handler with nothing behind it.
            for _ in signals.forever() {
                let Some(inner) = weak.upgrade() else {
                    continue;
                };
                inner.stopping.store(true, Ordering::Release);
                let mut g = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
                *g = true;
                inner.cond.notify_all();
            }
        })
        .map_err(Error::Signal)?;
    Ok(StopSignal { inner })
}

impl StopSignal {
    /// True once the master asked this worker to stop.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Blocks until the master asks this worker to stop.
    pub fn wait(&self) {
        let mut g = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            g = self.inner.cond.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks until the master asks this worker to stop or `timeout` passes; true if asked.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let g = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .inner
            .cond
            .wait_timeout_while(g, timeout, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
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
        if self == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        }
    }
}

impl<T: WorkerExit, E: std::fmt::Display> WorkerExit for std::result::Result<T, E> {
    fn exit_code(self) -> i32 {
        match self {
            Ok(t) => t.exit_code(),
            Err(e) => {
                eprintln!("prefork worker {}: {e}", std::process::id());
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
    let ctx = match W::decode(&boot.context) {
        Ok(c) => c,
        Err(e) => fail_boot(&e.to_string()),
    };
    if boot.header.readiness == Readiness::Implicit {
        ready();
    }
    let code = worker_fn(ctx).exit_code();
    use std::io::Write;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    std::process::exit(code)
}
