use super::*;
use crate::report::{ExitReason, ReloadOutcome, ReloadReport};
use crate::status::ScaleStatus;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct W {
    id: u32,
    tag: u32,
}

impl WorkerContext for W {
    type Id = u32;
    fn id(&self) -> u32 {
        self.id
    }
}

/// A fake world: spawns hand out pids 100, 101, …; signals are recorded.
#[derive(Default)]
struct Fake {
    next_pid: i32,
    spawned: Vec<(u32, Pid, u64)>,
    /// The `tag` of each spawned context, in spawn order.
    tags: Vec<u32>,
    signals: Vec<(Pid, Signal)>,
    /// Every call, in order: `spawn <pid>`, `signal <pid>`, `removing <pid>`.
    calls: Vec<String>,
    fail_spawns: bool,
    /// Spawns and signals in the order they happened.
    acts: Vec<Act>,
    /// The request budget each spawn got.
    budgets: Vec<Option<u64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Spawn(Pid),
    Signal(Pid, Signal),
}

impl Processes<W> for Fake {
    fn spawn(&mut self, ctx: &W, generation: u64, max_requests: Option<u64>) -> Result<Pid, Error> {
        if self.fail_spawns {
            return Err(Error::Spawn {
                what: ctx.id.to_string(),
                source: std::io::Error::from_raw_os_error(nix::libc::EADDRINUSE),
            });
        }
        let pid = Pid::from_raw(100 + self.next_pid);
        self.next_pid += 1;
        self.spawned.push((ctx.id, pid, generation));
        self.tags.push(ctx.tag);
        self.acts.push(Act::Spawn(pid));
        self.budgets.push(max_requests);
        Ok(pid)
    }
    fn signal(&mut self, pid: Pid, sig: Signal) {
        self.signals.push((pid, sig));
        self.calls.push(format!("signal {pid}"));
        self.acts.push(Act::Signal(pid, sig));
    }
    fn removing(&mut self, pid: Pid) {
        self.calls.push(format!("removing {pid}"));
    }
    fn inspect(&mut self, _pid: Pid) -> String {
        "wchan=fake".into()
    }
}

fn set(ids: impl IntoIterator<Item = u32>, tag: u32) -> BTreeMap<u32, W> {
    ids.into_iter().map(|id| (id, W { id, tag })).collect()
}

/// Explicit readiness, as `Settings::pool_config` makes it: promotion at readiness, the
/// startup window still judging early deaths.
fn explicit() -> PoolConfig {
    PoolConfig {
        promote_when_ready: true,
        ..PoolConfig::default()
    }
}

