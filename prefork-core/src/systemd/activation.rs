//! Socket activation and the fd store: listening sockets the service manager passes to the
//! master (`sd_listen_fds(3)`), and listening sockets the master hands back to it to keep.
//!
//! # What is passed
//!
//! `LISTEN_PID` (this process), `LISTEN_FDS` (how many, from fd 3 up) and `LISTEN_FDNAMES`
//! (their names, `:`-separated; `FileDescriptorName=` of the `.socket` unit, the `FDNAME=` they
//! were stored under, or `--fdname=` of `systemd-socket-activate`). They are read once, the
//! first time anything here is asked, and never removed from the master's environment
//! (removing is `unsafe` once threads may exist); the spawner leaves them out of every
//! worker's environment instead. A `LISTEN_PID` that is not this process means the variables
//! were meant for another one (a parent that forgot to clear them) and nothing is adopted.
//!
//! Every passed fd is made close-on-exec at once (systemd passes them inheritable), so only
//! the ones a context declares reach a worker, at the numbers the spawner gives them.
//!
//! # Adopting
//!
//! [`InheritedListener::from_systemd`] takes a passed socket by name, checks it the way a worker
//! checks an inherited fd (a listening stream socket of the expected family), makes it
//! non-blocking (as [`InheritedListener::bind_tcp`] does) and returns it; each passed fd is
//! adopted at most once. A program binds when it gets `None`, so the same binary runs under
//! systemd, under `systemd-socket-activate`, in a container and from a shell.
//!
//! # The fd store
//!
//! [`InheritedListener::store_in_systemd`] sends the master's socket to the manager with
//! `FDSTORE=1` and `FDNAME=<name>` (it needs `FileDescriptorStoreMax=` > 0 in the unit; the send
//! succeeds either way). systemd keeps the socket open across a restart of the service and
//! passes it to the next master as a `LISTEN_FDS` socket of that name: connections arriving
//! while no master runs wait in the socket's queue instead of being refused.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
use crate::fd::{InheritedListener, ListenerKind};
use crate::spawn::FIRST_INHERITED_FD;

use super::notify::Notifier;

/// The variables of socket activation.
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
/// How many fds are passed.
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
/// Their names.
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// The name systemd gives a passed fd without a name of its own (`sd_listen_fds_with_names`).
const UNNAMED: &str = "unknown";

/// One passed fd.
#[derive(Debug)]
struct Passed {
    fd: RawFd,
    name: String,
    taken: bool,
}

static PASSED: OnceLock<Mutex<Vec<Passed>>> = OnceLock::new();

