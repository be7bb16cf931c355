//! The master: one thread, one loop, no busy polling.
//!
//! # The loop
//!
//! Signal handlers (signal-hook) do two async-signal-safe things: set a flag per signal, then
//! write a byte into a self-pipe. The loop `poll`s the pipe and the readiness socket, with a
//! timeout that is the state machine's next deadline (none: it sleeps until something happens,
//! so an idle master costs no CPU). After a wake-up it drains the pipe *first*, then reads the
//! flags, so a signal that lands while it works is never lost: it leaves a byte for the next
//! `poll`.
//!
//! Then, in this order: readiness messages, reap, TERM/INT, QUIT, HUP, timers.
//!
//! # Reaping
//!
//! `SIGCHLD`s coalesce, so one flag may stand for many children: the master calls
//! `waitpid(-1, WNOHANG)` until nothing is left, and reaps every child, its workers and any
//! other (a master running as PID 1 or as a subreaper inherits orphans). It therefore holds no
//! `std::process::Child` handles (whose `wait` would see `ECHILD`). The handlers are installed
//! before the first spawn, and one reap pass runs at start, so a child that exits before the
//! first `SIGCHLD` could be delivered is still reaped. A pid is signalled only while it is
//! known to be unreaped, so a recycled pid is never hit.
//!
//! # Shutdown
//!
//! `SIGTERM` (or `SIGINT`) stops all spawning, calls `on_terminate` (`on_interrupt`) with every
//! live pid, and waits up to `shutdown_timeout`; what is left then gets `SIGKILL`. A second
//! `SIGTERM`/`SIGINT` sends `SIGKILL` at once. When the last child is reaped, `on_finish` runs
//! and the master returns.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::context::{WorkerContext, WorkerSet};
use crate::error::{Error, Result};
use crate::pool::{ChildExit, Pool, Processes};
use crate::settings::{ForkFn, Settings, UpdateFn};
use crate::spawn::{SpawnEnv, set_spawn_env, with_spawn_env};

const HANDLED: [i32; 5] = [
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGCHLD,
];

/// Flags set by the signal handlers, and the pipe that wakes the loop.
struct SignalInbox {
    flags: [Arc<AtomicBool>; 5],
    wake_r: OwnedFd,
    /// Written by the handlers. Fields drop after `Drop::drop`, so it is closed only once the
    /// actions that write it are unregistered.
    _wake_w: OwnedFd,
    ids: Vec<signal_hook::SigId>,
}

impl SignalInbox {
    fn install() -> Result<Self> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| Error::Signal(e.into()))?;
        let mut inbox = SignalInbox {
            flags: Default::default(),
            wake_r: r,
            _wake_w: w,
            ids: Vec::new(),
        };
        let wfd = inbox._wake_w.as_raw_fd();
        for (sig, flag) in HANDLED.iter().zip(inbox.flags.iter()) {
            let flag = Arc::clone(flag);
            let action = move || {
                // The flag first, then the byte, in one action: when the loop wakes up for the
                // byte, the flag is already set.
                flag.store(true, Ordering::SeqCst);
                // SAFETY: write(2) is async-signal-safe; `wfd` stays open while this action is
                // registered (Drop unregisters before closing it). A full pipe (EAGAIN) is fine:
                // the loop has a wake-up pending anyway. signal-hook preserves errno.
                unsafe { nix::libc::write(wfd, [1u8].as_ptr().cast(), 1) };
            };
            // SAFETY: the action only stores to an atomic and calls write(2): both are
            // async-signal-safe, and it neither allocates nor locks nor panics.
            // On an error, `inbox` drops and unregisters what was registered so far.
            let id =
                unsafe { signal_hook::low_level::register(*sig, action) }.map_err(Error::Signal)?;
            inbox.ids.push(id);
        }
        Ok(inbox)
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(&self.wake_r, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    fn take(&self, sig: i32) -> bool {
        HANDLED
            .iter()
            .position(|s| *s == sig)
            .is_some_and(|i| self.flags[i].swap(false, Ordering::AcqRel))
    }
}

impl Drop for SignalInbox {
    fn drop(&mut self) {
        // The handlers stay installed (signal-hook cannot restore the default), but our actions
        // must stop writing into the pipe before it is closed (when `_wake_w` drops, after this).
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// What the state machine acts through: the user's `fork` callback (with the spawn environment
/// set), `kill`, and the readiness socket, drained after every spawn.
struct Ops<'a, W> {
    fork: &'a mut dyn FnMut(&W) -> Result<Pid>,
    notify: &'a OwnedFd,
    /// Readiness messages read while spawning, for the caller to hand to the pool.
    ready: Vec<Pid>,
}

impl<W> Processes<W> for Ops<'_, W> {
    fn spawn(&mut self, ctx: &W, generation: u64) -> Result<Pid> {
        with_spawn_env(|e| e.generation = generation);
        let r = (self.fork)(ctx);
        // A long batch of spawns (a start or a reload of many workers) must not let the
        // readiness socket fill up: its senders would block in `worker::ready()`.
        recv_ready(self.notify, &mut self.ready);
        r
    }

