//! Fixture: a prefork master with switchable worker behaviour, for the black-box tests.
//!
//! `fx-master [--workers N | --workers-file PATH] [--mode MODE] [--readiness explicit|implicit]
//!            [--shutdown-ms N] [--stop-ms N] [--backoff-ms INITIAL,MAX] [--ready-ms N]
//!            [--threads N] [--nice N] [--cpus LIST] [--nofile N] [--unix PATH] [--hooks]
//!            [--default-settings] [--mode-of ID=MODE]... [--once PATH] [--nonblocking]
//!            [--port N] [--stop-signal SIG] [--mode-file PATH] [--shutdown-delay-ms N]
//!            [--subreaper] [--user NAME] [--group NAME] [--groups LIST] [--extend-ms N]
//!            [--ready-delay-ms N] [--control PATH] [--status-file PATH] [--scale]
//!            [--scale-bounds MIN,MAX]`
//!
//! Modes (what each worker does): `serve` (accept on the inherited listener, answer
//! `pid <pid> id <id> gen <generation>` per connection; explicit readiness after the listener is
//! adopted; a non-blocking listener is waited on with `poll`), `crash` (exit 3 at once),
//! `ignore-term` (ignore SIGTERM, sleep), `sleep` (sleep until killed, never ready), `drain`
//! (install the stop signal, then exit 0 when asked), `ready-exit` (report ready, then exit 3 at
//! once), `count-stops` (print `worker <id> pid <pid> got <SIG>` for every stop signal, exit
//! 1.5 s after the first), `forge-ready` (report ready, then for 60 s send `ready <pid>` for each sibling worker on
//! the readiness socket, printing `forged ready <pid>` the first time for each), `shut-rd` and
//! `clear-nonblock` (as `serve`, but once ready first `shutdown(SHUT_RD)` the shared listener,
//! printing `worker <id> shut the listener`, or clear its `O_NONBLOCK`, printing `worker <id>
//! cleared O_NONBLOCK`; with `--once PATH` only the start that creates PATH does it), `orphan`
//! (start `sleep 1` in the background through `sh`, print `worker <id> orphaned <pid>`, where
//! the pid is the sleep's as the worker sees it, then serve as `serve` does). The serving modes
//! print `worker <id> ready gen <g> at <ms>` just before they report ready, `--ready-delay-ms N`
//! after waiting `N × id` ms.
//!
//! `--mode-file PATH` is read at every `update` (start and `SIGHUP`) and, when it exists,
//! replaces `--mode`: a deploy, broken or not. `--user`, `--group`, `--groups` are the workers'
//! identity; `--subreaper`, `--shutdown-delay-ms`, `--extend-ms` (EXTEND_TIMEOUT_USEC) the
//! master's settings.
//!
//! `--mode-of ID=MODE` gives worker ID another mode than `--mode`. `--nonblocking` binds the
//! listener with `InheritedListener::bind_tcp` (non-blocking, as the samples' is) instead of
//! wrapping a blocking std listener. `--port N` binds 127.0.0.1:N instead of an ephemeral port
//! (the kernel keeps an explicitly bound port through a `shutdown` of the listener; an
//! ephemeral one is released).
//!
//! `--control PATH` serves the control socket at PATH, `--status-file PATH` writes the status
//! file; `--scale` turns runtime scaling on, starting at `--workers` (`update` declares
//! `set.scale()` workers), within `--scale-bounds` (default 1,1024).
//!
//! It prints `listening on 127.0.0.1:PORT` once it bound its socket, `hook <name>` for each
//! hook call with `--hooks`, and workers print `worker <id> started pid <pid> gen <g> at <ms>` and
//! `worker env PREFORK_WORKER=<value|unset>`.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prefork_core::{
    InheritedListener, Pid, Readiness, RuntimeOptions, Signal, Spawner, Systemd, WorkerContext,
    WorkerSet, default_main, default_settings, relaunch_settings,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Fx {
    id: u32,
    mode: String,
    listener: Option<InheritedListener>,
    unix: Option<InheritedListener>,
    threads: Option<usize>,
    nofile: Option<u64>,
    nice: Option<i32>,
    cpus: Option<Vec<usize>>,
    /// For the one-shot modes: the file whose creation claims the one shot.
    #[serde(default)]
    once: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    ready_delay_ms: Option<u64>,
}

