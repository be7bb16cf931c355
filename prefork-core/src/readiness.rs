//! Readiness: how the master learns that a new worker can serve. Both sides live here.
//!
//! # The readiness socket
//!
//! One `SOCK_DGRAM` Unix socket pair per master, created at start. The master keeps one end
//! (non-blocking, polled by its loop); every worker inherits the other end at the fd number its
//! boot header names, and sends one datagram, `ready <pid>`, when it can serve (and `recycle
//! <pid>` when it reached its request budget). Datagrams keep
//! messages whole, and one socket serves any number of workers, so the master's fd count does
//! not grow with them.
//!
//! # Who is ready is the kernel's word
//!
//! Every worker holds the same sending end, so the pid written in a message proves nothing: a
//! worker could mark its siblings ready. The master's end has `SO_PASSCRED`, so the kernel
//! attaches the sender's real pid to each datagram (`SCM_CREDENTIALS`; only a privileged
//! process can claim another pid). A message is accepted only when the pid it names is the pid
//! the kernel saw; anything else is logged and ignored.
//!
//! # When a worker is ready
//!
//! With [`Readiness::Implicit`] the library reports it when the worker function is entered;
//! with [`Readiness::Explicit`] the worker calls [`worker::ready`](crate::worker::ready). In
//! both modes a worker that dies within the startup window after it became ready is a failed
//! start (backoff), not a served one; the pool's header has the rules.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, setsockopt,
    socketpair, sockopt,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::process::Pid;

/// How the master learns that a new worker is ready to serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Ready when the worker function is entered (the library reports it).
    #[default]
    Implicit,
    /// Ready when the worker calls [`worker::ready`](crate::worker::ready); until then, or
    /// past the deadline, it is still starting.
    Explicit,
}

/// The master's end of the readiness socket, and the end its workers inherit.
#[derive(Debug)]
pub(crate) struct ReadinessSocket {
    master_end: OwnedFd,
    worker_end: OwnedFd,
}

impl ReadinessSocket {
    /// `socketpair(AF_UNIX, SOCK_DGRAM)`, both ends close-on-exec; the master's end is
    /// non-blocking and receives credentials.
    pub fn new() -> Result<Self> {
        let (master_end, worker_end) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::sys("cannot create the readiness socket", e))?;
        setsockopt(&master_end, sockopt::PassCred, &true)
            .map_err(|e| Error::sys("cannot enable SO_PASSCRED on the readiness socket", e))?;
        Ok(ReadinessSocket {
            master_end,
            worker_end,
        })
    }

    /// Both ends' numbers (master, workers), for an upgrade's hand-over.
    pub fn raw_fds(&self) -> [std::os::fd::RawFd; 2] {
        [self.master_end.as_raw_fd(), self.worker_end.as_raw_fd()]
    }

    /// The socket an old master handed over (its running workers hold the other end): both
    /// numbers made close-on-exec again, and checked to be a datagram socket pair.
    pub fn adopt(fds: [std::os::fd::RawFd; 2]) -> Result<Self> {
        for fd in fds {
            crate::sys::set_cloexec_raw(fd)
                .map_err(|e| Error::sys("the readiness socket of the old master is not open", e))?;
            let ty =
                nix::sys::socket::getsockopt(&crate::sys::borrow_inherited(fd), sockopt::SockType)
                    .map_err(|e| {
                        Error::sys("the readiness socket of the old master is not a socket", e)
                    })?;
            if ty != SockType::Datagram {
                return Err(Error::InvalidSetting(
                    "the readiness socket of the old master is not a datagram socket".into(),
                ));
            }
        }
        setsockopt(
            &crate::sys::borrow_inherited(fds[0]),
            sockopt::PassCred,
            &true,
        )
        .map_err(|e| Error::sys("cannot enable SO_PASSCRED on the readiness socket", e))?;
        // Checked open above (and nothing failed, so a rollback never needs them back); the
        // old image made them for this one, and nothing else in this process owns them.
        let master_end = crate::sys::own_inherited(fds[0]);
        let worker_end = crate::sys::own_inherited(fds[1]);
        Ok(ReadinessSocket {
            master_end,
            worker_end,
        })
    }

    /// The end to poll.
    pub fn master_end(&self) -> BorrowedFd<'_> {
        self.master_end.as_fd()
    }

    /// The end every worker inherits.
    pub fn worker_end(&self) -> BorrowedFd<'_> {
        self.worker_end.as_fd()
    }

    /// Reads every queued message without blocking; pushes the pid of each worker that said
    /// it is ready into `out`, and of each that asked to be recycled into `recycle`, as the
    /// kernel identified them.
    pub fn drain(&self, out: &mut Vec<Pid>, recycle: &mut Vec<Pid>) {
        let mut buf = [0u8; 64];
        loop {
            let mut cmsg = nix::cmsg_space!(nix::libc::ucred);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.master_end.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            let sender = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(cred) => Some(Pid::from_raw(cred.pid())),
                    _ => None,
                })
            });
            let len = msg.bytes;
            let body = &buf[..len.min(buf.len())];
            if let (Some(sender), Some(claimed)) = (sender, parse_recycle(body)) {
                if sender == claimed {
                    recycle.push(sender);
                }
                continue;
            }
            match (sender, parse_ready(body)) {
                (Some(sender), Some(claimed)) if sender == claimed => out.push(sender),
                (Some(sender), Some(claimed)) => tracing::warn!(
                    %sender, %claimed,
                    "a worker claimed readiness for another process; ignored"
                ),
                (_, _) => tracing::debug!("ignoring a malformed readiness message"),
            }
        }
    }
}

