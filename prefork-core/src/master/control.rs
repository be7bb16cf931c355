//! The master's control socket, its status views, and the status file.
//!
//! # One loop, nothing that blocks
//!
//! The socket (`AF_UNIX`, `SOCK_STREAM`, non-blocking) and each connected client are fds of the
//! master's one `poll`. A client is served in three phases, each bounded:
//!
//! * **reading** its one request line: at most [`MAX_REQUEST`] bytes, within [`IO_TIMEOUT`]
//!   of being accepted; a client that sends nothing, too much, or garbage gets a one-line error
//!   (when its socket takes it) and is closed;
//! * **waiting**, for a `reload` or a `replace` that has not finished: the fd is polled for
//!   hang-up only, so a client that goes away is dropped at once;
//! * **writing** its one response line, within [`IO_TIMEOUT`]; a client that does not read it
//!   is closed.
//!
//! At most [`MAX_CLIENTS`] are connected at once; one more is told `busy` and closed. The loop's
//! timeout includes the earliest client deadline only while a client is connected, so an idle
//! master keeps sleeping without a timer.
//!
//! # Who may connect
//!
//! The socket file is created with mode 0600 (bound under a temporary name, `chmod`ed, then
//! renamed into place, so it is never reachable with looser permissions), and every peer's uid
//! is checked with `SO_PEERCRED`: only the master's own uid and root are served. Others get an
//! error line and are closed.
//!
//! # Observing, not deciding
//!
//! Commands are the master's own operations: `reload` is what `SIGHUP` does, `stop` what
//! `SIGTERM` does, `scale` and `replace` are decisions of the pool (see `pool`); this module
//! reads the pool's views to build the [`Status`], keeps the counters from the pool's events,
//! and answers.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags};

use crate::context::WorkerContext;
use crate::control::{Command, MAX_REQUEST, ReplaceResult, Response, ScaleChange, ScaleResult};
use crate::error::{Error, Result};
use crate::process::{ChildExit, Pid, Signal};
use crate::report::{ExitReason, ReloadOutcome, ReloadReport, ReplaceReason};
use crate::settings::Settings;
use crate::status::{
    AdaptiveStatus, Counters, FailedId, LastExit, ListenerStatus, MasterState, MasterStatus,
    ReloadResult, ReloadStatus, Resources, Status, Timestamp, UpgradeResult, UpgradeStatus,
    WorkerState, WorkerStatus,
};
use crate::upgrade::{BookState, ControlState};

use super::pool::{PoolEvent, ReplaceProgress, WorkerState as PoolState};
use super::{Master, Phase, ReloadStart, call_update};

/// How long a client may take to send its request, or to read its response.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients connected at once.
pub(crate) const MAX_CLIENTS: usize = 16;

/// The control socket, the status file, and what the status is built from besides the pool.
#[derive(Debug)]
pub(super) struct Control {
    socket: Option<ControlSocket>,
    status_file: Option<PathBuf>,
    /// The last status written to the file.
    written: Vec<u8>,
    book: Book,
}

/// What the master remembers for its status: when it started, the last reload, the counters.
#[derive(Debug)]
struct Book {
    started: Instant,
    started_wall: SystemTime,
    last_reload: Option<ReloadStatus>,
    counters: Counters,
    last_upgrade: Option<UpgradeStatus>,
    /// When the upgrade under way started.
    upgrade_started: Option<SystemTime>,
}

impl Book {
    fn wall(&self, t: Instant) -> Timestamp {
        let w = if t >= self.started {
            self.started_wall.checked_add(t - self.started)
        } else {
            self.started_wall.checked_sub(self.started - t)
        };
        Timestamp::from(w.unwrap_or(self.started_wall))
    }
}

/// What a waiting client waits for.
#[derive(Debug)]
pub(super) enum Wait {
    /// The end of the reload that made this generation (or a later one).
    Reload(u64),
    /// The replacement of this id's worker `old`.
    Replace { id: String, old: Pid },
    /// The end of the upgrade under way.
    Upgrade,
}

/// What the master does with a request.
enum Outcome {
    Reply(Response),
    Wait(Wait),
    /// Answered already.
    Answered,
}

impl Control {
    /// Binds the control socket if the settings ask for one.
    pub fn new<C, W: WorkerContext>(settings: &Settings<C, W>) -> Result<Control> {
        let mut c = Control::new_unbound(settings);
        if let Some(path) = &settings.control_socket {
            c.socket = Some(ControlSocket::bind(path)?);
        }
        Ok(c)
    }

    fn new_unbound<C, W: WorkerContext>(settings: &Settings<C, W>) -> Control {
        Control {
            socket: None,
            status_file: settings.status_file.clone(),
            written: Vec::new(),
            book: Book {
                started: Instant::now(),
                started_wall: SystemTime::now(),
                last_reload: None,
                counters: Counters::default(),
                last_upgrade: None,
                upgrade_started: None,
            },
        }
    }

