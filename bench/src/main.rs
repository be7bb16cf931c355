//! `bench`: the benchmark command of prefork.
//!
//! ```text
//! cargo run --release -p bench -- [--quick] [--only 1,2,…] [--write | --no-write] [--skip-build]
//! ```
//!
//! It builds the real binaries (`cargo build --release -p samples -p bench --bins`, with the
//! `cargo` that runs it), finds them next to its own executable, and measures six things, each
//! repeated and reported as median, min and max:
//!
//! 1. **Startup**: exec of a master → N workers ready and the port answering (N = 1, 16, 64,
//!    256), beside the floor of N × (fork + exec + wait) of the same binary doing nothing.
//! 2. **Respawn**: `SIGKILL` one worker → its replacement exists, → it is ready; beside the
//!    floors of this VM and, if nginx is installed, nginx measured the same way.
//! 3. **Reload under load**: 5 `SIGHUP`s to `sample-warp-like` under keep-alive and fresh
//!    connections: failed requests, and how long each reload takes.
//! 4. **Throughput and p99** of `sample-warp-like` `-w 1` and `-w 2` beside `bench-baseline`,
//!    the same HTTP stack in one process.
//! 5. **Cost of the master**: CPU and wake-ups over idle windows, RSS, fds; worker RSS.
//! 6. **Scale**: 1000 workers: time to ready, a storm of 100 kills, convergence, zombies.
//!
//! It prints a table and, for a full run (or with `--write`), replaces the generated section of
//! `BENCHMARKS.md` at the workspace root, keeping the hand-written analysis around it.
//! `--quick` shrinks every count and duration, for a smoke run (then nothing is written unless
//! `--write` is given). Every process it starts is owned by a guard that stops and reaps it on
//! every path, errors and panics included.

mod guard;
mod load;
mod machine;
mod procfs;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use guard::{Line, Server};
use report::{Row, Unit};

/// The benchmark of prefork: startup, respawn, reload under load, throughput, master cost,
/// scale.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    /// Shrink every count and duration (a smoke run); writes nothing unless --write.
    #[arg(long)]
    quick: bool,
    /// Only these sections (comma-separated numbers 1-6).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Write the table into BENCHMARKS.md even for a quick run.
    #[arg(long, conflicts_with = "no_write")]
    write: bool,
    /// Do not write BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
    /// Do not run `cargo build` first (the binaries must be there).
    #[arg(long)]
    skip_build: bool,
}

/// The binaries under test.
#[derive(Debug)]
struct Bins {
    warp: PathBuf,
    sleeper: PathBuf,
    baseline: PathBuf,
}

/// Sizes of a run.
#[derive(Debug)]
struct Plan {
    quick: bool,
    startup_ns: Vec<u32>,
    startup_reps: usize,
    floor_iters: u32,
    floor_reps: usize,
    respawn_ns: Vec<u32>,
    respawn_samples: usize,
    reloads: usize,
    reload_gap: Duration,
    tput_secs: f64,
    tput_reps: usize,
    idle_window: Duration,
    idle_reps: usize,
    scale_n: u32,
    scale_reps: usize,
    storm: u32,
    storms: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                startup_ns: vec![1, 16, 64],
                startup_reps: 2,
                floor_iters: 20,
                floor_reps: 2,
                respawn_ns: vec![2, 16],
                respawn_samples: 8,
                reloads: 2,
                reload_gap: Duration::from_millis(300),
                tput_secs: 1.0,
                tput_reps: 1,
                idle_window: Duration::from_secs(2),
                idle_reps: 1,
                scale_n: 200,
                scale_reps: 1,
                storm: 20,
                storms: 1,
            }
        } else {
            Plan {
                quick,
                startup_ns: vec![1, 16, 64, 256],
                startup_reps: 7,
                floor_iters: 200,
                floor_reps: 7,
                respawn_ns: vec![2, 16],
                respawn_samples: 50,
                reloads: 5,
                reload_gap: Duration::from_secs(1),
                tput_secs: 5.0,
                tput_reps: 5,
                idle_window: Duration::from_secs(10),
                idle_reps: 3,
                scale_n: 1000,
                scale_reps: 3,
                storm: 100,
                storms: 3,
            }
        }
    }
}