/// The message a worker sends.
fn ready_message(pid: Pid) -> String {
    format!("ready {pid}")
}

/// The pid of a message `<verb> <pid>`.
fn parse_message(msg: &[u8], verb: &str) -> Option<Pid> {
    let s = std::str::from_utf8(msg).ok()?;
    s.strip_prefix(verb)?
        .strip_prefix(' ')?
        .trim()
        .parse()
        .ok()
        .map(Pid::from_raw)
}

/// Parses a readiness message.
fn parse_ready(msg: &[u8]) -> Option<Pid> {
    parse_message(msg, "ready")
}

/// Parses a recycle request.
fn parse_recycle(msg: &[u8]) -> Option<Pid> {
    parse_message(msg, "recycle")
}

/// Sends one datagram on the worker's end, retrying an interrupted send.
fn send_message(fd: BorrowedFd<'_>, msg: &str, flags: MsgFlags) -> std::io::Result<()> {
    loop {
        match nix::sys::socket::send(fd.as_raw_fd(), msg.as_bytes(), flags) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The worker's side of a recycle request: sends `recycle <pid>` without blocking (a full
/// socket drops it; the master's checks find the same later).
pub(crate) fn report_recycle(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    send_message(
        fd,
        &format!("recycle {}", Pid::this()),
        MsgFlags::MSG_DONTWAIT,
    )
}

/// The worker's side: sends `ready <pid>` on the inherited end.
pub(crate) fn report(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    send_message(fd, &ready_message(Pid::this()), MsgFlags::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_names_the_sender_and_forged_claims_are_ignored() {
        let s = ReadinessSocket::new().unwrap();
        report(s.worker_end()).unwrap();
        let forged = ready_message(Pid::from_raw(1));
        nix::sys::socket::send(
            s.worker_end().as_raw_fd(),
            forged.as_bytes(),
            MsgFlags::empty(),
        )
        .unwrap();
        nix::sys::socket::send(s.worker_end().as_raw_fd(), b"garbage", MsgFlags::empty()).unwrap();
        report_recycle(s.worker_end()).unwrap();
        nix::sys::socket::send(s.worker_end().as_raw_fd(), b"recycle 1", MsgFlags::empty())
            .unwrap();
        let (mut got, mut recycle) = (Vec::new(), Vec::new());
        s.drain(&mut got, &mut recycle);
        assert_eq!(got, vec![Pid::this()]);
        assert_eq!(
            recycle,
            vec![Pid::this()],
            "a forged recycle request is ignored"
        );
    }

    #[test]
    fn parse() {
        assert_eq!(parse_ready(b"ready 42"), Some(Pid::from_raw(42)));
        assert_eq!(parse_ready(b"garbage"), None);
        assert_eq!(parse_ready(b"ready x"), None);
    }
}
