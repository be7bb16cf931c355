//! `sample-job-worker --min-spare 1 --max-spare 3`: the adaptive pool follows the load.
//!
//! Jobs take 200 ms; a producer thread keeps k of them queued or in flight against the spool
//! queue. Each worker runs one job at a time (`-c 1`), so k jobs keep k workers busy, and the
//! running worker count must settle within k + 1 … k + 3 within 1 s of each change of k
//! (0 → 8 → 2 → 0), stay there, and shrink to the floor (1) once the pool is idle for its
//! idle timeout (5 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use samples::jobs::{self, Job, QueueSpec};
use testkit::{Master, TempDir, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_sample-job-worker");
const MIN_SPARE: usize = 1;
const MAX_SPARE: usize = 3;
const JOB_MS: u64 = 200;
/// The bound the issue sets on following a change of load.
const FOLLOW: Duration = Duration::from_secs(1);
/// How long the count must then stay within its bounds.
const HOLD: Duration = Duration::from_millis(1500);

/// Keeps `k` jobs queued or claimed until `stop`.
fn producer(spec: QueueSpec, k: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = jobs::counts(&spec).unwrap_or_default();
        let want = k.load(Ordering::Relaxed);
        let have = c.queued + c.claimed;
        if have < want {
            let batch: Vec<Job> = (have..want)
                .map(|_| {
                    seq += 1;
                    Job::new(seq, JOB_MS, "adaptive")
                })
                .collect();
            jobs::enqueue(&spec, &batch).unwrap();
        }
        // The producer's own pace: a top-up every 5 ms, well under a job's 200 ms.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_pool_follows_the_jobs_in_flight() {
    let dir = TempDir::new("adaptive");
    let spool = dir.path().join("spool");
    let spec = QueueSpec::Spool { dir: spool.clone() };
    std::fs::create_dir_all(&spool).unwrap();
    let m = Master::start_program(
        BIN,
        &[
            "--spool",
            spool.to_str().unwrap(),
            "-c",
            "1",
            "--min-spare",
            "1",
            "--max-spare",
            "3",
            "--max-workers",
            "12",
        ],
    );
    // Started: the floor, one worker.
    wait_for(Duration::from_secs(30), "the first worker", || {
        (m.workers().len() == 1).then_some(())
    });
    let k = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (spec, k, stop) = (spec.clone(), k.clone(), stop.clone());
        std::thread::spawn(move || producer(spec, k, stop))
    };
    let mut figures = Vec::new();
    for load in [8usize, 2, 0] {
        k.store(load, Ordering::Relaxed);
        let (lo, hi) = (load + MIN_SPARE, load + MAX_SPARE);
        let t0 = Instant::now();
        // Bounded but generous, so a loaded machine shows its figure instead of a timeout.
        let reached = wait_for(
            Duration::from_secs(10),
            "the count within its bounds",
            || {
                let n = m.workers().len();
                (lo..=hi).contains(&n).then(|| t0.elapsed())
            },
        );
        // It stays there: every sample over HOLD within the bounds.
        let held = Instant::now();
        let mut seen = Vec::new();
        while held.elapsed() < HOLD {
            seen.push(m.workers().len());
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("k={load}: within {lo}..={hi} after {reached:?}; then {seen:?}");
        assert!(
            seen.iter().all(|n| (lo..=hi).contains(n)),
            "k={load}: left {lo}..={hi}: {seen:?}"
        );
        figures.push((load, reached));
    }
    // Idle: down to the floor once nobody was busy for the idle timeout (5 s) plus a scan per
    // retired worker.
    let t0 = Instant::now();
    wait_for(Duration::from_secs(15), "the floor when idle", || {
        (m.workers().len() == MIN_SPARE).then_some(())
    });
    eprintln!("idle: down to {MIN_SPARE} after {:?}", t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    for (load, reached) in figures {
        assert!(
            reached <= FOLLOW,
            "k={load}: took {reached:?} to follow, more than {FOLLOW:?}"
        );
    }
}
