//! Section 10, reuseport groups: `sample-warp-like` with one shared listening socket and with
//! `--reuseport` (one `SO_REUSEPORT` socket per worker id, steered by the master's program, or
//! by the kernel's own hash with `--no-steering`), beside a one-process server and nginx.
//!
//! * **Split**: the keep-alive connections each worker holds, sampled mid-run (`/proc/net/tcp`
//!   by socket inode), as the fewest and the most against the mean, worst run of all.
//! * **Throughput and p99** at 64 keep-alive connections on one client thread: pinned (every
//!   server process on CPU 0, the client on CPU 1) for `-w 2` against the one-process server
//!   with 1 thread, and unpinned for `-w 2` and `-w 16` against nginx with as many workers.
//!   The runs are interleaved, so a drift of the machine hits every server alike, and the
//!   ratios are paired by run.
//! * **Thread count**: `-w 16` and `-w 2` with the old default (`--threads` = workers) beside
//!   the new one (the worker's share of the CPUs).
//! * **Reloads**: 5 `SIGHUP`s under load in reuseport mode (section 3's measurement).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use proc_kit::procfs;

use super::{Section, http_ok, nginx, reload, start_warp_flags};
use crate::bins::Bins;
use crate::guard::Server;
use crate::load;
use crate::plan::Plan;
use crate::report::{Summary, Unit};

/// Keep-alive connections of every run (the issue's `wrk -c64`).
const CONNECTIONS: usize = 64;

/// Where a server's processes and the client run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Server on CPU 0, client on CPU 1.
    Pinned,
    /// Both anywhere.
    Free,
}

/// What kind of server, to find its workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    OneProcess,
    Prefork,
    Nginx,
}

struct Target {
    name: String,
    kind: Kind,
    place: Placement,
    server: Server,
    addr: SocketAddr,
    rates: Vec<f64>,
    p99: Vec<f64>,
    failed: u64,
    /// Per run: connections held by each worker, mid-run.
    spread: Vec<Vec<usize>>,
}

/// Runs `f` with this thread's CPU affinity set to `cpus` (processes it starts inherit it),
/// then restores it.
fn on_cpus<T>(cpus: &[usize], f: impl FnOnce() -> Result<T>) -> Result<T> {
    let old = sched_getaffinity(Pid::from_raw(0))?;
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)?;
    let r = f();
    sched_setaffinity(Pid::from_raw(0), &old)?;
    r
}

fn all_cpus() -> Vec<usize> {
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Starts nginx with `n` workers serving `hello` on a free port of 127.0.0.1, tuned for the
/// measurement (no access log, unlimited keep-alive requests); waits until it answers.
fn start_nginx(bin: &std::path::Path, n: u32) -> Result<(Server, SocketAddr, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!(
        "prefork-bench-nginx-tput-{}-{n}-{}",
        std::process::id(),
        crate::clock::mono_ns()
    ));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = nginx::write_conf(
        &dir,
        n,
        port,
        "worker_connections 1024;",
        "keepalive_requests 1000000000; keepalive_timeout 75s;",
    )?;
    let server = Server::start(nginx::command(bin, &dir, &conf), "nginx")?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let workers = nginx_workers(server.pid()).len();
        if workers == n as usize && http_ok(addr).is_ok() {
            break;
        }
        if Instant::now() > end {
            bail!("nginx did not answer with {n} workers");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, addr, dir))
}

fn nginx_workers(master: i32) -> Vec<i32> {
    procfs::children_of(master)
        .into_iter()
        .filter(|&p| procfs::cmdline(p).is_some_and(|a| nginx::is_worker(&a)))
        .collect()
}

fn workers_of(t: &Target) -> Vec<i32> {
    match t.kind {
        Kind::OneProcess => vec![],
        Kind::Prefork => procfs::workers_by_arg(t.server.pid(), "id")
            .into_values()
            .collect(),
        Kind::Nginx => nginx_workers(t.server.pid()),
    }
}