/// Starts ids 0..n and makes them all ready; returns (pool, fake, t0).
fn running(n: u32, cfg: PoolConfig) -> (Pool<W>, Fake, Instant) {
    let t0 = Instant::now();
    let mut p = Pool::new(cfg);
    let mut f = Fake::default();
    assert!(p.start(set(0..n, 0), t0, &mut f).is_none());
    for (_, pid, _) in f.spawned.clone() {
        p.worker_ready(pid, t0, &mut f);
    }
    (p, f, t0)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` times: the latest spawn (a replacement of id 0) exits 1 a millisecond later while
/// `old` keeps serving, then the clock moves to its retry and ticks. Returns each delay.
fn fail_replacements(
    p: &mut Pool<W>,
    f: &mut Fake,
    t: &mut Instant,
    n: usize,
    old: Pid,
) -> Vec<Duration> {
    let mut delays = Vec::new();
    for _ in 0..n {
        let bad = f.spawned.last().unwrap().1;
        *t += ms(1);
        assert!(p.exited(bad, ChildExit::Exited(1), *t, f));
        assert_eq!(p.current()[&0], old, "the old worker keeps serving");
        let due = p.next_deadline().unwrap();
        delays.push(due - *t);
        *t = due;
        p.tick(*t, f);
    }
    delays
}

#[test]
fn start_spawns_every_desired_id_once() {
    let (p, f, _) = running(4, explicit());
    assert_eq!(
        f.spawned.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(f.spawned.iter().all(|s| s.2 == 0), "generation 0 at start");
    assert_eq!(p.current().len(), 4);
    assert!(f.signals.is_empty());
}

#[test]
fn a_serving_worker_that_dies_is_respawned_at_once_and_nothing_else_moves() {
    let (mut p, mut f, t0) = running(4, explicit());
    let before = p.current();
    let victim = before[&2];
    let t = t0 + Duration::from_secs(5);
    assert!(p.exited(victim, ChildExit::Signaled(Signal::SIGKILL), t, &mut f));
    let after = p.current();
    assert_eq!(f.spawned.len(), 5, "exactly one respawn");
    assert_eq!(f.spawned[4].0, 2, "of the same id");
    assert_ne!(after[&2], victim);
    for id in [0, 1, 3] {
        assert_eq!(after[&id], before[&id]);
    }
    assert!(f.signals.is_empty(), "nobody else was signalled");
}

#[test]
fn a_storm_of_kills_on_serving_workers_keeps_all_ids_live() {
    let (mut p, mut f, t0) = running(8, explicit());
    let mut t = t0;
    for round in 0..200u32 {
        t += ms(1);
        let id = round % 8;
        let pid = p.current()[&id];
        p.worker_ready(pid, t, &mut f); // the respawned one became ready meanwhile
        assert!(p.exited(pid, ChildExit::Signaled(Signal::SIGKILL), t, &mut f));
        assert_eq!(
            p.current().len(),
            8,
            "every id has a worker after kill {round}"
        );
    }
    assert_eq!(f.spawned.len(), 8 + 200);
    assert_eq!(p.next_deadline().map(|d| d > t), Some(true));
}

#[test]
fn a_worker_that_never_starts_backs_off_exponentially_with_a_cap() {
    let cfg = PoolConfig {
        backoff_initial: ms(100),
        backoff_max: ms(1000),
        ..explicit()
    };
    let t0 = Instant::now();
    let mut p = Pool::new(cfg);
    let mut f = Fake::default();
    p.start(set([0], 0), t0, &mut f);
    let mut t = t0;
    let mut delays = Vec::new();
    for _ in 0..7 {
        let pid = f.spawned.last().unwrap().1;
        t += ms(5);
        p.exited(pid, ChildExit::Exited(1), t, &mut f);
        let due = p.next_deadline().expect("a retry is scheduled");
        delays.push(due - t);
        // Nothing happens before the deadline...
        let n = f.spawned.len();
        p.tick(due - ms(1), &mut f);
        assert_eq!(f.spawned.len(), n, "no retry before its time");
        // ...and the retry happens at it.
        t = due;
        p.tick(t, &mut f);
        assert_eq!(f.spawned.len(), n + 1);
    }
    assert_eq!(
        delays,
        [100, 200, 400, 800, 1000, 1000, 1000].map(ms).to_vec()
    );
}

#[test]
fn backoff_resets_once_a_worker_settled() {
    let cfg = PoolConfig {
        backoff_initial: ms(100),
        ..explicit()
    };
    let t0 = Instant::now();
    let mut p = Pool::new(cfg);
    let mut f = Fake::default();
    p.start(set([0], 0), t0, &mut f);
    let pid = f.spawned[0].1;
    p.exited(pid, ChildExit::Exited(1), t0, &mut f);
    let t1 = p.next_deadline().unwrap();
    p.tick(t1, &mut f);
    let pid = f.spawned[1].1;
    p.worker_ready(pid, t1, &mut f);
    // It served, then died: respawned at once, no delay.
    p.exited(
        pid,
        ChildExit::Signaled(Signal::SIGKILL),
        t1 + ms(10),
        &mut f,
    );
    assert_eq!(f.spawned.len(), 3);
    // And its next start failure waits the initial delay again, not 200 ms.
    let pid = f.spawned[2].1;
    let t2 = t1 + ms(20);
    p.exited(pid, ChildExit::Exited(1), t2, &mut f);
    assert_eq!(p.next_deadline(), Some(t2 + ms(100)));
}

#[test]
fn implicit_readiness_counts_deaths_in_the_startup_window_as_failed_starts() {
    let cfg = PoolConfig {
        startup_window: ms(1000),
        backoff_initial: ms(100),
        ..PoolConfig::default()
    };
    let t0 = Instant::now();
    let mut p = Pool::new(cfg);
    let mut f = Fake::default();
    p.start(set([0], 0), t0, &mut f);
    let pid = f.spawned[0].1;
    p.worker_ready(pid, t0 + ms(10), &mut f);
    p.exited(pid, ChildExit::Exited(1), t0 + ms(500), &mut f);
    assert_eq!(
        f.spawned.len(),
        1,
        "died inside the window: not respawned at once"
    );
    assert_eq!(p.next_deadline(), Some(t0 + ms(600)));
}

#[test]
fn reload_replaces_every_worker_only_after_its_successor_is_ready() {
    let (mut p, mut f, t0) = running(3, explicit());
    let old = p.current();
    let t = t0 + Duration::from_secs(1);
    p.reload(set(0..3, 0), t, &mut f);
    assert_eq!(f.spawned.len(), 6, "all three replacements start at once");
    assert!(f.spawned[3..].iter().all(|s| s.2 == 1), "generation 1");
    assert!(
        f.signals.is_empty(),
        "no old worker is stopped before its successor is ready"
    );
    assert_eq!(p.current(), old);
    // Successor of id 1 is ready: only old 1 is stopped.
    let new1 = f.spawned.iter().find(|s| s.0 == 1 && s.2 == 1).unwrap().1;
    p.worker_ready(new1, t + ms(50), &mut f);
    assert_eq!(f.signals, vec![(old[&1], Signal::SIGTERM)]);
    assert_eq!(p.current()[&1], new1);
    assert_eq!(p.current()[&0], old[&0]);
    // The retired one exits: it is not respawned.
    assert!(p.exited(old[&1], ChildExit::Exited(0), t + ms(60), &mut f));
    assert_eq!(f.spawned.len(), 6);
}

#[test]
fn a_replacement_that_dies_before_ready_keeps_the_old_worker_and_retries_with_backoff() {
    let cfg = PoolConfig {
        backoff_initial: ms(100),
        ..explicit()
    };
    let (mut p, mut f, t0) = running(1, cfg);
    let old = p.current()[&0];
    let mut t = t0 + ms(1);
    p.reload(set([0], 0), t, &mut f);
    let delays = fail_replacements(&mut p, &mut f, &mut t, 4, old);
    assert_eq!(delays, [100, 200, 400, 800].map(ms).to_vec());
    assert!(f.signals.is_empty(), "the old worker was never signalled");
    // A new HUP retries at once and resets the backoff.
    let n = f.spawned.len();
    let bad = f.spawned.last().unwrap().1;
    p.exited(bad, ChildExit::Exited(1), t + ms(1), &mut f);
    p.reload(set([0], 0), t + ms(2), &mut f);
    assert_eq!(f.spawned.len(), n + 1, "HUP retries immediately");
    let good = f.spawned.last().unwrap().1;
    p.worker_ready(good, t + ms(3), &mut f);
    assert_eq!(p.current()[&0], good);
    assert_eq!(f.signals, vec![(old, Signal::SIGTERM)]);
}

#[test]
fn a_replacement_that_misses_its_readiness_deadline_is_killed_and_retried() {
    let cfg = PoolConfig {
        ready_timeout: ms(500),
        backoff_initial: ms(100),
        ..explicit()
    };
    let (mut p, mut f, t0) = running(1, cfg);
    let old = p.current()[&0];
    p.reload(set([0], 0), t0, &mut f);
    let stuck = f.spawned.last().unwrap().1;
    assert_eq!(p.next_deadline(), Some(t0 + ms(500)));
    p.tick(t0 + ms(500), &mut f);
    assert_eq!(f.signals, vec![(stuck, Signal::SIGKILL)]);
    p.tick(t0 + ms(600), &mut f);
    assert_eq!(f.signals.len(), 1, "killed once");
    p.exited(
        stuck,
        ChildExit::Signaled(Signal::SIGKILL),
        t0 + ms(601),
        &mut f,
    );
    assert_eq!(p.current()[&0], old);
    assert_eq!(p.next_deadline(), Some(t0 + ms(701)));
}

#[test]
fn a_retired_worker_that_ignores_its_stop_signal_is_killed_at_the_deadline() {
    let cfg = PoolConfig {
        stop_timeout: ms(2000),
        ..explicit()
    };
    let (mut p, mut f, t0) = running(1, cfg);
    let old = p.current()[&0];
    p.reload(set([0], 0), t0, &mut f);
    let new = f.spawned.last().unwrap().1;
    p.worker_ready(new, t0 + ms(10), &mut f);
    assert_eq!(f.signals, vec![(old, Signal::SIGTERM)]);
    assert_eq!(p.next_deadline(), Some(t0 + ms(2010)));
    p.tick(t0 + ms(2010), &mut f);
    assert_eq!(
        f.signals,
        vec![(old, Signal::SIGTERM), (old, Signal::SIGKILL)]
    );
    assert!(p.exited(
        old,
        ChildExit::Signaled(Signal::SIGKILL),
        t0 + ms(2011),
        &mut f
    ));
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn removed_ids_are_stopped_and_new_ids_spawned() {
    let (mut p, mut f, t0) = running(
        3,
        PoolConfig {
            replace_unchanged: false,
            ..explicit()
        },
    );
    let old = p.current();
    p.reload(set([1, 2, 3, 4], 0), t0, &mut f);
    assert_eq!(f.signals, vec![(old[&0], Signal::SIGTERM)]);
    let new_ids: Vec<u32> = f.spawned[3..].iter().map(|s| s.0).collect();
    assert_eq!(new_ids, vec![3, 4]);
    assert_eq!(
        p.current()[&1],
        old[&1],
        "unchanged and replace_unchanged=false: kept"
    );
    assert!(p.exited(old[&0], ChildExit::Exited(0), t0 + ms(1), &mut f));
    assert_eq!(f.spawned.len(), 5, "a removed id is not respawned");
}

#[test]
fn only_changed_contexts_are_replaced_when_asked() {
    let (mut p, mut f, t0) = running(
        3,
        PoolConfig {
            replace_unchanged: false,
            ..explicit()
        },
    );
    let mut desired = set(0..3, 0);
    desired.get_mut(&1).unwrap().tag = 7;
    p.reload(desired, t0, &mut f);
    assert_eq!(f.spawned.len(), 4);
    assert_eq!(f.spawned[3].0, 1);
}

#[test]
fn parallel_replacements_are_bounded() {
    let (mut p, mut f, t0) = running(
        4,
        PoolConfig {
            max_parallel_replacements: 1,
            ..explicit()
        },
    );
    p.reload(set(0..4, 0), t0, &mut f);
    assert_eq!(f.spawned.len(), 5, "one replacement at a time");
    for k in 0..4 {
        let new = f.spawned.last().unwrap().1;
        p.worker_ready(new, t0 + ms(k + 1), &mut f);
    }
    assert_eq!(f.spawned.len(), 8);
    assert_eq!(f.signals.len(), 4);
    let ids: Vec<u32> = f.spawned[4..].iter().map(|s| s.0).collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
}

#[test]
fn a_due_retry_blocked_by_the_budget_leaves_no_past_deadline() {
    let cfg = PoolConfig {
        max_parallel_replacements: 1,
        backoff_initial: ms(100),
        ..explicit()
    };
    let (mut p, mut f, t0) = running(2, cfg);
    p.reload(set(0..2, 0), t0, &mut f);
    // id 0's replacement fails: retry in 100 ms; id 1's replacement starts meanwhile.
    let bad = f.spawned.last().unwrap().1;
    p.exited(bad, ChildExit::Exited(1), t0 + ms(1), &mut f);
    assert_eq!(f.spawned.last().unwrap().0, 1);
    // At the retry time the budget is still taken by id 1's replacement.
    p.tick(t0 + ms(101), &mut f);
    let d = p.next_deadline().unwrap();
    assert!(
        d > t0 + ms(101),
        "no deadline in the past: the loop would spin"
    );
    // id 1's replacement becomes ready: the budget frees and id 0 is retried at once.
    let n = f.spawned.len();
    let new1 = f.spawned.last().unwrap().1;
    p.worker_ready(new1, t0 + ms(150), &mut f);
    assert_eq!(f.spawned.len(), n + 1);
    assert_eq!(f.spawned.last().unwrap().0, 0);
}

#[test]
fn a_second_reload_during_a_replacement_replaces_the_stale_successor() {
    let (mut p, mut f, t0) = running(1, explicit());
    p.reload(set([0], 1), t0, &mut f);
    let stale = f.spawned.last().unwrap().1;
    p.reload(set([0], 2), t0 + ms(1), &mut f);
    assert_eq!(f.signals, vec![(stale, Signal::SIGTERM)]);
    assert_eq!(f.spawned.len(), 3);
    assert_eq!(f.spawned[2].2, 2, "generation 2");
}

#[test]
fn the_current_worker_dying_mid_replacement_hands_over_to_the_successor() {
    let (mut p, mut f, t0) = running(1, explicit());
    let old = p.current()[&0];
    p.reload(set([0], 0), t0, &mut f);
    let next = f.spawned.last().unwrap().1;
    p.exited(
        old,
        ChildExit::Signaled(Signal::SIGKILL),
        t0 + ms(1),
        &mut f,
    );
    assert_eq!(p.current()[&0], next);
    assert_eq!(f.spawned.len(), 2, "no extra spawn");
}

#[test]
fn spawn_errors_at_start_stop_the_start_and_later_ones_back_off() {
    let t0 = Instant::now();
    let mut p = Pool::new(explicit());
    let mut f = Fake {
        fail_spawns: true,
        ..Fake::default()
    };
    let failed = p.start(set(0..3, 0), t0, &mut f);
    assert!(
        failed.is_some(),
        "the first failure at start stops the start"
    );
    assert_eq!(f.spawned.len(), 0);
    let (mut p, mut f, t0) = running(1, explicit());
    f.fail_spawns = true;
    let pid = p.current()[&0];
    p.exited(
        pid,
        ChildExit::Signaled(Signal::SIGKILL),
        t0 + ms(1),
        &mut f,
    );
    assert!(p.current().is_empty());
    assert_eq!(p.next_deadline(), Some(t0 + ms(101)));
}

#[test]
fn shutdown_stops_respawning() {
    let (mut p, mut f, t0) = running(2, explicit());
    p.begin_shutdown();
    let pids = p.pids();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(p.exited(pid, ChildExit::Signaled(Signal::SIGTERM), t0, &mut f));
    }
    assert_eq!(f.spawned.len(), 2);
    assert!(p.pids().is_empty());
    assert_eq!(p.next_deadline(), None);
}

#[test]
fn a_serving_worker_that_dies_during_a_failing_rollout_comes_back_at_once_on_its_old_context() {
    let cfg = PoolConfig {
        backoff_initial: ms(100),
        ..explicit()
    };
    let (mut p, mut f, t0) = running(1, cfg);
    let old = p.current()[&0];
    // Roll out a new context whose replacements keep failing: the backoff grows.
    let mut t = t0 + ms(1);
    p.reload(set([0], 1), t, &mut f);
    fail_replacements(&mut p, &mut f, &mut t, 4, old);
    let bad = f.spawned.last().unwrap().1;
    p.exited(bad, ChildExit::Exited(1), t + ms(1), &mut f);
    let pending = p.next_deadline().unwrap();
    assert!(pending >= t + ms(1600), "the replacement backs off");
    // The serving worker is OOM-killed now: it is respawned at once, with the context it
    // ran (tag 0), not after the replacement's backoff and not with the failing one.
    let n = f.spawned.len();
    let t2 = t + ms(2);
    p.exited(old, ChildExit::Signaled(Signal::SIGKILL), t2, &mut f);
    assert_eq!(f.spawned.len(), n + 1, "respawned at once");
    assert_eq!(*f.tags.last().unwrap(), 0, "with the last good context");
    let again = p.current()[&0];
    p.worker_ready(again, t2 + ms(1), &mut f);
    // The rollout keeps its own backoff: no replacement starts before it is due.
    p.tick(t2 + ms(2), &mut f);
    assert_eq!(f.spawned.len(), n + 1);
    // When it is due, the replacement (tag 1) is tried again beside the serving worker.
    p.tick(pending, &mut f);
    assert_eq!(f.spawned.len(), n + 2);
    assert_eq!(*f.tags.last().unwrap(), 1);
    assert_eq!(p.current()[&0], again);
}

#[test]
fn huge_durations_mean_never_and_do_not_panic() {
    let cfg = PoolConfig {
        ready_timeout: Duration::MAX,
        startup_window: Duration::MAX,
        stop_timeout: Duration::MAX,
        backoff_initial: Duration::MAX,
        backoff_max: Duration::MAX,
        ..PoolConfig::default()
    };
    let t0 = Instant::now();
    let mut p = Pool::new(cfg);
    let mut f = Fake::default();
    p.start(set(0..2, 0), t0, &mut f);
    let pid = f.spawned[0].1;
    p.worker_ready(pid, t0, &mut f);
    p.tick(t0 + ms(1), &mut f);
    p.exited(pid, ChildExit::Exited(1), t0 + ms(2), &mut f);
    p.reload(set(0..2, 0), t0 + ms(3), &mut f);
    assert!(
        p.next_deadline()
            .is_some_and(|d| d > t0 + Duration::from_secs(3600))
    );
}

#[test]
fn readiness_from_a_worker_killed_for_missing_its_deadline_is_ignored() {
    let cfg = PoolConfig {
        ready_timeout: ms(500),
        ..explicit()
    };
    let (mut p, mut f, t0) = running(1, cfg);
    let old = p.current()[&0];
    p.reload(set([0], 0), t0, &mut f);
    let late = f.spawned.last().unwrap().1;
    p.tick(t0 + ms(500), &mut f);
    assert_eq!(f.signals, vec![(late, Signal::SIGKILL)]);
    // Its "ready" arrives after the SIGKILL: it must not take over.
    p.worker_ready(late, t0 + ms(501), &mut f);
    assert_eq!(p.current()[&0], old);
    assert_eq!(f.signals.len(), 1, "the old worker was not retired");
}

#[test]
fn unknown_pids_are_not_the_pools() {
    let (mut p, mut f, t0) = running(1, explicit());
    assert!(!p.exited(Pid::from_raw(99999), ChildExit::Exited(0), t0, &mut f));
    p.worker_ready(Pid::from_raw(99999), t0, &mut f);
    assert_eq!(f.spawned.len(), 1);
}

#[test]
fn a_worker_that_exits_right_after_ready_is_a_crash_loop_in_explicit_mode_too() {
    let (mut p, mut f, t0) = running(1, explicit());
    // Well past the window: it served; respawned at once.
    let pid = p.current()[&0];
    let t = t0 + Duration::from_secs(5);
    assert!(p.exited(pid, ChildExit::Exited(1), t, &mut f));
    assert_eq!(
        f.spawned.len(),
        2,
        "a worker that served comes back at once"
    );
    // The respawn says ready and exits 10 ms later, by itself: a failed start, with backoff.
    let pid = f.spawned[1].1;
    p.worker_ready(pid, t, &mut f);
    assert!(p.exited(pid, ChildExit::Exited(1), t + ms(10), &mut f));
    assert_eq!(f.spawned.len(), 2, "no respawn before the backoff");
    assert_eq!(p.next_deadline(), Some(t + ms(110)));
    p.tick(t + ms(110), &mut f);
    assert_eq!(f.spawned.len(), 3, "retried after the backoff");
    // The same early death by a SIGKILL from outside is not the worker's failure.
    let pid = f.spawned[2].1;
    p.worker_ready(pid, t + ms(110), &mut f);
    let t2 = t + ms(120);
    assert!(p.exited(pid, ChildExit::Signaled(Signal::SIGKILL), t2, &mut f));
    assert_eq!(
        f.spawned.len(),
        4,
        "killed from outside after ready: back at once"
    );
    // A crash (a fault) within the window is the worker's own doing again.
    let pid = f.spawned[3].1;
    p.worker_ready(pid, t2, &mut f);
    assert!(p.exited(
        pid,
        ChildExit::Signaled(Signal::SIGSEGV),
        t2 + ms(5),
        &mut f
    ));
    assert_eq!(f.spawned.len(), 4, "a segfault right after ready backs off");
}

#[test]
fn shutdown_freezes_a_settling_reload_and_signals_nobody() {
    // Implicit mode: a replacement takes over only after the 1 s window.
    let cfg = PoolConfig::default();
    let (mut p, mut f, t0) = running(2, cfg);
    let old = p.current();
    p.reload(set(0..2, 0), t0 + Duration::from_secs(5), &mut f);
    assert_eq!(f.spawned.len(), 4, "two replacements starting");
    let t = t0 + Duration::from_secs(5) + ms(10);
    let replacements: Vec<Pid> = f.spawned[2..].iter().map(|s| s.1).collect();
    for pid in replacements {
        p.worker_ready(pid, t, &mut f);
    }
    let asked = p.begin_shutdown();
    assert_eq!(
        asked.len(),
        4,
        "current and next workers are the driver's to ask"
    );
    // The window passes, a replacement dies, timers fire: the pool does nothing.
    p.tick(t + Duration::from_secs(2), &mut f);
    assert!(p.exited(
        f.spawned[3].1,
        ChildExit::Exited(0),
        t + Duration::from_secs(2),
        &mut f
    ));
    p.tick(t + Duration::from_secs(60), &mut f);
    assert!(
        f.signals.is_empty(),
        "no signal from the pool: {:?}",
        f.signals
    );
    assert_eq!(p.current(), old, "no replacement completed");
    assert_eq!(f.spawned.len(), 4, "nothing spawned");
    assert_eq!(p.next_deadline(), None);
}

fn settled(p: &mut Pool<W>) -> Vec<ReloadReport<u32>> {
    p.take_events()
        .into_iter()
        .filter_map(|e| match e {
            PoolEvent::Settled(r) => Some(r),
            PoolEvent::Ended(_) => None,
        })
        .collect()
}

fn ended(p: &mut Pool<W>) -> Vec<(u32, Pid, ExitReason)> {
    p.take_events()
        .into_iter()
        .filter_map(|e| match e {
            PoolEvent::Ended(e) => Some((e.id, e.pid, e.reason)),
            PoolEvent::Settled(_) => None,
        })
        .collect()
}

#[test]
fn the_start_and_each_reload_report_when_every_worker_is_ready() {
    let t0 = Instant::now();
    let mut p = Pool::new(explicit());
    let mut f = Fake::default();
    assert!(p.start(set(0..2, 0), t0, &mut f).is_none());
    p.worker_ready(f.spawned[0].1, t0 + ms(5), &mut f);
    assert!(settled(&mut p).is_empty(), "one of two is ready: not yet");
    p.worker_ready(f.spawned[1].1, t0 + ms(7), &mut f);
    let r = settled(&mut p);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].generation, &r[0].outcome),
        (0, &ReloadOutcome::Complete)
    );
    assert_eq!(r[0].took, ms(7));
    // A reload: complete once both replacements took over.
    let t = t0 + Duration::from_secs(5);
    p.reload(set(0..2, 0), t, &mut f);
    p.worker_ready(f.spawned[2].1, t + ms(3), &mut f);
    assert!(settled(&mut p).is_empty());
    p.worker_ready(f.spawned[3].1, t + ms(4), &mut f);
    let r = settled(&mut p);
    assert_eq!(
        (r[0].generation, &r[0].outcome),
        (1, &ReloadOutcome::Complete)
    );
    let retired = ended(&mut p);
    assert!(
        retired.is_empty(),
        "the old workers are draining, not ended yet"
    );
    p.exited(f.spawned[0].1, ChildExit::Exited(0), t + ms(50), &mut f);
    assert_eq!(
        ended(&mut p),
        vec![(0, f.spawned[0].1, ExitReason::Retired)]
    );
}

#[test]
fn a_broken_reload_is_reported_incomplete_after_three_failures_of_each_id() {
    let (mut p, mut f, t0) = running(2, explicit());
    let _ = p.take_events();
    let mut t = t0 + Duration::from_secs(5);
    p.reload(set(0..2, 1), t, &mut f);
    for round in 0..3 {
        let fresh: Vec<Pid> = f.spawned[f.spawned.len() - 2..]
            .iter()
            .map(|s| s.1)
            .collect();
        t += ms(1);
        for pid in fresh {
            p.exited(pid, ChildExit::Exited(1), t, &mut f);
        }
        if round < 2 {
            assert!(settled(&mut p).is_empty(), "round {round}: still trying");
            t = p.next_deadline().unwrap();
            p.tick(t, &mut f);
        }
    }
    let r = settled(&mut p);
    assert_eq!(r.len(), 1, "one report");
    match &r[0].outcome {
        ReloadOutcome::Incomplete { failed } => {
            assert_eq!(failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0, 1]);
            assert!(failed[0].1.contains("exit status 1"), "{failed:?}");
        }
        other => panic!("expected incomplete, got {other:?}"),
    }
    assert_eq!(p.current().len(), 2, "the old workers keep serving");
}

#[test]
fn exit_reasons_say_why_a_worker_ended() {
    let (mut p, mut f, t0) = running(3, explicit());
    let _ = p.take_events();
    let t = t0 + Duration::from_secs(5);
    let cur = p.current();
    p.exited(cur[&0], ChildExit::Signaled(Signal::SIGKILL), t, &mut f);
    assert_eq!(ended(&mut p), vec![(0, cur[&0], ExitReason::Crashed)]);
    // The respawn dies at once, by itself: a failed start.
    let respawn = f.spawned.last().unwrap().1;
    p.exited(respawn, ChildExit::Exited(2), t + ms(1), &mut f);
    assert_eq!(ended(&mut p), vec![(0, respawn, ExitReason::FailedStart)]);
    // Id 2 leaves the set: removed.
    p.reload(set(0..2, 0), t + ms(5), &mut f);
    p.exited(cur[&2], ChildExit::Exited(0), t + ms(6), &mut f);
    assert!(ended(&mut p).contains(&(2, cur[&2], ExitReason::Removed)));
    let views = p.slot_views();
    assert_eq!(views[0].restarts, 1);
    assert_eq!(views[0].failed_starts, 1);
    assert!(matches!(
        views[0].last_exit,
        Some((ChildExit::Exited(2), ExitReason::FailedStart, _))
    ));
}

#[test]
fn a_removed_id_is_reported_removing_before_its_stop_signal_and_a_replaced_one_never() {
    let (mut p, mut f, t0) = running(4, explicit());
    let before = p.current();
    f.calls.clear();
    // A smaller set: ids 2 and 3 leave, 0 and 1 are replaced.
    p.reload(set(0..2, 0), t0 + ms(10), &mut f);
    let (gone2, gone3) = (before[&2], before[&3]);
    assert_eq!(
        f.calls,
        vec![
            format!("removing {gone2}"),
            format!("signal {gone2}"),
            format!("removing {gone3}"),
            format!("signal {gone3}"),
        ],
        "each removed worker: removing, then its stop signal; nothing for the kept ids yet"
    );
    // The replacements take over: the old workers of ids 0 and 1 are retired, not removed.
    f.calls.clear();
    let news: Vec<Pid> = f.spawned.iter().skip(4).map(|s| s.1).collect();
    for pid in news {
        p.worker_ready(pid, t0 + ms(20), &mut f);
    }
    assert!(
        f.calls.iter().all(|c| !c.starts_with("removing")),
        "{:?}",
        f.calls
    );
    assert_eq!(
        f.calls.len(),
        2,
        "two replaced workers told to stop: {:?}",
        f.calls
    );
}

// ---------------------------------------------------------------------------------------------
// Health rules: hang, the master's own stall, recycling.

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An observation of `pid` that last beat at `beat` and served `served`.
fn seen(pid: Pid, beat: Option<Instant>, served: u64) -> Observation {
    Observation {
        pid,
        beat,
        served,
        in_flight: 0,
        memory: None,
    }
}

fn hang(timeout: Duration) -> PoolConfig {
    let mut cfg = explicit();
    cfg.health.hang_timeout = Some(timeout);
    cfg.health.hang_kill_after = secs(5);
    cfg
}

#[test]
fn a_worker_that_never_beats_is_never_judged() {
    let (mut p, mut f, t0) = running(1, hang(secs(2)));
    let pid = p.current()[&0];
    for k in 1..20 {
        p.observe(t0 + ms(500 * k), &[seen(pid, None, 0)], &mut f);
    }
    assert_eq!(f.spawned.len(), 1);
    assert!(f.signals.is_empty());
}

#[test]
fn a_beat_before_readiness_does_not_arm() {
    let t0 = Instant::now();
    let mut p = Pool::new(hang(secs(2)));
    let mut f = Fake::default();
    p.start(set([0], 0), t0, &mut f);
    let pid = f.spawned[0].1;
    // It beat once while starting, then became ready and never beat again.
    p.observe(t0 + ms(100), &[seen(pid, Some(t0 + ms(50)), 0)], &mut f);
    p.worker_ready(pid, t0 + ms(200), &mut f);
    for k in 1..20 {
        p.observe(
            t0 + ms(200 + 500 * k),
            &[seen(pid, Some(t0 + ms(50)), 0)],
            &mut f,
        );
    }
    assert!(f.signals.is_empty(), "not armed: {:?}", f.signals);
}

#[test]
fn a_hung_worker_is_replaced_first_then_aborted_then_killed_after_the_grace() {
    let (mut p, mut f, t0) = running(2, hang(secs(2)));
    let hung = p.current()[&0];
    let other = p.current()[&1];
    let beat = t0 + ms(100);
    let obs = |t: Instant| [seen(hung, Some(beat), 5), seen(other, Some(t), 5)];
    // Armed at its first beat after readiness; 2 s later it is not hung yet.
    let mut t = t0 + ms(500);
    while t <= beat + secs(2) {
        p.observe(t, &obs(t), &mut f);
        t += ms(500);
    }
    assert!(f.signals.is_empty(), "not past the timeout yet");
    p.observe(t, &obs(t), &mut f);
    let new = p.current()[&0];
    assert_ne!(new, hung);
    assert_eq!(p.current()[&1], other, "the other id is untouched");
    assert_eq!(
        f.acts[2..],
        [Act::Spawn(new), Act::Signal(hung, Signal::SIGABRT)],
        "the replacement starts before the hung worker is signalled"
    );
    // SIGKILL at the grace's end, not before.
    assert!(p.next_deadline().is_some_and(|d| d <= t + secs(5)));
    p.tick(t + secs(5) - ms(1), &mut f);
    assert_eq!(f.signals.len(), 1);
    p.tick(t + secs(5), &mut f);
    assert_eq!(f.signals.last(), Some(&(hung, Signal::SIGKILL)));
    // Its end is reported as a hang, even though it took the SIGKILL.
    p.exited(
        hung,
        ChildExit::Signaled(Signal::SIGKILL),
        t + secs(5),
        &mut f,
    );
    let ended: Vec<ExitReason> = p
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            PoolEvent::Ended(e) => Some(e.reason),
            _ => None,
        })
        .collect();
    assert_eq!(ended, vec![ExitReason::Hang]);
    assert_eq!(
        p.slot_views()[0].last_exit.map(|e| e.1),
        Some(ExitReason::Hang)
    );
    assert_eq!(p.replacements()[0], (ReplaceReason::Hang, 1));
    assert_eq!(f.spawned.len(), 3, "exactly one replacement");
}

#[test]
fn a_worker_that_keeps_beating_through_a_long_request_is_not_a_hang() {
    let (mut p, mut f, t0) = running(1, hang(secs(2)));
    let pid = p.current()[&0];
    // Twenty seconds of one request in flight, beating every 200 ms.
    let mut t = t0;
    while t < t0 + secs(20) {
        t += ms(500);
        let mut o = seen(pid, Some(t - ms(150)), 0);
        o.in_flight = 1;
        p.observe(t, &[o], &mut f);
    }
    assert!(f.signals.is_empty());
    assert_eq!(f.spawned.len(), 1);
}

#[test]
fn after_the_masters_own_stall_every_beat_is_rebased_and_nobody_is_killed() {
    let (mut p, mut f, t0) = running(2, hang(secs(2)));
    let pids: Vec<Pid> = p.current().values().copied().collect();
    let all = |beat: Instant| -> Vec<Observation> {
        pids.iter().map(|&pid| seen(pid, Some(beat), 0)).collect()
    };
    let mut t = t0;
    for _ in 0..4 {
        t += ms(500);
        p.observe(t, &all(t - ms(100)), &mut f);
    }
    // Master and workers stopped together for 4 s: the first read after it sees beats 4 s old.
    let stopped_at = t - ms(100);
    t += secs(4);
    p.observe(t, &all(stopped_at), &mut f);
    assert!(
        f.signals.is_empty(),
        "nobody is judged after the master's stall"
    );
    // The workers beat again: nobody is ever killed.
    for _ in 0..8 {
        t += ms(500);
        p.observe(t, &all(t - ms(100)), &mut f);
    }
    assert!(f.signals.is_empty());
    assert_eq!(f.spawned.len(), 2);
}

#[test]
fn a_worker_still_silent_a_timeout_after_the_rebase_is_hung() {
    let (mut p, mut f, t0) = running(1, hang(secs(2)));
    let pid = p.current()[&0];
    let beat = t0 + ms(100);
    p.observe(t0 + ms(500), &[seen(pid, Some(beat), 0)], &mut f);
    // The master stalls 4 s: rebased, not judged.
    let mut t = t0 + ms(4500);
    p.observe(t, &[seen(pid, Some(beat), 0)], &mut f);
    assert!(f.signals.is_empty());
    // The worker never beats again: judged once a full timeout passed since the rebase.
    while t < t0 + ms(4500) + secs(2) {
        t += ms(500);
        p.observe(t, &[seen(pid, Some(beat), 0)], &mut f);
        if t <= t0 + ms(4500) + secs(2) {
            assert!(f.signals.is_empty(), "judged too early at {:?}", t - t0);
        }
    }
    t += ms(500);
    p.observe(t, &[seen(pid, Some(beat), 0)], &mut f);
    assert_eq!(f.signals, vec![(pid, Signal::SIGABRT)]);
}

#[test]
fn the_scoreboard_is_read_periodically_only_when_a_setting_asks() {
    let (mut p, _, t0) = running(2, explicit());
    assert_eq!(p.health_scan_due(t0 + secs(3600)), None);
    assert_eq!(p.next_deadline(), None, "an idle pool has no timer");
    let (mut p, _, t0) = running(2, hang(secs(2)));
    assert_eq!(p.next_deadline(), Some(t0 + ms(500)));
    assert_eq!(p.health_scan_due(t0 + ms(499)), None);
    assert_eq!(p.health_scan_due(t0 + ms(500)), Some(false));
    assert_eq!(p.next_deadline(), Some(t0 + ms(1000)));
    let mut cfg = explicit();
    cfg.health.max_memory = Some(64 << 20);
    cfg.health.memory_check_interval = secs(1);
    let (mut p, _, t0) = running(2, cfg);
    assert_eq!(
        p.health_scan_due(t0 + secs(1)),
        Some(true),
        "memory is read"
    );
}

fn recycling(max_requests: u64) -> PoolConfig {
    let mut cfg = explicit();
    cfg.health.max_requests = Some(max_requests);
    cfg
}

#[test]
fn a_worker_that_served_its_budget_is_replaced_readiness_gated() {
    let (mut p, mut f, t0) = running(2, recycling(500));
    assert_eq!(f.budgets, vec![Some(500), Some(500)], "no jitter asked");
    let old = p.current()[&0];
    let t = t0 + secs(1);
    p.observe(t, &[seen(old, None, 499)], &mut f);
    assert_eq!(f.spawned.len(), 2, "under budget");
    p.observe(t, &[seen(old, None, 500)], &mut f);
    assert_eq!(f.spawned.len(), 3, "the replacement starts");
    assert!(
        f.signals.is_empty(),
        "the old one serves until the new one is ready"
    );
    assert_eq!(p.current()[&0], old);
    // Seen again past the budget while its replacement starts: nothing more.
    p.observe(t + ms(10), &[seen(old, None, 700)], &mut f);
    assert_eq!(f.spawned.len(), 3);
    let new = f.spawned[2].1;
    p.worker_ready(new, t + ms(20), &mut f);
    assert_eq!(p.current()[&0], new);
    assert_eq!(f.signals, vec![(old, Signal::SIGTERM)]);
    p.exited(old, ChildExit::Exited(0), t + ms(30), &mut f);
    assert_eq!(
        p.slot_views()[0].last_exit.map(|e| e.1),
        Some(ExitReason::MaxRequests)
    );
    assert_eq!(p.replacements()[1], (ReplaceReason::MaxRequests, 1));
}

#[test]
fn recycles_start_one_at_a_time_by_default() {
    let (mut p, mut f, t0) = running(3, recycling(100));
    let olds: Vec<Pid> = p.current().values().copied().collect();
    let t = t0 + secs(1);
    let obs: Vec<Observation> = olds.iter().map(|&pid| seen(pid, None, 150)).collect();
    p.observe(t, &obs, &mut f);
    assert_eq!(f.spawned.len(), 4, "one recycle starting at a time");
    for k in 0..3 {
        let new = f.spawned.last().unwrap().1;
        p.worker_ready(new, t + ms(k + 1), &mut f);
    }
    assert_eq!(f.spawned.len(), 6, "each took its turn");
    assert_eq!(f.signals.len(), 3);
    assert_eq!(p.current().len(), 3);
    assert!(p.current().values().all(|pid| !olds.contains(pid)));
}

#[test]
fn a_failing_recycle_replacement_backs_off_while_the_old_worker_serves() {
    let (mut p, mut f, t0) = running(1, recycling(10));
    let old = p.current()[&0];
    let mut t = t0 + secs(1);
    p.observe(t, &[seen(old, None, 10)], &mut f);
    let delays = fail_replacements(&mut p, &mut f, &mut t, 3, old);
    assert_eq!(delays, [100, 200, 400].map(ms).to_vec());
    assert!(f.signals.is_empty());
}

#[test]
fn request_budgets_get_a_jitter_within_bounds_drawn_per_worker() {
    let mut cfg = recycling(1000);
    cfg.health.max_requests_jitter = 100;
    let t0 = Instant::now();
    let mut p = Pool::new(cfg);
    p.seed(42);
    let mut f = Fake::default();
    p.start(set(0..50, 0), t0, &mut f);
    let budgets: Vec<u64> = f.budgets.iter().map(|b| b.unwrap()).collect();
    assert!(
        budgets.iter().all(|&b| (1000..=1100).contains(&b)),
        "{budgets:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = budgets.iter().copied().collect();
    assert!(distinct.len() > 10, "drawn, not fixed: {budgets:?}");
}

#[test]
fn a_worker_past_its_age_is_recycled_and_its_replacement_gets_a_fresh_age() {
    let mut cfg = explicit();
    cfg.health.max_age = Some(secs(60));
    cfg.health.max_age_jitter = secs(10);
    let (mut p, mut f, t0) = running(1, cfg);
    let old = p.current()[&0];
    let due = p.next_deadline().expect("the age limit is a deadline");
    assert!(
        due >= t0 + secs(60) && due <= t0 + secs(70),
        "{:?}",
        due - t0
    );
    p.tick(due - ms(1), &mut f);
    assert_eq!(f.spawned.len(), 1);
    p.tick(due, &mut f);
    assert_eq!(f.spawned.len(), 2, "replacement started at the deadline");
    let new = f.spawned[1].1;
    p.worker_ready(new, due + ms(50), &mut f);
    assert_eq!(f.signals, vec![(old, Signal::SIGTERM)]);
    let next = p.next_deadline().unwrap();
    assert!(
        next >= due + secs(30),
        "the stop deadline or the new worker's age limit"
    );
    p.exited(old, ChildExit::Exited(0), due + ms(60), &mut f);
    assert_eq!(
        p.slot_views()[0].last_exit.map(|e| e.1),
        Some(ExitReason::MaxAge)
    );
    let next = p.next_deadline().unwrap();
    assert!(
        next >= due + secs(60),
        "a fresh age for the new worker: {:?}",
        next - due
    );
}

#[test]
fn only_the_worker_over_the_memory_limit_is_recycled() {
    let mut cfg = explicit();
    cfg.health.max_memory = Some(64 << 20);
    let (mut p, mut f, t0) = running(2, cfg);
    let (a, b) = (p.current()[&0], p.current()[&1]);
    let mem = |pid, m| Observation {
        memory: Some(m),
        ..seen(pid, None, 0)
    };
    p.observe(t0 + secs(5), &[mem(a, 20 << 20), mem(b, 120 << 20)], &mut f);
    assert_eq!(f.spawned.len(), 3);
    assert_eq!(f.spawned[2].0, 1, "id 1 only");
    let new = f.spawned[2].1;
    p.worker_ready(new, t0 + secs(6), &mut f);
    assert_eq!(f.signals, vec![(b, Signal::SIGTERM)]);
    assert_eq!(p.current()[&0], a);
}

#[test]
fn a_reload_supersedes_a_pending_recycle() {
    let (mut p, mut f, t0) = running(1, recycling(10));
    let old = p.current()[&0];
    p.observe(t0 + secs(1), &[seen(old, None, 10)], &mut f);
    assert_eq!(f.spawned.len(), 2);
    let recycle_next = f.spawned[1].1;
    p.reload(set([0], 1), t0 + secs(2), &mut f);
    assert_eq!(
        f.signals,
        vec![(recycle_next, Signal::SIGTERM)],
        "the stale next goes"
    );
    let reload_next = f.spawned[2].1;
    p.worker_ready(reload_next, t0 + secs(3), &mut f);
    assert_eq!(p.current()[&0], reload_next);
    p.exited(old, ChildExit::Exited(0), t0 + secs(4), &mut f);
    assert_eq!(
        p.slot_views()[0].last_exit.map(|e| e.1),
        Some(ExitReason::Retired),
        "a reload's replacement"
    );
}

#[test]
fn worker_views_carry_what_the_scoreboard_showed() {
    let (mut p, mut f, t0) = running(1, recycling(1000));
    let pid = p.current()[&0];
    let beat = t0 + ms(900);
    let o = Observation {
        in_flight: 3,
        memory: Some(5 << 20),
        ..seen(pid, Some(beat), 42)
    };
    p.observe(t0 + secs(1), &[o], &mut f);
    let v = &p.worker_views()[0];
    assert_eq!((v.requests, v.in_flight, v.memory), (42, 3, Some(5 << 20)));
    assert_eq!(v.max_requests, Some(1000));
    assert_eq!(v.heartbeat_age(t0 + secs(1)), Some(ms(100)));
}

/// Scaling on, 5 ids running and ready, bounds 1..=8.
fn scaled(n: u32) -> (Pool<W>, Fake, Instant) {
    let cfg = PoolConfig {
        scale: Some(ScaleStatus {
            current: n,
            min: 1,
            max: 8,
        }),
        ..explicit()
    };
    running(n, cfg)
}

#[test]
fn scale_requests_outside_the_bounds_are_refused_with_a_reason() {
    let (p, _, _) = scaled(5);
    assert_eq!(p.plan_scale(ScaleChange::To(7)), Ok(7));
    assert_eq!(p.plan_scale(ScaleChange::By(3)), Ok(8));
    assert_eq!(p.plan_scale(ScaleChange::By(-4)), Ok(1));
    let e = p.plan_scale(ScaleChange::By(4)).unwrap_err();
    assert!(e.contains("9 is outside the bounds 1..=8"), "{e}");
    let e = p.plan_scale(ScaleChange::By(-5)).unwrap_err();
    assert!(e.contains("0 is outside"), "{e}");
    assert!(p.plan_scale(ScaleChange::To(9)).is_err());
    let (off, _, _) = running(2, explicit());
    let e = off.plan_scale(ScaleChange::By(1)).unwrap_err();
    assert!(e.contains("not enabled"), "{e}");
}

#[test]
fn scaling_up_starts_only_the_new_ids_and_down_retires_only_the_removed_ones() {
    let (mut p, mut f, t0) = scaled(5);
    let before = p.current();
    let t = t0 + ms(10);
    let diff = p.rescale(7, set(0..7, 0), t, &mut f);
    assert_eq!(diff.started, vec![5, 6]);
    assert!(diff.removed.is_empty());
    let spawned: Vec<u32> = f.spawned[5..].iter().map(|s| s.0).collect();
    assert_eq!(spawned, vec![5, 6], "only the new ids start");
    assert!(f.signals.is_empty(), "nobody is replaced or stopped");
    for id in 0..5 {
        assert_eq!(p.current()[&id], before[&id]);
    }
    assert_eq!(p.scale().map(|s| s.current), Some(7));
    let new: Vec<Pid> = f.spawned[5..].iter().map(|s| s.1).collect();
    for pid in new {
        p.worker_ready(pid, t, &mut f);
    }

    // Down to 2: ids 2..=6 get their stop signal, through the removed-id path.
    let cur = p.current();
    let diff = p.rescale(2, set(0..2, 0), t + ms(10), &mut f);
    assert_eq!(diff.removed, vec![2, 3, 4, 5, 6]);
    assert!(diff.started.is_empty());
    let stopped: Vec<Pid> = f.signals.iter().map(|s| s.0).collect();
    assert_eq!(stopped, (2..7).map(|id| cur[&id]).collect::<Vec<_>>());
    assert!(f.signals.iter().all(|s| s.1 == Signal::SIGTERM));
    assert_eq!(f.spawned.len(), 7, "nothing starts");
    // They drain and exit as removed workers.
    for id in 2..7 {
        assert!(p.exited(cur[&id], ChildExit::Exited(0), t + ms(20), &mut f));
    }
    let removed = p
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, PoolEvent::Ended(w) if w.reason == ExitReason::Removed))
        .count();
    assert_eq!(removed, 5);
    assert_eq!(p.current().len(), 2);
    assert_eq!(p.pids().len(), 2);
}

#[test]
fn a_reload_keeps_the_scale_and_scaling_touches_no_backoff() {
    let (mut p, mut f, t0) = scaled(3);
    p.rescale(5, set(0..5, 0), t0, &mut f);
    p.reload(set(0..5, 1), t0 + ms(5), &mut f);
    assert_eq!(p.scale().map(|s| s.current), Some(5), "HUP keeps the scale");
    assert_eq!(p.generation(), 1);
}

#[test]
fn replacing_one_id_is_a_rolling_readiness_gated_replacement_of_that_id_only() {
    let (mut p, mut f, t0) = running(3, explicit());
    let before = p.current();
    let t = t0 + ms(10);
    let old = p.replace(&1, t, &mut f).unwrap();
    assert_eq!(old, before[&1]);
    assert_eq!(f.spawned.len(), 4, "one replacement starts");
    assert_eq!(f.spawned[3].0, 1);
    assert!(
        f.signals.is_empty(),
        "the old one serves until the new one is ready"
    );
    assert_eq!(p.replace_progress(&1, old), ReplaceProgress::Pending);
    // Asking again while it is under way changes nothing.
    assert_eq!(p.replace(&1, t, &mut f), Ok(old));
    assert_eq!(f.spawned.len(), 4);
    let new = f.spawned[3].1;
    p.worker_ready(new, t + ms(5), &mut f);
    assert_eq!(p.replace_progress(&1, old), ReplaceProgress::Done(new));
    assert_eq!(f.signals, vec![(old, Signal::SIGTERM)]);
    for id in [0, 2] {
        assert_eq!(p.current()[&id], before[&id]);
    }
    assert!(p.replace(&9, t, &mut f).unwrap_err().contains("no worker"));
}

#[test]
fn a_replacement_that_keeps_failing_is_given_up_and_the_old_worker_keeps_serving() {
    let (mut p, mut f, t0) = running(1, explicit());
    let old = p.current()[&0];
    let mut t = t0 + ms(10);
    p.replace(&0, t, &mut f).unwrap();
    fail_replacements(&mut p, &mut f, &mut t, 2, old);
    assert_eq!(p.replace_progress(&0, old), ReplaceProgress::Pending);
    let bad = f.spawned.last().unwrap().1;
    t += ms(1);
    p.exited(bad, ChildExit::Exited(1), t, &mut f);
    match p.replace_progress(&0, old) {
        ReplaceProgress::Failed(why) => assert!(why.contains("exit status 1"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.current()[&0], old);
    assert_eq!(p.failed_starts(), 3);
    assert_eq!(p.spawns(), 4);
}
mod adaptive;
mod handover;
