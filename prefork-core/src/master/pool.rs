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
//! * **Removed ids** are retired; **new ids** are spawned. A removed id's workers are reported
//!   to the driver as `removing` before their stop signal, so that the id's own sockets (a
//!   reuseport group's) stop receiving connections first.
//! * **Scaling** ([`Pool::plan_scale`], [`Pool::rescale`]) is a change of the desired set that
//!   only adds and removes ids: new ids start, removed ids retire through the same path as on a
//!   reload, and every other worker is left alone (no replacement, no backoff reset). A scale
//!   outside its bounds is refused with a reason. A reload keeps the scale.
//! * **Replacing one id** ([`Pool::replace`]) asks for the same rolling, readiness-gated
//!   replacement a reload makes, for that id only.
//! * **Shutdown** freezes the pool: no spawn, no promotion, no signal. What runs is the driver's
//!   to signal (once) and reap, so no worker gets its stop signal twice.
//! * **Adaptive pool** (when [`PoolConfig::spare`] is set): the desired set is the list of
//!   candidates, in id order, and only the first `active` of them run; the others are dormant
//!   (no worker, nothing to replace). Every `interval` the driver hands [`Pool::adapt`] the
//!   activity of each id (from the scoreboard: requests in flight now, and those finished
//!   since the previous scan): while fewer than `min_spare` running workers have nothing in
//!   flight, the next ids start (as many as are missing, at most `max_workers` in all; when the
//!   shortage lasts from one scan to the next, enough to have `max_spare` idle, so a burst is
//!   met in a few scans); while more than `max_spare` had nothing in flight *and finished
//!   nothing* through the interval, the highest active ids are retired, as many as there are
//!   above `max_spare` (never below the floor). Starting
//!   on the instant and retiring on the interval keeps a worker caught between two jobs at the
//!   scan from being retired, and a job that moves from one worker to another from counting as
//!   a shortage. Once no worker was busy for `idle_timeout`, the pool shrinks one id per scan down
//!   to its floor, `max(min_spare, 1)`, never below. A starting worker counts as idle (it soon
//!   will be), so a scan never starts twice for one need.
//! * **A retired worker that dies from its own stop signal** did not handle it (it did not
//!   drain): that is logged as a warning, because it usually means lost work (not for one
//!   retired before it was ready: it had nothing to drain).
//!
//! # Health rules (scoreboard observations, see [`Pool::observe`])
//!
//! * **Hang.** A current worker is *armed* by its first heartbeat seen after it became ready
//!   (a worker that never beats is never judged). An armed worker whose last beat is older
//!   than `hang_timeout` is hung: its replacement starts first (at once, not readiness-gated:
//!   a hung worker serves nobody, so waiting would only keep its memory and its stuck
//!   connections longer), then it gets `SIGABRT` (a core dump or a backtrace is possible) and
//!   `SIGKILL` after `hang_kill_after`. One line is logged, with the beat's age and what the
//!   kernel says the worker is doing. Retiring and starting workers are not judged.
//! * **The master's own stall.** With hang detection on, observations come every
//!   `hang_timeout / 4`. If the gap since the previous one is longer than that plus half the
//!   timeout, the master itself was stopped or starved (and its workers may have been too):
//!   every worker's beat is re-based to now and nobody is judged this round.
//! * **Recycling.** A ready current worker that served its request budget (`max_requests`
//!   plus a jitter drawn per worker in `0..=max_requests_jitter`), lived its age
//!   (`max_age` plus a jitter in `0..=max_age_jitter`, a deadline of its own), or whose PSS
//!   passed `max_memory`, is recycled: a readiness-gated replacement of that id (the next
//!   worker starts; the old one retires once it took over), so the id never loses its
//!   capacity. At most `max_concurrent_recycles` are starting at once; a reload's replacement
//!   of the id supersedes a pending recycle. The old worker's exit reason names the rule.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::context::WorkerContext;
use crate::control::ScaleChange;
use crate::error::Error;
use crate::process::{ChildExit, Pid, Signal};
use crate::report::{ExitReason, ReloadOutcome, ReloadReport, ReplaceReason, WorkerEnded};
use crate::scoreboard::Observation;
use crate::status::ScaleStatus;

/// What the pool tells its driver, besides acting: drained with [`Pool::take_events`].
#[derive(Debug)]
pub(crate) enum PoolEvent<W: WorkerContext> {
    /// A worker of the pool ended.
    Ended(WorkerEnded<W>),
    /// The start (generation 0) or a reload finished: every desired id has a ready worker of
    /// the generation, or the pool gave up on some ids.
    Settled(ReloadReport<W::Id>),
}

/// A worker's state, for status views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerState {
    /// Started, not ready yet.
    Starting,
    /// Ready and serving (or a ready replacement waiting to take over).
    Ready,
    /// Asked to stop.
    Draining,
}

/// One worker, for status views.
#[derive(Clone, Debug)]
pub(crate) struct WorkerView<Id> {
    pub id: Id,
    pub pid: Pid,
    pub generation: u64,
    pub state: WorkerState,
    pub started_at: Instant,
    pub ready_at: Option<Instant>,
    /// Its last heartbeat, as last observed on the scoreboard.
    pub last_beat: Option<Instant>,
    /// Requests served, as last observed.
    pub requests: u64,
    /// Requests in flight, as last observed.
    pub in_flight: u64,
    /// PSS in bytes, as last observed (only read with `max_memory` set).
    pub memory: Option<u64>,
    /// Its request budget (jitter included), if `max_requests` is set.
    pub max_requests: Option<u64>,
}

// Read by the status views of the control socket.
#[allow(dead_code)]
impl<Id> WorkerView<Id> {
    /// How long ago it last beat, at `now`.
    pub fn heartbeat_age(&self, now: Instant) -> Option<Duration> {
        self.last_beat.map(|b| now.saturating_duration_since(b))
    }
}

/// One id, for status views.
#[derive(Clone, Debug)]
pub(crate) struct SlotView<Id> {
    pub id: Id,
    /// Respawns after a worker that served died.
    pub restarts: u64,
    /// Failed starts (since the id joined the set).
    pub failed_starts: u64,
    pub last_exit: Option<(ChildExit, ExitReason, Instant)>,
}

