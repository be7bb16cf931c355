//! The master upgrades itself in place (`SIGUSR2`, or `prefork-ctl upgrade`): it checks the
//! binary now at its program path, execs it with the same pid, and the new image adopts the
//! running workers and then replaces every one of them, readiness-gated, as on `SIGHUP`.
//!
//! Each test runs `sample-warp-like` from a copy in a temp dir, so that it can deploy a new
//! binary the way a deploy does: rename a file over the program path. Binaries are copied once
//! per test (and waited for until they can be executed: another test thread that forks while a
//! copy is open for writing makes `exec` fail with `ETXTBSY` for a moment); deploying one is a
//! hard link and a rename, which opens nothing for writing.
//!
//! What is checked, black-box: the master's pid never changes and it never exits;
//! `/proc/<master>/exe` is the deployed file (by device and inode) after an upgrade, and still
//! the old one after a refused or rolled-back upgrade; the workers stay the master's children;
//! the listening socket is kept (the load on its address loses no request); a worker killed
//! while the master execs is reaped and its id respawned; signals sent during an upgrade are
//! acted on after it; the fd table and RSS stay flat over ten upgrades; systemd hears
//! `RELOADING=1` then `READY=1` from the same pid.

#[path = "support/ctl.rs"]
mod support_ctl;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support_ctl::{by_state, ctl, status};
use testkit::load::{Load, LoadReport, LoadSpec};
use testkit::notify::{NotifySocket, monotonic_usec};
use testkit::probe::idle_fds;
use testkit::{
    DEADLINE, Lines, Master, Pid, Signal, TempDir, alive, listening_addr, ppid, state, wait_for,
    wait_until, zombies_of,
};

const UPGRADED: &str = "master upgraded in place";
const REFUSED: &str = "upgrade refused";
const ROLLED_BACK: &str = "upgrade rolled back";
const WORKERS: usize = 3;

// ---------------------------------------------------------------------------------------------
// Binaries on disk

fn built() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sample-warp-like"))
}

/// Waits until `path` can be executed (no `ETXTBSY`): runs it with `--version` (the sample
/// prints its version and exits; a script just runs).
fn wait_executable(path: &Path) {
    wait_until(
        DEADLINE,
        &format!("{} to be executable", path.display()),
        || {
            let run = Command::new(path).arg("--version").output();
            !matches!(run, Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY))
        },
    );
}

/// A new file `dir/name` with `content`, mode 0755, executable.
fn write_executable(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_executable(&p);
    p
}

/// A fresh copy of the built sample (a file of its own: its own inode) at `dir/name`.
fn fresh_copy(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy(built(), &p).unwrap_or_else(|e| panic!("cannot copy to {}: {e}", p.display()));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_executable(&p);
    p
}

/// Deploys `src` at `target` as a deploy does, atomically: a hard link beside `target`,
/// renamed over it. `target` then is `src`'s inode.
fn install(src: &Path, target: &Path) {
    let tmp = target.with_extension("next");
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(src, &tmp)
        .unwrap_or_else(|e| panic!("cannot link {} to {}: {e}", src.display(), tmp.display()));
    std::fs::rename(&tmp, target).unwrap();
}

/// `path` with its directory resolved (as `/proc/<pid>/exe` shows it).
fn canonical(path: &Path) -> PathBuf {
    let dir = std::fs::canonicalize(path.parent().unwrap()).unwrap();
    dir.join(path.file_name().unwrap())
}

/// Moves `src` over `target` (so that `target`'s previous inode has no name left).
fn move_over(src: &Path, target: &Path) {
    std::fs::rename(src, target).unwrap();
}

/// (device, inode) of a file.
type FileId = (u64, u64);

fn file_id(path: &Path) -> FileId {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.dev(), m.ino())
}

/// (device, inode) of what `pid` runs, through `/proc/<pid>/exe` (also once the file was
/// renamed over: the link then reads `<path> (deleted)`, but stat still reaches the file).
fn exe_id(pid: Pid) -> Option<FileId> {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

fn exe_link(pid: Pid) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

// ---------------------------------------------------------------------------------------------
// The master under test

/// Prints the tail of the master's stderr when the test fails (declared after the [`Master`],
/// it runs before the master is stopped).
struct Diagnose(Lines);

impl Drop for Diagnose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let all = self.0.all();
            let tail = &all[all.len().saturating_sub(80)..];
            eprintln!(
                "---- the master's stderr, last {} of {} lines ----\n{}\n---- end ----",
                tail.len(),
                all.len(),
                tail.join("\n")
            );
        }
    }
}

/// A started `sample-warp-like` running from `bin` in `dir`. Fields drop in order: the
/// diagnosis, the master (stopped and reaped), then the directory.
struct Up {
    _diag: Diagnose,
    m: Master,
    addr: SocketAddr,
    workers: BTreeMap<String, i32>,
    bin: PathBuf,
    dir: TempDir,
}

/// `dir/sample-warp-like` (already there) started with `-p 0 -w 3 --threads 1` and `extra`,
/// with `env`; waits until its three workers serve.
fn start_in(dir: TempDir, extra: &[&str], env: &[(&str, &str)]) -> Up {
    let bin = dir.path().join("sample-warp-like");
    let mut cmd = Command::new(&bin);
    cmd.args(["-p", "0", "-w", &WORKERS.to_string(), "--threads", "1"])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let m = Master::start(cmd);
    let diag = Diagnose(m.stderr.clone());
    let addr = listening_addr(&m.stderr);
    let workers = m.wait_workers(WORKERS, "id");
    for pid in workers.values() {
        wait_serving(&m, *pid);
    }
    assert_eq!(
        exe_id(m.pid()),
        Some(file_id(&bin)),
        "the master runs {bin:?}"
    );
    Up {
        _diag: diag,
        m,
        addr,
        workers,
        bin,
        dir,
    }
}

