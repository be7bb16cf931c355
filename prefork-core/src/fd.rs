//! Typed inherited sockets.
//!
//! # The fd rules
//!
//! * Every fd that Rust opens is close-on-exec, and so is every listener made here. A socket
//!   reaches a worker only because its context *declares* it: the spawner walks the context with
//!   [`WorkerContext::visit_fds`](crate::WorkerContext::visit_fds), `dup2`s each declared socket to
//!   a fixed number in the child (3, 4, … in visiting order) and writes that child-side number
//!   into the context it sends. `dup2` clears close-on-exec on the copy, in the child only; the
//!   master's own fd is never made inheritable, so nothing leaks into other children.
//! * `O_NONBLOCK` belongs to the open file description, which the master and every worker share.
//!   [`InheritedListener::bind_tcp`] sets it once, in the master, because async runtimes (tokio)
//!   require it. A worker must not flip it: that would change it for all its siblings.
//! * In the worker, [`InheritedListener::into_tcp`] / [`into_unix`](InheritedListener::into_unix)
//!   check that the fd really is a listening stream socket of the declared family before adopting
//!   it, and each fd can be adopted once: a cloned context cannot produce two owners of one fd.
//!   Declared fds are made close-on-exec again at worker start, so a worker's own children do not
//!   inherit them.
//! * A listener is either shared by every worker ([`InheritedListener::bind_tcp`]) or one worker
//!   id's own socket of a [`ReuseportGroup`](crate::ReuseportGroup); the boot header says which
//!   ([`InheritedListener::is_per_worker`], [`worker::is_per_worker_socket`](crate::worker::is_per_worker_socket)),
//!   because a draining worker must keep accepting on its own socket, not on a shared one.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use socket2::{Domain, Socket, Type};

use crate::error::{Error, Result};
use crate::reuseport::MemberRef;

/// The family of an inherited listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// A TCP listener (IPv4 or IPv6).
    Tcp,
    /// A Unix-domain stream listener.
    Unix,
}

impl ListenerKind {
    fn describe(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "listening TCP socket",
            ListenerKind::Unix => "listening Unix stream socket",
        }
    }
}

/// A listening socket that a worker inherits from its master.
///
/// In the master it owns (a shared reference to) the socket; in the worker it is the child-side
/// fd number, turned back into a listener by [`into_tcp`](Self::into_tcp) or
/// [`into_unix`](Self::into_unix). Cloning it in the master is cheap and shares the socket.
///
/// It serializes as `{"kind":"tcp","fd":3}`, where `fd` is the number in the worker. It is filled
/// in by the spawner; a listener that the context did not declare serializes with `"fd":null`,
/// which the worker reports as an error rather than guessing.
#[derive(Clone)]
pub struct InheritedListener {
    kind: ListenerKind,
    master: Option<Arc<OwnedFd>>,
    /// In the master: whether the socket was non-blocking when it was made or wrapped, which
    /// the master keeps true before every spawn.
    nonblocking: bool,
    child_fd: Option<RawFd>,
    /// In the master: the reuseport group and socket this is, if it is one.
    member: Option<MemberRef>,
}

impl fmt::Debug for InheritedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("InheritedListener");
        d.field("kind", &self.kind);
        if let Some(m) = &self.master {
            d.field("master_fd", &m.as_raw_fd());
        }
        if self.member.is_some() {
            d.field("per_worker", &true);
        }
        d.field("child_fd", &self.child_fd).finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    kind: ListenerKind,
    fd: Option<RawFd>,
}

