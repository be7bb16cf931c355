//! Started processes that are always reaped, and their log lines as they come.
//!
//! [`Server`] owns one master process the benchmark started. Its standard error (where the
//! master and its workers log) goes to a file that a [`Log`] reads while the benchmark waits;
//! the timings come from the timestamps the processes wrote into their lines, not from when the
//! benchmark read them. Dropping a `Server` (at the end of a row, on an
//! error, on a panic) sends the master `SIGTERM`, waits a bounded time, `SIGKILL`s it, reaps it,
//! and then `SIGKILL`s every worker it was seen with that is still alive and orphaned (the
//! workers die with their master through `PR_SET_PDEATHSIG` anyway; this is the belt to those
//! braces). Each master also gets `PR_SET_PDEATHSIG(SIGTERM)`, so that even a benchmark killed
//! with `SIGKILL` leaves nothing running. Processes are only ever signalled by pid, never by
//! name.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use proc_kit::procfs;

use crate::clock;

/// One line of a process's standard error.
#[derive(Clone, Debug)]
pub struct Line {
    /// The text, without the newline.
    pub text: String,
}

impl Line {
    /// The value of `key=value` in a log line (`worker_id=3`, `pid=1234`).
    pub fn field(&self, key: &str) -> Option<&str> {
        let pat = format!(" {key}=");
        let start = self.text.find(&pat)? + pat.len();
        let rest = &self.text[start..];
        Some(rest.split_whitespace().next().unwrap_or(""))
    }

    /// The leading `secs.nanos` monotonic timestamp of a `bench-sleeper` log line, in ns.
    pub fn mono_ts(&self) -> Option<u64> {
        let tok = self.text.split_whitespace().next()?;
        let (s, n) = tok.split_once('.')?;
        if n.len() != 9 {
            return None;
        }
        Some(s.parse::<u64>().ok()? * 1_000_000_000 + n.parse::<u64>().ok()?)
    }

    /// The RFC 3339 timestamp (`2026-04-20T12:34:56.123456Z`) of a default `tracing` log line,
    /// as ns since the Unix epoch: the first word that is one, since the library's log writer
    /// puts the process first (`master 1234 …`, `worker 3 gen 2 pid 1240 …`).
    pub fn wall_ts(&self) -> Option<u64> {
        self.text
            .split_whitespace()
            .take(8)
            .find_map(clock::parse_rfc3339)
    }
}

#[derive(Debug, Default)]
struct LogInner {
    file: Option<std::fs::File>,
    partial: Vec<u8>,
    lines: Vec<Line>,
}

/// The lines a process wrote to its standard error, which is a file the benchmark reads.
///
/// A file, not a pipe: with a pipe, every log line would wake a reader thread of the benchmark
/// at the very moment being measured (a respawn logs three lines), and on 2 cores that thread
/// competes with the master and its new worker. The file is read only while the benchmark
/// waits for a line, every [`POLL`]; the timings come from the timestamps inside the lines.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    pid: i32,
    echo: Option<String>,
    inner: Mutex<LogInner>,
}

/// How often a waiting benchmark reads the log file.
pub const POLL: Duration = Duration::from_millis(1);

