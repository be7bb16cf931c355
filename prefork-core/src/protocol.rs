//! What travels from the master to a worker: the marker variable and the boot document.
//!
//! The master sets [`WORKER_ENV`] to `master:<its pid>` in a new worker's environment; only
//! that exact form makes a process a worker (a stray `PREFORK_WORKER=1` or an empty value does
//! not). The worker removes it before user code runs.
//!
//! On standard input the worker reads one line of JSON (the header: version, generation,
//! readiness mode, stop signal, the inherited fds and their kinds, the thread count, the
//! master's argv, the scoreboard slot), then the context as its [`encode`](crate::WorkerContext::encode) produced
//! it, up to end-of-file. The master writes the whole document into a pipe before it starts the
//! worker and closes its end, so end-of-file comes as soon as the worker has read it all. The
//! worker reads at most the largest pipe size plus 64 KiB: the master never writes more than a pipe
//! holds.
//!
//! The way back (worker → master) is the readiness socket: see [`crate::readiness`].

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use crate::fd::ListenerKind;
use crate::readiness::Readiness;

/// The environment variable that tells a process it is a worker. Removed at worker start.
pub const WORKER_ENV: &str = "PREFORK_WORKER";

/// The environment variable that asks for single-process mode: set to `1` (any value but
/// empty or `0`), [`default_main`](crate::default_main) runs the worker function in the calling
/// process, on the first context of the declared set, with no master (see the crate docs).
pub const SINGLE_ENV: &str = "PREFORK_SINGLE";

/// Header version.
pub(crate) const VERSION: u32 = 2;

/// The marker value for a worker of the master `pid`.
pub(crate) fn marker(master_pid: i32) -> String {
    format!("master:{master_pid}")
}

/// The master pid named by a marker value, if it has the exact form.
pub(crate) fn parse_marker(value: &str) -> Option<i32> {
    let digits = value.strip_prefix("master:")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&p: &i32| p > 0)
}

/// The most a worker reads from standard input: the largest pipe the system allows, plus room
/// for the header.
pub(crate) fn max_document_len() -> usize {
    pipe_max_size() + 64 * 1024
}

/// `/proc/sys/fs/pipe-max-size` (1 MiB when it cannot be read).
pub(crate) fn pipe_max_size() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(1 << 20)
}

/// The first line of what a worker reads on standard input.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub v: u32,
    pub generation: u64,
    pub readiness: Readiness,
    /// The signal that asks this worker to stop (the master's
    /// [`Settings::stop_signal`](crate::Settings::stop_signal)).
    pub stop_signal: i32,
    /// Where the readiness socket is.
    pub readiness_fd: Option<RawFd>,
    pub fds: Vec<(RawFd, ListenerKind)>,
    /// The declared fds that the master keeps non-blocking, checked at boot.
    pub nonblocking: Vec<RawFd>,
    /// The declared fds that are this worker id's own sockets (of a reuseport group), which a
    /// draining worker keeps accepting on until their queue is empty. Absent: none.
    #[serde(default)]
    pub per_worker: Vec<RawFd>,
    pub threads: Option<usize>,
    pub master_args: Vec<String>,
    /// The master's pid, so the worker can re-arm its parent-death signal after the exec.
    pub master_pid: i32,
    /// The worker's scoreboard slot, if the master keeps a scoreboard and had a free slot.
    /// Optional on the wire, so a master and a worker on either side of an upgrade that added
    /// it still understand each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoreboard: Option<ScoreboardGrant>,
}

/// Where a worker finds its scoreboard slot (see the `scoreboard` module), and what it is asked
/// to do with it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct ScoreboardGrant {
    /// The inherited fd of the region.
    pub fd: RawFd,
    /// The slot number.
    pub slot: u32,
    /// How often to beat, in milliseconds (0: no need to, hang detection is off).
    pub beat_ms: u64,
    /// The request count at which the worker tells the master it reached its budget.
    pub max_requests: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_marker_counts() {
        assert_eq!(parse_marker(&marker(1234)), Some(1234));
        for v in [
            "",
            "0",
            "1",
            "master:",
            "master:0",
            "master:-3",
            "master:12x",
            "yes",
        ] {
            assert_eq!(parse_marker(v), None, "{v:?}");
        }
    }
}
