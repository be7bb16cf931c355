//! Section 1, startup: exec of a master → N workers ready and the port answering (N = 1, 16,
//! 64, 256), beside the floor of N × (fork + exec + wait) of the same binary doing nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Section, floors, start_sleeper};
use crate::bins::Bins;
use crate::plan::Plan;
use crate::report::{Summary, Unit};

/// Measures section 1.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let fl = floors(bins, plan.floor_iters, plan.floor_reps, 0)?;
    let floor = Summary::of(&fl.total).context("no floor")?.median;
    sec.row(
        format!(
            "floor: fork+exec+wait of `bench-sleeper --noop`, per process ({} in a row)",
            plan.floor_iters
        ),
        &fl.total,
        Unit::Time,
    );
    sec.row(
        "floor: fork → exec happened (close-on-exec pipe at EOF), per process",
        &fl.exec,
        Unit::Time,
    );
    sec.row(
        "floor: posix_spawn (vfork) → exec happened, per process (for comparison)",
        &fl.spawn,
        Unit::Time,
    );
    let mut medians = BTreeMap::new();
    for &n in &plan.startup_ns {
        let mut to_answer = Vec::new();
        let mut to_logged = Vec::new();
        for _ in 0..plan.startup_reps {
            let s = start_sleeper(bins, n, &[], Duration::from_secs(60))?;
            to_answer.push(s.to_answer_ns as f64);
            to_logged.push(s.to_logged_ready_ns as f64);
            s.server.stop(Duration::from_secs(20))?;
        }
        let floor_n = floor * f64::from(n);
        let row = sec.row(
            format!(
                "startup, N={n}: exec of master → N ready + port answers (floor N × fork+exec: {:.2} ms)",
                floor_n / 1e6
            ),
            &to_answer,
            Unit::Time,
        );
        match n {
            16 => {
                row.target("≤ 25 ms", |m| m <= 25e6);
            }
            256 => {
                row.target(
                    format!("≤ 2 × floor = {:.1} ms", 2.0 * floor_n / 1e6),
                    |m| m <= 2.0 * floor_n,
                );
            }
            _ => {}
        }
        sec.row(
            format!("startup, N={n}: exec of master → master logged the N-th ready"),
            &to_logged,
            Unit::Time,
        );
        if let Some(s) = Summary::of(&to_answer) {
            medians.insert(n, s.median);
        }
    }
    if let (Some(&one), Some((&big, &t_big))) = (medians.get(&1), medians.iter().next_back())
        && big > 1
    {
        let per = (t_big - one) / f64::from(big - 1);
        sec.note(format!(
            "Startup: each worker beyond the first costs {:.0} µs (median startup N={big} − N=1, / {}), \
             against a floor of {:.0} µs per fork+exec+wait of a no-op run; on 2 cores workers boot in \
             parallel with the master's next forks.",
            per / 1e3,
            big - 1,
            floor / 1e3
        ));
    }
    Ok(())
}
