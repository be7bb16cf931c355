//! Logging that never blocks and never panics: the library's writer for standard error, and
//! the default subscriber that [`default_main`](crate::default_main) installs.
//!
//! # Why a writer of its own
//!
//! A master that blocks in `write(2)` on a stalled log reader stops reaping, respawning and
//! answering signals; one that panics on `EPIPE` (a log shipper restarting) or `ENOSPC` (a full
//! disk) takes every worker down with it through their parent-death signal. So every line goes
//! through [`LogWriter`], which:
//!
//! * writes without blocking: a pipe or a terminal on standard error is opened again through
//!   `/proc/self/fd/2` with `O_NONBLOCK` (a new open file description, so the flag does not
//!   leak to the processes that share the pipe), a socket is written with `MSG_DONTWAIT`, a
//!   regular file plainly (it never waits for a reader);
//! * drops a line that does not fit or fails, counts it, and writes
//!   `prefork: N log lines dropped` before the next line that gets through;
//! * prefixes each line with the process that wrote it (`master 1234` or
//!   `worker 3 gen 2 pid 1240`), set by the library when the role is known.
//!
//! Workers that use the default subscriber (or this writer) behave the same.
//!
//! # Use it in your own subscriber
//!
//! ```no_run
//! tracing_subscriber::fmt()
//!     .with_writer(prefork_core::log::LogWriter::default())
//!     .init();
//! ```

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use nix::sys::stat::SFlag;

/// How lines reach standard error.
#[derive(Debug)]
enum Sink {
    /// A new non-blocking open file description of the pipe or terminal.
    Reopened(OwnedFd),
    /// A socket (`MSG_DONTWAIT`).
    Socket,
    /// A regular file or anything else: plain writes to fd 2.
    Plain,
}

#[derive(Debug)]
struct State {
    sink: Sink,
    dropped: AtomicU64,
    label: OnceLock<String>,
}

static STATE: OnceLock<State> = OnceLock::new();

fn state() -> &'static State {
    STATE.get_or_init(|| State {
        sink: open_sink(),
        dropped: AtomicU64::new(0),
        label: OnceLock::new(),
    })
}

fn open_sink() -> Sink {
    let Ok(st) = nix::sys::stat::fstat(io::stderr().as_fd()) else {
        return Sink::Plain;
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFSOCK {
        return Sink::Socket;
    }
    if (kind == SFlag::S_IFIFO || kind == SFlag::S_IFCHR)
        && let Ok(f) = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open("/proc/self/fd/2")
    {
        return Sink::Reopened(OwnedFd::from(f));
    }
    Sink::Plain
}

/// Sets the label that starts every line of this process (once; later calls are ignored).
pub(crate) fn set_label(label: String) {
    let _ = state().label.set(label);
}

/// Writes `bytes` without blocking; true if all of it was written.
fn write_now(sink: &Sink, bytes: &[u8]) -> bool {
    let stderr = io::stderr();
    let fd: BorrowedFd<'_> = match sink {
        Sink::Reopened(fd) => fd.as_fd(),
        Sink::Socket | Sink::Plain => stderr.as_fd(),
    };
    let mut done = 0;
    while done < bytes.len() {
        let r = match sink {
            Sink::Socket => nix::sys::socket::send(
                fd.as_raw_fd(),
                &bytes[done..],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ),
            _ => nix::unistd::write(fd, &bytes[done..]),
        };
        match r {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
    true
}

/// Writes one complete line (with the process's label if `labelled`), or counts it as dropped.
fn emit(line: &[u8], labelled: bool) {
    let st = state();
    let dropped = st.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        let note =
            format!("prefork: {dropped} log lines dropped (standard error was not writable)\n");
        if !write_now(&st.sink, note.as_bytes()) {
            st.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        st.dropped.fetch_sub(dropped, Ordering::Relaxed);
    }
    let mut buf = Vec::with_capacity(line.len() + 32);
    if let Some(label) = st.label.get().filter(|_| labelled) {
        buf.extend_from_slice(label.as_bytes());
        buf.push(b' ');
    }
    buf.extend_from_slice(line);
    if !buf.ends_with(b"\n") {
        buf.push(b'\n');
    }
    if !write_now(&st.sink, &buf) {
        st.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many lines this process has dropped and not yet reported.
pub fn dropped_lines() -> u64 {
    state().dropped.load(Ordering::Relaxed)
}

/// One line outside any subscriber (a boot failure, the master's last error), through the
/// same non-blocking path, without the label (the line says who wrote it).
pub(crate) fn emergency_line(line: &str) {
    emit(line.as_bytes(), false);
}

/// A [`tracing_subscriber::fmt::MakeWriter`] for standard error that never blocks and never
/// fails (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

/// The writer of one event: it collects the formatted event and emits it whole on drop, so a
/// line is written with one system call and never interleaved.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            emit(&self.buf, true);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer::default()
    }
}

/// Installs the library's default subscriber, unless the program already set one: `RUST_LOG`
/// filtering (default `info`), no colours unless standard error is a terminal, lines written
/// by [`LogWriter`]. Returns true if it installed it.
pub fn init_default() -> bool {
    if tracing::dispatcher::has_been_set() {
        return false;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()))
        .with_writer(LogWriter)
        .try_init()
        .is_ok()
}
