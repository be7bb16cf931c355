//! The raw system calls of the library, outside the child between fork and exec.
//!
//! # Safety
//!
//! This module and `spawn::child` are the only places allowed `unsafe` (the crate denies it
//! everywhere else). The argument is the same for every function here: each wraps one system
//! call whose only preconditions are about file descriptors and signal dispositions, and states
//! which in its `SAFETY` note. Three kinds of call need it:
//!
//! * **Adopting an fd number** that the master put in a worker's fd table (the readiness socket,
//!   the declared listeners): the number is open (checked with `F_GETFD` first) and no other
//!   owner exists in this process (the boot reads the header once; the listener claims are
//!   recorded under a lock).
//! * **Signal dispositions**: `sigaction` with `SIG_DFL` or `SIG_IGN` installs no code, so it
//!   cannot break a handler's invariants; the query form writes only into a local struct.
//! * **The environment**: removing the worker marker at boot, before the program starts threads.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;

/// `fcntl(fd, F_SETFD, FD_CLOEXEC)` on an fd number this process has but does not own yet, so
/// the worker's own children do not inherit it.
pub(crate) fn set_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD change only the fd table entry's close-on-exec flag.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Borrows an inherited fd number for a check.
///
/// The caller guarantees that `fd` is open and stays open while the borrow lives (it was
/// checked open, and only the caller could close it).
pub(crate) fn borrow_inherited(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: per the caller's guarantee above (every caller holds the fd claims lock or the
    // boot's single-threaded start, and checked that the number is open).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Takes ownership of an inherited fd number.
///
/// The caller guarantees that `fd` is open and that no other owner of it exists or will be made
/// in this process (see the module docs).
pub(crate) fn own_inherited(fd: RawFd) -> OwnedFd {
    // SAFETY: per the caller's guarantee above.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `dup2(fd, 0)`: points standard input somewhere else once the boot document is read.
pub(crate) fn replace_stdin(with: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: dup2 onto fd 0, which std's stdin handle reads through the same number; the only
    // reader (the boot) has released its lock and will not read again.
    if unsafe { libc::dup2(with.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The current disposition of `sig` (`sigaction` with a null new action).
fn disposition(sig: libc::c_int) -> Option<libc::sighandler_t> {
    // SAFETY: a zeroed sigaction is a valid value of the plain C struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query: the null new action changes nothing; `old` is a local struct. It fails
    // harmlessly (EINVAL) for SIGKILL, SIGSTOP and the signals glibc reserves.
    let ok = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
    ok.then_some(old.sa_sigaction)
}

/// Every signal (real-time ones included) whose disposition is not the default: those with a
/// handler and those ignored. A new worker resets exactly these.
pub(crate) fn non_default_signals() -> Vec<libc::c_int> {
    (1..=libc::SIGRTMAX())
        .filter(|&sig| disposition(sig).is_some_and(|d| d != libc::SIG_DFL))
        .collect()
}

/// Sets `sig` to `SIG_DFL` or `SIG_IGN`; a handler is never installed here.
fn set_plain_disposition(sig: libc::c_int, ignore: bool) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value of the plain C struct.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: SIG_DFL/SIG_IGN install no code in this process (see the module docs).
    if unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resets every signal that was *ignored* when this process started (an inherited `SIG_IGN`
/// survives exec) to its default, except `keep`. Signals with handlers are left alone: they
/// are this program's own.
pub(crate) fn reset_inherited_ignores(keep: &[libc::c_int]) {
    for sig in 1..=libc::SIGRTMAX() {
        if keep.contains(&sig) || disposition(sig) != Some(libc::SIG_IGN) {
            continue;
        }
        let _ = set_plain_disposition(sig, false);
    }
}

/// `SIGPIPE` ignored: a write to a closed pipe or socket returns `EPIPE` instead of killing.
/// (The Rust runtime already does this at start; a master re-asserts it.)
pub(crate) fn ignore_sigpipe() {
    let _ = set_plain_disposition(libc::SIGPIPE, true);
}

/// `SIG_IGN` for `sig` (single-process mode ignores `SIGHUP`, as a worker does).
pub(crate) fn ignore_signal(sig: libc::c_int) {
    let _ = set_plain_disposition(sig, true);
}

/// Empties this thread's signal mask (a parent may have started the master with signals
/// blocked, which would keep `SIGCHLD`, `SIGHUP` and `SIGTERM` from ever arriving).
pub(crate) fn unblock_all_signals() -> io::Result<()> {
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(io::Error::from)
}

/// Removes a variable from the environment.
///
/// Called once, at the start of a worker, before the program has started threads of its own
/// (`default_main` and `args()` are documented to be called first in `main`).
pub(crate) fn remove_env(key: &str) {
    // SAFETY: per the precondition above, no other thread reads the environment concurrently;
    // std's own accesses are serialised by its lock.
    unsafe { std::env::remove_var(key) };
}

/// `dup2(/dev/null, fd)`: closes the open file behind `fd` for this process while the number
/// stays open (now on `/dev/null`), so whoever owns the number keeps a valid fd. This is how the
/// master lets go of a shared listening socket whose owner (the application's `fork` closure)
/// it cannot drop.
pub(crate) fn detach_fd(fd: RawFd) -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 atomically replaces what `fd` refers to; the number stays open and owned by
    // its owner, who sees a valid (if useless) fd from now on. No memory is passed.
    if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_ATTACH_REUSEPORT_CBPF`: 51 in `asm-generic/socket.h`, which every architecture uses
/// but mips, sparc, parisc and alpha (not wired here: the option is then unsupported).
const SO_ATTACH_REUSEPORT_CBPF: Option<libc::c_int> = if cfg!(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)) {
    None
} else {
    Some(51)
};

/// `setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog)`: makes the classic BPF
/// program `prog` the socket-selection program of the `SO_REUSEPORT` group `fd` belongs to
/// (replacing the group's previous one). The kernel checks the program (a bad one is
/// `EINVAL`) and copies it: `prog` need not outlive the call.
pub(crate) fn attach_reuseport_cbpf(
    fd: BorrowedFd<'_>,
    prog: &[libc::sock_filter],
) -> io::Result<()> {
    let Some(option) = SO_ATTACH_REUSEPORT_CBPF else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_ATTACH_REUSEPORT_CBPF is not wired for this architecture",
        ));
    };
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer (copy_from_user).
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fd` is a valid borrowed fd; `fprog` points at `len` initialised `sock_filter`s
    // that live until the call returns, and its size is passed exactly. The kernel copies the
    // program and keeps no pointer into this process.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's effective uid (`geteuid`).
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no argument, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// A listening TCP socket's accept queue: (connections waiting, the queue's capacity), from
/// `getsockopt(IPPROTO_TCP, TCP_INFO)`. For a socket in `LISTEN` the kernel reports them in
/// `tcpi_unacked` and `tcpi_sacked` (`tcp_get_info` in `net/ipv4/tcp.c`, what `ss -lt` shows).
/// `None` for a socket that is not a listening TCP socket.
pub(crate) fn tcp_listen_queue(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    const TCP_LISTEN: u8 = 10; // include/net/tcp_states.h
    // SAFETY: a zeroed tcp_info is a valid value of the plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a local struct of that size,
    // and stores the length it wrote in `len`; `fd` is borrowed, so it is open.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0 && info.tcpi_state == TCP_LISTEN).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

/// `CLOCK_MONOTONIC` in nanoseconds (`clock_gettime`, answered by the vDSO: no system call).
/// The clock is system-wide, so a worker's reading and its master's compare directly; it is
/// the clock `std::time::Instant` reads.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local struct; CLOCK_MONOTONIC always exists on
    // Linux, so it cannot fail (and on failure `ts` stays zero, a harmless value).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The seals a scoreboard file carries: its size can never change again, and neither can its
/// seals. A file that could shrink would make every process that maps it fault (`SIGBUS`) on
/// the pages beyond the new end.
const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A new shared-memory file of `len` bytes (`memfd_create` with `MFD_CLOEXEC |
/// MFD_ALLOW_SEALING`, `ftruncate`), sealed against any change of size (`F_ADD_SEALS`).
pub(crate) fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by memfd_create: open, and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd too large"))?;
    nix::unistd::ftruncate(&fd, len).map_err(io::Error::from)?;
    // SAFETY: F_ADD_SEALS changes only the file's seals; no memory is passed.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Whether `fd` is a file whose size is sealed (`F_GET_SEALS` includes shrink and grow).
pub(crate) fn size_is_sealed(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GET_SEALS reads the file's seals; no memory is passed. -1 (not a memfd) is
    // "not sealed".
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) != 0
}

/// A `MAP_SHARED` read-write mapping of a whole sealed file, seen as an array of `AtomicU64`.
///
/// Every bit pattern is a valid `AtomicU64` and every access to one is atomic, so sharing the
/// words with other processes (which may write anything at any time) is sound: a value can be
/// wrong, never undefined behaviour. The file's size is sealed, so the pages never go away
/// under the mapping.
#[derive(Debug)]
pub(crate) struct SharedWords {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    words: usize,
}

// SAFETY: the mapping is only ever accessed through `&[AtomicU64]`, which is Send and Sync.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps all of `fd` (`fstat` for its size, `mmap(PROT_READ | PROT_WRITE, MAP_SHARED)`).
    /// The file's size must be sealed ([`size_is_sealed`]) and a whole number of words.
    pub(crate) fn map(fd: BorrowedFd<'_>) -> io::Result<Self> {
        if !size_is_sealed(fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a memory file sealed against resizing",
            ));
        }
        let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
        let len = usize::try_from(st.st_size).unwrap_or(0);
        let word = std::mem::size_of::<u64>();
        if len == 0 || len % word != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a shared memory file of {len} bytes"),
            ));
        }
        // SAFETY: a new shared mapping of the file's whole (sealed) length; no existing memory
        // is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedWords {
            ptr,
            words: len / word,
        })
    }

    /// The mapping as words.
    pub(crate) fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `ptr` is a page-aligned (so 8-byte-aligned) mapping of `words` × 8 bytes,
        // valid until `drop` unmaps it, which cannot happen while this borrow lives. Every bit
        // pattern is a valid AtomicU64, and other processes' writes to the same pages are
        // atomic accesses too (see the type's docs).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length; no borrow of it outlives `self`.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.words * std::mem::size_of::<u64>(),
            )
        };
    }
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`: orphaned descendants are re-parented to this process.
pub(crate) fn become_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Sets or clears `FD_CLOEXEC` on an fd this process owns (an upgrade keeps the master's fds
/// open across its own `execve`, and makes them close-on-exec again if the exec fails).
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD change only the fd table entry's close-on-exec flag.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A memfd holding `bytes`, sealed against any change (write, shrink, grow, more seals),
/// close-on-exec.
pub(crate) fn frozen_memfd(name: &std::ffi::CStr, bytes: &[u8]) -> io::Result<OwnedFd> {
    use std::io::Write;
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by memfd_create: open, and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    // Read from the start by whoever gets it (a child's standard input shares this offset).
    std::io::Seek::rewind(&mut file)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS changes only the file's seals; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Whether `fd` is a memfd sealed against writes (what [`frozen_memfd`] makes).
pub(crate) fn is_frozen(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GET_SEALS reads the file's seals; no memory is passed.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_WRITE != 0
}

/// Blocks every signal in the calling thread; returns the mask it replaced.
pub(crate) fn block_all_signals() -> io::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(io::Error::from)?;
    Ok(old)
}

/// Puts back a signal mask that [`block_all_signals`] returned.
pub(crate) fn restore_signal_mask(old: &nix::sys::signal::SigSet) {
    use nix::sys::signal::{SigmaskHow, pthread_sigmask};
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old), None);
}
