//! The worker's side of health checks: heartbeats and request counts on its scoreboard slot
//! (see the `scoreboard` module for the layout).
//!
//! All of it is a no-op outside a worker, and in a worker whose master keeps no scoreboard
//! ([`Settings::scoreboard`](crate::Settings::scoreboard)) or had no free slot.

use std::time::Duration;

use crate::scoreboard::{self, WorkerSlot};

/// Tells the master that this worker's loop is alive: one atomic store of the monotonic clock
/// into its scoreboard slot, no system call (the clock is read through the vDSO).
///
/// Call it from the loop that can hang, every [`heartbeat_interval`]: a task on the runtime
/// that serves, not a thread of its own, or a stuck loop would go on beating. With
/// [`Settings::hang_timeout`](crate::Settings::hang_timeout) set, a worker that beat once
/// after it became ready and then stops beating for longer than the timeout is replaced.
/// `prefork_http` beats for you.
#[inline]
pub fn heartbeat() {
    if let Some(s) = scoreboard::slot() {
        s.beat();
    }
}

/// How often this worker should call [`heartbeat`]: a tenth of the master's hang timeout
/// (between 5 ms and 1 s). `None` when there is no point in beating: outside a worker, without
/// a scoreboard slot, or with hang detection off (so an idle worker need not wake up for it).
pub fn heartbeat_interval() -> Option<Duration> {
    scoreboard::slot().and_then(WorkerSlot::beat_every)
}

/// Counts one request on this worker's scoreboard slot: in flight while the guard lives,
/// served when it is dropped. With [`Settings::max_requests`](crate::Settings::max_requests)
/// set, the drop that reaches the budget tells the master (one datagram on the readiness
/// socket), which then replaces this worker, readiness-gated.
///
/// ```no_run
/// # fn handle() {}
/// let _g = prefork_core::worker::request_guard();
/// handle(); // counted as in flight until `_g` drops
/// ```
#[inline]
pub fn request_guard() -> RequestGuard {
    let slot = scoreboard::slot();
    if let Some(s) = slot {
        s.begin_request();
    }
    RequestGuard { slot }
}

/// A request being served; see [`request_guard`].
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct RequestGuard {
    slot: Option<&'static WorkerSlot>,
}

impl Drop for RequestGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(s) = self.slot
            && s.end_request()
        {
            request_recycle();
        }
    }
}

/// Asks the master to consider recycling this worker now (it does if a recycling rule holds:
/// the request budget reached, the age or memory limit passed). Non-blocking: if the message
/// cannot be sent, the master's next check finds the same.
pub(crate) fn request_recycle() {
    let Some(b) = super::boot::booted() else {
        return;
    };
    if let Some(fd) = &b.readiness {
        use std::os::fd::AsFd;
        if let Err(e) = crate::readiness::report_recycle(fd.as_fd()) {
            tracing::debug!(error = %e, "cannot ask the master for a recycle");
        }
    }
}
