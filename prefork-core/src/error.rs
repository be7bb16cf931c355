//! The one error type of the library.

use std::io;

use crate::Pid;

/// Everything that can go wrong in the library.
///
/// OS failures keep their [`io::Error`] as the `source`, so `{:#}`-style reporters and
/// `anyhow` chains show the errno. The `Display` text of each variant is one line, meant to be
/// printed as it is: `prefork: cannot bind 127.0.0.1:3000: Address already in use (os error 98)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A worker process could not be started (fork or exec failed).
    #[error("cannot start worker {what}: {source}")]
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
    #[error("cannot read the worker context from standard input: {0}")]
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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address, as given.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] io::Error),
    /// Another system call of the master failed.
    #[error("{what}: {source}")]
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
    /// A worker was asked for while this process is not a worker.
    #[error("this process is not a prefork worker")]
    NotAWorker,
    /// A child that the master does not know about was named.
    #[error("process {0} is not a worker of this master")]
    UnknownChild(Pid),
}

impl Error {
    pub(crate) fn sys(what: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            what,
            source: source.into(),
        }
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
