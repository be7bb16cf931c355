//! A code upgrade is "rename the new binary over the old path, send SIGHUP". A broken new
//! binary never takes the service down: its attempts fail with growing delays while the old
//! workers keep serving; renaming a working binary back and sending SIGHUP recovers at once.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::load::{Load, LoadSpec};
use testkit::{DEADLINE, Master, Signal, TempDir, alive, listening_addr, ppid, wait_for};

/// Writes `content` beside `target` and renames it over `target` (atomic, as a deploy does).
fn deploy(target: &Path, content: &[u8]) {
    let tmp = target.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

/// The attempts the broken binary logged: id → start times in ms.
fn attempts(log: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if let Some((id, ns)) = line.split_once(' ')
            && let Ok(ns) = ns.trim().parse::<u64>()
        {
            m.entry(id.to_string()).or_default().push(ns / 1_000_000);
        }
    }
    m
}

/// Each original worker is still alive and still the master's child. (A failing replacement
/// is briefly a child of the master too, with `id=…` in its argv, so the set of children is not
/// the right thing to compare.)
fn assert_old_workers_serve(m: &Master, original: &BTreeMap<String, i32>) {
    for (id, pid) in original {
        assert!(
            alive(*pid) && ppid(*pid) == Some(m.pid().as_raw()),
            "the old worker {id} (pid {pid}) keeps serving"
        );
    }
}

#[test]
fn a_broken_binary_keeps_the_old_workers_and_a_fixed_one_recovers_at_once() {
    let dir = TempDir::new("deploy");
    let bin = dir.path().join("sample-warp-like");
    let good = std::fs::read(env!("CARGO_BIN_EXE_sample-warp-like")).unwrap();
    deploy(&bin, &good);
    let log = dir.path().join("attempts.log");

    let mut m = Master::start_program(&bin, &["-p", "0", "-w", "3", "--threads", "1"]);
    let addr = listening_addr(&m.stderr);
    let original = m.wait_workers(3, "id");
    let load = Load::start(
        addr,
        LoadSpec {
            keepalive: 4,
            fresh: 2,
            max_requests_per_thread: 1_000_000,
            max_time: Duration::from_secs(120),
            io_timeout: Duration::from_secs(15),
        },
    );

    // Deploy a binary that fails at once, then HUP.
    let script = format!(
        "#!/bin/sh\necho \"$1 $(date +%s%N)\" >> '{}'\nexit 1\n",
        log.display()
    );
    deploy(&bin, script.as_bytes());
    m.signal(Signal::SIGHUP);

    // For several seconds: every id keeps its old worker while its replacement keeps failing.
    let start = Instant::now();
    let seen = wait_for(Duration::from_secs(60), "6 failed attempts per id", || {
        assert_old_workers_serve(&m, &original);
        let a = attempts(&log);
        (a.len() == 3 && a.values().all(|v| v.len() >= 6)).then_some(a)
    });
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "attempts are spaced out"
    );
    for (id, times) in &seen {
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // Backoff 100 ms doubling: the k-th wait is at least 100·2^k ms (timers never fire
        // early); allow 10 ms for the clock of `date` in a shell.
        for (k, g) in gaps.iter().take(5).enumerate() {
            let floor = 100u64 << k;
            assert!(
                *g + 10 >= floor,
                "{id}: gap {k} was {g} ms, below {floor} ms: {gaps:?}"
            );
        }
        assert!(gaps[4] > 4 * gaps[0], "{id}: delays grow: {gaps:?}");
    }
    assert_old_workers_serve(&m, &original);
    let during = load.progress();
    assert!(during > 100, "requests were served meanwhile");

    // Deploy the fixed binary and HUP: every worker is replaced promptly.
    deploy(&bin, &good);
    let t = Instant::now();
    m.signal(Signal::SIGHUP);
    let fixed = m.wait_replaced(&original);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "recovery after the fixed deploy took {took:?} (the backoff must be reset by the HUP)"
    );
    eprintln!("recovered in {took:?}: {fixed:?}");

    let report = load.finish();
    eprintln!("{report:?}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "{:?}", report.errors);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
