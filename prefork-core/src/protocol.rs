//! What travels from the master to a worker (its standard input) and back (the readiness socket).
//!
//! Master → worker: one line of JSON (the header: version, generation, readiness mode, the
//! inherited fds and their kinds, the thread count, the master's argv), then the context as its
//! [`encode`](crate::WorkerContext::encode) produced it, up to end-of-file. The master writes the
//! whole document into the pipe before forking and closes its end, so end-of-file comes as soon
//! as the worker has read it all.
//!
//! Worker → master: one datagram `ready <pid>` on a `SOCK_DGRAM` socket pair whose worker end all
//! workers share (it is mapped to the fd named in the header). Datagrams keep messages whole, and
//! one socket serves any number of workers, so the master's fd count does not grow with them.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::fd::ListenerKind;

/// The environment variable that tells a process it is a worker. Removed at worker start.
pub const WORKER_ENV: &str = "PREFORK_WORKER";

/// Header version.
pub(crate) const VERSION: u32 = 1;

/// How the master learns that a new worker is ready to serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Ready when the worker function is entered (the library reports it).
    #[default]
    Implicit,
    /// Ready when the worker calls [`worker::ready`](crate::worker::ready); until then, or
    /// past the deadline, it is still starting.
    Explicit,
}

/// The first line of what a worker reads on standard input.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub v: u32,
    pub generation: u64,
    pub readiness: Readiness,
    pub notify_fd: Option<RawFd>,
    pub fds: Vec<(RawFd, ListenerKind)>,
    pub threads: Option<usize>,
    pub master_args: Vec<String>,
    /// The master's pid, so the worker can re-arm its parent-death signal after the exec.
    #[serde(default)]
    pub master_pid: Option<i32>,
}

/// The readiness message.
pub(crate) fn ready_message(pid: u32) -> String {
    format!("ready {pid}")
}

/// Parses a readiness message.
pub(crate) fn parse_ready(msg: &[u8]) -> Option<i32> {
    let s = std::str::from_utf8(msg).ok()?;
    s.strip_prefix("ready ")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_roundtrip() {
        assert_eq!(parse_ready(ready_message(42).as_bytes()), Some(42));
        assert_eq!(parse_ready(b"garbage"), None);
        assert_eq!(parse_ready(b"ready x"), None);
    }
}