/// How long the benchmark stays asleep after a kill before it reads the master's log (the
/// timings come from the log's timestamps; reading earlier would only compete for the 2 CPUs).
const QUIET_AFTER_KILL: Duration = Duration::from_millis(30);

/// Client threads and connections of the throughput runs (see the notes in the report).
const TPUT_CLIENT_THREADS: usize = 1;
const TPUT_CONNECTIONS: usize = 32;

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(1)
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(cli.quick);
    let load_before = machine::loadavg();
    let limits = machine::raise_limits();
    let bins = build_and_locate(cli.skip_build)?;
    let load_start = machine::loadavg();
    let machine = machine::Machine::probe(limits);
    let want = |s: u8| cli.only.is_empty() || cli.only.contains(&s);

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    type Section = fn(&Plan, &Bins, &mut Vec<Row>, &mut Vec<String>) -> Result<()>;
    let sections: [(u8, &str, Section); 6] = [
        (1, "startup", startup),
        (2, "respawn", respawn),
        (3, "reload under load", reload_under_load),
        (4, "throughput", throughput),
        (5, "cost of the master", master_cost),
        (6, "scale", scale),
    ];
    for (n, name, f) in sections {
        if !want(n) {
            continue;
        }
        eprintln!("bench: section {n}: {name}…");
        let t = Instant::now();
        if let Err(e) = f(&plan, &bins, &mut rows, &mut notes) {
            eprintln!("bench: section {n} ({name}) failed: {e:#}");
            rows.push(Row::error(n, name, &format!("{e:#}")));
        }
        eprintln!("bench: section {n} took {:.1} s", t.elapsed().as_secs_f64());
    }

    let odd = guard::unexpected_log_lines();
    if !odd.is_empty() {
        notes.push(format!(
            "Unexpected WARN/ERROR lines from the masters ({}): {}",
            odd.len(),
            odd.iter().take(10).cloned().collect::<Vec<_>>().join(" · ")
        ));
    }
    let text = render(
        &plan,
        &machine,
        &load_before,
        &load_start,
        started.elapsed(),
        &rows,
        &notes,
    );
    println!("{text}");
    let write = cli.write || (!cli.quick && !cli.no_write);
    if write {
        let path = workspace_root().join("BENCHMARKS.md");
        write_section(&path, &text)?;
        eprintln!("bench: wrote {}", path.display());
    }
    if rows.iter().any(|r| r.verdict == report::Verdict::Error) {
        bail!("some measurements failed (see the table)");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds the binaries in release mode and finds them next to this executable.
fn build_and_locate(skip_build: bool) -> Result<Bins> {
    if !skip_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("bench: cargo build --release -p samples -p bench --bins");
        let st = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "samples",
                "-p",
                "bench",
                "--bins",
            ])
            .current_dir(workspace_root())
            .status()
            .context("cannot run cargo")?;
        if !st.success() {
            bail!("cargo build failed: {st}");
        }
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    // target/<profile>/bench → target/release/…
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("release"))
        .context("odd executable path")?;
    let find = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!("{} is missing (build it with --release)", p.display())
        }
    };
    Ok(Bins {
        warp: find("sample-warp-like")?,
        sleeper: find("bench-sleeper")?,
        baseline: find("bench-baseline")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn ns(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64
}

fn is_ready_line(l: &Line) -> bool {
    l.text.contains("worker ready pid=")
}

fn is_spawned_line(l: &Line) -> bool {
    l.text.contains("worker spawned ")
}

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
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    if !buf.starts_with("HTTP/1.1 200") {
        bail!("unexpected answer {buf:?}");
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
    let t = procfs::mono_ns();
    let logged = ready.iter().filter_map(Line::mono_ts).max().unwrap_or(t);
    Ok(Sleeper {
        to_answer_ns: t.saturating_sub(server.started_ns),
        to_logged_ready_ns: logged.saturating_sub(server.started_ns),
        server,
    })
}

/// Kills `pid` (one of ours: a worker we saw with its id).
fn kill(pid: i32, sig: Signal) -> Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid), sig).with_context(|| format!("kill({pid}, {sig})"))
}

