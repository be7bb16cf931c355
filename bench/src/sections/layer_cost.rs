//! Section 7, the cost of the serving layer: the throughput of `sample-warp-like -w 2 --threads
//! 1` built from this tree (served by `prefork-http`) against the same sample built from
//! [`OLD_COMMIT`], the last commit before the layer (its own serving code in
//! `samples/src/warp.rs`), in the same run.
//!
//! Both servers are up at once and loaded in turn, round after round, the order alternating
//! (new, old; old, new; …) so that neither always runs first; each round gives one paired
//! ratio. The load is section 4's. Beside req/s, each run measures the workers' CPU time per
//! request (from `/proc`), which a busy machine disturbs less than the rate. The old binary is
//! built once per commit into `target/bench-old-<hash>/` ([`bins::old_build`]); without git or
//! without the commit (a shallow clone) the row says "not measured" and the run goes on.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use proc_kit::procfs;

use super::throughput::spec;
use super::{Section, start_http, start_warp};
use crate::bins::{self, Bins, Old};
use crate::guard::Server;
use crate::load;
use crate::plan::Plan;
use crate::report::{Summary, Unit};

/// The last commit before `prefork-http`: `sample-warp-like` with its own serving code.
pub const OLD_COMMIT: &str = "bd4a086";
const WORKERS: u32 = 2;
const THREADS: u32 = 1;

/// One of two servers compared, up and loaded in turn (also section 8's).
pub(super) struct Side {
    pub(super) name: String,
    pub(super) server: Server,
    pub(super) addr: SocketAddr,
    pub(super) rates: Vec<f64>,
    /// Worker CPU ns per request, per run (runs where a worker was replaced are left out).
    pub(super) cpu: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    pub(super) failed: u64,
    /// Runs during which the set of workers changed.
    pub(super) churned: usize,
}

impl Side {
    pub(super) fn new(name: String, (server, addr): (Server, SocketAddr)) -> Side {
        Side {
            name,
            server,
            addr,
            rates: vec![],
            cpu: vec![],
            p50: vec![],
            p99: vec![],
            failed: 0,
            churned: 0,
        }
    }

    /// One run of `secs`: its rate, latencies and the workers' CPU per request.
    pub(super) fn measure(&mut self, secs: f64) -> Result<()> {
        let workers = worker_pids(self.server.pid());
        let before = workers_cpu_ns(&workers);
        let r = load::run(&spec(self.addr, secs))?;
        let after = workers_cpu_ns(&workers);
        self.rates.push(r.rate());
        self.p50.push(r.hist.quantile(0.50) as f64);
        self.p99.push(r.hist.quantile(0.99) as f64);
        self.failed += r.failed_total();
        match (before, after) {
            (Some(b), Some(a)) if r.ok > 0 && worker_pids(self.server.pid()) == workers => {
                self.cpu.push(a.saturating_sub(b) as f64 / r.ok as f64);
            }
            _ => self.churned += 1,
        }
        Ok(())
    }
}

/// `a[i] / b[i]`, run by run (where `b[i]` is not 0).
pub(super) fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

/// The master's workers, sorted.
fn worker_pids(master: i32) -> Vec<i32> {
    let mut v: Vec<i32> = procfs::workers_by_arg(master, "id").into_values().collect();
    v.sort_unstable();
    v
}

/// CPU time of every thread of these processes, ns (`/proc/<pid>/task/*/schedstat`; the
/// process's own `schedstat` is its main thread only, and the runtime threads do the work).
fn workers_cpu_ns(pids: &[i32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = 0;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let s = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            sum += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(sum)
}

/// Measures section 7.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let what = format!("sample-warp-like -w {WORKERS} --threads {THREADS}");
    let ratio_row =
        format!("cost of the serving layer: throughput of {what}, new / old (paired by round)");
    let old = match bins::old_build(bins, OLD_COMMIT, "samples", "sample-warp-like")? {
        Old::Built(path) => path,
        Old::Unavailable(why) => {
            sec.not_measured(ratio_row, &why);
            return Ok(());
        }
    };
    let mut sides = [
        Side::new(
            "new (this tree, prefork-http)".into(),
            start_warp(bins, WORKERS, Some(THREADS))?,
        ),
        Side::new(
            format!("old ({OLD_COMMIT}, its own serving code)"),
            start_http(&old, "sample-warp-like-old", WORKERS, Some(THREADS), &[])?,
        ),
    ];
    // Warm-up: each once, not counted.
    for s in &sides {
        load::run(&spec(s.addr, plan.tput_secs.min(1.0)))?;
    }
    for round in 0..plan.layer_rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            sides[i].measure(plan.tput_secs)?;
        }
    }
    let [new, old] = &sides;
    for s in &sides {
        sec.row(
            format!(
                "cost of the serving layer: throughput of {what}, {}",
                s.name
            ),
            &s.rates,
            Unit::Rate,
        );
    }
    sec.row(ratio_row, &paired(&new.rates, &old.rates), Unit::Ratio)
        .target("≥ 97 %", |m| m >= 0.97);
    for s in &sides {
        sec.row(
            format!(
                "cost of the serving layer: worker CPU per request, {}",
                s.name
            ),
            &s.cpu,
            Unit::Micros,
        );
    }
    if new.churned == 0 && old.churned == 0 {
        sec.row(
            "cost of the serving layer: worker CPU per request, new / old (paired by round)",
            &paired(&new.cpu, &old.cpu),
            Unit::Ratio,
        );
    }
    let lat = |s: &Side| {
        let q = |v: &[f64]| Summary::of(v).map_or(0.0, |s| s.median / 1e3);
        format!(
            "{} p50 {:.0} µs, p99 {:.0} µs",
            s.name,
            q(&s.p50),
            q(&s.p99)
        )
    };
    sec.note(format!(
        "Cost of the serving layer: {what}, new = built from this tree, old = built from commit \
         {OLD_COMMIT} with the same toolchain (the last commit before prefork-http: the sample's \
         own serving code, and the library as it was then), cached in `target/bench-old-<hash>/`. \
         Both up at once, {} round(s) of {} s per build after a warm-up, the order alternating \
         (new, old; old, new; …); ratios paired by round; the load is section 4's. Worker CPU \
         per request: the CPU time of the workers' threads (`/proc/<pid>/task/*/schedstat`) over \
         a run, divided by its requests. Median latencies: {}; {}.",
        plan.layer_rounds,
        plan.tput_secs,
        lat(new),
        lat(old)
    ));
    for s in &sides {
        if s.failed > 0 || s.churned > 0 {
            sec.note(format!(
                "Cost of the serving layer: {} had {} failed requests; {} run(s) had a worker \
                 replaced (their CPU left out).",
                s.name, s.failed, s.churned
            ));
        }
    }
    let [new, old] = sides;
    new.server.stop(Duration::from_secs(30))?;
    old.server.stop(Duration::from_secs(30))?;
    Ok(())
}