/// Where a replacement asked for by [`Pool::replace`] stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReplaceProgress {
    /// Still starting (or retrying).
    Pending,
    /// A new worker took over.
    Done(Pid),
    /// The pool gave up on it (several failed starts in a row), or it was called off.
    Failed(String),
}

/// What a scale change did: ids that joined the set, ids that left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScaleDiff<Id> {
    pub started: Vec<Id>,
    pub removed: Vec<Id>,
}

/// What the state machine needs from the outside world.
pub(crate) trait Processes<W> {
    /// Starts a worker for `ctx` (the user's `fork` callback), with its request budget.
    fn spawn(&mut self, ctx: &W, generation: u64, max_requests: Option<u64>) -> Result<Pid, Error>;
    /// Sends `sig` to `pid`. The pid has not been reaped yet, so it cannot be recycled.
    fn signal(&mut self, pid: Pid, sig: Signal);
    /// `pid`'s id left the desired set and `pid` is about to be told to stop: its own sockets
    /// (a reuseport group's) stop receiving new connections first.
    fn removing(&mut self, pid: Pid);
    /// What the kernel says `pid` is doing, for a log line (best effort).
    fn inspect(&mut self, pid: Pid) -> String;
}

/// The health rules' settings (all off by default).
#[derive(Clone, Debug)]
pub(crate) struct HealthConfig {
    pub hang_timeout: Option<Duration>,
    pub hang_kill_after: Duration,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    pub max_age: Option<Duration>,
    pub max_age_jitter: Duration,
    /// Bytes of PSS.
    pub max_memory: Option<u64>,
    pub memory_check_interval: Duration,
    pub max_concurrent_recycles: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            hang_timeout: None,
            hang_kill_after: Duration::from_secs(5),
            max_requests: None,
            max_requests_jitter: 0,
            max_age: None,
            max_age_jitter: Duration::ZERO,
            max_memory: None,
            memory_check_interval: Duration::from_secs(5),
            max_concurrent_recycles: 1,
        }
    }
}

impl HealthConfig {
    /// How often the scoreboard is read for hang detection: a quarter of the timeout.
    pub fn scan_interval(&self) -> Option<Duration> {
        self.hang_timeout
            .map(|t| (t / 4).max(Duration::from_millis(10)))
    }

    /// How often workers beat: a tenth of the hang timeout, within 5 ms … 1 s. Without hang
    /// detection workers are not asked to beat, so an idle worker stays asleep.
    pub fn beat_interval(&self) -> Option<Duration> {
        self.hang_timeout
            .map(|t| (t / 10).clamp(Duration::from_millis(5), Duration::from_secs(1)))
    }

    /// A gap between two observations longer than this means the master itself stalled.
    fn stall_threshold(&self) -> Option<Duration> {
        Some(self.scan_interval()? + self.hang_timeout? / 2)
    }
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
    /// A reload gives up on an id (reports it as failed) after this many failed starts.
    pub give_up_after: u32,
    /// The runtime scale and its bounds, when scaling is on.
    pub scale: Option<ScaleStatus>,
    pub health: HealthConfig,
    /// The adaptive pool's bounds, when it is on.
    pub spare: Option<SpareConfig>,
}

/// The adaptive pool's bounds and pace (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpareConfig {
    /// Start workers while fewer than this many are idle.
    pub min_spare: u32,
    /// Retire workers while more than this many are idle.
    pub max_spare: u32,
    /// Never more workers than this (nor than the declared candidates).
    pub max_workers: u32,
    /// How often the in-flight counts are read and a step is taken.
    pub interval: Duration,
    /// After this long with no busy worker, the pool shrinks to its floor.
    pub idle_timeout: Duration,
}

impl SpareConfig {
    /// How many of `candidates` may run at most, and at least.
    fn bounds(&self, candidates: usize) -> (usize, usize) {
        let max = (self.max_workers as usize).min(candidates);
        let floor = (self.min_spare.max(1) as usize).min(max);
        (floor, max)
    }

    /// The change of the active count a scan decides: `active` ids run, `idle` of them have
    /// nothing in flight now, `idle_through` of them had nothing in flight and finished
    /// nothing since the previous scan, and the pool has been idle for `idle_for`. Workers
    /// start on `idle` (a shortage now) and retire on `idle_through` (a surplus over the whole
    /// interval): a worker caught between two requests at the scan's instant is neither
    /// retired for it, nor does a job handed from one worker to another make a shortage.
    pub fn step(
        &self,
        candidates: usize,
        active: usize,
        idle: usize,
        idle_through: usize,
        idle_for: Duration,
    ) -> isize {
        let (floor, max) = self.bounds(candidates);
        let (min_spare, max_spare) = (self.min_spare as usize, self.max_spare as usize);
        if active < floor {
            return (floor - active) as isize;
        }
        if active > max {
            return -((active - max) as isize);
        }
        if idle < min_spare && active < max {
            return (min_spare - idle).min(max - active) as isize;
        }
        // The surplus goes at once: those workers did nothing through the whole interval, and
        // `max_spare` idle ones stay. (Counted on the instant, a worker between two jobs would
        // be part of it; one at a time, a pool shrinking from a burst lags the load.)
        if active > floor && idle_through > max_spare {
            return -((idle_through - max_spare).min(active - floor) as isize);
        }
        let quiet = idle_through == active && idle_for >= self.idle_timeout;
        if active > floor && quiet && idle_through > min_spare {
            return -1;
        }
        0
    }
}

/// What an id's worker did, as the adaptive pool's scan sees it (from the scoreboard).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Activity {
    /// Requests (or jobs) in flight now.
    pub in_flight: u64,
    /// Requests finished since the previous scan.
    pub finished: u64,
}

/// The adaptive pool, for status views and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpareView {
    /// Ids that run (or are starting).
    pub active: usize,
    /// Of those, with nothing in flight at the last scan.
    pub idle: usize,
    /// The declared candidates.
    pub candidates: usize,
    /// The bounds.
    pub config: SpareConfig,
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
            give_up_after: 3,
            scale: None,
            health: HealthConfig::default(),
            spare: None,
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
    /// The last observation of its scoreboard slot.
    seen: Option<Observation>,
    /// Judged for hangs: it beat after it became ready.
    armed: bool,
    /// Beats older than this count as of this moment (set after the master's own stall).
    rebased: Option<Instant>,
    /// Its request budget, jitter included.
    max_requests: Option<u64>,
    /// When it reaches its age limit, jitter included.
    expires_at: Option<Instant>,
    /// Why it was started as a replacement of a running worker, if a health rule did it.
    replaces_for: Option<ReplaceReason>,
}

