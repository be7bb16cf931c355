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
//!    child-side numbers 3 … 3+n-1, and the readiness socket gets 3+n. Each listener is checked
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
use crate::protocol::{Header, WORKER_ENV};
use crate::readiness::Readiness;
use crate::reuseport::{Holders, MemberRef};

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
/// the readiness socket, the readiness mode, the stop signal and the reload generation.
#[derive(Debug)]
pub struct Spawner<'a> {
    readiness_fd: BorrowedFd<'a>,
    readiness: Readiness,
    stop_signal: Signal,
    generation: u64,
    /// Where the master records which worker holds which reuseport socket.
    holders: &'a Holders,
}

impl<'a> Spawner<'a> {
    pub(crate) fn new(
        readiness_fd: BorrowedFd<'a>,
        readiness: Readiness,
        stop_signal: Signal,
        generation: u64,
        holders: &'a Holders,
    ) -> Self {
        Spawner {
            readiness_fd,
            readiness,
            stop_signal,
            generation,
            holders,
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
        let mut ctx = ctx.clone();
        let fds = FdLayout::of(&mut ctx, self.readiness_fd)?;
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
        };
        let mut doc = serde_json::to_vec(&header).map_err(|e| Error::Encode(e.to_string()))?;
        doc.push(b'\n');
        doc.extend_from_slice(&ctx.encode()?);
        let context_pipe = context_pipe(&doc)?;
        let program = program(args, &opts)?;
        let spawn_err = |source: io::Error| Error::Spawn {
            what: what.clone(),
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
        self.holders.spawned(pid, fds.members);
        Ok(pid)
    }
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
}

impl FdLayout {
    /// Numbers the declared sockets of `ctx` (and writes the numbers into it), checking each
    /// listener on the way, then the readiness socket.
    fn of<W: WorkerContext>(ctx: &mut W, readiness: BorrowedFd<'_>) -> Result<Self> {
        let mut layout = FdLayout {
            sources: Vec::new(),
            keep_alive: Vec::new(),
            declared: Vec::new(),
            nonblocking: Vec::new(),
            per_worker: Vec::new(),
            members: Vec::new(),
            readiness_target: 0,
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
