//! Fixture: an async prefork program that installs no log subscriber of its own.
//!
//! `fx-async [--workers N] [--mode serve|crash|exit-code CODE|exit-code-result] [--unix PATH]
//!           [--hooks]`
//!
//! * `serve`: each worker prints `async worker <id> ready pid <pid> gen <g>`, awaits
//!   `worker::stopped()`, then prints `async worker <id> stopped by <SIG>` and returns.
//! * `crash`: each worker exits 3 at once (a crash loop, for the default logging).
//! * `exit-code CODE`: the worker function returns `ExitCode::from(CODE)`.
//! * `--unix PATH`: the workers also inherit a Unix listener bound at PATH.
//! * `--hooks`: the exit, pool-ready and reload-finished hooks print what they receive:
//!   `exit id=<id> pid=<pid> gen=<g> status=<status> reason=<reason>`,
//!   `pool-ready gen=<g> outcome=<outcome>`, `reload-finished gen=<g> outcome=<outcome>`.

use std::io::Write;
use std::process::ExitCode;

use prefork_core::{
    InheritedListener, ReloadOutcome, ReloadReport, Spawner, WorkerContext, WorkerSet,
    default_main_async, relaunch_settings,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Job {
    #[prefork(id, arg)]
    id: u32,
    mode: String,
    code: u8,
    #[prefork(fd)]
    unix: Option<InheritedListener>,
}

fn say(s: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn outcome(r: &ReloadReport<u32>) -> String {
    match &r.outcome {
        ReloadOutcome::Complete => "complete".into(),
        ReloadOutcome::Incomplete { failed } => format!(
            "incomplete:{}",
            failed
                .iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        ReloadOutcome::Rejected => "rejected".into(),
    }
}

fn main() {
    let args = prefork_core::args();
    let mut workers = 2u32;
    let mut mode = "serve".to_string();
    let mut code = 0u8;
    let mut unix: Option<String> = None;
    let mut hooks = false;
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--workers" => workers = it.next().and_then(|v| v.parse().ok()).unwrap_or(2),
            "--mode" => mode = it.next().unwrap_or_default(),
            "--code" => code = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--unix" => unix = it.next(),
            "--hooks" => hooks = true,
            other => {
                eprintln!("fx-async: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let m = mode.clone();
    let update = move |set: &mut WorkerSet<Job>| {
        set.set((0..workers).map(|id| Job {
            id,
            mode: m.clone(),
            code,
            unix: None,
        }));
        Some(())
    };
    let mut shared: Option<InheritedListener> = None;
    let fork = move |j: &Job, spawner: &Spawner| -> prefork_core::Result<_> {
        let mut j = j.clone();
        if let Some(path) = &unix {
            let l = match &shared {
                Some(l) => l.clone(),
                None => shared.insert(InheritedListener::bind_unix(path)?).clone(),
            };
            j.unix = Some(l);
        }
        spawner.fork_worker_process(&j)
    };
    let mut settings = relaunch_settings(update, fork);
    if hooks {
        settings = settings
            .on_worker_exit(|e| {
                say(format!(
                    "exit id={} pid={} gen={} status={} reason={}",
                    e.id, e.pid, e.generation, e.status, e.reason
                ))
            })
            .on_pool_ready(|r| {
                say(format!(
                    "pool-ready gen={} outcome={}",
                    r.generation,
                    outcome(r)
                ))
            })
            .on_reload_finished(|r| {
                say(format!(
                    "reload-finished gen={} outcome={}",
                    r.generation,
                    outcome(r)
                ))
            });
    }
    default_main_async(settings, |j: Job| async move {
        match j.mode.as_str() {
            "crash" => std::process::exit(3),
            "exit-code" => ExitCode::from(j.code),
            _ => {
                say(format!(
                    "async worker {} ready pid {} gen {}",
                    j.id,
                    std::process::id(),
                    prefork_core::worker::generation()
                ));
                if let Err(e) = prefork_core::worker::stopped().await {
                    say(format!("async worker {} cannot wait: {e}", j.id));
                    return ExitCode::from(1);
                }
                say(format!(
                    "async worker {} stopped by {}",
                    j.id,
                    prefork_core::worker::configured_stop_signal()
                ));
                ExitCode::SUCCESS
            }
        }
    })
}
