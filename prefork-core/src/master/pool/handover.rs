//! The pool across an upgrade in place: [`Pool::export`] writes it into the hand-over
//! document, [`Pool::adopt`] rebuilds it in the new image.
//!
//! Instants do not cross an exec as values, so every time is written relative to the moment
//! of the export (`spawned_ms_ago`, `kill_in_ms`) and read back relative to the adoption: the
//! few milliseconds of the exec are lost from ages and added to deadlines, never more.
//!
//! What is carried: every worker (id through its context, pid, generation, readiness, request
//! budget, age deadline, whether it was killed), the retiring ones with their reason and kill
//! deadline, each id's counters and backoff, the generation, the scale, the adaptive pool's
//! active count and the totals. What is not: scoreboard observations (read again at the next
//! scan), hang arming (a worker is armed again by its next beat), a pending recycle (the roll
//! that follows an upgrade replaces every worker anyway).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Backoff, Pool, PoolConfig, Proc, Retiring, Slot, later};
use crate::context::WorkerContext;
use crate::process::Pid;
use crate::upgrade::{
    BackoffState, PoolState, ProcState, RetiringState, SlotState, decode_context, from_hex, to_hex,
};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn encode<W: WorkerContext>(w: &W) -> String {
    to_hex(&w.encode().unwrap_or_default())
}

fn export_proc<W: WorkerContext>(p: &Proc<W>, now: Instant) -> ProcState {
    ProcState {
        pid: p.pid.as_raw(),
        ctx: encode(&p.ctx),
        generation: p.generation,
        spawned_ms_ago: ms(now.saturating_duration_since(p.spawned_at)),
        ready_ms_ago: p.ready_at.map(|r| ms(now.saturating_duration_since(r))),
        ready_deadline_in_ms: ms(p.ready_deadline.saturating_duration_since(now)),
        killed: p.killed,
        max_requests: p.max_requests,
        expires_in_ms: p.expires_at.map(|e| ms(e.saturating_duration_since(now))),
    }
}

fn export_backoff(b: &Backoff, now: Instant) -> BackoffState {
    BackoffState {
        failures: b.failures,
        retry_in_ms: b.retry_at.map(|t| ms(t.saturating_duration_since(now))),
    }
}

/// `now - ms`, or `now` if the clock cannot go back that far.
fn ago(now: Instant, ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
}

fn adopt_proc<W: WorkerContext>(p: &ProcState, now: Instant) -> Result<Proc<W>, String> {
    if p.pid <= 0 {
        return Err(format!("a worker pid of {} in the upgrade state", p.pid));
    }
    Ok(Proc {
        pid: Pid::from_raw(p.pid),
        ctx: decode_context(&p.ctx)?,
        spawned_at: ago(now, p.spawned_ms_ago),
        ready_at: p.ready_ms_ago.map(|r| ago(now, r)),
        ready_deadline: later(now, Duration::from_millis(p.ready_deadline_in_ms)),
        generation: p.generation,
        killed: p.killed,
        seen: None,
        armed: false,
        rebased: None,
        max_requests: p.max_requests,
        expires_at: p
            .expires_in_ms
            .map(|e| later(now, Duration::from_millis(e))),
        replaces_for: None,
    })
}

fn adopt_backoff(b: &BackoffState, now: Instant) -> Backoff {
    Backoff {
        failures: b.failures,
        retry_at: b.retry_in_ms.map(|t| later(now, Duration::from_millis(t))),
    }
}

