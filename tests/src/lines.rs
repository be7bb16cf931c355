//! Lines captured from a process's output as they come, and what the tests look for in them.
//!
//! A thread per stream reads it to end-of-file and appends each line under a mutex; a condvar
//! wakes the tests waiting for a line, so a wait ends as soon as the line is there and panics at
//! its deadline with everything seen so far.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// The lines so far and whether the stream closed, with a condvar signalled on each change.
type LineState = Arc<(Mutex<(Vec<String>, bool)>, Condvar)>;

/// Lines captured from one output stream of a process.
#[derive(Clone, Debug, Default)]
pub struct Lines {
    inner: LineState,
}

impl Lines {
    pub(crate) fn capture(stream: impl Read + Send + 'static, echo: &'static str) -> Self {
        let lines = Lines::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&buf)
                            .trim_end_matches('\n')
                            .to_string();
                        if std::env::var_os("TESTKIT_ECHO").is_some() {
                            eprintln!("[{echo}] {s}");
                        }
                        let (m, c) = &*l.inner;
                        m.lock().unwrap().0.push(s);
                        c.notify_all();
                    }
                }
            }
            let (m, c) = &*l.inner;
            m.lock().unwrap().1 = true;
            c.notify_all();
        });
        lines
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().0.clone()
    }

    /// True once the stream reached end-of-file.
    pub fn closed(&self) -> bool {
        self.inner.0.lock().unwrap().1
    }

    /// Waits until a line satisfies `pred`; returns the first such line. Panics after
    /// `deadline`, showing what was seen.
    pub fn wait_line(&self, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_count(deadline, 1, &pred).swap_remove(0)
    }

    /// Waits until `n` lines satisfy `pred`; returns them.
    pub fn wait_count(
        &self,
        deadline: Duration,
        n: usize,
        pred: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let end = Instant::now() + deadline;
        let (m, c) = &*self.inner;
        let mut g = m.lock().unwrap();
        loop {
            let found: Vec<String> = g.0.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let now = Instant::now();
            if now >= end || (g.1 && found.len() < n) {
                let msg = format!(
                    "wanted {n} matching line(s), saw {} (stream closed: {}); all lines:\n{}",
                    found.len(),
                    g.1,
                    g.0.join("\n")
                );
                // Not while holding the lock: a poisoned mutex would make every later look at
                // the lines (a diagnosis printed on the way out) panic again.
                drop(g);
                panic!("{msg}");
            }
            g = c.wait_timeout(g, end - now).unwrap().0;
        }
    }

    /// How many lines satisfy `pred` now.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.inner
            .0
            .lock()
            .unwrap()
            .0
            .iter()
            .filter(|l| pred(l))
            .count()
    }
}

/// Finds `listening on …:PORT` in captured lines and returns the address.
pub fn listening_addr(lines: &Lines) -> SocketAddr {
    let l = lines.wait_line(DEADLINE, |l| l.contains("listening on "));
    let tail = l.rsplit("listening on ").next().unwrap().trim();
    let tail = tail.trim_start_matches("http://").trim_end_matches('/');
    tail.parse()
        .unwrap_or_else(|e| panic!("cannot parse address from {l:?}: {e}"))
}
