//! The supervision state machine: keeps the running workers equal to the desired set.
//!
//! This module decides; it does not touch processes. It is driven by the master's loop with
//! events (a reload, a child that exited, a readiness message, the clock) and acts through the
//! small [`Processes`] trait ("start a worker for this context", "send this pid a signal"). Unit
//! tests drive it with a fake, so every rule below is checked without a single process.
//!
//! # The rules
//!
//! * **Slots by id.** Each desired id has a slot with at most one *current* worker and at most
//!   one *next* worker (a replacement that is starting). Old workers being stopped are *retiring*:
//!   they have been sent the stop signal and get `SIGKILL` at their deadline.
//! * **Availability first.** A worker that was up (settled: ready, and past the startup window
//!   in implicit mode) and then died is respawned at once, whatever killed it.
//! * **Backoff only for failure to start.** A worker that dies before it settled, misses its
//!   readiness deadline, or whose spawn fails, is retried after `initial × 2^(n-1)`, capped at
//!   `max`. The count resets when a worker of that id settles, and on every reload. Starts of
//!   the current worker and starts of a replacement keep separate counts, so a failing rollout
//!   never delays the respawn of a worker that was serving.
//! * **Last good context.** While a replacement for a new context has not taken over, a current
//!   worker that dies is respawned with the context it was running, not the new one.
//! * **Rolling replacement.** On reload, each id that stays is replaced (all of them, or only
//!   those whose encoded context changed): the next worker starts, and the current one is
//!   retired only once the next one settled. A next worker that fails is retried with backoff
//!   while the current one keeps serving. At most `max_parallel_replacements` start at once.
//! * **Removed ids** are retired; **new ids** are spawned.
//! * **Shutdown** stops every spawn; what runs is the driver's to signal and reap.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::context::WorkerContext;
use crate::error::Error;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildExit::Exited(c) => write!(f, "exit status {c}"),
            ChildExit::Signaled(s) => write!(f, "signal {}", s.as_str()),
        }
    }
}

/// What the state machine needs from the outside world.
pub(crate) trait Processes<W> {
    /// Starts a worker for `ctx` (the user's `fork` callback).
    fn spawn(&mut self, ctx: &W, generation: u64) -> Result<Pid, Error>;
    /// Sends `sig` to `pid`. The pid has not been reaped yet, so it cannot be recycled.
    fn signal(&mut self, pid: Pid, sig: Signal);
}

/// Tunables of the state machine (a view of [`Settings`](crate::Settings)).
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub ready_timeout: Duration,
    pub startup_window: Duration,
    pub stop_timeout: Duration,
    pub stop_signal: Signal,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_parallel_replacements: usize,
    pub replace_unchanged: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            ready_timeout: Duration::from_secs(30),
            startup_window: Duration::from_secs(1),
            stop_timeout: Duration::from_secs(30),
            stop_signal: Signal::SIGTERM,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(15),
            max_parallel_replacements: usize::MAX,
            replace_unchanged: true,
        }
    }
}

#[derive(Debug)]
struct Proc<W> {
    pid: Pid,
    /// The context it runs.
    ctx: W,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    ready_deadline: Instant,
    generation: u64,
    killed: bool,
}

impl<W> Proc<W> {
    fn settled(&self, now: Instant, window: Duration) -> bool {
        self.ready_at.is_some() && now >= later(self.spawned_at, window)
    }
}

/// Failed attempts in a row, and when the next attempt is due.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// True if an attempt may start now; a past deadline is cleared (it must not stay behind,
    /// or the loop would wake up for it again and again).
    fn due(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|t| t > now) {
            return false;
        }
        self.retry_at = None;
        true
    }

    /// Records a failure; returns the delay before the next attempt.
    fn fail(&mut self, cfg: &PoolConfig, now: Instant) -> Duration {
        self.failures += 1;
        let d = backoff(cfg, self.failures);
        self.retry_at = Some(later(now, d));
        d
    }
}

#[derive(Debug)]
struct Slot<W> {
    /// The desired context.
    ctx: W,
    encoded: Vec<u8>,
    /// The context of the last worker of this id that served. While a replacement for a new
    /// context has not yet taken over, a current worker that dies is respawned with this one:
    /// a rollout that keeps failing never takes the id down.
    good: Option<W>,
    current: Option<Proc<W>>,
    next: Option<Proc<W>>,
    wants_replacement: bool,
    /// Starts of the current worker.
    start: Backoff,
    /// Starts of a replacement.
    replace: Backoff,
}

