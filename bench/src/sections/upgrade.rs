//! Section 11, master upgrade in place: `sample-warp-like -p 0 -w 4 --control SOCK` run from a
//! copy in a temporary directory, so that a deploy is what it is in production: a fresh copy of
//! the binary written beside the path under a temporary name and renamed over it (a file being
//! executed cannot be opened for writing, `ETXTBSY`; a rename never touches it), then
//! `SIGUSR2` or `prefork-ctl upgrade`.
//!
//! * **Under load**: `plan.upgrades` upgrades by `SIGUSR2`, each under its own load run of
//!   section 3 (keep-alive and fresh connections): failed requests, and the steps of each
//!   upgrade from the master's log (the signal → the check passed → the exec gap, from
//!   `handing over` to `master upgraded in place` → every worker new). After each one the
//!   bench checks that the master kept its pid and that `/proc/<pid>/exe` is the file just
//!   deployed (same device and inode, not `(deleted)`), and that the workers run it too; a
//!   violation fails the rows instead of giving a number.
//! * **In a row**: `plan.upgrades_in_row` upgrades through the control socket (the request
//!   `prefork-ctl -s SOCK upgrade` sends, answered when every worker runs the new code), no
//!   load: the master's fds and `VmRSS` after the first and after the last, for leaks.
//! * **Control**: nginx's binary upgrade under the same load, if nginx is installed: `USR2` to
//!   the old master (a new master starts beside it, as its child), `WINCH` (its workers stop
//!   gracefully), `QUIT` (it exits; the new master, now an orphan, is re-parented to the bench,
//!   which is a child subreaper for that part only, so that it can reap it). nginx ignores
//!   `WINCH` unless it daemonized, so it runs daemonized here, its master re-parented to the
//!   bench from the start.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use prefork_core::control::{self, Command as Ctl, Response};
use prefork_core::status::UpgradeResult;
use proc_kit::procfs;

use super::{Section, http_ok, kill, nginx, ns, start_http_with};
use crate::bins::Bins;
use crate::clock;
use crate::guard::{self, Line, Server};
use crate::load;
use crate::plan::Plan;
use crate::report::Unit;

/// Workers of the sample under test.
const WORKERS: u32 = 4;
/// The load of section 3's `sample-warp-like` case.
const KEEPALIVE: usize = 16;
const FRESH: usize = 4;
/// Longest an upgrade (or one step of nginx's) may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("prefork-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file's identity: device and inode.
type FileId = (u64, u64);

fn file_id(p: &Path) -> Result<FileId> {
    let m = std::fs::metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
    Ok((m.dev(), m.ino()))
}

/// The program path of the server under test, and how new copies are deployed over it.
struct Deploy {
    /// The release build, copied.
    src: PathBuf,
    dir: PathBuf,
    /// `dir/sample-warp-like`: what the master runs and re-executes.
    path: PathBuf,
    seq: u32,
}

impl Deploy {
    fn new(src: &Path, dir: &Path) -> Deploy {
        Deploy {
            src: src.to_path_buf(),
            dir: dir.to_path_buf(),
            path: dir.join("sample-warp-like"),
            seq: 0,
        }
    }

