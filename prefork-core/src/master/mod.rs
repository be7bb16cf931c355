//! The master: one thread, one loop, no busy polling.
//!
//! # The loop
//!
//! Everything the master learns arrives through one `poll`: the signal self-pipe
//! ([`signals`]), the readiness socket ([`crate::readiness`]), the control socket and its
//! clients ([`control`]), and timers as the poll's timeout, which is the state machine's next
//! deadline, or a connected control client's (none: it sleeps until something happens, so an
//! idle master costs no CPU). After a wake-up it handles, in this order: readiness messages,
//! reaping, `TERM`/`INT`, `QUIT`, `HUP`, `TTIN`/`TTOU`, stray signals, timers, control
//! requests, then what the pool reported (hooks, waiting control clients, the status file).
//!
//! Decisions (who to start, replace, retire, back off) are the pure state machine's
//! ([`pool`]); this module only observes and acts. The state machine acts through
//! [`LiveProcesses`]: the user's `fork` callback, called with a [`Spawner`], and `kill`.
//!
//! # Reaping
//!
//! `SIGCHLD`s coalesce, so one wake-up may stand for many children: the master calls
//! `waitpid(-1, WNOHANG)` until nothing is left, and reaps every child, its workers and any
//! other (a master running as PID 1 or as a subreaper inherits orphans). It therefore holds no
//! `std::process::Child` handles (whose `wait` would see `ECHILD`). The handlers are installed
//! before the first spawn, and one reap pass runs at start, so a child that exits before the
//! first `SIGCHLD` could be delivered is still reaped. A pid is signalled only while it is
//! known to be unreaped, so a recycled pid is never hit.
//!
//! # Shutdown
//!
//! `SIGTERM` (or `SIGINT`) first tells systemd `STOPPING=1`. With a
//! [`shutdown_delay`](crate::Settings::shutdown_delay) the master then stays a *lame duck* for
//! that long: everything keeps running and serving (a worker that dies is replaced), only
//! `SIGHUP` is ignored; a second stop signal ends the delay. Then it freezes the pool, calls `on_terminate` (`on_interrupt`) with every
//! live worker that has not been asked to stop yet (each worker gets its stop signal once),
//! lets go of the listening sockets (new connections are refused once the last worker closed
//! its copy, instead of queueing for nobody and being reset), and waits up to
//! `shutdown_timeout`; what is left then gets `SIGKILL`. A second
//! `SIGTERM`/`SIGINT` sends `SIGKILL` at once. When the last child is reaped, `on_finish` runs
//! and the master returns.

mod control;
mod pool;
mod service;
mod signals;
mod upgrade;

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{WaitPidFlag, WaitStatus};

use crate::context::{WorkerContext, WorkerSet};
use crate::control::ScaleChange;
use crate::error::{Error, Result};
use crate::process::{ChildExit, Pid, Signal};
use crate::readiness::{Readiness, ReadinessSocket};
use crate::report::{ReloadOutcome, ReloadReport};
use crate::reuseport::Holders;
use crate::scoreboard::Board;
use crate::settings::{ForkFn, Settings, UpdateFn};
use crate::spawn::Spawner;
use crate::systemd::Link;

use pool::{Pool, PoolEvent, Processes};
pub(crate) use pool::{PoolConfig, SpareConfig, later};
use signals::MasterSignals;

/// Sends `sig` to `pid`; a failure (the pid is gone) is logged at debug level.
pub(crate) fn send_signal(pid: Pid, sig: Signal) {
    let Some(nix_sig) = sig.to_nix() else {
        tracing::debug!(%pid, signal = %sig, "cannot send a signal nix does not name");
        return;
    };
    if let Err(e) = nix::sys::signal::kill(pid.to_nix(), nix_sig) {
        tracing::debug!(%pid, signal = %sig, error = %e, "kill failed");
    }
}

