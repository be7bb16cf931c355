//! Starting a worker: prepare, clone, lay out the child's fds, exec the program again.
//!
//! # Who may spawn
//!
//! Only the master's loop, through a [`Spawner`] it hands to the `fork` callback (and to the
//! `update_server` and `on_child_finished` hooks). The spawner carries what a worker needs from
//! its master: the readiness socket, the readiness mode, the stop signal and the generation.
//! There is no ambient state: a worker cannot be started without the master that supervises it.
//!
//! # What happens, in order
//!
//! In the master (allocation allowed), here:
//! 1. The context is cloned and walked with `visit_fds`; the n declared sockets get the
//!    child-side numbers 3 … 3+n-1, the readiness socket gets 3+n, and the scoreboard (when the
//!    master keeps one and a slot is free) 3+n+1. Each listener is checked
//!    first: still listening and non-blocking, restored loudly if a worker broke it (see
//!    [`fd`](crate::fd)).
//! 2. The context is encoded behind a one-line header and written *whole* into a fresh pipe
//!    whose capacity was checked (and raised) to fit it, and the pipe's write end is closed.
//!    The worker reads it from its standard input. Nothing can block: the write end is
//!    non-blocking, and a document that does not fit is an error, not a wait on a reader that
//!    does not exist yet.
//! 3. argv and envp are built ([`argv`]): the program name as the master got it (so `ps` looks
//!    the same), the context's `args()`, its runtime options in `+RTS … -RTS` form. The marker
//!    `PREFORK_WORKER=master:<pid>` is added; `NOTIFY_SOCKET`, `LISTEN_*` and `WATCHDOG_*` are
//!    removed (only the master talks to a service manager). A user, group or supplementary
//!    groups among the runtime options are looked up ([`credentials`]).
//! 4. [`child`]: every signal is blocked around a `clone(CLONE_VM | CLONE_VFORK)`, as glibc's
//!    `posix_spawn` does: the child runs on a small stack of its own inside the master's memory
//!    while the master's thread waits for its `execve`, so nothing is copied and a spawn costs
//!    the same whatever the master's size (a `fork` copies the page tables: about half the
//!    master's CPU per respawn, measured in BENCHMARKS.md). The child's steps are there.

mod argv;
mod child;
mod credentials;

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::context::{RuntimeOptions, WorkerContext};
use crate::error::{Error, Result};
use crate::fd::ListenerKind;
use crate::process::{Pid, Signal};
use crate::protocol::{Header, ScoreboardGrant, WORKER_ENV};
use crate::readiness::Readiness;
use crate::reuseport::{Holders, MemberRef};
use crate::scoreboard::Board;

use argv::CStringArray;
use child::{ChildPlan, Program};
use credentials::Credentials;

pub use child::FIRST_INHERITED_FD;

/// What the master hands to the code that starts workers: the `fork` callback of
/// [`relaunch_settings`](crate::relaunch_settings), and the `update_server` and
/// `on_child_finished` hooks.
///
/// It exists only inside those calls, on the master's thread (a worker's parent-death signal
/// follows the thread that started it), and carries what every worker needs from its master:
/// the readiness socket, the readiness mode, the stop signal, the reload generation, and a
/// scoreboard slot for each worker it starts.
///
/// In single-process mode ([`PREFORK_SINGLE`](crate::protocol::SINGLE_ENV)) the spawner starts
/// no process: the first [`fork_worker_process`](Self::fork_worker_process) keeps the context
/// (with a copy of each declared socket) for the calling process to run, and returns this
/// process's pid; any further call is an error.
#[derive(Debug)]
pub struct Spawner<'a> {
    target: Target<'a>,
    readiness: Readiness,
    stop_signal: Signal,
    generation: u64,
    /// Where the master records which worker holds which reuseport socket.
    holders: Option<&'a Holders>,
    board: Option<&'a Board>,
    max_requests: Option<u64>,
}

