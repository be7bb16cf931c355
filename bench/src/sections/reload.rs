//! Section 3, reload under load: `SIGHUP`s to `sample-warp-like` under keep-alive and fresh
//! connections: failed requests, and how long each reload takes.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use super::{Section, ns, start_warp_with};
use crate::bins::Bins;
use crate::clock;
use crate::guard::Line;
use crate::load;
use crate::plan::Plan;
use crate::report::Unit;

/// Measures section 3.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    under_load(sec, plan, bins, &[], "reload under load")
}

/// `plan.reloads` SIGHUPs to `sample-warp-like -w 2 EXTRA…` under load; rows named `label`.
pub fn under_load(
    sec: &mut Section,
    plan: &Plan,
    bins: &Bins,
    extra: &[&str],
    label: &str,
) -> Result<()> {
    const WORKERS: u32 = 2;
    let (server, addr) = start_warp_with(bins, WORKERS, None, extra)?;
    let spec = load::Spec {
        addr,
        keepalive: 16,
        fresh: 4,
        threads: 1,
        duration: Duration::from_secs(180),
        max_requests: 100_000_000,
    };
    let running = load::start(&spec)?;
    std::thread::sleep(plan.reload_gap);
    let mut to_ready = Vec::new();
    let mut to_drained = Vec::new();
    let result = (|| -> Result<()> {
        for g in 1..=plan.reloads {
            let mark = server.log.len();
            let t0 = clock::wall_ns();
            server.signal(Signal::SIGHUP)?;
            // tracing records an `Option` field as its value: `generation=1`.
            let generation = g.to_string();
            let replaced = server.log.wait_count(
                mark,
                WORKERS as usize,
                Duration::from_secs(60),
                "every worker replaced",
                |l| {
                    l.text.contains("worker replaced")
                        && l.field("generation") == Some(generation.as_str())
                },
            )?;
            let drained = server.log.wait_count(
                mark,
                WORKERS as usize,
                Duration::from_secs(60),
                "every old worker exited",
                |l| l.text.contains("retired worker exited"),
            )?;
            let last = |v: &[Line]| v.iter().filter_map(Line::wall_ts).max();
            to_ready.push(ns(t0, last(&replaced).context("no timestamp")?));
            to_drained.push(ns(t0, last(&drained).context("no timestamp")?));
            std::thread::sleep(plan.reload_gap);
        }
        Ok(())
    })();
    let rep = running.finish();
    result?;
    sec.row(
        format!(
            "{label}: failed requests over {} SIGHUPs ({} ok, {:.1} k req/s)",
            plan.reloads,
            rep.ok,
            rep.rate() / 1e3
        ),
        &[rep.failed_total() as f64],
        Unit::Count,
    )
    .target("0", |m| m == 0.0);
    sec.row(
        format!("{label}: SIGHUP → every worker new and ready (last `worker replaced`)"),
        &to_ready,
        Unit::Time,
    );
    sec.row(
        format!("{label}: SIGHUP → every old worker exited (drained)"),
        &to_drained,
        Unit::Time,
    );
    sec.note(format!(
        "{label}: sample-warp-like -w {WORKERS} {} (1 runtime thread each: the default share of 2 CPUs), \
         load of {} keep-alive connections \
         + {} connection-per-request loops on 1 client thread; {} keep-alive connections were closed \
         cleanly by draining workers (`Connection: close`) and reopened{}.",
        extra.join(" "),
        spec.keepalive,
        spec.fresh,
        rep.server_closes,
        if rep.failed_total() > 0 {
            format!("; failures: {}", rep.failure_summary())
        } else {
            String::new()
        }
    ));
    server.stop(Duration::from_secs(30))?;
    Ok(())
}
