//! The master's upgrade in place: the hand-over document, the check mode, and the execs.
//!
//! # How an upgrade goes
//!
//! `SIGUSR2` (or `prefork-ctl upgrade`) asks the master to replace its own code with the
//! binary now at its program path, keeping its pid, its workers and its sockets:
//!
//! 1. **Check.** The master writes its state (this module's [`State`]) into a sealed memfd and
//!    runs the binary at its path as a child, with `PREFORK_UPGRADE_CHECK=1` and that memfd
//!    as standard input. In that child, [`default_main`](crate::default_main) decodes the
//!    state (every worker's context with the new code's type), prints one acknowledgement
//!    line and exits 0, before anything else of the master starts. A binary that does not
//!    start, cannot decode the state, or takes longer than the check timeout is refused: the
//!    master logs why and keeps its old code. The check never blocks the master's loop (the
//!    child is reaped like any other).
//! 2. **Hand over.** The master writes its state again (it may have changed during the check),
//!    clears close-on-exec on exactly the fds the new image needs (the listening sockets and
//!    reuseport groups, the readiness socket, the scoreboard, the control socket and the client waiting for the
//!    upgrade, the sockets the service manager passed, the state itself, and an fd of its own
//!    old executable for a rollback), blocks every signal (the mask and the pending set survive
//!    `execve`, so a `SIGHUP` or `SIGTERM` sent now is handled by the new image, never lost and
//!    never fatal), and execs the new binary in place, from the thread that started the
//!    workers (their `PR_SET_PDEATHSIG` is tied to it, and an exec keeps the process).
//! 3. **Adopt.** The new image finds `PREFORK_UPGRADE_STATE` in its environment, rebuilds the
//!    pool from the state (its workers are still its children), installs its handlers, unblocks
//!    the signals, reaps whatever died during the exec (a dead id is respawned at once), and
//!    then replaces every worker, readiness-gated, as on `SIGHUP`.
//! 4. **Roll back.** If the new image cannot adopt the state (a version it does not read, a
//!    context it cannot decode, no configuration from `update`), it execs the old image again
//!    from the fd it was handed, with the same state and the reason; the old image adopts its
//!    workers back, does not replace them, and reports the upgrade as failed.
//!
//! # The document
//!
//! JSON with a version number ([`STATE_VERSION`]). A master reads a document of its own
//! version or an older one: fields added by later versions have defaults, so an older document
//! decodes; a newer one is refused by the check (and so never reaches the exec).

use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version of the hand-over document this build writes, and the newest it reads.
pub(crate) const STATE_VERSION: u32 = 1;
/// Set in the new image: `<state fd>:<old executable fd>`.
pub(crate) const STATE_ENV: &str = "PREFORK_UPGRADE_STATE";
/// Set by a rollback exec: why the new image gave up.
pub(crate) const ROLLBACK_ENV: &str = "PREFORK_UPGRADE_ROLLBACK";
/// Set in the check child.
pub(crate) const CHECK_ENV: &str = "PREFORK_UPGRADE_CHECK";
/// The check child's acknowledgement, the start of its one line on standard output.
pub(crate) const CHECK_ACK: &str = "prefork-upgrade-check ok";
/// Test hook: the adopting image fails as if it could not decode the state when its own
/// executable is exactly this path (the new binary, not the old one kept for a rollback).
const FAIL_ADOPT_ENV: &str = "PREFORK_TEST_UPGRADE_FAIL_ADOPT";
/// The most a state document may be (a thousand workers with large contexts fit easily).
const MAX_STATE: u64 = 64 << 20;

/// Everything the new image needs. Times are relative to the moment it was written
/// (`*_ms_ago`, `*_in_ms`), so they mean the same in the new image.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    /// The crate version that wrote it, for the logs.
    #[serde(default)]
    pub written_by: String,
    /// Upgrades this master made before this one.
    #[serde(default)]
    pub upgrades: u64,
    pub pool: PoolState,
    /// Children started by hooks, not by the pool.
    #[serde(default)]
    pub unmanaged: Vec<i32>,
    /// The listening sockets the master made or adopted.
    #[serde(default)]
    pub listeners: Vec<ListenerFd>,
    /// The readiness socket: the master's end, the workers' end.
    pub readiness: [RawFd; 2],
    #[serde(default)]
    pub board: Option<BoardState>,
    #[serde(default)]
    pub control: Option<ControlState>,
    #[serde(default)]
    pub book: BookState,
    /// Reuseport groups, their sockets in the kernel's order.
    #[serde(default)]
    pub groups: Vec<GroupHandover>,
}

