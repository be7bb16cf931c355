//! The one error type of the library.
//!
//! One convention throughout: a variant's `Display` says what failed, in one line, and never
//! repeats its cause; the cause (an OS error, the application's own error) is the
//! [`source`](std::error::Error::source). [`Error::report`] joins the chain into the one line a
//! program prints, as `default_main` does: `prefork: cannot listen on 127.0.0.1:3000: Address
//! already in use (os error 98)`.

use std::fmt;
use std::io;

/// Everything that can go wrong in the library.
///
/// OS failures keep their [`io::Error`] as the `source`, so chain reporters (`anyhow`'s `{:#}`,
/// [`Error::report`]) show the errno once. The `Display` text of a variant is its own part of
/// the chain only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A worker process could not be started (fork or exec failed).
    #[error("cannot start worker {what}")]
    Spawn {
        /// Which worker, as its context's id renders.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The worker context could not be encoded in the master.
    #[error("cannot encode the worker context: {0}")]
    Encode(String),
    /// The worker context handed to this process could not be decoded.
    #[error("cannot decode the worker context: {0}")]
    Decode(String),
    /// The serialized context is larger than a pipe can hold.
    #[error("the worker context is {len} bytes, more than the {max} bytes a pipe can hold")]
    ContextTooLarge {
        /// Encoded length.
        len: usize,
        /// The largest pipe the system allows.
        max: usize,
    },
    /// This process was started as a worker but its context could not be read.
    #[error("cannot read the worker context from standard input")]
    ReadContext(#[source] io::Error),
    /// An inherited fd is not what the context says it is.
    #[error("inherited fd {fd} is not a {expected}: {found}")]
    InvalidInheritedFd {
        /// The fd number in the worker.
        fd: i32,
        /// What the context declared, e.g. `listening TCP socket`.
        expected: &'static str,
        /// What it really is.
        found: String,
    },
    /// An [`InheritedListener`](crate::InheritedListener) was used in a way its side does not
    /// allow (for example turned into a listener in the master, or sent to a worker without
    /// being declared by the context).
    #[error("{0}")]
    ListenerMisuse(String),
    /// Binding or configuring a listening socket failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address, as given.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers")]
    Signal(#[source] io::Error),
    /// Another system call of the master failed.
    #[error("{what}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The configuration callback gave nothing to run at start.
    #[error("the update callback returned no configuration at start; nothing to run")]
    NoInitialConfig,
    /// The application's `fork` callback failed with its own error.
    #[error("the fork callback failed for worker {what}")]
    Fork {
        /// Which worker, as its context's id renders.
        what: String,
        /// The application's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Talking to a master's control socket failed (see [`control`](crate::control)).
    #[error("{what}")]
    Control {
        /// What was being done, with the socket's path.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A setting or a command-line value is out of range or contradicts another.
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
}

impl Error {
    /// The whole chain in one line: this error's message, then each source's, joined by `: `.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }

    pub(crate) fn sys(what: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            what,
            source: source.into(),
        }
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one-line rendering of an error and its sources; see [`Error::report`].
#[derive(Debug)]
pub struct Report<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}