/// Where a spawner's workers go.
#[derive(Debug)]
enum Target<'a> {
    /// A new process, with the master's readiness socket.
    Process { readiness_fd: BorrowedFd<'a> },
    /// This process (single-process mode): the context is kept here.
    InProcess(&'a RefCell<Option<Captured>>),
}

/// A worker's context kept for single-process mode: what a worker would read at boot.
#[derive(Debug)]
pub(crate) struct Captured {
    /// The encoded context (its sockets numbered as this process holds their copies).
    pub context: Vec<u8>,
    /// The copies of the declared sockets, and their kinds.
    pub fds: Vec<(RawFd, ListenerKind)>,
    /// The copies a worker must find non-blocking.
    pub nonblocking: Vec<RawFd>,
    /// The copies that are the worker id's own sockets (a reuseport group's).
    pub per_worker: Vec<RawFd>,
    /// The context's thread count.
    pub threads: Option<usize>,
}

impl<'a> Spawner<'a> {
    pub(crate) fn new(
        readiness_fd: BorrowedFd<'a>,
        readiness: Readiness,
        stop_signal: Signal,
        generation: u64,
        board: Option<&'a Board>,
    ) -> Self {
        Spawner {
            target: Target::Process { readiness_fd },
            readiness,
            stop_signal,
            generation,
            holders: None,
            board,
            max_requests: None,
        }
    }

    /// Where the master records which worker holds which reuseport socket.
    pub(crate) fn with_holders(mut self, holders: &'a Holders) -> Self {
        self.holders = Some(holders);
        self
    }

    /// The request budget of the workers this spawner starts (drawn by the pool, jitter
    /// included).
    pub(crate) fn with_max_requests(mut self, n: Option<u64>) -> Self {
        self.max_requests = n;
        self
    }

    /// A spawner for single-process mode: it keeps the first context in `slot`.
    pub(crate) fn in_process(
        slot: &'a RefCell<Option<Captured>>,
        readiness: Readiness,
        stop_signal: Signal,
    ) -> Self {
        Spawner {
            target: Target::InProcess(slot),
            readiness,
            stop_signal,
            generation: 0,
            board: None,
            max_requests: None,
            holders: None,
        }
    }

    /// The reload generation the next worker starts in (0 at start, +1 per reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts a worker process for `ctx`: the same program, with `ctx.args()` and its runtime
    /// options in argv, the context on its standard input and its declared sockets at fds 3,
    /// 4, …. Returns the worker's pid; the master reaps it.
    pub fn fork_worker_process<W: WorkerContext>(&self, ctx: &W) -> Result<Pid> {
        self.fork_worker_process_with_args(ctx, ctx.args())
    }

    /// As [`fork_worker_process`](Self::fork_worker_process), with `args` instead of
    /// `ctx.args()` (haskell-prefork's `forkWorkerProcessWithArgs`).
    pub fn fork_worker_process_with_args<W, I, S>(&self, ctx: &W, args: I) -> Result<Pid>
    where
        W: WorkerContext,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let what = format!("{:?}", ctx.id());
        let readiness_fd = match &self.target {
            Target::Process { readiness_fd } => *readiness_fd,
            Target::InProcess(slot) => return capture(ctx, slot, what),
        };
        let mut ctx = ctx.clone();
        // A slot is claimed for this spawn and given back if it fails.
        let claim = self.board.and_then(|b| Some((b, b.claim()?)));
        let r = self.spawn_with_slot(&what, &mut ctx, args, readiness_fd, claim);
        if let Some((board, slot)) = claim {
            match &r {
                Ok(pid) => board.assign(slot, *pid),
                Err(_) => board.unclaim(slot),
            }
        }
        r
    }

    fn spawn_with_slot<W, I, S>(
        &self,
        what: &str,
        ctx: &mut W,
        args: I,
        readiness_fd: BorrowedFd<'_>,
        claim: Option<(&Board, u32)>,
    ) -> Result<Pid>
    where
        W: WorkerContext,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let fds = FdLayout::of(ctx, readiness_fd, claim.map(|(b, _)| b.fd()))?;
        let scoreboard = match (claim, fds.scoreboard_target) {
            (Some((board, slot)), Some(fd)) => Some(ScoreboardGrant {
                fd,
                slot,
                beat_ms: board.beat_every().map_or(0, |d| {
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
                }),
                max_requests: self.max_requests,
            }),
            _ => None,
        };
        let opts = ctx.runtime_options();
        // Names are resolved before anything is started: an unknown user is one clear error.
        let credentials = Credentials::resolve(&opts)?;
        let header = Header {
            v: crate::protocol::VERSION,
            generation: self.generation,
            readiness: self.readiness,
            stop_signal: self.stop_signal.as_raw(),
            readiness_fd: Some(fds.readiness_target),
            fds: fds.declared,
            nonblocking: fds.nonblocking,
            per_worker: fds.per_worker,
            threads: opts.threads,
            master_pid: Pid::this().as_raw(),
            master_args: crate::launch::launch()
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            scoreboard,
        };
        let mut doc = serde_json::to_vec(&header).map_err(|e| Error::Encode(e.to_string()))?;
        doc.push(b'\n');
        doc.extend_from_slice(&ctx.encode()?);
        let context_pipe = context_pipe(&doc)?;
        let program = program(args, &opts)?;
        let spawn_err = |source: io::Error| Error::Spawn {
            what: what.to_string(),
            source,
        };
        let plan = ChildPlan::new(
            fds.sources,
            context_pipe.as_raw_fd(),
            &opts,
            credentials,
            program,
        )
        .map_err(spawn_err)?;
        let pid = plan.spawn().map_err(spawn_err)?;
        drop(context_pipe);
        drop(fds.keep_alive);
        if let Some(h) = self.holders {
            h.spawned(pid, fds.members);
        }
        Ok(pid)
    }
}

