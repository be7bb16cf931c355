//! The sockets a server accepts on: TCP and Unix, inherited or not.
//!
//! A listener a prefork worker inherits is one open file shared by the master and every
//! sibling; its `O_NONBLOCK` flag is shared too. The master sets it once, before the first
//! spawn, and nothing here changes it: a listener handed in blocking is refused with an error
//! (tokio would otherwise block a runtime thread in `accept`), never switched.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::task::{Context, Poll};

use prefork_core::{InheritedListener, ListenerKind};

/// A listening socket to serve on: TCP or Unix stream, in non-blocking mode.
///
/// Usually made for you: pass an [`InheritedListener`], an `Option<InheritedListener>`, a
/// `Vec` of them, or std or tokio listeners straight to [`serve`](crate::serve) (see
/// [`IntoListeners`]).
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener (IPv4 or IPv6).
    Tcp(TcpListener),
    /// A Unix-domain stream listener.
    Unix(UnixListener),
}

impl Listener {
    /// Its fd number.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Listener::Tcp(t) => t.as_raw_fd(),
            Listener::Unix(u) => u.as_raw_fd(),
        }
    }
}

/// Anything that can become one [`Listener`].
///
/// Implemented for [`Listener`], [`InheritedListener`] (in a worker: adopts the inherited fd
/// after checking it is a listening socket of its declared kind), std's and tokio's TCP and
/// Unix listeners. A std listener must already be non-blocking
/// (`set_nonblocking(true)`); the inherited ones are, the master made them so.
pub trait IntoListener {
    /// Converts, or says why not.
    fn into_listener(self) -> io::Result<Listener>;
}

impl IntoListener for Listener {
    fn into_listener(self) -> io::Result<Listener> {
        Ok(self)
    }
}

impl IntoListener for TcpListener {
    fn into_listener(self) -> io::Result<Listener> {
        Ok(Listener::Tcp(self))
    }
}

impl IntoListener for UnixListener {
    fn into_listener(self) -> io::Result<Listener> {
        Ok(Listener::Unix(self))
    }
}

impl IntoListener for tokio::net::TcpListener {
    fn into_listener(self) -> io::Result<Listener> {
        self.into_std().map(Listener::Tcp)
    }
}

impl IntoListener for tokio::net::UnixListener {
    fn into_listener(self) -> io::Result<Listener> {
        self.into_std().map(Listener::Unix)
    }
}

impl IntoListener for InheritedListener {
    fn into_listener(self) -> io::Result<Listener> {
        let r = match self.kind() {
            ListenerKind::Unix => self.into_unix().map(Listener::Unix),
            ListenerKind::Tcp => self.into_tcp().map(Listener::Tcp),
        };
        r.map_err(io::Error::other)
    }
}

/// What [`serve`](crate::serve) and its async forms take: one listener or several.
///
/// Implemented for every [`IntoListener`] type (one listener), and for an `Option`, a `Vec` or
/// an array of one of them. The `Option` is what a context field
/// `#[prefork(fd)] listener: Option<InheritedListener>` holds; serving `None` is an error.
pub trait IntoListeners {
    /// Converts every listener, or says why one cannot be.
    fn into_listeners(self) -> io::Result<Vec<Listener>>;
}

macro_rules! one_listener {
    ($($t:ty),*) => {$(
        impl IntoListeners for $t {
            fn into_listeners(self) -> io::Result<Vec<Listener>> {
                Ok(vec![self.into_listener()?])
            }
        }
    )*};
}

one_listener!(
    Listener,
    TcpListener,
    UnixListener,
    tokio::net::TcpListener,
    tokio::net::UnixListener,
    InheritedListener
);

impl<T: IntoListener> IntoListeners for Option<T> {
    fn into_listeners(self) -> io::Result<Vec<Listener>> {
        self.into_iter().map(T::into_listener).collect()
    }
}

impl<T: IntoListener> IntoListeners for Vec<T> {
    fn into_listeners(self) -> io::Result<Vec<Listener>> {
        self.into_iter().map(T::into_listener).collect()
    }
}

impl<T: IntoListener, const N: usize> IntoListeners for [T; N] {
    fn into_listeners(self) -> io::Result<Vec<Listener>> {
        self.into_iter().map(T::into_listener).collect()
    }
}

/// A listener registered with the runtime.
#[derive(Debug)]
pub(crate) enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// A connection accepted by a [`Bound`].
#[derive(Debug)]
pub(crate) enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Bound {
    /// Registers `l` with the current runtime's reactor, refusing a blocking socket.
    pub(crate) fn register(l: Listener) -> io::Result<Bound> {
        let blocking = match &l {
            Listener::Tcp(t) => is_blocking(t)?,
            Listener::Unix(u) => is_blocking(u)?,
        };
        if blocking {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the listener is in blocking mode; set it non-blocking before serving \
                 (a listener bound by the prefork master already is)",
            ));
        }
        Ok(match l {
            Listener::Tcp(t) => Bound::Tcp(tokio::net::TcpListener::from_std(t)?),
            Listener::Unix(u) => Bound::Unix(tokio::net::UnixListener::from_std(u)?),
        })
    }

    /// Its address, for the logs.
    pub(crate) fn describe(&self) -> String {
        match self {
            Bound::Tcp(t) => match t.local_addr() {
                Ok(a) => format!("http://{a}"),
                Err(_) => "tcp".into(),
            },
            Bound::Unix(u) => match u
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            {
                Some(p) => format!("unix:{p}"),
                None => "unix".into(),
            },
        }
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        match self {
            Bound::Tcp(t) => t.poll_accept(cx).map_ok(|(s, _)| Accepted::Tcp(s)),
            Bound::Unix(u) => u.poll_accept(cx).map_ok(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// Polls every listener once, starting after the one that accepted last (so that one busy
/// listener cannot starve the others), and returns the first connection.
pub(crate) fn poll_accept_any(
    listeners: &[Bound],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Accepted>> {
    let n = listeners.len();
    for k in 0..n {
        let i = (*next + k) % n;
        if let Poll::Ready(r) = listeners[i].poll_accept(cx) {
            *next = (i + 1) % n;
            return Poll::Ready(r);
        }
    }
    Poll::Pending
}

/// `fcntl(F_GETFL)`: whether `O_NONBLOCK` is clear.
fn is_blocking(fd: &impl AsFd) -> io::Result<bool> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    Ok(!OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK))
}