// Implemented by hand on purpose: the derive is tested elsewhere, this is the manual path.
impl WorkerContext for Fx {
    type Id = u32;
    fn id(&self) -> u32 {
        self.id
    }
    fn args(&self) -> Vec<String> {
        vec![format!("id={}", self.id), format!("mode={}", self.mode)]
    }
    fn runtime_options(&self) -> RuntimeOptions {
        let mut o = RuntimeOptions::default().env("FX_FROM_RUNTIME_OPTIONS", "yes");
        if let Some(t) = self.threads {
            o = o.threads(t);
        }
        if let Some(n) = self.nice {
            o = o.nice(n);
        }
        if let Some(c) = &self.cpus {
            o = o.cpu_affinity(c.iter().copied());
        }
        if let Some(n) = self.nofile {
            o = o.rlimit(prefork_core::RlimitResource::NoFile, n, n);
        }
        if let Some(u) = &self.user {
            o = o.user(u);
        }
        if let Some(g) = &self.group {
            o = o.group(g);
        }
        if let Some(gs) = &self.groups {
            o = o.supplementary_groups(gs);
        }
        o
    }
    fn visit_fds(&mut self, f: &mut dyn FnMut(&mut InheritedListener)) {
        if let Some(l) = &mut self.listener {
            f(l);
        }
        if let Some(l) = &mut self.unix {
            f(l);
        }
    }
}

