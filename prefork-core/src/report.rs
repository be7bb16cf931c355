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
    /// It stopped beating for longer than [`Settings::hang_timeout`](crate::Settings::hang_timeout):
    /// its replacement was started, then it got `SIGABRT` (and `SIGKILL` after a grace).
    Hang,
    /// It served [`Settings::max_requests`](crate::Settings::max_requests) (plus its jitter)
    /// requests and was replaced, readiness-gated.
    MaxRequests,
    /// It lived [`Settings::max_age`](crate::Settings::max_age) (plus its jitter) and was
    /// replaced, readiness-gated.
    MaxAge,
    /// Its memory (PSS) passed [`Settings::max_memory`](crate::Settings::max_memory) and it
    /// was replaced, readiness-gated.
    MaxMemory,
}

impl From<ReplaceReason> for ExitReason {
    fn from(r: ReplaceReason) -> Self {
        match r {
            ReplaceReason::Hang => ExitReason::Hang,
            ReplaceReason::MaxRequests => ExitReason::MaxRequests,
            ReplaceReason::MaxAge => ExitReason::MaxAge,
            ReplaceReason::MaxMemory => ExitReason::MaxMemory,
        }
    }
}

/// Why the master replaced a worker that was still running: the health rules (see
/// [`Settings::hang_timeout`](crate::Settings::hang_timeout) and the recycling settings). The
/// status views count replacements by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplaceReason {
    /// No heartbeat for longer than the hang timeout.
    Hang,
    /// Served its request budget.
    MaxRequests,
    /// Reached its age limit.
    MaxAge,
    /// Its PSS passed the memory limit.
    MaxMemory,
}

impl ReplaceReason {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [ReplaceReason; 4] = [
        ReplaceReason::Hang,
        ReplaceReason::MaxRequests,
        ReplaceReason::MaxAge,
        ReplaceReason::MaxMemory,
    ];

    /// `hang`, `max_requests`, `max_age`, `max_memory`: the name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplaceReason::Hang => "hang",
            ReplaceReason::MaxRequests => "max_requests",
            ReplaceReason::MaxAge => "max_age",
            ReplaceReason::MaxMemory => "max_memory",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ReplaceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
            ExitReason::Hang => "replaced: hang",
            ExitReason::MaxRequests => "replaced: max_requests",
            ExitReason::MaxAge => "replaced: max_age",
            ExitReason::MaxMemory => "replaced: max_memory",
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
