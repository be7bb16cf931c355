//! Starting a worker: fork, lay out the child's fds, exec the program again.
//!
//! # What happens, in order
//!
//! In the master (allocation allowed):
//! 1. The context is cloned and walked with `visit_fds`; the n declared sockets get the child-side
//!    numbers 3 … 3+n-1, and the readiness socket (when the master has one) gets 3+n.
//! 2. The context is encoded behind a one-line header and written *whole* into a fresh pipe whose
//!    capacity was checked (and raised) to fit it, and the pipe's write end is closed. The worker
//!    reads it from its standard input. Nothing can block: the write end is non-blocking, and a
//!    document that does not fit is an error, not a wait on a reader that does not exist yet.
//! 3. argv and envp are built as C strings: the program name as the master got it (so `ps` looks
//!    the same), the context's `args()`, its runtime options in `+RTS … -RTS` form. The marker
//!    `PREFORK_WORKER=1` is added; `NOTIFY_SOCKET` and `LISTEN_*` are removed.
//! 4. Every signal is blocked around the `clone`, so no handler of the master runs in the child.
//!    The child is made by `clone(CLONE_VM | CLONE_VFORK)`, as glibc's `posix_spawn` does: it
//!    runs on a small stack of its own inside the master's memory while the master's thread
//!    waits for its `execve`, so nothing is copied and a spawn costs the same whatever the
//!    master's size (a `fork` copies the page tables: about half the master's CPU per respawn,
//!    measured in BENCHMARKS.md). The child's code below writes only to memory prepared for it.
//!
//! In the child, between `clone` and `execve` (async-signal-safe system calls only: no
//! allocation, no locks, no logging, no panics):
//! 1. Every source fd, and the exec-error pipe, is first duplicated above the highest target
//!    number (`F_DUPFD_CLOEXEC`), then `dup2`ed onto its target. Two passes, so a source whose
//!    number is another mapping's target is never clobbered; `dup2` clears close-on-exec on the
//!    target only, in the child only. Then every fd from there up is marked close-on-exec
//!    (`close_range(CLOSE_RANGE_CLOEXEC)`): fds the master inherited from its own parent without
//!    the flag do not leak into workers.
//! 2. Signal handlers are reset to the default and the signal mask is emptied (a forked child
//!    inherits both; `execve` keeps the mask).
//! 3. `PR_SET_PDEATHSIG(SIGKILL)`, then `getppid()` is compared with the master's pid: if the
//!    master died before the `prctl`, the child exits at once. The death signal follows the
//!    *thread* that forked, so the master spawns only from its own loop thread.
//! 4. Runtime options: `setpriority`, `sched_setaffinity`, `setrlimit`.
//! 5. `execve`. On any failure the errno goes down the exec-error pipe (close-on-exec, so a
//!    successful exec closes it and the master reads end-of-file), and the child `_exit(127)`s.
//!    The master then reaps that child itself and returns the error.

use std::cell::RefCell;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::libc;
use nix::unistd::Pid;

use crate::context::{RuntimeOptions, WorkerContext};
use crate::error::{Error, Result};
use crate::fd::ListenerKind;
use crate::protocol::{Header, Readiness, WORKER_ENV};

/// The first fd number given to declared sockets in a worker.
pub const FIRST_INHERITED_FD: RawFd = 3;

/// What the master's loop tells the spawner: set on the master's thread while it runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpawnEnv {
    pub notify: Option<Arc<OwnedFd>>,
    pub readiness: Readiness,
    pub generation: u64,
}

thread_local! {
    static SPAWN_ENV: RefCell<SpawnEnv> = RefCell::new(SpawnEnv::default());
}

pub(crate) fn set_spawn_env(env: SpawnEnv) {
    SPAWN_ENV.with(|e| *e.borrow_mut() = env);
}

pub(crate) fn with_spawn_env<R>(f: impl FnOnce(&mut SpawnEnv) -> R) -> R {
    SPAWN_ENV.with(|e| f(&mut e.borrow_mut()))
}

