//! Section 6, scale: 1000 workers: time to ready, a storm of 100 kills, convergence, zombies.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use proc_kit::procfs;

use super::{
    QUIET_AFTER_KILL, Section, is_ready_line, is_spawned_line, kill, ns, snap, start_sleeper,
};
use crate::bins::Bins;
use crate::clock;
use crate::guard::Line;
use crate::plan::Plan;
use crate::report::Unit;

/// Measures section 6.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let n = plan.scale_n;
    let mut to_ready = Vec::new();
    let mut last = None;
    for rep in 0..plan.scale_reps {
        let s = start_sleeper(bins, n, &[], Duration::from_secs(120))?;
        to_ready.push(s.to_answer_ns as f64);
        if rep + 1 == plan.scale_reps {
            last = Some(s);
        } else {
            s.server.stop(Duration::from_secs(60))?;
        }
    }
    let mut s = last.context("no run")?;
    let master = s.server.pid();
    let row = sec.row(
        format!("scale: exec of master → {n} workers ready + port answers"),
        &to_ready,
        Unit::Time,
    );
    if n >= 1000 {
        row.target("≤ 3 s", |m| m <= 3e9);
    }
    let mut conv = Vec::new();
    let mut cpu = Vec::new();
    let mut ticks = Vec::new();
    let mut zombies = Vec::new();
    let storm = plan.storm;
    let stride = (n / storm).max(1);
    for k in 0..plan.storms {
        std::thread::sleep(Duration::from_millis(300));
        let by_id = s.server.workers();
        if by_id.len() != n as usize {
            bail!("{} live workers before storm {k}, wanted {n}", by_id.len());
        }
        let victims: BTreeSet<String> = (0..storm)
            .map(|j| ((j * stride + k as u32 % stride) % n).to_string())
            .collect();
        let mark = s.server.log.len();
        let before = snap(master)?;
        let t0 = clock::mono_ns();
        for id in &victims {
            kill(by_id[id], Signal::SIGKILL)?;
        }
        std::thread::sleep(QUIET_AFTER_KILL);
        let spawned = s.server.log.wait_count(
            mark,
            victims.len(),
            Duration::from_secs(60),
            "the storm's respawns",
            |l| is_spawned_line(l) && l.field("worker_id").is_some_and(|i| victims.contains(i)),
        )?;
        let new: BTreeSet<String> = spawned
            .iter()
            .filter_map(|l| l.field("pid").map(str::to_string))
            .collect();
        let ready = s.server.log.wait_count(
            mark,
            new.len(),
            Duration::from_secs(60),
            "the storm's readiness",
            |l| is_ready_line(l) && l.field("pid").is_some_and(|p| new.contains(p)),
        )?;
        let after = snap(master)?;
        let t_conv = ready
            .iter()
            .filter_map(Line::mono_ts)
            .max()
            .context("no ts")?;
        conv.push(ns(t0, t_conv));
        cpu.push((after.cpu_ns - before.cpu_ns) as f64);
        ticks.push((after.ticks - before.ticks) as f64);
        zombies.push(procfs::zombies_of(master).len() as f64);
        let live = s.server.workers().len();
        if live != n as usize {
            bail!("{live} live workers after storm {k}, wanted {n}");
        }
    }
    sec.row(
        format!("scale: SIGKILL {storm} of {n} at once → all {storm} replacements ready"),
        &conv,
        Unit::Time,
    );
    sec.row(
        format!("scale: master CPU during the storm of {storm} (schedstat)"),
        &cpu,
        Unit::Time,
    );
    sec.row(
        format!(
            "scale: master CPU during the storm of {storm} (ticks of 1/{} s)",
            clock::clk_tck()
        ),
        &ticks,
        Unit::Count,
    );
    sec.row(
        "scale: zombies after the storm (children of the master in state Z)",
        &zombies,
        Unit::Count,
    )
    .target("0", |m| m == 0.0);
    sec.note(format!(
        "Scale: {} storm(s), every {stride}th id killed (the same pids' slots), {} workers live \
         after each.",
        plan.storms, n
    ));
    s.server.stop(Duration::from_secs(60))?;
    Ok(())
}