/// A reuseport group (see [`crate::reuseport`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GroupHandover {
    /// `ip:port`.
    pub addr: String,
    pub steer: bool,
    pub next_key: u64,
    /// In the kernel's order.
    pub members: Vec<MemberHandover>,
}

/// One socket of a reuseport group.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MemberHandover {
    pub fd: RawFd,
    pub key: u64,
    #[serde(default)]
    pub slot: Option<u64>,
    #[serde(default)]
    pub leaving: bool,
    /// Unreaped workers that inherited it.
    #[serde(default)]
    pub holders: Vec<i32>,
}

/// The pool, as [`Pool::export`](crate::master) writes it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct PoolState {
    pub generation: u64,
    #[serde(default)]
    pub spawns: u64,
    #[serde(default)]
    pub failed_starts: u64,
    /// Replacements by health rule, in `ReplaceReason::ALL` order.
    #[serde(default)]
    pub replaced: [u64; 4],
    /// The runtime scale, when scaling is on.
    #[serde(default)]
    pub scale: Option<u32>,
    /// The adaptive pool's active count.
    #[serde(default)]
    pub active: Option<usize>,
    pub slots: Vec<SlotState>,
    #[serde(default)]
    pub retiring: Vec<RetiringState>,
}

/// One id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SlotState {
    /// The desired context, encoded by `WorkerContext::encode`, in hex.
    pub ctx: String,
    #[serde(default)]
    pub current: Option<ProcState>,
    #[serde(default)]
    pub next: Option<ProcState>,
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub failed_starts: u64,
    #[serde(default)]
    pub start_backoff: BackoffState,
    #[serde(default)]
    pub replace_backoff: BackoffState,
    #[serde(default)]
    pub last_failure: Option<String>,
}

/// One worker process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ProcState {
    pub pid: i32,
    /// The context it runs, encoded, in hex.
    pub ctx: String,
    pub generation: u64,
    pub spawned_ms_ago: u64,
    #[serde(default)]
    pub ready_ms_ago: Option<u64>,
    #[serde(default)]
    pub ready_deadline_in_ms: u64,
    #[serde(default)]
    pub killed: bool,
    #[serde(default)]
    pub max_requests: Option<u64>,
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
}

/// A worker asked to stop.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RetiringState {
    pub proc: ProcState,
    pub why: crate::report::ExitReason,
    pub kill_in_ms: u64,
    #[serde(default)]
    pub killed: bool,
}

/// Failed starts in a row, and when the next attempt is due.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct BackoffState {
    pub failures: u32,
    #[serde(default)]
    pub retry_in_ms: Option<u64>,
}

/// A listening socket kept open across the exec.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ListenerFd {
    pub fd: RawFd,
    pub kind: crate::fd::ListenerKind,
    /// `ip:port` of a TCP socket.
    #[serde(default)]
    pub addr: Option<String>,
    /// The file of a Unix socket (and its device and inode, to remove it at exit only if it
    /// is still that socket).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    #[serde(default)]
    pub path_ident: Option<(u64, u64)>,
    /// Passed by the service manager: the new image finds it through `LISTEN_FDS` again.
    #[serde(default)]
    pub from_systemd: bool,
}

/// The scoreboard: its memfd and which slot each worker holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BoardState {
    pub fd: RawFd,
    /// (pid, slot).
    pub slots: Vec<(i32, u32)>,
}

/// The control socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ControlState {
    pub fd: RawFd,
    pub path: std::path::PathBuf,
    #[serde(default)]
    pub ident: Option<(u64, u64)>,
    /// The clients waiting for this upgrade's answer.
    #[serde(default)]
    pub clients: Vec<RawFd>,
}

