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
//! * **Availability first.** A worker that served (ready, and alive for the startup window
//!   after it became ready) and then died is respawned at once, whatever killed it.
//! * **Backoff only for failure to start.** A worker that dies before it served (in either
//!   readiness mode: a worker that says "ready" and then exits or crashes by itself within the
//!   window is a crash loop too; one killed from outside, by `SIGKILL` or `SIGTERM`, after it
//!   was ready is not its own failure and comes back at once), misses
//!   its readiness deadline, or whose spawn fails, is retried after `initial × 2^(n-1)`, capped
//!   at `max`. The count resets when a worker of that id serves, and on every reload. Starts of
//!   the current worker and starts of a replacement keep separate counts, so a failing rollout
//!   never delays the respawn of a worker that was serving.
//! * **Last good context.** While a replacement for a new context has not taken over, a current
//!   worker that dies is respawned with the context it was running, not the new one.
//! * **Rolling replacement.** On reload, each id that stays is replaced (all of them, or only
//!   those whose encoded context changed): the next worker starts, and the current one is
//!   retired only once the next one took over: when it is ready (explicit readiness) or ready
//!   and past the startup window (implicit). A next worker that fails is retried with backoff
//!   while the current one keeps serving. At most `max_parallel_replacements` start at once.
//! * **Removed ids** are retired; **new ids** are spawned.
//! * **Shutdown** freezes the pool: no spawn, no promotion, no signal. What runs is the driver's
//!   to signal (once) and reap, so no worker gets its stop signal twice.
//! * **A retired worker that dies from its own stop signal** did not handle it (it did not
//!   drain): that is logged as a warning, because it usually means lost work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::context::WorkerContext;
use crate::error::Error;
use crate::process::{ChildExit, Pid, Signal};

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
    /// A replacement takes over as soon as it is ready (explicit readiness), instead of once it
    /// is also past the startup window (implicit readiness).
    pub promote_when_ready: bool,
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
            promote_when_ready: false,
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
    /// Ready, and alive for the startup window since: a death from now on is not a failed
    /// start.
    fn served(&self, now: Instant, window: Duration) -> bool {
        self.ready_at.is_some_and(|r| now >= later(r, window))
    }

    /// May take over from the worker it replaces.
    fn may_take_over(&self, now: Instant, cfg: &PoolConfig) -> bool {
        self.ready_at.is_some()
            && (cfg.promote_when_ready || now >= later(self.spawned_at, cfg.startup_window))
    }

    /// When a ready worker may take over, if it is waiting for that.
    fn takes_over_at(&self, cfg: &PoolConfig) -> Option<Instant> {
        (self.ready_at.is_some() && !cfg.promote_when_ready)
            .then(|| later(self.spawned_at, cfg.startup_window))
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

    /// True if an attempt may start now; a past deadline is taken (cleared: it must not stay
    /// behind, or the loop would wake up for it again and again).
    fn take_due(&mut self, now: Instant) -> bool {
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
    start_backoff: Backoff,
    /// Starts of a replacement.
    replace_backoff: Backoff,
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
        }
    }

    /// The reload generation: 0 at start, + 1 per reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A reload without a declared set (hook-only settings): only the generation moves.
    pub fn advance_generation(&mut self) {
        self.generation += 1;
    }

    /// The start (generation 0): spawns the desired set, in id order, and stops at the first
    /// spawn that fails, returning its error (the caller gives up).
    pub fn start(
        &mut self,
        desired: BTreeMap<W::Id, W>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) -> Option<(W::Id, Error)> {
        self.set_desired(desired, now, ops);
        self.pump(now, ops, true).into_iter().next()
    }

    /// A reload (generation + 1): sets a new desired set and starts what it needs; a spawn
    /// that fails is retried with backoff (and logged).
    pub fn reload(
        &mut self,
        desired: BTreeMap<W::Id, W>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
        self.advance_generation();
        self.set_desired(desired, now, ops);
        self.pump(now, ops, false);
    }

    fn set_desired(
        &mut self,
        desired: BTreeMap<W::Id, W>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
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
                            start_backoff: Backoff::default(),
                            replace_backoff: Backoff::default(),
                        },
                    );
                }
                Some(slot) => {
                    let changed = slot.encoded != encoded;
                    slot.ctx = ctx;
                    slot.encoded = encoded;
                    slot.start_backoff.reset();
                    slot.replace_backoff.reset();
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
    }

    /// Starts what is due: first spawns of empty slots, then replacements within the budget.
    /// At start (`at_start`) the first failure stops it, and is not logged (the caller reports
    /// it and gives up).
    fn pump(
        &mut self,
        now: Instant,
        ops: &mut impl Processes<W>,
        at_start: bool,
    ) -> Vec<(W::Id, Error)> {
        let mut errors = Vec::new();
        if self.shutting_down {
            return errors;
        }
        let generation = self.generation;
        let mut in_flight = self.slots.values().filter(|s| s.next.is_some()).count();
        let ready_timeout = self.cfg.ready_timeout;
        let ids: Vec<W::Id> = self.slots.keys().cloned().collect();
        for id in ids {
            if at_start && !errors.is_empty() {
                break; // at start, the first failure is fatal: spawn nothing more
            }
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let into_next = if slot.current.is_none() {
                if !slot.start_backoff.take_due(now) {
                    continue;
                }
                false
            } else if slot.wants_replacement && slot.next.is_none() {
                // Due now, but if the budget is full the event that frees it wakes the loop.
                if !slot.replace_backoff.take_due(now)
                    || in_flight >= self.cfg.max_parallel_replacements
                {
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
                        &mut slot.replace_backoff
                    } else {
                        &mut slot.start_backoff
                    };
                    let delay = b.fail(&self.cfg, now);
                    if !at_start {
                        tracing::error!(worker_id = ?id, generation, error = %e.report(), attempt = b.failures,
                            retry_in_ms = delay.as_millis() as u64, "cannot start worker");
                    }
                    errors.push((id, e));
                }
            }
        }
        errors
    }

    fn retire(&mut self, pid: Pid, now: Instant, ops: &mut impl Processes<W>) {
        if self.shutting_down {
            return; // the driver signals everything once; see `begin_shutdown`
        }
        ops.signal(pid, self.cfg.stop_signal);
        self.retiring.insert(
            pid,
            Retiring {
                kill_at: later(now, self.cfg.stop_timeout),
                killed: false,
            },
        );
    }

    /// `pid` reported that it is ready (the kernel vouched for the pid).
    pub fn worker_ready(&mut self, pid: Pid, now: Instant, ops: &mut impl Processes<W>) {
        for slot in self.slots.values_mut() {
            for p in [&mut slot.current, &mut slot.next].into_iter().flatten() {
                // A worker already sent SIGKILL (it missed its deadline) stays failed.
                if p.pid == pid && p.ready_at.is_none() && !p.killed {
                    p.ready_at = Some(now);
                    tracing::debug!(%pid, "worker ready");
                }
            }
        }
        self.promote_ready(now, ops);
    }

    /// Next workers that may take over do; the worker they replace retires.
    fn promote_ready(&mut self, now: Instant, ops: &mut impl Processes<W>) {
        if self.shutting_down {
            return;
        }
        let mut to_retire = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            if slot
                .next
                .as_ref()
                .is_some_and(|n| n.may_take_over(now, &self.cfg))
            {
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
                slot.replace_backoff.reset();
            }
        }
        for pid in to_retire {
            self.retire(pid, now, ops);
        }
        // Starting the next replacement may now fit in the budget.
        self.pump(now, ops, false);
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
            if how == ChildExit::Signaled(self.cfg.stop_signal) {
                tracing::warn!(%pid, status = %how,
                    "retired worker died from its stop signal instead of draining \
                     (does it handle it? see worker::stop_signal)");
            } else {
                tracing::info!(%pid, status = %how, killed = r.killed, "retired worker exited");
            }
            self.pump(now, ops, false);
            return true;
        }
        let window = self.cfg.startup_window;
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
        let mut respawned = None;
        let cfg = &self.cfg;
        if let Some(slot) = self.slots.get_mut(&id) {
            let p = if was_current {
                slot.current.take()
            } else {
                slot.next.take()
            };
            let Some(p) = p else { return true };
            let served = p.served(now, window) || (p.ready_at.is_some() && !ended_by_itself(how));
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
                    &mut slot.replace_backoff,
                    "replacement died before it was ready; the old worker keeps serving",
                );
            } else if let Some(next) = slot.next.take() {
                // The replacement takes over the slot right away.
                slot.current = Some(next);
                slot.wants_replacement = false;
                tracing::warn!(worker_id = ?id, %pid, status = %how, generation = p.generation,
                    "worker exited during its replacement; the replacement takes over");
            } else if served {
                // It served: respawn at once, with the context it ran.
                slot.start_backoff.reset();
                slot.good = Some(p.ctx.clone());
                // Logged after the respawn below: a log write must not delay it.
                respawned = Some((p.generation, now.duration_since(p.spawned_at)));
            } else {
                failed(&mut slot.start_backoff, "worker died while starting");
            }
        }
        self.pump(now, ops, false);
        if let Some((generation, uptime)) = respawned {
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
        if self.shutting_down {
            return;
        }
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
        self.promote_ready(now, ops);
    }

    /// When `tick` next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.shutting_down {
            return None;
        }
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
            if let Some(t) = slot.next.as_ref().and_then(|n| n.takes_over_at(&self.cfg)) {
                consider(t);
            }
            if slot.current.is_none()
                && let Some(t) = slot.start_backoff.retry_at
            {
                consider(t);
            }
            if slot.wants_replacement
                && slot.next.is_none()
                && let Some(t) = slot.replace_backoff.retry_at
            {
                consider(t);
            }
        }
        best
    }

    /// Freezes the pool: no spawn, promotion or signal from now on. Returns the pids that
    /// have not been asked to stop yet (current and starting workers; retiring ones already
    /// got their stop signal), for the caller to signal once.
    pub fn begin_shutdown(&mut self) -> Vec<Pid> {
        self.shutting_down = true;
        self.slots
            .values()
            .flat_map(|s| [&s.current, &s.next])
            .flatten()
            .map(|p| p.pid)
            .collect()
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

/// Whether an exit was the worker's own doing (an exit, or a fault or abort), as opposed to a
/// signal sent from outside (`SIGKILL`, `SIGTERM`, …).
fn ended_by_itself(how: ChildExit) -> bool {
    match how {
        ChildExit::Exited(_) => true,
        ChildExit::Signaled(s) => [
            Signal::SIGSEGV,
            Signal::SIGBUS,
            Signal::SIGILL,
            Signal::SIGFPE,
            Signal::SIGABRT,
            Signal::SIGTRAP,
            Signal::SIGSYS,
        ]
        .contains(&s),
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
mod tests;
