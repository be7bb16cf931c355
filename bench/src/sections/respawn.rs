//! Section 2, respawn: `SIGKILL` one worker → its replacement exists, → it is ready; beside the
//! floors of this VM and, if nginx is installed, nginx measured the same way ([`super::nginx`]).
//!
//! Each kill is timed twice over, in two passes: pass A reads the master's own log lines
//! (monotonic timestamps) and stays off the CPUs meanwhile; pass B polls `/proc` tightly for the
//! new pid with `id=K` in its argv, the way the nginx control is measured.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use proc_kit::procfs;

use super::{
    QUIET_AFTER_KILL, Section, floors, is_ready_line, is_spawned_line, kill, ns, poll_new_child,
    start_sleeper,
};
use crate::bins::Bins;
use crate::clock;
use crate::plan::Plan;
use crate::report::Unit;

/// Round trips between two threads over a socket pair, each after `gap` asleep: on an idle VM a
/// sleeping vCPU is slow to wake, and a respawn is a chain of such wake-ups.
fn idle_wakeups(samples: usize, gap: Duration) -> Result<Vec<f64>> {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        while b.read_exact(&mut buf).is_ok() && b.write_all(&buf).is_ok() {}
    });
    let mut v = Vec::new();
    for _ in 0..samples {
        std::thread::sleep(gap);
        let t0 = Instant::now();
        a.write_all(b"x")?;
        let mut buf = [0u8; 1];
        a.read_exact(&mut buf)?;
        v.push(t0.elapsed().as_nanos() as f64);
    }
    drop(a);
    let _ = echo.join();
    Ok(v)
}

/// The timings of one N's kills, ns, one value per kill.
#[derive(Debug, Default)]
struct Kills {
    /// SIGKILL → the master logged `child reaped` (pass A).
    reaped: Vec<f64>,
    /// reaped → the master logged `worker spawned` (pass A).
    spawn: Vec<f64>,
    /// SIGKILL → the master logged `worker spawned` (pass A).
    exists: Vec<f64>,
    /// SIGKILL → the master logged the replacement's readiness (pass A).
    ready: Vec<f64>,
    /// SIGKILL → the replacement seen in `/proc` with its `id=` (pass B).
    seen_proc: Vec<f64>,
    /// The master's CPU time from before the kill to the replacement's readiness (pass A).
    master_cpu: Vec<f64>,
}

/// Measures section 2, then the nginx control.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    // The floors of this section: everything after 30 ms asleep, as a respawn on an idle
    // machine is.
    let gap = QUIET_AFTER_KILL;
    let wake = idle_wakeups(plan.respawn_samples, gap)?;
    sec.row(
        format!(
            "floor: wake-up round trip between two threads after {} ms idle (2 wake-ups)",
            gap.as_millis()
        ),
        &wake,
        Unit::Time,
    );
    let idle = floors(
        bins,
        (plan.respawn_samples as u32).min(40),
        plan.floor_reps.min(3),
        gap.as_millis() as u64,
    )?;
    sec.row(
        format!(
            "floor: fork → exec happened, after {} ms idle, per process",
            gap.as_millis()
        ),
        &idle.exec,
        Unit::Time,
    );
    sec.row(
        format!(
            "floor: posix_spawn (vfork) → exec happened, after {} ms idle (for comparison)",
            gap.as_millis()
        ),
        &idle.spawn,
        Unit::Time,
    );
    for &n in &plan.respawn_ns {
        respawn_n(sec, plan, bins, n)?;
    }
    super::nginx::run(sec, plan)?;
    Ok(())
}

