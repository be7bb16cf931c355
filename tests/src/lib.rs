//! Test kit for black-box tests of prefork programs: start a master, read its output as it
//! comes, look at its processes through `/proc`, talk HTTP to it, and always clean up.
//!
//! The rules it enforces: wait for conditions with a deadline (never a bare sleep), signal only
//! processes this test started (by pid), and reap everything, even when the test fails
//! (the [`Master`] guard does it in `Drop`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod fx;
pub mod load;

pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;

/// A generous default deadline for conditions on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` every 10 ms until it returns `Some`, or panics after `deadline` naming `what`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// As [`wait_for`], for a condition.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for(deadline, what, || f().then_some(()))
}

/// The lines so far and whether the stream closed, with a condvar signalled on each change.
type LineState = Arc<(Mutex<(Vec<String>, bool)>, Condvar)>;

/// Lines captured from one output stream of a process.
#[derive(Clone, Debug, Default)]
pub struct Lines {
    inner: LineState,
}

impl Lines {
    fn capture(stream: impl Read + Send + 'static, echo: &'static str) -> Self {
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
                panic!(
                    "wanted {n} matching line(s), saw {} (stream closed: {}); all lines:\n{}",
                    found.len(),
                    g.1,
                    g.0.join("\n")
                );
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

/// A started master process. `Drop` stops it and everything it started, and reaps it.
#[derive(Debug)]
pub struct Master {
    child: Option<Child>,
    /// Its standard output, line by line.
    pub stdout: Lines,
    /// Its standard error, line by line.
    pub stderr: Lines,
    pid: Pid,
    seen_descendants: Arc<Mutex<Vec<i32>>>,
}

impl Master {
    /// Starts `cmd` with piped stdout/stderr (and stdin from /dev/null).
    pub fn start(mut cmd: Command) -> Master {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() && !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("cannot start the master under test");
        let stdout = Lines::capture(child.stdout.take().unwrap(), "out");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "err");
        let pid = Pid::from_raw(child.id() as i32);
        Master {
            child: Some(child),
            stdout,
            stderr,
            pid,
            seen_descendants: Arc::default(),
        }
    }

    /// Starts `program` with `args`, as [`Master::start`] does.
    pub fn start_program(program: impl AsRef<OsStr>, args: &[&str]) -> Master {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Master::start(cmd)
    }

    /// The master's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(self.pid, sig).expect("kill(master)");
    }

    /// The master's live children (not zombies), remembered for cleanup.
    pub fn workers(&self) -> Vec<i32> {
        let kids: Vec<i32> = children_of(self.pid.as_raw())
            .into_iter()
            .filter(|&p| state(p).is_some_and(|s| s != 'Z'))
            .collect();
        let mut seen = self.seen_descendants.lock().unwrap();
        for k in &kids {
            if !seen.contains(k) {
                seen.push(*k);
            }
        }
        kids
    }

    /// Live workers by the value of their `key=` argument (e.g. `id` → {"0": pid, …}).
    pub fn workers_by_arg(&self, key: &str) -> BTreeMap<String, i32> {
        let prefix = format!("{key}=");
        self.workers()
            .into_iter()
            .filter_map(|p| {
                let argv = cmdline(p)?;
                let v = argv
                    .iter()
                    .find_map(|a| a.strip_prefix(&prefix))?
                    .to_string();
                Some((v, p))
            })
            .collect()
    }

    /// Waits until exactly `n` live workers show `key=` arguments, and returns them.
    pub fn wait_workers(&self, n: usize, key: &str) -> BTreeMap<String, i32> {
        wait_for(DEADLINE, &format!("{n} workers with {key}=…"), || {
            let w = self.workers_by_arg(key);
            (w.len() == n && self.workers().len() == n).then_some(w)
        })
    }

    /// Waits until every worker of `before` (id → pid, as [`Master::wait_workers`] returns it)
    /// has been replaced: as many live workers as before, all showing `id=`, none of them with
    /// its id's old pid. Returns the new id → pid.
    pub fn wait_replaced(&self, before: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
        wait_for(DEADLINE, "every worker replaced", || {
            let now = self.workers_by_arg("id");
            (now.len() == before.len()
                && self.workers().len() == before.len()
                && now.iter().all(|(id, pid)| before.get(id) != Some(pid)))
            .then_some(now)
        })
    }

    /// Waits for the master to exit and returns its status (code, or 128+signal).
    pub fn wait_exit(&mut self, deadline: Duration) -> i32 {
        let child = self.child.as_mut().expect("already reaped");
        let status = wait_for(deadline, "the master to exit", || child.try_wait().unwrap());
        self.child = None;
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    }

