//! The master's side of the notification protocol: which message each event of the loop
//! becomes, the `STATUS=` line, and the watchdog's timer.
//!
//! The master calls one method per event (the start or a reload settled, a reload began, a
//! stop began) and [`Link::refresh`] after every turn of its loop with a [`Summary`] of the
//! pool; `STATUS=` goes out only when its text changed, so a turn that changed nothing sends
//! nothing, and an idle master has no turns. [`Link::next_deadline`] is the watchdog's next
//! ping, part of the master's poll timeout. Without `NOTIFY_SOCKET` every method does nothing
//! and there is no deadline.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use super::Systemd;
use super::notify::{Notifier, monotonic_usec, one_line};
use crate::report::{ReloadOutcome, ReloadReport};

/// Watchdog variables.
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// The pool, as `STATUS=` tells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Ids desired.
    pub desired: usize,
    /// Ids with a ready worker.
    pub ready: usize,
    /// Ids with a ready worker of the latest generation.
    pub ready_latest: usize,
    /// The latest generation.
    pub generation: u64,
    /// Worker processes alive (any state).
    pub live: usize,
}

/// Where the master is, as the manager sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first `READY=1`.
    Starting,
    Running,
    /// Between `RELOADING=1` and its `READY=1`.
    Reloading,
    /// After `STOPPING=1`.
    Stopping,
}

/// The master's link to its service manager.
#[derive(Debug)]
pub(crate) struct Link {
    notifier: Option<Notifier>,
    watchdog: Option<Watchdog>,
    extend: Option<Duration>,
    state: State,
    /// What the last settled start or reload left to say (the ids it gave up on).
    note: Option<String>,
    /// The last `STATUS=` sent.
    status: String,
    /// The last summary seen, to notice progress.
    last: Summary,
}

#[derive(Debug)]
struct Watchdog {
    interval: Duration,
    next: Instant,
}

impl Link {
    /// The link the environment asks for, within what `opts` allows.
    pub fn new(opts: Systemd, now: Instant) -> Link {
        let notifier = if opts.enabled() {
            Notifier::from_env()
        } else {
            None
        };
        let watchdog = notifier
            .as_ref()
            .filter(|_| opts.watchdog)
            .and_then(|_| {
                watchdog_interval(
                    std::env::var(WATCHDOG_USEC).ok().as_deref(),
                    std::env::var(WATCHDOG_PID).ok().as_deref(),
                    std::process::id(),
                )
            })
            .map(|interval| Watchdog {
                interval,
                next: crate::master::later(now, interval),
            });
        if let Some(w) = &watchdog {
            tracing::info!(
                interval_ms = w.interval.as_millis() as u64,
                "pinging the service manager's watchdog"
            );
        }
        Link {
            extend: opts.extend_timeouts.filter(|_| notifier.is_some()),
            notifier,
            watchdog,
            state: State::Starting,
            note: None,
            status: String::new(),
            last: Summary::default(),
        }
    }

    /// Whether there is a manager to talk to.
    pub fn active(&self) -> bool {
        self.notifier.is_some()
    }

    /// Sends `lines` (with the current `STATUS=`), and a watchdog ping with every `READY=1`: a
    /// restart must not be killed by the watchdog before its first timer.
    fn send(&mut self, lines: &[&str], summary: Summary, now: Instant) {
        let Some(n) = &self.notifier else { return };
        self.status = status_text(self.state, self.note.as_deref(), summary);
        let mut msg = String::new();
        for l in lines {
            msg.push_str(l);
            msg.push('\n');
        }
        msg.push_str("STATUS=");
        msg.push_str(&self.status);
        if let Some(w) = &mut self.watchdog
            && lines.contains(&"READY=1")
        {
            msg.push_str("\nWATCHDOG=1");
            w.next = crate::master::later(now, w.interval);
        }
        n.send(&msg);
    }

    /// The start (generation 0) or a reload settled. `READY=1` always ends a reload, complete
    /// or not (a unit must never stay "reloading"); it ends the start unless not one worker
    /// is ready (the unit then fails its start timeout, as it should: nothing serves).
    pub fn settled<Id: Debug>(
        &mut self,
        report: &ReloadReport<Id>,
        summary: Summary,
        now: Instant,
    ) {
        if !self.active() || self.state == State::Stopping {
            return;
        }
        let what = if report.generation == 0 {
            "start"
        } else {
            "reload"
        };
        self.note = match &report.outcome {
            ReloadOutcome::Complete => None,
            ReloadOutcome::Rejected => Some(format!(
                "reload rejected (update returned no configuration); generation {} keeps serving",
                report.generation
            )),
            ReloadOutcome::Incomplete { failed } => {
                let ids: Vec<String> = failed
                    .iter()
                    .map(|(id, why)| format!("id {id:?} failed: {}", one_line(why)))
                    .collect();
                Some(format!(
                    "{what} of generation {} incomplete (still retried): {}",
                    report.generation,
                    ids.join("; ")
                ))
            }
        };
        if self.state == State::Starting && summary.ready == 0 && summary.desired > 0 {
            self.refresh(summary, now);
            return;
        }
        self.enter(State::Running, &["READY=1"], summary, now);
    }

