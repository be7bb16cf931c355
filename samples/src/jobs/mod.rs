//! `sample-job-worker`'s queues: a job is claimed by one worker process, its result is recorded
//! once, and a job held by a worker that died goes back to the queue. No job is ever lost.
//!
//! Two queues keep the same guarantees:
//!
//! * [`spool`]: a directory, no server (the default);
//! * [`redis`]: a Redis list, for workers on several hosts against one queue.
//!
//! # The rule that loses no job
//!
//! A worker process claims a job into a place named by **its pid** (a directory, a Redis list),
//! never by its worker id: during a reload the old and the new worker of one id run side by
//! side, and recovering "what id 3 held" would re-queue jobs the old worker is still
//! processing. The master learns that a pid ended in its `on_worker_exit` hook, after the pid
//! was reaped, and puts that pid's claims back: nothing can still be working on them. A job
//! whose worker died after its result was written may run twice; its result is recorded once
//! (the first one wins, by an atomic create-if-absent).

pub mod config;
pub mod redis;
pub mod resp;
pub mod spool;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use resp::RedisUrl;

/// One job: an id, how long it takes, and its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Unique in the queue.
    pub id: String,
    /// How long running it takes (it sleeps: the sample stands for real work).
    pub work_ms: u64,
    /// Anything.
    pub data: String,
}

impl Job {
    /// A new job with a fresh id: `<unix ms>-<pid>-<seq>`, which sorts by creation.
    pub fn new(seq: u64, work_ms: u64, data: impl Into<String>) -> Job {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Job {
            id: format!("{ms:013}-{}-{seq:06}", std::process::id()),
            work_ms,
            data: data.into(),
        }
    }

    /// The body: `work_ms=N`, a newline, the data.
    pub fn body(&self) -> String {
        format!("work_ms={}\n{}", self.work_ms, self.data)
    }

    /// Reads a body back. A body without a `work_ms=` line is all data, with no work time.
    pub fn parse(id: &str, body: &str) -> Job {
        let (work_ms, data) = match body.split_once('\n') {
            Some((first, rest)) => match first.strip_prefix("work_ms=").map(str::parse) {
                Some(Ok(ms)) => (ms, rest),
                _ => (0, body),
            },
            None => match body.strip_prefix("work_ms=").map(str::parse) {
                Some(Ok(ms)) => (ms, ""),
                _ => (0, body),
            },
        };
        Job {
            id: id.to_string(),
            work_ms,
            data: data.to_string(),
        }
    }

    /// Runs the job: waits its work time, returns its result line
    /// (`<id> sum=<hash of the data> pid=<pid> gen=<generation>`).
    pub fn run(&self) -> String {
        std::thread::sleep(Duration::from_millis(self.work_ms));
        // FNV-1a: stands for a computation on the data.
        let sum = self.data.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        format!(
            "{} sum={sum:016x} pid={} gen={}\n",
            self.id,
            std::process::id(),
            prefork_core::worker::generation()
        )
    }
}

/// Which queue, as the workers' context carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueSpec {
    /// A spool directory ([`spool`]).
    Spool {
        /// The directory.
        dir: PathBuf,
    },
    /// A Redis server ([`redis`]).
    Redis {
        /// The server.
        url: RedisUrl,
        /// The prefix of every key (`<prefix>:queue`, …).
        prefix: String,
    },
}

impl std::fmt::Display for QueueSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueSpec::Spool { dir } => write!(f, "spool {}", dir.display()),
            QueueSpec::Redis { url, prefix } => write!(f, "{url} prefix {prefix}"),
        }
    }
}

/// Whether a result was the first for its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// It is the job's result.
    First,
    /// The job already had one (it ran before, in a worker that died before it could remove
    /// its claim): this one was dropped.
    Duplicate,
}

/// How many jobs are where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Waiting in the queue.
    pub queued: usize,
    /// Claimed by a worker process.
    pub claimed: usize,
    /// With a result.
    pub done: usize,
}

/// A worker process's side of a queue, shared by its threads.
pub trait WorkerQueue: Send + Sync {
    /// A handle for one thread.
    fn claimer(&self) -> io::Result<Box<dyn Claimer>>;
}

/// One thread's handle on the queue.
pub trait Claimer: Send {
    /// Claims the next job for this process, waiting up to about `wait` for one.
    fn claim(&mut self, wait: Duration) -> io::Result<Option<Job>>;
    /// Records `result` for `job` (once per job), then drops the claim.
    fn complete(&mut self, job: &Job, result: &str) -> io::Result<Recorded>;
}

/// Opens the worker side of `spec` for this process (claims are made under its pid).
pub fn open_worker(spec: &QueueSpec) -> io::Result<Box<dyn WorkerQueue>> {
    match spec {
        QueueSpec::Spool { dir } => Ok(Box::new(spool::SpoolWorker::open(dir)?)),
        QueueSpec::Redis { url, prefix } => Ok(Box::new(redis::RedisWorker::open(url, prefix)?)),
    }
}

/// In the master: puts back every job the (reaped) process `pid` had claimed; returns how
/// many went back to the queue.
pub fn recover(spec: &QueueSpec, pid: i32) -> io::Result<usize> {
    match spec {
        QueueSpec::Spool { dir } => spool::recover(dir, pid),
        QueueSpec::Redis { url, prefix } => redis::recover(url, prefix, pid),
    }
}

/// In the master, at start: puts back the claims of processes that are gone (a previous master
/// that was killed with its workers). Returns how many jobs went back.
pub fn recover_orphans(spec: &QueueSpec) -> io::Result<usize> {
    match spec {
        QueueSpec::Spool { dir } => spool::recover_orphans(dir),
        QueueSpec::Redis { url, prefix } => redis::recover_orphans(url, prefix),
    }
}

/// Adds `jobs` to the queue.
pub fn enqueue(spec: &QueueSpec, jobs: &[Job]) -> io::Result<()> {
    match spec {
        QueueSpec::Spool { dir } => spool::enqueue(dir, jobs),
        QueueSpec::Redis { url, prefix } => redis::enqueue(url, prefix, jobs),
    }
}

/// How many jobs are queued, claimed and done.
pub fn counts(spec: &QueueSpec) -> io::Result<Counts> {
    match spec {
        QueueSpec::Spool { dir } => spool::counts(dir),
        QueueSpec::Redis { url, prefix } => redis::counts(url, prefix),
    }
}

/// How many jobs the process `pid` holds now.
pub fn held_by(spec: &QueueSpec, pid: i32) -> io::Result<usize> {
    match spec {
        QueueSpec::Spool { dir } => spool::held_by(dir, pid),
        QueueSpec::Redis { url, prefix } => redis::held_by(url, prefix, pid),
    }
}

/// Every recorded result: job id → result line.
pub fn results(spec: &QueueSpec) -> io::Result<std::collections::HashMap<String, String>> {
    match spec {
        QueueSpec::Spool { dir } => spool::results(dir),
        QueueSpec::Redis { url, prefix } => redis::results(url, prefix),
    }
}

/// The ids of the jobs waiting in the queue.
pub fn queued_ids(spec: &QueueSpec) -> io::Result<Vec<String>> {
    match spec {
        QueueSpec::Spool { dir } => spool::queued_ids(dir),
        QueueSpec::Redis { url, prefix } => redis::queued_ids(url, prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let j = Job::new(7, 25, "a\nb");
        assert_eq!(Job::parse(&j.id, &j.body()), j);
        assert_eq!(Job::parse("x", "just data").work_ms, 0);
        assert_eq!(Job::parse("x", "work_ms=5").work_ms, 5);
    }
}
