//! The measurements, one module each, and what they share: the [`Section`] they report
//! into, and the ways to start and watch the servers under test.
//!
//! Every section is a [`Run`]: it starts its own servers (each owned by a [`Server`] guard, so
//! an error or a panic still stops and reaps them), measures, adds its rows and notes, and
//! stops the servers it started. A section that fails part-way keeps the rows it already
//! added; the caller adds an error row after them.

pub mod control;
pub mod health;
pub mod layer_cost;
pub mod master_cost;
pub mod nginx;
pub mod reload;
pub mod respawn;
pub mod reuseport;
pub mod scale;
pub mod startup;
pub mod throughput;
pub mod upgrade;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use proc_kit::procfs;

use crate::bins::Bins;
use crate::clock;
use crate::guard::{self, Line, Server};
use crate::load;
use crate::plan::Plan;
use crate::report::{Row, Unit};

/// A section's measurement: `run(section, plan, binaries)`.
pub type Run = fn(&mut Section, &Plan, &Bins) -> Result<()>;

/// What one section reports: its rows of the table and its notes under it.
#[derive(Debug)]
pub struct Section {
    /// The section's number, the first column of its rows.
    pub number: u8,
    /// Its rows, in order.
    pub rows: Vec<Row>,
    /// Its notes, in order.
    pub notes: Vec<String>,
}

impl Section {
    /// An empty section.
    pub fn new(number: u8) -> Section {
        Section {
            number,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a measured row (see [`Row::measured`]) and returns it, to give it a target.
    pub fn row(&mut self, measure: impl Into<String>, values: &[f64], unit: Unit) -> &mut Row {
        self.rows
            .push(Row::measured(self.number, measure, values, unit));
        let last = self.rows.len() - 1;
        &mut self.rows[last]
    }

    /// Adds a row for a measurement that failed.
    pub fn error(&mut self, measure: impl Into<String>, why: &str) {
        self.rows.push(Row::error(self.number, measure, why));
    }

    /// Adds a row that could not be measured here (see [`Row::not_measured`]).
    pub fn not_measured(&mut self, measure: impl Into<String>, why: &str) {
        self.rows.push(Row::not_measured(self.number, measure, why));
    }

    /// Adds a note.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

/// How long the benchmark stays asleep after a kill before it reads the master's log (the
/// timings come from the log's timestamps; reading earlier would only compete for the 2 CPUs).
const QUIET_AFTER_KILL: Duration = Duration::from_millis(30);

/// Nanoseconds from `from` to `to` (0 if `to` is earlier).
fn ns(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64
}

fn is_ready_line(l: &Line) -> bool {
    l.text.contains("worker ready pid=")
}

fn is_spawned_line(l: &Line) -> bool {
    l.text.contains("worker spawned ")
}

/// Kills `pid` (one of ours: a worker we saw with its id).
fn kill(pid: i32, sig: Signal) -> Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid), sig).with_context(|| format!("kill({pid}, {sig})"))
}

// ---------------------------------------------------------------------------------------------
// The servers under test

/// One connection to a sleeper: it must answer `ok <id>`.
fn answered(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    if !buf.starts_with("ok ") {
        bail!("unexpected answer {buf:?}");
    }
    Ok(())
}

/// One `GET /` with `Connection: close` to an HTTP server: it must answer `200`.
fn http_ok(addr: SocketAddr) -> Result<()> {
    let (status, body) = proc_kit::http::http_get(addr, "/", Duration::from_secs(5))?;
    if status != 200 {
        bail!("unexpected answer {status} {body:?}");
    }
    Ok(())
}

/// A started sleeper master with all its workers ready.
struct Sleeper {
    server: Server,
    /// Spawn of the master → the bench saw the N-th `worker ready` line and then got an answer.
    to_answer_ns: u64,
    /// Spawn of the master → the master logged the N-th `worker ready` (its own timestamp).
    to_logged_ready_ns: u64,
}

