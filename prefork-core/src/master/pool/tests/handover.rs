//! The pool across an upgrade in place: what [`Pool::export`] writes, [`Pool::adopt`] reads
//! back, with the fake process table and a fake clock.

use super::*;
use crate::upgrade::State;

/// Export at `t`, through the JSON document, adopt at `t` with `desired`.
fn round_trip(p: &Pool<W>, cfg: PoolConfig, desired: &BTreeMap<u32, W>, t: Instant) -> Pool<W> {
    let bytes = serde_json::to_vec(&p.export(t)).unwrap();
    let state = serde_json::from_slice(&bytes).unwrap();
    Pool::adopt(cfg, &state, desired, t).unwrap()
}

#[test]
fn adopted_workers_are_the_same_processes_and_the_roll_replaces_each_once_ready() {
    let (mut p, mut f, t0) = running(3, explicit());
    // A crash and a respawn, so the counters have something to carry.
    let victim = p.current()[&1];
    p.exited(
        victim,
        ChildExit::Signaled(Signal::SIGKILL),
        t0 + ms(10),
        &mut f,
    );
    let respawned = p.current()[&1];
    p.worker_ready(respawned, t0 + ms(11), &mut f);
    let t1 = t0 + ms(2000);
    let before = p.current();
    let views_before = p.slot_views();

    let mut q = round_trip(&p, explicit(), &set(0..3, 1), t1);
    assert_eq!(q.current(), before, "the same pids under the same ids");
    assert_eq!(q.generation(), p.generation());
    assert_eq!(q.spawns(), p.spawns());
    let restarts: Vec<u64> = q.slot_views().iter().map(|v| v.restarts).collect();
    assert_eq!(
        restarts,
        views_before.iter().map(|v| v.restarts).collect::<Vec<_>>()
    );
    assert!(q.worker_views().iter().all(|v| v.ready_at.is_some()));
    assert_eq!(
        q.settling_generation(),
        None,
        "adoption alone starts nothing"
    );

    // The roll: a reload with the new code's contexts.
    let mut g = Fake {
        next_pid: 50,
        ..Fake::default()
    };
    q.reload(set(0..3, 1), t1, &mut g);
    assert_eq!(g.spawned.len(), 3, "every id gets a replacement");
    assert!(g.tags.iter().all(|&t| t == 1), "with the new contexts");
    assert!(
        g.signals.is_empty(),
        "no old worker is stopped before its successor is ready"
    );
    for (_, pid, _) in g.spawned.clone() {
        q.worker_ready(pid, t1 + ms(5), &mut g);
    }
    let stopped: Vec<Pid> = g.signals.iter().map(|&(pid, _)| pid).collect();
    let mut old: Vec<Pid> = before.values().copied().collect();
    old.sort();
    let mut stopped_sorted = stopped.clone();
    stopped_sorted.sort();
    assert_eq!(
        stopped_sorted, old,
        "each old worker stopped once, after its successor"
    );
    assert_eq!(settled(&mut q).len(), 1);
}

#[test]
fn a_worker_that_died_during_the_exec_is_respawned_with_the_new_context() {
    let (p, _, t0) = running(2, explicit());
    let dead = p.current()[&0];
    let mut q = round_trip(&p, explicit(), &set(0..2, 7), t0 + ms(5000));
    let mut g = Fake {
        next_pid: 50,
        ..Fake::default()
    };
    assert!(q.exited(
        dead,
        ChildExit::Signaled(Signal::SIGKILL),
        t0 + ms(5001),
        &mut g
    ));
    assert_eq!(g.spawned.len(), 1, "respawned at once (it had served)");
    assert_eq!(g.spawned[0].0, 0);
    assert_eq!(g.tags, vec![7], "with the desired context of the new code");
}

#[test]
fn retiring_workers_keep_their_reason_and_kill_deadline() {
    let cfg = PoolConfig {
        stop_timeout: ms(1000),
        ..explicit()
    };
    let (mut p, mut f, t0) = running(2, cfg.clone());
    p.reload(set(0..1, 1), t0 + ms(10), &mut f); // id 1 removed, id 0 replaced
    let replacement = f.spawned.last().unwrap().1;
    p.worker_ready(replacement, t0 + ms(20), &mut f);
    let draining: Vec<_> = p
        .worker_views()
        .into_iter()
        .filter(|v| v.state == WorkerState::Draining)
        .map(|v| v.pid)
        .collect();
    assert_eq!(draining.len(), 2);
    let t1 = t0 + ms(400);
    let mut q = round_trip(&p, cfg, &set(0..1, 1), t1);
    let mut g = Fake::default();
    // Not killed before the deadlines the old master set (t0+10+1000, t0+20+1000)…
    q.tick(t0 + ms(1005), &mut g);
    assert!(g.signals.is_empty(), "{:?}", g.signals);
    // …and both are once they passed.
    q.tick(t0 + ms(1030), &mut g);
    let killed: Vec<Pid> = g
        .signals
        .iter()
        .filter(|&&(_, s)| s == Signal::SIGKILL)
        .map(|&(p, _)| p)
        .collect();
    assert_eq!(killed.len(), 2, "{:?}", g.signals);
    // A retired worker that exits is known to the adopted pool.
    assert!(q.exited(draining[0], ChildExit::Exited(0), t0 + ms(1040), &mut g));
}