impl Serialize for InheritedListener {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire {
            kind: self.kind,
            fd: self.child_fd,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for InheritedListener {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(InheritedListener {
            kind: w.kind,
            master: None,
            nonblocking: false,
            child_fd: w.fd,
            member: None,
        })
    }
}

/// Backlog of the listeners made here. The kernel caps it at `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: i32 = 1024;

impl InheritedListener {
    /// Binds a TCP listener for workers to share: `SO_REUSEADDR`, a backlog of
    /// [`DEFAULT_BACKLOG`], close-on-exec, and **non-blocking** (set once here, for every worker;
    /// see the module docs).
    ///
    /// After an upgrade in place, the socket the old master handed over on that address is
    /// returned instead (the same socket, so no connection is refused or lost).
    pub fn bind_tcp(addr: impl ToSocketAddrs) -> Result<Self> {
        if !inherited().is_empty()
            && let Ok(addrs) = addr.to_socket_addrs()
            && let Some(l) = claim_tcp(&addrs.collect::<Vec<_>>())
        {
            return Ok(l);
        }
        let l = Self::tcp(bind_first(addr, false)?);
        if ADOPTED.load(std::sync::atomic::Ordering::Relaxed) {
            // After an upgrade, a socket bound anew beside the old master's may be a port the
            // clients do not know: say so.
            tracing::warn!(addr = ?l.local_addr().ok(),
                "no listening socket of the old master matches; bound a new one");
        }
        Ok(l)
    }

    /// Wraps a TCP listener of the master. Its blocking mode is left as it is.
    pub fn tcp(listener: TcpListener) -> Self {
        Self::from_owned(ListenerKind::Tcp, OwnedFd::from(listener))
    }

    /// Binds a Unix stream listener at `path` (non-blocking, like [`bind_tcp`](Self::bind_tcp)).
    ///
    /// A socket file left at `path` by a master that died (nothing accepts on it) is removed
    /// first; a live one, or a file that is not a socket, is an error. The master removes the
    /// file when it exits.
    ///
    /// After an upgrade in place, the socket the old master handed over at that path is
    /// returned instead.
    pub fn bind_unix(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(l) = claim_unix(path) {
            return Ok(l);
        }
        let listen_err = |source| Error::Listen {
            addr: path.display().to_string(),
            source,
        };
        remove_stale_socket(path).map_err(listen_err)?;
        let l = UnixListener::bind(path).map_err(listen_err)?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::MetadataExt;
            bound_unix_paths().push((path.to_path_buf(), meta.dev(), meta.ino()));
        }
        l.set_nonblocking(true)
            .map_err(|e| Error::sys("cannot make the listener non-blocking", e))?;
        Ok(Self::unix(l))
    }

    /// Wraps a Unix stream listener of the master. Its blocking mode is left as it is.
    pub fn unix(listener: UnixListener) -> Self {
        Self::from_owned(ListenerKind::Unix, OwnedFd::from(listener))
    }

    pub(crate) fn from_owned(kind: ListenerKind, fd: OwnedFd) -> Self {
        let nonblocking = is_nonblocking(fd.as_fd());
        InheritedListener {
            kind,
            nonblocking,
            master: Some(Self::register_master_fd(fd)),
            child_fd: None,
            member: None,
        }
    }

