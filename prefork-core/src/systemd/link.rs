//! The master's side of the notification protocol: what to send on which event of the loop,
//! and the watchdog's timer.
//!
//! The master calls one method per event (its first generation is ready, a reload began or
//! ended, a stop began, a worker exited while draining) and asks [`Link::next_deadline`] for
//! the watchdog's next ping, which becomes part of its poll timeout. Without `NOTIFY_SOCKET`
//! every method does nothing and there is no deadline.

use std::time::{Duration, Instant};

use super::Systemd;
use super::notify::{Notifier, monotonic_usec, one_line};

/// Watchdog variables.
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// The master's link to its service manager.
#[derive(Debug)]
pub(crate) struct Link {
    notifier: Option<Notifier>,
    watchdog: Option<Watchdog>,
    extend: Option<Duration>,
    /// `READY=1` of the first generation was sent.
    started: bool,
    /// The last `STATUS=` sent.
    status: String,
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
            started: false,
            status: String::new(),
        }
    }

    /// Whether there is a manager to talk to.
    pub fn active(&self) -> bool {
        self.notifier.is_some()
    }

    fn send(&mut self, lines: &[String], now: Instant) {
        let Some(n) = &self.notifier else { return };
        let mut msg = lines.join("\n");
        if let Some(w) = &mut self.watchdog
            && lines.iter().any(|l| l == "READY=1")
        {
            // A ping goes with every READY: a restart must not be killed by the watchdog
            // between its start and the first timer.
            msg.push_str("\nWATCHDOG=1");
            w.next = crate::master::later(now, w.interval);
        }
        n.send(&msg);
    }

    fn status_line(&mut self, status: &str) -> String {
        self.status = one_line(status);
        format!("STATUS={}", self.status)
    }

    /// Every desired worker of the first generation is ready: `READY=1`, once.
    pub fn started(&mut self, status: &str, now: Instant) {
        if self.started || !self.active() {
            return;
        }
        self.started = true;
        let s = self.status_line(status);
        self.send(&["READY=1".into(), s], now);
    }

    /// A reload begins: `RELOADING=1` and `MONOTONIC_USEC=` in one datagram.
    pub fn reloading(&mut self, status: &str, now: Instant) {
        if !self.active() {
            return;
        }
        let s = self.status_line(status);
        let mono = format!("MONOTONIC_USEC={}", monotonic_usec());
        self.send(&["RELOADING=1".into(), mono, s], now);
    }

    /// A reload ended, completely or not: `READY=1` all the same (a unit must never stay
    /// "reloading"), with a `STATUS=` that says which. Before the first generation was ready,
    /// this is the start's `READY=1`.
    pub fn reloaded(&mut self, status: &str, now: Instant) {
        if !self.active() {
            return;
        }
        self.started = true;
        let s = self.status_line(status);
        self.send(&["READY=1".into(), s], now);
    }

    /// A stop begins: `STOPPING=1`.
    pub fn stopping(&mut self, status: &str, now: Instant) {
        if !self.active() {
            return;
        }
        let s = self.status_line(status);
        self.send(&["STOPPING=1".into(), s], now);
    }

    /// `STATUS=` alone, if it changed.
    pub fn status(&mut self, status: &str, now: Instant) {
        if !self.active() || one_line(status) == self.status {
            return;
        }
        let s = self.status_line(status);
        self.send(&[s], now);
    }

    /// A slow start or a drain made progress: `EXTEND_TIMEOUT_USEC=`, when switched on.
    pub fn progress(&mut self, now: Instant) {
        if let Some(by) = self.extend {
            let line = format!("EXTEND_TIMEOUT_USEC={}", by.as_micros());
            self.send(&[line], now);
        }
    }

    /// Whether the first generation's `READY=1` was sent.
    pub fn has_started(&self) -> bool {
        self.started
    }

    /// When the watchdog wants its next ping, if it is on.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.watchdog.as_ref().map(|w| w.next)
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
    fn without_a_manager_nothing_happens() {
        let now = Instant::now();
        let mut l = Link::new(Systemd::off(), now);
        assert!(!l.active());
        l.started("x", now);
        assert!(!l.has_started());
        assert_eq!(l.next_deadline(), None);
    }
}
