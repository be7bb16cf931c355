//! The sender side of the notification protocol (`sd_notify(3)`): one datagram of
//! newline-separated `KEY=value` lines to the Unix socket named by `$NOTIFY_SOCKET`, optionally
//! with fds attached (`SCM_RIGHTS`).
//!
//! # Why not a crate
//!
//! The protocol is small and documented as stable ("can be reimplemented without external
//! dependencies", `sd_notify(3)`). The best-kept crate, `sd-notify`, connects the address as a
//! path, so an abstract `@name` socket (which systemd and other managers do hand out) fails,
//! and passing fds needs another optional dependency. This module is the few calls `nix`
//! already provides: `socket`, `sendmsg` with `ControlMessage::ScmRights`, and
//! `UnixAddr::new_abstract`.
//!
//! # Never blocking the master
//!
//! The datagram is sent with `MSG_DONTWAIT`: a manager that does not read its queue costs a
//! dropped message (logged at debug level), never a blocked master. `MSG_NOSIGNAL` keeps a
//! vanished receiver from raising `SIGPIPE`. The sender's pid reaches the manager through the
//! kernel (`SCM_CREDENTIALS` on the receiver's side), which is how `NotifyAccess=main` knows
//! the message is the main process's.

use std::ffi::OsStr;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socket,
};

/// The variable naming the manager's socket.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A socket to the service manager named by `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub(crate) struct Notifier {
    sock: OwnedFd,
    addr: UnixAddr,
}

impl Notifier {
    /// The manager of this process, if `$NOTIFY_SOCKET` names one. An address this module
    /// cannot use (`vsock:`, too long) is logged once and treated as absent.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        if value.is_empty() {
            return None;
        }
        let addr = match parse_address(&value) {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!(notify_socket = %value.to_string_lossy(), %why,
                    "cannot use NOTIFY_SOCKET; not notifying the service manager");
                return None;
            }
        };
        match socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) {
            Ok(sock) => Some(Notifier { sock, addr }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the notification socket");
                None
            }
        }
    }

    /// Sends `msg` (lines of `KEY=value`); false if it was not sent (logged).
    pub fn send(&self, msg: &str) -> bool {
        self.send_with_fds(msg, &[]).is_ok()
    }

    /// Sends `msg` with `fds` attached. The error is logged here too.
    pub fn send_with_fds(&self, msg: &str, fds: &[RawFd]) -> Result<(), Errno> {
        let iov = [IoSlice::new(msg.as_bytes())];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        loop {
            match sendmsg(self.sock.as_raw_fd(), &iov, cmsgs, flags, Some(&self.addr)) {
                Ok(_) => {
                    tracing::trace!(message = %msg.replace('\n', " "), "notified the service manager");
                    return Ok(());
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    let level_debug = e == Errno::EAGAIN;
                    let msg = msg.replace('\n', " ");
                    if level_debug {
                        tracing::debug!(message = %msg, "the service manager's queue is full; notification dropped");
                    } else {
                        tracing::warn!(message = %msg, error = %e, "cannot notify the service manager");
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// `$NOTIFY_SOCKET` as an address: a path (`/run/systemd/notify`) or, with a leading `@`, a
/// name in the Linux abstract namespace.
pub(crate) fn parse_address(value: &OsStr) -> Result<UnixAddr, String> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => UnixAddr::new(bytes).map_err(|e| format!("bad socket path: {e}")),
        Some(b'@') => {
            UnixAddr::new_abstract(&bytes[1..]).map_err(|e| format!("bad abstract name: {e}"))
        }
        _ if bytes.starts_with(b"vsock:") => Err("vsock addresses are not supported".into()),
        _ => Err("neither a path nor an @abstract name".into()),
    }
}

/// `CLOCK_MONOTONIC` now, in microseconds (the clock of `MONOTONIC_USEC=`).
pub(crate) fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000)
            .saturating_add(ts.tv_nsec() as u64 / 1_000),
        Err(_) => 0,
    }
}

/// A `STATUS=` value: one line (systemd shows it as is).
pub(crate) fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn addresses() {
        assert!(parse_address(OsStr::new("/run/systemd/notify")).is_ok());
        let a = parse_address(OsStr::new("@abstract/name")).unwrap();
        assert_eq!(a.as_abstract(), Some(&b"abstract/name"[..]));
        assert!(parse_address(OsStr::new("vsock:2:1234")).is_err());
        assert!(parse_address(OsStr::new("relative")).is_err());
    }

    /// A notifier of `address`, as `NOTIFY_SOCKET` would name it.
    fn to(address: &OsStr) -> Notifier {
        Notifier {
            sock: socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap(),
            addr: parse_address(address).unwrap(),
        }
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("prefork-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = to(path.as_os_str());
        assert!(n.send("READY=1\nSTATUS=hi"));
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=hi");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("prefork-notify-test-{}", std::process::id());
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&sa).unwrap();
        let n = to(OsStr::new(&format!("@{name}")));
        assert!(n.send("WATCHDOG=1"));
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn monotonic_is_monotonic() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
