//! `Settings`: haskell-prefork's hooks, and the knobs of supervision.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::context::{WorkerContext, WorkerSet};
use crate::error::{Error, Result};
use crate::master::{PoolConfig, SpareConfig};
use crate::process::{Pid, Signal};
use crate::readiness::Readiness;
use crate::report::{ReloadReport, WorkerEnded};
use crate::spawn::Spawner;
use crate::status::ScaleStatus;
use crate::systemd::Systemd;

/// The scale bounds when [`Settings::scale`] is set and [`Settings::scale_bounds`] is not.
pub const DEFAULT_SCALE_BOUNDS: (u32, u32) = (1, 1024);

/// The `fork` callback of relaunch settings, its error made the library's.
pub(crate) type ForkFn<W> = Box<dyn FnMut(&W, &Spawner<'_>) -> Result<Pid>>;
/// The `update` callback: edits the desired set, returns the configuration.
pub(crate) type UpdateFn<C, W> = Box<dyn FnMut(&mut WorkerSet<W>) -> Option<C>>;

type MaybeConfigHook<C> = Box<dyn FnMut(Option<&C>)>;
type PidsHook<C> = Box<dyn FnMut(&C, &[Pid])>;
type ConfigHook<C> = Box<dyn FnMut(&C)>;
type SpawnHook<C> = Box<dyn FnMut(&C, &Spawner<'_>) -> Vec<Pid>>;
type ChildHook<C> = Box<dyn FnMut(&C, Pid)>;
type ExitHook<W> = Box<dyn FnMut(&WorkerEnded<W>)>;
type ReloadHook<W> = Box<dyn FnMut(&ReloadReport<<W as WorkerContext>::Id>)>;

/// How the master behaves: the hooks of haskell-prefork's `PreforkSettings`, plus supervision
/// settings. `C` is the application's configuration, `W` its worker context.
///
/// Start from [`default_settings`] (hooks only, as Haskell's `defaultSettings`) or from
/// [`relaunch_settings`] (a declared worker set kept alive by id), then chain setters:
///
/// ```no_run
/// use prefork_core::{relaunch_settings, Readiness, Spawner, WorkerContext};
/// use std::time::Duration;
/// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, WorkerContext)]
/// # struct Worker { #[prefork(id)] id: u32 }
/// let settings = relaunch_settings(
///     |set| { set.set((0..4).map(|id| Worker { id })); Some(()) },
///     |w: &Worker, spawner: &Spawner| spawner.fork_worker_process(w),
/// )
/// .readiness(Readiness::Explicit)
/// .stop_timeout(Duration::from_secs(10))
/// .on_start(|_| eprintln!("master {} started", std::process::id()));
/// # drop(settings);
/// ```
///
/// Hooks run on the master's thread, one at a time, never inside a signal handler. A hook
/// blocks the master while it runs (no reaping, no respawn, no signal handling): keep them short.
pub struct Settings<C, W: WorkerContext> {
    pub(crate) on_start: MaybeConfigHook<C>,
    pub(crate) on_finish: MaybeConfigHook<C>,
    /// `None`: the stop signal to every worker.
    pub(crate) on_terminate: Option<PidsHook<C>>,
    /// `None`: `SIGINT` to every worker.
    pub(crate) on_interrupt: Option<PidsHook<C>>,
    pub(crate) on_quit: ConfigHook<C>,
    pub(crate) on_child_finished: SpawnHook<C>,
    pub(crate) update_server: SpawnHook<C>,
    pub(crate) cleanup_child: ChildHook<C>,
    pub(crate) on_worker_exit: ExitHook<W>,
    pub(crate) on_pool_ready: ReloadHook<W>,
    pub(crate) on_reload_finished: ReloadHook<W>,
    pub(crate) update_config: UpdateFn<C, W>,
    pub(crate) fork: Option<ForkFn<W>>,
    pub(crate) pool: PoolConfig,
    pub(crate) readiness: Readiness,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) control_socket: Option<PathBuf>,
    pub(crate) status_file: Option<PathBuf>,
    pub(crate) scale_initial: Option<u32>,
    pub(crate) scale_bounds: (u32, u32),
    /// Signals the master passes on to every worker: (received, sent).
    pub(crate) forwards: Vec<(Signal, Signal)>,
    pub(crate) shutdown_delay: Duration,
    pub(crate) upgrade_check_timeout: Duration,
    pub(crate) systemd: Systemd,
    pub(crate) child_subreaper: bool,
    pub(crate) scoreboard: bool,
    /// The adaptive pool's pace: scan interval and idle timeout (see [`Settings::adaptive_pace`]).
    pub(crate) spare_pace: (Duration, Duration),
}

impl<C, W: WorkerContext> fmt::Debug for Settings<C, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("relaunch", &self.fork.is_some())
            .field("readiness", &self.readiness)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("shutdown_delay", &self.shutdown_delay)
            .field("upgrade_check_timeout", &self.upgrade_check_timeout)
            .field("systemd", &self.systemd)
            .field("child_subreaper", &self.child_subreaper)
            .field("scoreboard", &self.scoreboard)
            .field("pool", &self.pool)
            .field("control_socket", &self.control_socket)
            .field("status_file", &self.status_file)
            .field("scale", &self.scale_initial)
            .field("scale_bounds", &self.scale_bounds)
            .field("forwards", &self.forwards)
            .finish_non_exhaustive()
    }
}

