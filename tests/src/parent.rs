//! What a parent can hand down to the master it starts, for the tests that check the master
//! does not simply trust it: a blocked signal mask, ignored signals, a low fd limit, a process
//! group of its own.
//!
//! Everything here runs in std's `pre_exec`, in the forked child, after std reset the signal
//! mask and set up stdio, and right before `exec`: only async-signal-safe calls, no allocation.
//! A blocked mask and `SIG_IGN` dispositions survive `exec`; that is the point.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::libc;
use nix::sys::signal::Signal;

/// Makes the process `cmd` starts begin life with `blocked` in its signal mask and `ignored`
/// set to `SIG_IGN`, as a careless parent (a shell script, a supervisor, a CI runner) may.
pub fn with_signal_state(cmd: &mut Command, blocked: &[Signal], ignored: &[Signal]) {
    let blocked: Vec<libc::c_int> = blocked.iter().map(|&s| s as libc::c_int).collect();
    let ignored: Vec<libc::c_int> = ignored.iter().map(|&s| s as libc::c_int).collect();
    // SAFETY: the closure runs in the forked child before exec. It calls only sigemptyset,
    // sigaddset, sigprocmask and signal, which are async-signal-safe, on a stack-allocated
    // set, and reads the two vectors allocated before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in &blocked {
                libc::sigaddset(&mut set, s);
            }
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for &s in &ignored {
                if libc::signal(s, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes the process `cmd` starts (and so what it starts) have an `RLIMIT_NOFILE` of `n`, soft
/// and hard.
pub fn with_nofile(cmd: &mut Command, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
    // which is async-signal-safe, with a value copied before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The `/proc/<pid>/status` signal-set bit of `sig` (`SigBlk:`, `SigIgn:`, `SigCgt:`).
pub fn sig_bit(sig: Signal) -> u64 {
    1 << (sig as i32 - 1)
}