#[derive(Debug, Default)]
struct Opts {
    workers: u32,
    workers_file: Option<String>,
    mode: String,
    readiness: Option<Readiness>,
    shutdown_ms: Option<u64>,
    stop_ms: Option<u64>,
    ready_ms: Option<u64>,
    backoff: Option<(u64, u64)>,
    threads: Option<usize>,
    nice: Option<i32>,
    cpus: Option<Vec<usize>>,
    nofile: Option<u64>,
    unix: Option<String>,
    hooks: bool,
    default_settings: bool,
    stop_signal: Option<Signal>,
    mode_of: Vec<(u32, String)>,
    once: Option<String>,
    nonblocking: bool,
    port: u16,
    control: Option<String>,
    status_file: Option<String>,
    scale: bool,
    scale_bounds: Option<(u64, u64)>,
    mode_file: Option<String>,
    shutdown_delay_ms: Option<u64>,
    subreaper: bool,
    user: Option<String>,
    group: Option<String>,
    groups: Option<Vec<String>>,
    extend_ms: Option<u64>,
    ready_delay_ms: Option<u64>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        workers: 2,
        mode: "serve".into(),
        ..Opts::default()
    };
    let args = prefork_core::args();
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |s: String| {
            s.parse::<u64>()
                .map_err(|e| format!("bad number {s:?}: {e}"))
        };
        match a.as_str() {
            "--workers" => o.workers = num(val()?)? as u32,
            "--workers-file" => o.workers_file = Some(val()?),
            "--mode" => o.mode = val()?,
            "--readiness" => {
                o.readiness = Some(match val()?.as_str() {
                    "explicit" => Readiness::Explicit,
                    "implicit" => Readiness::Implicit,
                    other => return Err(format!("bad readiness {other}")),
                })
            }
            "--shutdown-ms" => o.shutdown_ms = Some(num(val()?)?),
            "--stop-ms" => o.stop_ms = Some(num(val()?)?),
            "--ready-ms" => o.ready_ms = Some(num(val()?)?),
            "--backoff-ms" => {
                let v = val()?;
                let (a, b) = v.split_once(',').ok_or("--backoff-ms INITIAL,MAX")?;
                o.backoff = Some((num(a.into())?, num(b.into())?));
            }
            "--threads" => o.threads = Some(num(val()?)? as usize),
            "--nice" => o.nice = Some(val()?.parse().map_err(|e| format!("{e}"))?),
            "--cpus" => {
                o.cpus = Some(
                    val()?
                        .split(',')
                        .map(|c| c.parse().map_err(|e| format!("{e}")))
                        .collect::<Result<_, String>>()?,
                )
            }
            "--nofile" => o.nofile = Some(num(val()?)?),
            "--unix" => o.unix = Some(val()?),
            "--hooks" => o.hooks = true,
            "--default-settings" => o.default_settings = true,
            "--stop-signal" => o.stop_signal = Some(val()?.parse().map_err(|e| format!("{e}"))?),
            "--mode-of" => {
                let v = val()?;
                let (id, mode) = v.split_once('=').ok_or("--mode-of ID=MODE")?;
                o.mode_of.push((num(id.into())? as u32, mode.into()));
            }
            "--once" => o.once = Some(val()?),
            "--nonblocking" => o.nonblocking = true,
            "--port" => o.port = num(val()?)? as u16,
            "--control" => o.control = Some(val()?),
            "--status-file" => o.status_file = Some(val()?),
            "--scale" => o.scale = true,
            "--scale-bounds" => {
                let v = val()?;
                let (a, b) = v.split_once(',').ok_or("--scale-bounds MIN,MAX")?;
                o.scale_bounds = Some((num(a.into())?, num(b.into())?));
            }
            "--mode-file" => o.mode_file = Some(val()?),
            "--shutdown-delay-ms" => o.shutdown_delay_ms = Some(num(val()?)?),
            "--subreaper" => o.subreaper = true,
            "--user" => o.user = Some(val()?),
            "--group" => o.group = Some(val()?),
            "--groups" => o.groups = Some(val()?.split(',').map(str::to_owned).collect()),
            "--extend-ms" => o.extend_ms = Some(num(val()?)?),
            "--ready-delay-ms" => o.ready_delay_ms = Some(num(val()?)?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn kill(pid: Pid, sig: Signal) {
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig.as_raw()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.as_raw()), sig);
    }
}

