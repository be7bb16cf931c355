//! Log sinks that fail or stall, for the tests of a master whose standard error is not a
//! well-behaved terminal: a pipe whose reader stops reading, or goes away, or `/dev/full`.
//!
//! The [`Master`](crate::Master) guard pipes the program's standard error and always reads it.
//! To give the program another standard error, [`stderr_to`] makes the child `dup2` an fd onto
//! 2 just before its `exec` (after std set up the guard's pipes), so the guard still starts,
//! watches and reaps the process, and its `stderr` lines simply stay empty.
//!
//! A [`LogPipe`] is a pipe the test holds the read end of: unread, it fills (its capacity is
//! set as small as the kernel allows, one page, so a few log lines fill it); dropped, every
//! write into it fails with `EPIPE`; resumed, a thread reads it line by line from then on.
//!
//! When writing works again, the master is expected to report how many log lines it dropped:
//! [`DROPPED_MARKER`] and [`dropped_count`] say what that line looks like, in one place.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A word every "log lines were dropped" report contains (the master's, once writing works
/// again), e.g. `prefork: 37 log lines dropped` or `WARN … log lines dropped dropped=37`.
pub const DROPPED_MARKER: &str = "dropped";

/// The number of dropped lines a report states, or `None` if `line` is not such a report.
///
/// A report is a line that contains [`DROPPED_MARKER`] and a positive count: the first
/// whitespace-separated token that is a number, after stripping any `key=` prefix and
/// surrounding punctuation (`37`, `dropped=37`, `(37)`), skipping `pid=` fields. A tracing
/// timestamp (`2026-11-21T16:00:47Z`) is not a number.
pub fn dropped_count(line: &str) -> Option<u64> {
    if !line.contains(DROPPED_MARKER) {
        return None;
    }
    line.split_whitespace()
        .filter_map(|tok| {
            let (key, val) = match tok.split_once('=') {
                Some((k, v)) => (k, v),
                None => ("", tok),
            };
            if key.ends_with("pid") {
                return None;
            }
            let val = val.trim_matches(|c: char| !c.is_ascii_digit());
            val.parse::<u64>().ok()
        })
        .find(|&n| n > 0)
}

/// Makes the process `cmd` starts have `fd` as its standard error (fd 2). `fd` must stay open
/// in this process until the spawn; the child's copy is the only one it keeps.
pub fn stderr_to(cmd: &mut Command, fd: &impl AsRawFd) {
    crate::inherit_fd(cmd, fd.as_raw_fd(), 2);
}

/// `/dev/full` opened for writing: every write fails with `ENOSPC`.
pub fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("cannot open /dev/full")
}

/// A pipe to be a process's standard error, whose read end this test controls.
#[derive(Debug)]
pub struct LogPipe {
    read: Option<OwnedFd>,
    write: Option<OwnedFd>,
    capacity: usize,
}

impl LogPipe {
    /// A new pipe with the smallest capacity the kernel allows (one page), both ends
    /// close-on-exec.
    pub fn new() -> LogPipe {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
        // SAFETY: fcntl on a pipe this function owns; no memory is passed. The kernel rounds
        // the size up to a page and refuses nothing below the current content (empty here).
        let got = unsafe { nix::libc::fcntl(w.as_raw_fd(), nix::libc::F_SETPIPE_SZ, 4096) };
        assert!(got > 0, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
        LogPipe {
            read: Some(r),
            write: Some(w),
            capacity: got as usize,
        }
    }

    /// The pipe's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes `cmd`'s standard error this pipe's write end (see [`stderr_to`]). Call
    /// [`LogPipe::spawned`] once the process started.
    pub fn attach(&self, cmd: &mut Command) {
        stderr_to(cmd, self.write.as_ref().expect("already spawned"));
    }

    /// Closes this process's copy of the write end: from now on only the child (and what it
    /// starts) holds it.
    pub fn spawned(&mut self) {
        self.write = None;
    }

    /// Bytes written and not read yet (`FIONREAD`); 0 once the read end is gone.
    pub fn unread(&self) -> usize {
        let Some(r) = &self.read else { return 0 };
        let mut n: nix::libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
        let rc = unsafe { nix::libc::ioctl(r.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
        if rc < 0 { 0 } else { n as usize }
    }

    /// The reader goes away (a log shipper that exits): every later write gets `EPIPE`.
    pub fn close_reader(&mut self) {
        self.read = None;
    }

    /// Starts reading, line by line, in a thread, until end-of-file. Returns the lines.
    pub fn resume(&mut self) -> LogLines {
        let r = self
            .read
            .take()
            .expect("the reader was closed or resumed already");
        let lines = LogLines::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            let mut rd = BufReader::new(std::fs::File::from(r));
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match rd.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&buf)
                            .trim_end_matches('\n')
                            .to_string();
                        if std::env::var_os("TESTKIT_ECHO").is_some() {
                            eprintln!("[logpipe] {s}");
                        }
                        let (m, c) = &*l.inner;
                        m.lock().unwrap().push(s);
                        c.notify_all();
                    }
                }
            }
        });
        lines
    }
}

impl Default for LogPipe {
    fn default() -> Self {
        LogPipe::new()
    }
}

/// Lines read from a resumed [`LogPipe`].
#[derive(Clone, Debug, Default)]
pub struct LogLines {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl LogLines {
    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    /// The first line satisfying `pred` within `deadline`, or `None`.
    pub fn wait_line(&self, deadline: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + deadline;
        let (m, c) = &*self.inner;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            g = c.wait_timeout(g, end - now).unwrap().0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dropped_count;

    #[test]
    fn dropped_reports_are_recognised() {
        assert_eq!(dropped_count("prefork: 37 log lines dropped"), Some(37));
        assert_eq!(
            dropped_count(
                "2026-11-21T16:00:47.139117Z  WARN prefork_core::log: log lines dropped \
                 dropped=37 pid=4242"
            ),
            Some(37)
        );
        assert_eq!(dropped_count("prefork: dropped (12) lines"), Some(12));
        assert_eq!(
            dropped_count("worker exited pid=12 status=exit status 0"),
            None
        );
        assert_eq!(dropped_count("pid=12 dropped 0"), None);
    }
}