#[derive(Debug)]
struct Retiring {
    kill_at: Instant,
    killed: bool,
}

/// The state machine. `W` is the user's context type.
#[derive(Debug)]
pub(crate) struct Pool<W: WorkerContext> {
    cfg: PoolConfig,
    slots: BTreeMap<W::Id, Slot<W>>,
    retiring: BTreeMap<Pid, Retiring>,
    generation: u64,
    shutting_down: bool,
    /// False during the very first `reload` (the start).
    started: bool,
}

fn encode_for_diff<W: WorkerContext>(w: &W) -> Vec<u8> {
    w.encode().unwrap_or_default()
}

impl<W: WorkerContext> Pool<W> {
    pub fn new(mut cfg: PoolConfig) -> Self {
        cfg.max_parallel_replacements = cfg.max_parallel_replacements.max(1);
        Pool {
            cfg,
            slots: BTreeMap::new(),
            retiring: BTreeMap::new(),
            generation: 0,
            shutting_down: false,
            started: false,
        }
    }

    /// Sets a new desired set. The first call is the start (generation 0); each later call is a
    /// reload (generation + 1). Returns the errors of spawns that failed right away (the first
    /// call's caller treats them as fatal; later ones are retried with backoff).
    pub fn reload(
        &mut self,
        desired: BTreeMap<W::Id, W>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) -> Vec<(W::Id, Error)> {
        if self.started {
            self.generation += 1;
        }
        let generation = self.generation;
        // Ids that left the set.
        let gone: Vec<W::Id> = self
            .slots
            .keys()
            .filter(|id| !desired.contains_key(id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(slot) = self.slots.remove(&id) {
                tracing::info!(worker_id = ?id, generation, "worker left the desired set");
                for p in [slot.current, slot.next].into_iter().flatten() {
                    self.retire(p.pid, now, ops);
                }
            }
        }
        for (id, ctx) in desired {
            let encoded = encode_for_diff(&ctx);
            match self.slots.get_mut(&id) {
                None => {
                    self.slots.insert(
                        id,
                        Slot {
                            ctx,
                            encoded,
                            good: None,
                            current: None,
                            next: None,
                            wants_replacement: false,
                            start: Backoff::default(),
                            replace: Backoff::default(),
                        },
                    );
                }
                Some(slot) => {
                    let changed = slot.encoded != encoded;
                    slot.ctx = ctx;
                    slot.encoded = encoded;
                    slot.start.reset();
                    slot.replace.reset();
                    let stale_next = slot.next.take();
                    if slot.current.is_some() && (changed || self.cfg.replace_unchanged) {
                        slot.wants_replacement = true;
                    }
                    if let Some(p) = stale_next {
                        // A replacement from an earlier reload that is still starting: it runs
                        // the old context, so it goes, and a fresh one starts.
                        self.retire(p.pid, now, ops);
                    }
                }
            }
        }
        let errors = self.pump(now, ops);
        self.started = true;
        errors
    }

    /// Starts what is due: first spawns of empty slots, then replacements within the budget.
    fn pump(&mut self, now: Instant, ops: &mut impl Processes<W>) -> Vec<(W::Id, Error)> {
        let mut errors = Vec::new();
        if self.shutting_down {
            return errors;
        }
        let generation = self.generation;
        let mut in_flight = self.slots.values().filter(|s| s.next.is_some()).count();
        let ready_timeout = self.cfg.ready_timeout;
        let ids: Vec<W::Id> = self.slots.keys().cloned().collect();
        for id in ids {
            if !self.started && !errors.is_empty() {
                break; // at start, the first failure is fatal: spawn nothing more
            }
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let into_next = if slot.current.is_none() {
                if !slot.start.due(now) {
                    continue;
                }
                false
            } else if slot.wants_replacement && slot.next.is_none() {
                // Due now, but if the budget is full the event that frees it wakes the loop.
                if !slot.replace.due(now) || in_flight >= self.cfg.max_parallel_replacements {
                    continue;
                }
                true
            } else {
                continue;
            };
            // A current worker runs the last good context while a replacement for the desired
            // one has not taken over; otherwise (and always for a replacement) the desired one.
            let ctx = match (&slot.good, into_next, slot.wants_replacement) {
                (Some(good), false, true) => good.clone(),
                _ => slot.ctx.clone(),
            };
            if !into_next && slot.good.is_none() {
                slot.wants_replacement = false; // it starts with the desired context anyway
            }
            match ops.spawn(&ctx, generation) {
                Ok(pid) => {
                    tracing::debug!(worker_id = ?id, %pid, generation, replacement = into_next, "worker spawned");
                    let p = Proc {
                        pid,
                        ctx,
                        spawned_at: now,
                        ready_at: None,
                        ready_deadline: later(now, ready_timeout),
                        generation,
                        killed: false,
                    };
                    if into_next {
                        slot.next = Some(p);
                        in_flight += 1;
                    } else {
                        slot.current = Some(p);
                    }
                }
                Err(e) => {
                    let b = if into_next {
                        &mut slot.replace
                    } else {
                        &mut slot.start
                    };
                    let delay = b.fail(&self.cfg, now);
                    // At start the caller reports the error and gives up: no log line then.
                    if self.started {
                        tracing::error!(worker_id = ?id, generation, error = %e, attempt = b.failures,
                            retry_in_ms = delay.as_millis() as u64, "cannot start worker");
                    }
                    errors.push((id, e));
                }
            }
        }
        errors
    }

    fn retire(&mut self, pid: Pid, now: Instant, ops: &mut impl Processes<W>) {
        ops.signal(pid, self.cfg.stop_signal);
        self.retiring.insert(
            pid,
            Retiring {
                kill_at: later(now, self.cfg.stop_timeout),
                killed: false,
            },
        );
    }

    fn window(&self) -> Duration {
        self.cfg.startup_window
    }

    /// A readiness message from `pid`.
    pub fn ready(&mut self, pid: Pid, now: Instant, ops: &mut impl Processes<W>) {
        for slot in self.slots.values_mut() {
            for p in [&mut slot.current, &mut slot.next].into_iter().flatten() {
                // A worker already sent SIGKILL (it missed its deadline) stays failed.
                if p.pid == pid && p.ready_at.is_none() && !p.killed {
                    p.ready_at = Some(now);
                    tracing::debug!(%pid, "worker ready");
                }
            }
        }
        self.promote_settled(now, ops);
    }

    /// Next workers that settled take over; the worker they replace retires.
    fn promote_settled(&mut self, now: Instant, ops: &mut impl Processes<W>) {
        let window = self.window();
        let mut to_retire = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            if slot.next.as_ref().is_some_and(|n| n.settled(now, window)) {
                let next = slot.next.take();
                if let Some(old) = std::mem::replace(&mut slot.current, next) {
                    if let Some(new) = &slot.current {
                        tracing::info!(worker_id = ?id, old_pid = %old.pid, new_pid = %new.pid,
                            generation = new.generation, "worker replaced");
                    }
                    to_retire.push(old.pid);
                }
                slot.good = slot.current.as_ref().map(|p| p.ctx.clone());
                slot.wants_replacement = false;
                slot.replace.reset();
            }
        }
        for pid in to_retire {
            self.retire(pid, now, ops);
        }
        // Starting the next replacement may now fit in the budget.
        let _ = self.pump(now, ops);
    }