/// How the program was started: the path to exec for workers, and the name they show in `ps`.
#[derive(Debug)]
pub(crate) struct Launch {
    /// The file to exec: `argv[0]` made absolute against the start directory when it contains a
    /// `/`, else what `/proc/self/exe` said at start. A binary renamed over this path is what the
    /// next worker runs (a code upgrade by HUP).
    pub path: PathBuf,
    /// `argv[0]` as given.
    pub argv0: OsString,
    /// The master's own arguments (after `argv[0]`).
    pub args: Vec<OsString>,
}

static LAUNCH: OnceLock<Launch> = OnceLock::new();

/// Records how the program was started. Called early by `default_main`; later calls are no-ops.
pub(crate) fn launch() -> &'static Launch {
    LAUNCH.get_or_init(|| {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        let args = argv.collect();
        let path = resolve_program(&argv0);
        Launch { path, argv0, args }
    })
}

fn resolve_program(argv0: &OsStr) -> PathBuf {
    let p = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(p);
        }
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// Starts a worker process for `ctx`: the same program, with `ctx.args()` and its runtime
/// options in argv, the context on its standard input and its declared sockets at fds 3, 4, ….
///
/// Call it from the `fork` callback of [`relaunch_settings`](crate::relaunch_settings), on the
/// master's thread. Returns the worker's pid; the master reaps it.
pub fn fork_worker_process<W: WorkerContext>(ctx: &W) -> Result<Pid> {
    fork_worker_process_with_args(ctx, ctx.args())
}