impl<W> Proc<W> {
    /// How long ago it last beat (re-based after a stall), if it ever did.
    fn beat_age(&self, now: Instant) -> Option<Duration> {
        let beat = self.seen.and_then(|o| o.beat)?;
        let from = self.rebased.map_or(beat, |r| r.max(beat));
        Some(now.saturating_duration_since(from))
    }

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
    /// A recycle of the current worker is due, for this reason.
    recycle: Option<ReplaceReason>,
    /// Starts of the current worker.
    start_backoff: Backoff,
    /// Starts of a replacement.
    replace_backoff: Backoff,
    /// Why the last start failed.
    last_failure: Option<String>,
    restarts: u64,
    failed_starts: u64,
    last_exit: Option<(ChildExit, ExitReason, Instant)>,
}

impl<W> Slot<W> {
    fn new(ctx: W, encoded: Vec<u8>) -> Self {
        Slot {
            ctx,
            encoded,
            good: None,
            current: None,
            next: None,
            wants_replacement: false,
            recycle: None,
            start_backoff: Backoff::default(),
            replace_backoff: Backoff::default(),
            last_failure: None,
            restarts: 0,
            failed_starts: 0,
            last_exit: None,
        }
    }

    /// A replacement of the current worker is wanted (a reload, or a recycle).
    fn wants_next(&self) -> bool {
        self.wants_replacement || self.recycle.is_some()
    }

    /// Runs a ready worker of the desired context, with nothing pending.
    fn settled(&self) -> bool {
        !self.wants_replacement
            && self.next.is_none()
            && self.current.as_ref().is_some_and(|p| p.ready_at.is_some())
    }

    /// Failed starts in a row of what it is waiting for (a replacement, or a first worker).
    fn pending_failures(&self) -> u32 {
        if self.current.is_none() {
            self.start_backoff.failures
        } else {
            self.replace_backoff.failures
        }
    }
}

/// A worker asked to stop.
#[derive(Debug)]
struct Retiring<W: WorkerContext> {
    id: W::Id,
    proc: Proc<W>,
    why: ExitReason,
    kill_at: Instant,
    killed: bool,
}

/// The state machine. `W` is the user's context type.
#[derive(Debug)]
pub(crate) struct Pool<W: WorkerContext> {
    cfg: PoolConfig,
    slots: BTreeMap<W::Id, Slot<W>>,
    retiring: BTreeMap<Pid, Retiring<W>>,
    generation: u64,
    shutting_down: bool,
    /// The generation whose outcome is not reported yet, and when it began.
    settling: Option<(u64, Instant)>,
    events: Vec<PoolEvent<W>>,
    /// The runtime scale, when scaling is on.
    scale: Option<ScaleStatus>,
    /// Workers started so far.
    spawns: u64,
    /// Failed starts so far.
    failed_starts: u64,
    /// The jitter draws' state (xorshift64*).
    rng: u64,
    /// The last scoreboard observation (for the master's own stall).
    last_observed: Option<Instant>,
    /// When the scoreboard is read next for hang detection, if it is on.
    next_health_scan: Option<Instant>,
    /// When memory is read next, if `max_memory` is set.
    next_memory: Option<Instant>,
    /// Workers replaced by a health rule, by [`ReplaceReason::index`].
    replaced: [u64; 4],
    /// Adaptive pool: how many ids (the first, in id order) run.
    active: usize,
    /// Adaptive pool: idle workers at the last scan.
    last_idle: usize,
    /// Adaptive pool: when the next scan is due.
    next_scan: Option<Instant>,
    /// Adaptive pool: when a worker was last seen busy (or the pool started).
    last_busy: Option<Instant>,
    /// Adaptive pool: the last scan was short of idle workers too (sustained demand).
    was_short: bool,
}

fn encode_for_diff<W: WorkerContext>(w: &W) -> Vec<u8> {
    w.encode().unwrap_or_default()
}

impl<W: WorkerContext> Pool<W> {
    pub fn new(mut cfg: PoolConfig) -> Self {
        cfg.max_parallel_replacements = cfg.max_parallel_replacements.max(1);
        Pool {
            slots: BTreeMap::new(),
            retiring: BTreeMap::new(),
            generation: 0,
            shutting_down: false,
            settling: None,
            events: Vec::new(),
            scale: cfg.scale,
            spawns: 0,
            failed_starts: 0,
            cfg,
            rng: initial_seed(),
            last_observed: None,
            next_health_scan: None,
            next_memory: None,
            replaced: [0; 4],
            active: 0,
            last_idle: 0,
            next_scan: None,
            last_busy: None,
            was_short: false,
        }
    }

    /// Seeds the jitter draws (tests).
    #[cfg(test)]
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    /// Workers replaced by each health rule so far (for the metrics).
    pub fn replacements(&self) -> [(ReplaceReason, u64); 4] {
        ReplaceReason::ALL.map(|r| (r, self.replaced[r.index()]))
    }

    /// Schedules the periodic reads the health settings ask for, from `now`.
    fn arm_scans(&mut self, now: Instant) {
        let h = &self.cfg.health;
        self.next_health_scan = h.scan_interval().map(|i| later(now, i));
        self.next_memory = h.max_memory.map(|_| later(now, h.memory_check_interval));
        self.last_observed = Some(now);
    }

    /// What happened since the last call.
    pub fn take_events(&mut self) -> Vec<PoolEvent<W>> {
        std::mem::take(&mut self.events)
    }

    /// Reports the outcome of the start or reload in progress once it has one.
    fn check_settled(&mut self, now: Instant) {
        let Some((generation, began)) = self.settling else {
            return;
        };
        if self.shutting_down {
            self.settling = None;
            return;
        }
        let pending: Vec<(&W::Id, &Slot<W>)> =
            self.slots.iter().filter(|(_, s)| !s.settled()).collect();
        let outcome = if pending.is_empty() {
            ReloadOutcome::Complete
        } else if pending
            .iter()
            .all(|(_, s)| s.pending_failures() >= self.cfg.give_up_after)
        {
            ReloadOutcome::Incomplete {
                failed: pending
                    .iter()
                    .map(|(id, s)| {
                        let why = s.last_failure.clone().unwrap_or_else(|| "failed".into());
                        ((*id).clone(), why)
                    })
                    .collect(),
            }
        } else {
            return;
        };
        self.settling = None;
        self.events.push(PoolEvent::Settled(ReloadReport {
            generation,
            outcome,
            took: now.saturating_duration_since(began),
        }));
    }

