//! A fake service manager's notification socket: what systemd would see from a master started
//! with `NOTIFY_SOCKET` pointing at it.
//!
//! The socket has `SO_PASSCRED`, so the kernel attaches the sender's pid to every datagram
//! (as systemd's `NotifyAccess=main` relies on); fds passed with `FDSTORE=1` are received and
//! kept open. A thread receives everything as it comes; the test waits for messages with a
//! deadline.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

use crate::{TempDir, wait_for};

/// One datagram.
#[derive(Debug)]
pub struct Notification {
    /// The sender's pid, as the kernel saw it.
    pub pid: i32,
    /// When the test received it.
    pub at: Instant,
    /// `CLOCK_MONOTONIC` in µs when the test received it.
    pub monotonic_usec: u64,
    /// The wall clock in ms when the test received it (the clock of the fixture's lines).
    pub at_ms: u64,
    /// The text: `KEY=value` lines.
    pub text: String,
    /// The fds it carried, now the test's.
    pub fds: Vec<OwnedFd>,
}

impl Notification {
    /// The value of `key`, if the message sets it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether the message sets `key=value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// The fake manager's socket.
#[derive(Debug)]
pub struct NotifySocket {
    address: String,
    received: Arc<Mutex<Vec<Notification>>>,
    _dir: Option<TempDir>,
}

impl NotifySocket {
    /// A socket at a path in a fresh temp dir (`NOTIFY_SOCKET=/tmp/…/notify`).
    pub fn bind_path() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path: PathBuf = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        let address = path.to_string_lossy().into_owned();
        Self::serve(sock, address, Some(dir))
    }

    /// A socket in the abstract namespace (`NOTIFY_SOCKET=@name`).
    pub fn bind_abstract() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "prefork-test-notify-{}-{}",
            std::process::id(),
            crate::now_ms()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        Self::serve(sock, format!("@{name}"), None)
    }

    fn serve(sock: UnixDatagram, address: String, dir: Option<TempDir>) -> NotifySocket {
        setsockopt(&sock, sockopt::PassCred, &true).expect("SO_PASSCRED");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let received: Arc<Mutex<Vec<Notification>>> = Arc::default();
        let sink = Arc::downgrade(&received);
        std::thread::spawn(move || {
            // Ends once the test dropped the socket's owner.
            while let Some(sink) = sink.upgrade() {
                if let Some(n) = receive(sock.as_raw_fd()) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(n);
                }
            }
        });
        NotifySocket {
            address,
            received,
            _dir: dir,
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Waits for the first message received so far or later that satisfies `pred`, and
    /// returns its index (in [`with_all`](Self::with_all)'s list).
    pub fn wait(
        &self,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&Notification) -> bool,
    ) -> usize {
        self.wait_from(0, deadline, what, pred)
    }

    /// As [`wait`](Self::wait), among the messages from index `from` on.
    pub fn wait_from(
        &self,
        from: usize,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&Notification) -> bool,
    ) -> usize {
        wait_for(deadline, what, || {
            let r = self.received.lock().unwrap_or_else(|p| p.into_inner());
            r.iter()
                .enumerate()
                .skip(from)
                .find(|(_, n)| pred(n))
                .map(|(i, _)| i)
        })
    }

    /// How many messages arrived so far.
    pub fn len(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// True when nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on every message received so far.
    pub fn with_all<R>(&self, f: impl FnOnce(&mut Vec<Notification>) -> R) -> R {
        f(&mut self.received.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The texts received so far, one line per message (newlines shown as `|`).
    pub fn texts(&self) -> Vec<String> {
        self.with_all(|all| {
            all.iter()
                .map(|n| format!("{} {}", n.pid, n.text.replace('\n', "|")))
                .collect()
        })
    }
}

/// Receives one datagram (or `None` after the read timeout).
fn receive(fd: RawFd) -> Option<Notification> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!(nix::libc::ucred, [RawFd; 16]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let mut pid = 0;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        match c {
            ControlMessageOwned::ScmCredentials(cred) => pid = cred.pid(),
            ControlMessageOwned::ScmRights(list) => {
                for f in list {
                    // SAFETY: the kernel just installed this fd in this process for this
                    // message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(f) });
                }
            }
            _ => {}
        }
    }
    let len = msg.bytes;
    Some(Notification {
        pid,
        at: Instant::now(),
        monotonic_usec: monotonic_usec(),
        at_ms: crate::now_ms(),
        text: String::from_utf8_lossy(&buf[..len]).into_owned(),
        fds,
    })
}

/// `CLOCK_MONOTONIC` now, in µs.
pub fn monotonic_usec() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}
