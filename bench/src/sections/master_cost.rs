//! Section 5, cost of the master: CPU and wake-ups over idle windows, RSS, fds; worker RSS.
//!
//! Two masters idle at once, `sample-warp-like -w 2` (the one with targets) and
//! `bench-sleeper -w 16`; each window is measured as the difference of two snapshots of the
//! master's counters. The sample runs with systemd notification on (`NOTIFY_SOCKET` names a
//! socket of the bench's; no watchdog), as under a `Type=notify` unit: its idle master must
//! still make no wake-up.

use std::time::Duration;

use anyhow::{Context, Result};
use proc_kit::procfs;

use super::{Section, Snap, snap, start_sleeper, start_warp_with};
use crate::bins::Bins;
use crate::plan::Plan;
use crate::report::Unit;

/// One master's figures over the idle windows, one value per window.
#[derive(Debug, Default)]
struct Idle {
    /// CPU, utime + stime ticks.
    ticks: Vec<f64>,
    /// CPU time (schedstat), ns.
    cpu_ns: Vec<f64>,
    /// Wake-ups (voluntary context switches).
    wakeups: Vec<f64>,
    /// Preemptions (involuntary context switches).
    preemptions: Vec<f64>,
    /// VmRSS at the end of the window, kB.
    rss_kb: Vec<f64>,
}

impl Idle {
    /// Adds one window, from the snapshots `b` (before) and `a` (after) and the RSS at its end.
    fn push(&mut self, b: Snap, a: Snap, rss_kb: u64) {
        self.ticks.push((a.ticks - b.ticks) as f64);
        self.cpu_ns.push((a.cpu_ns - b.cpu_ns) as f64);
        self.wakeups.push((a.voluntary - b.voluntary) as f64);
        self.preemptions
            .push((a.nonvoluntary - b.nonvoluntary) as f64);
        self.rss_kb.push(rss_kb as f64);
    }
}

/// Measures section 5.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    // A stand-in for systemd's notification socket; nothing reads it (a full queue would only
    // make the master drop a message, never block it).
    let notify_dir =
        std::env::temp_dir().join(format!("prefork-bench-notify-{}", std::process::id()));
    std::fs::create_dir_all(&notify_dir).context("notify socket dir")?;
    let notify_path = notify_dir.join("notify");
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).context("notify socket")?;
    let (mut warp, _) =
        start_warp_with(bins, 2, None, &[("NOTIFY_SOCKET", notify_path.as_os_str())])?;
    let mut sleeper = start_sleeper(bins, 16, &[], Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(1));
    let masters = [
        ("sample-warp-like -w 2", warp.pid()),
        ("bench-sleeper -w 16", sleeper.server.pid()),
    ];
    let mut idle: [Idle; 2] = Default::default();
    for _ in 0..plan.idle_reps {
        let before: Vec<Snap> = masters
            .iter()
            .map(|(_, p)| snap(*p))
            .collect::<Result<_>>()?;
        std::thread::sleep(plan.idle_window);
        for (((_, pid), b), e) in masters.iter().zip(&before).zip(&mut idle) {
            let a = snap(*pid)?;
            e.push(
                *b,
                a,
                procfs::status(*pid).context("master gone")?.vm_rss_kb,
            );
        }
    }
    let secs = plan.idle_window.as_secs();
    for ((name, pid), e) in masters.into_iter().zip(&idle) {
        let warp_master = name.starts_with("sample");
        // (what, counted by, values, unit, whether `sample-warp-like` must show 0)
        for (what, how, values, unit, zero) in [
            ("CPU", "utime+stime ticks", &e.ticks, Unit::Count, true),
            ("CPU time", "schedstat", &e.cpu_ns, Unit::Time, false),
            (
                "wake-ups",
                "voluntary ctxt switches",
                &e.wakeups,
                Unit::Count,
                true,
            ),
            (
                "preemptions",
                "involuntary ctxt switches",
                &e.preemptions,
                Unit::Count,
                false,
            ),
        ] {
            let row = sec.row(
                format!("{name}: idle master {what} over {secs} s ({how})"),
                values,
                unit,
            );
            if warp_master && zero {
                row.target("0", |m| m == 0.0);
            }
        }
        let row = sec.row(format!("{name}: master RSS (VmRSS)"), &e.rss_kb, Unit::Kib);
        if warp_master {
            // "4 MB", read strictly: 4,000 kB (`/proc` counts KiB).
            row.target("≤ 4 MB (4000 kB)", |m| m <= 4000.0);
        }
        let pss = procfs::pss_kb(pid).unwrap_or(0) as f64;
        sec.row(
            format!("{name}: master PSS (shared pages split)"),
            &[pss],
            Unit::Kib,
        );
        let fds = procfs::fd_count(pid).unwrap_or(0) as f64;
        sec.row(format!("{name}: master open fds"), &[fds], Unit::Count);
        let workers: Vec<i32> = procfs::workers_by_arg(pid, "id").into_values().collect();
        let w_rss: Vec<f64> = workers
            .iter()
            .filter_map(|&w| procfs::status(w).map(|s| s.vm_rss_kb as f64))
            .collect();
        let w_pss: Vec<f64> = workers
            .iter()
            .filter_map(|&w| procfs::pss_kb(w).map(|s| s as f64))
            .collect();
        let w_threads = workers
            .first()
            .and_then(|&w| procfs::status(w))
            .map_or(0, |s| s.threads);
        sec.row(
            format!("{name}: worker RSS, over the workers ({w_threads} threads each)"),
            &w_rss,
            Unit::Kib,
        );
        sec.row(
            format!("{name}: worker PSS, over the workers"),
            &w_pss,
            Unit::Kib,
        );
    }
    sec.note(format!(
        "Master cost: both masters idle at once, {} window(s) of {secs} s after 1 s of settling; sample-warp-like with systemd \
         notification on (NOTIFY_SOCKET set, no watchdog). A wake-up is a voluntary context switch (the master slept in poll and \
         was woken).",
        plan.idle_reps
    ));
    // Let the guards remember the workers they clean up after.
    let _ = warp.workers();
    let _ = sleeper.server.workers();
    warp.stop(Duration::from_secs(30))?;
    sleeper.server.stop(Duration::from_secs(30))?;
    drop(notify);
    let _ = std::fs::remove_dir_all(&notify_dir);
    Ok(())
}