    /// The control socket (with the clients waiting for the upgrade) and the book, for an
    /// upgrade's hand-over.
    pub fn export(&self) -> (Option<ControlState>, BookState) {
        let socket = self.socket.as_ref().map(|s| ControlState {
            fd: s.listener.as_raw_fd(),
            path: s.path.clone(),
            ident: s.ident,
            clients: s
                .clients
                .iter()
                .filter(|c| matches!(c.phase, ClientPhase::Waiting(Wait::Upgrade)))
                .map(|c| c.stream.as_raw_fd())
                .collect(),
        });
        let unix_ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64)
        };
        let book = BookState {
            started_unix_ms: unix_ms(self.book.started_wall),
            uptime_ms: self.book.started.elapsed().as_millis() as u64,
            counters: serde_json::to_value(&self.book.counters).unwrap_or_default(),
            last_reload: serde_json::to_value(&self.book.last_reload).unwrap_or_default(),
            last_upgrade: serde_json::to_value(&self.book.last_upgrade).unwrap_or_default(),
            upgrade_started_unix_ms: self.book.upgrade_started.and_then(unix_ms),
        };
        (socket, book)
    }

    /// The control socket and the book an old master handed over. The socket is kept when
    /// this image's settings name the same path (its clients waiting for the upgrade with
    /// it); otherwise it is closed (and its file removed) and the settings' socket is bound.
    pub fn adopt<C, W: WorkerContext>(
        settings: &Settings<C, W>,
        state: Option<&ControlState>,
        book: &BookState,
    ) -> Result<Control> {
        let mut control = Control::new_unbound(settings);
        let from_ms = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        if let Some(ms) = book.started_unix_ms {
            control.book.started_wall = from_ms(ms);
        }
        control.book.started = Instant::now()
            .checked_sub(Duration::from_millis(book.uptime_ms))
            .unwrap_or_else(Instant::now);
        control.book.counters = serde_json::from_value(book.counters.clone()).unwrap_or_default();
        control.book.last_reload = serde_json::from_value(book.last_reload.clone()).unwrap_or(None);
        control.book.last_upgrade =
            serde_json::from_value(book.last_upgrade.clone()).unwrap_or(None);
        control.book.upgrade_started = book.upgrade_started_unix_ms.map(from_ms);
        // Nothing handed over is closed until nothing can fail any more: a failed adoption
        // rolls back to the old image, which needs every number open.
        let st = state.filter(|st| crate::sys::set_cloexec_raw(st.fd).is_ok());
        let keep = st.filter(|st| settings.control_socket.as_deref() == Some(st.path.as_path()));
        if let Some(st) = keep {
            socket2::SockRef::from(&crate::sys::borrow_inherited(st.fd))
                .set_nonblocking(true)
                .map_err(|e| Error::sys("cannot make the control socket non-blocking", e))?;
        }
        control.socket = match (keep, &settings.control_socket) {
            (Some(st), _) => {
                // Each number was checked open and handed over for this image only: one owner.
                let listener = UnixListener::from(crate::sys::own_inherited(st.fd));
                Some(ControlSocket::adopt(listener, st, open_clients(st)))
            }
            (None, Some(path)) => Some(ControlSocket::bind(path)?),
            (None, None) => None,
        };
        if let (Some(st), None) = (st, keep) {
            // Another path (or none) in this image's settings: the old socket goes, and its
            // waiting clients are told why.
            drop(UnixListener::from(crate::sys::own_inherited(st.fd)));
            if std::fs::symlink_metadata(&st.path)
                .is_ok_and(|m| Some((m.dev(), m.ino())) == st.ident)
            {
                let _ = std::fs::remove_file(&st.path);
            }
            for mut c in open_clients(st) {
                let _ = std::io::Write::write_all(
                    &mut c,
                    b"{\"result\":\"error\",\"error\":\"the new master has no control socket at this path\"}\n",
                );
            }
        }
        Ok(control)
    }

    /// Just before an upgrade's exec: clients that do not cross it (all but those waiting for
    /// the upgrade) get what they are owed now, in one non-blocking write: a response being
    /// written is written, and a request being read or waited on is answered with an error
    /// asking to send it again.
    pub fn before_exec(&mut self) {
        let Some(s) = &mut self.socket else { return };
        let now = Instant::now();
        let retry = error("the master is upgrading itself in place; send the request again");
        for c in &mut s.clients {
            match c.phase {
                ClientPhase::Waiting(Wait::Upgrade) => {}
                ClientPhase::Writing { .. } => c.write_some(),
                ClientPhase::Reading { .. } | ClientPhase::Waiting(_) => c.reply(&retry, now),
            }
        }
    }

    /// An upgrade began: remembered for its status.
    pub fn upgrade_started(&mut self) {
        self.book.upgrade_started = Some(SystemTime::now());
    }

    /// An upgrade ended: remembered, counted, and told to the clients waiting for it.
    pub fn upgrade_ended(
        &mut self,
        outcome: UpgradeResult,
        reason: Option<String>,
        generation: u64,
        now: Instant,
    ) {
        let started = self
            .book
            .upgrade_started
            .take()
            .unwrap_or_else(SystemTime::now);
        let status = UpgradeStatus {
            outcome,
            reason,
            started_at: Timestamp::from(started),
            finished_at: self.book.wall(now),
            generation,
            pid: std::process::id() as i32,
        };
        match outcome {
            UpgradeResult::Upgraded => self.book.counters.upgrades_ok += 1,
            UpgradeResult::Refused | UpgradeResult::RolledBack => {
                self.book.counters.upgrades_failed += 1
            }
        }
        self.book.last_upgrade = Some(status.clone());
        if let Some(s) = &mut self.socket {
            let waiting: Vec<u64> = s
                .clients
                .iter()
                .filter(|c| matches!(c.phase, ClientPhase::Waiting(Wait::Upgrade)))
                .map(|c| c.id)
                .collect();
            for id in waiting {
                s.respond(
                    id,
                    &Response::Upgrade {
                        upgrade: status.clone(),
                    },
                    now,
                );
            }
        }
    }

    /// Adds the fds to poll: the listener, then each client.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        if let Some(s) = &self.socket {
            let listen = if s.accept_paused_until.is_some() {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(s.listener.as_fd(), listen));
            for c in &s.clients {
                fds.push(PollFd::new(c.stream.as_fd(), c.phase.events()));
            }
        }
    }

    /// The earliest client deadline (none without clients: an idle master has no timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        let s = self.socket.as_ref()?;
        s.clients
            .iter()
            .filter_map(|c| c.phase.deadline())
            .chain(s.accept_paused_until)
            .min()
    }

    /// Counts what the pool reported.
    pub fn observe<W: WorkerContext>(&mut self, event: &PoolEvent<W>) {
        if let PoolEvent::Ended(e) = event {
            self.book.counters.exits.add(e.reason);
            if e.reason == ExitReason::Crashed {
                self.book.counters.restarts += 1;
            }
        }
    }

    /// A reload finished (or was rejected): remembered, counted, and told to the clients
    /// waiting for it. A rejected reload answers nobody but the client that asked for it (a
    /// reload already under way goes on).
    pub fn reload_finished<Id: std::fmt::Debug>(&mut self, r: &ReloadReport<Id>, now: Instant) {
        let status = self.reload_status(r, now);
        let c = &mut self.book.counters;
        match status.outcome {
            ReloadResult::Ok => c.reloads_ok += 1,
            ReloadResult::Incomplete => c.reloads_incomplete += 1,
            ReloadResult::Rejected => c.reloads_rejected += 1,
        }
        self.book.last_reload = Some(status.clone());
        if status.outcome == ReloadResult::Rejected {
            return;
        }
        if let Some(s) = &mut self.socket {
            let done: Vec<u64> = s
                .clients
                .iter()
                .filter(|c| matches!(c.phase, ClientPhase::Waiting(Wait::Reload(g)) if g <= r.generation))
                .map(|c| c.id)
                .collect();
            for id in done {
                s.respond(
                    id,
                    &Response::Reload {
                        reload: status.clone(),
                    },
                    now,
                );
            }
        }
    }

    fn reload_status<Id: std::fmt::Debug>(
        &self,
        r: &ReloadReport<Id>,
        now: Instant,
    ) -> ReloadStatus {
        let (outcome, failed) = match &r.outcome {
            ReloadOutcome::Complete => (ReloadResult::Ok, Vec::new()),
            ReloadOutcome::Incomplete { failed } => (
                ReloadResult::Incomplete,
                failed
                    .iter()
                    .map(|(id, why)| FailedId {
                        id: id_text(id),
                        reason: why.clone(),
                    })
                    .collect(),
            ),
            ReloadOutcome::Rejected => (ReloadResult::Rejected, Vec::new()),
        };
        ReloadStatus {
            generation: r.generation,
            started_at: self.book.wall(now.checked_sub(r.took).unwrap_or(now)),
            finished_at: self.book.wall(now),
            took_ms: r.took.as_millis() as u64,
            outcome,
            failed,
        }
    }

    /// The master is stopping: waiting clients are told so.
    pub fn stopping(&mut self, now: Instant) {
        if let Some(s) = &mut self.socket {
            let waiting: Vec<u64> = s
                .clients
                .iter()
                .filter(|c| matches!(c.phase, ClientPhase::Waiting(_)))
                .map(|c| c.id)
                .collect();
            for id in waiting {
                s.respond(id, &error("the master is stopping"), now);
            }
        }
    }

    /// The last chance to deliver responses before the master exits: one more write each.
    pub fn flush(&mut self) {
        if let Some(s) = &mut self.socket {
            for c in &mut s.clients {
                c.write_some();
            }
            s.clients.clear();
        }
    }
}

