//! Running under systemd (or any manager that speaks its protocol): readiness and reload
//! notification, the watchdog, socket activation and the fd store.
//!
//! Everything here is a no-op unless the manager asked for it through the environment: a
//! master without `NOTIFY_SOCKET` sends nothing, one without `LISTEN_FDS` adopts nothing, one
//! without `WATCHDOG_USEC` keeps no timer. Only the master talks to the manager: workers never
//! see `NOTIFY_SOCKET`, `LISTEN_*` or `WATCHDOG_*` (the spawner leaves them out of their
//! environment), so with the default `NotifyAccess=main` nothing a worker does can confuse it.
//!
//! # What the master says, and when
//!
//! | when | message |
//! |---|---|
//! | every desired worker of the first generation is *ready* (not when the master starts) | `READY=1`, `STATUS=5/5 workers ready, generation 0`, and a first `WATCHDOG=1` |
//! | `SIGHUP` (the reload signal of `Type=notify-reload`) | one datagram: `RELOADING=1`, `MONOTONIC_USEC=<CLOCK_MONOTONIC now>`, `STATUS=reloading …` |
//! | the rolling replacement finished | `READY=1`, `STATUS=reload finished: 5/5 workers ready, generation 1` |
//! | … or gave up on some ids (a broken deploy) | `READY=1` all the same, `STATUS=reload incomplete: …` naming them: the old workers keep serving, and a unit must never stay "reloading" |
//! | `SIGTERM` / `SIGINT` | `STOPPING=1` first, before anything else |
//! | every `WATCHDOG_USEC / 2` | `WATCHDOG=1`, from the master's own loop (a wedged loop stops pinging, which is the point); only when `WATCHDOG_USEC` is set and `WATCHDOG_PID` is unset or the master's pid |
//! | opt-in, [`Systemd::extend_timeouts`] | `EXTEND_TIMEOUT_USEC=` each time a slow start or a drain makes progress (a worker became ready, a worker exited) |
//!
//! `STATUS=` is sent on state changes only; an idle master sends nothing and keeps no timer
//! (except the watchdog's, when the manager asked for one).
//!
//! The master installs its `SIGHUP` handler before it can send `READY=1`, which
//! `Type=notify-reload` checks (systemd v262 fails the start of a service that would die of
//! the reload signal).
//!
//! # Sockets
//!
//! See [`InheritedListener::from_systemd`](crate::InheritedListener::from_systemd) (socket
//! activation: adopt by name, else bind) and
//! [`InheritedListener::store_in_systemd`](crate::InheritedListener::store_in_systemd) (the fd
//! store, so `systemctl restart` refuses no connection).
//!
//! # The protocol, not a crate
//!
//! The notification protocol is a datagram of `KEY=value` lines, documented as stable. It is
//! implemented here on `nix` (already a dependency) because the small crates do not cover what
//! a master needs: `sd-notify` cannot reach an abstract (`@name`) socket and needs another
//! dependency to pass fds; `libsystemd` brings a second `nix` and a dozen crates.

pub(crate) mod activation;
mod link;
mod notify;

use std::time::Duration;

pub use activation::passed_names;
pub(crate) use link::{Link, Summary};

/// How the master talks to systemd. Set with [`Settings::systemd`](crate::Settings::systemd);
/// the default is [`Systemd::auto`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Systemd {
    notify: bool,
    watchdog: bool,
    extend_timeouts: Option<Duration>,
}

impl Default for Systemd {
    fn default() -> Self {
        Systemd::auto()
    }
}

impl Systemd {
    /// Notify when `NOTIFY_SOCKET` is set, ping the watchdog when `WATCHDOG_USEC` asks for it;
    /// no `EXTEND_TIMEOUT_USEC`.
    pub fn auto() -> Self {
        Systemd {
            notify: true,
            watchdog: true,
            extend_timeouts: None,
        }
    }

    /// Never notify, whatever the environment says.
    pub fn off() -> Self {
        Systemd {
            notify: false,
            watchdog: false,
            extend_timeouts: None,
        }
    }

    /// Whether to ping the watchdog when the manager asks for it (default: yes).
    pub fn watchdog(mut self, yes: bool) -> Self {
        self.watchdog = yes;
        self
    }

    /// Send `EXTEND_TIMEOUT_USEC=` while the first start or the shutdown drain makes progress:
    /// each worker that becomes ready while the first generation starts extends the start
    /// timeout by `by`, each worker that exits during the drain extends the stop timeout by
    /// `by`. A unit then fails on a start or a drain that *stalls*, not on one that is merely
    /// slow. (systemd only acts on it once `TimeoutStartSec=` or `TimeoutStopSec=` is reached.)
    pub fn extend_timeouts(mut self, by: Duration) -> Self {
        self.extend_timeouts = Some(by).filter(|d| !d.is_zero());
        self
    }

    pub(crate) fn enabled(&self) -> bool {
        self.notify
    }
}

/// The master's process-level set-up, before it spawns anything: the sockets systemd passed
/// are read and made close-on-exec, and with `child_subreaper` (and not PID 1) the master
/// becomes a child subreaper (see [`Settings::child_subreaper`](crate::Settings::child_subreaper)).
pub(crate) fn prepare_master(child_subreaper: bool) {
    activation::init();
    if child_subreaper && std::process::id() != 1 {
        match crate::sys::become_child_subreaper() {
            Ok(()) => tracing::debug!("the master is a child subreaper"),
            Err(e) => tracing::warn!(error = %e, "cannot become a child subreaper"),
        }
    }
}
