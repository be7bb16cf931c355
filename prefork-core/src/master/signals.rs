//! The master's signals: which it handles, and how they reach its loop.
//!
//! Handlers are signal-hook's: each records its signal and writes a byte into a self-pipe (a
//! Unix stream pair) whose read end the loop polls. [`MasterSignals::take`] drains the pipe
//! first, then reads the recorded signals, so a signal that lands while the loop works leaves a
//! byte for the next `poll` and is never lost.
//!
//! # Every signal has a defined action
//!
//! | signal | action |
//! |---|---|
//! | `HUP` | reload |
//! | `TERM`, `INT` | graceful stop; a second one `SIGKILL`s what is left |
//! | `QUIT` | `on_quit` (haskell-prefork), the master keeps running |
//! | `CHLD` | reap |
//! | `TTIN`, `TTOU` | scale up or down by one (with [`Settings::scale`](crate::Settings::scale); without it, logged and ignored). Several of one kind that arrive before the master handles the first count once, as signals do |
//! | `USR2` | upgrade the master in place (see [`crate::upgrade`]), unless a `forward_signal` names it |
//! | `USR1`, `ALRM`, `VTALRM`, `PROF`, `IO`, `PWR`, `STKFLT`, `XCPU`, `XFSZ`, `ABRT`, real-time | logged and ignored: a stray `kill -USR1` copied from an nginx set-up must not take the service down (their default action would end the master, and every worker with it) |
//! | `PIPE` | ignored (a write to a closed pipe returns `EPIPE`) |
//! | a signal named by `Settings::forward_signal` | sent on to every live worker (as the signal the setting maps it to) |
//!
//! Faults (`SEGV`, `BUS`, `ILL`, `FPE`, `TRAP`, `SYS`) keep their default: returning from a
//! handler would fault again. `KILL` and `STOP` cannot be caught.
//!
//! # What the master inherits
//!
//! A parent may start the master with signals blocked or ignored (some runtimes and
//! supervisors do). Blocked `CHLD`, `HUP` and `TERM` would mean a master that never reaps and
//! never stops. So at start the master resets every inherited `SIG_IGN` to the default,
//! installs its own handlers, and only then empties its signal mask, as nginx and systemd do.
//! (In that order: a signal left pending by the parent, or across an upgrade's exec, reaches a
//! handler, never a default action.)

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use nix::libc;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use crate::error::{Error, Result};
use crate::process::Signal;

/// The signals with a meaning of their own.
const MEANINGFUL: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGCHLD,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR2,
];

/// Signals whose default action would end the master, and that it logs and ignores.
const STRAY: [Signal; 10] = [
    Signal::SIGUSR1,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGSTKFLT,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGABRT,
];

/// The master's signal inbox.
#[derive(Debug)]
pub(crate) struct MasterSignals {
    delivery: SignalDelivery<UnixStream, SignalOnly>,
}

impl MasterSignals {
    /// Clears what the master inherited (mask, ignores) and installs its handlers, for its own
    /// signals and for `forwarded` ones.
    pub fn install(forwarded: &[Signal]) -> Result<Self> {
        crate::sys::reset_inherited_ignores(&[libc::SIGPIPE]);
        crate::sys::ignore_sigpipe();
        let (read, write) = UnixStream::pair().map_err(Error::Signal)?;
        read.set_nonblocking(true).map_err(Error::Signal)?;
        write.set_nonblocking(true).map_err(Error::Signal)?;
        let realtime = libc::SIGRTMIN()..=libc::SIGRTMAX();
        let all = MEANINGFUL
            .iter()
            .chain(STRAY.iter())
            .chain(forwarded.iter())
            .map(|s| s.as_raw())
            .chain(realtime);
        let delivery =
            SignalDelivery::with_pipe(read, write, SignalOnly, all).map_err(Error::Signal)?;
        // Only now, with every handler in place: a signal that was pending (blocked by the
        // parent, or across an upgrade's exec) reaches a handler, never a default action.
        crate::sys::unblock_all_signals().map_err(Error::Signal)?;
        Ok(MasterSignals { delivery })
    }

    /// The fd to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.delivery.get_read().as_fd()
    }

    /// The signals that arrived since the last call (each once), in signal-number order.
    pub fn take(&mut self) -> Vec<Signal> {
        self.delivery
            .pending()
            .filter_map(Signal::from_raw)
            .collect()
    }
}

/// Whether the master gives `sig` a meaning (as opposed to logging and ignoring it).
pub(crate) fn is_meaningful(sig: Signal) -> bool {
    MEANINGFUL.contains(&sig)
}

/// Why the master cannot forward `sig` to its workers, if it cannot.
pub(crate) fn reserved(sig: Signal) -> Option<&'static str> {
    Some(match sig {
        Signal::SIGHUP => "the master reloads on it",
        Signal::SIGTERM | Signal::SIGINT => "the master stops on it",
        Signal::SIGCHLD => "the master reaps its workers on it",
        Signal::SIGQUIT => "the master calls on_quit on it",
        Signal::SIGTTIN | Signal::SIGTTOU => "the master scales on it (Settings::scale)",
        Signal::SIGKILL | Signal::SIGSTOP => "it cannot be caught",
        Signal::SIGSEGV
        | Signal::SIGBUS
        | Signal::SIGILL
        | Signal::SIGFPE
        | Signal::SIGTRAP
        | Signal::SIGSYS => "it reports a fault of the master itself",
        _ => return None,
    })
}

/// Checks a signal mapping (received → sent) at start: one line saying what is wrong.
pub(crate) fn check_forwards(forwards: &[(Signal, Signal)]) -> Result<()> {
    for (i, &(from, to)) in forwards.iter().enumerate() {
        if let Some(why) = reserved(from) {
            return Err(Error::InvalidSetting(format!(
                "cannot forward {from} to the workers: {why}"
            )));
        }
        if forwards[..i].iter().any(|&(f, _)| f == from) {
            return Err(Error::InvalidSetting(format!(
                "{from} is forwarded twice (as {to} and before)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_signals_are_refused_with_a_reason() {
        assert!(check_forwards(&[(Signal::SIGUSR1, Signal::SIGUSR1)]).is_ok());
        assert!(check_forwards(&[(Signal::SIGWINCH, Signal::SIGUSR2)]).is_ok());
        for sig in [
            Signal::SIGHUP,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGCHLD,
            Signal::SIGQUIT,
            Signal::SIGKILL,
            Signal::SIGSEGV,
        ] {
            let e = check_forwards(&[(sig, Signal::SIGUSR1)]).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "invalid setting: cannot forward {sig} to the workers: "
                )),
                "{e}"
            );
        }
        let twice = [
            (Signal::SIGUSR1, Signal::SIGUSR1),
            (Signal::SIGUSR1, Signal::SIGUSR2),
        ];
        assert!(
            check_forwards(&twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
