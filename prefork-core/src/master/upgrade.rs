//! The master's side of an upgrade in place (see [`crate::upgrade`] for the whole story):
//! the check child, the hand-over and the exec in the old image; the adoption, the roll and
//! the rollback in the new one.
//!
//! The loop is never blocked: the check is a child like any other, reaped by the loop's
//! `waitpid`, with a deadline in the loop's timeout; its answer is read once it has exited.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::{ChildStdout, Command, Stdio};
use std::time::Instant;

use std::collections::BTreeSet;

use super::control::Control;
use super::pool::Pool;
use super::{Master, Phase, later, send_signal};
use crate::context::{WorkerContext, WorkerSet};
use crate::process::{ChildExit, Pid, Signal};
use crate::readiness::ReadinessSocket;
use crate::reuseport::Holders;
use crate::scoreboard::Board;
use crate::settings::Settings;
use crate::status::UpgradeResult;
use crate::upgrade::Handover;
use crate::upgrade::{self as handover, State};

/// Where an upgrade stands.
#[derive(Debug, Default)]
pub(super) enum UpgradePhase {
    #[default]
    Idle,
    /// Asked for while a start, reload or scale was settling: the check begins once it has.
    Queued,
    /// The check child runs.
    Checking {
        pid: Pid,
        out: ChildStdout,
        deadline: Instant,
        /// Killed at its deadline: why the upgrade is refused once it is reaped.
        timed_out: bool,
    },
    /// In the new image: the roll of generation `generation` replaces the old code's workers;
    /// the upgrade ends when it settles.
    Rolling { generation: u64 },
    /// The check was called off (the master is stopping); its child is not reaped yet.
    Cancelled { pid: Pid },
    /// The check passed: the hand-over happens at the end of this turn of the loop, once every
    /// signal and request of the turn was handled (a stop among them calls it off).
    Passed,
}