    /// Shares a socket of the master and records it, so that a stopping master lets go of it.
    pub(crate) fn register_master_fd(fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = Arc::new(fd);
        let mut list = master_listeners();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&fd));
        fd
    }

    /// The master's side of a reuseport group's socket (non-blocking, TCP).
    pub(crate) fn group_member(fd: Arc<OwnedFd>, member: MemberRef) -> Self {
        InheritedListener {
            kind: ListenerKind::Tcp,
            nonblocking: is_nonblocking(fd.as_fd()),
            master: Some(fd),
            child_fd: None,
            member: Some(member),
        }
    }

    /// In the master: the reuseport socket this is, if it is one.
    pub(crate) fn member(&self) -> Option<&MemberRef> {
        self.member.as_ref()
    }

    /// Whether this listener is a worker id's own socket (one of a
    /// [`ReuseportGroup`](crate::ReuseportGroup)'s), rather than one shared by every worker. In
    /// the master it says what the listener was made as; in a worker, what the boot header
    /// said of its fd.
    pub fn is_per_worker(&self) -> bool {
        if self.master.is_some() {
            return self.member.is_some();
        }
        self.child_fd.is_some_and(is_per_worker_fd)
    }

    /// The kind of socket.
    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    /// The fd number this listener has (or will have) in the worker, once the spawner mapped it.
    pub fn child_fd(&self) -> Option<RawFd> {
        self.child_fd
    }

    /// The master's socket, if this is the master's side.
    pub fn master_fd(&self) -> Option<BorrowedFd<'_>> {
        self.master.as_deref().map(|f| f.as_fd())
    }

    /// The address the master's TCP socket is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        let fd = self.master_fd().ok_or_else(|| {
            Error::ListenerMisuse("local_addr() is only available in the master".into())
        })?;
        let sock = socket2::SockRef::from(&fd);
        sock.local_addr()
            .map_err(|e| Error::sys("getsockname", e))?
            .as_socket()
            .ok_or_else(|| Error::ListenerMisuse("not an IP socket".into()))
    }

    pub(crate) fn master_shared(&self) -> Option<Arc<OwnedFd>> {
        self.master.clone()
    }

    /// In the master, before a spawn: a shared listener must still be listening and
    /// non-blocking. A worker can break both for every sibling (`shutdown(SHUT_RD)` on the
    /// listening socket stops it listening; clearing `O_NONBLOCK` on the shared open file makes
    /// every worker's accept block, and with it its stop). Both are restored here, loudly.
    pub(crate) fn restore_if_broken(&self) {
        let Some(fd) = self.master_fd() else { return };
        let sock = socket2::SockRef::from(&fd);
        if let Ok(false) = sock.is_listener() {
            match sock.listen(DEFAULT_BACKLOG) {
                Ok(()) => {
                    tracing::error!(
                        fd = fd.as_raw_fd(),
                        "a shared listening socket had stopped listening (a worker shut it \
                         down?); listening again"
                    );
                    if let Some(m) = &self.member {
                        m.relistened();
                    }
                }
                Err(e) => tracing::error!(fd = fd.as_raw_fd(), error = %e,
                    "a shared listening socket stopped listening and cannot listen again"),
            }
        }
        if self.nonblocking && !is_nonblocking(fd) {
            tracing::error!(
                fd = fd.as_raw_fd(),
                "a shared listening socket was made blocking (by a worker?); restoring O_NONBLOCK"
            );
            let _ = sock.set_nonblocking(true);
        }
    }

    /// Whether a worker must find this socket non-blocking (see [`restore_if_broken`]).
    ///
    /// [`restore_if_broken`]: Self::restore_if_broken
    pub(crate) fn must_be_nonblocking(&self) -> bool {
        self.nonblocking
    }

    pub(crate) fn set_child_fd(&mut self, fd: RawFd) {
        self.child_fd = Some(fd);
    }

    /// In the worker: checks that the inherited fd is a listening TCP socket and adopts it.
    pub fn into_tcp(self) -> Result<TcpListener> {
        let fd = self.adopt(ListenerKind::Tcp)?;
        Ok(TcpListener::from(fd))
    }

    /// In the worker: checks that the inherited fd is a listening Unix stream socket and adopts it.
    pub fn into_unix(self) -> Result<UnixListener> {
        let fd = self.adopt(ListenerKind::Unix)?;
        Ok(UnixListener::from(fd))
    }

    fn adopt(self, want: ListenerKind) -> Result<OwnedFd> {
        if self.master.is_some() {
            return Err(Error::ListenerMisuse(
                "an InheritedListener can only be turned into a listener in the worker".into(),
            ));
        }
        let Some(fd) = self.child_fd else {
            return Err(Error::ListenerMisuse(
                "the context carries a listener that was not mapped into this worker; \
                 mark the field #[prefork(fd)] (or visit it in visit_fds)"
                    .into(),
            ));
        };
        if self.kind != want {
            return Err(Error::InvalidInheritedFd {
                fd,
                expected: want.describe(),
                found: format!("declared as a {}", self.kind.describe()),
            });
        }
        let mut claimed = claimed_fds();
        if !claimed.declared.contains(&fd) {
            return Err(Error::InvalidInheritedFd {
                fd,
                expected: want.describe(),
                found: "an fd this worker did not inherit".into(),
            });
        }
        if claimed.taken.contains(&fd) {
            return Err(Error::ListenerMisuse(format!(
                "inherited fd {fd} was already turned into a listener"
            )));
        }
        // `fd` is in `declared`, so it was open at worker start, and nothing closes it before
        // it is taken (it is not taken yet, and the claims lock is held).
        check_listener(crate::sys::borrow_inherited(fd), want)?;
        claimed.taken.insert(fd);
        drop(claimed);
        // The `taken` set, updated under the same lock, makes this the only owner of `fd`.
        Ok(crate::sys::own_inherited(fd))
    }
}