/// Haskell's `defaultSettings`: `SIGTERM` sends the workers their stop signal (`SIGTERM` unless
/// [`Settings::stop_signal`] says otherwise), `SIGINT` sends them `SIGINT`, every other hook does
/// nothing, and `update_config` returns `None` (so nothing runs until you set it).
pub fn default_settings<C: 'static, W: WorkerContext>() -> Settings<C, W> {
    Settings {
        on_start: Box::new(|_| {}),
        on_finish: Box::new(|_| {}),
        on_terminate: None,
        on_interrupt: None,
        on_quit: Box::new(|_| {}),
        on_child_finished: Box::new(|_, _| Vec::new()),
        update_server: Box::new(|_, _| Vec::new()),
        cleanup_child: Box::new(|_, _| {}),
        on_worker_exit: Box::new(|_| {}),
        on_pool_ready: Box::new(|_| {}),
        on_reload_finished: Box::new(|_| {}),
        update_config: Box::new(|_| None),
        fork: None,
        pool: PoolConfig::default(),
        readiness: Readiness::Implicit,
        shutdown_timeout: Duration::from_secs(30),
        control_socket: None,
        status_file: None,
        scale_initial: None,
        scale_bounds: DEFAULT_SCALE_BOUNDS,
        forwards: Vec::new(),
        shutdown_delay: Duration::ZERO,
        upgrade_check_timeout: Duration::from_secs(10),
        systemd: Systemd::auto(),
        child_subreaper: false,
        scoreboard: true,
        spare_pace: (DEFAULT_SPARE_INTERVAL, DEFAULT_SPARE_IDLE_TIMEOUT),
    }
}