impl<C: 'static, W: WorkerContext> Master<C, W> {
    /// `SIGUSR2` or `prefork-ctl upgrade`: starts the check of the binary at the program path.
    /// `Err` says why an upgrade cannot start now (nothing changed).
    pub(super) fn begin_upgrade(&mut self) -> Result<(), String> {
        if !matches!(self.phase, Phase::Running) {
            return Err("the master is stopping".into());
        }
        match self.upgrade {
            UpgradePhase::Idle => {}
            _ => return Err("an upgrade is under way already".into()),
        }
        if let Some(g) = self.pool.settling_generation() {
            // One change at a time: the upgrade follows the one under way, as a SIGHUP sent
            // during an upgrade follows it.
            tracing::info!(
                generation = g,
                "upgrade: waiting for the start, reload or scale under way to settle"
            );
            self.upgrade = UpgradePhase::Queued;
            return Ok(());
        }
        let state = self.handover_state();
        let bytes = state.to_bytes().map_err(|e| e.to_string())?;
        let request = crate::sys::frozen_memfd(c"prefork-upgrade-check", &bytes)
            .map_err(|e| format!("cannot write the check request: {e}"))?;
        let l = crate::launch::launch();
        use std::os::unix::process::CommandExt;
        let child = Command::new(&l.path)
            .arg0(&l.argv0)
            .args(&l.args)
            .env(handover::CHECK_ENV, "1")
            .stdin(Stdio::from(request))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", l.path.display()))?;
        let pid = Pid::from_raw(child.id() as i32);
        let Some(out) = child.stdout else {
            send_signal(pid, Signal::SIGKILL);
            return Err("no pipe to the check".into());
        };
        // The child is reaped by the loop's waitpid(-1), like every other child (the handle
        // is dropped, which neither waits nor kills).
        let now = Instant::now();
        let deadline = later(now, self.settings.upgrade_check_timeout);
        self.upgrade = UpgradePhase::Checking {
            pid,
            out,
            deadline,
            timed_out: false,
        };
        self.control.upgrade_started();
        self.notify_reloading();
        tracing::info!(path = %l.path.display(), check_pid = %pid,
            "upgrade: checking the new binary");
        Ok(())
    }

    /// Whether an upgrade is being checked (the old image still runs).
    pub(super) fn upgrade_checking(&self) -> bool {
        matches!(
            self.upgrade,
            UpgradePhase::Checking { .. } | UpgradePhase::Passed
        )
    }

    /// Whether an upgrade is under way (checked, or the new image rolling its workers), for
    /// the status.
    pub(super) fn upgrading(&self) -> bool {
        matches!(
            self.upgrade,
            UpgradePhase::Checking { .. } | UpgradePhase::Passed | UpgradePhase::Rolling { .. }
        )
    }

    /// At the end of a turn: a passed check hands over now, unless the master began to stop.
    pub(super) fn upgrade_continue(&mut self) {
        if !matches!(self.upgrade, UpgradePhase::Passed) {
            return;
        }
        let r = match self.phase {
            Phase::Running => self.hand_over(),
            _ => Err("the master is stopping".into()),
        };
        if let Err(why) = r {
            self.refuse_upgrade(why);
        }
    }

    /// The deadline of the check under way, for the loop's timeout.
    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        match self.upgrade {
            UpgradePhase::Checking {
                deadline,
                timed_out: false,
                ..
            } => Some(deadline),
            _ => None,
        }
    }

    /// After a wake-up: a check past its deadline is killed (and judged when reaped).
    pub(super) fn upgrade_tick(&mut self, now: Instant) {
        if let UpgradePhase::Checking {
            pid,
            deadline,
            timed_out,
            ..
        } = &mut self.upgrade
            && !*timed_out
            && now >= *deadline
        {
            *timed_out = true;
            send_signal(*pid, Signal::SIGKILL);
        }
    }

    /// A stop signal during the check: the check is called off (the stop goes on at once).
    pub(super) fn cancel_upgrade_check(&mut self) {
        let cancelled = match self.upgrade {
            UpgradePhase::Checking { pid, .. } => {
                send_signal(pid, Signal::SIGKILL);
                UpgradePhase::Cancelled { pid }
            }
            UpgradePhase::Passed | UpgradePhase::Queued => UpgradePhase::Idle,
            _ => return,
        };
        self.upgrade = cancelled;
        tracing::warn!("upgrade refused: the master is stopping");
        self.control.upgrade_ended(
            UpgradeResult::Refused,
            Some("the master is stopping".into()),
            self.pool.generation(),
            Instant::now(),
        );
    }

    /// `pid` was reaped: if it is the check, judges it (a pass hands over at the end of the
    /// turn, see [`upgrade_continue`](Self::upgrade_continue)). Returns whether it was the
    /// check (or a check that was called off).
    pub(super) fn upgrade_reaped(&mut self, pid: Pid, how: ChildExit) -> bool {
        let check = match self.upgrade {
            UpgradePhase::Checking { pid: check, .. } => check,
            UpgradePhase::Cancelled { pid: check } if check == pid => {
                self.upgrade = UpgradePhase::Idle;
                return true;
            }
            _ => return false,
        };
        if check != pid {
            return false;
        }
        let UpgradePhase::Checking { out, timed_out, .. } = std::mem::take(&mut self.upgrade)
        else {
            return true;
        };
        let answer = read_answer(out);
        let verdict = if timed_out {
            Err(format!(
                "the new binary did not pass its check within {} ms (killed)",
                self.settings.upgrade_check_timeout.as_millis()
            ))
        } else if how != ChildExit::Exited(0) {
            Err(format!("the new binary failed its check ({how})"))
        } else if !answer.lines().any(|l| l.starts_with(handover::CHECK_ACK)) {
            Err(format!(
                "the new binary exited 0 without acknowledging the check (is it a prefork \
                 program of a version that upgrades?); it said {:?}",
                answer.lines().next().unwrap_or("")
            ))
        } else {
            let ack = answer.lines().find(|l| l.starts_with(handover::CHECK_ACK));
            tracing::info!(
                answer = ack.unwrap_or(""),
                "upgrade: the new binary passed its check"
            );
            self.upgrade = UpgradePhase::Passed;
            Ok(())
        };
        if let Err(why) = verdict {
            self.refuse_upgrade(why);
        }
        true
    }

    fn refuse_upgrade(&mut self, why: String) {
        tracing::warn!("upgrade refused: {why}; the master keeps its code, nothing changed");
        self.upgrade = UpgradePhase::Idle;
        // READY=1 ends the upgrade's RELOADING=1 first; a held-back SIGHUP's reload then says
        // RELOADING=1 again and READY=1 when it has settled.
        self.notify_ready_now();
        if std::mem::take(&mut self.hup_deferred) {
            tracing::info!("SIGHUP received during the upgrade's check: reloading now");
            self.reload();
        }
        self.control.upgrade_ended(
            UpgradeResult::Refused,
            Some(why),
            self.pool.generation(),
            Instant::now(),
        );
    }

    /// Everything the new image needs.
    fn handover_state(&self) -> State {
        let listeners = crate::fd::export_listeners();
        let (control, book) = self.control.export();
        State {
            version: handover::STATE_VERSION,
            written_by: format!("prefork-core {}", env!("CARGO_PKG_VERSION")),
            upgrades: self.upgrades,
            pool: self.pool.export(Instant::now()),
            unmanaged: self.unmanaged.iter().map(|p| p.as_raw()).collect(),
            listeners,
            readiness: self.readiness.raw_fds(),
            board: self.board.as_ref().map(|b| b.export()),
            control,
            book,
            groups: crate::reuseport::export_groups(),
        }
    }

    /// Writes the state, keeps its fds open, blocks every signal and execs the new binary in
    /// place. Returns only if that failed (everything is put back).
    fn hand_over(&mut self) -> Result<(), String> {
        let state = self.handover_state();
        let bytes = state.to_bytes().map_err(|e| e.to_string())?;
        let state_fd = crate::sys::frozen_memfd(c"prefork-upgrade-state", &bytes)
            .map_err(|e| format!("cannot write the upgrade state: {e}"))?;
        let old_exe = handover::open_own_exe()
            .map_err(|e| format!("cannot open the running executable for a rollback: {e}"))?;
        let mut fds: Vec<RawFd> = state.fds();
        fds.extend([state_fd.as_raw_fd(), old_exe.as_raw_fd()]);
        if let Err(e) = handover::set_inheritable(&fds, true) {
            let _ = handover::set_inheritable(&fds, false);
            return Err(format!(
                "cannot keep the master's fds open across the exec: {e}"
            ));
        }
        tracing::info!(
            workers = self.pool.pids().len(),
            state_bytes = bytes.len(),
            generation = self.pool.generation(),
            "upgrade: handing over to the new binary (exec in place)"
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Control clients other than those waiting for the upgrade do not cross the exec:
        // what they are owed is written (or they are told to ask again) now.
        self.control.before_exec();
        self.systemd_ping_watchdog();
        // From here until the new image installed its handlers, every signal waits (the mask
        // and the pending set survive execve): none is lost, and none can kill the master with
        // its default action.
        let old_mask = crate::sys::block_all_signals();
        // A signal that reached a handler since this turn's look at them is recorded in this
        // image's memory only: raised again, it waits (blocked) across the exec for the new
        // image, as does a SIGHUP held back during the check.
        let mut again = self.signals.take();
        if self.hup_deferred && !again.contains(&Signal::SIGHUP) {
            again.push(Signal::SIGHUP);
        }
        for sig in &again {
            if let Some(s) = sig.to_nix() {
                let _ = nix::sys::signal::raise(s);
            }
        }
        let e = handover::exec_new(state_fd.as_fd(), old_exe.as_fd());
        if let Ok(mask) = &old_mask {
            crate::sys::restore_signal_mask(mask);
        }
        let _ = handover::set_inheritable(&fds, false);
        drop((state_fd, old_exe));
        // The signals raised for the new image are delivered now, to this one (the deferred
        // SIGHUP among them: cleared, so it is not acted on twice).
        self.hup_deferred = false;
        Err(e.report().to_string())
    }

    /// In the new image, once the loop may run: the roll of every worker, or (back after a
    /// rollback) the report of the failed upgrade.
    pub(super) fn after_adoption(&mut self, adopted: Adopted) {
        let workers = self.pool.pids().len();
        // The old image's last watchdog ping may be most of an interval old.
        self.systemd_ping_watchdog();
        if let Some(why) = adopted.rolled_back {
            tracing::warn!(
                "upgrade rolled back: the new binary could not adopt the state ({why}); \
                 the old code runs on, {workers} worker(s) kept"
            );
            self.control.upgrade_ended(
                UpgradeResult::RolledBack,
                Some(why),
                self.pool.generation(),
                Instant::now(),
            );
            // `update` ran again: ids it added start, ids it dropped retire, changed contexts
            // are replaced; the others (the same code) are left alone. Its settling says
            // READY=1.
            if self.fork.is_some() && self.config.is_some() {
                let set = self.desired.clone();
                self.drive(|pool, ops| {
                    pool.reload_replacing(set.into_map(), false, Instant::now(), ops)
                });
            } else {
                if self.config.is_none() {
                    tracing::error!(
                        "after the rollback, update returned no configuration: the workers \
                         are kept as they are; reload once the configuration is fixed"
                    );
                }
                self.notify_ready_now();
            }
            return;
        }
        self.upgrades += 1;
        tracing::info!(
            pid = std::process::id(),
            workers,
            from = adopted.written_by,
            upgrades = self.upgrades,
            "master upgraded in place"
        );
        self.systemd_resume_reloading();
        if self.fork.is_some() {
            // Every worker, changed context or not: the code changed.
            let set = self.desired.clone();
            self.drive(|pool, ops| {
                pool.reload_replacing(set.into_map(), true, Instant::now(), ops)
            });
            tracing::info!(
                generation = self.pool.generation(),
                "upgrade: replacing every worker with the new code"
            );
        } else {
            self.pool.advance_generation();
        }
        self.call_update_server();
        match self.pool.settling_generation() {
            Some(generation) if self.fork.is_some() => {
                self.upgrade = UpgradePhase::Rolling { generation }
            }
            _ => self.finish_upgrade(),
        }
    }

    /// In the new image: a generation settled; the upgrade ends if it was its roll.
    pub(super) fn upgrade_settled(&mut self, generation: u64) {
        if let UpgradePhase::Queued = self.upgrade
            && self.pool.settling_generation().is_none()
        {
            self.upgrade = UpgradePhase::Idle;
            if let Err(why) = self.begin_upgrade() {
                self.refuse_upgrade(why);
            }
            return;
        }
        if let UpgradePhase::Rolling { generation: g } = self.upgrade
            && generation >= g
        {
            self.finish_upgrade();
        }
    }

    fn finish_upgrade(&mut self) {
        self.upgrade = UpgradePhase::Idle;
        let closed =
            crate::fd::close_unclaimed_inherited() + crate::reuseport::release_unclaimed_groups();
        if self.fork.is_none() {
            self.notify_ready_now();
        }
        tracing::info!(
            generation = self.pool.generation(),
            closed_unused_sockets = closed,
            "upgrade finished: every worker runs the new code"
        );
        self.control.upgrade_ended(
            UpgradeResult::Upgraded,
            None,
            self.pool.generation(),
            Instant::now(),
        );
    }
}