    fn signal(&mut self, pid: Pid, sig: Signal) {
        if let Err(e) = nix::sys::signal::kill(pid, sig) {
            tracing::debug!(%pid, signal = sig.as_str(), error = %e, "kill failed");
        }
    }
}

enum Phase {
    Running,
    Stopping { deadline: Instant, killed: bool },
}

struct Master<C, W: WorkerContext> {
    s: Settings<C, W>,
    fork: Option<ForkFn<W>>,
    config: Option<C>,
    desired: WorkerSet<W>,
    pool: Pool<W>,
    /// Children started by hooks (update_server, on_child_finished), not by the pool.
    unmanaged: BTreeSet<Pid>,
    generation: u64,
    phase: Phase,
    inbox: SignalInbox,
    notify: OwnedFd,
}

/// Runs the master until it is told to stop. `default_main` calls this in the master process;
/// call it yourself only to wrap it.
pub fn run_master<C: 'static, W: WorkerContext>(mut settings: Settings<C, W>) -> Result<()> {
    let _ = crate::spawn::launch();
    // SAFETY: setting SIGPIPE to SIG_IGN is what the Rust runtime already did at start; it
    // installs no handler code.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn);
    }
    let inbox = SignalInbox::install()?;
    let (notify, notify_child) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("cannot create the readiness socket", e))?;
    set_spawn_env(SpawnEnv {
        notify: Some(Arc::new(notify_child)),
        readiness: settings.readiness,
        generation: 0,
    });
    let fork = settings.fork.take();
    let pool = Pool::new(settings.pool_config());
    let mut m = Master {
        s: settings,
        fork,
        config: None,
        desired: WorkerSet::new(),
        pool,
        unmanaged: BTreeSet::new(),
        generation: 0,
        phase: Phase::Running,
        inbox,
        notify,
    };
    m.reap_all();
    let r = m.start().and_then(|()| m.run());
    set_spawn_env(SpawnEnv::default());
    r
}