/// Binds the first address of `addr` that can be bound (see [`bind_one`]); the error names the
/// last one tried.
pub(crate) fn bind_first(addr: impl ToSocketAddrs, reuse_port: bool) -> Result<TcpListener> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| Error::Listen {
            addr: "the given address".into(),
            source,
        })?
        .collect();
    let mut last = None;
    for &a in &addrs {
        match bind_one(a, reuse_port) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((a, e)),
        }
    }
    Err(match last {
        Some((a, source)) => Error::Listen {
            addr: a.to_string(),
            source,
        },
        None => Error::Listen {
            addr: "the given address".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind"),
        },
    })
}

/// A listening TCP socket on `a`: `SO_REUSEADDR` (and `SO_REUSEPORT` if asked), a backlog of
/// [`DEFAULT_BACKLOG`], non-blocking.
pub(crate) fn bind_one(a: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&a.into())?;
    sock.listen(DEFAULT_BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Removes a socket file at `path` that nobody listens on any more. Anything else there (a
/// live socket, a file that is not a socket) is left alone, and `bind` then reports it.
pub(crate) fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // nothing there
    };
    if !meta.file_type().is_socket() {
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket file");
            std::fs::remove_file(path)
        }
        _ => Ok(()),
    }
}

/// Unix socket files this process bound, with the identity of each (device, inode).
static BOUND_UNIX_PATHS: Mutex<Vec<(std::path::PathBuf, u64, u64)>> = Mutex::new(Vec::new());

fn bound_unix_paths() -> std::sync::MutexGuard<'static, Vec<(std::path::PathBuf, u64, u64)>> {
    BOUND_UNIX_PATHS.lock().unwrap_or_else(|p| p.into_inner())
}

/// An exiting master removes the socket files it bound, if they are still the ones it bound.
pub(crate) fn unlink_bound_unix_paths() {
    use std::os::unix::fs::MetadataExt;
    for (path, dev, ino) in bound_unix_paths().drain(..) {
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Every listener made in this process, so that a stopping master can let go of them.
static MASTER_LISTENERS: Mutex<Vec<std::sync::Weak<OwnedFd>>> = Mutex::new(Vec::new());

fn master_listeners() -> std::sync::MutexGuard<'static, Vec<std::sync::Weak<OwnedFd>>> {
    MASTER_LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The listening sockets this process made that are still open (not released), for status.
pub(crate) fn master_listener_fds() -> Vec<Arc<OwnedFd>> {
    master_listeners()
        .iter()
        .filter_map(|w| w.upgrade())
        .collect()
}

/// A stopping master lets go of every listening socket it made (the numbers stay valid, on
/// `/dev/null`): once the workers closed theirs too, the socket is gone and new connections are
/// refused (which clients and load balancers retry elsewhere) instead of being accepted into a
/// queue nobody reads and reset later. Returns how many it let go.
pub(crate) fn release_master_listeners() -> usize {
    let mut list = master_listeners();
    let mut n = 0;
    for fd in list.drain(..).filter_map(|w| w.upgrade()) {
        match crate::sys::detach_fd(fd.as_raw_fd()) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(fd = fd.as_raw_fd(), error = %e,
                "cannot release a listening socket at shutdown"),
        }
    }
    n
}

/// fds declared by this worker's context, those already adopted, and those that are this
/// worker id's own sockets.
#[derive(Default)]
pub(crate) struct Claims {
    declared: BTreeSet<RawFd>,
    taken: BTreeSet<RawFd>,
    per_worker: BTreeSet<RawFd>,
}

static CLAIMS: Mutex<Claims> = Mutex::new(Claims {
    declared: BTreeSet::new(),
    taken: BTreeSet::new(),
    per_worker: BTreeSet::new(),
});

/// In a worker: whether inherited fd `fd` is this worker id's own socket (the boot header
/// says so).
pub(crate) fn is_per_worker_fd(fd: RawFd) -> bool {
    claimed_fds().per_worker.contains(&fd)
}

fn claimed_fds() -> std::sync::MutexGuard<'static, Claims> {
    CLAIMS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Worker start: records the declared fds, checks each is open, and makes it close-on-exec.
pub(crate) fn validate_declared(
    fds: &[(RawFd, ListenerKind)],
    nonblocking: &[RawFd],
    per_worker: &[RawFd],
) -> Result<()> {
    let mut claims = claimed_fds();
    for &(fd, kind) in fds {
        if crate::sys::set_cloexec_raw(fd).is_err() {
            return Err(Error::InvalidInheritedFd {
                fd,
                expected: kind.describe(),
                found: "not an open fd".into(),
            });
        }
        // Open (checked just above); the claims lock is held, so nothing takes it meanwhile.
        let borrowed = crate::sys::borrow_inherited(fd);
        check_listener(borrowed, kind)?;
        if nonblocking.contains(&fd) && !is_nonblocking(borrowed) {
            return Err(Error::InvalidInheritedFd {
                fd,
                expected: "non-blocking listening socket",
                found: "a blocking one (a sibling worker cleared O_NONBLOCK on the shared socket)"
                    .into(),
            });
        }
        claims.declared.insert(fd);
        if per_worker.contains(&fd) {
            claims.per_worker.insert(fd);
        }
    }
    Ok(())
}

/// Whether the open file behind `fd` has `O_NONBLOCK`.
fn is_nonblocking(fd: BorrowedFd<'_>) -> bool {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).is_ok_and(|fl| {
        nix::fcntl::OFlag::from_bits_truncate(fl).contains(nix::fcntl::OFlag::O_NONBLOCK)
    })
}

