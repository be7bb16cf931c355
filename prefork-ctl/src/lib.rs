//! `prefork-ctl`: talks to any prefork master over its control socket.
//!
//! ```text
//! prefork-ctl -s PATH status [--json] [--resources]
//! prefork-ctl -s PATH reload              exit 0: complete; 1: incomplete or rejected (why on stderr)
//! prefork-ctl -s PATH scale N|+K|-K
//! prefork-ctl -s PATH replace ID
//! prefork-ctl -s PATH stop [--fast]
//! prefork-ctl -s PATH metrics
//! prefork-ctl -s PATH upgrade             exit 0: upgraded; 1: refused or rolled back (why on stderr)
//! ```
//!
//! The master must have been started with a control socket
//! (`Settings::control_socket`, `--control PATH` in the samples). Each command is one request
//! and one response ([`prefork_core::control`]). A refusal or a failure is one line on stderr
//! and exit status 1; bad usage exits 2.
//!
//! The program is [`run`], so that tests (and other programs) can drive it in-process.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use prefork_core::control::{self, Command, Response, ScaleChange};
use prefork_core::status::{
    ReloadResult, ReloadStatus, Status, Timestamp, UpgradeResult, UpgradeStatus, WorkerStatus,
};

/// Talks to a running prefork master over its control socket.
#[derive(Debug, Parser)]
#[command(name = "prefork-ctl", version)]
struct Cli {
    /// The master's control socket.
    #[arg(short, long, value_name = "PATH")]
    socket: PathBuf,
    /// Give up waiting for the answer after SECS (default: 10 s; `reload` and `replace` wait
    /// as long as the master takes).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the master, its workers and its listeners.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        /// Also read each worker's memory and CPU (from /proc, in the master).
        #[arg(long)]
        resources: bool,
    },
    /// Reload (as SIGHUP) and wait until it finished: exit 0 when every worker was replaced,
    /// 1 when the reload was incomplete or rejected.
    Reload,
    /// Change the number of workers: N, +K or -K.
    Scale {
        /// N, +K or -K.
        #[arg(allow_hyphen_values = true, value_name = "N|+K|-K")]
        change: ScaleChange,
    },
    /// Replace one worker (rolling, readiness-gated) and wait until the new one took over.
    Replace {
        /// The worker's id, as `status` shows it.
        id: String,
    },
    /// Stop the master: gracefully (as SIGTERM), or with --fast, SIGKILL to every worker.
    Stop {
        /// Do not drain: kill the workers at once.
        #[arg(long)]
        fast: bool,
    },
    /// Print the metrics in the Prometheus text format.
    Metrics,
    /// Upgrade the master in place (as SIGUSR2) to the binary now at its path, and wait until
    /// every worker runs the new code: exit 0 when upgraded, 1 when refused or rolled back.
    Upgrade,
}

/// Runs `prefork-ctl` with `args` (the program name first), writing what it prints to `out`
/// and `err`; returns the exit status: 0 done, 1 refused or failed (one line on `err`), 2 bad
/// usage.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let code = e.exit_code();
            let _ = if code == 0 {
                out.write_all(text.as_bytes())
            } else {
                err.write_all(text.as_bytes())
            };
            return u8::try_from(code).unwrap_or(2);
        }
    };
    match execute(&cli, out) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(msg) => {
            let _ = writeln!(err, "prefork-ctl: {msg}");
            1
        }
    }
}