impl<C: 'static, W: WorkerContext> Master<C, W> {
    /// Serves the control socket after a wake-up: `revents` are the results of the fds
    /// [`Control::poll_fds`] added, in order.
    pub(super) fn serve_control(&mut self, revents: &[PollFlags]) {
        let now = Instant::now();
        let requests = match &mut self.control.socket {
            Some(s) => s.serve(revents, now),
            None => return,
        };
        for (client, cmd) in requests {
            tracing::debug!(client, ?cmd, "control request");
            let outcome = self.execute(cmd, client);
            let Some(s) = &mut self.control.socket else {
                return;
            };
            match outcome {
                Outcome::Reply(r) => s.respond(client, &r, Instant::now()),
                Outcome::Wait(w) => s.wait(client, w),
                Outcome::Answered => {}
            }
        }
    }

    /// After each turn of the loop: answers finished replacements, rewrites the status file.
    pub(super) fn control_after_turn(&mut self) {
        let now = Instant::now();
        let waits: Vec<(u64, String, Pid)> = match &self.control.socket {
            Some(s) => s
                .clients
                .iter()
                .filter_map(|c| match &c.phase {
                    ClientPhase::Waiting(Wait::Replace { id, old }) => {
                        Some((c.id, id.clone(), *old))
                    }
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        for (client, id, old) in waits {
            let progress = match self.find_id(&id) {
                Some(key) => self.pool.replace_progress(&key, old),
                None => ReplaceProgress::Failed(format!("id {id} left the desired set")),
            };
            let r = match progress {
                ReplaceProgress::Pending => continue,
                ReplaceProgress::Done(new) => Response::Replace {
                    replace: ReplaceResult {
                        id,
                        old_pid: old.as_raw(),
                        new_pid: new.as_raw(),
                    },
                },
                ReplaceProgress::Failed(why) => error(&format!("replace {id} failed: {why}")),
            };
            if let Some(s) = &mut self.control.socket {
                s.respond(client, &r, now);
            }
        }
        self.write_status_file();
    }

    fn write_status_file(&mut self) {
        let Some(path) = self.control.status_file.clone() else {
            return;
        };
        let status = self.status(false, false);
        let Ok(mut bytes) = serde_json::to_vec_pretty(&status) else {
            return;
        };
        bytes.push(b'\n');
        if bytes == self.control.written {
            return;
        }
        match write_atomically(&path, &bytes) {
            Ok(()) => self.control.written = bytes,
            Err(e) => {
                // Logged once per distinct failure, not on every turn.
                if !self.control.written.is_empty() {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the status file");
                }
                self.control.written = Vec::new();
            }
        }
    }

    fn execute(&mut self, cmd: Command, client: u64) -> Outcome {
        if let Command::Status { .. } | Command::Metrics = cmd {
            // A fresh look at the scoreboard (request counts, beats), as a health scan takes.
            self.observe(None, false);
        }
        match cmd {
            Command::Status { resources } => Outcome::Reply(Response::Status {
                status: Box::new(self.status(resources, true)),
            }),
            Command::Metrics => Outcome::Reply(Response::Metrics {
                text: self.status(false, true).to_prometheus(),
            }),
            Command::Upgrade => {
                tracing::info!(client, "upgrade requested on the control socket");
                match self.begin_upgrade() {
                    Ok(()) => Outcome::Wait(Wait::Upgrade),
                    Err(why) => {
                        tracing::warn!("upgrade refused: {why}");
                        Outcome::Reply(error(&format!("upgrade refused: {why}")))
                    }
                }
            }
            Command::Reload if self.upgrade_checking() => Outcome::Reply(error(
                "an upgrade of the master is being checked; reload once it has ended",
            )),
            Command::Reload => {
                tracing::info!(client, "reload requested on the control socket");
                match self.reload() {
                    ReloadStart::Started(g) => Outcome::Wait(Wait::Reload(g)),
                    ReloadStart::Finished(report) => Outcome::Reply(Response::Reload {
                        reload: self.control.reload_status(&report, Instant::now()),
                    }),
                    ReloadStart::Stopping => Outcome::Reply(error("the master is stopping")),
                }
            }
            Command::Scale { change } => match self.rescale(change) {
                Ok(scale) => Outcome::Reply(Response::Scale { scale }),
                Err(e) => Outcome::Reply(error(&e)),
            },
            Command::Replace { .. } if self.upgrade_checking() => Outcome::Reply(error(
                "an upgrade of the master is being checked; replace once it has ended",
            )),
            Command::Replace { id } => {
                let Some(key) = self.find_id(&id) else {
                    return Outcome::Reply(error(&format!("no worker has the id {id}")));
                };
                let r = self
                    .drive(|pool, ops| pool.replace(&key, Instant::now(), ops))
                    .unwrap_or_else(|| Err("there is no declared worker set".into()));
                match r {
                    Ok(old) => Outcome::Wait(Wait::Replace { id, old }),
                    Err(e) => Outcome::Reply(error(&e)),
                }
            }
            Command::Stop { fast } => {
                tracing::info!(client, fast, "stop requested on the control socket");
                self.cancel_upgrade_check();
                // Answer first: the master may be gone before the next turn.
                if let Some(s) = &mut self.control.socket {
                    s.respond(client, &Response::Stopping { fast }, Instant::now());
                }
                // Unlike a second SIGTERM, a second graceful `stop` does not escalate.
                if let Phase::Running = self.phase {
                    self.stop(Signal::SIGTERM);
                }
                if fast {
                    // No lame duck either: the stop proper at once, then SIGKILL.
                    if let Phase::LameDuck { sig, .. } = self.phase {
                        self.begin_stop(sig);
                    }
                    if let Phase::Stopping { deadline, .. } = self.phase {
                        self.kill_all(deadline);
                    }
                }
                Outcome::Answered
            }
        }
    }

    /// The desired id whose text is `text`.
    fn find_id(&self, text: &str) -> Option<W::Id> {
        self.pool
            .slot_views()
            .into_iter()
            .map(|v| v.id)
            .find(|id| id_text(id) == text)
    }

    /// Changes the runtime scale: the pool checks the bounds, `update` makes the set for the
    /// new scale, and the pool starts the new ids and retires the removed ones.
    pub(super) fn rescale(
        &mut self,
        change: ScaleChange,
    ) -> std::result::Result<ScaleResult, String> {
        if !matches!(self.phase, Phase::Running) {
            return Err("the master is stopping".into());
        }
        if self.fork.is_none() {
            return Err("scaling needs a declared worker set (relaunch_settings)".into());
        }
        let to = self.pool.plan_scale(change)?;
        let from = self.pool.scale().map_or(to, |s| s.current);
        let mut set = self.desired.clone();
        set.set_scale(Some(to));
        let Some(config) = call_update(&mut self.settings.update_config, &mut set) else {
            return Err(format!(
                "update returned no configuration for scale {to}; the scale stays {from}"
            ));
        };
        self.config = Some(config);
        self.desired = set.clone();
        let diff = self
            .drive(|pool, ops| pool.rescale(to, set.into_map(), Instant::now(), ops))
            .ok_or("there is no declared worker set")?;
        let text = |ids: Vec<W::Id>| ids.iter().map(id_text).collect::<Vec<_>>();
        let (started, removed) = (text(diff.started), text(diff.removed));
        tracing::info!(from, to, ?started, ?removed, "scaled");
        Ok(ScaleResult {
            from,
            to,
            started,
            removed,
        })
    }

    /// The status, built from the pool's views and the master's book. `resources`: read each
    /// worker's memory and CPU from `/proc`; `now`: say when it was taken.
    pub(super) fn status(&self, resources: bool, now: bool) -> Status {
        let book = &self.control.book;
        let wall = |t: Instant| book.wall(t);
        let views = self.pool.worker_views();
        let slots = self.pool.slot_views();
        let mut workers = Vec::with_capacity(views.len() + self.unmanaged.len());
        let mut ready = 0;
        let proc_of = |pid: Pid| resources.then(|| read_resources(pid)).flatten();
        let taken = Instant::now();
        // Not in the status file: an age changes on every turn, and the file is rewritten only
        // when something changed.
        let age_of = |w: &super::pool::WorkerView<W::Id>| {
            w.heartbeat_age(taken)
                .filter(|_| now)
                .map(|d| d.as_millis() as u64)
        };
        let exit_of = |e: &Option<(ChildExit, ExitReason, Instant)>| {
            e.map(|(how, reason, at)| {
                let (code, signal) = match how {
                    ChildExit::Exited(c) => (Some(c), None),
                    ChildExit::Signaled(s) => (None, Some(s.to_string())),
                };
                LastExit {
                    code,
                    signal,
                    at: wall(at),
                    reason,
                }
            })
        };
        // Views list each id's current and next workers in id order (as the slots are), then
        // the draining ones.
        let spare = self.pool.spare_view();
        let mut v = views.iter().peekable();
        for (index, slot) in slots.iter().enumerate() {
            let id = id_text(&slot.id);
            let mut any = false;
            let mut is_ready = false;
            while let Some(w) = v.next_if(|w| w.state != PoolState::Draining && w.id == slot.id) {
                any = true;
                is_ready |= w.state == PoolState::Ready;
                workers.push(WorkerStatus {
                    id: id.clone(),
                    pid: Some(w.pid.as_raw()),
                    generation: Some(w.generation),
                    state: match w.state {
                        PoolState::Starting => WorkerState::Starting,
                        PoolState::Ready => WorkerState::Ready,
                        PoolState::Draining => WorkerState::Draining,
                    },
                    started_at: Some(wall(w.started_at)),
                    ready_at: w.ready_at.map(wall),
                    restarts: slot.restarts,
                    failed_starts: slot.failed_starts,
                    last_exit: exit_of(&slot.last_exit),
                    requests: w.requests,
                    in_flight: w.in_flight,
                    heartbeat_age_ms: age_of(w),
                    max_requests: w.max_requests,
                    memory_kb: w.memory.map(|b| b / 1024),
                    resources: proc_of(w.pid),
                });
            }
            ready += usize::from(is_ready);
            if !any {
                let dormant = spare.is_some_and(|sp| index >= sp.active);
                workers.push(WorkerStatus {
                    id,
                    pid: None,
                    generation: None,
                    state: if dormant {
                        WorkerState::Dormant
                    } else {
                        WorkerState::Down
                    },
                    started_at: None,
                    ready_at: None,
                    restarts: slot.restarts,
                    failed_starts: slot.failed_starts,
                    last_exit: exit_of(&slot.last_exit),
                    requests: 0,
                    in_flight: 0,
                    heartbeat_age_ms: None,
                    max_requests: None,
                    memory_kb: None,
                    resources: None,
                });
            }
        }
        for w in v {
            let slot = slots.iter().find(|s| s.id == w.id);
            workers.push(WorkerStatus {
                id: id_text(&w.id),
                pid: Some(w.pid.as_raw()),
                generation: Some(w.generation),
                state: WorkerState::Draining,
                started_at: Some(wall(w.started_at)),
                ready_at: w.ready_at.map(wall),
                restarts: slot.map_or(0, |s| s.restarts),
                failed_starts: slot.map_or(0, |s| s.failed_starts),
                last_exit: slot.and_then(|s| exit_of(&s.last_exit)),
                requests: w.requests,
                in_flight: w.in_flight,
                heartbeat_age_ms: age_of(w),
                max_requests: w.max_requests,
                memory_kb: w.memory.map(|b| b / 1024),
                resources: proc_of(w.pid),
            });
        }
        // Workers a hook started: no id, no lifecycle the master tracks.
        for &pid in &self.unmanaged {
            workers.push(WorkerStatus {
                id: "-".into(),
                pid: Some(pid.as_raw()),
                generation: None,
                state: WorkerState::Ready,
                started_at: None,
                ready_at: None,
                restarts: 0,
                failed_starts: 0,
                last_exit: None,
                requests: 0,
                in_flight: 0,
                heartbeat_age_ms: None,
                max_requests: None,
                memory_kb: None,
                resources: proc_of(pid),
            });
        }
        let state = match (&self.phase, self.pool.settling_generation()) {
            (Phase::Stopping { .. } | Phase::LameDuck { .. }, _) => MasterState::Stopping,
            _ if self.upgrading() => MasterState::Upgrading,
            (_, Some(g)) if g > 0 => MasterState::Reloading,
            _ => MasterState::Running,
        };
        let mut counters = book.counters.clone();
        counters.spawns = self.pool.spawns();
        counters.failed_starts = self.pool.failed_starts();
        for (reason, n) in self.pool.replacements() {
            let r = &mut counters.replaced;
            *match reason {
                ReplaceReason::Hang => &mut r.hang,
                ReplaceReason::MaxRequests => &mut r.max_requests,
                ReplaceReason::MaxAge => &mut r.max_age,
                ReplaceReason::MaxMemory => &mut r.max_memory,
            } = n;
        }
        Status {
            master: MasterStatus {
                pid: std::process::id() as i32,
                started_at: Timestamp::from(book.started_wall),
                now: now.then(Timestamp::now),
                state,
                generation: self.pool.generation(),
                scale: self.pool.scale(),
                desired: spare.map_or(slots.len(), |sp| sp.active),
                adaptive: spare.map(|sp| AdaptiveStatus {
                    active: sp.active,
                    idle: sp.idle,
                    candidates: sp.candidates,
                    min_spare: sp.config.min_spare,
                    max_spare: sp.config.max_spare,
                    max_workers: sp.config.max_workers,
                }),
                ready,
                last_reload: book.last_reload.clone(),
                counters,
                last_upgrade: book.last_upgrade.clone(),
            },
            workers,
            listeners: listeners(),
        }
    }
}

/// The clients of a handed-over control socket whose numbers are open, owned.
fn open_clients(st: &ControlState) -> Vec<UnixStream> {
    st.clients
        .iter()
        .filter(|&&fd| crate::sys::set_cloexec_raw(fd).is_ok())
        // Checked open, and handed over for this image only: one owner.
        .map(|&fd| UnixStream::from(crate::sys::own_inherited(fd)))
        .collect()
}

/// An error response.
fn error(msg: &str) -> Response {
    Response::Error {
        error: msg.to_string(),
    }
}

/// An id as the status shows it: its `Debug` form, without the quotes of a string.
pub(super) fn id_text<Id: std::fmt::Debug>(id: &Id) -> String {
    let s = format!("{id:?}");
    match s.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.to_string(),
        None => s,
    }
}

/// The master's listening sockets, with the accept queue of the TCP ones.
fn listeners() -> Vec<ListenerStatus> {
    crate::fd::master_listener_fds()
        .iter()
        .filter_map(|fd| {
            let sock = socket2::SockRef::from(fd.as_ref());
            let addr = sock.local_addr().ok()?;
            let (kind, addr) = match addr.as_socket() {
                Some(a) => (crate::fd::ListenerKind::Tcp, a.to_string()),
                None => (
                    crate::fd::ListenerKind::Unix,
                    addr.as_pathname()
                        .map_or_else(|| "(unnamed)".into(), |p| p.display().to_string()),
                ),
            };
            let q = crate::sys::tcp_listen_queue(fd.as_fd());
            Some(ListenerStatus {
                addr,
                kind,
                accept_queue: q.map(|q| q.0),
                backlog: q.map(|q| q.1),
            })
        })
        .collect()
}

/// A worker's memory (`smaps_rollup`) and CPU (`stat`), if it can be read.
fn read_resources(pid: Pid) -> Option<Resources> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Resources {
        rss_kb: field("Rss:")?,
        pss_kb: field("Pss:")?,
        // /proc counts in USER_HZ, 100 per second on every Linux ABI.
        cpu_ms: ticks * 10,
    })
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let r = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

