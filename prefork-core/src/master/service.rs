//! What the master tells its service manager (see [`crate::systemd`]): the loop's events
//! turned into calls on the [`Link`](crate::systemd::Link), with a summary of the pool read
//! from the state machine's views.

use std::collections::BTreeSet;
use std::time::Instant;

use super::Master;
use super::pool::WorkerState;
use crate::context::WorkerContext;
use crate::report::ReloadReport;
use crate::systemd::Summary;

impl<C: 'static, W: WorkerContext> Master<C, W> {
    /// The pool as `STATUS=` tells it.
    fn service_summary(&self) -> Summary {
        let generation = self.pool.generation();
        let mut ready = BTreeSet::new();
        let mut ready_latest = BTreeSet::new();
        for v in self.pool.worker_views() {
            if v.state == WorkerState::Ready {
                if v.generation == generation {
                    ready_latest.insert(v.id.clone());
                }
                ready.insert(v.id);
            }
        }
        Summary {
            desired: self.desired.len(),
            ready: ready.len(),
            ready_latest: ready_latest.len(),
            generation,
            live: self.live().len(),
        }
    }

    /// After every turn of the loop: `STATUS=` when it changed, progress of a start or drain.
    pub(super) fn notify_turn(&mut self) {
        if self.systemd.active() {
            let s = self.service_summary();
            self.systemd.refresh(s, Instant::now());
        }
    }

    /// The start or a reload settled: `READY=1`.
    pub(super) fn notify_settled(&mut self, report: &ReloadReport<W::Id>) {
        if self.systemd.active() {
            let s = self.service_summary();
            self.systemd.settled(report, s, Instant::now());
        }
    }

    /// Nothing to wait for (hook-only settings): `READY=1` at once.
    pub(super) fn notify_ready_now(&mut self) {
        if self.systemd.active() {
            let s = self.service_summary();
            self.systemd.ready_now(s, Instant::now());
        }
    }

    /// `SIGHUP`, before anything else: `RELOADING=1` with `MONOTONIC_USEC=`.
    pub(super) fn notify_reloading(&mut self) {
        if self.systemd.active() {
            let mut s = self.service_summary();
            s.generation += 1;
            s.ready_latest = 0;
            self.systemd.reloading(s, Instant::now());
        }
    }

    /// Pings the watchdog now (if it is on): just before an upgrade's exec, and first thing
    /// after it, so the exec's gap never adds to a whole interval.
    pub(super) fn systemd_ping_watchdog(&mut self) {
        self.systemd.ping_now(Instant::now());
    }

    /// In a master exec'd by an upgrade: it is reloading (the old image said so).
    pub(super) fn systemd_resume_reloading(&mut self) {
        self.systemd.resume_reloading();
    }

    /// `SIGTERM`/`SIGINT`, before anything else: `STOPPING=1`.
    pub(super) fn notify_stopping(&mut self) {
        if self.systemd.active() {
            let s = self.service_summary();
            self.systemd.stopping(s, Instant::now());
        }
    }
}