/// Single-process mode: keeps `ctx` in `slot` for this process to run, each declared socket
/// replaced by a copy (`dup`, close-on-exec) that this process's worker side adopts as a worker
/// adopts its inherited fds.
fn capture<W: WorkerContext>(
    ctx: &W,
    slot: &RefCell<Option<Captured>>,
    what: String,
) -> Result<Pid> {
    if slot.borrow().is_some() {
        return Err(Error::Spawn {
            what,
            source: io::Error::other(
                "single-process mode (PREFORK_SINGLE) runs the first worker only",
            ),
        });
    }
    let mut ctx = ctx.clone();
    let mut fds = Vec::new();
    let mut nonblocking = Vec::new();
    let mut per_worker = Vec::new();
    let mut failed = None;
    ctx.visit_fds(&mut |l| {
        let Some(fd) = l.master_shared() else {
            failed = Some(Error::ListenerMisuse(
                "a worker context can only carry listeners made in the master".into(),
            ));
            return;
        };
        match fd.try_clone() {
            Ok(copy) => {
                // The number is owned from now on by the worker side's fd claims.
                let n = std::os::fd::IntoRawFd::into_raw_fd(copy);
                fds.push((n, l.kind()));
                if l.must_be_nonblocking() {
                    nonblocking.push(n);
                }
                if l.member().is_some() {
                    per_worker.push(n);
                }
                l.set_child_fd(n);
            }
            Err(e) => failed = Some(Error::sys("cannot copy a listening socket", e)),
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    *slot.borrow_mut() = Some(Captured {
        context: ctx.encode()?,
        fds,
        nonblocking,
        per_worker,
        threads: ctx.runtime_options().threads,
    });
    Ok(Pid::this())
}

/// Where each fd goes in the child.
struct FdLayout {
    /// Source fd i goes to `FIRST_INHERITED_FD + i`.
    sources: Vec<RawFd>,
    /// The master's listeners, held until the child has exec'd.
    keep_alive: Vec<Arc<OwnedFd>>,
    /// The declared sockets as the header names them.
    declared: Vec<(RawFd, ListenerKind)>,
    /// Declared sockets a worker must find non-blocking.
    nonblocking: Vec<RawFd>,
    /// Declared sockets that are the worker id's own (reuseport group members).
    per_worker: Vec<RawFd>,
    /// Their groups' records, to note the new holder.
    members: Vec<MemberRef>,
    readiness_target: RawFd,
    scoreboard_target: Option<RawFd>,
}

impl FdLayout {
    /// Numbers the declared sockets of `ctx` (and writes the numbers into it), checking each
    /// listener on the way, then the readiness socket, then the scoreboard if there is one.
    fn of<W: WorkerContext>(
        ctx: &mut W,
        readiness: BorrowedFd<'_>,
        scoreboard: Option<BorrowedFd<'_>>,
    ) -> Result<Self> {
        let mut layout = FdLayout {
            sources: Vec::new(),
            keep_alive: Vec::new(),
            declared: Vec::new(),
            nonblocking: Vec::new(),
            per_worker: Vec::new(),
            members: Vec::new(),
            readiness_target: 0,
            scoreboard_target: None,
        };
        let mut misuse = None;
        ctx.visit_fds(&mut |l| {
            let target = FIRST_INHERITED_FD + layout.sources.len() as RawFd;
            match l.master_shared() {
                Some(fd) => {
                    l.restore_if_broken();
                    layout.sources.push(fd.as_raw_fd());
                    layout.keep_alive.push(fd);
                    layout.declared.push((target, l.kind()));
                    if l.must_be_nonblocking() {
                        layout.nonblocking.push(target);
                    }
                    if let Some(m) = l.member() {
                        layout.per_worker.push(target);
                        layout.members.push(m.clone());
                    }
                    l.set_child_fd(target);
                }
                None => {
                    misuse = Some(Error::ListenerMisuse(
                        "a worker context can only carry listeners made in the master".into(),
                    ))
                }
            }
        });
        if let Some(e) = misuse {
            return Err(e);
        }
        layout.readiness_target = FIRST_INHERITED_FD + layout.sources.len() as RawFd;
        layout.sources.push(readiness.as_raw_fd());
        if let Some(fd) = scoreboard {
            layout.scoreboard_target = Some(FIRST_INHERITED_FD + layout.sources.len() as RawFd);
            layout.sources.push(fd.as_raw_fd());
        }
        Ok(layout)
    }
}

/// Variables a worker never inherits: the marker (set anew) and what a service manager gives
/// the master only.
const REMOVED_ENV: &[&str] = &[
    WORKER_ENV,
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The path, argv and envp of a worker.
fn program<I, S>(args: I, opts: &RuntimeOptions) -> Result<Program>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let launch = crate::launch::launch();
    let mut path = CStringArray::new();
    path.push(launch.path.as_os_str().as_bytes())?;
    let mut argv = CStringArray::new();
    argv.push(launch.argv0.as_bytes())?;
    for a in args {
        argv.push(a.as_ref().as_bytes())?;
    }
    for a in opts.to_args() {
        argv.push(a)?;
    }
    let mut envp = CStringArray::new();
    let overridden = |k: &OsStr| {
        REMOVED_ENV.iter().any(|r| OsStr::new(r) == k)
            || opts.env.iter().any(|(ok, _)| OsStr::new(ok) == k)
    };
    for (k, v) in std::env::vars_os() {
        if overridden(&k) {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(kv)?;
    }
    for (k, v) in &opts.env {
        envp.push(format!("{k}={v}"))?;
    }
    envp.push(format!(
        "{WORKER_ENV}={}",
        crate::protocol::marker(Pid::this().as_raw())
    ))?;
    Ok(Program { path, argv, envp })
}

/// A pipe holding the whole context document, write end already closed.
///
/// The write end is non-blocking and the pipe's real capacity is checked first: the only reader
/// is a child that does not exist yet, so a write that does not fit must fail, not block.
fn context_pipe(doc: &[u8]) -> Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("cannot create the context pipe", e))?;
    let mut cap = fcntl(&w, FcntlArg::F_GETPIPE_SZ).unwrap_or(0).max(0) as usize;
    if doc.len() > cap {
        let max = crate::protocol::pipe_max_size();
        if doc.len() <= max {
            let want = doc.len().next_power_of_two().min(max);
            if let Ok(got) = fcntl(&w, FcntlArg::F_SETPIPE_SZ(want as i32))
                && got > 0
            {
                cap = got as usize;
            }
        }
        if doc.len() > cap {
            return Err(Error::ContextTooLarge {
                len: doc.len(),
                max: if doc.len() > max { max } else { cap },
            });
        }
    }
    // O_NONBLOCK on our write end only (the read end is another open file description).
    fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| Error::sys("cannot make the context pipe non-blocking", e))?;
    let mut wf = std::fs::File::from(w);
    wf.write_all(doc).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            Error::ContextTooLarge {
                len: doc.len(),
                max: cap,
            }
        } else {
            Error::sys("cannot write the context pipe", e)
        }
    })?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn context_pipe_holds_large_documents_and_refuses_what_cannot_fit() {
        let doc = vec![b'x'; 300 * 1024];
        let r = context_pipe(&doc).expect("300 KiB fits once the pipe is grown");
        let mut back = Vec::new();
        std::fs::File::from(r).read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), doc.len());
        let max = crate::protocol::pipe_max_size();
        let too_big = vec![b'x'; max + 1];
        match context_pipe(&too_big) {
            Err(Error::ContextTooLarge { len, .. }) => assert_eq!(len, max + 1),
            other => panic!("expected ContextTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn the_signals_with_handlers_or_ignores_are_found() {
        // The test harness installs none for SIGUSR2; install one and look for it.
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id = signal_hook::flag::register(nix::libc::SIGUSR2, flag).unwrap();
        assert!(crate::sys::non_default_signals().contains(&nix::libc::SIGUSR2));
        signal_hook::low_level::unregister(id);
    }
}