/// What the state machine acts through: the user's `fork` callback (given a [`Spawner`]),
/// `kill`, and the readiness socket, drained after every spawn.
struct LiveProcesses<'a, W> {
    fork: &'a mut ForkFn<W>,
    readiness: &'a ReadinessSocket,
    mode: Readiness,
    stop_signal: Signal,
    holders: &'a Holders,
    board: Option<&'a Board>,
    /// Readiness messages read while spawning, for the caller to hand to the pool.
    ready: Vec<Pid>,
    /// Recycle requests read meanwhile.
    recycle: Vec<Pid>,
}

impl<W> Processes<W> for LiveProcesses<'_, W> {
    fn spawn(&mut self, ctx: &W, generation: u64, max_requests: Option<u64>) -> Result<Pid> {
        let spawner = Spawner::new(
            self.readiness.worker_end(),
            self.mode,
            self.stop_signal,
            generation,
            self.board,
        )
        .with_max_requests(max_requests)
        .with_holders(self.holders);
        let r = (self.fork)(ctx, &spawner);
        // A long batch of spawns (a start or a reload of many workers) must not let the
        // readiness socket fill up: its senders would block in `worker::ready()`.
        self.readiness.drain(&mut self.ready, &mut self.recycle);
        r
    }

    fn signal(&mut self, pid: Pid, sig: Signal) {
        send_signal(pid, sig);
    }

    fn removing(&mut self, pid: Pid) {
        self.holders.removing(pid);
    }

    fn inspect(&mut self, pid: Pid) -> String {
        crate::scoreboard::kernel_state(pid)
    }
}

enum Phase {
    Running,
    /// Stop requested: still serving until `until` (the shutdown delay), then `sig`'s stop.
    LameDuck {
        until: Instant,
        sig: Signal,
    },
    Stopping {
        deadline: Instant,
        killed: bool,
    },
}

struct Master<C, W: WorkerContext> {
    settings: Settings<C, W>,
    fork: Option<ForkFn<W>>,
    config: Option<C>,
    desired: WorkerSet<W>,
    pool: Pool<W>,
    /// Children started by hooks (update_server, on_child_finished), not by the pool.
    unmanaged: BTreeSet<Pid>,
    phase: Phase,
    signals: MasterSignals,
    readiness: ReadinessSocket,
    /// Which worker holds which reuseport socket.
    holders: Holders,
    /// The workers' heartbeats and request counts (see [`crate::scoreboard`]).
    board: Option<Board>,
    /// The service manager, if any (see [`crate::systemd`]).
    systemd: Link,
    /// The control socket and the status file (see [`control`]).
    control: control::Control,
    /// An upgrade in place under way (see [`crate::upgrade`]).
    upgrade: upgrade::UpgradePhase,
    /// Upgrades in place this master made (the same pid throughout).
    upgrades: u64,
    /// A `SIGHUP` that arrived while an upgrade was being checked: acted on after it.
    hup_deferred: bool,
    /// The adaptive pool's previous scan: requests served by each current worker.
    served_at_scan: std::collections::BTreeMap<Pid, u64>,
}

/// What a reload request led to.
enum ReloadStart<Id> {
    /// The pool reconciles; it reports the end of this generation later.
    Started(u64),
    /// Already over: rejected by `update`, or a hook-only reload.
    Finished(ReloadReport<Id>),
    /// The master is stopping.
    Stopping,
}