/// What the check child printed (it has exited: the pipe holds all of it, or a grandchild
/// keeps it open and what is there is read without waiting).
fn read_answer(out: ChildStdout) -> String {
    let fd = OwnedFd::from(out);
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    // At most 64 KiB (a pipe's buffer): a program may print something of its own before it
    // reaches default_main; the acknowledgement is its own line.
    let mut buf = Vec::new();
    let _ = std::fs::File::from(fd).take(64 << 10).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// What the new image learnt from the hand-over, for after its loop's set-up.
pub(super) struct Adopted {
    /// Back in the old image after a failed upgrade: why it failed.
    pub rolled_back: Option<String>,
    /// Who wrote the state.
    pub written_by: String,
}

/// Everything [`adopt`] rebuilt.
pub(super) struct Pieces<C, W: WorkerContext> {
    pub pool: Pool<W>,
    pub readiness: ReadinessSocket,
    pub board: Option<Board>,
    pub control: Control,
    pub unmanaged: BTreeSet<Pid>,
    pub config: Option<C>,
    pub desired: WorkerSet<W>,
    pub upgrades: u64,
    /// Which worker holds which reuseport socket.
    pub holders: Holders,
    /// Set when adopted from an upgrade's hand-over.
    pub adopted: Option<Adopted>,
}

/// In the new image, before the handlers are installed (the signals are still blocked, and a
/// rollback exec keeps them so): the pool, the sockets and the book from the hand-over, and
/// the configuration from this image's `update`. `Err` is a reason to roll back.
pub(super) fn adopt<C: 'static, W: WorkerContext>(
    settings: &mut Settings<C, W>,
    h: &Handover,
) -> Result<Pieces<C, W>, String> {
    let state = h.state.as_ref().map_err(Clone::clone)?;
    let now = Instant::now();
    // Before `update` runs: it (or `fork`) may bind the sockets it had, and gets them back.
    let holders = Holders::default();
    crate::reuseport::adopt_groups(&state.groups, &holders)?;
    crate::fd::adopt_inherited(&state.listeners);
    let mut set = WorkerSet::new();
    // The old master's runtime scale, within this image's bounds (none if it scales no more).
    let scale = settings.pool_config().scale.map(|s| {
        state
            .pool
            .scale
            .unwrap_or(s.current)
            .clamp(s.min, s.max.max(s.min))
    });
    set.set_scale(scale);
    let config = super::call_update(&mut settings.update_config, &mut set);
    if config.is_none() && h.rolled_back.is_none() {
        return Err("the new code's update returned no configuration".into());
    }
    let desired = set.clone().into_map();
    let pool = Pool::adopt(settings.pool_config(), &state.pool, &desired, now)?;
    let unmanaged = state
        .unmanaged
        .iter()
        .filter(|&&p| p > 0)
        .map(|&p| Pid::from_raw(p))
        .collect();
    // The fds last: a failure before this point leaves every one open for a rollback. One
    // after it leaks what was adopted already (never closes it), for the same reason.
    let readiness = ReadinessSocket::adopt(state.readiness).map_err(|e| e.report().to_string())?;
    let board = match (&state.board, settings.scoreboard) {
        (Some(b), true) => Board::adopt(b, settings.pool.health.beat_interval()).map(Some),
        (None, true) => Board::new(settings.pool.health.beat_interval()).map(Some),
        (_, false) => Ok(None),
    };
    let board = match board {
        Ok(b) => b,
        Err(e) => {
            std::mem::forget(readiness);
            return Err(e.report().to_string());
        }
    };
    let control = match Control::adopt(settings, state.control.as_ref(), &state.book) {
        Ok(c) => c,
        Err(e) => {
            std::mem::forget(readiness);
            std::mem::forget(board);
            return Err(e.report().to_string());
        }
    };
    // Nothing fails from here on: what this image does not keep is let go of.
    if let (Some(b), false) = (&state.board, settings.scoreboard)
        && crate::sys::set_cloexec_raw(b.fd).is_ok()
    {
        // Open, handed over for this image only, and not wanted by its settings.
        drop(crate::sys::own_inherited(b.fd));
    }
    crate::fd::adoption_done();
    Ok(Pieces {
        pool,
        readiness,
        board,
        control,
        unmanaged,
        config,
        desired: set,
        upgrades: state.upgrades,
        holders,
        adopted: Some(Adopted {
            rolled_back: h.rolled_back.clone(),
            written_by: state.written_by.clone(),
        }),
    })
}
