//! `sample-job-worker`: a prefork job-queue daemon that loses no job.
//!
//! ```text
//! sample-job-worker (--spool DIR | --redis URL) [-w WORKERS] [-c CONCURRENCY] [--config FILE]
//!                   [--min-spare N --max-spare N --max-workers N] [--prefix P]
//! sample-job-worker (--spool DIR | --redis URL) --enqueue N [--job-ms MS]
//! ```
//!
//! The master keeps WORKERS worker processes; each runs CONCURRENCY jobs at once, taken from
//! the queue: a spool directory (no server needed; the layout is in `samples::jobs::spool`) or
//! a Redis list (`samples::jobs::redis`), for workers on several hosts against one queue.
//!
//! * A worker claims a job under **its pid**; the master puts back what a pid held once that
//!   pid is reaped (the `on_worker_exit` hook), so a worker killed mid-job loses nothing, and a
//!   reload (where the old and the new worker of one id overlap) re-queues nothing twice.
//! * `kill -HUP <master>` reads `--config FILE` again (workers, concurrency, the queue) and
//!   replaces the workers rolling; a broken file keeps what runs.
//! * A worker's stop signal (`SIGTERM`): it finishes the jobs it holds, then exits.
//! * `kill -TERM <master>`: every worker finishes its jobs, then the master exits 0.
//! * `--enqueue N` adds N test jobs (each takes `--job-ms`) and exits.
//! * `--min-spare N --max-spare M [--max-workers K]`: an adaptive pool instead of `-w`: up to
//!   K (default 16) workers are declared, and the master runs as many as keep N … M of them
//!   idle (a worker is busy while it holds a job; with `-c` above 1, while it holds any).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use prefork_core::worker::StopSignal;
use prefork_core::{
    Readiness, Signal, Spawner, WorkerContext, WorkerSet, default_main, relaunch_settings,
};
use samples::jobs::config::{Config, Flags};
use samples::jobs::{self, Job, QueueSpec, Recorded, RedisUrl};
use serde::{Deserialize, Serialize};

/// A job-queue daemon: a master and worker processes that take jobs from a queue.
#[derive(Debug, Parser)]
#[command(name = "sample-job-worker", version)]
struct Cli {
    /// The queue: a spool directory (created if missing).
    #[arg(long, value_name = "DIR", conflicts_with = "redis")]
    spool: Option<PathBuf>,
    /// The queue: a Redis server, redis://HOST:PORT[/DB].
    #[arg(long, value_name = "URL")]
    redis: Option<RedisUrl>,
    /// The prefix of the Redis keys.
    #[arg(long)]
    prefix: Option<String>,
    /// Worker processes.
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Jobs each worker runs at once.
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: Option<u32>,
    /// A configuration file, read at start and on every SIGHUP; its keys override the flags.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Adaptive pool: start workers while fewer than N are idle.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1024))]
    min_spare: Option<u32>,
    /// Adaptive pool: retire workers while more than N are idle.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_spare: Option<u32>,
    /// Adaptive pool: never more than N workers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_workers: Option<u32>,
    /// Also forward signal FROM received by the master to every worker as TO (repeatable;
    /// USR1:USR1 is always on: each worker logs how many jobs it did).
    #[arg(long, value_name = "FROM:TO", value_parser = parse_forward)]
    forward: Vec<(Signal, Signal)>,
    /// Add N test jobs to the queue and exit.
    #[arg(long, value_name = "N")]
    enqueue: Option<u64>,
    /// With --enqueue: how long each job takes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10, requires = "enqueue")]
    job_ms: u64,
}

/// `USR2:USR1` → (SIGUSR2, SIGUSR1).
fn parse_forward(s: &str) -> Result<(Signal, Signal), String> {
    let (from, to) = s
        .split_once(':')
        .ok_or("expected FROM:TO, e.g. USR2:USR1")?;
    let sig = |x: &str| x.parse::<Signal>().map_err(|e| e.to_string());
    Ok((sig(from)?, sig(to)?))
}

impl Cli {
    fn flags(&self) -> Flags {
        Flags {
            workers: self.workers,
            concurrency: self.concurrency,
            spool: self.spool.clone(),
            redis: self.redis.clone(),
            prefix: self.prefix.clone(),
            min_spare: self.min_spare,
            max_spare: self.max_spare,
            max_workers: self.max_workers,
        }
    }
}

/// One worker: `ps` shows `sample-job-worker id=2 concurrency=4`.
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(arg)]
    concurrency: u32,
    queue: QueueSpec,
}

/// One line on stderr, exit 2: bad input at start.
fn fail(msg: &str) -> ! {
    samples::say(&format!("sample-job-worker: {msg}"));
    std::process::exit(2)
}