    /// Id by id, for status views.
    pub fn slot_views(&self) -> Vec<SlotView<W::Id>> {
        self.slots
            .iter()
            .map(|(id, s)| SlotView {
                id: id.clone(),
                restarts: s.restarts,
                failed_starts: s.failed_starts,
                last_exit: s.last_exit,
            })
            .collect()
    }

    /// Every worker the pool knows, for status views.
    pub fn worker_views(&self) -> Vec<WorkerView<W::Id>> {
        let view = |id: &W::Id, p: &Proc<W>, state| WorkerView {
            id: id.clone(),
            pid: p.pid,
            generation: p.generation,
            state,
            started_at: p.spawned_at,
            ready_at: p.ready_at,
            last_beat: p.seen.and_then(|o| o.beat),
            requests: p.seen.map_or(0, |o| o.served),
            in_flight: p.seen.map_or(0, |o| o.in_flight),
            memory: p.seen.and_then(|o| o.memory),
            max_requests: p.max_requests,
        };
        let ready_or_starting = |p: &Proc<W>| {
            if p.ready_at.is_some() {
                WorkerState::Ready
            } else {
                WorkerState::Starting
            }
        };
        let mut out = Vec::new();
        for (id, s) in &self.slots {
            for p in [&s.current, &s.next].into_iter().flatten() {
                out.push(view(id, p, ready_or_starting(p)));
            }
        }
        for r in self.retiring.values() {
            out.push(view(&r.id, &r.proc, WorkerState::Draining));
        }
        out
    }

    /// The reload generation: 0 at start, + 1 per reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation of the start or reload that has not finished yet, if one has not.
    pub fn settling_generation(&self) -> Option<u64> {
        self.settling.map(|(g, _)| g)
    }

    /// Workers started so far.
    pub fn spawns(&self) -> u64 {
        self.spawns
    }

    /// Failed starts so far (every id, including ids that left the set).
    pub fn failed_starts(&self) -> u64 {
        self.failed_starts
    }

    /// The runtime scale, when scaling is on.
    pub fn scale(&self) -> Option<ScaleStatus> {
        self.scale
    }

    /// The scale `change` asks for, or why it is refused (scaling off, stopping, out of
    /// bounds). Changes nothing: the caller computes the new desired set with it and hands it
    /// to [`rescale`](Self::rescale).
    pub fn plan_scale(&self, change: ScaleChange) -> Result<u32, String> {
        let Some(s) = self.scale else {
            return Err("scaling is not enabled (Settings::scale)".into());
        };
        if self.shutting_down {
            return Err("the master is stopping".into());
        }
        let want = change.apply(s.current);
        if want < i64::from(s.min) || want > i64::from(s.max) {
            return Err(format!(
                "scale {want} is outside the bounds {}..={} (now {})",
                s.min, s.max, s.current
            ));
        }
        Ok(want as u32)
    }

    /// Applies a scale change: `desired` is the set `update` made for `scale`. Ids that left
    /// it retire (gracefully, as removed ids do on a reload), new ids start; ids that stay keep
    /// their worker and their context (a reload applies a changed one).
    pub fn rescale(
        &mut self,
        scale: u32,
        desired: BTreeMap<W::Id, W>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) -> ScaleDiff<W::Id> {
        if let Some(s) = &mut self.scale {
            s.current = scale;
        }
        let removed = self.retire_left(&desired, now, ops);
        let mut started = Vec::new();
        for (id, ctx) in desired {
            if !self.slots.contains_key(&id) {
                let encoded = encode_for_diff(&ctx);
                self.slots.insert(id.clone(), Slot::new(ctx, encoded));
                started.push(id);
            }
        }
        self.pump(now, ops, false);
        self.check_settled(now);
        ScaleDiff { started, removed }
    }

    /// A rolling replacement of `id`'s worker: a new one starts beside it and takes over once
    /// ready, as on a reload. Returns the pid being replaced, or why it cannot be.
    pub fn replace(
        &mut self,
        id: &W::Id,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) -> Result<Pid, String> {
        if self.shutting_down {
            return Err("the master is stopping".into());
        }
        let Some(slot) = self.slots.get_mut(id) else {
            return Err(format!("no worker has the id {id:?}"));
        };
        let Some(old) = slot.current.as_ref().map(|p| p.pid) else {
            return Err(format!(
                "id {id:?} has no running worker to replace (it is starting or waiting to retry)"
            ));
        };
        if !slot.wants_replacement && slot.next.is_none() {
            slot.wants_replacement = true;
            slot.replace_backoff.reset();
            tracing::info!(worker_id = ?id, pid = %old, "replacing one worker");
            self.pump(now, ops, false);
        }
        Ok(old)
    }

    /// Where the replacement of `old`, `id`'s worker when [`replace`](Self::replace) was
    /// called, stands.
    pub fn replace_progress(&self, id: &W::Id, old: Pid) -> ReplaceProgress {
        let Some(slot) = self.slots.get(id) else {
            return ReplaceProgress::Failed(format!("id {id:?} left the desired set"));
        };
        if self.shutting_down {
            return ReplaceProgress::Failed("the master is stopping".into());
        }
        let failed = |b: &Backoff| {
            (b.failures >= self.cfg.give_up_after).then(|| {
                slot.last_failure
                    .clone()
                    .unwrap_or_else(|| "its replacement failed to start".into())
            })
        };
        let pending = slot.wants_replacement || slot.next.is_some();
        match slot.current.as_ref().map(|p| p.pid) {
            _ if pending => failed(&slot.replace_backoff)
                .map_or(ReplaceProgress::Pending, ReplaceProgress::Failed),
            Some(pid) if pid != old => ReplaceProgress::Done(pid),
            Some(_) => ReplaceProgress::Failed("the replacement was called off by a reload".into()),
            None => failed(&slot.start_backoff)
                .map_or(ReplaceProgress::Pending, ReplaceProgress::Failed),
        }
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
        self.settling = Some((0, now));
        self.arm_scans(now);
        self.set_desired(desired, self.cfg.replace_unchanged, now, ops);
        let failed = self.pump(now, ops, true).into_iter().next();
        self.check_settled(now);
        failed
    }

