//! `bench-sleeper`: the cheap prefork master of the benchmark, and the floor it is measured
//! against.
//!
//! ```text
//! bench-sleeper -w N [-p PORT] [--control PATH]
//!                                           a master keeping N workers (ids 0..N, argv `id=K`),
//!                                           with a control socket at PATH
//! bench-sleeper --noop                      exits 0 at once (the floor's child)
//! bench-sleeper --floor K [--gap-ms G]      fork + execve(`bench-sleeper --noop`) + waitpid, K
//!                                           times in a row (asleep G ms before each); prints `floor_ns=<total>
//!                                           exec_ns=<fork → exec happened, summed>
//!                                           spawn_ns=<the same by posix_spawn, summed>`
//! ```
//!
//! The master binds `127.0.0.1:PORT` (0: a free port) on its first fork, prints
//! `bench-sleeper: listening on http://ADDR` on standard error, and runs with
//! [`Readiness::Explicit`]. Each worker adopts the inherited listener, registers it with an
//! `epoll` instance with `EPOLLEXCLUSIVE` (so one connection wakes one worker, not all 1000),
//! calls [`prefork_core::worker::ready`], then answers every connection with `ok <id>\n` and
//! closes it. It costs nothing while idle.
//!
//! The master logs through `tracing` with a **`CLOCK_MONOTONIC` timestamp** (`secs.nanos`, the
//! same clock as the benchmark's own) and `prefork_core` at `debug`, so the pool's `worker
//! spawned` (the fork + exec of a worker returned: the exec happened) and `worker ready` (its
//! readiness datagram was read) lines time every step.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use prefork_core::{
    InheritedListener, Pid, Readiness, Spawner, WorkerContext, WorkerSet, default_main,
    relaunch_settings,
};
use serde::{Deserialize, Serialize};

/// One sleeper worker: `ps` shows `bench-sleeper id=K`.
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Sleeper {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(fd)]
    listener: Option<InheritedListener>,
}

#[derive(Debug)]
struct Opts {
    workers: u32,
    port: u16,
    control: Option<String>,
}

fn main() {
    // The floor's child: nothing at all, not even the prefork boot.
    let mut raw = std::env::args_os().skip(1);
    match raw.next().as_deref().map(|a| a.as_bytes()) {
        Some(b"--noop") => std::process::exit(0),
        Some(b"--floor") => {
            let n = raw
                .next()
                .and_then(|v| v.to_str()?.parse::<u32>().ok())
                .unwrap_or_else(|| usage("--floor needs a count"));
            let gap = match raw.next().as_deref().map(|a| a.as_bytes()) {
                None => 0,
                Some(b"--gap-ms") => raw
                    .next()
                    .and_then(|v| v.to_str()?.parse::<u64>().ok())
                    .unwrap_or_else(|| usage("--gap-ms needs a number")),
                Some(_) => usage("--floor K [--gap-ms G]"),
            };
            floor(n, Duration::from_millis(gap))
        }
        _ => {}
    }
    // A master or a worker: the master's argv in both (a worker's own argv is `id=K`).
    let opts = parse(prefork_core::args());
    let control = opts.control.clone();
    if !prefork_core::is_worker() {
        init_tracing();
    }
    let workers = opts.workers;
    let port = opts.port;
    let update = move |set: &mut WorkerSet<Sleeper>| {
        set.set((0..workers).map(|id| Sleeper { id, listener: None }));
        Some(())
    };
    let mut shared: Option<InheritedListener> = None;
    let fork = move |w: &Sleeper, spawner: &Spawner| -> prefork_core::Result<Pid> {
        let listener = match &shared {
            Some(l) => l.clone(),
            None => {
                let l = InheritedListener::bind_tcp(format!("127.0.0.1:{port}"))?;
                eprintln!("bench-sleeper: listening on http://{}", l.local_addr()?);
                shared.insert(l).clone()
            }
        };
        spawner.fork_worker_process(&Sleeper {
            listener: Some(listener),
            ..w.clone()
        })
    };
    let settings = relaunch_settings(update, fork)
        .readiness(Readiness::Explicit)
        .ready_timeout(Duration::from_secs(60))
        .stop_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(5));
    let settings = match control {
        Some(path) => settings.control_socket(path),
        None => settings,
    };
    default_main(settings, serve)
}

fn usage(msg: &str) -> ! {
    eprintln!("bench-sleeper: {msg}");
    eprintln!("usage: bench-sleeper -w N [-p PORT] [--control PATH] | --noop | --floor K");
    std::process::exit(2)
}

fn parse(args: Vec<String>) -> Opts {
    let mut o = Opts {
        workers: 1,
        port: 0,
        control: None,
    };
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-w" | "--workers" => {
                o.workers = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("-w needs a number"))
            }
            "-p" | "--port" => {
                o.port = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("-p needs a port"))
            }
            "--control" => {
                o.control = Some(it.next().unwrap_or_else(|| usage("--control needs a path")))
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    o
}