/// Runs the master until it is told to stop. `default_main` calls this in the master process;
/// call it yourself only to wrap it.
pub fn run_master<C: 'static, W: WorkerContext>(mut settings: Settings<C, W>) -> Result<()> {
    let _ = crate::launch::launch();
    // A program that calls run_master itself answers an upgrade's check here.
    crate::upgrade::check_if_asked::<W>(|| validate(&settings).map_err(|e| e.report().to_string()));
    // An upgrade in place: this image was exec'd by the old one, whose state it adopts.
    let handover = crate::upgrade::take_handover();
    let valid = validate(&settings);
    let forwarded: Vec<Signal> = settings.forwards.iter().map(|&(from, _)| from).collect();
    let fork = settings.fork.take();
    let (pieces, adopted) = match &handover {
        None => {
            valid?;
            (fresh_pieces(&settings)?, None)
        }
        Some(h) => match valid
            .map_err(|e| e.report().to_string())
            .and_then(|()| upgrade::adopt(&mut settings, h))
        {
            Ok(mut p) => {
                let adopted = p.adopted.take();
                (p, adopted)
            }
            Err(why) if h.rolled_back.is_none() => {
                tracing::error!(
                    "upgrade: the new binary cannot adopt the state ({why}); \
                    rolling back to the old binary"
                );
                return Err(crate::upgrade::exec_rollback(h, &why));
            }
            Err(why) => {
                return Err(Error::InvalidSetting(format!(
                    "the old binary, back after a failed upgrade, cannot adopt its own state \
                     either: {why}"
                )));
            }
        },
    };
    drop(handover);
    // Handlers first, then the mask emptied: signals that waited across an upgrade's exec are
    // delivered to the handlers.
    let signals = MasterSignals::install(&forwarded)?;
    crate::systemd::prepare_master(settings.child_subreaper);
    let settings_systemd = settings.systemd;
    let mut m = Master {
        settings,
        fork,
        config: pieces.config,
        desired: pieces.desired,
        pool: pieces.pool,
        unmanaged: pieces.unmanaged,
        phase: Phase::Running,
        signals,
        readiness: pieces.readiness,
        holders: pieces.holders,
        board: pieces.board,
        systemd: Link::new(settings_systemd, Instant::now()),
        control: pieces.control,
        upgrade: upgrade::UpgradePhase::Idle,
        upgrades: pieces.upgrades,
        hup_deferred: false,
        served_at_scan: std::collections::BTreeMap::new(),
    };
    m.reap_all();
    let started = match adopted {
        Some(adopted) => {
            m.after_adoption(adopted);
            Ok(())
        }
        None => m.start(),
    };
    let r = started.and_then(|()| {
        m.dispatch_events();
        m.control_after_turn();
        m.run()
    });
    crate::fd::unlink_bound_unix_paths();
    r
}

/// What the master refuses to start with (one line each), also checked by an upgrade's check.
pub(crate) fn validate<C: 'static, W: WorkerContext>(settings: &Settings<C, W>) -> Result<()> {
    settings.check_scoreboard()?;
    signals::check_forwards(&settings.forwards)
}

/// A master's own pieces, made new (not adopted from an upgrade).
fn fresh_pieces<C: 'static, W: WorkerContext>(
    settings: &Settings<C, W>,
) -> Result<upgrade::Pieces<C, W>> {
    let readiness = ReadinessSocket::new()?;
    let control = control::Control::new(settings)?;
    let board = match settings.scoreboard {
        true => Some(Board::new(settings.pool.health.beat_interval())?),
        false => None,
    };
    Ok(upgrade::Pieces {
        pool: Pool::new(settings.pool_config()),
        readiness,
        board,
        control,
        unmanaged: BTreeSet::new(),
        config: None,
        desired: WorkerSet::new(),
        upgrades: 0,
        holders: Holders::default(),
        adopted: None,
    })
}

/// The spawner the hooks get (fields borrowed apart from the hooks themselves).
fn hook_spawner<'a, C, W: WorkerContext>(
    readiness: &'a ReadinessSocket,
    board: Option<&'a Board>,
    settings: &Settings<C, W>,
    pool: &Pool<W>,
    holders: &'a Holders,
) -> Spawner<'a> {
    Spawner::new(
        readiness.worker_end(),
        settings.readiness,
        settings.pool.stop_signal,
        pool.generation(),
        board,
    )
    .with_holders(holders)
}

