//! A worker's boot: is this process a worker, and what did its master hand it.
//!
//! At the first call of [`default_main`](crate::default_main) or [`args`](crate::args) the
//! process:
//!
//! 1. reads the marker variable; only the exact form the master sets (`master:<pid>`) makes it
//!    a worker, and the marker is removed, so the worker's own children are not mistaken for
//!    workers;
//! 2. reads the whole boot document from standard input (at most
//!    [`max_document_len`](crate::protocol::max_document_len) bytes), then points fd 0 at
//!    `/dev/null`;
//! 3. re-arms its parent-death signal and checks that its master is still its parent;
//! 4. checks every declared fd (open, a listening stream socket of the declared family,
//!    non-blocking where the master keeps it so) and makes it close-on-exec again, adopts
//!    the readiness socket, and maps its scoreboard slot (then closes that fd).
//!
//! A missing, truncated, oversized or garbage document, or an fd that is not what the header
//! says, ends the worker with one line on standard error and exit status 1: never a panic or a
//! hang.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use crate::error::{Error, Result};
use crate::protocol::{Header, WORKER_ENV};

/// What a worker learned at boot.
#[derive(Debug)]
pub(crate) struct Boot {
    pub header: Header,
    pub context: Vec<u8>,
    pub readiness: Option<OwnedFd>,
    pub readied: AtomicBool,
}

/// What this process is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    /// Not started by a master.
    Master,
    /// A worker that booted.
    Worker(&'static Boot),
    /// A worker whose boot failed, with the one-line reason.
    BadWorker(&'static str),
}

static BOOT: OnceLock<Option<std::result::Result<Boot, String>>> = OnceLock::new();

/// Reads the worker's boot document once.
pub(crate) fn role() -> Role {
    let booted = BOOT.get_or_init(|| {
        let _ = crate::launch::launch();
        let value = std::env::var(WORKER_ENV).ok()?;
        let master = crate::protocol::parse_marker(&value)?;
        crate::sys::remove_env(WORKER_ENV);
        Some(read_boot(master).map_err(|e| e.report().to_string()))
    });
    match booted {
        None => Role::Master,
        Some(Ok(b)) => Role::Worker(b),
        Some(Err(e)) => Role::BadWorker(e),
    }
}

/// The boot of this worker, if it is one and booted.
pub(crate) fn booted() -> Option<&'static Boot> {
    match role() {
        Role::Worker(b) => Some(b),
        _ => None,
    }
}

fn read_boot(master: i32) -> Result<Boot> {
    if std::io::IsTerminal::is_terminal(&io::stdin()) {
        return Err(Error::Decode(
            "standard input is a terminal: this process was not started by a prefork master \
             (unset PREFORK_WORKER)"
                .into(),
        ));
    }
    let limit = crate::protocol::max_document_len();
    let mut doc = Vec::new();
    io::stdin()
        .lock()
        .take(limit as u64 + 1)
        .read_to_end(&mut doc)
        .map_err(Error::ReadContext)?;
    point_stdin_at_dev_null();
    if doc.len() > limit {
        return Err(Error::Decode(format!(
            "standard input holds more than {limit} bytes: not a document from a prefork master"
        )));
    }
    let nl = doc.iter().position(|&b| b == b'\n').ok_or_else(|| {
        Error::Decode("no header line (truncated or not from a prefork master)".into())
    })?;
    let header: Header = serde_json::from_slice(&doc[..nl])
        .map_err(|e| Error::Decode(format!("bad header: {e}")))?;
    if header.v != crate::protocol::VERSION {
        return Err(Error::Decode(format!(
            "header version {} (this program speaks {})",
            header.v,
            crate::protocol::VERSION
        )));
    }
    if header.master_pid != master {
        return Err(Error::Decode(format!(
            "the header names master {} but the marker names {master}",
            header.master_pid
        )));
    }
    rearm_parent_death(master)?;
    crate::fd::validate_declared(&header.fds, &header.nonblocking, &header.per_worker)?;
    let readiness = match header.readiness_fd {
        None => None,
        Some(fd) if fd <= 2 || header.fds.iter().any(|(d, _)| *d == fd) => {
            return Err(Error::InvalidInheritedFd {
                fd,
                expected: "readiness socket",
                found: "a number that is stdio or a declared socket".into(),
            });
        }
        Some(fd) => {
            if crate::sys::set_cloexec_raw(fd).is_err() {
                return Err(Error::InvalidInheritedFd {
                    fd,
                    expected: "readiness socket",
                    found: "not an open fd".into(),
                });
            }
            // Open (checked above), put there by the master for this purpose, and the boot
            // runs once: nothing else in this process owns it.
            Some(crate::sys::own_inherited(fd))
        }
    };
    if let Some(g) = header.scoreboard {
        if g.fd <= 2
            || header.fds.iter().any(|(d, _)| *d == g.fd)
            || header.readiness_fd == Some(g.fd)
        {
            return Err(Error::InvalidInheritedFd {
                fd: g.fd,
                expected: "scoreboard",
                found: "a number that is stdio or another inherited fd".into(),
            });
        }
        crate::scoreboard::attach(g.fd, g.slot, g.beat_ms, g.max_requests)?;
    }
    Ok(Boot {
        header,
        context: doc[nl + 1..].to_vec(),
        readiness,
        readied: AtomicBool::new(false),
    })
}

/// The kernel clears the parent-death signal on an exec that raises privileges (a setuid binary,
/// or one with file capabilities such as `cap_net_bind_service`): set it again, and close the
/// race where the master died before this point.
fn rearm_parent_death(master: i32) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| Error::sys("cannot set the parent-death signal", e))?;
    if nix::unistd::getppid().as_raw() != master {
        return Err(Error::Decode(format!(
            "the master (pid {master}) is gone; not starting"
        )));
    }
    Ok(())
}

fn point_stdin_at_dev_null() {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = crate::sys::replace_stdin(&null);
    }
}