impl<W: WorkerContext> Pool<W> {
    /// The pool as the hand-over document carries it.
    pub fn export(&self, now: Instant) -> PoolState {
        PoolState {
            generation: self.generation,
            spawns: self.spawns,
            failed_starts: self.failed_starts,
            replaced: self.replaced,
            scale: self.scale.map(|s| s.current),
            active: self.cfg.spare.is_some().then_some(self.active),
            slots: self
                .slots
                .values()
                .map(|s| SlotState {
                    ctx: encode(&s.ctx),
                    current: s.current.as_ref().map(|p| export_proc(p, now)),
                    next: s.next.as_ref().map(|p| export_proc(p, now)),
                    restarts: s.restarts,
                    failed_starts: s.failed_starts,
                    start_backoff: export_backoff(&s.start_backoff, now),
                    replace_backoff: export_backoff(&s.replace_backoff, now),
                    last_failure: s.last_failure.clone(),
                })
                .collect(),
            retiring: self
                .retiring
                .values()
                .map(|r| RetiringState {
                    proc: export_proc(&r.proc, now),
                    why: r.why,
                    kill_in_ms: ms(r.kill_at.saturating_duration_since(now)),
                    killed: r.killed,
                })
                .collect(),
        }
    }

    /// The pool of an old master, rebuilt with this image's settings. Each id's desired
    /// context, and its adopted workers', is `desired`'s when it has the id (the new code's,
    /// holding live sockets), else the old one's, decoded with this build's type (the id
    /// leaves at the next reload). A context that does not decode fails the adoption (the
    /// caller rolls back). The encodings the next reload compares are the old master's, so a
    /// reload that replaces only changed contexts sees what changed.
    pub fn adopt(
        cfg: PoolConfig,
        state: &PoolState,
        desired: &BTreeMap<W::Id, W>,
        now: Instant,
    ) -> Result<Pool<W>, String> {
        let mut pool = Pool::new(cfg);
        pool.generation = state.generation;
        pool.spawns = state.spawns;
        pool.failed_starts = state.failed_starts;
        pool.replaced = state.replaced;
        if let (Some(scale), Some(current)) = (&mut pool.scale, state.scale) {
            scale.current = current.clamp(scale.min, scale.max);
        }
        for s in &state.slots {
            let old: W = decode_context(&s.ctx)?;
            let id = old.id();
            // The desired context is the new code's when it has the id: it names the sockets
            // of this image (a decoded one names none). Adopted workers are given it too, so
            // that a respawn before the roll (of a worker that served and died) starts with
            // live sockets. The encoding compared by the next reload stays the old one.
            let live = desired.get(&id).cloned();
            let encoded = from_hex(&s.ctx).unwrap_or_default();
            let adopt = |p: &ProcState| -> Result<Proc<W>, String> {
                let mut proc = adopt_proc::<W>(p, now)?;
                if let Some(ctx) = &live {
                    proc.ctx = ctx.clone();
                }
                Ok(proc)
            };
            let mut slot = Slot::new(live.clone().unwrap_or(old), encoded);
            slot.current = s.current.as_ref().map(adopt).transpose()?;
            slot.next = s.next.as_ref().map(adopt).transpose()?;
            slot.restarts = s.restarts;
            slot.failed_starts = s.failed_starts;
            slot.start_backoff = adopt_backoff(&s.start_backoff, now);
            slot.replace_backoff = adopt_backoff(&s.replace_backoff, now);
            slot.last_failure = s.last_failure.clone();
            if pool.slots.insert(id.clone(), slot).is_some() {
                return Err(format!("the id {id:?} appears twice in the upgrade state"));
            }
        }
        for r in &state.retiring {
            let proc: Proc<W> = adopt_proc(&r.proc, now)?;
            let id = proc.ctx.id();
            pool.retiring.insert(
                proc.pid,
                Retiring {
                    id,
                    proc,
                    why: r.why,
                    kill_at: later(now, Duration::from_millis(r.kill_in_ms)),
                    killed: r.killed,
                },
            );
        }
        if let Some(active) = state.active {
            pool.active = active.min(pool.slots.len());
        } else if pool.cfg.spare.is_some() {
            pool.active = pool.slots.len();
        }
        pool.arm_scans(now);
        if let Some(sp) = pool.cfg.spare {
            // Armed here, not only by a reload: after a rollback none follows.
            pool.next_scan = Some(later(now, sp.interval));
            pool.last_busy = Some(now);
        }
        Ok(pool)
    }
}