    /// A child was reaped. Returns false if it was not one of the pool's.
    pub fn exited(
        &mut self,
        pid: Pid,
        how: ChildExit,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) -> bool {
        if let Some(r) = self.retiring.remove(&pid) {
            tracing::info!(%pid, status = %how, killed = r.killed, "retired worker exited");
            let _ = self.pump(now, ops);
            return true;
        }
        let window = self.window();
        let shutting_down = self.shutting_down;
        let mut found = None;
        for (id, slot) in self.slots.iter_mut() {
            if slot.current.as_ref().is_some_and(|p| p.pid == pid) {
                found = Some((id.clone(), true));
                break;
            }
            if slot.next.as_ref().is_some_and(|p| p.pid == pid) {
                found = Some((id.clone(), false));
                break;
            }
        }
        let Some((id, was_current)) = found else {
            return false;
        };
        let mut served = None;
        let cfg = &self.cfg;
        if let Some(slot) = self.slots.get_mut(&id) {
            let p = if was_current {
                slot.current.take()
            } else {
                slot.next.take()
            };
            let Some(p) = p else { return true };
            let settled = p.settled(now, window);
            if shutting_down {
                tracing::info!(worker_id = ?id, %pid, status = %how, "worker exited");
                return true;
            }
            let failed = |b: &mut Backoff, what: &str| {
                let delay = b.fail(cfg, now);
                tracing::warn!(worker_id = ?id, %pid, status = %how, generation = p.generation,
                    attempt = b.failures, retry_in_ms = delay.as_millis() as u64, "{what}");
            };
            if !was_current {
                failed(
                    &mut slot.replace,
                    "replacement died before it was ready; the old worker keeps serving",
                );
            } else if let Some(next) = slot.next.take() {
                // The replacement takes over the slot right away.
                slot.current = Some(next);
                slot.wants_replacement = false;
                tracing::warn!(worker_id = ?id, %pid, status = %how, generation = p.generation,
                    "worker exited during its replacement; the replacement takes over");
            } else if settled {
                // It served: respawn at once, with the context it ran.
                slot.start.reset();
                slot.good = Some(p.ctx.clone());
                // Logged after the respawn below: a log write must not delay it.
                served = Some((p.generation, now.duration_since(p.spawned_at)));
            } else {
                failed(&mut slot.start, "worker died while starting");
            }
        }
        let _ = self.pump(now, ops);
        if let Some((generation, uptime)) = served {
            let new_pid = self
                .slots
                .get(&id)
                .and_then(|s| s.current.as_ref())
                .map(|p| p.pid.as_raw());
            tracing::warn!(worker_id = ?id, %pid, status = %how, generation,
                uptime_ms = uptime.as_millis() as u64, new_pid, "worker exited; respawned");
        }
        true
    }