fn start_sleeper(bins: &Bins, n: u32, extra: &[&str], timeout: Duration) -> Result<Sleeper> {
    let mut cmd = Command::new(&bins.sleeper);
    cmd.args(["-w", &n.to_string(), "-p", "0"]).args(extra);
    let server = Server::start(cmd, "bench-sleeper")?;
    let addr = server.addr(timeout)?;
    let ready = server.log.wait_count(
        0,
        n as usize,
        timeout,
        "every worker's readiness",
        is_ready_line,
    )?;
    answered(addr)?;
    let t = clock::mono_ns();
    let logged = ready.iter().filter_map(Line::mono_ts).max().unwrap_or(t);
    Ok(Sleeper {
        to_answer_ns: t.saturating_sub(server.started_ns),
        to_logged_ready_ns: logged.saturating_sub(server.started_ns),
        server,
    })
}

/// Starts `sample-warp-like` with `workers` (and `threads` runtime threads each) and waits until
/// every worker is ready and it answers.
fn start_warp(bins: &Bins, workers: u32, threads: Option<u32>) -> Result<(Server, SocketAddr)> {
    start_warp_with(bins, workers, threads, &[])
}

/// As [`start_warp`], with more environment variables.
fn start_warp_with(
    bins: &Bins,
    workers: u32,
    threads: Option<u32>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<(Server, SocketAddr)> {
    start_http(&bins.warp, "sample-warp-like", workers, threads, env)
}

/// As [`start_warp`], with more flags.
fn start_warp_flags(
    bins: &Bins,
    workers: u32,
    threads: Option<u32>,
    flags: &[&str],
) -> Result<(Server, SocketAddr)> {
    start_http_with(&bins.warp, "sample-warp-like", workers, threads, &[], flags)
}

/// Starts `sample-axum` with `workers` and waits until every worker is ready and it answers.
fn start_axum(bins: &Bins, workers: u32) -> Result<(Server, SocketAddr)> {
    start_http(&bins.axum, "sample-axum", workers, None, &[])
}

/// Starts the HTTP sample at `path` (`-p 0 -w WORKERS [--threads N]`, the flags every HTTP
/// sample takes, old builds included) with `env` added to its environment, and waits until
/// every worker is ready and it answers.
fn start_http(
    path: &Path,
    name: &str,
    workers: u32,
    threads: Option<u32>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<(Server, SocketAddr)> {
    start_http_with(path, name, workers, threads, env, &[])
}

/// As [`start_http`], with more flags.
fn start_http_with(
    path: &Path,
    name: &str,
    workers: u32,
    threads: Option<u32>,
    env: &[(&str, &std::ffi::OsStr)],
    flags: &[&str],
) -> Result<(Server, SocketAddr)> {
    let mut cmd = Command::new(path);
    cmd.args(["-p", "0", "-w", &workers.to_string()])
        .args(flags);
    cmd.envs(env.iter().copied());
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    cmd.env("RUST_LOG", "info,prefork_core=debug");
    let server = Server::start(cmd, name)?;
    let addr = server.addr(Duration::from_secs(30))?;
    server.log.wait_count(
        0,
        workers as usize,
        Duration::from_secs(30),
        "every worker's readiness",
        is_ready_line,
    )?;
    http_ok(addr)?;
    Ok((server, addr))
}

/// One load run of `secs`: the report, and each of `workers()`'s ESTABLISHED connections
/// sampled half-way (empty when it has no workers).
fn run_with_spread(
    spec: &load::Spec,
    secs: f64,
    workers: impl Fn() -> Vec<i32>,
) -> Result<(load::Report, Vec<usize>)> {
    let running = load::start(spec)?;
    std::thread::sleep(Duration::from_secs_f64(secs / 2.0));
    let spread = workers()
        .iter()
        .map(|&w| procfs::established_tcp(w))
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs / 2.0));
    Ok((running.finish(), spread))
}

