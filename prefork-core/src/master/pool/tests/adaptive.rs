//! The adaptive pool's decisions, with the fake process table and a fake clock: the driver's
//! in-flight counts stand for the scoreboard.

use super::*;

const SCAN: Duration = Duration::from_millis(100);

fn spare(min_spare: u32, max_spare: u32, max_workers: u32) -> PoolConfig {
    PoolConfig {
        spare: Some(SpareConfig {
            min_spare,
            max_spare,
            max_workers,
            interval: SCAN,
            idle_timeout: Duration::from_secs(2),
        }),
        ..explicit()
    }
}

/// A pool over `candidates` ids, and the world around it: every new worker is ready at the
/// next scan, every retired one exits then.
struct World {
    p: Pool<W>,
    f: Fake,
    t: Instant,
    exited: usize,
}

impl World {
    fn start(candidates: u32, cfg: PoolConfig) -> World {
        let t = Instant::now();
        let mut p = Pool::new(cfg);
        let mut f = Fake::default();
        assert!(p.start(set(0..candidates, 0), t, &mut f).is_none());
        World { p, f, t, exited: 0 }
    }

    /// The running workers, id → pid.
    fn running(&self) -> BTreeMap<u32, Pid> {
        self.p.current()
    }

    /// One scan period with `k` busy workers (the lowest running ids): the world moves, then the
    /// scan.
    fn scan(&mut self, k: usize) {
        self.t += SCAN;
        let (t, f) = (self.t, &mut self.f);
        for (_, pid, _) in f.spawned.clone() {
            self.p.worker_ready(pid, t, f);
        }
        let stops: Vec<Pid> = f.signals[self.exited..].iter().map(|s| s.0).collect();
        self.exited = f.signals.len();
        for pid in stops {
            self.p.exited(pid, ChildExit::Exited(0), t, f);
        }
        assert!(self.p.scan_due(t), "a scan is due every interval");
        let in_flight: BTreeMap<u32, Activity> = self
            .p
            .current()
            .keys()
            .take(k)
            .map(|&id| {
                let a = Activity {
                    in_flight: 1,
                    finished: 0,
                };
                (id, a)
            })
            .collect();
        self.p.adapt(&in_flight, t, f);
    }

    /// Scans with `k` busy workers until the running count is within `lo..=hi`; returns how
    /// many scans it took (panics after `max_scans`).
    fn settle(&mut self, k: usize, lo: usize, hi: usize, max_scans: usize) -> usize {
        for n in 1..=max_scans {
            self.scan(k);
            let running = self.running().len();
            if (lo..=hi).contains(&running) {
                return n;
            }
        }
        panic!(
            "k={k}: running {} after {max_scans} scans, wanted {lo}..={hi}",
            self.running().len()
        );
    }
}

#[test]
fn the_step_rule() {
    let sp = SpareConfig {
        min_spare: 1,
        max_spare: 3,
        max_workers: 12,
        interval: SCAN,
        idle_timeout: Duration::from_secs(2),
    };
    let quiet = Duration::from_secs(5);
    let busy = Duration::ZERO;
    // (candidates, active, idle, idle for) → step
    assert_eq!(sp.step(16, 0, 0, 0, busy), 1, "up to the floor");
    assert_eq!(sp.step(16, 4, 0, 0, busy), 1, "one idle missing");
    assert_eq!(sp.step(16, 4, 2, 2, busy), 0, "within the band");
    assert_eq!(
        sp.step(16, 8, 5, 5, busy),
        -2,
        "too many idle: the surplus goes"
    );
    let tight = SpareConfig { max_spare: 1, ..sp };
    assert_eq!(tight.step(16, 4, 3, 3, busy), -2, "down to max_spare idle");
    assert_eq!(
        tight.step(16, 2, 2, 2, busy),
        -1,
        "never below the floor (1)"
    );
    assert_eq!(
        sp.step(16, 11, 4, 3, busy),
        0,
        "4 idle now, but one of them finished a job in the interval: nobody goes"
    );
    assert_eq!(
        sp.step(16, 11, 3, 0, busy),
        0,
        "jobs moved between workers (none idle through the interval): no shortage now"
    );
    assert_eq!(sp.step(16, 11, 0, 0, busy), 1, "a shortage now: one more");
    assert_eq!(sp.step(16, 12, 0, 0, busy), 0, "max_workers");
    assert_eq!(sp.step(5, 5, 0, 0, busy), 0, "no more candidates");
    assert_eq!(
        sp.step(16, 3, 3, 3, quiet),
        -1,
        "quiet: shrink towards the floor"
    );
    assert_eq!(sp.step(16, 1, 1, 1, quiet), 0, "never below the floor");
    assert_eq!(sp.step(16, 3, 3, 3, busy), 0, "not quiet long enough");
    let wide = SpareConfig { min_spare: 3, ..sp };
    assert_eq!(sp.step(16, 2, 0, 0, busy), 1);
    assert_eq!(wide.step(16, 2, 0, 0, busy), 1, "floor 3: one more");
    assert_eq!(
        wide.step(16, 3, 0, 0, busy),
        3,
        "three idle missing: three at once"
    );
}