/// Measures section 10.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let cpus = all_cpus();
    let pinning = cpus.len() >= 2;
    let nginx_bin = nginx::binary();
    let mut targets: Vec<Target> = Vec::new();
    let mut dirs = Vec::new();
    let add = |targets: &mut Vec<Target>,
               name: String,
               kind: Kind,
               place: Placement,
               (server, addr): (Server, SocketAddr)| {
        targets.push(Target {
            name,
            kind,
            place,
            server,
            addr,
            rates: vec![],
            p99: vec![],
            failed: 0,
            spread: vec![],
        });
    };
    let baseline = |threads: u32| -> Result<(Server, SocketAddr)> {
        let mut cmd = Command::new(&bins.baseline);
        cmd.args([
            "-p",
            "0",
            "--threads",
            &threads.to_string(),
            "--mode",
            "plain",
        ]);
        let server = Server::start(cmd, "bench-baseline")?;
        let addr = server.addr(Duration::from_secs(30))?;
        http_ok(addr)?;
        Ok((server, addr))
    };
    // Pinned: every server process on CPU 0 (children inherit the affinity), the client on 1.
    if pinning {
        let s = on_cpus(&[0], || baseline(1))?;
        add(
            &mut targets,
            "pinned, one process (plain hyper, 1 thread)".into(),
            Kind::OneProcess,
            Placement::Pinned,
            s,
        );
        if let Some(bin) = &nginx_bin {
            let (server, addr, dir) = on_cpus(&[0], || start_nginx(bin, 2))?;
            dirs.push(dir);
            add(
                &mut targets,
                "pinned, nginx -w 2".into(),
                Kind::Nginx,
                Placement::Pinned,
                (server, addr),
            );
        }
        for (mode, extra) in [
            ("shared socket", &[][..]),
            ("reuseport", &["--reuseport"][..]),
        ] {
            let s = on_cpus(&[0], || start_warp_flags(bins, 2, None, extra))?;
            add(
                &mut targets,
                format!("pinned, sample-warp-like -w 2, {mode}"),
                Kind::Prefork,
                Placement::Pinned,
                s,
            );
        }
    }
    // Unpinned.
    add(
        &mut targets,
        "one process (plain hyper, 2 threads)".into(),
        Kind::OneProcess,
        Placement::Free,
        baseline(2)?,
    );
    for w in [2u32, 16] {
        if let Some(bin) = &nginx_bin {
            let (server, addr, dir) = start_nginx(bin, w)?;
            dirs.push(dir);
            add(
                &mut targets,
                format!("nginx -w {w}"),
                Kind::Nginx,
                Placement::Free,
                (server, addr),
            );
        }
        for (mode, extra) in [
            ("shared socket", &[][..]),
            ("reuseport", &["--reuseport"][..]),
            (
                "reuseport, kernel hash",
                &["--reuseport", "--no-steering"][..],
            ),
        ] {
            let s = start_warp_flags(bins, w, None, extra)?;
            add(
                &mut targets,
                format!("sample-warp-like -w {w}, {mode}"),
                Kind::Prefork,
                Placement::Free,
                s,
            );
        }
        // The old default: as many runtime threads per worker as workers.
        let s = start_warp_flags(bins, w, Some(w), &["--reuseport"])?;
        add(
            &mut targets,
            format!("sample-warp-like -w {w}, reuseport, --threads {w} (old default)"),
            Kind::Prefork,
            Placement::Free,
            s,
        );
    }

    let spec = |addr, secs: f64| load::Spec {
        addr,
        keepalive: CONNECTIONS,
        fresh: 0,
        threads: 1,
        duration: Duration::from_secs_f64(secs),
        max_requests: 50_000_000,
    };
    let client_cpus = |p: Placement| {
        if p == Placement::Pinned {
            vec![1]
        } else {
            cpus.clone()
        }
    };
    for t in &targets {
        let s = spec(t.addr, plan.tput_secs.min(1.0));
        on_cpus(&client_cpus(t.place), || load::run(&s))?;
    }
    for _ in 0..plan.tput_reps {
        for t in &mut targets {
            let s = spec(t.addr, plan.tput_secs);
            let (r, spread) = on_cpus(&client_cpus(t.place), || {
                super::run_with_spread(&s, plan.tput_secs, || workers_of(t))
            })?;
            if !spread.is_empty() {
                t.spread.push(spread);
            }
            t.rates.push(r.rate());
            t.p99.push(r.hist.quantile(0.99) as f64);
            t.failed += r.failed_total();
        }
    }

    let find = |name: &str| targets.iter().position(|t| t.name == name);
    let paired =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    // Split rows first: they are what reuseport changes.
    for t in targets
        .iter()
        .filter(|t| t.kind != Kind::OneProcess && t.place == Placement::Free)
    {
        if t.spread.is_empty() || t.name.contains("old default") {
            continue;
        }
        let (mut low, mut high) = (f64::MAX, 0f64);
        for run in &t.spread {
            let mean = run.iter().sum::<usize>() as f64 / run.len().max(1) as f64;
            if mean == 0.0 {
                continue;
            }
            let (mn, mx) = (
                run.iter().min().copied().unwrap_or(0),
                run.iter().max().copied().unwrap_or(0),
            );
            low = low.min(mn as f64 / mean);
            high = high.max(mx as f64 / mean);
        }
        if high == 0.0 {
            continue;
        }
        let steered = t.name.ends_with(", reuseport");
        let r = sec.row(
            format!(
                "split, {}: fewest connections of a worker / mean, worst of {} runs",
                t.name,
                t.spread.len()
            ),
            &[low],
            Unit::Ratio,
        );
        if steered {
            r.target("≥ 50 %", |m| m >= 0.5);
        }
        let r = sec.row(
            format!(
                "split, {}: most connections of a worker / mean, worst of {} runs",
                t.name,
                t.spread.len()
            ),
            &[high],
            Unit::Ratio,
        );
        if steered {
            r.target("≤ 200 %", |m| m <= 2.0);
        }
        let shown: Vec<String> = t
            .spread
            .iter()
            .map(|v| v.iter().map(usize::to_string).collect::<Vec<_>>().join("/"))
            .collect();
        sec.note(format!(
            "Split: {} held, per run: {}.",
            t.name,
            shown.join(", ")
        ));
    }
    for t in &targets {
        sec.row(format!("throughput, {}", t.name), &t.rates, Unit::Rate);
        sec.row(format!("p99 latency, {}", t.name), &t.p99, Unit::Time);
        if t.failed > 0 {
            sec.note(format!(
                "Reuseport: {} had {} failed requests.",
                t.name, t.failed
            ));
        }
    }
    // The comparisons the issue sets targets on.
    if let Some(base) = find("pinned, one process (plain hyper, 1 thread)") {
        for mode in ["shared socket", "reuseport"] {
            if let Some(i) = find(&format!("pinned, sample-warp-like -w 2, {mode}")) {
                let r = sec.row(
                    format!("ratio: pinned -w 2, {mode} / one process (paired by run)"),
                    &paired(&targets[i].rates, &targets[base].rates),
                    Unit::Ratio,
                );
                if mode == "reuseport" {
                    r.target("≥ 97 %", |m| m >= 0.97);
                }
            }
        }
    }
    for w in [2u32, 16] {
        let Some(ng) = find(&format!("nginx -w {w}")) else {
            continue;
        };
        for mode in ["shared socket", "reuseport", "reuseport, kernel hash"] {
            let Some(i) = find(&format!("sample-warp-like -w {w}, {mode}")) else {
                continue;
            };
            let r = sec.row(
                format!("ratio: -w {w}, {mode} / nginx -w {w}, req/s (paired by run)"),
                &paired(&targets[i].rates, &targets[ng].rates),
                Unit::Ratio,
            );
            if mode == "reuseport" {
                r.target("≥ 100 %", |m| m >= 1.0);
            }
            if w == 16 {
                let r = sec.row(
                    format!("ratio: -w 16, {mode} / nginx -w 16, p99 (paired by run)"),
                    &paired(&targets[i].p99, &targets[ng].p99),
                    Unit::Ratio,
                );
                if mode == "reuseport" {
                    r.target("≤ 100 %", |m| m <= 1.0);
                }
            }
        }
    }
    if let Some(base) = find("one process (plain hyper, 2 threads)") {
        for w in [2u32, 16] {
            if let Some(i) = find(&format!("sample-warp-like -w {w}, reuseport")) {
                sec.row(
                    format!("ratio: -w {w}, reuseport / one process, 2 threads (paired by run)"),
                    &paired(&targets[i].rates, &targets[base].rates),
                    Unit::Ratio,
                );
            }
        }
    }
    for w in [2u32, 16] {
        let old = find(&format!(
            "sample-warp-like -w {w}, reuseport, --threads {w} (old default)"
        ));
        let new = find(&format!("sample-warp-like -w {w}, reuseport"));
        if let (Some(o), Some(n)) = (old, new) {
            sec.row(
                format!("ratio: -w {w}, reuseport, default threads (1 each) / --threads {w} (paired by run)"),
                &paired(&targets[n].rates, &targets[o].rates),
                Unit::Ratio,
            );
        }
    }
    let p50: Vec<String> = targets
        .iter()
        .filter_map(|t| {
            Some(format!(
                "{} {:.0}",
                t.name,
                Summary::of(&t.rates)?.median / 1e3
            ))
        })
        .collect();
    sec.note(format!(
        "Reuseport: closed loop, {CONNECTIONS} keep-alive connections on 1 client thread, {} s per run, \
         {} interleaved run(s) per server after a warm-up; pinned servers run on CPU 0 and the client on \
         CPU 1, the others share both CPUs with the client. nginx: {}. Median k req/s: {}.",
        plan.tput_secs,
        plan.tput_reps,
        match &nginx_bin {
            Some(_) => "`worker_processes N`, one shared socket (its default), `keepalive_requests` unlimited, no access log",
            None => "not installed, its rows are absent",
        },
        p50.join("; ")
    ));
    for t in targets {
        t.server.stop(Duration::from_secs(30))?;
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    reload::reuseport(sec, plan, bins)
}
