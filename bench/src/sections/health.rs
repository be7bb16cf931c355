//! Section 8, the cost of health checks: throughput and worker CPU per request of
//! `sample-warp-like -w 2 --threads 1` with the scoreboard, the heartbeat task and the request
//! guard on (`--hang-timeout 10`, so the master also reads the scoreboard every 2.5 s) versus
//! off (`--no-scoreboard`), in the same run, interleaved as section 7 does; and `strace -c` of
//! a worker, to show that a heartbeat is no system call.
//!
//! The strace runs: an idle worker beating every 100 ms (`--hang-timeout 1`) for 3 s, and the
//! same worker under a small closed-loop load, with the scoreboard on and off. `clock_gettime`
//! must not appear at all (the vDSO answers it); what the beat task costs is its timer's
//! wake-up when the worker is otherwise idle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::layer_cost::{Side, paired};
use super::throughput::spec;
use super::{Section, start_warp_flags};
use crate::bins::Bins;
use crate::guard::Server;
use crate::load;
use crate::plan::Plan;
use crate::report::Unit;

/// Measures section 7.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    throughput(sec, plan, bins)?;
    strace(sec, plan, bins)
}

fn throughput(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let what = "sample-warp-like -w 2 --threads 1";
    let mut sides = [
        Side::new(
            "scoreboard, beats and request guard on".into(),
            start_warp_flags(bins, 2, Some(1), &["--hang-timeout", "10"])?,
        ),
        Side::new(
            "--no-scoreboard".into(),
            start_warp_flags(bins, 2, Some(1), &["--no-scoreboard"])?,
        ),
    ];
    for s in &sides {
        load::run(&spec(s.addr, plan.tput_secs.min(1.0)))?;
    }
    // Twice the layer section's rounds: a 1 % difference needs them.
    let rounds = plan.layer_rounds * 2;
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            sides[i].measure(plan.tput_secs)?;
        }
    }
    let [on, off] = &sides;
    for s in &sides {
        sec.row(
            format!("health checks: throughput of {what}, {}", s.name),
            &s.rates,
            Unit::Rate,
        );
    }
    sec.row(
        "health checks: throughput, on / off (paired by round)",
        &paired(&on.rates, &off.rates),
        Unit::Ratio,
    )
    .target("within 1 %", |m| (0.99..=1.01).contains(&m));
    for s in &sides {
        sec.row(
            format!("health checks: worker CPU per request, {}", s.name),
            &s.cpu,
            Unit::Micros,
        );
    }
    if on.churned == 0 && off.churned == 0 {
        sec.row(
            "health checks: worker CPU per request, on / off (paired by round)",
            &paired(&on.cpu, &off.cpu),
            Unit::Ratio,
        )
        .target("≤ 101 %", |m| m <= 1.01);
    }
    sec.note(format!(
        "Health checks: {what}, both up at once, {rounds} round(s) of {} s each after a warm-up, \
         the order alternating; the load is section 4's. \"On\" is the default scoreboard with a \
         10 s hang timeout (workers beat every second, the master reads the scoreboard every \
         2.5 s, every request goes through the guard); \"off\" is `--no-scoreboard` (no slot: the \
         guard and the beat are no-ops). On a busy machine the CPU per request is the steadier \
         figure.",
        plan.tput_secs
    ));
    for s in &sides {
        if s.failed > 0 || s.churned > 0 {
            sec.note(format!(
                "Health checks: {} had {} failed requests; {} run(s) had a worker replaced.",
                s.name, s.failed, s.churned
            ));
        }
    }
    let [on, off] = sides;
    on.server.stop(Duration::from_secs(30))?;
    off.server.stop(Duration::from_secs(30))?;
    Ok(())
}

/// System calls by name, from a `strace -c` summary.
fn strace_counts(out: &str) -> BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors,] syscall
            if f.len() < 5 || f[0].parse::<f64>().is_err() {
                return None;
            }
            let name = f.last()?.to_string();
            let calls = f.get(3)?.parse().ok()?;
            Some((name, calls))
        })
        .collect()
}