/// Connections per worker, run by run: `19/13, 31/1`.
fn show_spread(runs: &[Vec<usize>]) -> String {
    runs.iter()
        .map(|v| v.iter().map(usize::to_string).collect::<Vec<_>>().join("/"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per-process floors measured by `bench-sleeper --floor`, in ns.
#[derive(Debug, Default)]
struct Floors {
    /// fork + exec + wait of a no-op run.
    total: Vec<f64>,
    /// fork → the exec happened.
    exec: Vec<f64>,
    /// posix_spawn (vfork) → the exec happened.
    spawn: Vec<f64>,
}

/// Runs `bench-sleeper --floor` (`gap_ms` asleep before each start).
fn floors(bins: &Bins, iters: u32, reps: usize, gap_ms: u64) -> Result<Floors> {
    let mut f = Floors::default();
    for _ in 0..reps {
        let mut cmd = Command::new(&bins.sleeper);
        cmd.args([
            "--floor",
            &iters.to_string(),
            "--gap-ms",
            &gap_ms.to_string(),
        ]);
        let out = guard::run_output(cmd, Duration::from_secs(60), "bench-sleeper --floor")?;
        let field = |k: &str| -> Result<f64> {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad floor output {out:?}"))
        };
        f.total.push(field("floor_ns=")? / f64::from(iters));
        f.exec.push(field("exec_ns=")? / f64::from(iters));
        f.spawn.push(field("spawn_ns=")? / f64::from(iters));
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// Watching them

/// A master's CPU time and context switches at one moment.
#[derive(Clone, Copy, Debug)]
struct Snap {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Time on CPU (schedstat), ns.
    cpu_ns: u64,
    /// Voluntary context switches (wake-ups).
    voluntary: u64,
    /// Involuntary context switches (preemptions).
    nonvoluntary: u64,
}

fn snap(pid: i32) -> Result<Snap> {
    let st = procfs::stat(pid).context("master gone")?;
    let status = procfs::status(pid).context("master gone")?;
    let (cpu_ns, _) = procfs::schedstat(pid).unwrap_or((0, 0));
    Ok(Snap {
        ticks: st.utime + st.stime,
        cpu_ns,
        voluntary: status.voluntary,
        nonvoluntary: status.nonvoluntary,
    })
}

/// Polls `/proc/sys/kernel/ns_last_pid` and the new pids' `/proc` entries until a child of
/// `master` has an argv that `is_it` accepts (for a prefork worker, `id=K`: it was forked and
/// has exec'd; for nginx, its `nginx: worker process` title). Returns the monotonic time it was
/// seen.
fn poll_new_child(
    master: i32,
    what: &str,
    is_it: &dyn Fn(&[String]) -> bool,
    after: i32,
    timeout: Duration,
) -> Result<u64> {
    let end = Instant::now() + timeout;
    let mut checked = after;
    // New pid → how many polls in a row it had no /proc entry (a pid is visible in
    // ns_last_pid a moment before its /proc entry; one that stays absent died).
    let mut candidates: BTreeMap<i32, u32> = BTreeMap::new();
    loop {
        if let Some(last) = procfs::last_pid()
            && last != checked
        {
            if last > checked {
                candidates.extend((checked + 1..=last).map(|p| (p, 0)));
            } else {
                // Wrapped around pid_max: the low pids are new.
                candidates.extend((1..=last).map(|p| (p, 0)));
            }
            checked = last;
        }
        let mut gone = Vec::new();
        for (&p, misses) in candidates.iter_mut() {
            match procfs::stat(p) {
                Some(st) if st.ppid == master => {
                    if procfs::cmdline(p).is_some_and(|a| is_it(&a)) {
                        return Ok(clock::mono_ns());
                    }
                }
                Some(_) => gone.push(p),
                None => {
                    *misses += 1;
                    if *misses > 100 {
                        gone.push(p);
                    }
                }
            }
        }
        for p in gone {
            candidates.remove(&p);
        }
        if Instant::now() >= end {
            bail!("no new child ({what}) of {master} within {timeout:?}");
        }
    }
}
