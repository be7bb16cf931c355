//! A storm of `SIGKILL`s on serving workers: every kill is answered by an immediate respawn of
//! exactly that id, the pool never has more than one worker down at a time, nothing is left
//! unreaped, and no backoff is triggered (a worker that was serving is not a failed start).
//!
//! "Ready" is observed, not guessed: a worker is a candidate victim once it printed its
//! `started` line and is blocked in `accept` (so it already sent its readiness message, which
//! the fixture does just before accepting), *and* the master was seen asleep in `poll` after
//! that (a master blocked in `poll` has no unread readiness message: `poll` would not sleep on
//! one). Only then is the kill sure to hit a worker the master knows to be ready.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::fx::starts;
use testkit::{DEADLINE, Master, Pid, Signal, cmdline, fx, now_ms, state, wait_for, zombies_of};

const N: usize = 4;
const KILLS: usize = 100;

/// What `/proc/<pid>/syscall` says.
#[derive(Debug, PartialEq, Eq)]
enum Sys {
    /// Blocked in this system call.
    In(i64),
    /// Running in user space or on a CPU.
    Running,
    /// The file cannot be read (no such process, or no permission).
    Unknown,
}

fn syscall(pid: i32) -> Sys {
    match std::fs::read_to_string(format!("/proc/{pid}/syscall")) {
        Err(_) => Sys::Unknown,
        Ok(s) => match s.split_whitespace().next() {
            Some(n) => n.parse().map_or(Sys::Running, Sys::In),
            None => Sys::Unknown,
        },
    }
}

fn accept_nrs() -> Vec<i64> {
    vec![nix::libc::SYS_accept, nix::libc::SYS_accept4]
}

fn poll_nrs() -> Vec<i64> {
    #[allow(unused_mut)]
    let mut v = vec![nix::libc::SYS_ppoll];
    #[cfg(target_arch = "x86_64")]
    v.push(nix::libc::SYS_poll);
    v
}

/// The master's children, read in one go from the kernel (`/proc/<pid>/task/<tid>/children` of
/// the thread that forks them, its main thread): unlike a walk of `/proc`, an atomic list.
fn children(master: i32) -> Option<Vec<i32>> {
    let s = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).ok()?;
    Some(
        s.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
}

/// One sample of the live workers (not zombies, argv has `id=`) of `master`, or `None` if it
/// is not a faithful one.
///
/// Reading each child's state takes time, and a monitor descheduled between listing the
/// children and reading them would see the old workers dead and miss their successors, so a
/// sample counts only if the children did not change while it was taken and it took under
/// 4 ms: the test kills the next worker only once the last one's successor booted and
/// reported ready, and 5 ms after that, so one sample cannot span a successor's exec and the
/// next kill.
fn live_workers(master: i32) -> Option<usize> {
    let t = Instant::now();
    let before = children(master)?;
    let n = before
        .iter()
        .filter(|&&p| state(p).is_some_and(|s| s != 'Z'))
        .filter(|&&p| cmdline(p).is_some_and(|a| a.iter().any(|x| x.starts_with("id="))))
        .count();
    let after = children(master)?;
    (before == after && t.elapsed() < Duration::from_millis(4)).then_some(n)
}

/// All N ids run exactly one worker each, every one of them provably ready (see the module
/// doc); returns id → pid.
fn all_ready(m: &Master) -> Option<BTreeMap<u32, i32>> {
    let by_id = m.workers_by_arg("id");
    if by_id.len() != N || m.workers().len() != N {
        return None;
    }
    let started: HashSet<i32> = starts(m).iter().map(|s| s.pid).collect();
    let accept = accept_nrs();
    let mut out = BTreeMap::new();
    for (id, &pid) in &by_id {
        if !started.contains(&pid) {
            return None;
        }
        match syscall(pid) {
            Sys::In(nr) if accept.contains(&nr) => {}
            _ => return None,
        }
        out.insert(id.parse().ok()?, pid);
    }
    // After the workers were seen in accept: the master asleep in poll has read their messages.
    let master = m.pid().as_raw();
    match syscall(master) {
        Sys::In(nr) if poll_nrs().contains(&nr) && state(master) == Some('S') => {}
        _ => return None,
    }
    (out.keys().copied().collect::<Vec<_>>() == (0..N as u32).collect::<Vec<_>>()).then_some(out)
}

