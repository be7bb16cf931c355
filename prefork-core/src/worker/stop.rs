//! How a worker learns that its master wants it to stop.
//!
//! The master asks with its stop signal ([`Settings::stop_signal`](crate::Settings::stop_signal),
//! `SIGTERM` by default), which the boot header names, or with `SIGINT` (its `on_interrupt`
//! default, and a Ctrl-C in a terminal reaches the whole process group). Until the worker calls
//! [`stop_signal`], both keep their default action and end it at once, which is what a worker
//! with nothing to drain wants. After it, they only set the handle: the worker stops by itself,
//! and the master `SIGKILL`s it after its stop deadline.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::Signal;

/// A handle that tells a worker the master wants it to stop.
///
/// Made by [`stop_signal`]. Cloning is cheap; all clones see the same signal.
#[derive(Clone, Debug)]
pub struct StopSignal {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    stopping: AtomicBool,
    lock: Mutex<bool>,
    cond: Condvar,
    signal: Signal,
}

/// The handle, or the errno of the failed installation (kept, so every call reports it).
static STOP: OnceLock<std::result::Result<StopSignal, i32>> = OnceLock::new();

/// The signal that means "stop" for this process: the master's stop signal in a worker (and in
/// single-process mode, the one the settings name), `SIGTERM` elsewhere.
pub fn configured_stop_signal() -> Signal {
    match super::boot::booted() {
        Some(b) => Signal::from_raw(b.header.stop_signal).unwrap_or(Signal::SIGTERM),
        None => super::single().map_or(Signal::SIGTERM, |s| s.stop_signal),
    }
}

/// Installs the handling of the stop signal and `SIGINT` (once) and returns the handle.
///
/// The stop signal is the one the master was configured with
/// ([`Settings::stop_signal`](crate::Settings::stop_signal)), carried in the boot header.
pub fn stop_signal() -> Result<StopSignal> {
    STOP.get_or_init(|| install(configured_stop_signal()))
        .clone()
        .map_err(|errno| Error::Signal(io::Error::from_raw_os_error(errno)))
}

fn install(signal: Signal) -> std::result::Result<StopSignal, i32> {
    let errno = |e: io::Error| e.raw_os_error().unwrap_or(nix::libc::EINVAL);
    let mut signals =
        signal_hook::iterator::Signals::new([signal.as_raw(), Signal::SIGINT.as_raw()])
            .map_err(errno)?;
    let inner = Arc::new(StopInner {
        stopping: AtomicBool::new(false),
        lock: Mutex::new(false),
        cond: Condvar::new(),
        signal,
    });
    let weak = Arc::downgrade(&inner);
    std::thread::Builder::new()
        .name("prefork-stop".into())
        .spawn(move || {
            // Keep the iterator (and so the handlers' actions) alive for the worker's whole
            // life: a second signal must not fall into a handler with nothing behind it.
            for _ in signals.forever() {
                let Some(inner) = weak.upgrade() else {
                    continue;
                };
                inner.stopping.store(true, Ordering::Release);
                if let Some(s) = crate::scoreboard::slot() {
                    s.set_state(crate::scoreboard::SlotState::Draining);
                }
                let mut g = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
                *g = true;
                inner.cond.notify_all();
                drop(g);
                #[cfg(feature = "tokio")]
                ASYNC_STOP.send_replace(true);
            }
        })
        .map_err(errno)?;
    Ok(StopSignal { inner })
}

impl StopSignal {
    /// True once the master asked this worker to stop.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// The signal that means "stop" here (besides `SIGINT`).
    pub fn signal(&self) -> Signal {
        self.inner.signal
    }

    /// Blocks until the master asks this worker to stop.
    pub fn wait(&self) {
        let mut g = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            g = self.inner.cond.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks until the master asks this worker to stop or `timeout` passes; true if asked.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let g = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .inner
            .cond
            .wait_timeout_while(g, timeout, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

/// The stop, for async code: set by the stop thread, read by [`stopped`].
#[cfg(feature = "tokio")]
static ASYNC_STOP: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(false));

/// Resolves once the master asks this worker to stop (its stop signal or `SIGINT`); at once if
/// it already did. Installs the handling on first use, like [`stop_signal`]; if that fails,
/// the error is returned at once.
///
/// ```no_run
/// # #![allow(dead_code)]
/// # async fn serve() {}
/// # async fn demo() -> prefork_core::Result<()> {
/// tokio::select! {
///     _ = serve() => {}
///     r = prefork_core::worker::stopped() => r?,
/// }
/// # Ok(()) }
/// ```
#[cfg(feature = "tokio")]
pub async fn stopped() -> Result<()> {
    let stop = stop_signal()?;
    let mut rx = ASYNC_STOP.subscribe();
    if stop.is_stopping() {
        return Ok(());
    }
    // The sender is a static: it never closes, so `wait_for` only returns on `true`.
    let _ = rx.wait_for(|stopping| *stopping).await;
    Ok(())
}