/// `CLOCK_MONOTONIC` in nanoseconds (the benchmark reads the same clock).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Log timestamps on the monotonic clock: `1234.567890123`.
struct Mono;

impl tracing_subscriber::fmt::time::FormatTime for Mono {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = mono_ns();
        write!(w, "{}.{:09}", t / 1_000_000_000, t % 1_000_000_000)
    }
}

fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = Targets::new()
        .with_target("prefork_core", LevelFilter::DEBUG)
        .with_default(LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt::layer()
        .with_timer(Mono)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    tracing_subscriber::registry().with(filter).with(fmt).init();
}

/// The worker: accept and answer until killed.
fn serve(w: Sleeper) -> std::io::Result<()> {
    let listener = w
        .listener
        .ok_or_else(|| std::io::Error::other("the context carries no listener"))?
        .into_tcp()
        .map_err(std::io::Error::other)?;
    // SAFETY: epoll_create1 takes no pointers.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ep` is a new fd that nothing else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        u64: 0,
    };
    // SAFETY: both fds are open; `ev` is a valid epoll_event for the call's duration.
    let r = unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            &mut ev,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    prefork_core::worker::ready();
    let answer = format!("ok {}\n", w.id);
    loop {
        let mut out = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `out` has room for the one event we ask for.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), &mut out, 1, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // The listener is non-blocking (the master set it for everyone): accept until empty.
        loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(answer.as_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            }
        }
    }
}

/// The floor: `n` × (fork, execve of `--noop`, waitpid), one after another (after `gap` asleep
/// each: idle CPUs are slow to wake in a VM), from a process that is this same binary (as the
/// master is). Prints `floor_ns=<total> exec_ns=<part>`, where the
/// part is the sum of fork → the exec happened (a close-on-exec pipe reached end-of-file: the
/// library's own definition of a started worker).
fn floor(n: u32, gap: Duration) -> ! {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let path = CString::new(exe.as_os_str().as_bytes()).unwrap_or_else(|_| usage("bad path"));
    let noop = CString::new("--noop").unwrap_or_else(|_| usage("bad arg"));
    let argv = [path.as_ptr(), noop.as_ptr(), std::ptr::null()];
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let die = |what: &str| -> ! {
        eprintln!("bench-sleeper: {what}: {}", std::io::Error::last_os_error());
        std::process::exit(1)
    };
    let mut exec_ns = 0u128;
    let mut total = Duration::ZERO;
    for _ in 0..n {
        std::thread::sleep(gap);
        let t0 = Instant::now();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            die("pipe2");
        }
        // SAFETY: this process is single-threaded here; the child only calls execve and _exit,
        // on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child of fork; argv and envp are NULL-terminated arrays of valid
            // C strings.
            unsafe {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127)
            }
        }
        if pid < 0 {
            die("fork");
        }
        // SAFETY: both fds are ours (from pipe2); the write end is closed once, here, and the
        // read end after the read below.
        unsafe {
            libc::close(fds[1]);
            let mut b = 0u8;
            while libc::read(fds[0], (&raw mut b).cast(), 1) < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
            libc::close(fds[0]);
        }
        exec_ns += t0.elapsed().as_nanos();
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                die("waitpid");
            }
        }
        if status != 0 {
            eprintln!("bench-sleeper: the --noop child ended with status {status:#x}");
            std::process::exit(1)
        }
        total += t0.elapsed();
    }
    // The same start by posix_spawn (glibc: clone(CLONE_VM | CLONE_VFORK), so no page tables
    // are copied and the call returns once the child has exec'd).
    let mut spawn_ns = 0u128;
    for _ in 0..n {
        std::thread::sleep(gap);
        let t0 = Instant::now();
        let mut pid: libc::pid_t = 0;
        // SAFETY: argv and envp are NULL-terminated arrays of valid C strings; null file actions
        // and attributes mean "none".
        let r = unsafe {
            libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                argv.as_ptr().cast(),
                envp.as_ptr().cast(),
            )
        };
        if r != 0 {
            eprintln!(
                "bench-sleeper: posix_spawn: {}",
                std::io::Error::from_raw_os_error(r)
            );
            std::process::exit(1)
        }
        spawn_ns += t0.elapsed().as_nanos();
        let mut status = 0;
        // SAFETY: waiting for our own child; `status` is a valid out-pointer.
        while unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                die("waitpid");
            }
        }
    }
    println!(
        "floor_ns={} exec_ns={exec_ns} spawn_ns={spawn_ns}",
        total.as_nanos()
    );
    std::process::exit(0)
}