    /// Writes a fresh copy under a temporary name beside the path and renames it over the path
    /// (the running file is never opened for writing); returns the new file's identity.
    fn fresh(&mut self) -> Result<FileId> {
        self.seq += 1;
        let tmp = self.dir.join(format!(".sample-warp-like.new-{}", self.seq));
        std::fs::copy(&self.src, &tmp)
            .with_context(|| format!("cannot copy {} to {}", self.src.display(), tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot rename {} over the path", tmp.display()))?;
        file_id(&self.path)
    }
}

/// Starts the copy at `deploy.path` with `-p 0 -w 4 --control sock`.
fn start(deploy: &Deploy, sock: &Path) -> Result<(Server, std::net::SocketAddr)> {
    let sock = sock.to_str().context("odd temporary path")?;
    start_http_with(
        &deploy.path,
        "sample-warp-like",
        WORKERS,
        None,
        &[],
        &["--control", sock],
    )
}

/// Everything that must hold after an upgrade of `master` to the file `new`: the same pid,
/// alive; `/proc/<pid>/exe` the new file (its identity, and the path not `(deleted)`); the
/// `master upgraded in place` line written by that pid; every worker running the new file.
/// Returns what does not hold.
fn violations(
    master: i32,
    path: &Path,
    new: FileId,
    upgraded: Option<&Line>,
    server: &mut Server,
) -> Vec<String> {
    let mut v = Vec::new();
    if procfs::stat(master).is_none_or(|s| s.state == 'Z') {
        v.push(format!("the master {master} is gone"));
        return v;
    }
    match upgraded.map(|l| l.field("pid")) {
        Some(Some(p)) if p == master.to_string() => {}
        Some(p) => v.push(format!(
            "`master upgraded in place` came from pid {p:?}, the master is {master}"
        )),
        None => v.push("no `master upgraded in place` line".into()),
    }
    let exe = PathBuf::from(format!("/proc/{master}/exe"));
    match std::fs::read_link(&exe) {
        Ok(l) if l == path => {}
        Ok(l) => v.push(format!(
            "/proc/{master}/exe is {}, not {}",
            l.display(),
            path.display()
        )),
        Err(e) => v.push(format!("cannot read /proc/{master}/exe: {e}")),
    }
    match file_id(&exe) {
        Ok(id) if id == new => {}
        Ok(id) => v.push(format!(
            "/proc/{master}/exe is inode {} (dev {}), the new file is inode {} (dev {})",
            id.1, id.0, new.1, new.0
        )),
        Err(e) => v.push(format!("{e:#}")),
    }
    let workers = server.workers();
    let on_new = workers
        .values()
        .filter(|&&w| file_id(Path::new(&format!("/proc/{w}/exe"))).is_ok_and(|id| id == new))
        .count();
    if on_new < WORKERS as usize {
        v.push(format!(
            "{on_new} of the master's {} workers run the new file, wanted {WORKERS}",
            workers.len()
        ));
    }
    v
}

/// Measures section 11.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let label = format!("sample-warp-like -w {WORKERS}");
    if let Err(e) = under_load(sec, plan, bins) {
        sec.error(format!("upgrade under load, {label}"), &format!("{e:#}"));
    }
    if let Err(e) = in_a_row(sec, plan, bins) {
        sec.error(format!("upgrades in a row, {label}"), &format!("{e:#}"));
    }
    match nginx::binary() {
        None => sec.not_measured(
            "control: nginx binary upgrade (USR2, WINCH, QUIT) under load",
            "nginx is not installed",
        ),
        Some(bin) => {
            if let Err(e) = nginx_control(sec, plan, &bin) {
                sec.error(
                    "control: nginx binary upgrade (USR2, WINCH, QUIT) under load",
                    &format!("{e:#}"),
                );
            }
        }
    }
    Ok(())
}

/// The timestamps of one upgrade's steps (wall clock, ns), from the master's log.
#[derive(Debug)]
struct Steps {
    passed: u64,
    handing_over: u64,
    upgraded: u64,
    finished: u64,
}

/// Waits for the end of the upgrade started at log line `mark`; fails with the line if it was
/// refused or rolled back. Returns its steps and the `master upgraded in place` line.
fn wait_upgrade(server: &Server, mark: usize) -> Result<(Steps, Line)> {
    let end = server
        .log
        .wait_line(mark, STEP_TIMEOUT, "the upgrade's end", |l| {
            l.text.contains("upgrade finished")
                || l.text.contains("upgrade refused")
                || l.text.contains("upgrade rolled back")
        })?;
    if !end.text.contains("upgrade finished") {
        bail!("the upgrade did not happen: {}", end.text);
    }
    let lines = server.log.matching(mark, |_| true);
    let find = |what: &str| -> Result<&Line> {
        lines
            .iter()
            .find(|l| l.text.contains(what))
            .with_context(|| format!("no `{what}` line"))
    };
    let ts = |what: &str| -> Result<u64> {
        find(what)?
            .wall_ts()
            .with_context(|| format!("no timestamp on the `{what}` line"))
    };
    let steps = Steps {
        passed: ts("upgrade: the new binary passed its check")?,
        handing_over: ts("upgrade: handing over to the new binary")?,
        upgraded: ts("master upgraded in place")?,
        finished: ts("upgrade finished: every worker runs the new code")?,
    };
    Ok((steps, find("master upgraded in place")?.clone()))
}

/// Part 1: upgrades by `SIGUSR2` under load.
fn under_load(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let dir = TempDir::new("upgrade-load")?;
    let mut deploy = Deploy::new(&bins.warp, &dir.0);
    deploy.fresh()?;
    let sock = dir.0.join("control.sock");
    let (mut server, addr) = start(&deploy, &sock)?;
    let master = server.pid();
    let spec = load::Spec {
        addr,
        keepalive: KEEPALIVE,
        fresh: FRESH,
        threads: 1,
        duration: Duration::from_secs(120),
        max_requests: 50_000_000,
    };
    let (mut total, mut check, mut exec_gap, mut roll) = (vec![], vec![], vec![], vec![]);
    let (mut ok, mut failed, mut closes, mut secs) = (0u64, 0u64, 0u64, 0f64);
    let mut per_upgrade = Vec::new();
    let mut problems = Vec::new();
    for u in 1..=plan.upgrades {
        let new = deploy.fresh()?;
        let running = load::start(&spec)?;
        let result = (|| -> Result<(Steps, Line, u64)> {
            std::thread::sleep(plan.reload_gap);
            let mark = server.log.len();
            let t0 = clock::wall_ns();
            server.signal(Signal::SIGUSR2)?;
            let (steps, upgraded) = wait_upgrade(&server, mark)?;
            std::thread::sleep(plan.reload_gap);
            Ok((steps, upgraded, t0))
        })();
        let rep = running.finish();
        let (steps, upgraded, t0) = result.with_context(|| format!("upgrade {u}"))?;
        for p in violations(master, &deploy.path, new, Some(&upgraded), &mut server) {
            problems.push(format!("upgrade {u}: {p}"));
        }
        // The log's timestamps are the wall clock: a step of it would show as steps out of
        // order, and then no time of this run is trusted.
        let order = [
            t0,
            steps.passed,
            steps.handing_over,
            steps.upgraded,
            steps.finished,
        ];
        if order.windows(2).any(|w| w[0] > w[1]) {
            bail!(
                "upgrade {u}: the wall-clock timestamps are out of order ({order:?}): was the \
                 clock stepped?"
            );
        }
        total.push(ns(t0, steps.finished));
        check.push(ns(t0, steps.passed));
        exec_gap.push(ns(steps.handing_over, steps.upgraded));
        roll.push(ns(steps.upgraded, steps.finished));
        ok += rep.ok;
        failed += rep.failed_total();
        closes += rep.server_closes;
        secs += rep.elapsed.as_secs_f64();
        per_upgrade.push(if rep.failed_total() == 0 {
            "0".to_string()
        } else {
            format!("{} ({})", rep.failed_total(), rep.failure_summary())
        });
    }
    http_ok(addr)?;
    let n = plan.upgrades;
    let label = format!("sample-warp-like -w {WORKERS}");
    sec.row(
        format!(
            "upgrade under load, {label}: failed requests over {n} USR2 upgrades ({ok} ok, {:.1} k req/s)",
            ok as f64 / secs.max(1e-9) / 1e3
        ),
        &[failed as f64],
        Unit::Count,
    )
    .target("= 0", |m| m == 0.0);
    sec.row(
        format!(
            "upgrade under load, {label}: upgrades that kept the master's pid with /proc/<pid>/exe the new file and every worker on it"
        ),
        &[(n - problems.len().min(n)) as f64],
        Unit::Count,
    )
    .target(format!("= {n}"), |m| m == n as f64);
    if problems.is_empty() {
        sec.row(
            format!(
                "upgrade under load, {label}: USR2 → `upgrade finished` (every worker new and ready)"
            ),
            &total,
            Unit::Time,
        );
        sec.row(
            format!("upgrade under load, {label}: USR2 → the new binary passed its check"),
            &check,
            Unit::Time,
        );
        sec.row(
            format!(
                "upgrade under load, {label}: exec gap, `handing over` → `master upgraded in place` (master log)"
            ),
            &exec_gap,
            Unit::Time,
        );
        sec.row(
            format!(
                "upgrade under load, {label}: `master upgraded in place` → `upgrade finished` (the roll)"
            ),
            &roll,
            Unit::Time,
        );
    } else {
        sec.error(
            format!("upgrade under load, {label}: upgrade times"),
            &format!(
                "not reported: the master did not stay the same process on the new file: {}",
                problems.join("; ")
            ),
        );
    }
    sec.note(format!(
        "Upgrade under load: {label} --control SOCK (1 runtime thread each), run from a copy in a \
         temporary directory; each upgrade deploys a fresh copy (written beside the path, renamed \
         over it) and sends SIGUSR2 to the master under its own load run ({KEEPALIVE} keep-alive \
         + {FRESH} connection-per-request loops on 1 client thread, {:.1} s before and after); \
         {closes} keep-alive connections closed cleanly by draining workers and reopened; failed \
         requests per upgrade: {}.",
        plan.reload_gap.as_secs_f64(),
        per_upgrade.join(", ")
    ));
    let _ = server.workers();
    server.stop(Duration::from_secs(30))?;
    Ok(())
}

/// Waits until the master has only its `WORKERS` live children (the old workers drained).
fn wait_drained(master: i32) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let n = procfs::live_children(master).len();
        if n == WORKERS as usize {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("the master still has {n} children 30 s after an upgrade");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Part 2: upgrades in a row through the control socket, no load: fds and RSS.
fn in_a_row(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let dir = TempDir::new("upgrade-row")?;
    let mut deploy = Deploy::new(&bins.warp, &dir.0);
    deploy.fresh()?;
    let sock = dir.0.join("control.sock");
    let (mut server, addr) = start(&deploy, &sock)?;
    let master = server.pid();
    let n = plan.upgrades_in_row;
    let (mut fds, mut rss, mut answers, mut problems) = (vec![], vec![], vec![], vec![]);
    for u in 1..=n {
        let new = deploy.fresh()?;
        let mark = server.log.len();
        let t0 = clock::mono_ns();
        let answer = control::request(&sock, &Ctl::Upgrade);
        let t1 = clock::mono_ns();
        let up = match answer {
            Ok(Response::Upgrade { upgrade }) => upgrade,
            Ok(other) => bail!("upgrade {u}: unexpected answer {other:?}"),
            Err(e) => bail!("upgrade {u}: {}", e.report()),
        };
        if up.outcome != UpgradeResult::Upgraded {
            bail!(
                "upgrade {u}: {:?}: {}",
                up.outcome,
                up.reason.as_deref().unwrap_or("no reason given")
            );
        }
        answers.push(ns(t0, t1));
        if up.pid != master {
            problems.push(format!(
                "upgrade {u}: the answer names pid {}, the master is {master}",
                up.pid
            ));
        }
        let upgraded =
            server
                .log
                .wait_line(mark, STEP_TIMEOUT, "`master upgraded in place`", |l| {
                    l.text.contains("master upgraded in place")
                })?;
        for p in violations(master, &deploy.path, new, Some(&upgraded), &mut server) {
            problems.push(format!("upgrade {u}: {p}"));
        }
        wait_drained(master)?;
        std::thread::sleep(Duration::from_millis(200));
        fds.push(procfs::fd_count(master).context("master gone")?);
        rss.push(procfs::status(master).context("master gone")?.vm_rss_kb);
    }
    http_ok(addr)?;
    let label = format!("sample-warp-like -w {WORKERS}");
    sec.row(
        format!(
            "upgrades in a row, {label}: upgrades that kept the master's pid with /proc/<pid>/exe the new file"
        ),
        &[(n - problems.len().min(n)) as f64],
        Unit::Count,
    )
    .target(format!("= {n}"), |m| m == n as f64);
    if problems.is_empty() {
        sec.row(
            format!(
                "upgrades in a row, {label}: `prefork-ctl upgrade` request → answer (upgraded), idle"
            ),
            &answers,
            Unit::Time,
        );
        let (f1, fl) = (fds[0], fds[n - 1]);
        sec.row(
            format!("upgrades in a row, {label}: master's open fds after upgrade 1"),
            &[f1 as f64],
            Unit::Count,
        );
        sec.row(
            format!("upgrades in a row, {label}: master's open fds after upgrade {n}"),
            &[fl as f64],
            Unit::Count,
        )
        .target(format!("= after 1 ({f1})"), |m| m == f1 as f64);
        let (r1, rl) = (rss[0], rss[n - 1]);
        sec.row(
            format!("upgrades in a row, {label}: master's VmRSS after upgrade 1"),
            &[r1 as f64],
            Unit::Kib,
        );
        sec.row(
            format!("upgrades in a row, {label}: master's VmRSS after upgrade {n}"),
            &[rl as f64],
            Unit::Kib,
        )
        .target(
            format!("≤ after 1 + 5 % ({:.0} kB)", r1 as f64 * 1.05),
            |m| m <= r1 as f64 * 1.05,
        );
    } else {
        sec.error(
            format!("upgrades in a row, {label}: fds and RSS"),
            &format!(
                "not reported: the master did not stay the same process on the new file: {}",
                problems.join("; ")
            ),
        );
    }
    let show = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    sec.note(format!(
        "Upgrades in a row: {label} --control SOCK, {n} upgrades one after the other through \
         the control socket (`prefork_core::control::request(Upgrade)`, what `prefork-ctl -s SOCK \
         upgrade` sends), each of a fresh copy renamed over the path, no load; after each, once \
         the old workers had exited and 200 ms more: the master's fds {}; VmRSS (kB) {}.",
        show(&fds.iter().map(|&f| f as u64).collect::<Vec<_>>()),
        show(&rss)
    ));
    let _ = server.workers();
    server.stop(Duration::from_secs(30))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The nginx control

/// While it lives, the bench is a child subreaper (orphans of its descendants become its
/// children): an nginx master whose old master exited is re-parented to the bench, which can
/// then reap it. Dropping it stops and reaps every adopted master (and any worker of theirs
/// re-parented too), then turns the subreaper off.
struct Adopted {
    masters: Vec<i32>,
    workers: Vec<i32>,
}

impl Adopted {
    fn new() -> Result<Adopted> {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } != 0 {
            bail!(
                "prctl(PR_SET_CHILD_SUBREAPER): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Adopted {
            masters: Vec::new(),
            workers: Vec::new(),
        })
    }

    /// Signals `pid` (an adopted master) and waits, bounded, until it exited and is reaped.
    fn stop(&mut self, pid: i32, sig: Signal, timeout: Duration) -> Result<()> {
        let _ = kill(pid, sig);
        let end = Instant::now() + timeout;
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                // Not (yet) the bench's child: its parent, an older master, is still there.
                Err(_) if procfs::stat(pid).is_some() => {}
                Ok(_) | Err(_) => {
                    self.masters.retain(|&p| p != pid);
                    return Ok(());
                }
            }
            if Instant::now() >= end {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(pid), None);
                self.masters.retain(|&p| p != pid);
                bail!("nginx master {pid} did not exit within {timeout:?} of {sig}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        for pid in self.masters.clone() {
            let _ = self.stop(pid, Signal::SIGTERM, Duration::from_secs(5));
        }
        // Workers re-parented to the bench (their master was SIGKILLed): ours to kill and reap.
        let me = std::process::id() as i32;
        for &w in &self.workers {
            if procfs::ppid(w) == Some(me) {
                let _ = kill(w, Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(w), None);
            }
        }
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0 as libc::c_ulong) };
    }
}