    /// A reload (generation + 1): sets a new desired set and starts what it needs; a spawn
    /// that fails is retried with backoff (and logged).
    pub fn reload(
        &mut self,
        desired: BTreeMap<W::Id, W>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
        self.reload_replacing(desired, self.cfg.replace_unchanged, now, ops);
    }

    /// A reload that replaces every worker whose context is unchanged too when `unchanged`
    /// (the roll after an upgrade of the master: the code changed, whatever the contexts say),
    /// or only those whose context changed when not (the reconciliation after a rollback).
    pub fn reload_replacing(
        &mut self,
        desired: BTreeMap<W::Id, W>,
        unchanged: bool,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
        self.advance_generation();
        self.settling = Some((self.generation, now));
        self.set_desired(desired, unchanged, now, ops);
        self.pump(now, ops, false);
        self.check_settled(now);
    }

    fn set_desired(
        &mut self,
        desired: BTreeMap<W::Id, W>,
        replace_unchanged: bool,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
        self.retire_left(&desired, now, ops);
        for (id, ctx) in desired {
            let encoded = encode_for_diff(&ctx);
            match self.slots.get_mut(&id) {
                None => {
                    self.slots.insert(id, Slot::new(ctx, encoded));
                }
                Some(slot) => {
                    let changed = slot.encoded != encoded;
                    slot.ctx = ctx;
                    slot.encoded = encoded;
                    slot.start_backoff.reset();
                    slot.replace_backoff.reset();
                    let stale_next = slot.next.take();
                    if slot.current.is_some() && (changed || replace_unchanged) {
                        slot.wants_replacement = true;
                    }
                    if let Some(p) = stale_next {
                        // A replacement from an earlier reload that is still starting: it runs
                        // the old context, so it goes, and a fresh one starts.
                        self.retire(id, p, ExitReason::Retired, now, ops);
                    }
                }
            }
        }
        self.clamp_active(now, ops);
    }

