//! Section 4, throughput and p99 of `sample-warp-like` `-w 1` and `-w 2` beside
//! `bench-baseline`, the same HTTP stack in one process.
//!
//! Every server is started first and stays up; the runs are interleaved (each repetition
//! visits every server once), so a drift of the machine hits every server alike. Each prefork
//! configuration is compared, run by run, with the baselines that have as many runtime threads
//! in all.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use proc_kit::procfs;

use super::{Section, http_ok, start_warp};
use crate::bins::Bins;
use crate::guard::Server;
use crate::load;
use crate::plan::Plan;
use crate::report::{Summary, Unit};

/// Client threads and connections of the throughput runs (see the notes in the report).
const TPUT_CLIENT_THREADS: usize = 1;
const TPUT_CONNECTIONS: usize = 32;

/// The load of one throughput run of `secs` against `addr`; the cost of the serving layer
/// (section 7) loads its servers the same way.
pub(super) fn spec(addr: SocketAddr, secs: f64) -> load::Spec {
    load::Spec {
        addr,
        keepalive: TPUT_CONNECTIONS,
        fresh: 0,
        threads: TPUT_CLIENT_THREADS,
        duration: Duration::from_secs_f64(secs),
        max_requests: 50_000_000,
    }
}

/// A server under load and what its runs measured.
struct Target {
    name: String,
    /// Baselines it is compared with (indices), and whether the ≥ 97 % target applies.
    bases: Vec<(usize, bool)>,
    server: Server,
    addr: SocketAddr,
    rates: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    failed: u64,
    /// Keep-alive connections held by each worker, sampled mid-run.
    spread: Vec<Vec<usize>>,
}

impl Target {
    fn new(name: String, bases: Vec<(usize, bool)>, server: Server, addr: SocketAddr) -> Self {
        Target {
            name,
            bases,
            server,
            addr,
            rates: vec![],
            p50: vec![],
            p99: vec![],
            failed: 0,
            spread: vec![],
        }
    }
}

/// Measures section 4.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let mut targets: Vec<Target> = Vec::new();
    // 0: plain 2 threads; 1: the sample's code, 2 threads; 2: the sample's code, 4 threads.
    for (mode, threads) in [("plain", 2u32), ("sample", 2), ("sample", 4)] {
        let mut cmd = Command::new(&bins.baseline);
        cmd.args(["-p", "0", "--threads", &threads.to_string(), "--mode", mode]);
        let server = Server::start(cmd, "bench-baseline")?;
        let addr = server.addr(Duration::from_secs(30))?;
        http_ok(addr)?;
        let name = if mode == "plain" {
            format!("baseline A: plain hyper, 1 process, {threads} threads")
        } else {
            format!("baseline B: the sample's code, 1 process, {threads} threads")
        };
        targets.push(Target::new(name, vec![], server, addr));
    }
    // (workers, threads per worker, baselines with as many runtime threads in all)
    for (w, t, bases) in [
        (1u32, 2u32, vec![(1, false)]),
        (2, 1, vec![(1, true), (0, true)]),
        (2, 2, vec![(2, true)]),
    ] {
        let (server, addr) = start_warp(bins, w, Some(t))?;
        targets.push(Target::new(
            format!("sample-warp-like -w {w} --threads {t}"),
            bases,
            server,
            addr,
        ));
    }
    // Warm-up: every server once, not counted.
    for t in &targets {
        load::run(&spec(t.addr, plan.tput_secs.min(1.0)))?;
    }
    // Interleaved repetitions, so a drift of the machine hits every target alike.
    for _ in 0..plan.tput_reps {
        for t in &mut targets {
            let master = t.server.pid();
            let (r, spread) =
                super::run_with_spread(&spec(t.addr, plan.tput_secs), plan.tput_secs, || {
                    procfs::workers_by_arg(master, "id").into_values().collect()
                })?;
            if !spread.is_empty() {
                t.spread.push(spread);
            }
            t.rates.push(r.rate());
            t.p50.push(r.hist.quantile(0.50) as f64);
            t.p99.push(r.hist.quantile(0.99) as f64);
            t.failed += r.failed_total();
        }
    }
    let mut p50s = Vec::new();
    for t in &targets {
        sec.row(format!("throughput, {}", t.name), &t.rates, Unit::Rate);
        sec.row(format!("p99 latency, {}", t.name), &t.p99, Unit::Time);
        for &(b, with_target) in &t.bases {
            let base = &targets[b];
            let ratios: Vec<f64> = t
                .rates
                .iter()
                .zip(&base.rates)
                .map(|(a, b)| a / b)
                .collect();
            let short = base.name.split(':').next().unwrap_or("baseline");
            let row = sec.row(
                format!("ratio: {} / {short} (paired by run)", t.name),
                &ratios,
                Unit::Ratio,
            );
            if with_target {
                row.target("≥ 97 %", |m| m >= 0.97);
            }
        }
        if t.failed > 0 {
            sec.note(format!(
                "Throughput: {} had {} failed requests.",
                t.name, t.failed
            ));
        }
        if let Some(s) = Summary::of(&t.p50) {
            p50s.push(format!("{} {:.0} µs", t.name, s.median / 1e3));
        }
        if !t.spread.is_empty() {
            sec.note(format!(
                "Throughput: connections per worker of {}, mid-run, per run: {}.",
                t.name,
                super::show_spread(&t.spread)
            ));
        }
    }
    sec.note(format!(
        "Throughput: closed loop, {TPUT_CONNECTIONS} keep-alive connections on {TPUT_CLIENT_THREADS} client \
         thread (a single-threaded tokio runtime), {} s per run, {} interleaved run(s) per target after a \
         warm-up; no CPU pinning: the load generator and the server share the 2 cores. Each prefork \
         configuration is compared with the baselines that have as many runtime threads in all. \
         Median p50: {}.",
        plan.tput_secs,
        plan.tput_reps,
        p50s.join("; ")
    ));
    for t in targets {
        t.server.stop(Duration::from_secs(30))?;
    }
    Ok(())
}