/// The passed fds, read from the environment the first time.
fn passed() -> MutexGuard<'static, Vec<Passed>> {
    PASSED
        .get_or_init(|| Mutex::new(read_env()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn read_env() -> Vec<Passed> {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = match parse(
        std::process::id(),
        var(LISTEN_PID).as_deref(),
        var(LISTEN_FDS).as_deref(),
        var(LISTEN_FDNAMES).as_deref(),
    ) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(%why, "ignoring the sockets the service manager passed");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (fd, name) in parsed {
        // Made close-on-exec before anything can spawn (and F_GETFD proves it is open).
        match crate::sys::set_cloexec_raw(fd) {
            Ok(()) => out.push(Passed {
                fd,
                name,
                taken: false,
            }),
            Err(e) => tracing::warn!(fd, %name, error = %e, "a passed fd is not open; ignored"),
        }
    }
    out
}

/// `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES` as (fd, name) pairs for the process `pid`.
/// `Ok(empty)` when nothing is passed to this process; `Err` for malformed values.
fn parse(
    pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
) -> std::result::Result<Vec<(RawFd, String)>, String> {
    let Some(count) = listen_fds else {
        return Ok(Vec::new());
    };
    // As sd_listen_fds: without a LISTEN_PID naming this process, the fds are not ours.
    match listen_pid.map(str::parse::<u32>) {
        Some(Ok(p)) if p == pid => {}
        Some(Ok(p)) => {
            tracing::debug!(listen_pid = p, "LISTEN_FDS is meant for another process");
            return Ok(Vec::new());
        }
        Some(Err(_)) => return Err(format!("LISTEN_PID is not a pid: {listen_pid:?}")),
        None => return Ok(Vec::new()),
    }
    let n: u16 = count
        .parse()
        .map_err(|_| format!("LISTEN_FDS is not a small number: {count:?}"))?;
    let mut list: Vec<String> = match names {
        Some(s) if !s.is_empty() => s.split(':').map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    if list.len() != usize::from(n) {
        if !list.is_empty() {
            tracing::warn!(
                names = list.len(),
                fds = n,
                "LISTEN_FDNAMES does not name every fd; using no names"
            );
        }
        list = vec![UNNAMED.to_owned(); usize::from(n)];
    }
    Ok((FIRST_INHERITED_FD..)
        .zip(list)
        .take(usize::from(n))
        .collect())
}

/// Reads the passed fds now (the master does it at start, before it spawns anything) and
/// logs them.
pub(crate) fn init() {
    let p = passed();
    if !p.is_empty() {
        let names: Vec<&str> = p.iter().map(|x| x.name.as_str()).collect();
        tracing::info!(
            count = p.len(),
            ?names,
            "the service manager passed sockets"
        );
    }
}

/// Every fd number the service manager passed (adopted or not): an upgrade in place keeps them
/// open, and the new image finds them again through `LISTEN_FDS` (same pid).
pub(crate) fn passed_fds() -> Vec<RawFd> {
    passed().iter().map(|p| p.fd).collect()
}

/// The names of the fds the service manager passed to this process, in fd order (adopted or
/// not). Empty when it is not socket-activated.
pub fn passed_names() -> Vec<String> {
    passed().iter().map(|p| p.name.clone()).collect()
}

/// A name systemd gives by default: the socket had none of its own.
fn is_default_name(name: &str) -> bool {
    name.is_empty() || name == UNNAMED || name.ends_with(".socket")
}

impl InheritedListener {
    /// In the master: the listening socket the service manager passed under `name` (socket
    /// activation, or the fd store of an earlier master), checked to be a listening stream
    /// socket of `kind`, made non-blocking and adopted; `Ok(None)` when none was passed (bind
    /// one then).
    ///
    /// When no passed socket has that name and exactly one socket without a name of its own
    /// was passed (no `FileDescriptorName=`, no `--fdname=`), that one is taken.
    /// Each passed socket is adopted once: a second call for the same name returns `None`.
    ///
    /// ```no_run
    /// use prefork_core::{InheritedListener, ListenerKind};
    /// let l = match InheritedListener::from_systemd("http", ListenerKind::Tcp)? {
    ///     Some(l) => l,
    ///     None => InheritedListener::bind_tcp("127.0.0.1:3000")?,
    /// };
    /// println!("listening on {}", l.local_addr()?);
    /// # Ok::<(), prefork_core::Error>(())
    /// ```
    pub fn from_systemd(name: &str, kind: ListenerKind) -> Result<Option<InheritedListener>> {
        let mut list = passed();
        let pick = list
            .iter()
            .position(|p| p.name == name)
            .or_else(|| (list.len() == 1 && is_default_name(&list[0].name)).then_some(0));
        let Some(i) = pick else { return Ok(None) };
        let entry = &mut list[i];
        if entry.taken {
            return Ok(None);
        }
        // Open (checked when the list was read) and owned by nobody yet (not taken; the list's
        // lock is held).
        let borrowed = crate::sys::borrow_inherited(entry.fd);
        crate::fd::check_listener(borrowed, kind)?;
        socket2::SockRef::from(&borrowed)
            .set_nonblocking(true)
            .map_err(|e| Error::sys("cannot make a passed socket non-blocking", e))?;
        entry.taken = true;
        tracing::info!(fd = entry.fd, name = %entry.name, "adopted a socket passed by the service manager");
        // `taken` (set under the lock) makes this the only owner of the fd.
        let owned = crate::sys::own_inherited(entry.fd);
        Ok(Some(InheritedListener::from_owned(kind, owned)))
    }

    /// In the master: hands this socket to the service manager's fd store under `name`
    /// (`FDSTORE=1`, `FDNAME=<name>`), so that it outlives a restart of the service and comes
    /// back through [`from_systemd`](Self::from_systemd). Returns `Ok(false)` when there is no
    /// service manager to tell (`NOTIFY_SOCKET` unset). The unit needs
    /// `FileDescriptorStoreMax=` above 0, or systemd silently drops it.
    ///
    /// A name is 1 to 255 printable ASCII characters without `:`.
    pub fn store_in_systemd(&self, name: &str) -> Result<bool> {
        check_fd_name(name)?;
        let fd = self.master_fd().ok_or_else(|| {
            Error::ListenerMisuse("store_in_systemd() is only available in the master".into())
        })?;
        let Some(n) = Notifier::from_env() else {
            return Ok(false);
        };
        n.send_with_fds(&format!("FDSTORE=1\nFDNAME={name}"), &[fd.as_raw_fd()])
            .map_err(|e| Error::sys("cannot hand a socket to the service manager's fd store", e))?;
        tracing::info!(
            fd = fd.as_raw_fd(),
            name,
            "socket handed to the service manager's fd store"
        );
        Ok(true)
    }
}

/// The rules of `FDNAME=` (`sd_pid_notify_with_fds(3)`).
fn check_fd_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSetting(format!(
            "fd store name {name:?}: 1 to 255 printable ASCII characters without ':'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_the_variables() {
        assert_eq!(parse(7, None, None, None).unwrap(), vec![]);
        // Not for us, or no pid: nothing.
        assert_eq!(parse(7, Some("8"), Some("1"), None).unwrap(), vec![]);
        assert_eq!(parse(7, None, Some("1"), None).unwrap(), vec![]);
        assert_eq!(
            parse(7, Some("7"), Some("2"), Some("http:admin")).unwrap(),
            vec![(3, "http".to_string()), (4, "admin".to_string())]
        );
        // No names, or the wrong count of names: every fd is "unknown".
        assert_eq!(
            parse(7, Some("7"), Some("1"), None).unwrap(),
            vec![(3, "unknown".to_string())]
        );
        assert_eq!(
            parse(7, Some("7"), Some("2"), Some("one")).unwrap(),
            vec![(3, "unknown".to_string()), (4, "unknown".to_string())]
        );
        assert!(parse(7, Some("x"), Some("1"), None).is_err());
        assert!(parse(7, Some("7"), Some("-1"), None).is_err());
    }

    #[test]
    fn default_names() {
        assert!(is_default_name("unknown"));
        assert!(is_default_name("app.socket"));
        assert!(!is_default_name("http"));
    }

    #[test]
    fn fd_names() {
        assert!(check_fd_name("http").is_ok());
        assert!(check_fd_name("").is_err());
        assert!(check_fd_name("a:b").is_err());
        assert!(check_fd_name("a b").is_err());
        assert!(check_fd_name(&"x".repeat(256)).is_err());
    }
}
