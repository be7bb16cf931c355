//! `sample-job-worker` loses no job: 5,000 jobs, 5 reloads (`SIGHUP`, the configuration file
//! changing between them), 2 workers `SIGKILL`ed while they hold jobs, then `SIGTERM` (every
//! worker finishes what it holds) and a restart until the queue is empty. Every job ends with
//! exactly one result; a job whose worker was killed may have run twice, but its result is
//! recorded once.
//!
//! Once with the spool directory, once with Redis. The Redis test starts its own
//! `redis-server` on 127.0.0.1 and a free port; without `redis-server` on `PATH` it is skipped,
//! except under CI (`CI=true`), where it fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use samples::jobs::{self, QueueSpec};
use testkit::probe::free_port;
use testkit::{Master, Signal, TempDir, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_sample-job-worker");
const JOBS: usize = 5000;

/// The two tests are heavy; on a 2-core machine they run one after the other.
static SERIAL: Mutex<()> = Mutex::new(());

fn is_reload_done(l: &str) -> bool {
    l.contains("reload finished")
}

fn is_recovery(l: &str) -> bool {
    l.contains("recovered the jobs of an ended worker")
}

/// A worker of `m` that holds at least one job now.
fn worker_holding_a_job(m: &Master, spec: &QueueSpec) -> i32 {
    wait_for(Duration::from_secs(30), "a worker holding a job", || {
        m.workers()
            .into_iter()
            .find(|&pid| jobs::held_by(spec, pid).unwrap_or(0) > 0)
    })
}

/// The whole scenario against `spec`; `queue_args` name the queue on the command line.
fn no_job_lost(spec: &QueueSpec, queue_args: &[&str], dir: &Path) {
    let t0 = Instant::now();
    // Enqueue through the program itself.
    let mut enqueue: Vec<&str> = queue_args.to_vec();
    let n = JOBS.to_string();
    enqueue.extend(["--enqueue", &n, "--job-ms", "10"]);
    let out = Command::new(BIN).args(&enqueue).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let ids: BTreeSet<String> = jobs::queued_ids(spec).unwrap().into_iter().collect();
    assert_eq!(ids.len(), JOBS);

    let config = dir.join("job-worker.conf");
    std::fs::write(&config, "workers = 4\nconcurrency = 2\n").unwrap();
    let mut args: Vec<&str> = queue_args.to_vec();
    let config_arg = config.to_str().unwrap();
    args.extend(["--config", config_arg]);

    let mut m = Master::start_program(BIN, &args);
    m.wait_workers(4, "id");
    let mut killed = Vec::new();
    for reload in 1..=5 {
        // Reload while jobs flow: 300 more results since the last step.
        let floor = jobs::counts(spec).unwrap().done + 300;
        wait_for(Duration::from_secs(60), "300 more results", || {
            (jobs::counts(spec).unwrap().done >= floor).then_some(())
        });
        // The file changes between reloads: the workers are replaced with the new concurrency.
        let c = if reload % 2 == 1 { 3 } else { 2 };
        std::fs::write(&config, format!("workers = 4\nconcurrency = {c}\n")).unwrap();
        m.signal(Signal::SIGHUP);
        m.stderr
            .wait_count(Duration::from_secs(60), reload, &is_reload_done);
        if reload == 2 || reload == 4 {
            let victim = worker_holding_a_job(&m, spec);
            nix::sys::signal::kill(testkit::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
            killed.push(victim);
            m.stderr.wait_line(Duration::from_secs(30), |l| {
                is_recovery(l) && l.contains(&format!("pid={victim} "))
            });
        }
    }
    let before_term = jobs::counts(spec).unwrap();
    m.signal(Signal::SIGTERM);
    assert_eq!(
        m.wait_exit(Duration::from_secs(60)),
        0,
        "the master exits 0"
    );
    let after_term = jobs::counts(spec).unwrap();
    assert_eq!(
        after_term.claimed, 0,
        "every worker finished the jobs it held: {after_term:?}"
    );
    assert_eq!(after_term.queued + after_term.done, JOBS, "{after_term:?}");
    let duplicates_1 = m.stderr.count(|l| l.contains("job ran again"));

    // Restart until the queue is empty.
    let mut m2 = Master::start_program(BIN, &args);
    wait_for(Duration::from_secs(120), "every job done", || {
        let c = jobs::counts(spec).unwrap();
        (c.done == JOBS && c.queued == 0 && c.claimed == 0).then_some(())
    });
    m2.signal(Signal::SIGTERM);
    assert_eq!(m2.wait_exit(Duration::from_secs(60)), 0);
    let duplicates_2 = m2.stderr.count(|l| l.contains("job ran again"));

    let results = jobs::results(spec).unwrap();
    let done: BTreeSet<String> = results.keys().cloned().collect();
    assert_eq!(done, ids, "exactly the enqueued jobs have a result");
    for (id, r) in &results {
        assert!(
            r.starts_with(&format!("{id} sum=")),
            "result of {id}: {r:?}"
        );
    }
    let c = jobs::counts(spec).unwrap();
    assert_eq!((c.queued, c.claimed, c.done), (0, 0, JOBS));
    eprintln!(
        "{spec}: {JOBS} jobs, 5 reloads, killed {killed:?}; before TERM {before_term:?}, after \
         {after_term:?}; jobs that ran twice (result kept once): {}; lost 0; {:?}",
        duplicates_1 + duplicates_2,
        t0.elapsed()
    );
}

#[test]
fn spool_queue_loses_no_job_across_reloads_kills_and_a_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    let spec = QueueSpec::Spool { dir: spool.clone() };
    no_job_lost(&spec, &["--spool", spool.to_str().unwrap()], dir.path());
}

/// A `redis-server` of the test's own, on 127.0.0.1 and a free port, killed and reaped on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    /// `None` when `redis-server` is not installed (a failure under CI).
    fn start(dir: &Path) -> Option<Redis> {
        let port = free_port();
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "redis-server is not on PATH, and CI must run this test (.ci/run installs it)"
                    );
                }
                eprintln!("SKIPPED: redis-server is not on PATH");
                return None;
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let url = format!("redis://127.0.0.1:{port}/0");
        let r = Redis { child, url };
        let parsed: jobs::RedisUrl = r.url.parse().unwrap();
        wait_for(Duration::from_secs(20), "redis-server to answer", || {
            let mut c = jobs::resp::Conn::connect(
                &parsed,
                Duration::from_millis(200),
                Duration::from_secs(1),
            )
            .ok()?;
            c.cmd(&[b"PING"]).ok()
        });
        Some(r)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn redis_queue_loses_no_job_across_reloads_kills_and_a_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TempDir::new("redis");
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let spec = QueueSpec::Redis {
        url: redis.url.parse().unwrap(),
        prefix: "prefork-jobs".into(),
    };
    no_job_lost(&spec, &["--redis", &redis.url], dir.path());
}