    /// Waits until the master's stdout and stderr reached end-of-file (every process holding
    /// them exited), so every line they wrote has been captured.
    pub fn wait_output_closed(&self, deadline: Duration) {
        wait_until(deadline, "the master's output to close", || {
            self.stdout.closed() && self.stderr.closed()
        });
    }

    /// True while the master has not exited.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().unwrap().is_none(),
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let mut victims = self.seen_descendants.lock().unwrap().clone();
        if let Some(mut child) = self.child.take() {
            victims.extend(children_of(self.pid.as_raw()));
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers die with their master (PDEATHSIG); make sure of it for the ones we saw, by
        // pid, only while they are still children of nobody we do not know (ppid 1 or gone).
        for p in victims {
            if state(p).is_some() && ppid(p).is_none_or(|pp| pp == 1 || pp == self.pid.as_raw()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is before it): the
/// clock of the `at <unix ms>` in the fixture's start lines.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new path in the system temp dir, unique to this process and call:
/// `prefork-<tag>-<pid>-<n>-<unix ns>`.
fn temp_path(tag: &str) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("prefork-{tag}-{}-{n}-{nanos}", std::process::id()))
}

/// A path for a file in the system temp dir, unique to the test; the file (not created until
/// [`TempFile::write`]) is removed on drop.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// A new path named after `tag`.
    pub fn new(tag: &str) -> TempFile {
        TempFile(temp_path(tag))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates the file or replaces its content; panics on failure.
    pub fn write(&self, content: impl AsRef<[u8]>) {
        std::fs::write(&self.0, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.0.display()));
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory created in the system temp dir, unique to the test, removed with everything in
/// it on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a new directory named after `tag`; panics on failure.
    pub fn new(tag: &str) -> TempDir {
        let p = temp_path(tag);
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        TempDir(p)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes the process that `cmd` starts inherit this process's open `fd` as fd `target`, without
/// close-on-exec (with `fd == target`, it only clears close-on-exec). `fd` must stay open until
/// the spawn.
pub fn inherit_fd(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child before exec; it only calls dup2 and fcntl,
    // which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // dup2(fd, fd) would keep close-on-exec: clear it explicitly too.
            if nix::libc::dup2(fd, target) < 0
                || nix::libc::fcntl(target, nix::libc::F_SETFD, 0) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `/proc/<pid>/stat` fields after the command name: (state, ppid).
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let st = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((st, ppid))
}

/// The process state letter (`R`, `S`, `Z`, …), or `None` if the pid does not exist.
pub fn state(pid: i32) -> Option<char> {
    stat(pid).map(|s| s.0)
}

/// The parent pid.
pub fn ppid(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.1)
}

/// True if the pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

/// All pids whose parent is `parent` (zombies included).
///
/// Reads `/proc/<parent>/task/<parent>/children`, an atomic snapshot of the children of the
/// parent's main thread (the master spawns from its main thread); falls back to a walk of
/// `/proc`, which is not atomic under churn.
pub fn children_of(parent: i32) -> Vec<i32> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        let mut v: Vec<i32> = s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        v.sort();
        return v;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| ppid(p) == Some(parent))
        .collect();
    v.sort();
    v
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    children_of(parent)
        .into_iter()
        .filter(|&p| state(p) == Some('Z'))
        .collect()
}

/// The argv of a process.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The open fds of a process: number → what it points to (`socket:[…]`, `pipe:[…]`, a path).
pub fn fds(pid: i32) -> BTreeMap<i32, String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let n = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        Some((n, target.to_string_lossy().into_owned()))
    })
    .collect()
}

/// Total CPU ticks (utime + stime) of a process.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Signal mask, ignored and caught sets of a process from `/proc/<pid>/status`.
pub fn signal_masks(pid: i32) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((get("SigBlk:")?, get("SigIgn:")?, get("SigCgt:")?))
}

/// One HTTP/1.1 GET with `Connection: close`; returns (status, body). Bounded by `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf)
        .map(|(status, _, body)| (status, String::from_utf8_lossy(body).into_owned()))
        .ok_or_else(|| {
            std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&buf)))
        })
}

/// Response headers, names lowercased.
pub type Headers = Vec<(String, String)>;

/// Parses one complete HTTP/1.1 response with a `Content-Length` (or read to EOF): (status,
/// headers lowercased, body). `None` if it is incomplete or malformed.
pub fn parse_response(buf: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let body = &buf[end + 4..];
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match len {
        Some(n) if body.len() >= n => Some((status, headers, &body[..n])),
        Some(_) => None,
        None => Some((status, headers, body)),
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

// Helpers of the hardening tests (log sinks that fail or stall, what a parent hands down, probes
// of a master seen from outside), in modules of their own.
pub mod logpipe;
pub mod parent;
pub mod probe;