/// The respawn rows of one N.
fn respawn_n(sec: &mut Section, plan: &Plan, bins: &Bins, n: u32) -> Result<()> {
    let mut s = start_sleeper(bins, n, &[], Duration::from_secs(60))?;
    let master = s.server.pid();
    let mut pids: BTreeMap<String, i32> = BTreeMap::new();
    for l in s.server.log.matching(0, is_spawned_line) {
        if let (Some(id), Some(pid)) = (l.field("worker_id"), l.field("pid")) {
            pids.insert(id.to_string(), pid.parse()?);
        }
    }
    if pids.len() != n as usize {
        bail!("saw {} spawned workers, wanted {n}", pids.len());
    }
    let mut k = Kills::default();
    // Pass A: the master's own log lines (monotonic timestamps).
    // Pass B: a tight poll of /proc for the new pid with `id=K` in its argv.
    for pass in ['A', 'B'] {
        for i in 0..plan.respawn_samples {
            let cpu0 = procfs::schedstat(master).map_or(0, |c| c.0);
            let id = (i as u32 % n).to_string();
            let old = *pids.get(&id).context("unknown id")?;
            s.server.remember(old);
            std::thread::sleep(Duration::from_millis(20));
            let mark = s.server.log.len();
            let last_pid = procfs::last_pid().unwrap_or(0);
            let t0 = clock::mono_ns();
            kill(old, Signal::SIGKILL)?;
            if pass == 'B' {
                let want = format!("id={id}");
                let t = poll_new_child(
                    master,
                    &want,
                    &|a: &[String]| a.contains(&want),
                    last_pid,
                    Duration::from_secs(5),
                )?;
                k.seen_proc.push(ns(t0, t));
            } else {
                // Stay off the CPUs while the master works: the timestamps are in its log.
                std::thread::sleep(QUIET_AFTER_KILL);
            }
            let sp = s
                .server
                .log
                .wait_line(mark, Duration::from_secs(10), "the respawn", |l| {
                    is_spawned_line(l) && l.field("worker_id") == Some(id.as_str())
                })?;
            let new: i32 = sp.field("pid").context("no pid")?.parse()?;
            let rd = s.server.log.wait_line(
                mark,
                Duration::from_secs(10),
                "the replacement's readiness",
                |l| is_ready_line(l) && l.field("pid") == Some(&new.to_string()),
            )?;
            if pass == 'A' {
                let ex =
                    s.server
                        .log
                        .wait_line(mark, Duration::from_secs(10), "the exit", |l| {
                            l.text.contains("child reaped")
                                && l.field("pid") == Some(&old.to_string())
                        })?;
                let (t_ex, t_sp) = (
                    ex.mono_ts().context("no timestamp")?,
                    sp.mono_ts().context("no timestamp")?,
                );
                k.master_cpu
                    .push(ns(cpu0, procfs::schedstat(master).map_or(0, |c| c.0)));
                k.reaped.push(ns(t0, t_ex));
                k.exists.push(ns(t0, t_sp));
                k.spawn.push(ns(t_ex, t_sp));
                k.ready.push(ns(t0, rd.mono_ts().context("no timestamp")?));
            }
            pids.insert(id, new);
            s.server.remember(new);
        }
    }
    let zombies = procfs::zombies_of(master).len();
    let live = s.server.workers().len();
    sec.row(
        format!("respawn, N={n}: SIGKILL → master reaped it (master log: `child reaped`)"),
        &k.reaped,
        Unit::Time,
    );
    sec.row(
        format!("respawn, N={n}: the master's CPU time per respawn (reap, spawn, readiness)"),
        &k.master_cpu,
        Unit::Time,
    );
    sec.row(
        format!("respawn, N={n}: reaped → replacement exists (the master's spawn)"),
        &k.spawn,
        Unit::Time,
    );
    sec.row(
        format!("respawn, N={n}: SIGKILL → replacement exists (master log: fork+exec returned)"),
        &k.exists,
        Unit::Time,
    )
    .target("≤ 1 ms", |m| m <= 1e6);
    sec.row(
        format!(
            "respawn, N={n}: SIGKILL → replacement visible in /proc with its `id=` (tight poll)"
        ),
        &k.seen_proc,
        Unit::Time,
    );
    sec.row(
        format!("respawn, N={n}: SIGKILL → replacement ready (master log: readiness read)"),
        &k.ready,
        Unit::Time,
    );
    sec.note(format!(
        "Respawn N={n}: after {} kills, {live} live workers and {zombies} zombies.",
        2 * plan.respawn_samples
    ));
    s.server.stop(Duration::from_secs(20))?;
    Ok(())
}