impl<C: 'static, W: WorkerContext> Master<C, W> {
    /// The hook `update_server`, with a spawner; adopts what it started.
    fn call_update_server(&mut self) {
        if let Some(c) = &self.config {
            let spawner = hook_spawner(
                &self.readiness,
                self.board.as_ref(),
                &self.settings,
                &self.pool,
                &self.holders,
            );
            let extra = (self.settings.update_server)(c, &spawner);
            self.adopt(extra);
        }
    }

    fn start(&mut self) -> Result<()> {
        let mut set = WorkerSet::new();
        set.set_scale(self.pool.scale().map(|s| s.current));
        let config = call_update(&mut self.settings.update_config, &mut set);
        if self.fork.is_some() && config.is_none() {
            return Err(Error::NoInitialConfig);
        }
        self.config = config;
        (self.settings.on_start)(self.config.as_ref());
        if self.fork.is_some() {
            self.desired = set.clone();
            let failed = self
                .drive(|pool, ops| pool.start(set.into_map(), Instant::now(), ops))
                .flatten();
            if let Some((_, e)) = failed {
                self.abort_start();
                return Err(e);
            }
        }
        self.call_update_server();
        if self.fork.is_none() {
            self.notify_ready_now();
        }
        tracing::info!(
            pid = std::process::id(),
            workers = self.pool.pids().len() + self.unmanaged.len(),
            "master started"
        );
        Ok(())
    }

    /// A start that failed: kill what was started, reap it, leave nothing behind.
    fn abort_start(&mut self) {
        let _ = self.pool.begin_shutdown();
        let pids = self.live();
        for &pid in &pids {
            send_signal(pid, Signal::SIGKILL);
        }
        for pid in pids {
            while let Err(Errno::EINTR) = nix::sys::wait::waitpid(pid.to_nix(), None) {}
        }
    }

    /// Takes pids that a hook says it started. Only unreaped children of this process are
    /// kept: signalling or waiting for anything else could hit a recycled pid, or wait forever.
    fn adopt(&mut self, pids: Vec<Pid>) {
        use nix::sys::wait::{Id, waitid};
        for pid in pids {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(pid.to_nix()), flags) {
                Ok(_) => {
                    self.unmanaged.insert(pid);
                }
                Err(e) => tracing::warn!(%pid, error = %e,
                    "a hook returned a pid that is not an unreaped child of the master; ignored"),
            }
        }
    }

    fn live(&self) -> Vec<Pid> {
        let mut v = self.pool.pids();
        v.extend(self.unmanaged.iter().copied());
        v
    }

    fn run(&mut self) -> Result<()> {
        loop {
            let now = Instant::now();
            if let Phase::Stopping { .. } = self.phase
                && self.live().is_empty()
            {
                break;
            }
            let timeout = match self.next_deadline() {
                None => PollTimeout::NONE,
                Some(t) => {
                    // Round up: waking before the deadline would only cost another turn.
                    let ms = t
                        .saturating_duration_since(now)
                        .as_nanos()
                        .div_ceil(1_000_000);
                    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = vec![
                PollFd::new(self.signals.fd(), PollFlags::POLLIN),
                PollFd::new(self.readiness.master_end(), PollFlags::POLLIN),
            ];
            self.control.poll_fds(&mut fds);
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::sys("poll", e)),
            }
            let control_events: Vec<PollFlags> = fds[2..]
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect();
            drop(fds);
            let arrived = self.signals.take();
            self.step(&arrived);
            self.serve_control(&control_events);
            self.dispatch_events();
            self.upgrade_continue();
            self.notify_turn();
            self.control_after_turn();
        }
        self.control.flush();
        self.reap_all();
        (self.settings.on_finish)(self.config.as_ref());
        tracing::info!(pid = std::process::id(), "master finished");
        Ok(())
    }

    /// Hands what the pool reported to the hooks.
    fn dispatch_events(&mut self) {
        for event in self.pool.take_events() {
            self.control.observe(&event);
            match event {
                PoolEvent::Ended(ended) => (self.settings.on_worker_exit)(&ended),
                PoolEvent::Settled(report) => {
                    self.notify_settled(&report);
                    let what = match &report.outcome {
                        ReloadOutcome::Complete => "complete".to_string(),
                        ReloadOutcome::Incomplete { failed } => {
                            format!("incomplete: {} id(s) failed", failed.len())
                        }
                        ReloadOutcome::Rejected => "rejected".to_string(),
                    };
                    if report.generation == 0 {
                        tracing::info!(outcome = %what, took_ms = report.took.as_millis() as u64,
                            "pool ready");
                        (self.settings.on_pool_ready)(&report);
                        self.upgrade_settled(0);
                    } else {
                        tracing::info!(generation = report.generation, outcome = %what,
                            took_ms = report.took.as_millis() as u64, "reload finished");
                        self.control.reload_finished(&report, Instant::now());
                        (self.settings.on_reload_finished)(&report);
                        self.upgrade_settled(report.generation);
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d = self.pool.next_deadline();
        let phase = match self.phase {
            Phase::Stopping {
                deadline,
                killed: false,
            } => Some(deadline),
            Phase::LameDuck { until, .. } => Some(until),
            _ => None,
        };
        let sources = [
            phase,
            self.systemd.next_deadline(),
            self.control.next_deadline(),
            self.upgrade_deadline(),
        ];
        for t in sources.into_iter().flatten() {
            d = Some(d.map_or(t, |x| x.min(t)));
        }
        d
    }

    /// One turn of the loop, after a wake-up.
    fn step(&mut self, arrived: &[Signal]) {
        let got = |s: Signal| arrived.contains(&s);
        // Readiness before reaping: a worker that said "ready" and then died queued its datagram
        // before its SIGCHLD, and must count as ready when its death is judged.
        self.read_ready();
        if got(Signal::SIGCHLD) {
            self.reap_all();
        }
        if got(Signal::SIGTERM) || got(Signal::SIGINT) {
            self.cancel_upgrade_check();
        }
        if got(Signal::SIGTERM) {
            self.stop(Signal::SIGTERM);
        }
        if got(Signal::SIGINT) {
            self.stop(Signal::SIGINT);
        }
        if got(Signal::SIGQUIT) {
            tracing::info!("SIGQUIT: calling on_quit");
            if let Some(c) = &self.config {
                (self.settings.on_quit)(c);
            }
        }
        if got(Signal::SIGHUP) {
            if self.upgrade_checking() {
                tracing::info!("SIGHUP during the upgrade's check: acted on after it");
                self.hup_deferred = true;
            } else {
                self.reload();
            }
        }
        if got(Signal::SIGUSR2)
            && !self
                .settings
                .forwards
                .iter()
                .any(|&(f, _)| f == Signal::SIGUSR2)
        {
            tracing::info!("SIGUSR2: upgrading the master in place");
            if let Err(why) = self.begin_upgrade() {
                tracing::warn!("upgrade refused: {why}");
            }
        }
        for (sig, by) in [(Signal::SIGTTIN, 1), (Signal::SIGTTOU, -1)] {
            if got(sig) {
                match self.rescale(ScaleChange::By(by)) {
                    Ok(r) => {
                        tracing::info!(signal = %sig, from = r.from, to = r.to, "scale changed")
                    }
                    Err(why) => tracing::warn!(signal = %sig, "scale unchanged: {why}"),
                }
            }
        }
        // Stray signals, and forwarded ones (USR2 has a meaning unless it is forwarded).
        let forwarded = |s: Signal| self.settings.forwards.iter().any(|&(f, _)| f == s);
        let passing: Vec<Signal> = arrived
            .iter()
            .copied()
            .filter(|&s| !signals::is_meaningful(s) || forwarded(s))
            .collect();
        for sig in passing {
            match self
                .settings
                .forwards
                .iter()
                .find(|&&(from, _)| from == sig)
            {
                Some(&(_, to)) => {
                    let workers = self.live();
                    for &pid in &workers {
                        send_signal(pid, to);
                    }
                    tracing::info!(signal = %sig, sent = %to, workers = workers.len(),
                        "signal forwarded to the workers");
                }
                None => {
                    tracing::warn!(signal = %sig, "signal has no meaning for the master; ignored")
                }
            }
        }
        let now = Instant::now();
        self.upgrade_tick(now);
        self.drive(|pool, ops| pool.tick(now, ops));
        if let Some(memory) = self.pool.health_scan_due(now) {
            self.observe(None, memory);
        }
        if self.pool.scan_due(now) {
            self.adapt(now);
        }
        self.systemd.tick(now);
        if let Phase::LameDuck { until, sig } = self.phase
            && now >= until
        {
            self.begin_stop(sig);
        }
        if let Phase::Stopping {
            deadline,
            killed: false,
        } = self.phase
            && now >= deadline
        {
            tracing::warn!(
                remaining = self.live().len(),
                "shutdown deadline passed; sending SIGKILL"
            );
            self.kill_all(deadline);
        }
    }

    fn reap_all(&mut self) {
        let mut reaped = 0usize;
        loop {
            let (pid, how) = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (Pid::from_nix(pid), ChildExit::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    Pid::from_nix(pid),
                    ChildExit::Signaled(Signal::from_raw(sig as i32).unwrap_or(Signal::SIGKILL)),
                ),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => break,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    break;
                }
            };
            if self.upgrade_reaped(pid, how) {
                continue;
            }
            reaped += 1;
            tracing::debug!(%pid, status = %how, "child reaped");
            if let Some(b) = &self.board {
                b.release(pid);
            }
            // A child queues its readiness datagram before it can exit, so once waitpid returned
            // it, the message is readable: read it before classifying the death. (Reading once
            // per wake-up is not enough: a replacement spawned earlier in this same pass can
            // report ready and die before the pass ends.)
            self.read_ready();
            let now = Instant::now();
            let known = self
                .drive(|pool, ops| pool.exited(pid, how, now, ops))
                .unwrap_or(false);
            if !known {
                if self.unmanaged.remove(&pid) {
                    tracing::info!(%pid, status = %how, "worker exited");
                } else {
                    tracing::debug!(%pid, status = %how, "reaped a child the master did not start");
                }
            }
            if !matches!(self.phase, Phase::Stopping { .. }) {
                // A removed id's reuseport socket closes with its last holder. (Once stopping,
                // the master has let go of every socket already.)
                self.holders.reaped(pid);
            }
            if let Some(c) = &self.config {
                (self.settings.cleanup_child)(c, pid);
            }
        }
        if reaped > 0
            && let (Some(c), Phase::Running | Phase::LameDuck { .. }) = (&self.config, &self.phase)
        {
            let spawner = hook_spawner(
                &self.readiness,
                self.board.as_ref(),
                &self.settings,
                &self.pool,
                &self.holders,
            );
            let extra = (self.settings.on_child_finished)(c, &spawner);
            self.adopt(extra);
        }
    }

    /// Runs `f` on the pool with the live process operations, then hands the pool every
    /// readiness message read meanwhile (which may start more workers, and read more
    /// messages). `None` without relaunch settings.
    fn drive<R>(
        &mut self,
        f: impl FnOnce(&mut Pool<W>, &mut LiveProcesses<'_, W>) -> R,
    ) -> Option<R> {
        let fork = self.fork.as_mut()?;
        let mut ops = LiveProcesses {
            fork,
            readiness: &self.readiness,
            mode: self.settings.readiness,
            stop_signal: self.settings.pool.stop_signal,
            holders: &self.holders,
            board: self.board.as_ref(),
            ready: Vec::new(),
            recycle: Vec::new(),
        };
        let r = f(&mut self.pool, &mut ops);
        while !ops.ready.is_empty() || !ops.recycle.is_empty() {
            for pid in std::mem::take(&mut ops.ready) {
                self.pool.worker_ready(pid, Instant::now(), &mut ops);
            }
            let recycle = std::mem::take(&mut ops.recycle);
            if let (false, Some(board)) = (recycle.is_empty(), ops.board) {
                let seen = board.observe(&recycle, false);
                self.pool.observe(Instant::now(), &seen, &mut ops);
            }
        }
        Some(r)
    }

    fn read_ready(&mut self) {
        let (mut msgs, mut recycle) = (Vec::new(), Vec::new());
        self.readiness.drain(&mut msgs, &mut recycle);
        if !recycle.is_empty() {
            self.observe(Some(&recycle), false);
        }
        if msgs.is_empty() {
            return;
        }
        self.drive(|pool, ops| {
            for pid in msgs {
                pool.worker_ready(pid, Instant::now(), ops);
            }
        });
    }

    /// Reads the scoreboard for `pids` (every worker of the pool if `None`), and memory if
    /// asked, and hands it to the pool's health rules.
    fn observe(&mut self, pids: Option<&[Pid]>, memory: bool) {
        let Some(board) = &self.board else { return };
        let all;
        let pids = match pids {
            Some(p) => p,
            None => {
                all = self.pool.pids();
                &all
            }
        };
        let seen = board.observe(pids, memory);
        self.drive(|pool, ops| pool.observe(Instant::now(), &seen, ops));
    }

    /// The adaptive pool's scan: each current worker's activity, by id, from the scoreboard,
    /// handed to the pool (which always schedules the next scan, so a due scan never makes
    /// the loop spin, even without a scoreboard): what it has in flight now, and what it
    /// finished since the previous scan (see the pool's rules for which counts for what).
    fn adapt(&mut self, now: Instant) {
        let current = self.pool.current();
        let seen = match &self.board {
            Some(board) => {
                let pids: Vec<Pid> = current.values().copied().collect();
                board.observe(&pids, false)
            }
            None => Vec::new(),
        };
        let previous = std::mem::take(&mut self.served_at_scan);
        let mut by_pid = std::collections::BTreeMap::new();
        for o in &seen {
            let finished = previous
                .get(&o.pid)
                .map_or(0, |&before| o.served.saturating_sub(before));
            let a = pool::Activity {
                in_flight: o.in_flight,
                finished,
            };
            by_pid.insert(o.pid, a);
            self.served_at_scan.insert(o.pid, o.served);
        }
        let activity = current
            .into_iter()
            .filter_map(|(id, pid)| by_pid.get(&pid).map(|&n| (id, n)))
            .collect();
        // Without relaunch settings the pool never started, so no scan is ever due.
        self.drive(|pool, ops| pool.adapt(&activity, now, ops));
    }

    /// Shutdown's last resort: `SIGKILL` to every live child, once.
    fn kill_all(&mut self, deadline: Instant) {
        for pid in self.live() {
            send_signal(pid, Signal::SIGKILL);
        }
        self.phase = Phase::Stopping {
            deadline,
            killed: true,
        };
    }

    fn stop(&mut self, sig: Signal) {
        match self.phase {
            Phase::Stopping { deadline, .. } => {
                tracing::warn!(
                    signal = %sig,
                    remaining = self.live().len(),
                    "second stop signal; sending SIGKILL"
                );
                self.kill_all(deadline);
            }
            Phase::LameDuck { .. } => {
                tracing::info!(signal = %sig, "second stop signal; ending the shutdown delay");
                self.begin_stop(sig);
            }
            Phase::Running => {
                self.control.stopping(Instant::now());
                self.notify_stopping();
                let now = Instant::now();
                let delay = self.settings.shutdown_delay;
                if delay.is_zero() {
                    self.begin_stop(sig);
                } else {
                    tracing::info!(signal = %sig, delay_ms = delay.as_millis() as u64,
                        "stop requested: serving on for the shutdown delay (lame duck)");
                    self.phase = Phase::LameDuck {
                        until: later(now, delay),
                        sig,
                    };
                }
            }
        }
    }

    /// The stop proper: workers told to stop, listening sockets released, the deadline set.
    fn begin_stop(&mut self, sig: Signal) {
        // Retiring workers already got their stop signal: only the others are asked.
        let mut asked = self.pool.begin_shutdown();
        asked.extend(self.unmanaged.iter().copied());
        tracing::info!(signal = %sig, workers = self.live().len(), "stopping");
        self.phase = Phase::Stopping {
            deadline: later(Instant::now(), self.settings.shutdown_timeout),
            killed: false,
        };
        let hook = if sig == Signal::SIGINT {
            &mut self.settings.on_interrupt
        } else {
            &mut self.settings.on_terminate
        };
        let worker_signal = if sig == Signal::SIGINT {
            Signal::SIGINT
        } else {
            self.settings.pool.stop_signal
        };
        match (hook, &self.config) {
            (Some(hook), Some(c)) => hook(c, &asked),
            _ => {
                for &pid in &asked {
                    send_signal(pid, worker_signal);
                }
            }
        }
        // The workers stop accepting; the master lets go of the listening sockets, so
        // the kernel refuses new connections once the last worker closed its copy.
        let released = crate::fd::release_master_listeners();
        tracing::debug!(released, "listening sockets released");
    }

    fn reload(&mut self) -> ReloadStart<W::Id> {
        if !matches!(self.phase, Phase::Running) {
            tracing::info!("SIGHUP during shutdown: ignored");
            return ReloadStart::Stopping;
        }
        self.notify_reloading();
        let mut set = self.desired.clone();
        // The runtime scale survives a reload (gunicorn#716 resets it; here it stays).
        set.set_scale(self.pool.scale().map(|s| s.current));
        let Some(config) = call_update(&mut self.settings.update_config, &mut set) else {
            tracing::warn!(
                workers = self.live().len(),
                "SIGHUP: update returned no configuration; keeping the running workers"
            );
            let report = ReloadReport {
                generation: self.pool.generation(),
                outcome: ReloadOutcome::Rejected,
                took: std::time::Duration::ZERO,
            };
            self.notify_settled(&report);
            self.control.reload_finished(&report, Instant::now());
            (self.settings.on_reload_finished)(&report);
            return ReloadStart::Finished(report);
        };
        self.config = Some(config);
        if self.fork.is_some() {
            tracing::info!(
                generation = self.pool.generation() + 1,
                desired = set.len(),
                "SIGHUP: reconciling the declared workers"
            );
            self.desired = set.clone();
            self.drive(|pool, ops| pool.reload(set.into_map(), Instant::now(), ops));
        } else {
            self.pool.advance_generation();
            tracing::info!(
                generation = self.pool.generation(),
                "SIGHUP: calling update_server"
            );
        }
        self.call_update_server();
        if self.fork.is_none() {
            self.notify_ready_now();
        }
        match self.pool.settling_generation() {
            Some(g) if self.fork.is_some() => ReloadStart::Started(g),
            // Settled already (nothing to replace), or hook-only: over at once.
            _ => ReloadStart::Finished(ReloadReport {
                generation: self.pool.generation(),
                outcome: ReloadOutcome::Complete,
                took: std::time::Duration::ZERO,
            }),
        }
    }
}

/// Calls the user's update callback; a panic in it is caught and treated as `None`, so a bad
/// configuration never takes the master (and with it, every worker) down.
pub(crate) fn call_update<C, W: WorkerContext>(
    f: &mut UpdateFn<C, W>,
    set: &mut WorkerSet<W>,
) -> Option<C> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(set))) {
        Ok(c) => c,
        Err(_) => {
            tracing::error!("the update callback panicked; treating it as no configuration");
            None
        }
    }
}
