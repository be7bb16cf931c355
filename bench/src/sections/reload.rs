//! Section 3, reload under load: `SIGHUP`s under keep-alive and fresh connections, to
//! `sample-warp-like -w 2` and to `sample-axum -w 4` (both served by `prefork-http`): failed
//! requests, and how long each reload takes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use super::{Section, ns, start_axum, start_warp, start_warp_flags};
use crate::bins::Bins;
use crate::clock;
use crate::guard::{Line, Server};
use crate::load;
use crate::plan::Plan;
use crate::report::Unit;

/// One sample under reloads: how it is started and loaded.
struct Case {
    /// `sample-warp-like -w 2`, as the rows name it.
    label: &'static str,
    /// What the note says of its runtime threads.
    threads: &'static str,
    workers: u32,
    keepalive: usize,
    fresh: usize,
    start: fn(&Bins, u32) -> Result<(Server, SocketAddr)>,
}

/// Measures section 3.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let cases = [
        Case {
            label: "sample-warp-like -w 2",
            threads: "1 runtime thread each: the default share of 2 CPUs",
            workers: 2,
            keepalive: 16,
            fresh: 4,
            start: |b, w| start_warp(b, w, None),
        },
        Case {
            label: "sample-axum -w 4",
            threads: "tokio's default: a runtime thread per CPU",
            workers: 4,
            keepalive: 8,
            fresh: 2,
            start: start_axum,
        },
    ];
    for case in &cases {
        if let Err(e) = reload_under_load(sec, plan, bins, case) {
            sec.error(
                format!("reload under load, {}", case.label),
                &format!("{e:#}"),
            );
        }
    }
    Ok(())
}

/// `plan.reloads` `SIGHUP`s to `sample-warp-like -w 2 --reuseport` under load (section 10).
pub fn reuseport(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let case = Case {
        label: "sample-warp-like -w 2 --reuseport",
        threads: "1 runtime thread each: the default share of 2 CPUs",
        workers: 2,
        keepalive: 16,
        fresh: 4,
        start: |b, w| start_warp_flags(b, w, None, &["--reuseport"]),
    };
    reload_under_load(sec, plan, bins, &case)
}

/// `plan.reloads` `SIGHUP`s to one sample under load: its rows and note.
fn reload_under_load(sec: &mut Section, plan: &Plan, bins: &Bins, case: &Case) -> Result<()> {
    let workers = case.workers;
    let (server, addr) = (case.start)(bins, workers)?;
    let spec = load::Spec {
        addr,
        keepalive: case.keepalive,
        fresh: case.fresh,
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
                workers as usize,
                Duration::from_secs(60),
                "every worker replaced",
                |l| {
                    l.text.contains("worker replaced")
                        && l.field("generation") == Some(generation.as_str())
                },
            )?;
            let drained = server.log.wait_count(
                mark,
                workers as usize,
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
    let label = case.label;
    sec.row(
        format!(
            "reload under load, {label}: failed requests over {} SIGHUPs ({} ok, {:.1} k req/s)",
            plan.reloads,
            rep.ok,
            rep.rate() / 1e3
        ),
        &[rep.failed_total() as f64],
        Unit::Count,
    )
    .target("0", |m| m == 0.0);
    sec.row(
        format!(
            "reload under load, {label}: SIGHUP → every worker new and ready (last `worker replaced`)"
        ),
        &to_ready,
        Unit::Time,
    );
    sec.row(
        format!("reload under load, {label}: SIGHUP → every old worker exited (drained)"),
        &to_drained,
        Unit::Time,
    );
    sec.note(format!(
        "Reload: {label} ({}), load of {} keep-alive connections + {} connection-per-request \
         loops on 1 client thread; {} keep-alive connections were closed cleanly by draining \
         workers (`Connection: close`) and reopened{}.",
        case.threads,
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