fn nginx_workers(master: i32) -> Vec<i32> {
    procfs::children_of(master)
        .into_iter()
        .filter(|&p| procfs::alive(p) && procfs::cmdline(p).is_some_and(|a| nginx::is_worker(&a)))
        .collect()
}

/// Waits, bounded, until `cond` holds.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= end {
            bail!("waited {timeout:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Reads nginx's pid file (0 while there is none).
fn read_pid(p: &Path) -> i32 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// nginx's binary upgrade under the same load, `plan.upgrades` times in a row (each new master
/// is the next one's old master).
fn nginx_control(sec: &mut Section, plan: &Plan, bin: &Path) -> Result<()> {
    let version = Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let dir = TempDir::new("upgrade-nginx")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = nginx::write_conf(
        &dir.0,
        WORKERS,
        port,
        "worker_connections 1024;",
        "keepalive_requests 1000000000; keepalive_timeout 75s;",
    )?;
    // nginx ignores WINCH unless it daemonized (a terminal's window change must not stop its
    // workers), so this nginx daemonizes: its master is then an orphan, re-parented to the
    // bench as a subreaper.
    let text = std::fs::read_to_string(&conf)?;
    if !text.contains("daemon off;") {
        bail!("unexpected nginx.conf: no `daemon off;`");
    }
    std::fs::write(&conf, text.replace("daemon off;", "daemon on;"))?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let me = std::process::id() as i32;
    let pid_file = dir.0.join("nginx.pid");
    let log = dir.0.join("nginx-stderr.log");
    let mut adopted = Adopted::new()?;
    let mut cmd = nginx::command(bin, &dir.0, &conf);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut starter = cmd.spawn().context("cannot start nginx")?;
    let st = guard::wait_bounded(&mut starter, Duration::from_secs(10), "nginx (daemonizing)")?;
    if !st.success() {
        bail!(
            "nginx exited with {st}: {}",
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        );
    }
    let mut master = 0;
    wait_until("nginx's pid file", Duration::from_secs(10), || {
        master = read_pid(&pid_file);
        master > 0
    })?;
    adopted.masters.push(master);
    if procfs::ppid(master) != Some(me) {
        bail!("the nginx master {master} is not the bench's child (subreaper)");
    }
    wait_until("nginx's workers", Duration::from_secs(10), || {
        nginx_workers(master).len() == WORKERS as usize && http_ok(addr).is_ok()
    })?;
    adopted.workers.extend(nginx_workers(master));
    let spec = load::Spec {
        addr,
        keepalive: KEEPALIVE,
        fresh: FRESH,
        threads: 1,
        duration: Duration::from_secs(120),
        max_requests: 50_000_000,
    };
    let (mut to_new, mut to_old_gone) = (vec![], vec![]);
    let (mut ok, mut failed, mut closes, mut secs, mut changed) = (0u64, 0u64, 0u64, 0f64, 0usize);
    let mut per = Vec::new();
    for u in 1..=plan.upgrades {
        let running = load::start(&spec)?;
        let result = (|| -> Result<i32> {
            std::thread::sleep(plan.reload_gap);
            let old = master;
            let t0 = clock::mono_ns();
            kill(old, Signal::SIGUSR2)?;
            // The new master: a child of the old one, with its own workers.
            let mut new = 0;
            wait_until("the new nginx master and its workers", STEP_TIMEOUT, || {
                new = read_pid(&pid_file);
                new != old
                    && new > 0
                    && procfs::ppid(new) == Some(old)
                    && nginx_workers(new).len() == WORKERS as usize
            })?;
            to_new.push(ns(t0, clock::mono_ns()));
            adopted.masters.push(new);
            adopted.workers.extend(nginx_workers(new));
            kill(old, Signal::SIGWINCH)?;
            wait_until("the old nginx workers to exit", STEP_TIMEOUT, || {
                nginx_workers(old).is_empty()
            })?;
            adopted.stop(old, Signal::SIGQUIT, STEP_TIMEOUT)?;
            to_old_gone.push(ns(t0, clock::mono_ns()));
            wait_until(
                "the new nginx master re-parented to the bench",
                STEP_TIMEOUT,
                || procfs::ppid(new) == Some(me),
            )?;
            std::thread::sleep(plan.reload_gap);
            Ok(new)
        })();
        let rep = running.finish();
        let new = result.with_context(|| format!("nginx binary upgrade {u}"))?;
        if new != master {
            changed += 1;
        }
        master = new;
        ok += rep.ok;
        failed += rep.failed_total();
        closes += rep.server_closes;
        secs += rep.elapsed.as_secs_f64();
        per.push(if rep.failed_total() == 0 {
            "0".to_string()
        } else {
            format!("{} ({})", rep.failed_total(), rep.failure_summary())
        });
    }
    http_ok(addr)?;
    let n = plan.upgrades;
    sec.row(
        format!(
            "control: nginx -w {WORKERS}, binary upgrade (USR2, WINCH, QUIT): failed requests over {n} ({ok} ok, {:.1} k req/s)",
            ok as f64 / secs.max(1e-9) / 1e3
        ),
        &[failed as f64],
        Unit::Count,
    );
    sec.row(
        format!(
            "control: nginx -w {WORKERS}, binary upgrade: upgrades after which the master's pid changed (by design)"
        ),
        &[changed as f64],
        Unit::Count,
    );
    sec.row(
        format!(
            "control: nginx -w {WORKERS}, binary upgrade: USR2 → new master with its workers up"
        ),
        &to_new,
        Unit::Time,
    );
    sec.row(
        format!(
            "control: nginx -w {WORKERS}, binary upgrade: USR2 → old master exited (WINCH, then QUIT once its workers were gone)"
        ),
        &to_old_gone,
        Unit::Time,
    );
    sec.note(format!(
        "Upgrade control: {version}, `worker_processes {WORKERS}`, daemonized (nginx ignores WINCH \
         otherwise), the same load and gaps as the upgrades above, {n} binary upgrades in a row \
         (of the same binary: the mechanism is what is measured). The bench sends USR2 to the \
         old master, waits until the new master (nginx.pid) has its {WORKERS} workers, sends \
         WINCH, waits until the old workers are gone, sends QUIT and waits until the old master \
         exited. The bench is a child subreaper meanwhile, so each nginx master, orphaned when \
         its parent exits, becomes its child and is reaped by it. {closes} keep-alive \
         connections closed cleanly (`Connection: close`); failed requests per upgrade: {}.",
        per.join(", ")
    ));
    adopted.stop(master, Signal::SIGQUIT, Duration::from_secs(30))?;
    Ok(())
}
