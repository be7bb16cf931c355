//! The child between `clone` and `execve`.
//!
//! The child must now be considered hamstrung: it shares the master's memory (`CLONE_VM`)
//! while the master's thread waits for it (`CLONE_VFORK`), so it may run only async-signal-safe
//! system calls on memory prepared before the clone: no allocation, no locks, no logging, no
//! panics. Every step below returns `Result<(), Errno>` and the one exit path,
//! [`ChildPlan::run`], writes the errno down the exec-error pipe and `_exit(127)`s.
//!
//! The steps, in order:
//! 1. [`move_fds`](ChildPlan::move_fds): every source fd, and the exec-error pipe, is first
//!    duplicated above the highest target number (`F_DUPFD_CLOEXEC`), then `dup2`ed onto its
//!    target: two passes, so a source whose number is another mapping's target is never
//!    clobbered. `dup2` clears close-on-exec on the target only, in the child only.
//! 2. [`cloexec_from`]: every fd from there up is marked close-on-exec
//!    (`close_range(CLOSE_RANGE_CLOEXEC)`), so fds the master inherited without the flag do not
//!    leak into workers. Marking, not closing, keeps the exec-error pipe working.
//! 3. [`reset_signals`](ChildPlan::reset_signals): every disposition that is not the default
//!    (found in the parent) goes back to the default, `SIGHUP` is ignored (a terminal hang-up
//!    must not kill workers), and the signal mask is emptied: a forked child inherits
//!    handlers, ignores and the mask, and `execve` keeps the ignores and the mask.
//! 4. [`apply_limits`](ChildPlan::apply_limits): `setpriority`, `sched_setaffinity`,
//!    `setrlimit` (while still privileged: a negative nice or a raised hard limit needs it).
//! 5. [`set_identity`](ChildPlan::set_identity): `setgroups`, then `setgid`, then `setuid`
//!    (once the uid is dropped, the groups could no longer be changed).
//! 6. [`die_with_master`](ChildPlan::die_with_master): `PR_SET_PDEATHSIG(SIGKILL)`, then
//!    `getppid()` against the master's pid closes the race where the master died first. The
//!    death signal follows the *thread* that forked, so the master spawns only from its loop;
//!    and the kernel clears it when the credentials change, so it comes after step 5.
//! 7. `execve`.

#![allow(unsafe_code)]

use std::convert::Infallible;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};

use nix::errno::Errno;
use nix::libc;

use super::argv::CStringArray;
use super::credentials::Credentials;
use crate::context::RuntimeOptions;
use crate::process::Pid;

/// The first fd number given to declared sockets in a worker.
pub const FIRST_INHERITED_FD: RawFd = 3;

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
        // SAFETY: `base` is the mapping made in `new`, of CHILD_STACK + GUARD bytes; the child
        // that used it has exec'd or exited (CLONE_VFORK), so nothing refers to it any more.
        unsafe { libc::munmap(self.base, CHILD_STACK + GUARD) };
    }
}

/// Everything the child needs between clone and exec, prepared (allocated) in the parent.
pub(crate) struct ChildPlan {
    /// Source fds; source i goes to fd `FIRST_INHERITED_FD + i`.
    sources: Vec<RawFd>,
    /// Scratch space, same length as `sources`, written in the child without allocating.
    scratch: Vec<RawFd>,
    stdin: RawFd,
    master_pid: libc::pid_t,
    nice: Option<i32>,
    /// Signals whose disposition is not the default in the master (queried before the clone).
    non_default: Vec<libc::c_int>,
    affinity: Option<libc::cpu_set_t>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// The identity to take, resolved in the parent.
    credentials: Option<Credentials>,
    path: CStringArray,
    argv: CStringArray,
    envp: CStringArray,
}

impl std::fmt::Debug for ChildPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildPlan")
            .field("sources", &self.sources)
            .field("stdin", &self.stdin)
            .finish_non_exhaustive()
    }
}

/// What the parent prepared: the program and its strings.
pub(crate) struct Program {
    /// A one-element array holding the path (so it shares the owner type).
    pub path: CStringArray,
    pub argv: CStringArray,
    pub envp: CStringArray,
}