// -------------------------------------------------------------------------------------------
// The socket and its clients

#[derive(Debug)]
struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's identity, to remove it at exit only if it is still ours.
    ident: Option<(u64, u64)>,
    uid: u32,
    clients: Vec<Client>,
    next_id: u64,
    /// After an accept error (`EMFILE`…), the listener is not polled until then: its pending
    /// connection would make every `poll` return at once.
    accept_paused_until: Option<Instant>,
}

#[derive(Debug)]
struct Client {
    id: u64,
    stream: UnixStream,
    phase: ClientPhase,
    /// Served: to be closed.
    done: bool,
}

#[derive(Debug)]
enum ClientPhase {
    Reading {
        buf: Vec<u8>,
        deadline: Instant,
    },
    Waiting(Wait),
    Writing {
        out: Vec<u8>,
        pos: usize,
        deadline: Instant,
    },
}

impl ClientPhase {
    fn events(&self) -> PollFlags {
        match self {
            ClientPhase::Reading { .. } => PollFlags::POLLIN,
            // Hang-up and errors are reported whatever is asked for.
            ClientPhase::Waiting(_) => PollFlags::empty(),
            ClientPhase::Writing { .. } => PollFlags::POLLOUT,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            ClientPhase::Reading { deadline, .. } | ClientPhase::Writing { deadline, .. } => {
                Some(*deadline)
            }
            ClientPhase::Waiting(_) => None,
        }
    }
}

