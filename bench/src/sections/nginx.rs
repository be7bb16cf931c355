//! The control of section 2: nginx's respawn, measured with the same tight `/proc` poll (nginx
//! forks without exec, one `nginx: worker process` per worker), if nginx is installed: the
//! field's figure measured on this machine.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use proc_kit::procfs;

use super::{QUIET_AFTER_KILL, Section, kill, ns, poll_new_child};
use crate::clock;
use crate::guard::Server;
use crate::plan::Plan;
use crate::report::Unit;

/// True for the argv of an nginx worker (its title).
pub fn is_worker(a: &[String]) -> bool {
    a.first().is_some_and(|x| x.starts_with("nginx: worker"))
}

/// Adds the nginx control rows to section 2 (a note only, when nginx is not installed).
pub fn run(sec: &mut Section, plan: &Plan) -> Result<()> {
    let Some(nginx) = binary() else {
        sec.note("Respawn: nginx is not installed, so the nginx control rows are absent.");
        return Ok(());
    };
    let version = Command::new(&nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    for &n in &plan.respawn_ns {
        let dir =
            std::env::temp_dir().join(format!("prefork-bench-nginx-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = write_conf(&dir, n, port, "worker_connections 256;", "")?;
        let result = respawns(command(&nginx, &dir, &conf), n, plan.respawn_samples);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(seen) => {
                sec.row(
                    format!(
                        "control: nginx, N={n}: SIGKILL → replacement visible in /proc (same tight poll)"
                    ),
                    &seen,
                    Unit::Time,
                );
            }
            Err(e) => sec.error(format!("control: nginx, N={n}"), &format!("{e:#}")),
        }
    }
    sec.note(format!(
        "Respawn control: {version}, `worker_processes N`, its workers found by their \
         `nginx: worker process` title with the same tight poll (nginx forks without exec and \
         sets the title in the new worker)."
    ));
    Ok(())
}

/// Writes `dir/nginx.conf`: `n` workers answering `hello` on 127.0.0.1:`port`, in the
/// foreground, logging errors to standard error; `events` and `http` add their directives.
pub fn write_conf(
    dir: &std::path::Path,
    n: u32,
    port: u16,
    events: &str,
    http: &str,
) -> Result<PathBuf> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes {n};\npid {pid};\n\
             error_log stderr notice;\nevents {{ {events} }}\n\
             http {{ access_log off; {http} server {{ listen 127.0.0.1:{port}; \
             location / {{ return 200 \"hello\"; }} }} }}\n",
            pid = dir.join("nginx.pid").display()
        ),
    )?;
    Ok(conf)
}

/// nginx in the foreground with prefix `dir` and configuration `conf`, logging to standard
/// error.
pub fn command(bin: &std::path::Path, dir: &std::path::Path, conf: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg("stderr");
    cmd
}

/// The nginx binary, if nginx is installed.
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Starts nginx (`cmd`, configured for `n` workers), kills a worker `samples` times, and returns
/// the time from each kill to its replacement seen in `/proc`.
fn respawns(cmd: Command, n: u32, samples: usize) -> Result<Vec<f64>> {
    let mut server = Server::start(cmd, "nginx")?;
    let master = server.pid();
    let end = Instant::now() + Duration::from_secs(10);
    let workers = loop {
        let w: Vec<i32> = procfs::children_of(master)
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
    for i in 0..samples {
        let live: Vec<i32> = procfs::children_of(master)
            .into_iter()
            .filter(|&p| procfs::alive(p) && procfs::cmdline(p).is_some_and(|a| is_worker(&a)))
            .collect();
        let victim = *live.get(i % live.len().max(1)).context("no nginx worker")?;
        std::thread::sleep(QUIET_AFTER_KILL);
        let last_pid = procfs::last_pid().unwrap_or(0);
        let t0 = clock::mono_ns();
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
}
