//! `sample-simple`: haskell-prefork's `prefork-sample-simple`, ported.
//!
//! The bare hook set ([`default_settings`]): the master prints its pid, and every time its
//! `update_server` hook runs (at start, then on each `SIGHUP`) it forks one worker, which greets
//! and exits. Nothing is relaunched: these workers are the hook's own, not a declared set.
//!
//! ```text
//! $ sample-simple
//! Please send SIGHUP to 12345 to relaunch a worker
//! Hello. I'm a worker.
//! $ kill -HUP 12345            # from another terminal
//! Hello. I'm a worker.
//! $ kill -TERM 12345           # the master exits with status 0
//! ```

use std::cell::Cell;
use std::io::Write;

use prefork_core::{Spawner, WorkerContext, default_main, default_settings};
use serde::{Deserialize, Serialize};

/// The worker's context: only an id (it numbers the workers, `ps` shows `sample-simple id=N`).
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(id, arg)]
    id: u32,
}

fn main() {
    samples::init_tracing();
    let next_id = Cell::new(0u32);
    let settings = default_settings::<(), Worker>()
        .update_config(|| Some(()))
        .on_start(|_| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "Please send SIGHUP to {} to relaunch a worker",
                std::process::id()
            );
            let _ = out.flush();
        })
        .update_server(move |_: &(), spawner: &Spawner| {
            let w = Worker { id: next_id.get() };
            next_id.set(w.id + 1);
            match spawner.fork_worker_process(&w) {
                Ok(pid) => vec![pid],
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a worker");
                    Vec::new()
                }
            }
        });
    default_main(settings, |_: Worker| {
        println!("Hello. I'm a worker.");
    })
}