#[test]
fn a_context_the_new_code_cannot_decode_fails_the_adoption() {
    let (p, _, t0) = running(1, explicit());
    let mut state = p.export(t0);
    state.slots[0].ctx = crate::upgrade::to_hex(br#"{"id":"not a number"}"#);
    let e = Pool::<W>::adopt(explicit(), &state, &set(0..1, 0), t0).unwrap_err();
    assert!(e.contains("cannot decode a worker context"), "{e}");
    // And a whole document with it is what the check child refuses.
    let doc = State {
        version: crate::upgrade::STATE_VERSION,
        written_by: String::new(),
        upgrades: 0,
        pool: state,
        unmanaged: Vec::new(),
        listeners: Vec::new(),
        readiness: [0, 0],
        board: None,
        control: None,
        book: Default::default(),
        groups: Vec::new(),
    };
    let back = State::from_bytes(&doc.to_bytes().unwrap()).unwrap();
    assert!(
        back.contexts()
            .any(|c| crate::upgrade::decode_context::<W>(c).is_err())
    );
}

#[test]
fn backoff_and_scale_cross_the_exec() {
    let cfg = PoolConfig {
        scale: Some(ScaleStatus {
            current: 2,
            min: 1,
            max: 10,
        }),
        ..explicit()
    };
    let t0 = Instant::now();
    let mut p = Pool::new(cfg.clone());
    let mut f = Fake::default();
    assert!(p.start(set(0..2, 0), t0, &mut f).is_none());
    // id 1's worker dies before it is ready: a failed start, retried after the backoff.
    let pid1 = p.current()[&1];
    p.exited(pid1, ChildExit::Exited(1), t0 + ms(5), &mut f);
    let mut state = p.export(t0 + ms(6));
    state.scale = Some(5);
    let q = Pool::<W>::adopt(cfg, &state, &set(0..2, 0), t0 + ms(6)).unwrap();
    assert_eq!(q.scale().map(|s| s.current), Some(5));
    assert_eq!(q.failed_starts(), p.failed_starts());
    let retry = q.next_deadline().expect("the retry is still scheduled");
    assert!(
        retry > t0 + ms(6),
        "not due at once: the backoff carried over"
    );
}

#[test]
fn the_roll_replaces_every_worker_even_when_only_changed_contexts_are_replaced_on_reload() {
    let cfg = PoolConfig {
        replace_unchanged: false,
        ..explicit()
    };
    let (p, _, t0) = running(3, cfg.clone());
    let t1 = t0 + ms(2000);
    // The same contexts in the new code.
    let mut q = round_trip(&p, cfg.clone(), &set(0..3, 0), t1);
    let mut g = Fake {
        next_pid: 50,
        ..Fake::default()
    };
    q.reload_replacing(set(0..3, 0), true, t1, &mut g);
    assert_eq!(
        g.spawned.len(),
        3,
        "the upgrade's roll replaces all: the code changed"
    );

    // The rollback's reconciliation replaces only what changed: id 1's context.
    let mut r = round_trip(&p, cfg, &set(0..3, 0), t1);
    let mut h = Fake {
        next_pid: 80,
        ..Fake::default()
    };
    let mut desired = set(0..3, 0);
    desired.insert(1, W { id: 1, tag: 9 });
    r.reload_replacing(desired, false, t1, &mut h);
    assert_eq!(h.spawned.len(), 1, "{:?}", h.spawned);
    assert_eq!(h.spawned[0].0, 1);
}

#[test]
fn a_crash_during_a_failing_roll_respawns_with_the_new_codes_context() {
    let (p, _, t0) = running(2, explicit());
    let t1 = t0 + ms(5000);
    let mut q = round_trip(&p, explicit(), &set(0..2, 4), t1);
    let mut g = Fake {
        next_pid: 50,
        ..Fake::default()
    };
    q.reload_replacing(set(0..2, 4), true, t1, &mut g);
    // id 0's replacement dies before it is ready: it waits for its backoff.
    let next0 = g.spawned[0].1;
    q.exited(next0, ChildExit::Exited(1), t1 + ms(1), &mut g);
    // Then the adopted worker of id 0 crashes: its respawn must carry the new code's
    // context (it holds this image's sockets), not the one decoded from the old master.
    let old0 = p.current()[&0];
    let before = g.tags.len();
    q.exited(
        old0,
        ChildExit::Signaled(Signal::SIGKILL),
        t1 + ms(2),
        &mut g,
    );
    assert_eq!(g.tags.len(), before + 1, "respawned at once");
    assert_eq!(g.tags.last(), Some(&4));
}

#[test]
fn an_adopted_adaptive_pool_scans_without_a_reload() {
    let cfg = PoolConfig {
        spare: Some(SpareConfig {
            min_spare: 1,
            max_spare: 2,
            max_workers: 4,
            interval: ms(100),
            idle_timeout: Duration::from_secs(5),
        }),
        ..explicit()
    };
    let (p, _, t0) = running(4, cfg.clone());
    let t1 = t0 + ms(1000);
    let q = round_trip(&p, cfg, &set(0..4, 0), t1);
    assert!(!q.scan_due(t1));
    assert!(
        q.scan_due(t1 + ms(100)),
        "a scan is due one interval after the adoption"
    );
}
