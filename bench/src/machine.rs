//! The machine a run happened on: CPUs, kernel, toolchain, date, load, limits.

use std::process::Command;

/// What is written above the table.
#[derive(Clone, Debug)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `rustc -V`.
    pub rustc: String,
    /// Total memory, MiB.
    pub mem_mib: u64,
    /// UTC date and time of the run.
    pub date: String,
    /// `RLIMIT_NOFILE` and `RLIMIT_NPROC` (soft/hard), as found and after raising.
    pub limits: String,
}

impl Machine {
    /// Gathers the details (never fails: unknowns read `?`).
    pub fn probe(limits: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let rustc = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("-V")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into());
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel,
            rustc,
            mem_mib,
            date: crate::clock::utc_now(),
            limits,
        }
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the load generator and a 1000-worker
/// master hold many fds); returns a description of both limits for the report.
pub fn raise_limits() -> String {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let show = |v: u64| {
        if v == nix::sys::resource::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    let mut parts = Vec::new();
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            parts.push(format!(
                "RLIMIT_NOFILE raised {} → {} (hard {})",
                show(soft),
                show(hard),
                show(hard)
            ));
        } else {
            parts.push(format!(
                "RLIMIT_NOFILE {}/{} (not raised)",
                show(soft),
                show(hard)
            ));
        }
    }
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NPROC) {
        parts.push(format!(
            "RLIMIT_NPROC {}/{} (not raised: enough for 1000 workers)",
            show(soft),
            show(hard)
        ));
    }
    parts.join("; ")
}