/// As [`fork_worker_process`], with `args` instead of `ctx.args()` (haskell-prefork's
/// `forkWorkerProcessWithArgs`).
pub fn fork_worker_process_with_args<W, I, S>(ctx: &W, args: I) -> Result<Pid>
where
    W: WorkerContext,
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let what = format!("{:?}", ctx.id());
    let spawn_err = |source: io::Error| Error::Spawn {
        what: what.clone(),
        source,
    };

    // 1. fds: number the declared sockets in the child.
    let mut ctx = ctx.clone();
    let mut sources: Vec<RawFd> = Vec::new();
    let mut keep_alive: Vec<Arc<OwnedFd>> = Vec::new();
    let mut declared: Vec<(RawFd, ListenerKind)> = Vec::new();
    let mut misuse = None;
    ctx.visit_fds(&mut |l| {
        let target = FIRST_INHERITED_FD + sources.len() as RawFd;
        match l.master_shared() {
            Some(fd) => {
                sources.push(fd.as_raw_fd());
                keep_alive.push(fd);
                declared.push((target, l.kind()));
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
    let env = with_spawn_env(|e| e.clone());
    let notify_fd = env.notify.as_ref().map(|n| {
        let target = FIRST_INHERITED_FD + sources.len() as RawFd;
        sources.push(n.as_raw_fd());
        target
    });

    // 2. The context document.
    let launch = launch();
    let opts = ctx.runtime_options();
    let header = Header {
        v: crate::protocol::VERSION,
        generation: env.generation,
        readiness: env.readiness,
        notify_fd,
        fds: declared,
        threads: opts.threads,
        master_pid: Some(std::process::id() as i32),
        master_args: launch
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    };
    let mut doc = serde_json::to_vec(&header).map_err(|e| Error::Encode(e.to_string()))?;
    doc.push(b'\n');
    doc.extend_from_slice(&ctx.encode()?);
    let ctx_pipe = context_pipe(&doc)?;

    // 3. argv and envp.
    let path = cstring(launch.path.as_os_str().as_bytes().to_vec())?;
    let mut argv_c = vec![cstring(launch.argv0.as_bytes().to_vec())?];
    for a in args {
        argv_c.push(cstring(a.as_ref().as_bytes().to_vec())?);
    }
    for a in opts.to_args() {
        argv_c.push(cstring(a.into_bytes())?);
    }
    let envp_c = build_env(&opts)?;
    let argv = null_terminated(&argv_c);
    let envp = null_terminated(&envp_c);

    let plan = ChildPlan::new(sources, ctx_pipe.as_raw_fd(), &opts).map_err(spawn_err)?;
    let pid = plan.fork_exec(&path, &argv, &envp).map_err(spawn_err)?;
    drop(ctx_pipe);
    drop(keep_alive);
    Ok(pid)
}

fn cstring(bytes: Vec<u8>) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::Spawn {
        what: "argv".into(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument contains a NUL byte",
        ),
    })
}

fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

const REMOVED_ENV: &[&str] = &[
    WORKER_ENV,
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

fn build_env(opts: &RuntimeOptions) -> Result<Vec<CString>> {
    let mut out = Vec::new();
    let overridden = |k: &OsStr| {
        REMOVED_ENV.iter().any(|r| OsStr::new(r) == k)
            || opts.env.iter().any(|(ok, _)| OsStr::new(ok) == k)
    };
    for (k, v) in std::env::vars_os() {
        if overridden(&k) {
            continue;
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        out.push(cstring(kv)?);
    }
    for (k, v) in &opts.env {
        out.push(cstring(format!("{k}={v}").into_bytes())?);
    }
    out.push(cstring(format!("{WORKER_ENV}=1").into_bytes())?);
    Ok(out)
}

/// A pipe holding the whole context document, write end already closed.
///
/// The write end is non-blocking and the pipe's real capacity is checked first: the only reader
/// is a child that does not exist yet, so a write that does not fit must fail, not block.
fn context_pipe(doc: &[u8]) -> Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("cannot create the context pipe", e))?;
    // SAFETY: fcntl on a pipe we own; no memory is passed.
    let mut cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }.max(0) as usize;
    if doc.len() > cap {
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(1 << 20);
        if doc.len() <= max {
            let want = doc.len().next_power_of_two().min(max);
            // SAFETY: as above.
            let got =
                unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want as libc::c_int) };
            if got > 0 {
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
    // SAFETY: as above; O_NONBLOCK on our write end only (the read end is another description).
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
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
    drop(wf);
    Ok(r)
}

/// The child's stack. Its code uses a few hundred bytes.
const CHILD_STACK: usize = 64 * 1024;
/// The guard page below it (4 KiB pages on every target this builds for; a larger page size
/// only makes the guard partial, never unsafe, as `mprotect` rounds to whole pages).
const GUARD: usize = 4096;

/// The child's stack: mapped for one spawn and unmapped after it, so the pages the child
/// touched do not stay resident in the master (as a reused heap block would).
struct ChildStack {
    base: *mut libc::c_void,
}

impl ChildStack {
    fn new() -> io::Result<Self> {
        // SAFETY: an anonymous private mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHILD_STACK + GUARD,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base };
        // A guard page below the stack: an overflow faults instead of writing into the master.
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The highest usable address, 16-byte aligned (the stack grows down).
    fn top(&self) -> usize {
        (self.base as usize + GUARD + CHILD_STACK) & !15
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: `base` is the mapping made in `new`, of CHILD_STACK + GUARD bytes; the child that
        // used it has exec'd or exited (CLONE_VFORK), so nothing refers to it any more.
        unsafe { libc::munmap(self.base, CHILD_STACK + GUARD) };
    }
}

/// What `child_entry` receives.
struct ChildArgs<'a> {
    plan: &'a mut ChildPlan,
    err_w: RawFd,
    path: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// The entry point of the cloned child. Never returns.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `fork_exec` passed to `clone`; it lives on the
    // suspended parent's stack until this child exec'd or exited.
    unsafe {
        let a = &mut *(arg as *mut ChildArgs<'_>);
        a.plan.child_after_fork(a.err_w, a.path, a.argv, a.envp)
    }
}

/// Every signal (real-time ones included) that has a handler installed in this process.
fn handled_signals() -> Vec<libc::c_int> {
    let mut v = Vec::new();
    for sig in 1..=libc::SIGRTMAX() {
        // SAFETY: a query (null new action) of the current disposition into a zeroed struct.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above; sigaction fails harmlessly (EINVAL) for SIGKILL, SIGSTOP and the
        // signals glibc reserves.
        let ok = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
        if ok && old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
            v.push(sig);
        }
    }
    v
}

/// Everything the child needs between fork and exec, prepared (allocated) in the parent.
struct ChildPlan {
    /// Source fds; source i goes to fd `FIRST_INHERITED_FD + i`.
    sources: Vec<RawFd>,
    /// Scratch space, same length as `sources`, written in the child without allocating.
    scratch: Vec<RawFd>,
    stdin: RawFd,
    master_pid: libc::pid_t,
    nice: Option<i32>,
    /// Signals that have a handler in the master (queried before the clone): the child resets
    /// exactly these to the default before it unblocks signals.
    handled: Vec<libc::c_int>,
    affinity: Option<libc::cpu_set_t>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
}

impl ChildPlan {
    fn new(sources: Vec<RawFd>, stdin: RawFd, opts: &RuntimeOptions) -> io::Result<Self> {
        let affinity = match &opts.cpu_affinity {
            None => None,
            Some(cpus) => {
                // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
                let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
                for &c in cpus {
                    if c >= libc::CPU_SETSIZE as usize {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("CPU {c} is out of range"),
                        ));
                    }
                    // SAFETY: `c` is below CPU_SETSIZE (checked above), so the bit is in `set`.
                    unsafe { libc::CPU_SET(c, &mut set) };
                }
                Some(set)
            }
        };
        let rlimits = opts
            .rlimits
            .iter()
            .map(|r| {
                (
                    r.resource.raw(),
                    libc::rlimit {
                        rlim_cur: r.soft,
                        rlim_max: r.hard,
                    },
                )
            })
            .collect();
        Ok(ChildPlan {
            scratch: vec![-1; sources.len()],
            sources,
            stdin,
            master_pid: std::process::id() as libc::pid_t,
            // setpriority clamps to -20..=19 anyway; this only keeps the sum from overflowing.
            nice: opts.nice.map(|n| n.clamp(-40, 40)),
            handled: handled_signals(),
            affinity,
            rlimits,
        })
    }

    /// Starts the child (`clone` with `CLONE_VM | CLONE_VFORK`, as glibc's `posix_spawn` does)
    /// and execs. Returns the child's pid once `execve` succeeded, or the child's errno (after
    /// reaping it) when anything before or at `execve` failed.
    fn fork_exec(
        mut self,
        path: &CString,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> io::Result<Pid> {
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Everything that can fail comes before the signals are blocked: an early return must
        // not leave the master's thread with every signal blocked.
        let stack = ChildStack::new()?;
        let all = nix::sys::signal::SigSet::all();
        let mut old = nix::sys::signal::SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&all),
            Some(&mut old),
        )?;
        // The child runs on a stack of its own, in the master's memory (CLONE_VM), while the
        // master's thread waits (CLONE_VFORK) until it has exec'd or exited. Nothing is
        // copied, so starting a worker costs the same whatever the master's size.
        let mut args = ChildArgs {
            plan: &mut self,
            err_w: err_w.as_raw_fd(),
            path,
            argv,
            envp,
        };
        let top = stack.top();
        // SAFETY: `child_entry` runs only `child_after_fork`: async-signal-safe system calls on
        // memory prepared before the clone, no allocation, no locks, no unwinding, ending in
        // `execve` or `_exit`. Every signal is blocked (above) until the child has reset the
        // handlers, so no handler of the master runs on the child's stack. `stack` and `args`
        // outlive the child's use of them: CLONE_VFORK suspends this thread until the child
        // exec'd or exited.
        let pid = unsafe {
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut args as *mut ChildArgs<'_>).cast(),
            )
        };
        let fork_errno = io::Error::last_os_error();
        drop(stack);
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&old),
            None,
        );
        if pid < 0 {
            return Err(fork_errno);
        }
        drop(err_w);
        let mut buf = [0u8; 4];
        let mut got = 0;
        let mut err_file = std::fs::File::from(err_r);
        loop {
            match err_file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    if got == buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            return Ok(Pid::from_raw(pid));
        }
        // The child failed before or at exec and is exiting: reap it here, so the master's
        // reaper never sees a pid it was not told about.
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(Pid::from_raw(pid), None)
        {
        }
        let errno = i32::from_ne_bytes(buf);
        Err(io::Error::from_raw_os_error(errno))
    }

    /// The child's side. Never returns.
    ///
    /// # Safety
    ///
    /// Must be called only in the child of `clone(CLONE_VM | CLONE_VFORK)` or `fork`, once, with
    /// every signal blocked. Everything here is an async-signal-safe system call on memory that
    /// was allocated before; with `CLONE_VM` that memory is the parent's, which is suspended.
    unsafe fn child_after_fork(
        &mut self,
        err_w: RawFd,
        path: &CString,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> ! {
        // SAFETY: only raw, async-signal-safe system calls on memory allocated before the fork;
        // no allocation, no locks, no panics (indexing goes through `get`, which cannot panic).
        unsafe {
            let fail = |err_w: RawFd| -> ! {
                let errno = *libc::__errno_location();
                let bytes = errno.to_ne_bytes();
                libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127)
            };
            let n = self.sources.len() as RawFd;
            let floor = FIRST_INHERITED_FD + n;
            // Pass 1: move everything we need above the target range.
            let err_w = if err_w < floor {
                let moved = libc::fcntl(err_w, libc::F_DUPFD_CLOEXEC, floor);
                if moved < 0 {
                    fail(err_w); // still open and valid here
                }
                moved
            } else {
                err_w
            };
            let stdin = libc::fcntl(self.stdin, libc::F_DUPFD_CLOEXEC, floor);
            if stdin < 0 {
                fail(err_w);
            }
            for i in 0..self.sources.len() {
                let (Some(&src), Some(slot)) = (self.sources.get(i), self.scratch.get_mut(i))
                else {
                    libc::_exit(127)
                };
                let d = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, floor);
                if d < 0 {
                    fail(err_w);
                }
                *slot = d;
            }
            // Pass 2: onto the targets. dup2 clears FD_CLOEXEC on the new number.
            if libc::dup2(stdin, 0) < 0 {
                fail(err_w);
            }
            for (i, &tmp) in self.scratch.iter().enumerate() {
                if libc::dup2(tmp, FIRST_INHERITED_FD + i as RawFd) < 0 {
                    fail(err_w);
                }
            }
            // Anything else the master holds without close-on-exec (fds it inherited from its
            // own parent, or that a C library opened carelessly) must not reach the worker:
            // mark every fd from `floor` up close-on-exec. Marking, not closing, keeps the
            // exec-error pipe working until the exec itself.
            if libc::syscall(
                libc::SYS_close_range,
                floor as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                // Kernels before 5.11: walk the table up to the soft fd limit.
                let mut lim: libc::rlimit = std::mem::zeroed();
                let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur.min(1 << 16) as RawFd
                } else {
                    1024
                };
                let mut fd = floor;
                while fd < top {
                    let fl = libc::fcntl(fd, libc::F_GETFD);
                    if fl >= 0 && fl & libc::FD_CLOEXEC == 0 {
                        libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
                    }
                    fd += 1;
                }
            }
            // Signals: default handlers, empty mask.
            for &sig in &self.handled {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
            // A SIGPIPE ignored by the Rust runtime of the master goes back to the default,
            // as std's Command does.
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                fail(err_w);
            }
            // Die with the master, and close the race where it died before the prctl.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                fail(err_w);
            }
            if libc::getppid() != self.master_pid {
                libc::_exit(1);
            }
            // Runtime options.
            if let Some(inc) = self.nice {
                let cur = {
                    *libc::__errno_location() = 0;
                    libc::getpriority(libc::PRIO_PROCESS, 0)
                };
                if libc::setpriority(libc::PRIO_PROCESS, 0, cur.saturating_add(inc)) != 0 {
                    fail(err_w);
                }
            }
            if let Some(set) = &self.affinity
                && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0
            {
                fail(err_w);
            }
            for (res, lim) in &self.rlimits {
                if libc::setrlimit(*res, lim) != 0 {
                    fail(err_w);
                }
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(err_w)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_pipe_holds_large_documents_and_refuses_what_cannot_fit() {
        let doc = vec![b'x'; 300 * 1024];
        let r = context_pipe(&doc).expect("300 KiB fits once the pipe is grown");
        let mut back = Vec::new();
        std::fs::File::from(r).read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), doc.len());
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap();
        let too_big = vec![b'x'; max + 1];
        match context_pipe(&too_big) {
            Err(Error::ContextTooLarge { len, .. }) => assert_eq!(len, max + 1),
            other => panic!("expected ContextTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn the_signals_with_handlers_are_found() {
        // The test harness installs none for SIGUSR2; install one and look for it.
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id = signal_hook::flag::register(libc::SIGUSR2, flag).unwrap();
        assert!(handled_signals().contains(&libc::SIGUSR2));
        signal_hook::low_level::unregister(id);
    }
}