/// Checks that `fd` is a listening stream socket of `kind` (fstat, SO_TYPE, SO_ACCEPTCONN,
/// getsockname), the way systemd's socket activation helpers do.
pub(crate) fn check_listener(fd: BorrowedFd<'_>, kind: ListenerKind) -> Result<()> {
    let raw = fd.as_raw_fd();
    let bad = |found: String| Error::InvalidInheritedFd {
        fd: raw,
        expected: kind.describe(),
        found,
    };
    let st = nix::sys::stat::fstat(fd).map_err(|e| bad(format!("fstat failed: {e}")))?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
        return Err(bad(describe_mode(st.st_mode)));
    }
    let sock = socket2::SockRef::from(&fd);
    match sock.r#type() {
        Ok(t) if t == Type::STREAM => {}
        Ok(_) => return Err(bad("a socket that is not a stream socket".into())),
        Err(e) => return Err(bad(format!("SO_TYPE failed: {e}"))),
    }
    match sock.is_listener() {
        Ok(true) => {}
        Ok(false) => return Err(bad("a stream socket that is not listening".into())),
        Err(e) => return Err(bad(format!("SO_ACCEPTCONN failed: {e}"))),
    }
    let addr = sock
        .local_addr()
        .map_err(|e| bad(format!("getsockname failed: {e}")))?;
    let family_ok = match kind {
        ListenerKind::Tcp => addr.is_ipv4() || addr.is_ipv6(),
        ListenerKind::Unix => addr.is_unix(),
    };
    if !family_ok {
        let fam = if addr.is_unix() {
            "a Unix socket"
        } else if addr.is_ipv4() || addr.is_ipv6() {
            "an IP socket"
        } else {
            "a socket of another family"
        };
        return Err(bad(fam.into()));
    }
    Ok(())
}

fn describe_mode(mode: nix::libc::mode_t) -> String {
    use nix::libc::*;
    match mode & S_IFMT {
        S_IFREG => "a regular file",
        S_IFDIR => "a directory",
        S_IFCHR => "a character device",
        S_IFBLK => "a block device",
        S_IFIFO => "a pipe",
        S_IFLNK => "a symbolic link",
        _ => "not a socket",
    }
    .to_string()
}

/// Implemented by field types the derive can visit for inherited sockets:
/// [`InheritedListener`], and `Option`s and `Vec`s of it.
pub trait VisitFds {
    /// Calls `f` on each listener inside.
    fn visit_fds(&mut self, f: &mut dyn FnMut(&mut InheritedListener));
}

impl VisitFds for InheritedListener {
    fn visit_fds(&mut self, f: &mut dyn FnMut(&mut InheritedListener)) {
        f(self)
    }
}