impl<C: 'static, W: WorkerContext> Master<C, W> {
    fn start(&mut self) -> Result<()> {
        let mut set = WorkerSet::new();
        let config = call_update(&mut self.s.update_config, &mut set);
        if self.fork.is_some() && config.is_none() {
            return Err(Error::NoInitialConfig);
        }
        self.config = config;
        (self.s.on_start)(self.config.as_ref());
        if self.fork.is_some() {
            self.desired = set.clone();
            let errors = self
                .drive(|pool, ops| pool.reload(set.into_map(), Instant::now(), ops))
                .unwrap_or_default();
            if let Some((_, e)) = errors.into_iter().next() {
                self.abort_start();
                return Err(e);
            }
        }
        if let Some(c) = &self.config {
            let extra = (self.s.update_server)(c);
            self.adopt(extra);
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
        self.pool.begin_shutdown();
        let pids = self.live();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        for pid in pids {
            while let Err(Errno::EINTR) = nix::sys::wait::waitpid(pid, None) {}
        }
    }

    /// Takes pids that a hook says it started. Only unreaped children of this process are
    /// kept: signalling or waiting for anything else could hit a recycled pid, or wait forever.
    fn adopt(&mut self, pids: Vec<Pid>) {
        use nix::sys::wait::{Id, waitid};
        for pid in pids {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(pid), flags) {
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
            let deadline = self.next_deadline();
            let timeout = match deadline {
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
            let mut fds = [
                PollFd::new(self.inbox.wake_r.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.notify.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::sys("poll", e)),
            }
            self.inbox.drain();
            self.step();
        }
        self.reap_all();
        (self.s.on_finish)(self.config.as_ref());
        tracing::info!(pid = std::process::id(), "master finished");
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d = self.pool.next_deadline();
        if let Phase::Stopping {
            deadline,
            killed: false,
        } = self.phase
        {
            d = Some(d.map_or(deadline, |x| x.min(deadline)));
        }
        d
    }

    /// One turn of the loop, after a wake-up.
    fn step(&mut self) {
        use signal_hook::consts::*;
        // Readiness before reaping: a worker that said "ready" and then died queued its datagram
        // before its SIGCHLD, and must count as having served (respawn at once), not as a
        // failed start (backoff).
        self.read_ready();
        if self.inbox.take(SIGCHLD) {
            self.reap_all();
        }
        if self.inbox.take(SIGTERM) {
            self.stop(Signal::SIGTERM);
        }
        if self.inbox.take(SIGINT) {
            self.stop(Signal::SIGINT);
        }
        if self.inbox.take(SIGQUIT) {
            tracing::info!("SIGQUIT: calling on_quit");
            if let Some(c) = &self.config {
                (self.s.on_quit)(c);
            }
        }
        if self.inbox.take(SIGHUP) {
            self.reload();
        }
        let now = Instant::now();
        self.drive(|pool, ops| pool.tick(now, ops));
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
                Ok(WaitStatus::Exited(pid, code)) => (pid, ChildExit::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ChildExit::Signaled(sig)),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => break,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    break;
                }
            };
            reaped += 1;
            tracing::debug!(%pid, status = %how, "child reaped");
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
            if let Some(c) = &self.config {
                (self.s.cleanup_child)(c, pid);
            }
        }
        if reaped > 0
            && let (Some(c), Phase::Running) = (&self.config, &self.phase)
        {
            let extra = (self.s.on_child_finished)(c);
            self.adopt(extra);
        }
    }

    /// Runs `f` on the pool with the process operations, then hands the pool every readiness
    /// message read meanwhile (which may start more workers, and read more messages). `None`
    /// without relaunch settings.
    fn drive<R>(&mut self, f: impl FnOnce(&mut Pool<W>, &mut Ops<'_, W>) -> R) -> Option<R> {
        let fork = self.fork.as_mut()?;
        let mut ops = Ops {
            fork: &mut **fork,
            notify: &self.notify,
            ready: Vec::new(),
        };
        let r = f(&mut self.pool, &mut ops);
        while !ops.ready.is_empty() {
            for pid in std::mem::take(&mut ops.ready) {
                self.pool.ready(pid, Instant::now(), &mut ops);
            }
        }
        Some(r)
    }

    fn read_ready(&mut self) {
        let mut msgs = Vec::new();
        recv_ready(&self.notify, &mut msgs);
        if msgs.is_empty() {
            return;
        }
        self.drive(|pool, ops| {
            for pid in msgs {
                pool.ready(pid, Instant::now(), ops);
            }
        });
    }

    /// Shutdown's last resort: `SIGKILL` to every live child, once.
    fn kill_all(&mut self, deadline: Instant) {
        for pid in self.live() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        self.phase = Phase::Stopping {
            deadline,
            killed: true,
        };
    }

    fn stop(&mut self, sig: Signal) {
        let live = self.live();
        match self.phase {
            Phase::Stopping { deadline, .. } => {
                tracing::warn!(
                    signal = sig.as_str(),
                    remaining = live.len(),
                    "second stop signal; sending SIGKILL"
                );
                self.kill_all(deadline);
            }
            Phase::Running => {
                tracing::info!(signal = sig.as_str(), workers = live.len(), "stopping");
                self.pool.begin_shutdown();
                self.phase = Phase::Stopping {
                    deadline: crate::pool::later(Instant::now(), self.s.shutdown_timeout),
                    killed: false,
                };
                match (&self.config, sig) {
                    (Some(c), Signal::SIGINT) => (self.s.on_interrupt)(c, &live),
                    (Some(c), _) => (self.s.on_terminate)(c, &live),
                    (None, sig) => {
                        for pid in live {
                            let _ = nix::sys::signal::kill(pid, sig);
                        }
                    }
                }
            }
        }
    }

    fn reload(&mut self) {
        if let Phase::Stopping { .. } = self.phase {
            tracing::info!("SIGHUP during shutdown: ignored");
            return;
        }
        let mut set = self.desired.clone();
        let Some(config) = call_update(&mut self.s.update_config, &mut set) else {
            tracing::warn!(
                workers = self.live().len(),
                "SIGHUP: update returned no configuration; keeping the running workers"
            );
            return;
        };
        self.config = Some(config);
        self.generation += 1;
        with_spawn_env(|e| e.generation = self.generation);
        if self.fork.is_some() {
            tracing::info!(
                generation = self.generation,
                desired = set.len(),
                "SIGHUP: reconciling the declared workers"
            );
            self.desired = set.clone();
            self.drive(|pool, ops| pool.reload(set.into_map(), Instant::now(), ops));
        } else {
            tracing::info!(
                generation = self.generation,
                "SIGHUP: calling update_server"
            );
        }
        if let Some(c) = &self.config {
            let extra = (self.s.update_server)(c);
            self.adopt(extra);
        }
    }
}

/// Reads every queued readiness message (non-blocking) into `out`.
fn recv_ready(notify: &OwnedFd, out: &mut Vec<Pid>) {
    let mut buf = [0u8; 64];
    loop {
        match nix::sys::socket::recv(notify.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => match crate::protocol::parse_ready(&buf[..n]) {
                Some(pid) => out.push(Pid::from_raw(pid)),
                None => tracing::debug!("ignoring a malformed readiness message"),
            },
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
}

/// Calls the user's update callback; a panic in it is caught and treated as `None`, so a bad
/// configuration never takes the master (and with it, every worker) down.
fn call_update<C, W: WorkerContext>(f: &mut UpdateFn<C, W>, set: &mut WorkerSet<W>) -> Option<C> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(set))) {
        Ok(c) => c,
        Err(_) => {
            tracing::error!("the update callback panicked; treating it as no configuration");
            None
        }
    }
}
