//! How connections are served and how a stopping worker drains them.

use std::time::Duration;

/// The HTTP versions a server speaks.
///
/// Both serve HTTP/1.1 with keep-alive (and HTTP/1.0). Without TLS there is no ALPN, so HTTP/2
/// means *prior knowledge* (`h2c`): the client starts the connection with the HTTP/2 preface,
/// which a reverse proxy or a gRPC client does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 only, with hyper's HTTP/1 server directly. The default: it has no version
    /// detection on a connection's first bytes.
    #[default]
    Http1,
    /// HTTP/1.1 or HTTP/2, told apart by the connection's first bytes (hyper-util's automatic
    /// builder). An HTTP/2 connection is drained with `GOAWAY`, which clients handle without a
    /// race, as soon as the drain begins.
    Auto,
}

/// What [`serve`](crate::serve) and its async forms do with connections. Build it with the
/// setters from [`Options::default`]:
///
/// ```
/// use std::time::Duration;
/// use prefork_http::{Options, Protocol};
///
/// let options = Options::default()
///     .drain_grace(Duration::from_millis(500))
///     .drain_timeout(Duration::from_secs(30))
///     .protocol(Protocol::Auto);
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) drain_grace: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) protocol: Protocol,
    pub(crate) tcp_nodelay: bool,
    pub(crate) accept_linger: Duration,
    pub(crate) threads: Option<usize>,
}

impl Options {
    /// The default [`drain_grace`](Self::drain_grace): 1 s.
    pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(1);
    /// The default [`drain_timeout`](Self::drain_timeout): 10 s.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`accept_linger`](Self::accept_linger): 100 ms.
    pub const DEFAULT_ACCEPT_LINGER: Duration = Duration::from_millis(100);
    /// The default [`header_read_timeout`](Self::header_read_timeout): 10 s.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

    /// How long a connection may stay silent, once the drain began, before it is closed.
    ///
    /// Silent means no byte read or written and no request in flight; the time counts from the
    /// later of the drain's start and the connection's last activity. A keep-alive client that
    /// sends its next request within the grace gets it answered (with `Connection: close`), so
    /// a request is never lost to the race between the server closing an idle connection and
    /// the client reusing it. Default [`DEFAULT_DRAIN_GRACE`](Self::DEFAULT_DRAIN_GRACE).
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// How long the whole drain may take: once it passed, the remaining connections are
    /// dropped and the serve call returns. Keep it shorter than the master's
    /// `stop_timeout`, so the worker ends by itself rather than by `SIGKILL`. Default
    /// [`DEFAULT_DRAIN_TIMEOUT`](Self::DEFAULT_DRAIN_TIMEOUT).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long an HTTP/1 client may take to send a request's headers (`None`: no limit), so
    /// that a silent or trickling client cannot pin a connection forever. Default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`](Self::DEFAULT_HEADER_READ_TIMEOUT).
    pub fn header_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The HTTP versions to speak. Default [`Protocol::Http1`].
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Whether accepted TCP connections get `TCP_NODELAY` (no Nagle delay on small
    /// responses). Default `true`. Unix connections are not affected.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// How long a draining worker keeps accepting on its *own* listening sockets (a
    /// `ReuseportGroup`'s, see [`prefork_core::worker::is_per_worker_socket`]) after it was
    /// told to stop; it then accepts until their queue is empty, and closes them. (A socket
    /// shared by every worker is closed at once: the siblings accept what it queued.)
    ///
    /// When the worker's id was removed, the master has already steered new connections away
    /// from its socket; what is queued there, or completes its handshake within the linger, is
    /// accepted and served, with `Connection: close`. Default
    /// [`DEFAULT_ACCEPT_LINGER`](Self::DEFAULT_ACCEPT_LINGER).
    pub fn accept_linger(mut self, linger: Duration) -> Self {
        self.accept_linger = linger;
        self
    }

    /// The number of runtime threads [`serve`](crate::serve) builds, overriding the context's
    /// thread count ([`prefork_core::worker::threads`]); `None` (the default) keeps it, and
    /// tokio's default (one per CPU) applies when the context sets none either. The async
    /// entry points run in your runtime and ignore it.
    pub fn threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }
}

impl Default for Options {
    /// A grace of 1 s, a drain deadline of 10 s, a header read timeout of 10 s, HTTP/1.1,
    /// `TCP_NODELAY`, an accept linger of 100 ms, the context's thread count.
    fn default() -> Self {
        Options {
            drain_grace: Self::DEFAULT_DRAIN_GRACE,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            header_read_timeout: Some(Self::DEFAULT_HEADER_READ_TIMEOUT),
            protocol: Protocol::default(),
            tcp_nodelay: true,
            accept_linger: Self::DEFAULT_ACCEPT_LINGER,
            threads: None,
        }
    }
}