/// A temp dir (canonical path) with a copy of the sample at `sample-warp-like` and a hard link
/// to it at `v0`.
fn dir_with_sample(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    let v0 = fresh_copy(dir.path(), "v0");
    install(&v0, &dir.path().join("sample-warp-like"));
    dir
}

/// Starts the sample from a fresh temp dir.
fn start(tag: &str, extra: &[&str]) -> Up {
    start_in(dir_with_sample(tag), extra, &[])
}

/// Waits for the `serving` line of worker `pid` (it logs it once it accepts, after it told
/// the master it is ready).
fn wait_serving(m: &Master, pid: i32) {
    let tag = format!(": serving pid={pid} ");
    m.stderr.wait_line(DEADLINE, |l| l.contains(&tag));
}

/// `serving` lines among `lines`: (id, pid, generation).
fn serving(lines: &[String]) -> Vec<(String, i32, u64)> {
    lines
        .iter()
        .filter(|l| l.starts_with("worker ") && l.contains("prefork_http: serving pid="))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(1)?.to_string(),
                f.get(5)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

fn count(m: &Master, what: &str) -> usize {
    m.stderr.count(|l| l.contains(what))
}

/// Waits until the master has logged `UPGRADED` `n` times in all, then until the upgrade's
/// roll is over: exactly as many live workers as `before`, none with its id's old pid, every
/// one serving and a child of the master. Returns the new id → pid.
fn upgraded(m: &Master, n: usize, before: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
    m.stderr
        .wait_count(DEADLINE, n, &|l: &str| l.contains(UPGRADED));
    let line = m
        .stderr
        .all()
        .into_iter()
        .filter(|l| l.contains(UPGRADED))
        .nth(n - 1)
        .unwrap();
    assert!(line.contains(" INFO "), "an INFO line: {line}");
    assert!(
        line.starts_with(&format!("master {} ", m.pid())),
        "logged by the same master pid: {line}"
    );
    let new = m.wait_replaced(before);
    for pid in new.values() {
        wait_serving(m, *pid);
        assert_eq!(
            ppid(*pid),
            Some(m.pid().as_raw()),
            "worker {pid} is the master's child"
        );
    }
    new
}

/// The master's VmRSS in kB.
fn rss_kb(pid: Pid) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Spins (no sleep: the window is a few milliseconds) until the master runs another image than
/// `from`, and returns it. Gives up early, with the log, if the upgrade was refused or rolled
/// back.
fn wait_exec(m: &Master, from: FileId) -> FileId {
    let start = Instant::now();
    let mut checked = start;
    loop {
        if let Some(id) = exe_id(m.pid())
            && id != from
        {
            return id;
        }
        if checked.elapsed() > Duration::from_millis(20) {
            checked = Instant::now();
            let ended = count(m, REFUSED) + count(m, ROLLED_BACK);
            assert!(
                ended == 0,
                "the upgrade did not exec: refused or rolled back"
            );
            assert!(
                start.elapsed() < DEADLINE,
                "the master did not exec a new image within {DEADLINE:?}"
            );
        }
        std::thread::yield_now();
    }
}

fn load_spec() -> LoadSpec {
    LoadSpec {
        keepalive: 4,
        fresh: 2,
        max_requests_per_thread: 1_000_000,
        max_time: Duration::from_secs(120),
        io_timeout: Duration::from_secs(15),
    }
}

fn start_load(addr: SocketAddr) -> Load {
    let load = Load::start(addr, load_spec());
    wait_until(DEADLINE, "the load to get going", || load.progress() > 200);
    load
}

/// Lets the load make `n` more requests (on whatever serves now), then stops it.
fn finish_load(load: Load, n: u64) -> LoadReport {
    let from = load.progress();
    wait_until(DEADLINE, &format!("{n} more requests"), || {
        load.progress() > from + n
    });
    let report = load.finish();
    eprintln!("load: {report:?}");
    report
}

fn assert_no_failure(report: &LoadReport) {
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    assert!(report.ok > 1000, "the load really ran: {report:?}");
}

/// Every `listening on` line names `addr`: the new image kept the socket (with `-p 0`, a
/// socket bound again would be on another port).
fn assert_same_listener(m: &Master, addr: SocketAddr) {
    let lines: Vec<String> = m
        .stderr
        .all()
        .into_iter()
        .filter(|l| l.contains("listening on "))
        .collect();
    let want = format!("http://{addr}");
    for l in &lines {
        assert!(
            l.contains(&want),
            "a listener on another address after the upgrade: {lines:#?}"
        );
    }
    let (code, body) = testkit::http_get(addr, "/", Duration::from_secs(10)).expect("GET /");
    assert_eq!((code, body.trim()), (200, "hello"));
}

/// Each worker of `workers` is alive, the master's child, and still its id's worker.
fn assert_same_workers(m: &Master, workers: &BTreeMap<String, i32>, what: &str) {
    for (id, pid) in workers {
        assert!(
            alive(*pid) && ppid(*pid) == Some(m.pid().as_raw()),
            "{what}: worker {id} (pid {pid}) is alive and the master's child"
        );
    }
    assert_eq!(
        &m.workers_by_arg("id"),
        workers,
        "{what}: no worker replaced"
    );
}

fn stop(mut up: Up) {
    up.m.signal(Signal::SIGTERM);
    assert_eq!(up.m.wait_exit(DEADLINE), 0, "the master exits 0 on TERM");
    assert!(zombies_of(up.m.pid().as_raw()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn usr2_under_load_execs_the_new_binary_in_place_and_replaces_every_worker() {
    let mut up = start("upgrade-load", &[]);
    let master = up.m.pid();
    let old = exe_id(master).unwrap();
    let v1 = fresh_copy(up.dir.path(), "v1");
    let load = start_load(up.addr);

    install(&v1, &up.bin);
    let new_id = file_id(&up.bin);
    assert_ne!(new_id, old);
    let t = Instant::now();
    up.m.signal(Signal::SIGUSR2);
    let new = upgraded(&up.m, 1, &up.workers);
    eprintln!("upgraded and rolled in {:?}: {new:?}", t.elapsed());

    assert!(up.m.running(), "the master never exited");
    assert_eq!(
        exe_id(master),
        Some(new_id),
        "/proc/{master}/exe is the new file ({})",
        exe_link(master)
    );
    assert_eq!(new.len(), WORKERS);
    for (id, pid) in &new {
        assert_ne!(up.workers[id], *pid, "id {id} was replaced");
    }
    assert_eq!(count(&up.m, REFUSED) + count(&up.m, ROLLED_BACK), 0);
    assert_same_listener(&up.m, up.addr);

    let report = finish_load(load, 2000);
    assert_no_failure(&report);
    up.workers = new;
    stop(up);
}

#[test]
fn a_broken_binary_is_refused_and_the_master_keeps_its_code_and_workers() {
    // The sample is written (not linked) at the program path: once renamed over, the old
    // file has no name left, as after a real deploy.
    let dir = TempDir::new("upgrade-broken");
    let first = fresh_copy(dir.path(), "first");
    move_over(&first, &dir.path().join("sample-warp-like"));
    let mut up = start_in(dir, &[], &[]);
    let master = up.m.pid();
    let old = exe_id(master).unwrap();
    let broken = write_executable(up.dir.path(), "broken", b"#!/bin/sh\nexit 1\n");
    let v1 = fresh_copy(up.dir.path(), "v1");
    let load = start_load(up.addr);

    install(&broken, &up.bin);
    up.m.signal(Signal::SIGUSR2);
    let line = up.m.stderr.wait_line(DEADLINE, |l| l.contains(REFUSED));
    assert!(line.contains(" WARN "), "a WARN line: {line}");
    assert!(up.m.running());
    assert_eq!(
        exe_id(master),
        Some(old),
        "the master still runs its old code"
    );
    let link = exe_link(master);
    assert_eq!(
        link,
        format!("{} (deleted)", canonical(&up.bin).display()),
        "the old, renamed-over file"
    );
    assert_same_workers(&up.m, &up.workers, "after the refusal");
    assert_eq!(count(&up.m, UPGRADED), 0, "no upgrade happened");
    let served = serving(&up.m.stderr.all());
    assert_eq!(served.len(), WORKERS, "no other worker started: {served:?}");
    let after_refusal = finish_load_keep(&load, 1000);
    eprintln!("{after_refusal} requests after the refusal");

    // A good binary again: the upgrade goes through.
    install(&v1, &up.bin);
    up.m.signal(Signal::SIGUSR2);
    let new = upgraded(&up.m, 1, &up.workers);
    assert_eq!(exe_id(master), Some(file_id(&v1)), "{}", exe_link(master));
    assert_eq!(count(&up.m, REFUSED), 1);

    let report = finish_load(load, 2000);
    assert_no_failure(&report);
    up.workers = new;
    stop(up);
}

/// Waits for `n` more requests of a load that goes on; returns the progress then.
fn finish_load_keep(load: &Load, n: u64) -> u64 {
    let from = load.progress();
    wait_for(DEADLINE, &format!("{n} more requests"), || {
        let p = load.progress();
        (p > from + n).then_some(p)
    })
}

#[test]
fn a_worker_killed_while_the_master_execs_is_reaped_and_respawned() {
    let up = start("upgrade-kill", &[]);
    let master = up.m.pid();
    let copies = [up.dir.path().join("v0"), fresh_copy(up.dir.path(), "v1")];
    let mut workers = up.workers.clone();
    let mut landed = 0;
    // Up to five upgrades, until one kill landed before the new image said it adopted.
    for attempt in 1..=5usize {
        let next = &copies[attempt % 2];
        install(next, &up.bin);
        let from = exe_id(master).unwrap();
        let said = count(&up.m, UPGRADED);
        up.m.signal(Signal::SIGUSR2);
        wait_exec(&up.m, from);
        let victim = workers["1"];
        nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        let before_adoption = count(&up.m, UPGRADED) == said;
        let new = upgraded(&up.m, attempt, &workers);
        wait_until(
            DEADLINE,
            &format!("the killed worker {victim} reaped"),
            || state(victim).is_none(),
        );
        assert!(
            !new.values().any(|p| *p == victim),
            "id 1 runs again with a new pid: {new:?}"
        );
        assert_eq!(exe_id(master), Some(file_id(next)));
        eprintln!(
            "attempt {attempt}: killed {victim} {} the adoption line; workers now {new:?}",
            if before_adoption { "before" } else { "after" }
        );
        workers = new;
        if before_adoption {
            landed += 1;
            break;
        }
    }
    assert!(
        landed > 0,
        "no kill landed between the exec and the adoption in 5 upgrades"
    );
    wait_until(DEADLINE, "no zombie children", || {
        zombies_of(master.as_raw()).is_empty()
    });
    assert_same_listener(&up.m, up.addr);
    stop(up);
}

#[test]
fn ten_upgrades_in_a_row_keep_the_fd_count_and_rss_flat() {
    let up = start("upgrade-ten", &[]);
    let master = up.m.pid();
    let copies = [up.dir.path().join("v0"), fresh_copy(up.dir.path(), "v1")];
    let mut workers = up.workers.clone();
    let mut at_2 = None;
    let t = Instant::now();
    for k in 1..=10usize {
        let next = &copies[k % 2];
        install(next, &up.bin);
        up.m.signal(Signal::SIGUSR2);
        workers = upgraded(&up.m, k, &workers);
        assert_eq!(
            exe_id(master),
            Some(file_id(next)),
            "upgrade {k}: {}",
            exe_link(master)
        );
        if k == 2 || k == 10 {
            wait_until(DEADLINE, "no zombie children", || {
                zombies_of(master.as_raw()).is_empty()
            });
            let table = idle_fds(&up.m);
            let rss = rss_kb(master);
            eprintln!("after upgrade {k}: {} fds, VmRSS {rss} kB", table.len());
            if k == 2 {
                at_2 = Some((table, rss));
            } else {
                let (table2, rss2) = at_2.take().unwrap();
                assert_eq!(
                    table.len(),
                    table2.len(),
                    "fd count after upgrade 2: {table2:#?}\nafter upgrade 10: {table:#?}"
                );
                assert!(
                    rss <= rss2 + 2048,
                    "VmRSS grew from {rss2} kB (after upgrade 2) to {rss} kB (after upgrade 10)"
                );
            }
        }
    }
    eprintln!("10 upgrades in {:?}", t.elapsed());
    assert_eq!(count(&up.m, UPGRADED), 10);
    assert_same_listener(&up.m, up.addr);
    stop(up);
}

/// The generation each pid said it serves for (from the `serving` lines).
fn generations(m: &Master) -> BTreeMap<i32, u64> {
    serving(&m.stderr.all())
        .into_iter()
        .map(|(_, pid, g)| (pid, g))
        .collect()
}

/// The generation the live workers serve, once they all serve one generation.
fn live_generation(m: &Master) -> Option<(u64, BTreeMap<String, i32>)> {
    let live = m.workers_by_arg("id");
    if live.len() != WORKERS || m.workers().len() != WORKERS {
        return None;
    }
    let gens = generations(m);
    let g: BTreeSet<u64> = live
        .values()
        .map(|p| gens.get(p).copied())
        .collect::<Option<_>>()?;
    (g.len() == 1).then(|| (*g.first().unwrap(), live))
}

/// Waits until the live workers all serve one generation of at least `at_least`.
fn wait_generation(m: &Master, at_least: u64, why: &str) -> (u64, BTreeMap<String, i32>) {
    wait_for(DEADLINE, why, || {
        live_generation(m).filter(|(g, _)| *g >= at_least)
    })
}

#[test]
fn a_sighup_sent_during_an_upgrade_is_acted_on_after_it() {
    let mut up = start("upgrade-hup", &[]);
    let master = up.m.pid();
    let (g0, _) = live_generation(&up.m).expect("one generation serves");
    let copies = [up.dir.path().join("v0"), fresh_copy(up.dir.path(), "v1")];

    // 1. The HUP reaches the master while it execs (before the new image could install its
    //    handlers): it is not lost, and it reloads once the new image runs.
    install(&copies[1], &up.bin);
    let from = exe_id(master).unwrap();
    let mark = up.m.stderr.all().len();
    up.m.signal(Signal::SIGUSR2);
    wait_exec(&up.m, from);
    up.m.signal(Signal::SIGHUP);
    up.m.stderr
        .wait_count(DEADLINE, 1, &|l: &str| l.contains(UPGRADED));
    // The upgrade's roll is generation g0 + 1 (a reload's); the SIGHUP's reload one beyond.
    let (g1, after) = wait_generation(
        &up.m,
        g0 + 2,
        "every worker of a generation beyond the upgrade's (the SIGHUP's reload)",
    );
    assert!(up.m.running());
    assert_eq!(exe_id(master), Some(file_id(&copies[1])));
    eprintln!(
        "HUP in the exec window: {:?}",
        serving(&up.m.stderr.all()[mark..])
    );
    for (id, pid) in &after {
        assert_eq!(ppid(*pid), Some(master.as_raw()), "id {id}");
    }

    // 2. The HUP reaches the new image as soon as it said it adopted (during its roll).
    install(&copies[0], &up.bin);
    let mark = up.m.stderr.all().len();
    up.m.signal(Signal::SIGUSR2);
    up.m.stderr
        .wait_count(DEADLINE, 2, &|l: &str| l.contains(UPGRADED));
    up.m.signal(Signal::SIGHUP);
    let (g2, _) = wait_generation(
        &up.m,
        g1 + 2,
        "every worker of a generation beyond the upgrade's (the SIGHUP's reload)",
    );
    eprintln!("generations: {g0} -> {g1} -> {g2}");
    assert_eq!(exe_id(master), Some(file_id(&copies[0])));

    // 3. USR2 and HUP sent together, five times. The master may see them in one wake-up (then
    //    the HUP's reload comes first and the upgrade is refused: a generation is settling), or
    //    the HUP during the check, maybe in the same wake-up as the check's exit. Whichever:
    //    the HUP is not lost.
    let mut g = g2;
    for round in 1..=5usize {
        let next = &copies[(round + 1) % 2];
        install(next, &up.bin);
        let (ups, refs) = (count(&up.m, UPGRADED), count(&up.m, REFUSED));
        up.m.signal(Signal::SIGUSR2);
        up.m.signal(Signal::SIGHUP);
        let went = wait_for(DEADLINE, "the upgrade to go through or be refused", || {
            if count(&up.m, UPGRADED) > ups {
                Some(true)
            } else if count(&up.m, REFUSED) > refs {
                Some(false)
            } else {
                None
            }
        });
        let want = g + if went { 2 } else { 1 };
        let (now, _) = wait_generation(
            &up.m,
            want,
            &format!(
                "round {round}: generation {want} (from {g}; the upgrade {}), so the HUP sent \
                 with the USR2 was acted on",
                if went { "went through" } else { "was refused" }
            ),
        );
        eprintln!("round {round}: upgrade went through: {went}; generation {g} -> {now}");
        g = now;
    }
    eprintln!(
        "HUP during the roll: {:?}",
        serving(&up.m.stderr.all()[mark..])
    );
    assert_same_listener(&up.m, up.addr);
    stop(up);
}

#[test]
fn a_second_sigusr2_during_an_upgrade_is_refused_and_does_not_kill_the_master() {
    let mut up = start("upgrade-usr2-twice", &[]);
    let master = up.m.pid();
    let v1 = fresh_copy(up.dir.path(), "v1");
    install(&v1, &up.bin);
    let from = exe_id(master).unwrap();
    let mark = up.m.stderr.all().len();
    up.m.signal(Signal::SIGUSR2);
    // The second one reaches the master while it execs: SIGUSR2's default action would
    // terminate the new image before it installed its handlers.
    wait_exec(&up.m, from);
    up.m.signal(Signal::SIGUSR2);
    let new = upgraded(&up.m, 1, &up.workers);
    assert!(up.m.running(), "the second SIGUSR2 did not kill the master");
    // A reload as a point of order: had the second USR2 been queued instead of refused, its
    // upgrade would have begun by the time this reload is over.
    up.m.signal(Signal::SIGHUP);
    let after = up.m.wait_replaced(&new);
    for pid in after.values() {
        wait_serving(&up.m, *pid);
    }
    assert!(up.m.running());
    assert_eq!(count(&up.m, UPGRADED), 1, "the second SIGUSR2 was refused");
    let refusals: Vec<String> = up.m.stderr.all()[mark..]
        .iter()
        .filter(|l| l.contains(REFUSED))
        .cloned()
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "the second SIGUSR2 is refused, and says so: {refusals:#?}"
    );
    assert!(refusals[0].contains(" WARN "), "{refusals:?}");
    up.workers = after;
    stop(up);
}

/// Starts a master, sends USR2 with a new binary deployed, `when` sends TERM; the master
/// exits 0 (not killed by a signal), and every worker is gone. Returns the master's log.
fn term_during_upgrade(tag: &str, when: &str) -> Vec<String> {
    let mut up = start(tag, &[]);
    let master = up.m.pid();
    let v1 = fresh_copy(up.dir.path(), "v1");
    install(&v1, &up.bin);
    let from = exe_id(master).unwrap();
    up.m.signal(Signal::SIGUSR2);
    match when {
        "at once" => {}
        "in the exec window" => {
            wait_exec(&up.m, from);
        }
        "during the roll" => {
            up.m.stderr.wait_line(DEADLINE, |l| l.contains(UPGRADED));
        }
        _ => unreachable!(),
    }
    up.m.signal(Signal::SIGTERM);
    let code = up.m.wait_exit(DEADLINE);
    assert_eq!(
        code, 0,
        "TERM sent {when} during an upgrade: exit 0, not killed (128+n is signal n)"
    );
    up.m.wait_output_closed(DEADLINE);
    let log = up.m.stderr.all();
    // Every worker that ever served, old and new, is gone with the master.
    for (id, pid, _) in serving(&log) {
        assert!(!alive(pid), "worker {id} (pid {pid}) outlived the master");
    }
    log
}

#[test]
fn a_sigterm_sent_during_an_upgrade_makes_the_master_exit_0_after_it() {
    let log = term_during_upgrade("upgrade-term-exec", "in the exec window");
    assert!(
        log.iter().any(|l| l.contains(UPGRADED)),
        "the upgrade went through before the stop: {log:#?}"
    );
    let log = term_during_upgrade("upgrade-term-roll", "during the roll");
    assert!(log.iter().any(|l| l.contains(UPGRADED)));
    // Together with the USR2 (which of the two the master sees first is its choice).
    term_during_upgrade("upgrade-term-now", "at once");
}

/// At the answer: every worker is new and ready, and the master is the same process.
fn assert_rolled(
    sock: &Path,
    master: Pid,
    before: &BTreeMap<String, i32>,
) -> BTreeMap<String, i32> {
    let s = status(sock);
    let ready = by_state(&s, "ready");
    assert_eq!(ready.len(), WORKERS, "{s:#}");
    for (id, pid) in &ready {
        assert_ne!(
            before.get(id),
            Some(pid),
            "id {id} is new at the answer: {s:#}"
        );
    }
    assert_eq!(s["master"]["pid"], master.as_raw(), "{s:#}");
    ready
}

#[test]
fn prefork_ctl_upgrade_answers_once_the_roll_is_over() {
    let dir = dir_with_sample("upgrade-ctl");
    let sock = dir.path().join("ctl.sock");
    let mut up = start_in(dir, &["--control", sock.to_str().unwrap()], &[]);
    let master = up.m.pid();
    wait_until(DEADLINE, "every worker ready in the status", || {
        by_state(&status(&sock), "ready").len() == WORKERS
    });
    let before = by_state(&status(&sock), "ready");
    let v1 = fresh_copy(up.dir.path(), "v1");

    install(&v1, &up.bin);
    let (code, out, err) = ctl(&sock, &["upgrade"]);
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert!(
        out.contains("upgrade"),
        "the answer names the upgrade: {out}"
    );
    let after = assert_rolled(&sock, master, &before);
    assert_eq!(exe_id(master), Some(file_id(&v1)), "{}", exe_link(master));
    eprintln!("prefork-ctl upgrade: {}", out.trim());

    // The same through the protocol itself: one JSON line each way.
    install(&up.dir.path().join("v0"), &up.bin);
    let mut conn = UnixStream::connect(&sock).expect("connect to the control socket");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(b"{\"cmd\":\"upgrade\"}\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&conn)
        .read_line(&mut answer)
        .expect("an answer");
    let json: Value = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {answer:?}"));
    assert!(answer.contains("\"upgrade\""), "{json}");
    assert_ne!(json["result"], "error", "{json}");
    assert_rolled(&sock, master, &after);
    assert_eq!(exe_id(master), Some(file_id(&up.dir.path().join("v0"))));
    assert!(up.m.running(), "the master never exited");
    stop(up);
}

#[test]
fn a_new_image_that_cannot_adopt_rolls_back_to_the_old_one() {
    let dir = TempDir::new("upgrade-rollback");
    let first = fresh_copy(dir.path(), "first");
    let bin = dir.path().join("sample-warp-like");
    move_over(&first, &bin);
    // What the new image's /proc/self/exe will read.
    let hook = canonical(&bin).display().to_string();
    let sock = dir.path().join("ctl.sock");
    let sock_arg = sock.to_str().unwrap().to_string();
    let mut up = start_in(
        dir,
        &["--control", &sock_arg],
        &[("PREFORK_TEST_UPGRADE_FAIL_ADOPT", &hook)],
    );
    let master = up.m.pid();
    let old = exe_id(master).unwrap();
    let v1 = fresh_copy(up.dir.path(), "v1");
    let load = start_load(up.addr);

    install(&v1, &up.bin);
    up.m.signal(Signal::SIGUSR2);
    let line = up.m.stderr.wait_line(DEADLINE, |l| l.contains(ROLLED_BACK));
    assert!(line.contains(" WARN "), "a WARN line: {line}");
    assert!(
        line.starts_with(&format!("master {master} ")),
        "logged by the same pid: {line}"
    );
    assert!(up.m.running(), "the master never exited");
    assert_eq!(exe_id(master), Some(old), "back to the old image");
    assert_eq!(
        exe_link(master),
        format!("{} (deleted)", canonical(&up.bin).display()),
        "the old, renamed-over file"
    );
    assert_eq!(count(&up.m, UPGRADED), 0, "{line}");
    assert_same_workers(&up.m, &up.workers, "after the rollback");
    finish_load_keep(&load, 1000);

    // The old image is fully back: it answers on its control socket, and a second attempt
    // is reported as failed too.
    let (code, out, err) = ctl(&sock, &["upgrade"]);
    assert_ne!(code, 0, "a rolled-back upgrade is a failure: {out} {err}");
    eprintln!("prefork-ctl upgrade after rollback: {code} {out:?} {err:?}");
    up.m.stderr
        .wait_count(DEADLINE, 2, &|l: &str| l.contains(ROLLED_BACK));
    assert_eq!(exe_id(master), Some(old));
    assert_same_workers(&up.m, &up.workers, "after the second rollback");

    // And it still reloads.
    up.m.signal(Signal::SIGHUP);
    let new = up.m.wait_replaced(&up.workers);
    for pid in new.values() {
        wait_serving(&up.m, *pid);
    }
    let report = finish_load(load, 2000);
    assert_no_failure(&report);
    up.workers = new;
    stop(up);
}

#[test]
fn after_a_rollback_the_next_upgrade_keeps_the_listening_socket() {
    // The program path goes through a symlinked directory, `bin -> a`: the test hook names the
    // file in `a`, so an upgrade fails to adopt while `bin` points there and goes through once
    // `bin` points to `b`.
    let dir = TempDir::new("upgrade-after-rollback");
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir(root.join("a")).unwrap();
    std::fs::create_dir(root.join("b")).unwrap();
    let first = fresh_copy(&root.join("a"), "first");
    move_over(&first, &root.join("a/sample-warp-like"));
    std::os::unix::fs::symlink("a", root.join("bin")).unwrap();
    let hook = root.join("a/sample-warp-like").display().to_string();
    let program = root.join("bin/sample-warp-like");
    let mut cmd = Command::new(&program);
    cmd.args(["-p", "0", "-w", &WORKERS.to_string(), "--threads", "1"])
        .env("PREFORK_TEST_UPGRADE_FAIL_ADOPT", &hook);
    let mut m = Master::start(cmd);
    let _diag = Diagnose(m.stderr.clone());
    let addr = listening_addr(&m.stderr);
    let workers = m.wait_workers(WORKERS, "id");
    for pid in workers.values() {
        wait_serving(&m, *pid);
    }
    let master = m.pid();
    let old = exe_id(master).unwrap();
    let load = start_load(addr);

    // 1. Rolled back.
    let v1 = fresh_copy(&root.join("a"), "v1");
    move_over(&v1, &root.join("a/sample-warp-like"));
    m.signal(Signal::SIGUSR2);
    m.stderr.wait_line(DEADLINE, |l| l.contains(ROLLED_BACK));
    assert_eq!(exe_id(master), Some(old));
    assert_same_workers(&m, &workers, "after the rollback");

    // 2. A good binary at the program path (`bin -> b`, switched atomically): the upgrade goes
    //    through, and its new workers serve on the same socket.
    let good = fresh_copy(&root.join("b"), "sample-warp-like");
    std::os::unix::fs::symlink("b", root.join("bin.next")).unwrap();
    std::fs::rename(root.join("bin.next"), root.join("bin")).unwrap();
    m.signal(Signal::SIGUSR2);
    let new = upgraded(&m, 1, &workers);
    assert_eq!(exe_id(master), Some(file_id(&good)), "{}", exe_link(master));
    assert_same_listener(&m, addr);
    let report = finish_load(load, 2000);
    assert_no_failure(&report);
    assert_eq!(new.len(), WORKERS);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    drop(dir);
}

#[test]
fn systemd_hears_reloading_then_ready_around_an_upgrade_from_the_same_pid() {
    let ns = NotifySocket::bind_path();
    let dir = TempDir::new("upgrade-notify");
    let first = fresh_copy(dir.path(), "first");
    move_over(&first, &dir.path().join("sample-warp-like"));
    let up = start_in(dir, &[], &[("NOTIFY_SOCKET", ns.address())]);
    let master = up.m.pid();
    let is_ready = |n: &testkit::notify::Notification| n.has("READY", "1");
    let is_reloading = |n: &testkit::notify::Notification| n.has("RELOADING", "1");
    let ready0 = ns.wait(DEADLINE, "READY=1", is_ready);
    let broken = write_executable(up.dir.path(), "broken", b"#!/bin/sh\nexit 1\n");
    let v1 = fresh_copy(up.dir.path(), "v1");

    let check_reloading = |r: usize, before: u64| {
        ns.with_all(|all| {
            let n = &all[r];
            let mono: u64 = n
                .get("MONOTONIC_USEC")
                .unwrap_or_else(|| panic!("MONOTONIC_USEC with RELOADING=1: {:?}", n.text))
                .parse()
                .unwrap();
            assert!(
                before <= mono && mono <= n.monotonic_usec,
                "MONOTONIC_USEC {mono} not between {before} and {}",
                n.monotonic_usec
            );
        })
    };

    // A refused upgrade: RELOADING=1, then READY=1 again.
    install(&broken, &up.bin);
    let t0 = monotonic_usec();
    up.m.signal(Signal::SIGUSR2);
    let r1 = ns.wait_from(ready0 + 1, DEADLINE, "RELOADING=1", is_reloading);
    check_reloading(r1, t0);
    let d1 = ns.wait_from(r1 + 1, DEADLINE, "READY=1 after the refusal", is_ready);
    up.m.stderr.wait_line(DEADLINE, |l| l.contains(REFUSED));

    // A good one: RELOADING=1, then READY=1 once the new image rolled its workers.
    install(&v1, &up.bin);
    let t1 = monotonic_usec();
    up.m.signal(Signal::SIGUSR2);
    let r2 = ns.wait_from(d1 + 1, DEADLINE, "RELOADING=1", is_reloading);
    check_reloading(r2, t1);
    let d2 = ns.wait_from(r2 + 1, DEADLINE, "READY=1 after the upgrade", is_ready);
    // READY=1 came from the new image, once the replacements were there.
    assert_eq!(exe_id(master), Some(file_id(&v1)), "{}", exe_link(master));
    let newcomers: Vec<i32> =
        up.m.workers()
            .into_iter()
            .filter(|p| !up.workers.values().any(|o| o == p))
            .collect();
    assert!(
        newcomers.len() >= WORKERS,
        "READY=1 before the new workers were started: {newcomers:?}"
    );
    let new = upgraded(&up.m, 1, &up.workers);
    eprintln!("{:#?}", ns.texts());
    ns.with_all(|all| {
        for (range, what) in [(r1 + 1..d1, "refused"), (r2 + 1..d2, "upgrade")] {
            assert!(
                all[range].iter().all(|n| !is_ready(n)),
                "no READY=1 in the middle of the {what}"
            );
        }
        for n in all.iter() {
            assert_eq!(n.pid, master.as_raw(), "sent by the master: {:?}", n.text);
            if let Some(p) = n.get("MAINPID") {
                assert_eq!(p, master.to_string(), "MAINPID never changes");
            }
        }
    });
    // The new image did not hand systemd's variables down to its workers.
    for pid in new.values() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"NOTIFY_SOCKET=")),
            "worker {pid} got NOTIFY_SOCKET"
        );
    }
    stop(up);
}