/// Sends the command and prints the answer; `Ok(false)` for a reload that did not complete
/// (after printing it), `Err` for a refusal or a failure.
fn execute(cli: &Cli, out: &mut dyn Write) -> Result<bool, String> {
    let (cmd, json) = match &cli.cmd {
        Cmd::Status { json, resources } => (
            Command::Status {
                resources: *resources,
            },
            *json,
        ),
        Cmd::Reload => (Command::Reload, false),
        Cmd::Scale { change } => (Command::Scale { change: *change }, false),
        Cmd::Replace { id } => (Command::Replace { id: id.clone() }, false),
        Cmd::Stop { fast } => (Command::Stop { fast: *fast }, false),
        Cmd::Metrics => (Command::Metrics, false),
        Cmd::Upgrade => (Command::Upgrade, false),
    };
    let response = match cli.timeout {
        Some(secs) if secs.is_finite() && secs > 0.0 => control::request_timeout(
            &cli.socket,
            &cmd,
            Some(Duration::from_secs_f64(secs.min(1e9))),
        ),
        Some(secs) => return Err(format!("invalid --timeout {secs}: expected seconds > 0")),
        None => control::request(&cli.socket, &cmd),
    }
    .map_err(|e| e.report().to_string())?;
    let print = |out: &mut dyn Write, s: &str| {
        out.write_all(s.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to standard output: {e}"))
    };
    match response {
        Response::Error { error } => Err(error),
        Response::Status { status } if json => {
            let s = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
            print(out, &format!("{s}\n"))?;
            Ok(true)
        }
        Response::Status { status } => {
            print(out, &table(&status))?;
            Ok(true)
        }
        Response::Reload { reload } => {
            print(out, &format!("reload: {}\n", reload_line(&reload)))?;
            match reload.outcome {
                ReloadResult::Ok => Ok(true),
                ReloadResult::Incomplete => {
                    let why: Vec<String> = reload
                        .failed
                        .iter()
                        .map(|f| format!("id {}: {}", f.id, f.reason))
                        .collect();
                    Err(format!("reload incomplete: {}", why.join("; ")))
                }
                ReloadResult::Rejected => Err(
                    "reload rejected: update returned no configuration; the workers keep running"
                        .into(),
                ),
            }
        }
        Response::Scale { scale } => {
            let mut line = format!("scale {} -> {}", scale.from, scale.to);
            if !scale.started.is_empty() {
                line += &format!("; starting id {}", scale.started.join(", "));
            }
            if !scale.removed.is_empty() {
                line += &format!("; stopping id {}", scale.removed.join(", "));
            }
            print(out, &format!("{line}\n"))?;
            Ok(true)
        }
        Response::Replace { replace } => {
            print(
                out,
                &format!(
                    "id {}: pid {} replaced by pid {}\n",
                    replace.id, replace.old_pid, replace.new_pid
                ),
            )?;
            Ok(true)
        }
        Response::Stopping { fast } => {
            let how = if fast {
                "killing its workers"
            } else {
                "draining"
            };
            print(out, &format!("master stopping ({how})\n"))?;
            Ok(true)
        }
        Response::Metrics { text } => {
            print(out, &text)?;
            Ok(true)
        }
        Response::Upgrade { upgrade } => {
            print(out, &format!("upgrade: {}\n", upgrade_line(&upgrade)))?;
            match upgrade.outcome {
                UpgradeResult::Upgraded => Ok(true),
                UpgradeResult::Refused => Err(format!(
                    "upgrade refused: {}",
                    upgrade.reason.as_deref().unwrap_or("no reason given")
                )),
                UpgradeResult::RolledBack => Err(format!(
                    "upgrade rolled back: {}",
                    upgrade.reason.as_deref().unwrap_or("no reason given")
                )),
            }
        }
    }
}

fn upgrade_line(u: &UpgradeStatus) -> String {
    let outcome = match u.outcome {
        UpgradeResult::Upgraded => "upgraded",
        UpgradeResult::Refused => "refused",
        UpgradeResult::RolledBack => "rolled back",
    };
    format!(
        "{outcome}; master pid {}, generation {}",
        u.pid, u.generation
    )
}

/// `3m12s`, `41s`, `850ms`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        format!("{}ms", d.as_millis())
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s / 3600 % 24)
    }
}

fn reload_line(r: &ReloadStatus) -> String {
    let outcome = match r.outcome {
        ReloadResult::Ok => "ok",
        ReloadResult::Incomplete => "incomplete",
        ReloadResult::Rejected => "rejected",
    };
    format!("generation {} {outcome} in {} ms", r.generation, r.took_ms)
}