/// What the status counts.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct BookState {
    /// When the master started, in seconds since the epoch (wall clock).
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
    /// Its uptime when the state was written.
    #[serde(default)]
    pub uptime_ms: u64,
    #[serde(default)]
    pub counters: serde_json::Value,
    #[serde(default)]
    pub last_reload: serde_json::Value,
    #[serde(default)]
    pub last_upgrade: serde_json::Value,
    /// When the upgrade under way started (wall clock, ms since the epoch).
    #[serde(default)]
    pub upgrade_started_unix_ms: Option<u64>,
}

impl State {
    /// The JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Encode(format!("upgrade state: {e}")))
    }

    /// Decodes a document, refusing a version newer than this build reads.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<State, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| format!("the upgrade state is not a state document: {e}"))?;
        if v.version > STATE_VERSION {
            return Err(format!(
                "the upgrade state has version {}, newer than this build reads ({STATE_VERSION})",
                v.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("cannot decode the upgrade state: {e}"))
    }

    /// Every context of the document, encoded, for a decode check.
    pub fn contexts(&self) -> impl Iterator<Item = &str> {
        let slots = self.pool.slots.iter().flat_map(|s| {
            std::iter::once(s.ctx.as_str()).chain(
                [&s.current, &s.next]
                    .into_iter()
                    .flatten()
                    .map(|p| p.ctx.as_str()),
            )
        });
        slots.chain(self.pool.retiring.iter().map(|r| r.proc.ctx.as_str()))
    }

    /// Every fd number the document names (each must cross the exec).
    pub fn fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self.listeners.iter().map(|l| l.fd).collect();
        v.extend(self.readiness);
        v.extend(self.board.as_ref().map(|b| b.fd));
        if let Some(c) = &self.control {
            v.push(c.fd);
            v.extend(&c.clients);
        }
        v.extend(
            self.groups
                .iter()
                .flat_map(|g| g.members.iter().map(|m| m.fd)),
        );
        v
    }
}

/// Bytes as lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What [`to_hex`] wrote.
pub(crate) fn from_hex(s: &str) -> std::result::Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("not hex at {i}"))
        })
        .collect()
}

/// Decodes an encoded context with the running build's type.
pub(crate) fn decode_context<W: crate::WorkerContext>(hex: &str) -> std::result::Result<W, String> {
    let bytes = from_hex(hex).map_err(|e| format!("a context in the upgrade state: {e}"))?;
    W::decode(&bytes).map_err(|e| format!("cannot decode a worker context of the old master: {e}"))
}

