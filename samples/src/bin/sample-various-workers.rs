//! `sample-various-workers`: two kinds of worker in one master.
//!
//! The context is an enum, one variant per kind of worker, each with its own id field (the
//! master keeps one process per id, whatever its kind). [`relaunch_settings`] keeps both alive:
//! kill one and it comes back; `SIGHUP` replaces both; `SIGTERM` stops everything.
//!
//! ```text
//! $ sample-various-workers
//! Greeter 0: Hello from a greeter worker.
//! Counter 1: 1 + 2 + ... + 10 = 55
//! $ ps -o pid,ppid,args
//!   PID  PPID COMMAND
//! 20001 19000 sample-various-workers
//! 20002 20001 sample-various-workers id=0 kind=greeter
//! 20003 20001 sample-various-workers id=1 upto=10 kind=counter
//! ```

use prefork_core::{Spawner, WorkerContext, default_main, relaunch_settings};
use serde::{Deserialize, Serialize};

/// What a worker is: a greeter or a counter.
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[prefork(args = kind_arg)]
enum Job {
    /// Says hello.
    Greeter {
        #[prefork(id, arg)]
        id: u32,
        greeting: String,
    },
    /// Adds up `1..=upto`.
    Counter {
        #[prefork(id, arg)]
        id: u32,
        #[prefork(arg)]
        upto: u64,
    },
}

/// Extra argv after the field args, so `ps` tells the kinds apart: `id=0 kind=greeter`.
fn kind_arg(job: &Job) -> Vec<String> {
    let kind = match job {
        Job::Greeter { .. } => "greeter",
        Job::Counter { .. } => "counter",
    };
    vec![format!("kind={kind}")]
}

fn main() {
    samples::init_tracing();
    let update = |set: &mut prefork_core::WorkerSet<Job>| {
        set.set([
            Job::Greeter {
                id: 0,
                greeting: "Hello from a greeter worker.".into(),
            },
            Job::Counter { id: 1, upto: 10 },
        ]);
        Some(())
    };
    let settings = relaunch_settings(update, |job: &Job, spawner: &Spawner| {
        spawner.fork_worker_process(job)
    });
    default_main(settings, |job: Job| -> prefork_core::Result<()> {
        // Handle SIGTERM before saying anything: from here on the master's stop request is
        // ours to answer, and we answer it by returning (exit status 0).
        let stop = prefork_core::worker::stop_signal()?;
        match &job {
            Job::Greeter { id, greeting, .. } => println!("Greeter {id}: {greeting}"),
            Job::Counter { id, upto, .. } => {
                let sum: u64 = (1..=*upto).sum();
                println!("Counter {id}: 1 + 2 + ... + {upto} = {sum}");
            }
        }
        stop.wait();
        tracing::info!(worker = job.id(), "stop requested; exiting");
        Ok(())
    })
}