/// The sockets of the master's reuseport group, from the control socket's status: one per
/// worker id, on one address.
fn group_sockets(ctl: &Path) -> Vec<String> {
    let r = prefork_core::control::request(
        ctl,
        &prefork_core::control::Command::Status { resources: false },
    )
    .expect("status");
    match r {
        prefork_core::control::Response::Status { status } => {
            status.listeners.iter().map(|l| l.addr.clone()).collect()
        }
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn a_reuseport_group_crosses_the_upgrade_and_scales_down_after_it() {
    let dir = dir_with_sample("upgrade-reuseport");
    let ctl = dir.path().join("ctl.sock");
    let ctl_arg = ctl.to_str().unwrap().to_string();
    let mut up = start_in(dir, &["--reuseport", "--control", &ctl_arg], &[]);
    let master = up.m.pid();
    let sockets = group_sockets(&ctl);
    assert_eq!(sockets.len(), WORKERS, "one socket per id: {sockets:?}");
    let load = start_load(up.addr);

    let v1 = fresh_copy(up.dir.path(), "v1");
    install(&v1, &up.bin);
    up.m.signal(Signal::SIGUSR2);
    let new = upgraded(&up.m, 1, &up.workers);
    assert_eq!(exe_id(master), Some(file_id(&up.bin)), "the new file runs");
    assert_eq!(
        count(&up.m, "kept the old master's reuseport group"),
        1,
        "the group was handed over, not bound again"
    );
    assert_eq!(
        group_sockets(&ctl),
        sockets,
        "the same sockets on the same address after the upgrade"
    );
    assert_same_listener(&up.m, up.addr);

    // The adopted group still steers and drains: one id fewer, its socket closes once its
    // worker is gone, and nothing is lost meanwhile.
    up.m.signal(Signal::SIGTTOU);
    wait_until(DEADLINE, "the group to shrink by one socket", || {
        group_sockets(&ctl).len() == WORKERS - 1
    });
    let report = finish_load(load, 2000);
    assert_no_failure(&report);
    up.workers = new;
    stop(up);
}

#[test]
fn usr2_during_a_reload_that_has_not_settled_waits_for_it_then_upgrades() {
    // A deploy race: a build whose workers never become ready is reloaded (the reload cannot
    // settle), then the fixed build is put in place and USR2 sent. The upgrade waits; a
    // second HUP reloads the fixed build, which settles, and then the upgrade goes through.
    let mut up = start("upgrade-queued", &[]);
    let master = up.m.pid();
    let load = start_load(up.addr);
    // (`--version` is how wait_executable runs it: that returns at once.)
    let hang = write_executable(
        up.dir.path(),
        "hang",
        b"#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nexec sleep 60\n",
    );
    let fixed = fresh_copy(up.dir.path(), "fixed");
    install(&hang, &up.bin);
    up.m.signal(Signal::SIGHUP);
    up.m.stderr.wait_line(DEADLINE, |l| {
        l.contains("SIGHUP: reconciling the declared workers generation=1")
    });
    install(&fixed, &up.bin);
    up.m.signal(Signal::SIGUSR2);
    up.m.stderr.wait_line(DEADLINE, |l| {
        l.contains("upgrade: waiting for the start, reload or scale")
    });
    assert_eq!(count(&up.m, "upgrade: checking the new binary"), 0);
    up.m.signal(Signal::SIGHUP);
    let new = upgraded(&up.m, 1, &up.workers);
    let all = up.m.stderr.all();
    let pos = |what: &str| all.iter().position(|l| l.contains(what));
    let (reloaded, checked) = (
        pos("reload finished generation=2"),
        pos("upgrade: checking the new binary"),
    );
    assert!(
        matches!((reloaded, checked), (Some(r), Some(c)) if r < c),
        "the check began once the reload had settled: reload at {reloaded:?}, check at \
         {checked:?}"
    );
    assert_eq!(
        exe_id(master),
        Some(file_id(&fixed)),
        "the fixed build runs the master"
    );
    assert_eq!(count(&up.m, REFUSED), 0);
    let report = finish_load(load, 2000);
    assert_no_failure(&report);
    up.workers = new;
    stop(up);
}

#[test]
fn new_workers_that_never_become_ready_leave_the_old_ones_serving_until_a_fix() {
    // The new build passes the check and runs the master, but its workers hang before they are
    // ready: a bash wrapper at the program path runs the real binary for the master (and its
    // check) under the wrapper's own name, and `sleep` for a worker. The old workers serve on,
    // the status says `upgrading`, and a fixed build reloaded with HUP ends the upgrade.
    let dir = dir_with_sample("upgrade-hang");
    let ctl = dir.path().join("ctl.sock");
    let ctl_arg = ctl.to_str().unwrap().to_string();
    let mut up = start_in(dir, &["--control", &ctl_arg], &[]);
    let master = up.m.pid();
    let load = start_load(up.addr);
    let real = fresh_copy(up.dir.path(), "real");
    let script = format!(
        "#!/bin/bash\nif [ -n \"$PREFORK_WORKER\" ]; then exec sleep 60; fi\nexec -a \"$0\" {} \"$@\"\n",
        real.display()
    );
    let wrapper = write_executable(up.dir.path(), "wrapper", script.as_bytes());
    install(&wrapper, &up.bin);
    up.m.signal(Signal::SIGUSR2);
    up.m.stderr.wait_line(DEADLINE, |l| l.contains(UPGRADED));
    assert_eq!(
        exe_id(master),
        Some(file_id(&real)),
        "the master runs the real binary"
    );
    wait_until(DEADLINE, "the status to say upgrading", || {
        status(&ctl)["master"]["state"] == "upgrading"
    });
    // (Not by their argv: a hanging replacement shows `id=N` until bash execs `sleep`.)
    for (id, pid) in &up.workers {
        assert!(
            alive(*pid) && ppid(*pid) == Some(master.as_raw()),
            "while the new workers hang: the old worker {id} (pid {pid}) serves on"
        );
    }

    let fixed = fresh_copy(up.dir.path(), "fixed");
    install(&fixed, &up.bin);
    up.m.signal(Signal::SIGHUP);
    up.m.stderr.wait_line(DEADLINE, |l| {
        l.contains("upgrade finished: every worker runs")
    });
    let new = up.m.wait_replaced(&up.workers);
    for pid in new.values() {
        wait_serving(&up.m, *pid);
    }
    wait_until(DEADLINE, "the status to say running", || {
        status(&ctl)["master"]["state"] == "running"
    });
    let report = finish_load(load, 2000);
    assert_no_failure(&report);
    up.workers = new;
    stop(up);
}