fn say(s: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn desired_count(o: &Opts) -> Option<u32> {
    match &o.workers_file {
        None => Some(o.workers),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => match s.trim().parse() {
                Ok(n) => Some(n),
                Err(e) => {
                    say(format!("config rejected: {e}"));
                    None
                }
            },
            Err(e) => {
                say(format!("config rejected: {e}"));
                None
            }
        },
    }
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_writer(prefork_core::log::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fx-master: {e}");
            std::process::exit(2)
        }
    };
    let hooks = o.hooks;
    let hook = move |name: &str| {
        if hooks {
            say(format!("hook {name}"));
        }
    };
    let template = Fx {
        id: 0,
        mode: o.mode.clone(),
        listener: None,
        unix: None,
        threads: o.threads,
        nice: o.nice,
        cpus: o.cpus.clone(),
        nofile: o.nofile,
        once: o.once.clone(),
        user: o.user.clone(),
        group: o.group.clone(),
        groups: o.groups.clone(),
        ready_delay_ms: o.ready_delay_ms,
    };
    // The mode of worker `id`: its `--mode-of`, else the mode file's content, else `--mode`.
    let (default_mode, mode_of, mode_file) =
        (o.mode.clone(), o.mode_of.clone(), o.mode_file.clone());
    let mode_for = move |id: u32| {
        let from_file = || {
            mode_file
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|m| m.trim().to_owned())
        };
        mode_of
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, m)| m.clone())
            .or_else(from_file)
            .unwrap_or_else(|| default_mode.clone())
    };
    let nonblocking = o.nonblocking;
    let bind_addr = format!("127.0.0.1:{}", o.port);
    let unix_path = o.unix.clone();
    let mut shared_unix: Option<InheritedListener> = None;
    let mut shared: Option<InheritedListener> = None;
    let fork = move |w: &Fx, spawner: &Spawner| -> prefork_core::Result<Pid> {
        let l = match &shared {
            Some(l) => l.clone(),
            None if nonblocking => {
                let l = InheritedListener::bind_tcp(bind_addr.as_str())?;
                say(format!("listening on {}", l.local_addr()?));
                shared.insert(l).clone()
            }
            None => {
                let std_l = TcpListener::bind(bind_addr.as_str()).map_err(|source| {
                    prefork_core::Error::Listen {
                        addr: bind_addr.clone(),
                        source,
                    }
                })?;
                if let Ok(a) = std_l.local_addr() {
                    say(format!("listening on {a}"));
                }
                shared.insert(InheritedListener::tcp(std_l)).clone()
            }
        };
        let mut w = w.clone();
        w.listener = Some(l);
        if let Some(path) = &unix_path {
            let u = match &shared_unix {
                Some(u) => u.clone(),
                None => {
                    let u = InheritedListener::bind_unix(path)?;
                    say(format!("listening on unix {path}"));
                    shared_unix.insert(u).clone()
                }
            };
            w.unix = Some(u);
        }
        spawner.fork_worker_process(&w)
    };

    let settings = if o.default_settings {
        // Haskell's defaultSettings shape: update_server forks the workers, nothing relaunches.
        let mut fork = fork;
        let t = template.clone();
        let n = o.workers;
        let mode_for = mode_for.clone();
        default_settings::<(), Fx>()
            .update_config(move || Some(()))
            .update_server(move |_, spawner| {
                hook("update_server");
                (0..n)
                    .filter_map(|id| {
                        fork(
                            &Fx {
                                id,
                                mode: mode_for(id),
                                ..t.clone()
                            },
                            spawner,
                        )
                        .ok()
                    })
                    .collect()
            })
    } else {
        let t = template.clone();
        let o2 = Opts {
            workers: o.workers,
            workers_file: o.workers_file.clone(),
            ..Opts::default()
        };
        relaunch_settings(
            move |set: &mut WorkerSet<Fx>| {
                let n = match set.scale() {
                    Some(n) => n,
                    None => desired_count(&o2)?,
                };
                set.set((0..n).map(|id| Fx {
                    id,
                    mode: mode_for(id),
                    ..t.clone()
                }));
                say(format!("update desired {n}"));
                Some(())
            },
            fork,
        )
        .update_server(move |_, _| {
            hook("update_server");
            Vec::new()
        })
    };
    let mut settings = settings
        .on_start(move |_| hook("on_start"))
        .on_finish(move |_| hook("on_finish"))
        .on_quit(move |_| hook("on_quit"))
        .cleanup_child(move |_, pid| {
            if hooks {
                say(format!("hook cleanup_child {pid}"));
            }
        });
    if hooks {
        // The hooks say they ran, then do what the defaults do (the stop signal, SIGINT).
        let stop = o.stop_signal.unwrap_or(Signal::SIGTERM);
        settings = settings
            .on_terminate(move |_, pids| {
                hook("on_terminate");
                for &p in pids {
                    kill(p, stop);
                }
            })
            .on_interrupt(move |_, pids| {
                hook("on_interrupt");
                for &p in pids {
                    kill(p, Signal::SIGINT);
                }
            });
    }
    if let Some(sig) = o.stop_signal {
        settings = settings.stop_signal(sig);
    }
    if let Some(p) = &o.control {
        settings = settings.control_socket(p);
    }
    if let Some(p) = &o.status_file {
        settings = settings.status_file(p);
    }
    if o.scale {
        settings = settings.scale(o.workers);
    }
    if let Some((min, max)) = o.scale_bounds {
        settings = settings.scale_bounds(min as u32, max as u32);
    }
    if let Some(r) = o.readiness {
        settings = settings.readiness(r);
    } else if o.mode == "serve" || o.mode == "orphan" {
        settings = settings.readiness(Readiness::Explicit);
    }
    if let Some(ms) = o.shutdown_ms {
        settings = settings.shutdown_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = o.stop_ms {
        settings = settings.stop_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = o.ready_ms {
        settings = settings.ready_timeout(Duration::from_millis(ms));
    }
    if let Some((a, b)) = o.backoff {
        settings = settings.backoff(Duration::from_millis(a), Duration::from_millis(b));
    }
    if let Some(ms) = o.shutdown_delay_ms {
        settings = settings.shutdown_delay(Duration::from_millis(ms));
    }
    if let Some(ms) = o.extend_ms {
        settings = settings.systemd(Systemd::auto().extend_timeouts(Duration::from_millis(ms)));
    }
    settings = settings.child_subreaper(o.subreaper);
    default_main(settings, worker)
}

fn worker(w: Fx) -> Result<(), String> {
    say(format!(
        "worker {} started pid {} gen {} at {}",
        w.id,
        std::process::id(),
        prefork_core::worker::generation(),
        now_ms()
    ));
    say(format!(
        "worker env PREFORK_WORKER={}",
        std::env::var("PREFORK_WORKER").unwrap_or_else(|_| "unset".into())
    ));
    if w.mode == "orphan" {
        // `sh` exits at once and leaves the sleep behind, an orphan for the nearest subreaper.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 1 >/dev/null 2>&1 & echo $!"])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        say(format!(
            "worker {} orphaned {}",
            w.id,
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    match w.mode.as_str() {
        "serve" | "shut-rd" | "clear-nonblock" | "orphan" => serve(w),
        "crash" => std::process::exit(3),
        "ready-exit" => {
            prefork_core::worker::ready();
            std::process::exit(3)
        }
        "forge-ready" => {
            prefork_core::worker::ready();
            forge_ready();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "ignore-term" => {
            // SAFETY: setting a signal to SIG_IGN installs no handler code.
            unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGTERM,
                    nix::sys::signal::SigHandler::SigIgn,
                )
            }
            .map_err(|e| e.to_string())?;
            prefork_core::worker::ready();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "drain" => {
            let stop = prefork_core::worker::stop_signal().map_err(|e| e.to_string())?;
            prefork_core::worker::ready();
            stop.wait();
            say(format!("worker {} drained", w.id));
            say(format!("worker {} stopped by {}", w.id, stop.signal()));
            Ok(())
        }
        "count-stops" => {
            // Reports every stop signal it receives (a drain that a second signal would cut
            // short), and exits 1.5 s after the first.
            let stop = prefork_core::worker::configured_stop_signal();
            let nix_stop =
                nix::sys::signal::Signal::try_from(stop.as_raw()).map_err(|e| e.to_string())?;
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix_stop);
            set.thread_block().map_err(|e| e.to_string())?;
            say(format!(
                "worker {} pid {} counting stops",
                w.id,
                std::process::id()
            ));
            prefork_core::worker::ready();
            let mut first = true;
            loop {
                let got = set.wait().map_err(|e| e.to_string())?;
                say(format!(
                    "worker {} pid {} got {got:?}",
                    w.id,
                    std::process::id()
                ));
                if first {
                    first = false;
                    std::thread::spawn(|| {
                        std::thread::sleep(Duration::from_millis(1500));
                        std::process::exit(0)
                    });
                }
            }
        }
        _ => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

/// The `serve` modes: accept on the inherited listener and answer each connection with one line;
/// `shut-rd` and `clear-nonblock` first break the shared listener (once, see `--once`).
fn serve(w: Fx) -> Result<(), String> {
    let l = w
        .listener
        .ok_or("no listener in the context")?
        .into_tcp()
        .map_err(|e| e.to_string())?;
    if let Some(u) = w.unix {
        let u = u.into_unix().map_err(|e| e.to_string())?;
        // The master made it non-blocking (shared by all workers): poll, do not spin.
        std::thread::spawn(move || {
            loop {
                match u.accept() {
                    Ok((mut c, _)) => {
                        let _ = writeln!(c, "unix pid {} id {}", std::process::id(), w.id);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
    }
    if let Some(ms) = w.ready_delay_ms {
        std::thread::sleep(Duration::from_millis(ms * u64::from(w.id)));
    }
    say(format!(
        "worker {} ready gen {} at {}",
        w.id,
        prefork_core::worker::generation(),
        now_ms()
    ));
    prefork_core::worker::ready();
    if !matches!(w.mode.as_str(), "serve" | "orphan") && claim_once(w.once.as_deref()) {
        let fd = l.as_raw_fd();
        if w.mode == "shut-rd" {
            // SAFETY: shutdown(2) on a socket this process holds; no memory is passed.
            if unsafe { nix::libc::shutdown(fd, nix::libc::SHUT_RD) } != 0 {
                return Err(format!("shutdown: {}", std::io::Error::last_os_error()));
            }
            say(format!("worker {} shut the listener", w.id));
        } else {
            // SAFETY: fcntl(F_GETFL/F_SETFL) on a socket this process holds; no memory is
            // passed.
            let r = unsafe {
                let fl = nix::libc::fcntl(fd, nix::libc::F_GETFL);
                nix::libc::fcntl(fd, nix::libc::F_SETFL, fl & !nix::libc::O_NONBLOCK)
            };
            if r != 0 {
                return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
            }
            say(format!("worker {} cleared O_NONBLOCK", w.id));
        }
    }
    loop {
        match l.accept() {
            Ok((mut c, _)) => {
                let _ = writeln!(
                    c,
                    "pid {} id {} gen {}",
                    std::process::id(),
                    w.id,
                    prefork_core::worker::generation()
                );
            }
            // A non-blocking listener (shared: any sibling may have taken the connection).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [nix::poll::PollFd::new(
                    l.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// True if this start may do the one-shot thing: there is no `--once` file, or this call created
/// it.
fn claim_once(path: Option<&str>) -> bool {
    match path {
        None => true,
        Some(p) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .is_ok(),
    }
}

/// The readiness socket, found among this process's open fds: the one `AF_UNIX` datagram
/// socket. (The library keeps its number to itself; the kernel does not.)
fn readiness_socket() -> Option<RawFd> {
    let sockopt = |fd: RawFd, opt: nix::libc::c_int| {
        let mut v: nix::libc::c_int = 0;
        let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, an int on this stack.
        let r = unsafe {
            nix::libc::getsockopt(
                fd,
                nix::libc::SOL_SOCKET,
                opt,
                (&mut v as *mut nix::libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .find(|&fd| {
            fd > 2
                && sockopt(fd, nix::libc::SO_DOMAIN) == Some(nix::libc::AF_UNIX)
                && sockopt(fd, nix::libc::SO_TYPE) == Some(nix::libc::SOCK_DGRAM)
        })
}

/// The other children of this worker's parent (its sibling workers).
fn siblings() -> Vec<i32> {
    let ppid = nix::unistd::getppid().as_raw();
    let me = std::process::id() as i32;
    std::fs::read_to_string(format!("/proc/{ppid}/task/{ppid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// For 60 s, every 50 ms, claims on the readiness socket that each sibling is ready.
fn forge_ready() {
    let Some(fd) = readiness_socket() else {
        say("forge-ready: no readiness socket".into());
        return;
    };
    let mut told = std::collections::BTreeSet::new();
    for _ in 0..1200 {
        for pid in siblings() {
            let msg = format!("ready {pid}");
            // SAFETY: send(2) of a buffer that lives across the call, on a socket this process
            // holds.
            let r = unsafe {
                nix::libc::send(fd, msg.as_ptr().cast(), msg.len(), nix::libc::MSG_DONTWAIT)
            };
            if r >= 0 && told.insert(pid) {
                say(format!("forged ready {pid}"));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