/// `strace -c -f` of `pid` for `d`, while `during` runs; the counts by system call.
fn strace_for(
    pid: i32,
    d: Duration,
    during: impl FnOnce() -> Result<u64>,
) -> Result<(BTreeMap<String, u64>, u64)> {
    let out = std::env::temp_dir().join(format!("prefork-bench-strace-{pid}.txt"));
    let mut child = Command::new("strace")
        .args(["-c", "-f", "-qq", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("strace (apt-get install -y strace)")?;
    // Attached once the worker's threads show a tracer.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !traced(pid) {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("strace did not attach to {pid}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = std::time::Instant::now();
    let extra = during();
    let left = d.saturating_sub(started.elapsed());
    std::thread::sleep(left);
    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
    child.wait()?;
    let text = std::fs::read_to_string(&out).context("strace output")?;
    let _ = std::fs::remove_file(&out);
    Ok((strace_counts(&text), extra?))
}

/// Whether every thread of `pid` has a tracer (`TracerPid:` of each task's status).
fn traced(pid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    dir.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("TracerPid:"))
                    .map(|v| v.trim() != "0")
            })
            .unwrap_or(false)
    })
}

fn one_worker(server: &mut Server) -> Result<i32> {
    server
        .workers()
        .into_values()
        .next()
        .context("no worker to trace")
}

fn strace(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    if Command::new("strace").arg("-V").output().is_err() {
        sec.note(
            "Health: strace is not installed; its rows are missing (apt-get install -y strace).",
        );
        return Ok(());
    }
    let idle = Duration::from_secs(if plan.quick { 2 } else { 3 });
    let beat = Duration::from_millis(100);
    // Idle, beating every 100 ms.
    let (mut server, _) = start_warp_flags(bins, 1, Some(1), &["--hang-timeout", "1"])?;
    let pid = one_worker(&mut server)?;
    let (counts, _) = strace_for(pid, idle, || Ok(0))?;
    let beats = idle.as_secs_f64() / beat.as_secs_f64();
    let total: u64 = counts.values().sum();
    sec.row(
        "strace -c of an idle worker beating every 100 ms: clock_gettime calls",
        &[*counts.get("clock_gettime").unwrap_or(&0) as f64],
        Unit::Count,
    )
    .target("0", |m| m == 0.0);
    sec.row(
        "strace -c of an idle worker: system calls per beat interval (the beat timer's wake-up)",
        &[total as f64 / beats],
        Unit::Count,
    );
    sec.note(format!(
        "Health: idle worker, {} s traced: {}.",
        idle.as_secs(),
        summary(&counts)
    ));
    server.stop(Duration::from_secs(30))?;
    // Under load: system calls per request, on and off.
    for (flags, label) in [
        (&["--hang-timeout", "1"][..], "on (beat every 100 ms)"),
        (&["--no-scoreboard"][..], "off"),
    ] {
        let (mut server, addr) = start_warp_flags(bins, 1, Some(1), flags)?;
        let pid = one_worker(&mut server)?;
        let (counts, requests) = strace_for(pid, idle, || loaded(addr, idle))?;
        let total: u64 = counts.values().sum();
        sec.row(
            format!(
                "strace -c of a worker under load, scoreboard {label}: system calls per request"
            ),
            &[total as f64 / requests.max(1) as f64],
            Unit::Count,
        );
        sec.note(format!(
            "Health: worker under load, scoreboard {label}, {requests} requests: {}.",
            summary(&counts)
        ));
        server.stop(Duration::from_secs(30))?;
    }
    Ok(())
}

/// A small closed loop on `addr` for `d`; the requests completed.
fn loaded(addr: SocketAddr, d: Duration) -> Result<u64> {
    let r = load::run(&load::Spec {
        addr,
        keepalive: 4,
        fresh: 0,
        threads: 1,
        duration: d,
        max_requests: 10_000_000,
    })?;
    Ok(r.ok)
}

/// The five most frequent system calls, `name × n`.
fn summary(counts: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = counts.iter().filter(|(k, _)| *k != "total").collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    let top: Vec<String> = v
        .iter()
        .take(5)
        .map(|(k, n)| format!("{k} × {n}"))
        .collect();
    if top.is_empty() {
        "no system call".into()
    } else {
        top.join(", ")
    }
}