/// The adaptive pool's default scan interval (see [`Settings::adaptive_pace`]).
pub const DEFAULT_SPARE_INTERVAL: Duration = Duration::from_millis(100);
/// The adaptive pool's default idle timeout (see [`Settings::adaptive_pace`]).
pub const DEFAULT_SPARE_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Haskell's `relaunchSettings`: the master keeps one worker per id of the set that `update`
/// declares, using `fork` to start each.
///
/// * `update(&mut set)` is called at start and on every `SIGHUP`. It receives the current
///   desired set and edits it (usually [`WorkerSet::set`]), returning the configuration, or
///   `None` to keep everything as it runs (the edits are then dropped, and the reason should be
///   logged by `update`). At start, `None` is an error: there would be nothing to run.
/// * `fork(&ctx, &spawner)` starts one worker and returns its pid, normally by creating what the
///   worker needs (a listening socket, once) and calling
///   [`spawner.fork_worker_process(&ctx)`](Spawner::fork_worker_process). It may fail with the
///   library's [`Error`] or the application's own (anything that converts into
///   `Box<dyn Error + Send + Sync>`: `std::io::Error`, `anyhow::Error`, …). An error at start
///   ends the master with that error; later, it is retried with backoff.
///
/// The master then spawns every id at start, respawns exactly the id that died (at once when it
/// had been serving, with backoff when it died starting), and on `SIGHUP` stops ids that left,
/// spawns new ones and replaces the others, each new worker taking over once it is ready.
pub fn relaunch_settings<C, W, U, F, E>(update: U, mut fork: F) -> Settings<C, W>
where
    C: 'static,
    W: WorkerContext,
    U: FnMut(&mut WorkerSet<W>) -> Option<C> + 'static,
    F: FnMut(&W, &Spawner<'_>) -> std::result::Result<Pid, E> + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut s = default_settings();
    s.update_config = Box::new(update);
    s.fork = Some(Box::new(move |w: &W, spawner: &Spawner<'_>| {
        fork(w, spawner).map_err(|e| fork_error(w, e.into()))
    }));
    s
}

/// The library's error as it is, the application's wrapped.
fn fork_error<W: WorkerContext>(w: &W, e: Box<dyn std::error::Error + Send + Sync>) -> Error {
    match e.downcast::<Error>() {
        Ok(mine) => *mine,
        Err(theirs) => Error::Fork {
            what: format!("{:?}", w.id()),
            source: theirs,
        },
    }
}

