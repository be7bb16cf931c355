//! Single-process mode: the worker function in the calling process, with no master.
//!
//! Parallel::Prefork's article makes the point that a daemon's worker code does not depend on
//! the process manager, so it can be written, tested and debugged in one process first. Set
//! [`PREFORK_SINGLE=1`](crate::protocol::SINGLE_ENV) and [`default_main`](crate::default_main)
//! does exactly what the master would do to start the *first* worker of the declared set (the
//! lowest id), up to the fork:
//!
//! 1. it calls `update` once for the desired set;
//! 2. it calls the `fork` callback for the first context (with hook-only settings, the
//!    `update_server` hook), with a [`Spawner`] that starts no process: its
//!    `fork_worker_process` keeps the context and a copy of each declared socket;
//! 3. it decodes that context as a worker would (same encoding, same socket checks), and calls
//!    the worker function in this process.
//!
//! The worker function sees what a worker sees: [`worker::stop_signal`](crate::worker::stop_signal)
//! handles the configured stop signal (and `SIGINT`), [`worker::ready`](crate::worker::ready) is
//! accepted (and tells nobody), [`worker::threads`](crate::worker::threads) is the context's,
//! `SIGHUP` is ignored. The process exits with the worker function's status. There is no
//! master: no respawn, no reload, and none of the master's hooks run (`on_start`,
//! `on_worker_exit`, …). The context's other runtime options (affinity, nice, rlimits,
//! environment) are not applied: they are the master's to apply to a new process.

use std::cell::RefCell;

use crate::context::{WorkerContext, WorkerSet};
use crate::error::Error;
use crate::settings::Settings;
use crate::spawn::Spawner;
use crate::worker::WorkerExit;

/// Whether the environment asks for single-process mode (set, and neither empty nor `0`).
pub(crate) fn requested() -> bool {
    std::env::var_os(crate::protocol::SINGLE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Ends the process with `prefork: <error>` and status 1.
fn fail(e: &Error) -> ! {
    crate::log::emergency_line(&format!("prefork (single-process mode): {}", e.report()));
    std::process::exit(1)
}

/// Runs the first worker in this process (see the module docs). Never returns.
pub(crate) fn run<C, W, F, R>(mut settings: Settings<C, W>, worker_fn: F) -> !
where
    C: 'static,
    W: WorkerContext,
    F: FnOnce(W) -> R,
    R: WorkerExit,
{
    crate::log::set_label(format!("single {}", std::process::id()));
    let mut set = WorkerSet::new();
    let Some(config) = crate::master::call_update(&mut settings.update_config, &mut set) else {
        fail(&Error::NoInitialConfig)
    };
    let slot = RefCell::new(None);
    let stop_signal = settings.pool.stop_signal;
    let spawner = Spawner::in_process(&slot, settings.readiness, stop_signal);
    match settings.fork.as_mut() {
        Some(fork) => {
            let Some((_, first)) = set.into_map().into_iter().next() else {
                fail(&Error::InvalidSetting(
                    "the declared worker set is empty: no worker to run".into(),
                ))
            };
            if let Err(e) = fork(&first, &spawner) {
                fail(&e);
            }
        }
        None => {
            let _ = (settings.update_server)(&config, &spawner);
        }
    }
    let Some(captured) = slot.into_inner() else {
        fail(&Error::InvalidSetting(
            "no worker was started (the fork callback did not call fork_worker_process)".into(),
        ))
    };
    tracing::info!(
        pid = std::process::id(),
        "single-process mode: running the first worker in this process, no master"
    );
    crate::worker::run_single(captured, stop_signal, settings.readiness, worker_fn)
}
