//! What `/proc` says about a process: its state and parent, its children, its argv, its open
//! fds, its signal sets, its CPU time and memory.
//!
//! Every function reads one or two files and parses them on the spot; nothing is cached, so two
//! calls may disagree (a process exits, a child is born). A pid that does not exist, or stops
//! existing half-way through a read, gives `None` or an empty collection.
//!
//! Children are listed from `/proc/<parent>/task/<parent>/children`: one read of one file,
//! a snapshot of the children of the parent's main thread (a prefork master, and nginx's,
//! fork from their main thread). A scan of every `/proc/<pid>/stat` is the fallback for kernels
//! without that file; it is not a snapshot, so under churn it can miss a child that was born
//! or list one twice as it dies.

use std::collections::{BTreeMap, BTreeSet};

/// Fields of `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    // The command name in parentheses may hold spaces and `)`: the fields start after the last.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// The process state letter (`R`, `S`, `Z`, …), or `None` if the pid does not exist.
pub fn state(pid: i32) -> Option<char> {
    stat(pid).map(|s| s.state)
}

/// The parent pid.
pub fn ppid(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.ppid)
}

/// True if the pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

/// Total CPU ticks (utime + stime) of a process.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.utime + s.stime)
}

/// All pids whose parent is `parent` (zombies included), sorted.
///
/// Reads `/proc/<parent>/task/<parent>/children`, a snapshot of the children of the parent's
/// main thread (a prefork master spawns from its main thread); falls back to a walk of `/proc`,
/// which is not a snapshot under churn.
pub fn children_of(parent: i32) -> Vec<i32> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        let mut v: Vec<i32> = s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        v.sort_unstable();
        return v;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| ppid(p) == Some(parent))
        .collect();
    v.sort_unstable();
    v
}

/// Live (not zombie) children of `parent`.
pub fn live_children(parent: i32) -> Vec<i32> {
    children_of(parent)
        .into_iter()
        .filter(|&p| alive(p))
        .collect()
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    children_of(parent)
        .into_iter()
        .filter(|&p| state(p) == Some('Z'))
        .collect()
}

/// The argv of a process; `None` when it has none (a zombie, a kernel thread) or is gone.
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

/// The value of the first `key=value` argument of a process.
pub fn arg_value(pid: i32, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    cmdline(pid)?
        .into_iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

/// The processes among `pids` that have a `key=` argument, by its value (e.g. `id` →
/// {"0": pid, …}).
pub fn by_arg(pids: impl IntoIterator<Item = i32>, key: &str) -> BTreeMap<String, i32> {
    pids.into_iter()
        .filter_map(|p| Some((arg_value(p, key)?, p)))
        .collect()
}

/// Live children of `parent` by the value of their `key=` argument.
pub fn workers_by_arg(parent: i32, key: &str) -> BTreeMap<String, i32> {
    by_arg(live_children(parent), key)
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

/// Number of open fds.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Established TCP connections a process holds: its socket inodes found in `/proc/net/tcp`
/// (and `tcp6`) of this process's network namespace in state `01` (ESTABLISHED).
pub fn established_tcp(pid: i32) -> usize {
    let inodes: BTreeSet<String> = fds(pid)
        .into_values()
        .filter_map(|t| Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|s| {
            s.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.get(3) == Some(&"01")).then(|| f.get(9).map(|i| i.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

/// The text after `key` on the line of `/proc/<pid>/status` that starts with it, trimmed.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// Signal mask, ignored and caught sets of a process from `/proc/<pid>/status`.
pub fn signal_masks(pid: i32) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |k: &str| u64::from_str_radix(status_field(&s, k)?, 16).ok();
    Some((get("SigBlk:")?, get("SigIgn:")?, get("SigCgt:")?))
}

/// Fields of `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    let get =
        |k: &str| -> Option<u64> { status_field(&s, k)?.split_whitespace().next()?.parse().ok() };
    Some(Status {
        vm_rss_kb: get("VmRSS:")?,
        voluntary: get("voluntary_ctxt_switches:")?,
        nonvoluntary: get("nonvoluntary_ctxt_switches:")?,
        threads: get("Threads:")?,
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

/// Proportional set size in kB (shared pages divided among the processes sharing them), from
/// `/proc/<pid>/smaps_rollup`.
pub fn pss_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The last pid the kernel handed out in this pid namespace (`/proc/sys/kernel/ns_last_pid`).
pub fn last_pid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn this_process_reads_itself() {
        let me = std::process::id() as i32;
        let st = stat(me).unwrap();
        assert!(alive(me));
        assert_eq!(ppid(me), Some(st.ppid));
        assert!(cmdline(me).is_some_and(|a| !a.is_empty()));
        assert!(status(me).is_some_and(|s| s.threads >= 1 && s.vm_rss_kb > 0));
        assert!(signal_masks(me).is_some());
        assert!(fds(me).len() >= 3 && fd_count(me).is_some());
    }

    #[test]
    fn an_unreaped_child_is_listed_as_a_zombie() {
        // The shell forks a child that exits at once, then becomes `sleep`, which never reaps
        // it: a zombie child of a process whose main thread forked it.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "true & exec sleep 30"])
            .spawn()
            .unwrap();
        let pid = sh.id() as i32;
        let end = Instant::now() + Duration::from_secs(10);
        let zombies = loop {
            let z = zombies_of(pid);
            if !z.is_empty() && cmdline(pid).is_some_and(|a| a[0].ends_with("sleep")) {
                break z;
            }
            assert!(Instant::now() < end, "no zombie child of {pid}");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(children_of(pid), zombies);
        assert!(live_children(pid).is_empty());
        assert_eq!(cmdline(zombies[0]), None, "a zombie has no argv");
        assert_eq!(arg_value(pid, "id"), None);
        sh.kill().unwrap();
        sh.wait().unwrap();
        assert_eq!(stat(pid), None);
    }
}