/// xorshift64*: enough randomness to pick victims, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn a_storm_of_kills_keeps_every_id_serving_without_backoff() {
    let m = fx!(&["--workers", "4", "--mode", "serve"]);
    let master = m.pid().as_raw();
    assert_ne!(
        syscall(master),
        Sys::Unknown,
        "/proc/<pid>/syscall must be readable for this test"
    );
    let mut current = wait_for(DEADLINE, "4 ready workers", || all_ready(&m));

    // The monitor: live worker count every ~1 ms, minimum and histogram.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut hist, mut discarded) = ([0usize; 16], 0usize);
            while !stop.load(Ordering::Acquire) {
                match live_workers(master) {
                    Some(n) => hist[n.min(15)] += 1,
                    None => discarded += 1,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (hist, discarded)
        })
    };

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("kill storm seed {seed:#x}");
    let mut rng = Rng(seed);
    let storm_start = Instant::now();
    let mut victims: Vec<i32> = Vec::with_capacity(KILLS);
    let mut respawn_ms: Vec<u64> = Vec::with_capacity(KILLS);
    for k in 0..KILLS {
        let id = (rng.next() % N as u64) as u32;
        let victim = current[&id];
        let known: HashSet<i32> = starts(&m).iter().map(|s| s.pid).collect();
        let killed_at = now_ms();
        nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill(worker)");
        victims.push(victim);
        // The same id comes back, with a pid we have not seen before.
        let back = wait_for(DEADLINE, &format!("kill {k}: id {id} respawned"), || {
            starts(&m)
                .into_iter()
                .find(|s| s.id == id && !known.contains(&s.pid))
        });
        respawn_ms.push(back.at_ms.saturating_sub(killed_at));
        current = wait_for(DEADLINE, &format!("kill {k}: 4 ready workers"), || {
            all_ready(&m)
        });
        assert_eq!(
            current[&id], back.pid,
            "kill {k}: id {id} runs the respawned pid"
        );
        // Pacing: the monitor sees the steady state between kills too, and one of its samples
        // cannot span a successor's exec and the next kill (see `live_workers`).
        std::thread::sleep(Duration::from_millis(5));
    }
    let storm = storm_start.elapsed();
    stop.store(true, Ordering::Release);
    let (hist, discarded) = monitor.join().expect("monitor thread");
    let samples: usize = hist.iter().sum();
    let min = hist
        .iter()
        .position(|&c| c > 0)
        .expect("monitor took samples");
    let max_respawn = respawn_ms.iter().copied().max().unwrap_or(0);
    let mut sorted = respawn_ms.clone();
    sorted.sort();
    eprintln!(
        "storm: {KILLS} kills in {storm:?}; {samples} samples ({discarded} discarded), \
         live-count histogram {:?}; respawn ms median {} max {max_respawn}",
        &hist[..=N + 1],
        sorted[sorted.len() / 2]
    );
    assert!(
        samples >= KILLS,
        "the monitor sampled the storm ({samples})"
    );
    assert!(
        min >= N - 1,
        "live workers dropped to {min} during the storm: {hist:?}"
    );

    // Afterwards: exactly ids 0..3, nothing unreaped.
    let after = m.wait_workers(N, "id");
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        ["0", "1", "2", "3"],
        "exactly the ids 0..3 run"
    );
    for v in &victims {
        assert!(!after.values().any(|p| p == v), "victim {v} is not running");
    }
    wait_for(DEADLINE, "no zombie children of the master", || {
        zombies_of(master).is_empty().then_some(())
    });

    // No backoff: every kill was a serving worker's death, answered by an immediate respawn.
    assert!(
        max_respawn < 2000,
        "a respawn took {max_respawn} ms: {respawn_ms:?}"
    );
    let respawned = m
        .stderr
        .wait_count(DEADLINE, KILLS, &|l| l.contains("worker exited; respawned"));
    let logged: HashSet<i32> = respawned
        .iter()
        .filter_map(|l| {
            let tail = l.split(" pid=").nth(1)?;
            tail.split_whitespace().next()?.parse().ok()
        })
        .collect();
    for v in &victims {
        assert!(logged.contains(v), "no immediate respawn logged for {v}");
    }
    let backoffs: Vec<String> = m
        .stderr
        .all()
        .into_iter()
        .filter(|l| l.contains("died while starting") || l.contains("retry_in_ms"))
        .collect();
    assert!(
        backoffs.is_empty(),
        "the storm triggered backoff: {backoffs:#?}"
    );
    assert_eq!(respawned.len(), KILLS, "one respawn per kill");
}

/// Sends `SIGCONT` to the pids on drop, so a failing test never leaves a process stopped.
/// Cleared once the test resumed them itself.
struct ContOnDrop(Vec<i32>);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGCONT);
        }
    }
}