/// Reads a whole (small) file from an fd, at most [`MAX_STATE`] bytes.
fn read_all(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u8>> {
    let dup = fd.try_clone_to_owned()?;
    let mut file = std::fs::File::from(dup);
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    file.take(MAX_STATE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_STATE {
        return Err(std::io::Error::other("the upgrade state is too large"));
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// The check child.

/// In the check child (`PREFORK_UPGRADE_CHECK` set): checks this build's settings
/// (`settings_ok`: what the master would refuse at start), decodes the state on standard input
/// with this build's context type, prints the acknowledgement and exits 0; exits 2 with one line
/// on standard error if it cannot. Returns only when this is not a check.
pub(crate) fn check_if_asked<W: crate::WorkerContext>(
    settings_ok: impl FnOnce() -> std::result::Result<(), String>,
) {
    if std::env::var_os(CHECK_ENV).is_none() {
        return;
    }
    use std::io::Write;
    let mut input = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_STATE + 1)
        .read_to_end(&mut input);
    let verdict = match read {
        Err(e) => Err(format!("cannot read the check request: {e}")),
        Ok(_) => settings_ok()
            .and_then(|()| State::from_bytes(&input))
            .and_then(|state| {
                for ctx in state.contexts() {
                    decode_context::<W>(ctx)?;
                }
                Ok(state)
            }),
    };
    match verdict {
        Ok(state) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{CHECK_ACK} version={} reads={STATE_VERSION} workers={}",
                state.version,
                state.pool.slots.len()
            );
            let _ = out.flush();
            std::process::exit(0)
        }
        Err(why) => {
            crate::log::emergency_line(&format!("prefork: upgrade check failed: {why}"));
            std::process::exit(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The new image's side.

/// What the old image handed over, found at start.
#[derive(Debug)]
pub(crate) struct Handover {
    pub state: std::result::Result<State, String>,
    /// The old executable, for a rollback (closed once the state is adopted).
    pub old_exe: OwnedFd,
    /// The state's memfd, kept for a rollback exec.
    pub state_fd: OwnedFd,
    /// Set when this image is the old one, back after a failed upgrade: why.
    pub rolled_back: Option<String>,
}

/// The hand-over, if this process is a master that was just exec'd in place by an upgrade.
/// The variables are removed from the environment (workers never see them).
pub(crate) fn take_handover() -> Option<Handover> {
    let value = std::env::var(STATE_ENV).ok()?;
    let rolled_back = std::env::var(ROLLBACK_ENV).ok();
    crate::sys::remove_env(STATE_ENV);
    crate::sys::remove_env(ROLLBACK_ENV);
    let numbers = value.split_once(':').and_then(|(s, e)| {
        let (s, e): (RawFd, RawFd) = (s.parse().ok()?, e.parse().ok()?);
        // Both numbers were left open for this image (checked: F_GETFD fails on a closed one).
        let open = crate::sys::set_cloexec_raw(s).is_ok() && crate::sys::set_cloexec_raw(e).is_ok();
        open.then_some((s, e))
    });
    let Some((state_fd, exe_fd)) = numbers else {
        // Neither adoption nor a rollback is possible: this image starts as a new master, and
        // the old one's workers (its children still) are not its own.
        tracing::error!(value = %value,
            "{STATE_ENV} does not name two open fds: cannot adopt the old master's state; \
             starting afresh");
        return None;
    };
    // The old image made both for this exec, and nothing else in this process owns them.
    let state_fd = crate::sys::own_inherited(state_fd);
    let old_exe = crate::sys::own_inherited(exe_fd);
    let state = if crate::sys::is_frozen(state_fd.as_fd()) {
        read_all(state_fd.as_fd())
            .map_err(|e| format!("cannot read the upgrade state: {e}"))
            .and_then(|b| State::from_bytes(&b))
    } else {
        Err("the upgrade state is not a sealed memfd".into())
    };
    let state = state.and_then(|s| match test_fail_adopt() {
        Some(why) if rolled_back.is_none() => Err(why),
        _ => Ok(s),
    });
    Some(Handover {
        state,
        old_exe,
        state_fd,
        rolled_back,
    })
}

fn test_fail_adopt() -> Option<String> {
    let path = std::env::var_os(FAIL_ADOPT_ENV)?;
    let me = std::fs::read_link("/proc/self/exe").ok()?;
    (me.as_os_str() == path).then(|| format!("{FAIL_ADOPT_ENV} names this executable"))
}

/// Makes the fds of `state` survive (`inherit`) or not survive the next exec.
pub(crate) fn set_inheritable(fds: &[RawFd], inherit: bool) -> std::io::Result<()> {
    for &fd in fds {
        crate::sys::set_cloexec(crate::sys::borrow_inherited(fd), !inherit)?;
    }
    Ok(())
}

/// The environment for the next image: this one's, with the hand-over variables set.
fn next_env(state_fd: RawFd, exe_fd: RawFd, rollback: Option<&str>) -> Vec<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter(|(k, _)| k != STATE_ENV && k != ROLLBACK_ENV && k != CHECK_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            std::ffi::CString::new(kv).ok()
        })
        .collect();
    env.extend(std::ffi::CString::new(format!("{STATE_ENV}={state_fd}:{exe_fd}")).ok());
    if let Some(why) = rollback {
        let one_line: String = why.chars().filter(|c| *c != '\0' && *c != '\n').collect();
        env.extend(std::ffi::CString::new(format!("{ROLLBACK_ENV}={one_line}")).ok());
    }
    env
}

/// The argv the master was started with.
fn argv() -> Vec<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    let l = crate::launch::launch();
    std::iter::once(&l.argv0)
        .chain(l.args.iter())
        .filter_map(|a| std::ffi::CString::new(a.as_bytes()).ok())
        .collect()
}

/// Execs the binary at the program path in place, handing over `state_fd`; returns only on
/// failure. The caller has made every fd of the state inheritable and blocked the signals.
pub(crate) fn exec_new(state_fd: BorrowedFd<'_>, old_exe: BorrowedFd<'_>) -> Error {
    use std::os::unix::ffi::OsStrExt;
    let path = &crate::launch::launch().path;
    let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Error::InvalidSetting(format!("the program path {path:?} has a NUL byte"));
    };
    let env = next_env(state_fd.as_raw_fd(), old_exe.as_raw_fd(), None);
    match nix::unistd::execve(&cpath, &argv(), &env) {
        Err(e) => Error::sys("cannot exec the new master", e),
        Ok(never) => match never {},
    }
}

/// Execs the old image again (the fd the old master kept), with the same state and why; returns
/// only on failure.
pub(crate) fn exec_rollback(h: &Handover, why: &str) -> Error {
    if let Err(e) = set_inheritable(&[h.state_fd.as_raw_fd(), h.old_exe.as_raw_fd()], true) {
        return Error::sys("cannot keep the upgrade state open for a rollback", e);
    }
    if let Ok(state) = &h.state {
        // One number that cannot be kept (closed by a bug) must not cost the rest: the old
        // image adopts what it finds, and a rollback that gives up loses every worker.
        for fd in state.fds() {
            if let Err(e) = set_inheritable(&[fd], true) {
                tracing::error!(fd, error = %e, "an fd of the hand-over cannot be kept for the rollback");
            }
        }
    }
    let env = next_env(h.state_fd.as_raw_fd(), h.old_exe.as_raw_fd(), Some(why));
    match nix::unistd::fexecve(h.old_exe.as_fd(), &argv(), &env) {
        Err(e) => Error::sys("cannot exec the old master for a rollback", e),
        Ok(never) => match never {},
    }
}

/// The process's own executable, opened for a later rollback (close-on-exec until the exec
/// that needs it).
pub(crate) fn open_own_exe() -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open("/proc/self/exe")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document as version 1 writes it, with only the fields it must have: a newer build
    /// keeps reading it (new fields need defaults).
    const V1_MINIMAL: &str = r#"{"version":1,"pool":{"generation":3,"slots":[
        {"ctx":"7b226964223a307d","current":{"pid":4242,"ctx":"7b226964223a307d",
         "generation":3,"spawned_ms_ago":1500}}]},"readiness":[5,6]}"#;

    #[test]
    fn an_older_or_equal_version_decodes_and_a_newer_one_is_refused() {
        let s = State::from_bytes(V1_MINIMAL.as_bytes()).unwrap();
        assert_eq!(s.pool.generation, 3);
        assert_eq!(s.pool.slots[0].current.as_ref().unwrap().pid, 4242);
        assert_eq!(s.fds(), vec![5, 6]);
        assert_eq!(s.contexts().count(), 2);
        let newer = V1_MINIMAL.replace("\"version\":1", "\"version\":2");
        let e = State::from_bytes(newer.as_bytes()).unwrap_err();
        assert!(
            e.contains("version 2, newer than this build reads (1)"),
            "{e}"
        );
        let e = State::from_bytes(b"garbage").unwrap_err();
        assert!(e.contains("not a state document"), "{e}");
        // Fields a later version adds are ignored by this one.
        let extra = V1_MINIMAL.replace("\"version\":1", "\"version\":1,\"later\":[1,2]");
        assert!(State::from_bytes(extra.as_bytes()).is_ok());
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let b = br#"{"id":0,"x":"\u00e9"}"#;
        assert_eq!(from_hex(&to_hex(b)).unwrap(), b);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert_eq!(from_hex("7b7d").unwrap(), b"{}");
    }

    #[test]
    fn a_frozen_memfd_reads_back_and_refuses_writes() {
        let fd = crate::sys::frozen_memfd(c"test-state", b"hello").unwrap();
        assert!(crate::sys::is_frozen(fd.as_fd()));
        assert_eq!(read_all(fd.as_fd()).unwrap(), b"hello");
        let mut f = std::fs::File::from(fd);
        use std::io::Write;
        assert!(f.write_all(b"x").is_err(), "sealed against writes");
    }
}