    /// Ids that are not in `desired` leave: their workers retire as removed. Returns them.
    fn retire_left(
        &mut self,
        desired: &BTreeMap<W::Id, W>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) -> Vec<W::Id> {
        let gone: Vec<W::Id> = self
            .slots
            .keys()
            .filter(|id| !desired.contains_key(id))
            .cloned()
            .collect();
        for id in &gone {
            if let Some(slot) = self.slots.remove(id) {
                tracing::info!(worker_id = ?id, generation = self.generation,
                    "worker left the desired set");
                for p in [slot.current, slot.next].into_iter().flatten() {
                    self.retire(id.clone(), p, ExitReason::Removed, now, ops);
                }
            }
        }
        gone
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
        // Replacements starting, for a reload and for a recycle: each has its own budget.
        let mut in_flight = self
            .slots
            .values()
            .filter(|s| s.next.as_ref().is_some_and(|n| n.replaces_for.is_none()))
            .count();
        let mut recycling = self
            .slots
            .values()
            .filter(|s| s.next.as_ref().is_some_and(|n| n.replaces_for.is_some()))
            .count();
        let ready_timeout = self.cfg.ready_timeout;
        let health = self.cfg.health.clone();
        let ids: Vec<W::Id> = self.slots.keys().cloned().collect();
        for (index, id) in ids.into_iter().enumerate() {
            if self.dormant(index) {
                continue;
            }
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
            } else if slot.wants_next() && slot.next.is_none() {
                // Due now, but if the budget is full the event that frees it wakes the loop.
                let full = if slot.wants_replacement {
                    in_flight >= self.cfg.max_parallel_replacements
                } else {
                    recycling >= health.max_concurrent_recycles
                };
                if !slot.replace_backoff.take_due(now) || full {
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
            let replaces_for = if into_next && !slot.wants_replacement {
                slot.recycle
            } else {
                None
            };
            let max_requests = health
                .max_requests
                .map(|n| n.saturating_add(draw(&mut self.rng, health.max_requests_jitter)));
            let expires_at = health.max_age.map(|age| {
                let jitter_ms =
                    u64::try_from(health.max_age_jitter.as_millis()).unwrap_or(u64::MAX);
                let jitter = Duration::from_millis(draw(&mut self.rng, jitter_ms));
                later(now, age.saturating_add(jitter))
            });
            match ops.spawn(&ctx, generation, max_requests) {
                Ok(pid) => {
                    self.spawns += 1;
                    tracing::debug!(worker_id = ?id, %pid, generation, replacement = into_next, "worker spawned");
                    let p = Proc {
                        pid,
                        ctx,
                        spawned_at: now,
                        ready_at: None,
                        ready_deadline: later(now, ready_timeout),
                        generation,
                        killed: false,
                        seen: None,
                        armed: false,
                        rebased: None,
                        max_requests,
                        expires_at,
                        replaces_for,
                    };
                    if into_next {
                        slot.next = Some(p);
                        if replaces_for.is_some() {
                            recycling += 1;
                        } else {
                            in_flight += 1;
                        }
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
                    slot.failed_starts += 1;
                    self.failed_starts += 1;
                    slot.last_failure = Some(e.report().to_string());
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

    fn retire(
        &mut self,
        id: W::Id,
        proc: Proc<W>,
        why: ExitReason,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
        // A removed id (a smaller set, an adaptive shrink): steer away from its own sockets
        // before the stop signal, so the draining worker empties a queue that no longer grows.
        if why == ExitReason::Removed {
            ops.removing(proc.pid);
        }
        // During shutdown the driver signals everything once (see `begin_shutdown`).
        if !self.shutting_down {
            ops.signal(proc.pid, self.cfg.stop_signal);
        }
        self.retiring.insert(
            proc.pid,
            Retiring {
                id,
                proc,
                why,
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
        self.check_settled(now);
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
                let why = next.as_ref().and_then(|n| n.replaces_for);
                if let Some(old) = std::mem::replace(&mut slot.current, next) {
                    if let Some(new) = &slot.current {
                        tracing::info!(worker_id = ?id, old_pid = %old.pid, new_pid = %new.pid,
                            generation = new.generation,
                            reason = %why.map_or("reload", ReplaceReason::as_str),
                            "worker replaced");
                    }
                    if let Some(r) = why {
                        self.replaced[r.index()] += 1;
                    }
                    to_retire.push((id.clone(), old, why.map_or(ExitReason::Retired, Into::into)));
                }
                slot.good = slot.current.as_ref().map(|p| p.ctx.clone());
                slot.wants_replacement = false;
                slot.recycle = None;
                slot.replace_backoff.reset();
            }
        }
        for (id, old, why) in to_retire {
            self.retire(id, old, why, now, ops);
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
        let known = if let Some(r) = self.retiring.remove(&pid) {
            self.retired_exited(r, how, now);
            true
        } else {
            self.slot_worker_exited(pid, how, now, ops)
        };
        if known {
            self.pump(now, ops, false);
            self.check_settled(now);
        }
        known
    }

    fn retired_exited(&mut self, r: Retiring<W>, how: ChildExit, now: Instant) {
        let pid = r.proc.pid;
        if r.why == ExitReason::Hang {
            tracing::info!(%pid, status = %how, killed = r.killed, "hung worker exited");
        } else if how == ChildExit::Signaled(self.cfg.stop_signal) && r.proc.ready_at.is_some() {
            tracing::warn!(%pid, status = %how,
                "retired worker died from its stop signal instead of draining \
                 (does it handle it? see worker::stop_signal)");
        } else if how == ChildExit::Signaled(self.cfg.stop_signal) {
            // Still starting (a replacement made stale by a newer reload): it had nothing to
            // drain, and may not have installed its handler yet.
            tracing::info!(%pid, status = %how, "retired worker exited before it was ready");
        } else {
            tracing::info!(%pid, status = %how, killed = r.killed, "retired worker exited");
        }
        let reason = if r.killed && r.why != ExitReason::Hang {
            ExitReason::KilledAtDeadline
        } else if self.shutting_down {
            ExitReason::Shutdown
        } else {
            r.why
        };
        if let Some(slot) = self.slots.get_mut(&r.id) {
            slot.last_exit = Some((how, reason, now));
        }
        self.ended(r.id, r.proc, how, reason, now);
    }

    fn ended(&mut self, id: W::Id, p: Proc<W>, how: ChildExit, reason: ExitReason, now: Instant) {
        self.events.push(PoolEvent::Ended(WorkerEnded {
            id,
            pid: p.pid,
            generation: p.generation,
            status: how,
            reason,
            uptime: now.saturating_duration_since(p.spawned_at),
            context: p.ctx,
        }));
    }

    /// A current or next worker died: decide what comes next for its id.
    fn slot_worker_exited(
        &mut self,
        pid: Pid,
        how: ChildExit,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) -> bool {
        let Some((id, was_current)) = self.find(pid) else {
            return false;
        };
        let window = self.cfg.startup_window;
        let shutting_down = self.shutting_down;
        let cfg = &self.cfg;
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        let taken = if was_current {
            slot.current.take()
        } else {
            slot.next.take()
        };
        let Some(p) = taken else { return false };
        if was_current {
            slot.recycle = None; // whatever comes next is a new incarnation
        }
        let served = p.served(now, window) || (p.ready_at.is_some() && !ended_by_itself(how));
        let mut respawned = false;
        let mut failed = 0;
        let reason = if shutting_down {
            tracing::info!(worker_id = ?id, %pid, status = %how, "worker exited");
            ExitReason::Shutdown
        } else if !was_current {
            Self::failed_start(slot, cfg, &id, &p, how, now, true);
            failed += 1;
            ExitReason::FailedStart
        } else if let Some(next) = slot.next.take() {
            // The replacement takes over the slot right away.
            slot.current = Some(next);
            slot.wants_replacement = false;
            tracing::warn!(worker_id = ?id, %pid, status = %how, generation = p.generation,
                "worker exited during its replacement; the replacement takes over");
            if served {
                ExitReason::Crashed
            } else {
                ExitReason::FailedStart
            }
        } else if served {
            // It served: respawn at once, with the context it ran.
            slot.start_backoff.reset();
            slot.good = Some(p.ctx.clone());
            slot.restarts += 1;
            respawned = true;
            ExitReason::Crashed
        } else {
            Self::failed_start(slot, cfg, &id, &p, how, now, false);
            failed += 1;
            ExitReason::FailedStart
        };
        slot.last_exit = Some((how, reason, now));
        self.failed_starts += failed;
        if respawned {
            // Respawn first: a log write must not delay it.
            self.pump(now, ops, false);
            let new_pid = self.current_pid(&id);
            tracing::warn!(worker_id = ?id, %pid, status = %how, generation = p.generation,
                uptime_ms = now.saturating_duration_since(p.spawned_at).as_millis() as u64,
                new_pid, "worker exited; respawned");
        }
        self.ended(id, p, how, reason, now);
        true
    }

    /// Records a failed start of `p` (a replacement if `replacement`) and logs it.
    fn failed_start(
        slot: &mut Slot<W>,
        cfg: &PoolConfig,
        id: &W::Id,
        p: &Proc<W>,
        how: ChildExit,
        now: Instant,
        replacement: bool,
    ) {
        let (b, what) = if replacement {
            (
                &mut slot.replace_backoff,
                "replacement died before it was ready; the old worker keeps serving",
            )
        } else {
            (&mut slot.start_backoff, "worker died while starting")
        };
        let delay = b.fail(cfg, now);
        tracing::warn!(worker_id = ?id, pid = %p.pid, status = %how, generation = p.generation,
            attempt = b.failures, retry_in_ms = delay.as_millis() as u64, "{what}");
        slot.failed_starts += 1;
        slot.last_failure = Some(format!("{what} ({how})"));
    }

    /// The raw pid of `id`'s current worker, for a log line.
    fn current_pid(&self, id: &W::Id) -> Option<i32> {
        self.slots
            .get(id)
            .and_then(|s| s.current.as_ref())
            .map(|p| p.pid.as_raw())
    }

    /// The id of `pid`, and whether it is the current worker (else the next).
    fn find(&self, pid: Pid) -> Option<(W::Id, bool)> {
        self.slots.iter().find_map(|(id, s)| {
            if s.current.as_ref().is_some_and(|p| p.pid == pid) {
                Some((id.clone(), true))
            } else if s.next.as_ref().is_some_and(|p| p.pid == pid) {
                Some((id.clone(), false))
            } else {
                None
            }
        })
    }

    /// Adaptive pool: whether the id at `index` (in id order) is dormant.
    fn dormant(&self, index: usize) -> bool {
        self.cfg.spare.is_some() && index >= self.active
    }

    /// Adaptive pool: keeps `active` within its bounds for the current candidates, and retires
    /// the workers of ids that became dormant.
    fn clamp_active(&mut self, now: Instant, ops: &mut impl Processes<W>) {
        let Some(sp) = self.cfg.spare else { return };
        let (floor, max) = sp.bounds(self.slots.len());
        let want = self.active.clamp(floor, max);
        while self.active > want {
            self.shrink(now, ops);
        }
        self.active = want;
        if self.next_scan.is_none() {
            self.next_scan = Some(later(now, sp.interval));
            self.last_busy = Some(now);
        }
    }

    /// Adaptive pool: retires the workers of the highest active id, which becomes dormant.
    fn shrink(&mut self, now: Instant, ops: &mut impl Processes<W>) {
        let Some(index) = self.active.checked_sub(1) else {
            return;
        };
        self.active = index;
        let Some((id, slot)) = self.slots.iter_mut().nth(index) else {
            return;
        };
        let id = id.clone();
        let procs: Vec<Proc<W>> = [slot.current.take(), slot.next.take()]
            .into_iter()
            .flatten()
            .collect();
        slot.wants_replacement = false;
        slot.start_backoff.reset();
        slot.replace_backoff.reset();
        for p in procs {
            tracing::info!(worker_id = ?id, pid = %p.pid, active = self.active,
                "adaptive pool: retiring the highest id");
            self.retire(id.clone(), p, ExitReason::Removed, now, ops);
        }
    }

    /// Adaptive pool: whether a scan is due (the driver then reads the in-flight counts and
    /// calls [`adapt`](Self::adapt), which schedules the next one; a driver that did not would
    /// see a past deadline in [`next_deadline`](Self::next_deadline) until it does).
    pub fn scan_due(&self, now: Instant) -> bool {
        !self.shutting_down && self.next_scan.is_some_and(|t| t <= now)
    }

    /// Adaptive pool: one scan, given the activity of each id (an id missing from
    /// `in_flight` has nothing in flight). Starts or retires workers per the rules in the
    /// module docs, and schedules the next scan.
    pub fn adapt(
        &mut self,
        activity: &BTreeMap<W::Id, Activity>,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
        let Some(sp) = self.cfg.spare else { return };
        if self.shutting_down {
            return;
        }
        self.next_scan = Some(later(now, sp.interval));
        // Idle: an active id whose worker has nothing in flight, is still starting, or is
        // about to be respawned; idle through the interval: and finished nothing since the
        // previous scan either.
        let (mut idle, mut idle_through) = (0, 0);
        for (id, slot) in self.slots.iter().take(self.active) {
            let ready = slot.current.as_ref().is_some_and(|p| p.ready_at.is_some());
            let a = activity.get(id).copied().unwrap_or_default();
            if !ready || a.in_flight == 0 {
                idle += 1;
                if !ready || a.finished == 0 {
                    idle_through += 1;
                }
            }
        }
        if idle_through < self.active || self.last_busy.is_none() {
            self.last_busy = Some(now);
        }
        self.last_idle = idle;
        let idle_for = now.saturating_duration_since(self.last_busy.unwrap_or(now));
        let mut step = sp.step(self.slots.len(), self.active, idle, idle_through, idle_for);
        let short = idle < sp.min_spare as usize;
        if step > 0 && short && self.was_short {
            // Sustained demand: the shortage outlived a scan, so the workers the last one
            // started are busy already. Fill up to max_spare idle (never above the bounds)
            // rather than to min_spare, so a burst is met in a few scans.
            let (_, max) = sp.bounds(self.slots.len());
            let fill = (sp.max_spare as usize).saturating_sub(idle);
            step = step.max(fill.min(max.saturating_sub(self.active)) as isize);
        }
        self.was_short = short;
        if step > 0 {
            let before = self.active;
            self.active += step as usize;
            tracing::info!(
                active = self.active,
                idle,
                min_spare = sp.min_spare,
                "adaptive pool: starting {} more worker(s)",
                self.active - before
            );
            self.pump(now, ops, false);
        } else if step < 0 {
            for _ in 0..step.unsigned_abs() {
                self.shrink(now, ops);
            }
        }
    }

    /// The adaptive pool, for status views and metrics (`None` when it is off).
    pub fn spare_view(&self) -> Option<SpareView> {
        self.cfg.spare.map(|config| SpareView {
            active: self.active,
            idle: self.last_idle,
            candidates: self.slots.len(),
            config,
        })
    }

    /// Timers: readiness deadlines, stop deadlines, promotions, retries.
    pub fn tick(&mut self, now: Instant, ops: &mut impl Processes<W>) {
        if self.shutting_down {
            return;
        }
        for (pid, r) in self.retiring.iter_mut() {
            if !r.killed && r.kill_at <= now {
                if r.why == ExitReason::Hang {
                    tracing::warn!(%pid, "hung worker still alive after SIGABRT; sending SIGKILL");
                } else {
                    tracing::warn!(%pid, "retired worker did not stop in time; sending SIGKILL");
                }
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
        for (id, slot) in self.slots.iter_mut() {
            if let Some(p) = slot.current.as_ref().filter(|_| slot.recycle.is_none())
                && p.ready_at.is_some()
                && p.expires_at.is_some_and(|t| t <= now)
            {
                tracing::info!(worker_id = ?id, pid = %p.pid,
                    age_ms = now.saturating_duration_since(p.spawned_at).as_millis() as u64,
                    "worker reached its max_age; recycling (readiness-gated)");
                slot.recycle = Some(ReplaceReason::MaxAge);
            }
        }
        self.promote_ready(now, ops);
        self.check_settled(now);
    }

    /// The periodic scoreboard reads due at `now`, if any: `Some(true)` when memory is to be
    /// read too. Takes them (the next ones are scheduled from `now`).
    pub fn health_scan_due(&mut self, now: Instant) -> Option<bool> {
        if self.shutting_down {
            return None;
        }
        let beats = self.next_health_scan.is_some_and(|t| t <= now);
        let memory = self.next_memory.is_some_and(|t| t <= now);
        let h = &self.cfg.health;
        if beats {
            self.next_health_scan = h.scan_interval().map(|i| later(now, i));
        }
        if memory {
            self.next_memory = Some(later(now, h.memory_check_interval));
        }
        (beats || memory).then_some(memory)
    }

    /// What the scoreboard (and `/proc`) showed at `now`: records it, then applies the health
    /// rules (see the module docs): hangs are replaced at once, recycles start within their
    /// budget.
    pub fn observe(&mut self, now: Instant, seen: &[Observation], ops: &mut impl Processes<W>) {
        if self.shutting_down {
            return;
        }
        let stalled = match (self.last_observed, self.cfg.health.stall_threshold()) {
            (Some(last), Some(limit)) => now.saturating_duration_since(last) > limit,
            _ => false,
        };
        if stalled {
            let gap = self
                .last_observed
                .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
            tracing::warn!(
                gap_ms = gap.as_millis() as u64,
                "the master itself stalled (stopped or starved); re-basing every heartbeat, \
                 judging nobody this round"
            );
        }
        self.last_observed = Some(now);
        let by_pid: BTreeMap<Pid, &Observation> = seen.iter().map(|o| (o.pid, o)).collect();
        let procs = self
            .slots
            .values_mut()
            .flat_map(|s| [&mut s.current, &mut s.next])
            .flatten()
            .chain(self.retiring.values_mut().map(|r| &mut r.proc));
        for p in procs {
            if let Some(o) = by_pid.get(&p.pid) {
                record(p, o, stalled);
            }
        }
        if stalled {
            for slot in self.slots.values_mut() {
                for p in [&mut slot.current, &mut slot.next].into_iter().flatten() {
                    p.rebased = Some(now);
                }
            }
            return;
        }
        self.judge(now, ops);
        self.pump(now, ops, false);
        self.check_settled(now);
    }

    /// The health rules, on the current workers.
    fn judge(&mut self, now: Instant, ops: &mut impl Processes<W>) {
        let h = self.cfg.health.clone();
        let mut hung = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            let Some(p) = &slot.current else { continue };
            if p.killed || p.ready_at.is_none() {
                continue;
            }
            if let (Some(timeout), true, Some(age)) = (h.hang_timeout, p.armed, p.beat_age(now))
                && age > timeout
            {
                hung.push((id.clone(), age));
                continue;
            }
            if slot.wants_next() {
                continue;
            }
            let seen = p.seen;
            let why = if p
                .max_requests
                .is_some_and(|n| seen.is_some_and(|o| o.served >= n))
            {
                Some(ReplaceReason::MaxRequests)
            } else if h
                .max_memory
                .is_some_and(|max| seen.and_then(|o| o.memory).is_some_and(|m| m > max))
            {
                Some(ReplaceReason::MaxMemory)
            } else {
                None
            };
            if let Some(why) = why {
                tracing::info!(worker_id = ?id, pid = %p.pid, reason = %why,
                    served = seen.map_or(0, |o| o.served), limit = p.max_requests,
                    pss_bytes = seen.and_then(|o| o.memory),
                    "recycling worker (readiness-gated)");
                slot.recycle = Some(why);
            }
        }
        for (id, age) in hung {
            self.replace_hung(id, age, now, ops);
        }
    }

    /// A hung current worker: its replacement starts first, then it gets `SIGABRT`, and
    /// `SIGKILL` after `hang_kill_after`.
    fn replace_hung(
        &mut self,
        id: W::Id,
        age: Duration,
        now: Instant,
        ops: &mut impl Processes<W>,
    ) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(hung) = slot.current.take() else {
            return;
        };
        let kernel = ops.inspect(hung.pid);
        if let Some(next) = slot.next.take() {
            // A replacement was already starting: it takes the slot.
            slot.current = Some(next);
            slot.wants_replacement = false;
        }
        slot.recycle = None;
        slot.restarts += 1;
        slot.start_backoff.reset();
        self.replaced[ReplaceReason::Hang.index()] += 1;
        self.pump(now, ops, false);
        let new_pid = self.current_pid(&id);
        ops.signal(hung.pid, Signal::SIGABRT);
        let timeout = self.cfg.health.hang_timeout.unwrap_or_default();
        tracing::error!(worker_id = ?id, pid = %hung.pid, beat_age_ms = age.as_millis() as u64,
            kernel = %kernel, new_pid,
            "worker hung: no heartbeat for longer than {} ms; replacement started, sent SIGABRT",
            timeout.as_millis());
        let pid = hung.pid;
        self.retiring.insert(
            pid,
            Retiring {
                id,
                proc: hung,
                why: ExitReason::Hang,
                kill_at: later(now, self.cfg.health.hang_kill_after),
                killed: false,
            },
        );
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
        // The adaptive pool's scans: the only periodic timer, and only when it is on.
        if let Some(t) = self.next_scan {
            consider(t);
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
            if slot.wants_next()
                && slot.next.is_none()
                && let Some(t) = slot.replace_backoff.retry_at
            {
                consider(t);
            }
            if let Some(t) = slot
                .current
                .as_ref()
                .filter(|p| slot.recycle.is_none() && p.ready_at.is_some())
                .and_then(|p| p.expires_at)
            {
                consider(t);
            }
        }
        for t in [self.next_health_scan, self.next_memory]
            .into_iter()
            .flatten()
        {
            consider(t);
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
    pub fn current(&self) -> BTreeMap<W::Id, Pid> {
        self.slots
            .iter()
            .filter_map(|(id, s)| s.current.as_ref().map(|p| (id.clone(), p.pid)))
            .collect()
    }
}

/// Records an observation of `p`; arms it at its first beat after it became ready.
fn record<W>(p: &mut Proc<W>, o: &Observation, stalled: bool) {
    p.seen = Some(*o);
    if !stalled
        && let (Some(ready), Some(beat)) = (p.ready_at, o.beat)
        && beat >= ready
        && !p.armed
    {
        p.armed = true;
        tracing::debug!(pid = %p.pid, "heartbeat seen after readiness: hang detection armed");
    }
}

/// The process-wide seed of the jitter draws: the clock and the pid, mixed.
fn initial_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// A draw in `0..=max` (xorshift64*; the modulo bias is irrelevant for a jitter).
fn draw(state: &mut u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    match max.checked_add(1) {
        Some(m) => r % m,
        None => r,
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

mod handover;
#[cfg(test)]
mod tests;