impl ControlSocket {
    /// The socket an old master handed over (made non-blocking already), with the clients
    /// waiting for the upgrade.
    fn adopt(listener: UnixListener, st: &ControlState, clients: Vec<UnixStream>) -> ControlSocket {
        let mut s = ControlSocket {
            listener,
            path: st.path.clone(),
            ident: st.ident,
            uid: crate::sys::effective_uid(),
            clients: Vec::new(),
            next_id: 0,
            accept_paused_until: None,
        };
        for stream in clients {
            s.next_id += 1;
            s.clients.push(Client {
                id: s.next_id,
                stream,
                phase: ClientPhase::Waiting(Wait::Upgrade),
                done: false,
            });
        }
        tracing::info!(path = %st.path.display(), waiting = s.clients.len(),
            "kept the old master's control socket");
        s
    }

    fn bind(path: &Path) -> Result<ControlSocket> {
        let listen_err = |source| Error::Listen {
            addr: path.display().to_string(),
            source,
        };
        crate::fd::remove_stale_socket(path).map_err(listen_err)?;
        // What is left is a live socket (another master) or not a socket: never replaced.
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(listen_err(std::io::Error::new(
                ErrorKind::AddrInUse,
                "something is there already (another master's live socket, or a file)",
            )));
        }
        // Bound under a temporary name, made owner-only, then renamed into place: the path is
        // never reachable with the umask's permissions.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(listen_err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(listen_err(e));
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::sys("cannot make the control socket non-blocking", e))?;
        let ident = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            ident,
            uid: crate::sys::effective_uid(),
            clients: Vec::new(),
            next_id: 0,
            accept_paused_until: None,
        })
    }

    /// Handles what the poll reported, accepts new clients, expires late ones; returns the
    /// requests read.
    fn serve(&mut self, revents: &[PollFlags], now: Instant) -> Vec<(u64, Command)> {
        let mut requests = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            let ev = revents.get(i + 1).copied().unwrap_or(PollFlags::empty());
            if ev.is_empty() {
                continue;
            }
            match &c.phase {
                ClientPhase::Reading { .. } => {
                    if let Some(cmd) = c.read_request(now) {
                        requests.push((c.id, cmd));
                    }
                }
                ClientPhase::Waiting(_) => {
                    if ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                        tracing::debug!(client = c.id, "a waiting control client went away");
                        c.done = true;
                    }
                }
                ClientPhase::Writing { .. } => c.write_some(),
            }
        }
        let resumed = self.accept_paused_until.is_some_and(|t| t <= now);
        if resumed {
            self.accept_paused_until = None;
        }
        if resumed
            || revents
                .first()
                .is_some_and(|e| e.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
        {
            self.accept_all(now, &mut requests);
        }
        for c in &mut self.clients {
            match &c.phase {
                ClientPhase::Reading { deadline, .. } if *deadline <= now => {
                    tracing::debug!(client = c.id, "control client sent no request in time");
                    c.reply(&error("timed out waiting for the request"), now);
                }
                ClientPhase::Writing { deadline, .. } if *deadline <= now => {
                    tracing::debug!(
                        client = c.id,
                        "control client did not read its response in time"
                    );
                    c.done = true;
                }
                _ => {}
            }
        }
        self.clients.retain(|c| !c.done);
        requests
    }

    fn accept_all(&mut self, now: Instant, requests: &mut Vec<(u64, Command)>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and the like: the connection stays queued, and the listener is
                    // left out of the poll for a second (or `poll` would return at once, again
                    // and again).
                    tracing::warn!(error = %e, "cannot accept on the control socket; retrying in 1 s");
                    self.accept_paused_until = Some(now + Duration::from_secs(1));
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_id += 1;
            let mut c = Client {
                id: self.next_id,
                stream,
                phase: ClientPhase::Reading {
                    buf: Vec::new(),
                    deadline: now + IO_TIMEOUT,
                },
                done: false,
            };
            match nix::sys::socket::getsockopt(
                &c.stream,
                nix::sys::socket::sockopt::PeerCredentials,
            ) {
                Ok(cred) if cred.uid() == self.uid || cred.uid() == 0 => {}
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        pid = cred.pid(),
                        "control socket: refused a client of another user"
                    );
                    c.reply(
                        &error(&format!(
                            "permission denied: uid {} is neither the master's ({}) nor root",
                            cred.uid(),
                            self.uid
                        )),
                        now,
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: cannot read a client's credentials");
                    c.done = true;
                }
            }
            if !c.done && matches!(c.phase, ClientPhase::Reading { .. }) {
                if self.clients.len() >= MAX_CLIENTS {
                    c.reply(&error("busy: too many control clients at once"), now);
                } else if let Some(cmd) = c.read_request(now) {
                    requests.push((c.id, cmd));
                }
            }
            if !c.done {
                self.clients.push(c);
            }
        }
    }

    fn respond(&mut self, client: u64, r: &Response, now: Instant) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == client) {
            c.reply(r, now);
        }
        self.clients.retain(|c| !c.done);
    }

    fn wait(&mut self, client: u64, w: Wait) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == client)
            && let ClientPhase::Reading { .. } = c.phase
        {
            c.phase = ClientPhase::Waiting(w);
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| Some((m.dev(), m.ino())) == self.ident)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Client {
    /// Reads what is there; returns the request once its line is complete. A request that is
    /// too long or malformed, or a client that closed without one, is answered or closed here.
    fn read_request(&mut self, now: Instant) -> Option<Command> {
        let ClientPhase::Reading { buf, .. } = &mut self.phase else {
            return None;
        };
        let mut chunk = [0u8; 8192];
        let line_end = loop {
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                break i;
            }
            if buf.len() > MAX_REQUEST {
                self.reply(&error("request larger than 64 KiB"), now);
                return None;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // Closed: a last line without its newline still counts.
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        self.done = true;
                        return None;
                    }
                    break buf.len();
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.done = true;
                    return None;
                }
            }
        };
        match serde_json::from_slice::<Command>(&buf[..line_end]) {
            Ok(cmd) => Some(cmd),
            Err(e) => {
                let msg = format!("bad request: {e}");
                self.reply(&error(&msg), now);
                None
            }
        }
    }

    /// Queues the response and writes what the socket takes now.
    fn reply(&mut self, r: &Response, now: Instant) {
        let mut out = serde_json::to_vec(r).unwrap_or_else(|_| {
            br#"{"result":"error","error":"cannot encode the response"}"#.to_vec()
        });
        out.push(b'\n');
        self.phase = ClientPhase::Writing {
            out,
            pos: 0,
            deadline: now + IO_TIMEOUT,
        };
        self.write_some();
    }

    fn write_some(&mut self) {
        let ClientPhase::Writing { out, pos, .. } = &mut self.phase else {
            return;
        };
        while *pos < out.len() {
            match nix::sys::socket::send(
                self.stream.as_raw_fd(),
                &out[*pos..],
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => *pos += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => break,
            }
        }
        self.done = true;
    }
}