impl Log {
    fn new(path: PathBuf, pid: i32, echo: Option<String>) -> Log {
        let file = std::fs::File::open(&path).ok();
        Log {
            path,
            pid,
            echo,
            inner: Mutex::new(LogInner {
                file,
                ..LogInner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads what was appended since the last call.
    fn refresh(&self, g: &mut LogInner) {
        let Some(f) = g.file.as_mut() else { return };
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() || buf.is_empty() {
            return;
        }
        g.partial.extend_from_slice(&buf);
        while let Some(nl) = g.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = g.partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&raw).trim_end().to_string();
            if let Some(name) = &self.echo {
                eprintln!("[{name}] {text}");
            }
            g.lines.push(Line { text });
        }
    }

    /// True once the process is gone or a zombie (nothing more will be written).
    fn closed(&self) -> bool {
        procfs::stat(self.pid).is_none_or(|s| s.state == 'Z')
    }

    /// How many lines were written so far (a mark to search from).
    pub fn len(&self) -> usize {
        let mut g = self.lock();
        self.refresh(&mut g);
        g.lines.len()
    }

    /// Waits until `n` lines at index `from` or later satisfy `pred`, and returns them.
    pub fn wait_count(
        &self,
        from: usize,
        n: usize,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Line) -> bool,
    ) -> Result<Vec<Line>> {
        let end = Instant::now() + timeout;
        let mut found = Vec::new();
        let mut scanned = from;
        loop {
            let closed = self.closed();
            let mut g = self.lock();
            self.refresh(&mut g);
            while scanned < g.lines.len() {
                if pred(&g.lines[scanned]) {
                    found.push(g.lines[scanned].clone());
                    if found.len() >= n {
                        return Ok(found);
                    }
                }
                scanned += 1;
            }
            if Instant::now() >= end || closed {
                let tail: Vec<&str> = g
                    .lines
                    .iter()
                    .rev()
                    .take(8)
                    .rev()
                    .map(|l| l.text.as_str())
                    .collect();
                bail!(
                    "waited {timeout:?} for {what}: saw {} of {n} (process gone: {closed}); last lines:\n  {}",
                    found.len(),
                    tail.join("\n  ")
                );
            }
            drop(g);
            std::thread::sleep(POLL);
        }
    }

    /// As [`wait_count`](Self::wait_count) for one line.
    pub fn wait_line(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl FnMut(&Line) -> bool,
    ) -> Result<Line> {
        let mut v = self.wait_count(from, 1, timeout, what, pred)?;
        v.pop().context("no line")
    }

    /// Lines from index `from` on that satisfy `pred`, now.
    pub fn matching(&self, from: usize, pred: impl Fn(&Line) -> bool) -> Vec<Line> {
        let mut g = self.lock();
        self.refresh(&mut g);
        g.lines
            .iter()
            .skip(from)
            .filter(|l| pred(l))
            .cloned()
            .collect()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Warnings and errors the masters logged that a benchmark does not cause on purpose (a killed
/// worker's `worker exited; respawned` is expected): collected for the report's notes.
static UNEXPECTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Log lines at WARN or ERROR that no measurement caused on purpose, from every master so far.
pub fn unexpected_log_lines() -> Vec<String> {
    UNEXPECTED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn collect_unexpected(name: &str, log: &Log) {
    const EXPECTED: &[&str] = &["worker exited; respawned"];
    let lines = log.matching(0, |l| {
        (l.text.contains(" WARN ") || l.text.contains(" ERROR "))
            && !EXPECTED.iter().any(|e| l.text.contains(e))
    });
    if !lines.is_empty() {
        let mut u = UNEXPECTED.lock().unwrap_or_else(|p| p.into_inner());
        u.extend(lines.into_iter().map(|l| format!("{name}: {}", l.text)));
    }
}

/// A started master. Dropping it stops and reaps it and its workers.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pid: i32,
    name: String,
    /// Its standard error (master and workers), line by line.
    pub log: Log,
    seen: Vec<i32>,
    /// The program's file name: cleanup signals only processes running it.
    prog: String,
    /// When `spawn` was called (`CLOCK_MONOTONIC`, ns).
    pub started_ns: u64,
}

impl Server {
    /// Starts `cmd` with standard error appended to a temporary file that [`Log`] reads, and
    /// standard input/output on /dev/null.
    pub fn start(mut cmd: Command, name: &str) -> Result<Server> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "prefork-bench-{}-{}-{name}.log",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let err = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let err = {
            // Re-open for appending: the master and its workers all write through it.
            drop(err);
            std::fs::OpenOptions::new().append(true).open(&path)?
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        // If the benchmark itself is killed (no Drop runs then), the master gets SIGTERM and
        // stops its workers. Servers are started from the main thread, which lives as long as
        // the benchmark (the death signal follows the thread that forked).
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let echo = std::env::var_os("BENCH_ECHO").map(|_| name.to_string());
        let started_ns = clock::mono_ns();
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e).with_context(|| format!("cannot start {name}"));
            }
        };
        let pid = child.id() as i32;
        let prog = std::path::Path::new(cmd.get_program())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Server {
            prog,
            child: Some(child),
            pid,
            name: name.to_string(),
            log: Log::new(path, pid, echo),
            seen: Vec::new(),
            started_ns,
        })
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.pid), sig)
            .with_context(|| format!("kill({}, {sig}) of {}", self.pid, self.name))
    }

    /// Waits for the `listening on http://ADDR` line and returns the address.
    pub fn addr(&self, timeout: Duration) -> Result<SocketAddr> {
        let l = self
            .log
            .wait_line(0, timeout, "the listening address", |l| {
                l.text.contains("listening on http://")
            })?;
        let tail = l
            .text
            .rsplit("listening on http://")
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches('/');
        tail.parse()
            .with_context(|| format!("cannot parse an address in {:?}", l.text))
    }

    /// The live workers by `id=`; remembered for cleanup.
    pub fn workers(&mut self) -> std::collections::BTreeMap<String, i32> {
        let w = procfs::workers_by_arg(self.pid, "id");
        for &p in w.values() {
            if !self.seen.contains(&p) {
                self.seen.push(p);
            }
        }
        w
    }

    /// Remembers `pid` as one of this master's workers, for cleanup.
    pub fn remember(&mut self, pid: i32) {
        if !self.seen.contains(&pid) {
            self.seen.push(pid);
        }
    }

    /// Stops the master with `SIGTERM` and waits (bounded) until it exited; a prefork master
    /// must exit with status 0 (a plain server, `bench-baseline`, may die of the signal). The
    /// guard is then spent.
    pub fn stop(mut self, timeout: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        collect_unexpected(&self.name, &self.log);
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                use std::os::unix::process::ExitStatusExt;
                let plain = self.prog == "bench-baseline";
                if !(st.success() || plain && st.signal() == Some(libc::SIGTERM)) {
                    bail!("{} exited with {st} after SIGTERM", self.name);
                }
                return Ok(());
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not stop within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            collect_unexpected(&self.name, &self.log);
            for p in procfs::children_of(self.pid) {
                if !self.seen.contains(&p) {
                    self.seen.push(p);
                }
            }
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers die with their master (PR_SET_PDEATHSIG); make sure, by pid, of those still
        // alive and orphaned (re-parented to init or a subreaper, i.e. no longer the master's).
        for &p in &self.seen {
            if procfs::stat(p).is_some_and(|s| s.state != 'Z' && s.ppid != self.pid)
                && procfs::cmdline(p).is_some_and(|a| {
                    let prefork = a.first().is_some_and(|p0| p0.ends_with(&self.prog))
                        && a.iter().any(|x| x.starts_with("id="));
                    let nginx = self.prog == "nginx"
                        && a.first().is_some_and(|p0| p0.starts_with("nginx: worker"));
                    prefork || nginx
                })
            {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}

/// Waits until `child` exits, at most `timeout`; then kills and reaps it, and fails.
pub fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a command to completion with a bounded time and returns its standard output.
pub fn run_output(mut cmd: Command, timeout: Duration, what: &str) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let mut out = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let status = wait_bounded(&mut child, timeout, what)?;
    let s = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_ts_reads_past_the_process_prefix() {
        let plain = Line {
            text: "2026-12-01T03:31:26.060592Z DEBUG prefork_core: worker ready pid=1".into(),
        };
        let master = Line {
            text: format!("master 28594 {}", plain.text),
        };
        let worker = Line {
            text: "worker 3 gen 2 pid 1240 2026-12-01T03:31:26.060592Z  INFO x: drained".into(),
        };
        let t = plain.wall_ts();
        assert!(t.is_some());
        assert_eq!(master.wall_ts(), t);
        assert_eq!(worker.wall_ts(), t);
        assert_eq!(
            Line {
                text: "no time here".into()
            }
            .wall_ts(),
            None
        );
    }
}