impl<C: 'static, W: WorkerContext> Settings<C, W> {
    /// Called once the master has its first configuration (`None` if there is none), before
    /// the first workers start.
    pub fn on_start(mut self, f: impl FnMut(Option<&C>) + 'static) -> Self {
        self.on_start = Box::new(f);
        self
    }

    /// Called after the last worker was reaped, just before the master exits.
    pub fn on_finish(mut self, f: impl FnMut(Option<&C>) + 'static) -> Self {
        self.on_finish = Box::new(f);
        self
    }

    /// Called on `SIGTERM` with the pid of every live worker that has not been asked to stop
    /// yet (a worker retired by a reload already got its stop signal, and never gets it twice).
    /// Default: send them the [stop signal](Self::stop_signal).
    pub fn on_terminate(mut self, f: impl FnMut(&C, &[Pid]) + 'static) -> Self {
        self.on_terminate = Some(Box::new(f));
        self
    }

    /// Called on `SIGINT` with the same pids as [`on_terminate`](Self::on_terminate).
    /// Default: send them `SIGINT`.
    pub fn on_interrupt(mut self, f: impl FnMut(&C, &[Pid]) + 'static) -> Self {
        self.on_interrupt = Some(Box::new(f));
        self
    }

    /// Called on `SIGQUIT`; the master keeps running. (unicorn and nginx use `QUIT` for a
    /// graceful stop; here, as in haskell-prefork, it is yours to define. `TERM` is the graceful
    /// stop.)
    pub fn on_quit(mut self, f: impl FnMut(&C) + 'static) -> Self {
        self.on_quit = Box::new(f);
        self
    }

    /// Called after a reap pass that reaped at least one child; returns pids of workers it
    /// started (with the [`Spawner`]), which the master then also reaps and stops. With
    /// relaunch settings the dead workers are already respawned before this runs.
    pub fn on_child_finished(
        mut self,
        f: impl FnMut(&C, &Spawner<'_>) -> Vec<Pid> + 'static,
    ) -> Self {
        self.on_child_finished = Box::new(f);
        self
    }

    /// Called at start and after every successful `update_config` on `SIGHUP`; returns pids of
    /// workers it started (with the [`Spawner`]). With relaunch settings this runs after the
    /// declared set was reconciled, for anything extra.
    pub fn update_server(mut self, f: impl FnMut(&C, &Spawner<'_>) -> Vec<Pid> + 'static) -> Self {
        self.update_server = Box::new(f);
        self
    }

    /// Called for every reaped child, known or not.
    pub fn cleanup_child(mut self, f: impl FnMut(&C, Pid) + 'static) -> Self {
        self.cleanup_child = Box::new(f);
        self
    }

    /// Called for every worker of the declared set that ended, with its id, context, pid,
    /// generation, how it ended and why ([`ExitReason`](crate::ExitReason): crashed, failed
    /// start, retired by a reload, removed, killed at its deadline, shutdown). The pid is
    /// reaped, so this is the place to clean up what the worker held (by pid: an id is shared
    /// by the old and the new worker for a moment during a reload).
    pub fn on_worker_exit(mut self, f: impl FnMut(&WorkerEnded<W>) + 'static) -> Self {
        self.on_worker_exit = Box::new(f);
        self
    }

    /// Called once, when every worker of the first generation is ready (gunicorn's
    /// `when_ready`), or when the start gave up on some ids (the report says which).
    pub fn on_pool_ready(
        mut self,
        f: impl FnMut(&ReloadReport<<W as WorkerContext>::Id>) + 'static,
    ) -> Self {
        self.on_pool_ready = Box::new(f);
        self
    }

    /// Called when a reload (`SIGHUP`) finished: every worker replaced and ready
    /// ([`ReloadOutcome::Complete`](crate::ReloadOutcome::Complete)), the reload gave up on
    /// some ids (`Incomplete`, with each id and why; the old workers keep serving), or `update`
    /// returned no configuration (`Rejected`).
    pub fn on_reload_finished(
        mut self,
        f: impl FnMut(&ReloadReport<<W as WorkerContext>::Id>) + 'static,
    ) -> Self {
        self.on_reload_finished = Box::new(f);
        self
    }

    /// Produces the configuration, at start and on every `SIGHUP`. `None` keeps what runs.
    /// (With relaunch settings this replaces the `update` callback.)
    pub fn update_config(mut self, mut f: impl FnMut() -> Option<C> + 'static) -> Self {
        self.update_config = Box::new(move |_| f());
        self
    }

    /// Explicit or implicit readiness (default: implicit). With explicit readiness a worker is
    /// ready when it calls [`worker::ready`](crate::worker::ready).
    pub fn readiness(mut self, r: Readiness) -> Self {
        self.readiness = r;
        self
    }

    /// How long a new worker may take to become ready before it is killed and retried
    /// (default 30 s).
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.pool.ready_timeout = d;
        self
    }

    /// A worker that dies within this time of becoming ready counts as a failed start
    /// (backoff), in both readiness modes (default 1 s). With implicit readiness a replacement
    /// also takes over only after it; with explicit readiness it takes over when it is ready.
    pub fn startup_window(mut self, d: Duration) -> Self {
        self.pool.startup_window = d;
        self
    }

    /// How long a retired worker (replaced or removed) may drain after its stop signal before
    /// it is killed (default 30 s).
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.pool.stop_timeout = d;
        self
    }

    /// The signal that asks a worker to stop (default `SIGTERM`): sent to a retired worker, and
    /// by the default `on_terminate`. Workers learn it from their boot header, and
    /// [`worker::stop_signal`](crate::worker::stop_signal) handles exactly it (and `SIGINT`).
    /// A retired worker that dies *from* it (it did not handle it, so it did not drain) is
    /// logged as a warning.
    pub fn stop_signal(mut self, sig: Signal) -> Self {
        self.pool.stop_signal = sig;
        self
    }

    /// How long the master waits for workers after `SIGTERM`/`SIGINT` before it `SIGKILL`s the
    /// rest (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// The lame-duck delay (default 0): after `SIGTERM` or `SIGINT` the workers keep serving,
    /// new connections included, for this long before the stop proceeds as usual (workers
    /// told to stop and drain, listening sockets released, `shutdown_timeout` counted from
    /// then). Meant for load balancers and Kubernetes, which keep sending new connections to a
    /// pod for a moment after it was told to stop. The master says `STOPPING=1` to systemd at
    /// once; a second `SIGTERM`/`SIGINT` during the delay cuts it short, a third kills.
    /// `SIGHUP` is ignored from the first stop signal on.
    pub fn shutdown_delay(mut self, d: Duration) -> Self {
        self.shutdown_delay = d;
        self
    }

    /// How long the binary at the program path may take to pass its check before an upgrade
    /// in place (`SIGUSR2`, `prefork-ctl upgrade`; default 10 s). The check runs the binary as
    /// a child with the hand-over state on its standard input: it must start (parse its
    /// command line, build its settings) and reach [`default_main`](crate::default_main),
    /// which decodes the state and exits 0. A slower or failing check refuses the upgrade and
    /// the master keeps its code. See [the crate docs](crate#upgrading-the-master-in-place).
    pub fn upgrade_check_timeout(mut self, d: Duration) -> Self {
        self.upgrade_check_timeout = d;
        self
    }

    /// How the master talks to systemd (default [`Systemd::auto`]: readiness, reload and stop
    /// notifications when `NOTIFY_SOCKET` is set, watchdog pings when `WATCHDOG_USEC` asks for
    /// them). See [`crate::systemd`].
    pub fn systemd(mut self, s: Systemd) -> Self {
        self.systemd = s;
        self
    }

    /// Makes the master a child subreaper (`PR_SET_CHILD_SUBREAPER`) when it is not PID 1
    /// (default: no): orphans of its workers (a daemonizing helper, a worker's child whose
    /// parent crashed) are re-parented to the master, which reaps them, instead of to init.
    /// A master that is PID 1 (in a container) reaps every orphan already.
    pub fn child_subreaper(mut self, yes: bool) -> Self {
        self.child_subreaper = yes;
        self
    }

    /// Backoff for workers that fail to start: `initial`, doubling per failure, capped at
    /// `max` (defaults 100 ms and 15 s; at least 1 ms).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        // A zero delay would make a spawn that fails at once a busy loop.
        let initial = initial.max(Duration::from_millis(1));
        self.pool.backoff_initial = initial;
        self.pool.backoff_max = max.max(initial);
        self
    }

    /// How many replacements may be starting at once during a reload (default: no limit).
    /// Each starting replacement runs beside the worker it replaces, so the peak is
    /// `workers + n` processes; `1` replaces one worker at a time.
    pub fn max_parallel_replacements(mut self, n: usize) -> Self {
        self.pool.max_parallel_replacements = n.max(1);
        self
    }

    /// Whether `SIGHUP` replaces workers whose context did not change (default: true, because a
    /// HUP usually means new code or configuration that the context does not show).
    pub fn replace_unchanged(mut self, yes: bool) -> Self {
        self.pool.replace_unchanged = yes;
        self
    }

    /// Turns on runtime scaling, starting at `initial`. The scale is an input to `update`:
    /// it reads it with [`WorkerSet::scale`] and declares that many workers. `SIGTTIN` (+1),
    /// `SIGTTOU` (−1) and the control socket's `scale N|+K|-K` change it and call `update`
    /// again; only the ids that join start and only the ids that leave stop (gracefully), every
    /// other worker is left alone. A reload (`SIGHUP`) keeps the current scale. A change outside
    /// [`scale_bounds`](Self::scale_bounds) (default 1 ..= 1024) is refused with a reason.
    ///
    /// ```no_run
    /// use prefork_core::{relaunch_settings, Spawner, WorkerContext, WorkerSet};
    /// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, WorkerContext)]
    /// # struct Worker { #[prefork(id)] id: u32 }
    /// let settings = relaunch_settings(
    ///     |set: &mut WorkerSet<Worker>| {
    ///         let n = set.scale().unwrap_or(4);
    ///         set.set((0..n).map(|id| Worker { id }));
    ///         Some(())
    ///     },
    ///     |w: &Worker, spawner: &Spawner| spawner.fork_worker_process(w),
    /// )
    /// .scale(4)
    /// .scale_bounds(1, 64);
    /// # drop(settings);
    /// ```
    pub fn scale(mut self, initial: u32) -> Self {
        self.scale_initial = Some(initial);
        self
    }

    /// The smallest and largest scale a `TTIN`/`TTOU` or `scale` request may reach (default
    /// 1 ..= 1024). Only meaningful with [`scale`](Self::scale); the initial scale itself is
    /// not clamped (the program chose it).
    pub fn scale_bounds(mut self, min: u32, max: u32) -> Self {
        self.scale_bounds = (min, max.max(min));
        self
    }

    /// Listens for commands on a Unix stream socket at `path` (mode 0600; only the master's
    /// uid and root may connect): `status`, `reload`, `scale`, `replace`, `stop`, `metrics`.
    /// The protocol and a client are in [`control`](crate::control); `prefork-ctl` is the
    /// command-line client. A stale socket file left by a dead master is replaced; the master
    /// removes its file when it exits; a live socket or any other file at `path` is an error
    /// at start. The socket is served from the master's one loop, without a thread or a timer
    /// (an idle master still makes no wake-up), and a slow or hostile client cannot hold it:
    /// each request is at most 64 KiB and must arrive within 5 s.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control_socket = Some(path.into());
        self
    }

    /// Writes the [`Status`](crate::status::Status) as JSON to `path` whenever it changes
    /// (written to a temporary file beside it, then renamed over it, so a reader never sees
    /// half of one): for exec probes and humans.
    pub fn status_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.status_file = Some(path.into());
        self
    }

    /// Whether the master keeps a scoreboard (default: yes): a shared-memory slot per worker
    /// for its heartbeats and request counts (see [`worker::heartbeat`](crate::worker::heartbeat)
    /// and [`worker::request_guard`](crate::worker::request_guard)). Without it those calls
    /// are no-ops and the health rules that need it ([`hang_timeout`](Self::hang_timeout),
    /// [`max_requests`](Self::max_requests)) cannot be used: the master refuses to start.
    /// Turning it off saves one fd per spawn and a few atomic operations per request.
    pub fn scoreboard(mut self, yes: bool) -> Self {
        self.scoreboard = yes;
        self
    }

    /// Hang detection (default: off). A worker that beat once after it became ready and then
    /// has not beaten ([`worker::heartbeat`](crate::worker::heartbeat)) for longer than `d` is
    /// hung: the master logs one line (id, pid, the beat's age, the kernel's `wchan` and
    /// `syscall` for it), starts its replacement at once, sends it `SIGABRT` (so a core dump or
    /// a backtrace is possible) and `SIGKILL` after [`hang_kill_after`](Self::hang_kill_after).
    ///
    /// The replacement is not readiness-gated: a hung worker serves nobody, so keeping it until
    /// its successor is ready would only hold its memory and its stuck connections longer.
    /// A worker that never beats is never judged; a long request is not a hang as long as the
    /// worker's loop keeps beating. The master reads the scoreboard every `d / 4` (an idle
    /// master wakes up for that only when this is set), workers beat every `d / 10` (5 ms to
    /// 1 s; without hang detection they are not asked to beat at all). If the master itself
    /// was stopped or starved (the gap since its last read is longer than `d / 4 + d / 2`), it
    /// re-bases every beat to now and kills nobody that round.
    pub fn hang_timeout(mut self, d: Duration) -> Self {
        self.pool.health.hang_timeout = Some(d.max(Duration::from_millis(40)));
        self
    }

    /// How long a hung worker has between `SIGABRT` and `SIGKILL` (default 5 s).
    pub fn hang_kill_after(mut self, d: Duration) -> Self {
        self.pool.health.hang_kill_after = d;
        self
    }

    /// Recycles a worker once it has served `n` requests (counted by
    /// [`worker::request_guard`](crate::worker::request_guard)) plus a jitter drawn per worker
    /// (see [`max_requests_jitter`](Self::max_requests_jitter)): its replacement starts, and it
    /// retires once the replacement is ready. Default: off. The worker tells the master when it
    /// reaches the budget, so no timer runs for this.
    pub fn max_requests(mut self, n: u64) -> Self {
        self.pool.health.max_requests = Some(n.max(1));
        self
    }

    /// The request budget's jitter: each worker's budget is `max_requests` plus a draw in
    /// `0..=n`, so workers started together do not all recycle together (default 0).
    pub fn max_requests_jitter(mut self, n: u64) -> Self {
        self.pool.health.max_requests_jitter = n;
        self
    }

    /// Recycles a worker once it has lived `d` plus a jitter drawn per worker (see
    /// [`max_age_jitter`](Self::max_age_jitter)), readiness-gated. Default: off.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.pool.health.max_age = Some(d);
        self
    }

    /// The age limit's jitter: each worker's limit is `max_age` plus a draw in `0..=d`
    /// (default 0).
    pub fn max_age_jitter(mut self, d: Duration) -> Self {
        self.pool.health.max_age_jitter = d;
        self
    }

    /// Recycles a worker whose memory passes `bytes`, readiness-gated. Default: off. Memory is
    /// the PSS of `/proc/<pid>/smaps_rollup` (shared pages divided among their sharers; summed
    /// RSS would count the binary and libc once per worker), read every
    /// [`memory_check_interval`](Self::memory_check_interval) only when this is set.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.pool.health.max_memory = Some(bytes);
        self
    }

    /// How often memory is read for [`max_memory`](Self::max_memory) (default 5 s, at least
    /// 10 ms).
    pub fn memory_check_interval(mut self, d: Duration) -> Self {
        self.pool.health.memory_check_interval = d.max(Duration::from_millis(10));
        self
    }

    /// How many recycles (max_requests, max_age, max_memory) may be starting at once
    /// (default 1). Each runs beside the worker it replaces, so capacity never drops below the
    /// desired count.
    pub fn max_concurrent_recycles(mut self, n: usize) -> Self {
        self.pool.health.max_concurrent_recycles = n.max(1);
        self
    }

    /// An adaptive pool (default: off): the declared set becomes a list of candidates, in id
    /// order, of which the master runs only as many as the load needs, reading each worker's
    /// in-flight count ([`worker::request_guard`](crate::worker::request_guard)) from the
    /// scoreboard every scan interval (see [`adaptive_pace`](Self::adaptive_pace); 100 ms by
    /// default, a timer that runs only when this is set):
    ///
    /// * while fewer than `min_spare` running workers are idle (nothing in flight; a starting
    ///   worker counts as idle), the next ids start, never more than `max_workers` (nor than
    ///   the declared ids) in all;
    /// * while more than `max_spare` were idle through the whole interval (nothing in flight
    ///   and nothing finished since the previous scan), the highest ids retire, as many as are
    ///   above `max_spare` (their workers get their stop signal and drain);
    /// * once no worker was busy for the idle timeout (5 s by default), one id retires per
    ///   scan down to the floor, `max(min_spare, 1)`; never below it.
    ///
    /// A worker counts one request per live `request_guard`, so a worker that runs several
    /// requests at once is idle only when it runs none. Refused at start
    /// ([`Error::InvalidSetting`]) unless `min_spare <= max_spare`, `max_spare >= 1`,
    /// `max_workers >= 1`, and the [`scoreboard`](Self::scoreboard) is on.
    pub fn adaptive(mut self, min_spare: u32, max_spare: u32, max_workers: u32) -> Self {
        let (interval, idle_timeout) = self.spare_pace;
        self.pool.spare = Some(SpareConfig {
            min_spare,
            max_spare,
            max_workers,
            interval,
            idle_timeout,
        });
        self
    }

    /// The adaptive pool's pace (see [`adaptive`](Self::adaptive)): how often it scans
    /// (default [`DEFAULT_SPARE_INTERVAL`], 100 ms, at least 10 ms) and how long no worker
    /// must have been busy before it shrinks to its floor (default
    /// [`DEFAULT_SPARE_IDLE_TIMEOUT`], 5 s). Starts and retirements happen at most once per
    /// scan, so the interval bounds the rate of change.
    pub fn adaptive_pace(mut self, interval: Duration, idle_timeout: Duration) -> Self {
        self.spare_pace = (interval.max(Duration::from_millis(10)), idle_timeout);
        if let Some(sp) = self.pool.spare.as_mut() {
            sp.interval = self.spare_pace.0;
            sp.idle_timeout = self.spare_pace.1;
        }
        self
    }

    /// The settings that need the scoreboard, if it is off; an inconsistent adaptive pool.
    pub(crate) fn check_scoreboard(&self) -> Result<()> {
        let h = &self.pool.health;
        if !self.scoreboard && (h.hang_timeout.is_some() || h.max_requests.is_some()) {
            return Err(Error::InvalidSetting(
                "hang_timeout and max_requests need the scoreboard, which is turned off".into(),
            ));
        }
        if let Some(sp) = &self.pool.spare {
            let bad = if !self.scoreboard {
                Some("the adaptive pool needs the scoreboard, which is turned off".to_string())
            } else if sp.min_spare > sp.max_spare {
                Some(format!(
                    "adaptive pool: min_spare ({}) is above max_spare ({})",
                    sp.min_spare, sp.max_spare
                ))
            } else if sp.max_spare == 0 {
                Some("adaptive pool: max_spare must be at least 1".to_string())
            } else if sp.max_workers == 0 {
                Some("adaptive pool: max_workers must be at least 1".to_string())
            } else {
                None
            };
            if let Some(msg) = bad {
                return Err(Error::InvalidSetting(msg));
            }
        }
        Ok(())
    }

    /// When the master receives `received`, it sends `sent` to every live worker
    /// (Parallel::Prefork's `trap_signals`): `.forward_signal(Signal::SIGUSR1, Signal::SIGUSR1)`
    /// lets `kill -USR1 <master>` ask every worker to reopen its logs. Call it once per signal.
    ///
    /// The workers must handle `sent` (with `signal-hook`, for example): most signals' default
    /// action ends a process. Signals the master gives a meaning of its own are refused with
    /// an error at start ([`run_master`](crate::run_master) returns
    /// [`Error::InvalidSetting`]): `HUP` (reload), `TERM` and `INT` (stop), `CHLD` (reaping),
    /// `QUIT` (`on_quit`), `TTIN` and `TTOU` (runtime scaling), and those that cannot be caught or are faults (`KILL`, `STOP`,
    /// `SEGV`, `BUS`, `ILL`, `FPE`, `TRAP`, `SYS`), as is a signal forwarded twice.
    pub fn forward_signal(mut self, received: Signal, sent: Signal) -> Self {
        self.forwards.push((received, sent));
        self
    }

    pub(crate) fn pool_config(&self) -> PoolConfig {
        let mut cfg = self.pool.clone();
        cfg.promote_when_ready = self.readiness == Readiness::Explicit;
        let (min, max) = self.scale_bounds;
        cfg.scale = self
            .scale_initial
            .map(|current| ScaleStatus { current, min, max });
        cfg
    }
}