/// The status as a readable table.
fn table(s: &Status) -> String {
    let m = &s.master;
    let now = m.now.unwrap_or_else(Timestamp::now);
    let mut o = String::new();
    let state = serde_json::to_value(m.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    o += &format!(
        "master {}  {state}  up {}  generation {}  ready {}/{}",
        m.pid,
        human(m.started_at.age_at(now)),
        m.generation,
        m.ready,
        m.desired
    );
    if let Some(sc) = m.scale {
        o += &format!("  scale {} ({}..={})", sc.current, sc.min, sc.max);
    }
    if let Some(a) = m.adaptive {
        o += &format!(
            "  adaptive {}/{} ({} idle, spare {}..{}, max {})",
            a.active, a.candidates, a.idle, a.min_spare, a.max_spare, a.max_workers
        );
    }
    o.push('\n');
    if let Some(r) = &m.last_reload {
        o += &format!(
            "last reload: {}, {} ago\n",
            reload_line(r),
            human(r.finished_at.age_at(now))
        );
        for f in &r.failed {
            o += &format!("  id {} failed: {}\n", f.id, f.reason);
        }
    }
    let c = &m.counters;
    o += &format!(
        "spawns {}  restarts {}  failed starts {}  reloads ok {} / incomplete {} / rejected {}\n\n",
        c.spawns,
        c.restarts,
        c.failed_starts,
        c.reloads_ok,
        c.reloads_incomplete,
        c.reloads_rejected
    );
    if let Some(u) = &m.last_upgrade {
        o.insert_str(
            o.len() - 1,
            &format!(
                "last upgrade: {}, {} ago{}\n",
                upgrade_line(u),
                human(u.finished_at.age_at(now)),
                u.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        );
    }
    let with_res = s.workers.iter().any(|w| w.resources.is_some());
    // Scoreboard columns only when a worker counts requests or beats.
    let with_reqs = s.workers.iter().any(|w| w.requests > 0 || w.in_flight > 0);
    let with_beat = s.workers.iter().any(|w| w.heartbeat_age_ms.is_some());
    let mut rows = vec![{
        let mut h = vec![
            "ID",
            "PID",
            "GEN",
            "STATE",
            "UP",
            "RESTARTS",
            "FAILED",
            "LAST EXIT",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if with_reqs {
            h.extend(["REQS".into(), "BUSY".into()]);
        }
        if with_beat {
            h.push("BEAT".into());
        }
        if with_res {
            h.extend(["RSS".into(), "PSS".into(), "CPU".into()]);
        }
        h
    }];
    for w in &s.workers {
        let mut row = worker_row(w, now, with_res);
        let at = row.len() - if with_res { 3 } else { 0 };
        let mut extra = Vec::new();
        if with_reqs {
            extra.extend([w.requests.to_string(), w.in_flight.to_string()]);
        }
        if with_beat {
            let beat = w.heartbeat_age_ms;
            extra.push(beat.map_or_else(|| "-".into(), |ms| format!("{ms}ms ago")));
        }
        row.splice(at..at, extra);
        rows.push(row);
    }
    o += &columns(&rows);
    if !s.listeners.is_empty() {
        o.push('\n');
        let mut rows = vec![vec![
            "LISTENER".to_string(),
            "KIND".into(),
            "QUEUE".into(),
            "BACKLOG".into(),
        ]];
        for l in &s.listeners {
            let n = |v: Option<u32>| v.map_or_else(|| "-".into(), |v| v.to_string());
            let kind = serde_json::to_value(l.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            rows.push(vec![l.addr.clone(), kind, n(l.accept_queue), n(l.backlog)]);
        }
        o += &columns(&rows);
    }
    o
}

fn worker_row(w: &WorkerStatus, now: Timestamp, with_res: bool) -> Vec<String> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let state = serde_json::to_value(w.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let last = w.last_exit.as_ref().map(|e| {
        let how = match (&e.signal, e.code) {
            (Some(sig), _) => sig.clone(),
            (None, Some(c)) => format!("exit {c}"),
            (None, None) => "?".into(),
        };
        let reason = serde_json::to_value(e.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("{how} ({reason}) {} ago", human(e.at.age_at(now)))
    });
    let mut row = vec![
        w.id.clone(),
        opt(w.pid.map(|p| p.to_string())),
        opt(w.generation.map(|g| g.to_string())),
        state,
        opt(w.started_at.map(|t| human(t.age_at(now)))),
        w.restarts.to_string(),
        w.failed_starts.to_string(),
        opt(last),
    ];
    if with_res {
        let r = w.resources;
        row.push(opt(r.map(|r| format!("{} kB", r.rss_kb))));
        row.push(opt(r.map(|r| format!("{} kB", r.pss_kb))));
        row.push(opt(r.map(|r| format!("{} ms", r.cpu_ms))));
    }
    row
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut o = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line += cell;
            } else {
                line += &format!("{cell:<w$}  ", w = widths[i]);
            }
        }
        o += line.trim_end();
        o.push('\n');
    }
    o
}