// ---------------------------------------------------------------------------------------------
// 1. Startup

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

fn startup(plan: &Plan, bins: &Bins, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    let fl = floors(bins, plan.floor_iters, plan.floor_reps, 0)?;
    let floor = report::Summary::of(&fl.total).context("no floor")?.median;
    rows.push(Row::measured(
        1,
        format!(
            "floor: fork+exec+wait of `bench-sleeper --noop`, per process ({} in a row)",
            plan.floor_iters
        ),
        &fl.total,
        Unit::Time,
        None,
    ));
    rows.push(Row::measured(
        1,
        "floor: fork → exec happened (close-on-exec pipe at EOF), per process",
        &fl.exec,
        Unit::Time,
        None,
    ));
    rows.push(Row::measured(
        1,
        "floor: posix_spawn (vfork) → exec happened, per process (for comparison)",
        &fl.spawn,
        Unit::Time,
        None,
    ));
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
        let (target, ok): (String, Box<dyn Fn(f64) -> bool>) = match n {
            16 => ("≤ 25 ms".into(), Box::new(|m| m <= 25e6)),
            256 => (
                format!("≤ 2 × floor = {:.1} ms", 2.0 * floor_n / 1e6),
                Box::new(move |m| m <= 2.0 * floor_n),
            ),
            _ => (String::new(), Box::new(|_| true)),
        };
        let t = (!target.is_empty()).then_some((target.as_str(), &*ok as &dyn Fn(f64) -> bool));
        rows.push(Row::measured(
            1,
            format!(
                "startup, N={n}: exec of master → N ready + port answers (floor N × fork+exec: {:.2} ms)",
                floor_n / 1e6
            ),
            &to_answer,
            Unit::Time,
            t,
        ));
        rows.push(Row::measured(
            1,
            format!("startup, N={n}: exec of master → master logged the N-th ready"),
            &to_logged,
            Unit::Time,
            None,
        ));
        if let Some(s) = report::Summary::of(&to_answer) {
            medians.insert(n, s.median);
        }
    }
    if let (Some(&one), Some((&big, &t_big))) = (medians.get(&1), medians.iter().next_back())
        && big > 1
    {
        let per = (t_big - one) / f64::from(big - 1);
        notes.push(format!(
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

// ---------------------------------------------------------------------------------------------
// 2. Respawn

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

fn respawn(plan: &Plan, bins: &Bins, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    // The floors of this section: everything after 30 ms asleep, as a respawn on an idle
    // machine is.
    let gap = QUIET_AFTER_KILL;
    let wake = idle_wakeups(plan.respawn_samples, gap)?;
    rows.push(Row::measured(
        2,
        format!(
            "floor: wake-up round trip between two threads after {} ms idle (2 wake-ups)",
            gap.as_millis()
        ),
        &wake,
        Unit::Time,
        None,
    ));
    let idle = floors(
        bins,
        (plan.respawn_samples as u32).min(40),
        plan.floor_reps.min(3),
        gap.as_millis() as u64,
    )?;
    rows.push(Row::measured(
        2,
        format!(
            "floor: fork → exec happened, after {} ms idle, per process",
            gap.as_millis()
        ),
        &idle.exec,
        Unit::Time,
        None,
    ));
    rows.push(Row::measured(
        2,
        format!(
            "floor: posix_spawn (vfork) → exec happened, after {} ms idle (for comparison)",
            gap.as_millis()
        ),
        &idle.spawn,
        Unit::Time,
        None,
    ));
    for &n in &plan.respawn_ns {
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
        let mut reaped = Vec::new();
        let mut spawn = Vec::new();
        let mut exists = Vec::new();
        let mut ready = Vec::new();
        let mut seen_proc = Vec::new();
        // Pass A: the master's own log lines (monotonic timestamps).
        // Pass B: a tight poll of /proc for the new pid with `id=K` in its argv.
        let mut master_cpu = Vec::new();
        for pass in ['A', 'B'] {
            for i in 0..plan.respawn_samples {
                let cpu0 = procfs::schedstat(master).map_or(0, |c| c.0);
                let id = (i as u32 % n).to_string();
                let old = *pids.get(&id).context("unknown id")?;
                s.server.remember(old);
                std::thread::sleep(Duration::from_millis(20));
                let mark = s.server.log.len();
                let last_pid = procfs::last_pid().unwrap_or(0);
                let t0 = procfs::mono_ns();
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
                    seen_proc.push(ns(t0, t));
                } else {
                    // Stay off the CPUs while the master works: the timestamps are in its log.
                    std::thread::sleep(QUIET_AFTER_KILL);
                }
                let sp =
                    s.server
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
                    master_cpu.push(ns(cpu0, procfs::schedstat(master).map_or(0, |c| c.0)));
                    reaped.push(ns(t0, t_ex));
                    exists.push(ns(t0, t_sp));
                    spawn.push(ns(t_ex, t_sp));
                    ready.push(ns(t0, rd.mono_ts().context("no timestamp")?));
                }
                pids.insert(id, new);
                s.server.remember(new);
            }
        }
        let zombies = procfs::zombies(master).len();
        let live = s.server.workers().len();
        let one_ms = |m: f64| m <= 1e6;
        rows.push(Row::measured(
            2,
            format!("respawn, N={n}: SIGKILL → master reaped it (master log: `child reaped`)"),
            &reaped,
            Unit::Time,
            None,
        ));
        rows.push(Row::measured(
            2,
            format!("respawn, N={n}: the master's CPU time per respawn (reap, spawn, readiness)"),
            &master_cpu,
            Unit::Time,
            None,
        ));
        rows.push(Row::measured(
            2,
            format!("respawn, N={n}: reaped → replacement exists (the master's spawn)"),
            &spawn,
            Unit::Time,
            None,
        ));
        rows.push(Row::measured(
            2,
            format!(
                "respawn, N={n}: SIGKILL → replacement exists (master log: fork+exec returned)"
            ),
            &exists,
            Unit::Time,
            Some(("≤ 1 ms", &one_ms)),
        ));
        rows.push(Row::measured(
            2,
            format!(
                "respawn, N={n}: SIGKILL → replacement visible in /proc with its `id=` (tight poll)"
            ),
            &seen_proc,
            Unit::Time,
            None,
        ));
        rows.push(Row::measured(
            2,
            format!("respawn, N={n}: SIGKILL → replacement ready (master log: readiness read)"),
            &ready,
            Unit::Time,
            None,
        ));
        notes.push(format!(
            "Respawn N={n}: after {} kills, {live} live workers and {zombies} zombies.",
            2 * plan.respawn_samples
        ));
        s.server.stop(Duration::from_secs(20))?;
    }
    nginx_control(plan, rows, notes)?;
    Ok(())
}

/// The same tight /proc poll against nginx (fork without exec, one `nginx: worker process`
/// per worker), if nginx is installed: the field's figure measured on this machine.
fn nginx_control(plan: &Plan, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    let Some(nginx) = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        notes.push("Respawn: nginx is not installed, so the nginx control rows are absent.".into());
        return Ok(());
    };
    let version = Command::new(&nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let is_worker = |a: &[String]| a.first().is_some_and(|x| x.starts_with("nginx: worker"));
    for &n in &plan.respawn_ns {
        let dir =
            std::env::temp_dir().join(format!("prefork-bench-nginx-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes {n};\npid {pid};\n\
                 error_log stderr notice;\nevents {{ worker_connections 256; }}\n\
                 http {{ access_log off; server {{ listen 127.0.0.1:{port}; \
                 location / {{ return 200 \"hello\"; }} }} }}\n",
                pid = dir.join("nginx.pid").display()
            ),
        )?;
        let mut cmd = Command::new(&nginx);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg("stderr");
        let result = (|| -> Result<Vec<f64>> {
            let mut server = Server::start(cmd, "nginx")?;
            let master = server.pid();
            let end = Instant::now() + Duration::from_secs(10);
            let workers = loop {
                let w: Vec<i32> = procfs::children(master)
                    .into_iter()
                    .filter(|&p| procfs::cmdline(p).is_some_and(|a| is_worker(&a)))
                    .collect();
                if w.len() == n as usize {
                    break w;
                }
                if Instant::now() > end {
                    bail!("nginx did not start {n} workers");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            for &w in &workers {
                server.remember(w);
            }
            let mut seen = Vec::new();
            for i in 0..plan.respawn_samples {
                let live: Vec<i32> = procfs::children(master)
                    .into_iter()
                    .filter(|&p| {
                        procfs::stat(p).is_some_and(|s| s.state != 'Z')
                            && procfs::cmdline(p).is_some_and(|a| is_worker(&a))
                    })
                    .collect();
                let victim = *live.get(i % live.len().max(1)).context("no nginx worker")?;
                std::thread::sleep(QUIET_AFTER_KILL);
                let last_pid = procfs::last_pid().unwrap_or(0);
                let t0 = procfs::mono_ns();
                kill(victim, Signal::SIGKILL)?;
                let t = poll_new_child(
                    master,
                    "nginx: worker process",
                    &is_worker,
                    last_pid,
                    Duration::from_secs(5),
                )?;
                seen.push(ns(t0, t));
                std::thread::sleep(Duration::from_millis(20));
                let _ = server.workers();
            }
            server.stop(Duration::from_secs(20))?;
            Ok(seen)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(seen) => rows.push(Row::measured(
                2,
                format!(
                    "control: nginx, N={n}: SIGKILL → replacement visible in /proc (same tight poll)"
                ),
                &seen,
                Unit::Time,
                None,
            )),
            Err(e) => rows.push(Row::error(2, format!("control: nginx, N={n}"), &format!("{e:#}"))),
        }
    }
    notes.push(format!(
        "Respawn control: {version}, `worker_processes N`, its workers found by their \
         `nginx: worker process` title with the same tight poll (nginx forks without exec and \
         sets the title in the new worker)."
    ));
    Ok(())
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
                        return Ok(procfs::mono_ns());
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

// ---------------------------------------------------------------------------------------------
// 3. Reload under load

fn start_warp(bins: &Bins, workers: u32, threads: Option<u32>) -> Result<(Server, SocketAddr)> {
    let mut cmd = Command::new(&bins.warp);
    cmd.args(["-p", "0", "-w", &workers.to_string()]);
    if let Some(t) = threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    cmd.env("RUST_LOG", "info,prefork_core=debug");
    let server = Server::start(cmd, "sample-warp-like")?;
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

fn reload_under_load(
    plan: &Plan,
    bins: &Bins,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    const WORKERS: u32 = 2;
    let (server, addr) = start_warp(bins, WORKERS, None)?;
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
            let t0 = procfs::wall_ns();
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
    let zero = |m: f64| m == 0.0;
    rows.push(Row::measured(
        3,
        format!(
            "reload under load: failed requests over {} SIGHUPs ({} ok, {:.1} k req/s)",
            plan.reloads,
            rep.ok,
            rep.rate() / 1e3
        ),
        &[rep.failed_total() as f64],
        Unit::Count,
        Some(("0", &zero)),
    ));
    rows.push(Row::measured(
        3,
        "reload under load: SIGHUP → every worker new and ready (last `worker replaced`)",
        &to_ready,
        Unit::Time,
        None,
    ));
    rows.push(Row::measured(
        3,
        "reload under load: SIGHUP → every old worker exited (drained)",
        &to_drained,
        Unit::Time,
        None,
    ));
    notes.push(format!(
        "Reload: sample-warp-like -w {WORKERS} (2 runtime threads each), load of {} keep-alive connections \
         + {} connection-per-request loops on 1 client thread; {} keep-alive connections were closed \
         cleanly by draining workers (`Connection: close`) and reopened{}.",
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

// ---------------------------------------------------------------------------------------------
// 4. Throughput

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

/// Established TCP connections a worker holds: its socket inodes found in `/proc/net/tcp`
/// (and `tcp6`) in state `01` (ESTABLISHED).
fn worker_connections(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: BTreeSet<String> = dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|s| {
            s.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.get(3) == Some(&"01")).then(|| f.get(9).map(|i| i.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

fn throughput(
    plan: &Plan,
    bins: &Bins,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
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
    let spec = |addr, secs: f64| load::Spec {
        addr,
        keepalive: TPUT_CONNECTIONS,
        fresh: 0,
        threads: TPUT_CLIENT_THREADS,
        duration: Duration::from_secs_f64(secs),
        max_requests: 50_000_000,
    };
    // Warm-up: every server once, not counted.
    for t in &targets {
        load::run(&spec(t.addr, plan.tput_secs.min(1.0)))?;
    }
    // Interleaved repetitions, so a drift of the machine hits every target alike.
    for _ in 0..plan.tput_reps {
        for t in &mut targets {
            let running = load::start(&spec(t.addr, plan.tput_secs))?;
            std::thread::sleep(Duration::from_secs_f64(plan.tput_secs / 2.0));
            let workers: Vec<i32> = procfs::workers_by_id(t.server.pid())
                .into_values()
                .collect();
            if !workers.is_empty() {
                t.spread
                    .push(workers.iter().map(|&w| worker_connections(w)).collect());
            }
            std::thread::sleep(Duration::from_secs_f64(plan.tput_secs / 2.0));
            let r = running.finish();
            t.rates.push(r.rate());
            t.p50.push(r.hist.quantile(0.50) as f64);
            t.p99.push(r.hist.quantile(0.99) as f64);
            t.failed += r.failed_total();
        }
    }
    let mut p50s = Vec::new();
    for t in &targets {
        rows.push(Row::measured(
            4,
            format!("throughput, {}", t.name),
            &t.rates,
            Unit::Rate,
            None,
        ));
        rows.push(Row::measured(
            4,
            format!("p99 latency, {}", t.name),
            &t.p99,
            Unit::Time,
            None,
        ));
        for &(b, with_target) in &t.bases {
            let base = &targets[b];
            let ratios: Vec<f64> = t
                .rates
                .iter()
                .zip(&base.rates)
                .map(|(a, b)| a / b)
                .collect();
            let ok = |m: f64| m >= 0.97;
            let target = with_target.then_some(("≥ 97 %", &ok as &dyn Fn(f64) -> bool));
            let short = base.name.split(':').next().unwrap_or("baseline");
            rows.push(Row::measured(
                4,
                format!("ratio: {} / {short} (paired by run)", t.name),
                &ratios,
                Unit::Ratio,
                target,
            ));
        }
        if t.failed > 0 {
            notes.push(format!(
                "Throughput: {} had {} failed requests.",
                t.name, t.failed
            ));
        }
        if let Some(s) = report::Summary::of(&t.p50) {
            p50s.push(format!("{} {:.0} µs", t.name, s.median / 1e3));
        }
        if !t.spread.is_empty() {
            let shown: Vec<String> = t
                .spread
                .iter()
                .map(|v| v.iter().map(usize::to_string).collect::<Vec<_>>().join("/"))
                .collect();
            notes.push(format!(
                "Throughput: connections per worker of {}, mid-run, per run: {}.",
                t.name,
                shown.join(", ")
            ));
        }
    }
    notes.push(format!(
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

// ---------------------------------------------------------------------------------------------
// 5. Cost of the master

#[derive(Clone, Copy, Debug)]
struct Snap {
    ticks: u64,
    cpu_ns: u64,
    voluntary: u64,
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

fn master_cost(
    plan: &Plan,
    bins: &Bins,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let (mut warp, _) = start_warp(bins, 2, None)?;
    let mut sleeper = start_sleeper(bins, 16, &[], Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(1));
    let masters = [
        ("sample-warp-like -w 2", warp.pid()),
        ("bench-sleeper -w 16", sleeper.server.pid()),
    ];
    let mut d: BTreeMap<&str, [Vec<f64>; 4]> = BTreeMap::new();
    let mut rss: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..plan.idle_reps {
        let before: Vec<Snap> = masters
            .iter()
            .map(|(_, p)| snap(*p))
            .collect::<Result<_>>()?;
        std::thread::sleep(plan.idle_window);
        for ((name, pid), b) in masters.iter().zip(&before) {
            let a = snap(*pid)?;
            let e = d.entry(name).or_default();
            e[0].push((a.ticks - b.ticks) as f64);
            e[1].push((a.cpu_ns - b.cpu_ns) as f64);
            e[2].push((a.voluntary - b.voluntary) as f64);
            e[3].push((a.nonvoluntary - b.nonvoluntary) as f64);
            rss.entry(name)
                .or_default()
                .push(procfs::status(*pid).context("master gone")?.vm_rss_kb as f64);
        }
    }
    let secs = plan.idle_window.as_secs();
    for (name, pid) in masters {
        let e = &d[name];
        let zero = |m: f64| m == 0.0;
        // "4 MB", read strictly: 4,000 kB (`/proc` counts KiB).
        let rss_ok = |m: f64| m <= 4000.0;
        let warp_master = name.starts_with("sample");
        let t_zero: Option<(&str, &dyn Fn(f64) -> bool)> = warp_master.then_some(("0", &zero));
        let t_rss: Option<(&str, &dyn Fn(f64) -> bool)> =
            warp_master.then_some(("≤ 4 MB (4000 kB)", &rss_ok));
        rows.push(Row::measured(
            5,
            format!("{name}: idle master CPU over {secs} s (utime+stime ticks)"),
            &e[0],
            Unit::Count,
            t_zero,
        ));
        rows.push(Row::measured(
            5,
            format!("{name}: idle master CPU time over {secs} s (schedstat)"),
            &e[1],
            Unit::Time,
            None,
        ));
        rows.push(Row::measured(
            5,
            format!("{name}: idle master wake-ups over {secs} s (voluntary ctxt switches)"),
            &e[2],
            Unit::Count,
            t_zero,
        ));
        rows.push(Row::measured(
            5,
            format!("{name}: idle master preemptions over {secs} s (involuntary ctxt switches)"),
            &e[3],
            Unit::Count,
            None,
        ));
        rows.push(Row::measured(
            5,
            format!("{name}: master RSS (VmRSS)"),
            &rss[name],
            Unit::Kib,
            t_rss,
        ));
        let pss = procfs::pss_kb(pid).unwrap_or(0) as f64;
        rows.push(Row::measured(
            5,
            format!("{name}: master PSS (shared pages split)"),
            &[pss],
            Unit::Kib,
            None,
        ));
        let fds = procfs::fd_count(pid).unwrap_or(0) as f64;
        rows.push(Row::measured(
            5,
            format!("{name}: master open fds"),
            &[fds],
            Unit::Count,
            None,
        ));
        let workers: Vec<i32> = procfs::workers_by_id(pid).into_values().collect();
        let w_rss: Vec<f64> = workers
            .iter()
            .filter_map(|&w| procfs::status(w).map(|s| s.vm_rss_kb as f64))
            .collect();
        let w_pss: Vec<f64> = workers
            .iter()
            .filter_map(|&w| procfs::pss_kb(w).map(|s| s as f64))
            .collect();
        let w_threads = workers
            .first()
            .and_then(|&w| procfs::status(w))
            .map_or(0, |s| s.threads);
        rows.push(Row::measured(
            5,
            format!("{name}: worker RSS, over the workers ({w_threads} threads each)"),
            &w_rss,
            Unit::Kib,
            None,
        ));
        rows.push(Row::measured(
            5,
            format!("{name}: worker PSS, over the workers"),
            &w_pss,
            Unit::Kib,
            None,
        ));
    }
    notes.push(format!(
        "Master cost: both masters idle at once, {} window(s) of {secs} s after 1 s of settling. A wake-up is a voluntary context switch \
         (the master slept in poll and was woken).",
        plan.idle_reps
    ));
    // Let the guards remember the workers they clean up after.
    let _ = warp.workers();
    let _ = sleeper.server.workers();
    warp.stop(Duration::from_secs(30))?;
    sleeper.server.stop(Duration::from_secs(30))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Scale

fn scale(plan: &Plan, bins: &Bins, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
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
    let three_s = |m: f64| m <= 3e9;
    rows.push(Row::measured(
        6,
        format!("scale: exec of master → {n} workers ready + port answers"),
        &to_ready,
        Unit::Time,
        (n >= 1000).then_some(("≤ 3 s", &three_s as &dyn Fn(f64) -> bool)),
    ));
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
        let t0 = procfs::mono_ns();
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
        zombies.push(procfs::zombies(master).len() as f64);
        let live = s.server.workers().len();
        if live != n as usize {
            bail!("{live} live workers after storm {k}, wanted {n}");
        }
    }
    rows.push(Row::measured(
        6,
        format!("scale: SIGKILL {storm} of {n} at once → all {storm} replacements ready"),
        &conv,
        Unit::Time,
        None,
    ));
    rows.push(Row::measured(
        6,
        format!("scale: master CPU during the storm of {storm} (schedstat)"),
        &cpu,
        Unit::Time,
        None,
    ));
    rows.push(Row::measured(
        6,
        format!(
            "scale: master CPU during the storm of {storm} (ticks of 1/{} s)",
            procfs::clk_tck()
        ),
        &ticks,
        Unit::Count,
        None,
    ));
    let zero = |m: f64| m == 0.0;
    rows.push(Row::measured(
        6,
        "scale: zombies after the storm (children of the master in state Z)",
        &zombies,
        Unit::Count,
        Some(("0", &zero)),
    ));
    notes.push(format!(
        "Scale: {} storm(s), every {stride}th id killed (the same pids' slots), {} workers live \
         after each.",
        plan.storms, n
    ));
    s.server.stop(Duration::from_secs(60))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

const BEGIN: &str = "<!-- bench:begin (generated by `cargo run --release -p bench`; edits inside are overwritten) -->";
const END: &str = "<!-- bench:end -->";

fn render(
    plan: &Plan,
    m: &machine::Machine,
    load_before: &str,
    load_start: &str,
    took: Duration,
    rows: &[Row],
    notes: &[String],
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "### Results{}\n\n",
        if plan.quick {
            " (QUICK smoke run: not representative)"
        } else {
            ""
        }
    ));
    s.push_str(&format!(
        "- Date: {} · run took {:.0} s\n- Machine: {} CPUs ({}), {} MiB RAM, Linux {}\n- Toolchain: {}\n\
         - Load average (1/5/15 min) before the build: {}; at the first measurement: {}; at the end: {}\n\
         - Limits: {}\n\n",
        m.date,
        took.as_secs_f64(),
        m.nproc,
        m.cpu,
        m.mem_mib,
        m.kernel,
        m.rustc,
        load_before,
        load_start,
        machine::loadavg(),
        m.limits
    ));
    s.push_str(&report::table(rows));
    if !notes.is_empty() {
        s.push_str("\nNotes of this run:\n\n");
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}

/// Replaces the generated section of `path` (between the markers), or appends one.
fn write_section(path: &Path, text: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{text}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ if old.is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_section_keeps_the_hand_written_text() {
        let path = std::env::temp_dir().join(format!("bench-md-{}.md", std::process::id()));
        let _ = std::fs::remove_file(&path);
        write_section(&path, "first").unwrap();
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.starts_with("# Benchmarks\n") && s.contains("first"));
        let edited = format!("intro `bench:begin`\n{s}\nanalysis\n");
        std::fs::write(&path, edited).unwrap();
        write_section(&path, "second").unwrap();
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.starts_with("intro `bench:begin`\n"));
        assert!(s.contains("second") && !s.contains("first"));
        assert!(s.ends_with("analysis\n"));
        let _ = std::fs::remove_file(&path);
    }
}