impl ChildPlan {
    pub fn new(
        sources: Vec<RawFd>,
        stdin: RawFd,
        opts: &RuntimeOptions,
        credentials: Option<Credentials>,
        program: Program,
    ) -> io::Result<Self> {
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
            non_default: crate::sys::non_default_signals(),
            affinity,
            rlimits,
            credentials,
            path: program.path,
            argv: program.argv,
            envp: program.envp,
        })
    }

    /// Starts the child (`clone` with `CLONE_VM | CLONE_VFORK`, as glibc's `posix_spawn` does)
    /// and execs. Returns the child's pid once `execve` succeeded, or the child's errno (after
    /// reaping it) when anything before or at `execve` failed.
    pub fn spawn(mut self) -> io::Result<Pid> {
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
        let mut args = ChildArgs {
            plan: &mut self,
            err_w: err_w.as_raw_fd(),
        };
        let top = stack.top();
        // SAFETY: `child_entry` runs only `ChildPlan::run`: async-signal-safe system calls on
        // memory prepared before the clone, no allocation, no locks, no unwinding, ending in
        // `execve` or `_exit`. Every signal is blocked (above) until the child has reset the
        // dispositions, so no handler of the master runs on the child's stack. `stack` and
        // `args` outlive the child's use of them: CLONE_VFORK suspends this thread until the
        // child exec'd or exited.
        let pid = unsafe {
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut args as *mut ChildArgs<'_>).cast(),
            )
        };
        let clone_error = io::Error::last_os_error();
        drop(stack);
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&old),
            None,
        );
        if pid < 0 {
            return Err(clone_error);
        }
        drop(err_w);
        let mut buf = [0u8; 4];
        let mut got = 0;
        let mut err_file = std::fs::File::from(err_r);
        while got < buf.len() {
            match err_file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            return Ok(Pid::from_raw(pid));
        }
        // The child failed before or at exec and is exiting: reap it here, so the master's
        // reaper never sees a pid it was not told about.
        while let Err(Errno::EINTR) = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
        {
        }
        Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)))
    }

    /// The child's side: the steps in order, then `execve`; on any failure the errno goes down
    /// `err_w` and the child `_exit(127)`s. Never returns.
    ///
    /// # Safety
    ///
    /// Only in the child of `clone(CLONE_VM | CLONE_VFORK)`, once, with every signal blocked.
    unsafe fn run(&mut self, err_w: RawFd) -> ! {
        // SAFETY: per this function's contract.
        let errno = match unsafe { self.steps(err_w) } {
            Err((e, fd)) => (e as i32, fd),
            Ok(never) => match never {},
        };
        let bytes = errno.0.to_ne_bytes();
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `bytes` is on this stack.
        unsafe {
            libc::write(errno.1, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }

    /// The steps; on failure, the errno and the (possibly moved) exec-error fd to report on.
    ///
    /// # Safety
    ///
    /// As [`run`](Self::run).
    unsafe fn steps(&mut self, err_w: RawFd) -> Result<Infallible, (Errno, RawFd)> {
        // SAFETY: each step is called as its contract says: in the child (the contract of
        // `run`), with every signal blocked, in this order.
        let err_w = unsafe { self.move_fds(err_w) }.map_err(|e| (e, err_w))?;
        let floor = FIRST_INHERITED_FD + self.sources.len() as RawFd;
        let fail = |e: Errno| (e, err_w);
        // SAFETY: as above.
        unsafe { cloexec_from(floor) };
        // SAFETY: as above.
        unsafe { self.reset_signals() }.map_err(fail)?;
        // SAFETY: as above.
        unsafe { self.apply_limits() }.map_err(fail)?;
        // SAFETY: as above.
        unsafe { self.set_identity() }.map_err(fail)?;
        // SAFETY: as above.
        unsafe { self.die_with_master() }.map_err(fail)?;
        let (Some(path), argv, envp) = (self.path.first(), &self.argv, &self.envp) else {
            return Err(fail(Errno::EINVAL));
        };
        // SAFETY: the arrays are null-terminated and point into strings that `self` owns.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Err(fail(Errno::last()))
    }

    /// Step 1: the two-pass fd move. Returns the exec-error pipe's fd, moved above the targets
    /// if it was in their range.
    ///
    /// # Safety
    ///
    /// In the child only (it rewrites the fd table the master's memory describes).
    unsafe fn move_fds(&mut self, err_w: RawFd) -> Result<RawFd, Errno> {
        let floor = FIRST_INHERITED_FD + self.sources.len() as RawFd;
        // SAFETY: fcntl and dup2 on fd numbers; no memory is passed.
        unsafe {
            let err_w = if err_w < floor {
                cvt(libc::fcntl(err_w, libc::F_DUPFD_CLOEXEC, floor))?
            } else {
                err_w
            };
            let stdin = cvt(libc::fcntl(self.stdin, libc::F_DUPFD_CLOEXEC, floor))?;
            for (src, tmp) in self.sources.iter().zip(self.scratch.iter_mut()) {
                *tmp = cvt(libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, floor))?;
            }
            cvt(libc::dup2(stdin, 0))?;
            for (target, &tmp) in (FIRST_INHERITED_FD..).zip(self.scratch.iter()) {
                cvt(libc::dup2(tmp, target))?;
            }
            Ok(err_w)
        }
    }

    /// Step 3: default dispositions, `SIGHUP` ignored, empty mask.
    ///
    /// # Safety
    ///
    /// In the child only, with every signal blocked.
    unsafe fn reset_signals(&self) -> Result<(), Errno> {
        // SAFETY: sigaction with SIG_DFL/SIG_IGN installs no code; the structs are local.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            for &sig in &self.non_default {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
            // The Rust runtime's SIG_IGN of SIGPIPE goes back to the default, as std's
            // Command does (it is in `non_default` too; this keeps it true if the query failed).
            libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
            let mut ign: libc::sigaction = std::mem::zeroed();
            ign.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGHUP, &ign, std::ptr::null_mut());
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let r = libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if r != 0 {
                return Err(Errno::from_raw(r));
            }
        }
        Ok(())
    }

    /// Step 5: the identity: supplementary groups, then gid, then uid.
    ///
    /// # Safety
    ///
    /// In the child only.
    unsafe fn set_identity(&self) -> Result<(), Errno> {
        let Some(c) = &self.credentials else {
            return Ok(());
        };
        // SAFETY: setgroups reads `groups`, prepared in the parent and not changed since;
        // setgid and setuid take numbers.
        unsafe {
            if let Some(groups) = &c.groups {
                cvt(libc::setgroups(groups.len(), groups.as_ptr()))?;
            }
            if let Some(gid) = c.gid {
                cvt(libc::setgid(gid))?;
            }
            if let Some(uid) = c.uid {
                cvt(libc::setuid(uid))?;
            }
        }
        Ok(())
    }

    /// Step 6: die with the master, and close the race where it died before the `prctl`.
    ///
    /// # Safety
    ///
    /// In the child only.
    unsafe fn die_with_master(&self) -> Result<(), Errno> {
        // SAFETY: prctl and getppid take no memory; _exit ends the child.
        unsafe {
            cvt(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if libc::getppid() != self.master_pid {
                libc::_exit(1);
            }
        }
        Ok(())
    }

    /// Step 4: the runtime options.
    ///
    /// # Safety
    ///
    /// In the child only.
    unsafe fn apply_limits(&self) -> Result<(), Errno> {
        // SAFETY: each call reads only memory prepared in the parent (`affinity`, `rlimits`).
        unsafe {
            if let Some(inc) = self.nice {
                *libc::__errno_location() = 0;
                let cur = libc::getpriority(libc::PRIO_PROCESS, 0);
                cvt(libc::setpriority(
                    libc::PRIO_PROCESS,
                    0,
                    cur.saturating_add(inc),
                ))?;
            }
            if let Some(set) = &self.affinity {
                cvt(libc::sched_setaffinity(
                    0,
                    std::mem::size_of::<libc::cpu_set_t>(),
                    set,
                ))?;
            }
            for (res, lim) in &self.rlimits {
                cvt(libc::setrlimit(*res, lim))?;
            }
        }
        Ok(())
    }
}

/// Step 2: every fd from `floor` up close-on-exec.
///
/// # Safety
///
/// In the child only.
unsafe fn cloexec_from(floor: RawFd) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC and fcntl(F_SETFD) change only fd flags.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            floor as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        // Kernels before 5.11: walk the table up to the soft fd limit.
        let mut lim: libc::rlimit = std::mem::zeroed();
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 16) as RawFd
        } else {
            1024
        };
        for fd in floor..top {
            let fl = libc::fcntl(fd, libc::F_GETFD);
            if fl >= 0 && fl & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
            }
        }
    }
}

/// A system call's `-1` as its errno (read without allocating).
fn cvt(r: libc::c_int) -> Result<libc::c_int, Errno> {
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// What `child_entry` receives.
struct ChildArgs<'a> {
    plan: &'a mut ChildPlan,
    err_w: RawFd,
}

/// The entry point of the cloned child. Never returns.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed to `clone`; it lives on the
    // suspended parent's stack until this child exec'd or exited, and this is the child of
    // that clone, with every signal blocked.
    unsafe {
        let a = &mut *(arg as *mut ChildArgs<'_>);
        a.plan.run(a.err_w)
    }
}
