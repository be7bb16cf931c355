//! prefork's own process vocabulary: [`Pid`], [`Signal`], [`ChildExit`].
//!
//! These are the library's types, not a dependency's: upgrading the system-call crate under the
//! library changes nothing in its API. Each converts to and from the raw number the kernel uses.

use std::fmt;
use std::str::FromStr;

use nix::libc;

/// A process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pid(i32);

impl Pid {
    /// The pid with this number.
    pub const fn from_raw(pid: i32) -> Self {
        Pid(pid)
    }

    /// The number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The calling process.
    pub fn this() -> Self {
        Pid(std::process::id() as i32)
    }

    pub(crate) fn to_nix(self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0)
    }

    pub(crate) fn from_nix(pid: nix::unistd::Pid) -> Self {
        Pid(pid.as_raw())
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u32> for Pid {
    /// A pid as `std::process` gives it ([`std::process::id`], [`std::process::Child::id`]).
    fn from(pid: u32) -> Self {
        Pid(pid as i32)
    }
}

/// A signal, by its Linux number. The constants name the ones a supervisor deals with;
/// [`FromStr`] reads `TERM`, `SIGTERM`, `term` or `15`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signal(i32);

macro_rules! signals {
    ($($name:ident = $lib:ident, $doc:literal;)*) => {
        impl Signal {
            $(
                #[doc = $doc]
                pub const $name: Signal = Signal(libc::$lib);
            )*

            /// The name without `SIG` (`TERM`), or `None` for a number without a name here
            /// (real-time signals).
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(libc::$lib => Some(&stringify!($name)[3..]),)*
                    _ => None,
                }
            }

            fn by_name(name: &str) -> Option<Signal> {
                match name {
                    $(n if n == &stringify!($name)[3..] => Some(Signal::$name),)*
                    _ => None,
                }
            }
        }
    };
}

signals! {
    SIGHUP = SIGHUP, "Hang-up: the master reloads.";
    SIGINT = SIGINT, "Interrupt (Ctrl-C).";
    SIGQUIT = SIGQUIT, "Quit.";
    SIGILL = SIGILL, "Illegal instruction.";
    SIGTRAP = SIGTRAP, "Trace trap.";
    SIGABRT = SIGABRT, "Abort.";
    SIGBUS = SIGBUS, "Bus error.";
    SIGFPE = SIGFPE, "Arithmetic fault.";
    SIGKILL = SIGKILL, "Kill (cannot be caught).";
    SIGUSR1 = SIGUSR1, "User signal 1.";
    SIGSEGV = SIGSEGV, "Segmentation fault.";
    SIGUSR2 = SIGUSR2, "User signal 2.";
    SIGPIPE = SIGPIPE, "Write to a pipe with no reader.";
    SIGALRM = SIGALRM, "Alarm clock.";
    SIGTERM = SIGTERM, "Terminate: the default stop signal.";
    SIGSTKFLT = SIGSTKFLT, "Stack fault.";
    SIGCHLD = SIGCHLD, "A child changed state.";
    SIGCONT = SIGCONT, "Continue.";
    SIGSTOP = SIGSTOP, "Stop (cannot be caught).";
    SIGTSTP = SIGTSTP, "Terminal stop.";
    SIGTTIN = SIGTTIN, "Background read from the terminal.";
    SIGTTOU = SIGTTOU, "Background write to the terminal.";
    SIGURG = SIGURG, "Urgent data on a socket.";
    SIGXCPU = SIGXCPU, "CPU time limit exceeded.";
    SIGXFSZ = SIGXFSZ, "File size limit exceeded.";
    SIGVTALRM = SIGVTALRM, "Virtual alarm clock.";
    SIGPROF = SIGPROF, "Profiling timer.";
    SIGWINCH = SIGWINCH, "Window size change.";
    SIGIO = SIGIO, "I/O possible.";
    SIGPWR = SIGPWR, "Power failure.";
    SIGSYS = SIGSYS, "Bad system call.";
}

impl Signal {
    /// The signal with this number, if the system has it (1 ..= `SIGRTMAX`).
    pub fn from_raw(sig: i32) -> Option<Signal> {
        (1..=libc::SIGRTMAX()).contains(&sig).then_some(Signal(sig))
    }

    /// The number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    pub(crate) fn to_nix(self) -> Option<nix::sys::signal::Signal> {
        nix::sys::signal::Signal::try_from(self.0).ok()
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Signal {
    /// `SIGTERM`, or `SIGRTMIN+3` / `signal 40` for the others.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "SIG{n}"),
            None if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&self.0) => {
                write!(f, "SIGRTMIN+{}", self.0 - libc::SIGRTMIN())
            }
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// The error of [`Signal::from_str`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownSignal(String);

impl fmt::Display for UnknownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown signal {:?} (expected a name such as TERM, USR1, QUIT, or a number)",
            self.0
        )
    }
}

impl std::error::Error for UnknownSignal {}

impl FromStr for Signal {
    type Err = UnknownSignal;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i32>() {
            return Signal::from_raw(n).ok_or_else(|| UnknownSignal(s.into()));
        }
        let up = t.to_ascii_uppercase();
        let bare = up.strip_prefix("SIG").unwrap_or(&up);
        Signal::by_name(bare).ok_or_else(|| UnknownSignal(s.into()))
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildExit::Exited(c) => write!(f, "exit status {c}"),
            ChildExit::Signaled(s) => write!(f, "signal {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_and_print() {
        for s in ["TERM", "SIGTERM", "term", "15"] {
            assert_eq!(s.parse::<Signal>(), Ok(Signal::SIGTERM), "{s}");
        }
        assert_eq!("usr1".parse::<Signal>(), Ok(Signal::SIGUSR1));
        assert_eq!(Signal::SIGQUIT.to_string(), "SIGQUIT");
        assert_eq!(Signal::SIGUSR2.name(), Some("USR2"));
        assert!("NOPE".parse::<Signal>().is_err());
        assert!("0".parse::<Signal>().is_err());
        assert!("99".parse::<Signal>().is_err());
        let rt = Signal::from_raw(libc::SIGRTMIN() + 3).unwrap();
        assert_eq!(rt.to_string(), "SIGRTMIN+3");
        assert_eq!(
            ChildExit::Signaled(Signal::SIGKILL).to_string(),
            "signal SIGKILL"
        );
    }
}
