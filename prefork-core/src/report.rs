//! What the master reports about its workers: why a worker ended, how a reload ended. The exit
//! and reload hooks receive these (see [`Settings`](crate::Settings)), and so do the status
//! views built on them.

use std::fmt;
use std::time::Duration;

use crate::context::WorkerContext;
use crate::process::{ChildExit, Pid};

/// Why a worker ended, as the master saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It had served and then died (by itself, or killed from outside).
    Crashed,
    /// It died before it served: before it was ready, within the startup window after it,
    /// or killed at its readiness deadline.
    FailedStart,
    /// A reload replaced it and it stopped.
    Retired,
    /// Its id left the desired set (or the adaptive pool retired it) and it stopped.
    Removed,
    /// It was retired or removed and did not stop by its stop deadline: `SIGKILL`.
    KilledAtDeadline,
    /// The master was stopping.
    Shutdown,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExitReason::Crashed => "crashed",
            ExitReason::FailedStart => "failed start",
            ExitReason::Retired => "retired",
            ExitReason::Removed => "removed",
            ExitReason::KilledAtDeadline => "killed at its deadline",
            ExitReason::Shutdown => "shutdown",
        })
    }
}

/// A worker that ended: what the exit hook receives.
#[derive(Clone, Debug)]
pub struct WorkerEnded<W: WorkerContext> {
    /// Its id.
    pub id: W::Id,
    /// The context it ran.
    pub context: W,
    /// Its pid (reaped: the number may be reused from now on).
    pub pid: Pid,
    /// The reload generation it was started in.
    pub generation: u64,
    /// How it ended.
    pub status: ChildExit,
    /// Why, as the master saw it.
    pub reason: ExitReason,
    /// How long it ran.
    pub uptime: Duration,
}

/// How a reload (or the start) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome<Id> {
    /// Every desired id runs a ready worker of the new generation.
    Complete,
    /// The reload gave up on these ids (each failed several starts in a row), with the last
    /// reason; their old workers keep serving, and they keep being retried with backoff.
    Incomplete {
        /// The ids, and why their last attempt failed.
        failed: Vec<(Id, String)>,
    },
    /// `update` returned no configuration (or panicked): nothing changed.
    Rejected,
}

/// A finished reload: what the reload hook receives. Generation 0 is the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadReport<Id> {
    /// The generation the reload made (0: the start).
    pub generation: u64,
    /// How it ended.
    pub outcome: ReloadOutcome<Id>,
    /// From the signal (or the start) to this outcome.
    pub took: Duration,
}