#[test]
fn the_running_count_follows_the_load_within_a_second() {
    let (min, max) = (1usize, 3usize);
    let mut w = World::start(16, spare(1, 3, 12));
    assert_eq!(w.running().len(), 1, "starts at the floor: only id 0");
    assert_eq!(w.f.spawned[0].0, 0);
    for k in [0usize, 8, 2, 0] {
        let took = w.settle(k, k + min, k + max, 10);
        // Then it stays there.
        for _ in 0..10 {
            w.scan(k);
            let running = w.running().len();
            assert!(
                (k + min..=k + max).contains(&running),
                "k={k}: running {running}"
            );
        }
        eprintln!("k={k}: within the band after {took} scan(s)");
    }
    // Idle long enough: back to the floor, one id per scan, never below.
    for _ in 0..40 {
        w.scan(0);
    }
    assert_eq!(w.running().keys().copied().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn it_starts_in_id_order_and_retires_the_surplus_highest_ids_first() {
    let mut w = World::start(16, spare(2, 3, 12));
    assert_eq!(w.running().len(), 2);
    w.settle(8, 10, 11, 10);
    let ids: Vec<u32> = w.running().keys().copied().collect();
    assert_eq!(
        ids,
        (0..ids.len() as u32).collect::<Vec<_>>(),
        "a prefix of the ids"
    );
    let before = w.running().len();
    // The load drops to nothing: at the first scan every worker was idle through the interval,
    // and the surplus above 3 idle goes at once, the highest ids; then nothing more moves
    // (within 1.2 s: before the 2 s idle timeout would take the pool further down).
    w.scan(0);
    assert_eq!(w.running().len(), 3, "the surplus retired at once");
    for _ in 0..12 {
        w.scan(0);
        assert_eq!(w.running().len(), 3, "then it holds");
    }
    assert_eq!(w.running().len(), 3);
    assert_eq!(
        w.running().keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // Each retired worker ended as removed, with its stop signal first.
    let ended: Vec<ExitReason> =
        w.p.take_events()
            .into_iter()
            .filter_map(|e| match e {
                PoolEvent::Ended(e) => Some(e.reason),
                _ => None,
            })
            .collect();
    assert_eq!(ended.len(), before - 3);
    assert!(ended.iter().all(|r| *r == ExitReason::Removed));
    assert!(w.f.signals.iter().all(|s| s.1 == Signal::SIGTERM));
    // And each was reported `removing` (its own sockets leave the steering) right before it.
    for (pid, _) in &w.f.signals {
        let at = w.f.calls.iter().position(|c| *c == format!("signal {pid}"));
        let removing = at.and_then(|i| i.checked_sub(1)).map(|i| &w.f.calls[i]);
        assert_eq!(
            removing,
            Some(&format!("removing {pid}")),
            "{:?}",
            w.f.calls
        );
    }
}

#[test]
fn max_workers_and_the_candidates_cap_it() {
    let mut w = World::start(16, spare(1, 3, 12));
    for _ in 0..30 {
        w.scan(100);
    }
    assert_eq!(w.running().len(), 12);
    let mut w = World::start(5, spare(1, 3, 12));
    for _ in 0..30 {
        w.scan(100);
    }
    assert_eq!(w.running().len(), 5);
}

#[test]
fn a_reload_replaces_only_the_active_ids_and_keeps_the_count() {
    let mut w = World::start(16, spare(1, 3, 12));
    w.settle(4, 5, 7, 10);
    let active = w.running().len();
    let spawned = w.f.spawned.len();
    w.p.reload(set(0..16, 1), w.t, &mut w.f);
    let new: Vec<u32> = w.f.spawned[spawned..].iter().map(|s| s.0).collect();
    assert_eq!(new, (0..active as u32).collect::<Vec<_>>());
    assert_eq!(w.p.spare_view().unwrap().active, active);
    // A reload to fewer candidates than run: the extra ids are retired.
    w.p.reload(set(0..2, 2), w.t, &mut w.f);
    assert_eq!(w.p.spare_view().unwrap().active, 2);
}

#[test]
fn only_an_adaptive_pool_has_a_periodic_deadline() {
    let (p, _, _) = running(3, explicit());
    assert_eq!(p.next_deadline(), None, "an idle fixed pool sleeps");
    assert!(p.spare_view().is_none());
    let w = World::start(16, spare(1, 3, 12));
    assert_eq!(w.p.next_deadline(), Some(w.t + SCAN));
    let v = w.p.spare_view().unwrap();
    assert_eq!((v.active, v.candidates), (1, 16));
}

#[test]
fn shutdown_stops_the_scans() {
    let mut w = World::start(16, spare(1, 3, 12));
    let _ = w.p.begin_shutdown();
    assert!(!w.p.scan_due(w.t + SCAN));
    w.p.adapt(&BTreeMap::new(), w.t + SCAN, &mut w.f);
    assert_eq!(w.f.spawned.len(), 1, "nothing started while stopping");
}