impl<T: VisitFds> VisitFds for Option<T> {
    fn visit_fds(&mut self, f: &mut dyn FnMut(&mut InheritedListener)) {
        if let Some(v) = self {
            v.visit_fds(f)
        }
    }
}

impl<T: VisitFds> VisitFds for Vec<T> {
    fn visit_fds(&mut self, f: &mut dyn FnMut(&mut InheritedListener)) {
        for v in self {
            v.visit_fds(f)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Across an upgrade in place.

/// The listening sockets to hand to the next image: every one this process made or adopted
/// (but a reuseport group's), and every socket the service manager passed.
pub(crate) fn export_listeners() -> Vec<crate::upgrade::ListenerFd> {
    use crate::upgrade::ListenerFd;
    let from_systemd = crate::systemd::activation::passed_fds();
    let paths = bound_unix_paths().clone();
    // A reuseport group's sockets travel with their group (`reuseport::export_groups`).
    let in_groups = crate::reuseport::group_fds();
    let mut out: Vec<ListenerFd> = Vec::new();
    for fd in master_listener_fds() {
        if in_groups.contains(&fd.as_raw_fd()) {
            continue;
        }
        let sock = socket2::SockRef::from(&*fd);
        let local = sock.local_addr().ok();
        let addr = local
            .as_ref()
            .and_then(|a| a.as_socket())
            .map(|a| a.to_string());
        let path = local
            .as_ref()
            .and_then(|a| a.as_pathname())
            .map(Path::to_path_buf);
        let kind = if addr.is_some() {
            ListenerKind::Tcp
        } else {
            ListenerKind::Unix
        };
        let path_ident = path.as_ref().and_then(|p| {
            paths
                .iter()
                .find(|(q, _, _)| q == p)
                .map(|&(_, dev, ino)| (dev, ino))
        });
        out.push(ListenerFd {
            fd: fd.as_raw_fd(),
            kind,
            addr,
            path,
            path_ident,
            from_systemd: from_systemd.contains(&fd.as_raw_fd()),
        });
    }
    // Passed but not adopted (yet): kept open too, for the new code to adopt.
    for fd in from_systemd {
        if !out.iter().any(|l| l.fd == fd) {
            out.push(ListenerFd {
                fd,
                kind: ListenerKind::Tcp,
                addr: None,
                path: None,
                path_ident: None,
                from_systemd: true,
            });
        }
    }
    out
}

/// Listening sockets an old image handed over, and whether this image's code claimed each.
/// They are the master's listeners already (released at shutdown, shown by the status). A
/// claimed one stays here too until the adoption has succeeded: a failed adoption rolls back
/// to the old image, which needs every number open, even one the new code claimed and
/// dropped.
static INHERITED: Mutex<Vec<(crate::upgrade::ListenerFd, InheritedListener, bool)>> =
    Mutex::new(Vec::new());

type InheritedTable = Vec<(crate::upgrade::ListenerFd, InheritedListener, bool)>;

fn inherited() -> std::sync::MutexGuard<'static, InheritedTable> {
    INHERITED.lock().unwrap_or_else(|p| p.into_inner())
}

/// The adoption succeeded: the claimed sockets belong to the code that claimed them alone.
pub(crate) fn adoption_done() {
    inherited().retain(|(_, _, claimed)| !claimed);
}

/// Set in an image that adopted an old master's sockets.
static ADOPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In the new image: the sockets the old one handed over, for [`InheritedListener::bind_tcp`]
/// and [`InheritedListener::bind_unix`] to claim by address. Those the service manager passed
/// come back through `LISTEN_FDS` instead.
pub(crate) fn adopt_inherited(list: &[crate::upgrade::ListenerFd]) {
    ADOPTED.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        sockets = list.len(),
        "adopting the old master's listening sockets"
    );
    let mut table = inherited();
    for l in list.iter().filter(|l| !l.from_systemd) {
        // Close-on-exec again (workers get them only by dup2, as before); a number that is not
        // open is left out.
        if let Err(e) = crate::sys::set_cloexec_raw(l.fd) {
            tracing::warn!(fd = l.fd, error = %e,
                "a listening socket of the old master is not open; left out");
            continue;
        }
        if let Some((dev, ino)) = l.path_ident
            && let Some(path) = &l.path
        {
            bound_unix_paths().push((path.clone(), dev, ino));
        }
        // Checked open; the old image kept it open for this one, and the hand-over names each
        // number once: this is its only owner.
        let owned = crate::sys::own_inherited(l.fd);
        table.push((
            l.clone(),
            InheritedListener::from_owned(l.kind, owned),
            false,
        ));
    }
}

/// Takes the handed-over TCP socket bound to one of `addrs` (for a port of 0, the first one
/// on the same address: the old master's "any port" is the port it got).
fn claim_tcp(addrs: &[SocketAddr]) -> Option<InheritedListener> {
    let mut table = inherited();
    let matches = |l: &crate::upgrade::ListenerFd, a: &SocketAddr| {
        let Some(got) = l.addr.as_deref().and_then(|s| s.parse::<SocketAddr>().ok()) else {
            return false;
        };
        l.kind == ListenerKind::Tcp && (got == *a || (a.port() == 0 && got.ip() == a.ip()))
    };
    let i = addrs.iter().find_map(|a| {
        table
            .iter()
            .position(|(l, _, claimed)| !claimed && matches(l, a))
    })?;
    let (l, listener, claimed) = &mut table[i];
    *claimed = true;
    tracing::info!(fd = l.fd, addr = ?l.addr, "kept the old master's listening socket");
    Some(listener.clone())
}

/// Takes the handed-over Unix socket at `path`.
fn claim_unix(path: &Path) -> Option<InheritedListener> {
    let mut table = inherited();
    let i = table.iter().position(|(l, _, claimed)| {
        !claimed && l.kind == ListenerKind::Unix && l.path.as_deref() == Some(path)
    })?;
    let (l, listener, claimed) = &mut table[i];
    *claimed = true;
    tracing::info!(fd = l.fd, path = %path.display(), "kept the old master's listening socket");
    Some(listener.clone())
}

/// Closes the handed-over sockets this image's code did not claim; returns how many.
pub(crate) fn close_unclaimed_inherited() -> usize {
    let left = std::mem::take(&mut *inherited());
    let unclaimed: Vec<_> = left.iter().filter(|(_, _, claimed)| !claimed).collect();
    for (l, _, _) in &unclaimed {
        tracing::info!(fd = l.fd, addr = ?l.addr, path = ?l.path,
            "the new code did not use a listening socket of the old master; closed");
    }
    unclaimed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let mut l = InheritedListener::bind_tcp("127.0.0.1:0").unwrap();
        assert!(l.local_addr().unwrap().port() != 0);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"kind":"tcp","fd":null}"#
        );
        l.set_child_fd(3);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"kind":"tcp","fd":3}"#
        );
        let back: InheritedListener = serde_json::from_str(r#"{"kind":"unix","fd":4}"#).unwrap();
        assert_eq!(back.kind(), ListenerKind::Unix);
        assert_eq!(back.child_fd(), Some(4));
        assert!(back.master_fd().is_none());
    }

    #[test]
    fn master_side_cannot_adopt() {
        let l = InheritedListener::bind_tcp("127.0.0.1:0").unwrap();
        assert!(matches!(l.into_tcp(), Err(Error::ListenerMisuse(_))));
    }

    #[test]
    fn bind_errors_name_the_address() {
        let taken = InheritedListener::bind_tcp(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        // SO_REUSEADDR does not allow two listeners on one port.
        let e = InheritedListener::bind_tcp(("127.0.0.1", port)).unwrap_err();
        // The message says what failed; the source says why, once.
        assert_eq!(e.to_string(), format!("cannot listen on 127.0.0.1:{port}"));
        assert_eq!(
            e.report().to_string(),
            format!("cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)")
        );
    }

    #[test]
    fn check_listener_kinds() {
        let l = InheritedListener::bind_tcp("127.0.0.1:0").unwrap();
        let fd = l.master_fd().unwrap();
        check_listener(fd, ListenerKind::Tcp).unwrap();
        assert!(check_listener(fd, ListenerKind::Unix).is_err());
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = check_listener(f.as_fd(), ListenerKind::Tcp).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(check_listener(s.as_fd(), ListenerKind::Tcp).is_err());
    }
}