fn main() {
    let cli = Cli::parse_from(prefork_core::args());
    samples::init_tracing();
    let flags = cli.flags();
    // Only the master reads the file and checks it; a worker gets what it needs in its context.
    if !prefork_core::is_worker() {
        let config = flags
            .load(cli.config.as_deref())
            .unwrap_or_else(|e| fail(&e));
        if let Some(n) = cli.enqueue {
            enqueue(&config.queue, n, cli.job_ms);
        }
    }
    // The adaptive pool's bounds are fixed at start (a SIGHUP that changes them is refused).
    let spare = match prefork_core::is_worker() {
        true => None,
        false => flags.load(cli.config.as_deref()).ok().and_then(|c| c.spare),
    };

    let file = cli.config.clone();
    let update = move |set: &mut WorkerSet<Worker>| -> Option<Config> {
        let loaded = flags
            .load(file.as_deref())
            .and_then(|c| match c.spare == spare {
                true => Ok(c),
                false => Err("min_spare/max_spare/max_workers cannot change on SIGHUP \
                 (the adaptive pool's bounds are fixed at start)"
                    .to_string()),
            });
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}; keeping the running workers");
                return None;
            }
        };
        // An adaptive pool declares max_workers candidates; the master runs what the load needs.
        let workers = config.spare.map_or(config.workers, |sp| sp.max_workers);
        set.set((0..workers).map(|id| Worker {
            id,
            concurrency: config.concurrency,
            queue: config.queue.clone(),
        }));
        tracing::info!(workers, concurrency = config.concurrency, queue = %config.queue,
            "configuration loaded");
        Some(config)
    };
    let fork = |w: &Worker, spawner: &Spawner| spawner.fork_worker_process(w);
    let mut settings = relaunch_settings(update, fork)
        .readiness(Readiness::Explicit)
        // `kill -USR1 <master>`: every worker logs its progress (Parallel::Prefork's
        // trap_signals; a real daemon would reopen its log files here).
        .forward_signal(Signal::SIGUSR1, Signal::SIGUSR1)
        // A master killed with its workers left claims behind: put them back first.
        .on_start(|config: Option<&Config>| {
            if let Some(c) = config {
                match jobs::recover_orphans(&c.queue) {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(jobs = n, "put back the jobs of dead processes"),
                    Err(e) => tracing::error!(error = %e, "cannot recover orphaned claims"),
                }
            }
        })
        // The pid is reaped: nothing can still work on what it claimed. By pid, not by id:
        // during a reload the old and the new worker of an id run side by side.
        .on_worker_exit(
            |ended| match jobs::recover(&ended.context.queue, ended.pid.as_raw()) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(worker_id = ended.id, pid = %ended.pid, jobs = n,
                status = %ended.status, "recovered the jobs of an ended worker"),
                Err(e) => tracing::error!(worker_id = ended.id, pid = %ended.pid, error = %e,
                "cannot recover the jobs of an ended worker"),
            },
        );
    if let Some(sp) = spare {
        settings = settings.adaptive(sp.min_spare, sp.max_spare, sp.max_workers);
    }
    for &(from, to) in &cli.forward {
        settings = settings.forward_signal(from, to);
    }
    default_main(settings, work)
}

/// `--enqueue N`: adds the jobs and exits.
fn enqueue(queue: &QueueSpec, n: u64, job_ms: u64) -> ! {
    let jobs: Vec<Job> = (0..n)
        .map(|i| Job::new(i, job_ms, format!("test job {i}")))
        .collect();
    if let Err(e) = jobs::enqueue(queue, &jobs) {
        fail(&format!("cannot enqueue into {queue}: {e}"));
    }
    let _ = writeln!(std::io::stdout(), "enqueued {n} jobs into {queue}");
    std::process::exit(0)
}

/// A worker: CONCURRENCY threads claim, run and complete jobs until the stop signal; then each
/// finishes the job in hand.
fn work(w: Worker) -> anyhow::Result<()> {
    let stop = prefork_core::worker::stop_signal()?;
    let done = Arc::new(AtomicU64::new(0));
    // First thing: the master forwards USR1 here, and its default action would end the worker.
    let mut usr1 = signal_hook::iterator::Signals::new([Signal::SIGUSR1.as_raw()])?;
    let progress = done.clone();
    std::thread::Builder::new()
        .name("usr1".into())
        .spawn(move || {
            for _ in usr1.forever() {
                let jobs = progress.load(Ordering::Relaxed);
                tracing::info!(id = w.id, jobs, "SIGUSR1: jobs done so far");
            }
        })?;
    let queue = jobs::open_worker(&w.queue)?;
    let mut threads = Vec::new();
    for t in 0..w.concurrency {
        let claimer = queue.claimer()?;
        let (stop, done) = (stop.clone(), done.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("jobs-{t}"))
                .spawn(move || run_jobs(claimer, stop, &done))?,
        );
    }
    prefork_core::worker::ready();
    tracing::info!(id = w.id, concurrency = w.concurrency, queue = %w.queue, "taking jobs");
    for t in threads {
        let _ = t.join();
    }
    let jobs = done.load(Ordering::Relaxed);
    tracing::info!(id = w.id, jobs, "stopped: every job in hand is finished");
    Ok(())
}

/// One thread's loop; counts the jobs it completed in `done`.
fn run_jobs(mut claimer: Box<dyn jobs::Claimer>, stop: StopSignal, done: &AtomicU64) {
    while !stop.is_stopping() {
        match claimer.claim(Duration::from_millis(200)) {
            Ok(None) => {}
            Ok(Some(job)) => {
                // In flight from claim to completion: the adaptive pool reads this count.
                let _in_flight = prefork_core::worker::request_guard();
                let result = job.run();
                match claimer.complete(&job, &result) {
                    Ok(Recorded::First) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Recorded::Duplicate) => {
                        tracing::info!(job = %job.id, "job ran again; its first result stands")
                    }
                    Err(e) => tracing::error!(job = %job.id, error = %e, "cannot complete a job"),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot claim a job; retrying in 1 s");
                stop.wait_timeout(Duration::from_secs(1));
            }
        }
    }
}
