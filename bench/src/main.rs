//! `bench`: the benchmark command of prefork.
//!
//! ```text
//! cargo run --release -p bench -- [--quick] [--only 1,2,…] [--write | --no-write] [--skip-build]
//! ```
//!
//! It builds the real binaries (`cargo build --release -p samples -p bench --bins`, with the
//! `cargo` that runs it), finds them next to its own executable, and measures these things, each
//! repeated and reported as median, min and max:
//!
//! 1. **Startup**: exec of a master → N workers ready and the port answering (N = 1, 16, 64,
//!    256), beside the floor of N × (fork + exec + wait) of the same binary doing nothing.
//! 2. **Respawn**: `SIGKILL` one worker → its replacement exists, → it is ready; beside the
//!    floors of this VM and, if nginx is installed, nginx measured the same way.
//! 3. **Reload under load**: 5 `SIGHUP`s to `sample-warp-like -w 2` and to `sample-axum -w 4`
//!    under keep-alive and fresh connections: failed requests, and how long each reload takes.
//! 4. **Throughput and p99** of `sample-warp-like` `-w 1` and `-w 2` beside `bench-baseline`,
//!    the same HTTP stack in one process.
//! 5. **Cost of the master**: CPU and wake-ups over idle windows, RSS, fds; worker RSS.
//! 6. **Scale**: 1000 workers: time to ready, a storm of 100 kills, convergence, zombies.
//! 7. **Cost of the serving layer**: `sample-warp-like -w 2` of this tree against the same
//!    sample built from the commit before `prefork-http`, interleaved: req/s and worker CPU
//!    per request.
//! 8. **Health checks**: throughput with the scoreboard, heartbeats and the request guard on
//!    versus off, and `strace -c` of a worker (a heartbeat is no system call).
//! 9. **Control**: the control socket's `status` round trip with 16 and 1000 workers, and the
//!    idle master's wake-ups with the control socket on.
//! 10. **Reuseport groups**: the split of 64 connections over the workers, req/s and p99 of
//!     `sample-warp-like` with a shared socket and with `--reuseport`, pinned and unpinned,
//!     against one process and nginx; the thread-count default; reloads in reuseport mode.
//! 11. **Master upgrade in place**: 5 `SIGUSR2` upgrades of `sample-warp-like -w 4` under load
//!     (failed requests, the time of each step, the master's pid and `/proc/<pid>/exe`
//!     asserted), 10 in a row through the control socket (the master's fds and RSS), and
//!     nginx's binary upgrade under the same load as a control.
//!
//! It prints a table and, for a full run (or with `--write`), replaces the generated section of
//! `BENCHMARKS.md` at the workspace root, keeping the hand-written analysis around it. A run of
//! some sections (`--only`) replaces only their rows and notes there, and adds a line with the
//! date and load average of their own run.
//! `--quick` shrinks every count and duration, for a smoke run (then nothing is written unless
//! `--write` is given). Every process it starts is owned by a guard that stops and reaps it on
//! every path, errors and panics included.
//!
//! This file is the order of things: the sizes of the run ([`plan`]), the binaries ([`bins`]),
//! one module per measurement ([`sections`]), the report ([`report`]). The processes are owned
//! by [`guard`] and read through `proc_kit` (shared with the test kit); [`load`] is the load
//! generator, [`clock`] the clocks, [`machine`] what the run happened on.

mod bins;
mod clock;
mod guard;
mod load;
mod machine;
mod plan;
mod report;
mod sections;

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;

use plan::Plan;
use report::{Header, Verdict};
use sections::Section;

/// The benchmark of prefork: startup, respawn, reload under load, throughput, master cost,
/// scale, health checks, control, reuseport groups, master upgrade in place.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    /// Shrink every count and duration (a smoke run); writes nothing unless --write.
    #[arg(long)]
    quick: bool,
    /// Only these sections (comma-separated section numbers).
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

/// The sections in order: number, name, measurement.
const SECTIONS: &[(u8, &str, sections::Run)] = &[
    (1, "startup", sections::startup::run),
    (2, "respawn", sections::respawn::run),
    (3, "reload under load", sections::reload::run),
    (4, "throughput", sections::throughput::run),
    (5, "cost of the master", sections::master_cost::run),
    (6, "scale", sections::scale::run),
    (7, "cost of the serving layer", sections::layer_cost::run),
    (8, "health checks", sections::health::run),
    (9, "control socket", sections::control::run),
    (10, "reuseport groups", sections::reuseport::run),
    (11, "master upgrade in place", sections::upgrade::run),
];

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
    let bins = bins::build_and_locate(cli.skip_build)?;
    let header = Header {
        quick: plan.quick,
        load_before,
        load_start: machine::loadavg(),
        machine: machine::Machine::probe(limits),
    };
    let want = |s: u8| cli.only.is_empty() || cli.only.contains(&s);

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &(n, name, measure) in SECTIONS {
        if !want(n) {
            continue;
        }
        eprintln!("bench: section {n}: {name}…");
        let t = Instant::now();
        let mut sec = Section::new(n);
        if let Err(e) = measure(&mut sec, &plan, &bins) {
            eprintln!("bench: section {n} ({name}) failed: {e:#}");
            sec.error(name, &format!("{e:#}"));
        }
        rows.append(&mut sec.rows);
        notes.extend(sec.notes.drain(..).map(|t| report::tag_note(n, &t)));
        eprintln!("bench: section {n} took {:.1} s", t.elapsed().as_secs_f64());
    }

    let odd = guard::unexpected_log_lines();
    if !odd.is_empty() {
        let text = format!(
            "Unexpected WARN/ERROR lines from the masters ({}): {}",
            odd.len(),
            odd.iter().take(10).cloned().collect::<Vec<_>>().join(" · ")
        );
        // In a partial run, under its first section, so that re-running it replaces the note.
        match cli.only.iter().min() {
            Some(&n) => notes.push(report::tag_note(n, &text)),
            None => notes.push(text),
        }
    }
    let text = report::render(&header, started.elapsed(), &rows, &notes);
    println!("{text}");
    let write = cli.write || (!cli.quick && !cli.no_write);
    if write {
        let path = bins::workspace_root().join("BENCHMARKS.md");
        let ran: Vec<u8> = SECTIONS
            .iter()
            .map(|&(n, _, _)| n)
            .filter(|&n| want(n))
            .collect();
        if ran.len() == SECTIONS.len() {
            report::write_section(&path, &text)?;
        } else {
            // `--only`: the other sections' rows and notes already there are kept.
            report::write_partial(&path, &header, started.elapsed(), &ran, &rows, &notes)?;
        }
        eprintln!("bench: wrote {}", path.display());
    }
    if rows.iter().any(|r| r.verdict == Verdict::Error) {
        bail!("some measurements failed (see the table)");
    }
    Ok(())
}