    /// Timers: readiness deadlines, stop deadlines, promotions, retries.
    pub fn tick(&mut self, now: Instant, ops: &mut impl Processes<W>) {
        for (pid, r) in self.retiring.iter_mut() {
            if !r.killed && r.kill_at <= now {
                tracing::warn!(%pid, "retired worker did not stop in time; sending SIGKILL");
                ops.signal(*pid, Signal::SIGKILL);
                r.killed = true;
            }
        }
        for (id, slot) in self.slots.iter_mut() {
            for p in [&mut slot.current, &mut slot.next].into_iter().flatten() {
                if p.ready_at.is_none() && !p.killed && p.ready_deadline <= now {
                    tracing::warn!(worker_id = ?id, pid = %p.pid, "worker missed its readiness deadline; sending SIGKILL");
                    ops.signal(p.pid, Signal::SIGKILL);
                    p.killed = true;
                }
            }
        }
        self.promote_settled(now, ops);
    }

    /// When `tick` next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let window = self.window();
        let mut best: Option<Instant> = None;
        let mut consider = |t: Instant| {
            best = Some(best.map_or(t, |b| b.min(t)));
        };
        for r in self.retiring.values() {
            if !r.killed {
                consider(r.kill_at);
            }
        }
        for slot in self.slots.values() {
            for p in [&slot.current, &slot.next].into_iter().flatten() {
                if p.ready_at.is_none() && !p.killed {
                    consider(p.ready_deadline);
                }
            }
            if let Some(n) = &slot.next
                && n.ready_at.is_some()
            {
                consider(later(n.spawned_at, window));
            }
            if !self.shutting_down {
                if slot.current.is_none()
                    && let Some(t) = slot.start.retry_at
                {
                    consider(t);
                }
                if slot.wants_replacement
                    && slot.next.is_none()
                    && let Some(t) = slot.replace.retry_at
                {
                    consider(t);
                }
            }
        }
        best
    }

    /// Stops all spawning; what runs is left to the caller to signal.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Every pid the pool knows (current, next, retiring).
    pub fn pids(&self) -> Vec<Pid> {
        let mut v: Vec<Pid> = self
            .slots
            .values()
            .flat_map(|s| [&s.current, &s.next])
            .flatten()
            .map(|p| p.pid)
            .collect();
        v.extend(self.retiring.keys().copied());
        v
    }

    /// The current worker's pid of each id.
    #[cfg(test)]
    pub fn current(&self) -> BTreeMap<W::Id, Pid> {
        self.slots
            .iter()
            .filter_map(|(id, s)| s.current.as_ref().map(|p| (id.clone(), p.pid)))
            .collect()
    }
}