/// A worker that reported ready and then died before the master got round to reading its
/// message is still a worker that was up: it must be respawned at once, not backed off as a
/// failed start. Made deterministic by freezing the master (`SIGSTOP`) while the new worker,
/// caught after its exec and before it reported ready, reports ready and is killed: its
/// readiness message and its `SIGCHLD` then reach the master in one wake-up, and the master
/// must read the message before it judges the exit. (The master spawns with
/// `clone(CLONE_VFORK)`, so it cannot be frozen before the new worker's exec: a child stopped
/// that early is let go and the round is tried again.)
#[test]
fn a_worker_that_died_right_after_reporting_ready_is_respawned_at_once() {
    let m = fx!(&["--workers", "1", "--mode", "serve"]);
    let master = m.pid().as_raw();
    let accept = accept_nrs();
    let ready_worker = || {
        let w = m.workers_by_arg("id");
        let p = *w.get("0")?;
        (m.workers().len() == 1
            && matches!(syscall(p), Sys::In(n) if accept.contains(&n))
            && matches!(syscall(master), Sys::In(n) if poll_nrs().contains(&n)))
        .then_some(p)
    };
    let mut rounds = 0;
    for attempt in 0..20 {
        if rounds == 3 {
            break;
        }
        let w = wait_for(DEADLINE, "a ready worker", ready_worker);
        // Its successor: caught after its exec but before it reported ready, and stopped
        // (SIGSTOP cannot be blocked).
        nix::sys::signal::kill(Pid::from_raw(w), Signal::SIGKILL).expect("kill(worker)");
        let t = Instant::now();
        let w1 = loop {
            if let Some(&p) = children(master)
                .unwrap_or_default()
                .iter()
                .find(|&&p| p != w)
            {
                break p;
            }
            assert!(t.elapsed() < DEADLINE, "no respawn of {w}");
        };
        // Wait (tightly) for its exec: before it, the master is in its vfork wait.
        while !cmdline(w1).is_some_and(|a| a.iter().any(|x| x.starts_with("id="))) {
            assert!(t.elapsed() < DEADLINE, "{w1} never exec'd");
        }
        // Until the master runs again, w1 cannot be reaped, so its pid stays its own.
        let mut cont = ContOnDrop(vec![w1, master]);
        nix::sys::signal::kill(Pid::from_raw(w1), Signal::SIGSTOP).expect("stop(new worker)");
        testkit::wait_until(DEADLINE, "the new worker stopped", || {
            state(w1) == Some('T')
        });
        if !cmdline(w1).is_some_and(|a| a.iter().any(|x| x.starts_with("id="))) {
            // Too early: stopped before its exec. The master is then in its vfork wait
            // (CLONE_VFORK), which SIGSTOP cannot interrupt until the child execs.
            eprintln!("attempt {attempt}: caught {w1} before its exec; again");
            continue;
        }
        if matches!(syscall(w1), Sys::In(n) if accept.contains(&n)) {
            // Too late: it already reported ready to a running master.
            eprintln!("attempt {attempt}: caught {w1} after it was ready; again");
            continue;
        }
        nix::sys::signal::kill(m.pid(), Signal::SIGSTOP).expect("stop(master)");
        testkit::wait_until(DEADLINE, "the master stopped", || {
            state(master) == Some('T')
        });
        nix::sys::signal::kill(Pid::from_raw(w1), Signal::SIGCONT).expect("cont(new worker)");
        // Blocked in accept: its readiness message (sent just before) is queued for the master.
        testkit::wait_until(
            DEADLINE,
            "the new worker accepting",
            || matches!(syscall(w1), Sys::In(n) if accept.contains(&n)),
        );
        nix::sys::signal::kill(Pid::from_raw(w1), Signal::SIGKILL).expect("kill(new worker)");
        testkit::wait_until(DEADLINE, "the new worker dead", || state(w1) == Some('Z'));
        nix::sys::signal::kill(m.pid(), Signal::SIGCONT).expect("cont(master)");
        cont.0.clear();
        let line = m.stderr.wait_line(DEADLINE, |l| {
            l.contains(&format!(" pid={w1} "))
                && (l.contains("worker exited; respawned") || l.contains("died while starting"))
        });
        assert!(
            line.contains("worker exited; respawned"),
            "a worker that had reported ready was treated as a failed start: {line}"
        );
        rounds += 1;
    }
    assert_eq!(rounds, 3, "could not catch a new worker before its exec");
}