    /// Moves to `state` saying `lines`; nothing once stopping (`STOPPING=1` is final).
    fn enter(&mut self, state: State, lines: &[&str], summary: Summary, now: Instant) {
        if !self.active() || self.state == State::Stopping {
            return;
        }
        self.state = state;
        self.send(lines, summary, now);
        self.last = summary;
    }

    /// A reload begins: `RELOADING=1` and `MONOTONIC_USEC=` in one datagram.
    pub fn reloading(&mut self, summary: Summary, now: Instant) {
        let mono = format!("MONOTONIC_USEC={}", monotonic_usec());
        self.enter(State::Reloading, &["RELOADING=1", &mono], summary, now);
    }

    /// In a master exec'd by an upgrade: the old image said `RELOADING=1`; this one says
    /// `READY=1` when its roll settles.
    pub fn resume_reloading(&mut self) {
        if self.active() {
            self.state = State::Reloading;
        }
    }

    /// A reload that has no pool to settle (hook-only settings) or a start with nothing to
    /// wait for: `READY=1` now.
    pub fn ready_now(&mut self, summary: Summary, now: Instant) {
        self.enter(State::Running, &["READY=1"], summary, now);
    }

    /// A stop begins: `STOPPING=1`, first thing.
    pub fn stopping(&mut self, summary: Summary, now: Instant) {
        if self.state != State::Stopping {
            self.note = None;
        }
        self.enter(State::Stopping, &["STOPPING=1"], summary, now);
    }

    /// After a turn of the loop: `STATUS=` if it changed, and `EXTEND_TIMEOUT_USEC=` (when
    /// switched on) if a slow start or a drain made progress.
    pub fn refresh(&mut self, summary: Summary, now: Instant) {
        if !self.active() || summary == self.last {
            return;
        }
        let progress = match self.state {
            State::Starting => summary.ready > self.last.ready,
            State::Stopping => summary.live < self.last.live,
            State::Running | State::Reloading => false,
        };
        self.last = summary;
        let mut lines = Vec::new();
        let extend;
        if let Some(by) = self.extend.filter(|_| progress) {
            extend = format!("EXTEND_TIMEOUT_USEC={}", by.as_micros());
            lines.push(extend.as_str());
        }
        if lines.is_empty() && status_text(self.state, self.note.as_deref(), summary) == self.status
        {
            return;
        }
        self.send(&lines, summary, now);
    }

    /// When the watchdog wants its next ping, if it is on.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.watchdog.as_ref().map(|w| w.next)
    }

    /// Pings the watchdog now, if it is on (and restarts its interval).
    pub fn ping_now(&mut self, now: Instant) {
        let Some(w) = &mut self.watchdog else { return };
        w.next = crate::master::later(now, w.interval);
        if let Some(n) = &self.notifier {
            n.send("WATCHDOG=1");
        }
    }

    /// Pings the watchdog if its time came.
    pub fn tick(&mut self, now: Instant) {
        let Some(w) = &mut self.watchdog else { return };
        if now < w.next {
            return;
        }
        w.next = crate::master::later(now, w.interval);
        if let Some(n) = &self.notifier {
            n.send("WATCHDOG=1");
        }
    }
}

/// The `STATUS=` line.
fn status_text(state: State, note: Option<&str>, s: Summary) -> String {
    let mut t = match state {
        State::Starting => format!("starting: {}/{} workers ready", s.ready, s.desired),
        State::Running if s.ready_latest == s.desired => format!(
            "{}/{} workers ready, generation {}",
            s.ready, s.desired, s.generation
        ),
        State::Running => format!(
            "{}/{} workers ready, {} of generation {}",
            s.ready, s.desired, s.ready_latest, s.generation
        ),
        State::Reloading => format!(
            "reloading to generation {}: {}/{} workers replaced",
            s.generation, s.ready_latest, s.desired
        ),
        State::Stopping => format!("stopping: {} workers left", s.live),
    };
    if let Some(n) = note {
        t.push_str("; ");
        t.push_str(n);
    }
    one_line(&t)
}

/// The ping interval (half of `WATCHDOG_USEC`), when the watchdog is on and meant for the
/// process `me`.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = pid
        && p.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_for_this_pid_only() {
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval(Some("200000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn status_lines() {
        let s = Summary {
            desired: 5,
            ready: 5,
            ready_latest: 2,
            generation: 3,
            live: 7,
        };
        assert_eq!(
            status_text(State::Running, None, s),
            "5/5 workers ready, 2 of generation 3"
        );
        let s = Summary {
            ready_latest: 5,
            ..s
        };
        assert_eq!(
            status_text(State::Running, None, s),
            "5/5 workers ready, generation 3"
        );
        assert_eq!(
            status_text(State::Reloading, None, s),
            "reloading to generation 3: 5/5 workers replaced"
        );
        assert_eq!(
            status_text(State::Stopping, None, s),
            "stopping: 7 workers left"
        );
        assert_eq!(
            status_text(
                State::Running,
                Some("reload of generation 3 incomplete:\nx"),
                s
            ),
            "5/5 workers ready, generation 3; reload of generation 3 incomplete: x"
        );
    }

    #[test]
    fn without_a_manager_nothing_happens() {
        let now = Instant::now();
        let mut l = Link::new(Systemd::off(), now);
        assert!(!l.active());
        l.ready_now(Summary::default(), now);
        assert_eq!(l.state, State::Starting);
        assert_eq!(l.next_deadline(), None);
    }
}
