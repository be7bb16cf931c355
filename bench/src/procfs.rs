//! What the benchmark reads from `/proc`: process states, CPU time, memory, fds, children.
//!
//! Everything here reads; nothing signals. A process that vanished between two reads is `None`,
//! never an error: the processes measured are dying and being born all the time.

use std::collections::BTreeMap;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bench-sleeper`'s log timestamps too.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock time in nanoseconds since the Unix epoch (the clock of `sample-warp-like`'s logs).
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `utime`/`stime`.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Fields of `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// State letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// User CPU ticks.
    pub utime: u64,
    /// System CPU ticks.
    pub stime: u64,
}

/// Reads `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// Nanoseconds on CPU and number of times scheduled in, from `/proc/<pid>/schedstat` (the
/// process's main thread; the masters measured are single-threaded).
pub fn schedstat(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let f: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*f.first()?, *f.get(2)?))
}

/// Fields of `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// Resident set size, kB.
    pub vm_rss_kb: u64,
    /// Voluntary context switches (the process slept and was woken: a wake-up).
    pub voluntary: u64,
    /// Involuntary context switches (preempted).
    pub nonvoluntary: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/<pid>/status`.
pub fn status(pid: i32) -> Option<Status> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |k: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some(Status {
        vm_rss_kb: get("VmRSS:")?,
        voluntary: get("voluntary_ctxt_switches:")?,
        nonvoluntary: get("nonvoluntary_ctxt_switches:")?,
        threads: get("Threads:")?,
    })
}

/// Proportional set size in kB (shared pages divided among the processes sharing them), from
/// `/proc/<pid>/smaps_rollup`.
pub fn pss_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Number of open fds.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// All pids whose parent is `parent`, zombies included (a scan of `/proc`).
pub fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == parent))
        .collect();
    v.sort_unstable();
    v
}

/// The argv of a process (empty for a zombie).
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The value of a `key=value` argument of a process.
pub fn arg_value(pid: i32, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    cmdline(pid)?
        .into_iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

/// Live (non-zombie) children of `parent` by their `id=` argument.
pub fn workers_by_id(parent: i32) -> BTreeMap<String, i32> {
    children(parent)
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.state != 'Z'))
        .filter_map(|p| Some((arg_value(p, "id")?, p)))
        .collect()
}

/// Zombie children of `parent`.
pub fn zombies(parent: i32) -> Vec<i32> {
    children(parent)
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.state == 'Z'))
        .collect()
}

/// The last pid the kernel handed out in this pid namespace (`/proc/sys/kernel/ns_last_pid`).
pub fn last_pid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}