/// `now + d`, saturating far in the future instead of panicking on a huge `d` (a setting of
/// `Duration::MAX` means "never").
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(1 << 32)))
        .unwrap_or(now)
}

/// The wait before retry number `failures` (1-based): `initial × 2^(failures-1)`, capped.
fn backoff(cfg: &PoolConfig, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(30);
    cfg.backoff_initial
        .saturating_mul(1u32 << shift)
        .min(cfg.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        fail_spawns: bool,
    }

    impl Processes<W> for Fake {
        fn spawn(&mut self, ctx: &W, generation: u64) -> Result<Pid, Error> {
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
            Ok(pid)
        }
        fn signal(&mut self, pid: Pid, sig: Signal) {
            self.signals.push((pid, sig));
        }
    }

    fn set(ids: impl IntoIterator<Item = u32>, tag: u32) -> BTreeMap<u32, W> {
        ids.into_iter().map(|id| (id, W { id, tag })).collect()
    }

    fn explicit() -> PoolConfig {
        PoolConfig {
            startup_window: Duration::ZERO,
            ..PoolConfig::default()
        }
    }

    /// Starts ids 0..n and makes them all ready; returns (pool, fake, t0).
    fn running(n: u32, cfg: PoolConfig) -> (Pool<W>, Fake, Instant) {
        let t0 = Instant::now();
        let mut p = Pool::new(cfg);
        let mut f = Fake::default();
        assert!(p.reload(set(0..n, 0), t0, &mut f).is_empty());
        for (_, pid, _) in f.spawned.clone() {
            p.ready(pid, t0, &mut f);
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
            p.ready(pid, t, &mut f); // the respawned one became ready meanwhile
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
        p.reload(set([0], 0), t0, &mut f);
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
        p.reload(set([0], 0), t0, &mut f);
        let pid = f.spawned[0].1;
        p.exited(pid, ChildExit::Exited(1), t0, &mut f);
        let t1 = p.next_deadline().unwrap();
        p.tick(t1, &mut f);
        let pid = f.spawned[1].1;
        p.ready(pid, t1, &mut f);
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
        p.reload(set([0], 0), t0, &mut f);
        let pid = f.spawned[0].1;
        p.ready(pid, t0 + ms(10), &mut f);
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
        assert!(p.reload(set(0..3, 0), t, &mut f).is_empty());
        assert_eq!(f.spawned.len(), 6, "all three replacements start at once");
        assert!(f.spawned[3..].iter().all(|s| s.2 == 1), "generation 1");
        assert!(
            f.signals.is_empty(),
            "no old worker is stopped before its successor is ready"
        );
        assert_eq!(p.current(), old);
        // Successor of id 1 is ready: only old 1 is stopped.
        let new1 = f.spawned.iter().find(|s| s.0 == 1 && s.2 == 1).unwrap().1;
        p.ready(new1, t + ms(50), &mut f);
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
        p.ready(good, t + ms(3), &mut f);
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
        p.ready(new, t0 + ms(10), &mut f);
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
            p.ready(new, t0 + ms(k + 1), &mut f);
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
        p.ready(new1, t0 + ms(150), &mut f);
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
        let errs = p.reload(set(0..3, 0), t0, &mut f);
        assert_eq!(errs.len(), 1, "the first failure at start stops the start");
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
        p.ready(again, t2 + ms(1), &mut f);
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
        p.reload(set(0..2, 0), t0, &mut f);
        let pid = f.spawned[0].1;
        p.ready(pid, t0, &mut f);
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
        p.ready(late, t0 + ms(501), &mut f);
        assert_eq!(p.current()[&0], old);
        assert_eq!(f.signals.len(), 1, "the old worker was not retired");
    }

    #[test]
    fn unknown_pids_are_not_the_pools() {
        let (mut p, mut f, t0) = running(1, explicit());
        assert!(!p.exited(Pid::from_raw(99999), ChildExit::Exited(0), t0, &mut f));
        p.ready(Pid::from_raw(99999), t0, &mut f);
        assert_eq!(f.spawned.len(), 1);
    }
}
