//! Ten reloads leave the master's fd table as it was: every pipe and socket a spawn opens in
//! the master is closed again, and the listener and readiness socket are the same objects.

use std::collections::BTreeMap;

use testkit::fx::wait_generation;
use testkit::{DEADLINE, Master, Signal, fds, fx, state, wait_for, wait_until, zombies_of};

const N: usize = 3;
const RELOADS: u64 = 10;

/// The master's fd table, read while it is idle: asleep in `poll`, not half-way through a
/// spawn (whose pipes are open only for its duration).
fn idle_fds(m: &Master) -> BTreeMap<i32, String> {
    let pid = m.pid().as_raw();
    wait_for(DEADLINE, "the master idle in poll", || {
        let sys = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        let nr: i64 = sys.split_whitespace().next()?.parse().ok()?;
        let polling = nr == nix::libc::SYS_ppoll || {
            #[cfg(target_arch = "x86_64")]
            {
                nr == nix::libc::SYS_poll
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        if !polling || state(pid) != Some('S') {
            return None;
        }
        let t = fds(pid);
        // Still asleep in the same call: the table was read while it was idle.
        let again = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        (again == sys && state(pid) == Some('S')).then_some(t)
    })
}

#[test]
fn ten_reloads_leave_the_master_fd_table_unchanged() {
    let m = fx!(&["--workers", "3", "--mode", "serve"]);
    let master = m.pid().as_raw();
    let mut pids = wait_generation(&m, 0, N);
    let before = idle_fds(&m);
    assert!(!before.is_empty(), "the master's fds are readable");
    for g in 1..=RELOADS {
        m.signal(Signal::SIGHUP);
        let new = wait_generation(&m, g, N);
        for (id, pid) in &new {
            assert_ne!(pids.get(id), Some(pid), "reload {g}: id {id} has a new pid");
        }
        pids = new;
    }
    wait_until(DEADLINE, "no zombie children of the master", || {
        zombies_of(master).is_empty()
    });
    let after = idle_fds(&m);
    eprintln!(
        "master fds before: {} {before:?}\nmaster fds after {RELOADS} reloads: {}",
        before.len(),
        after.len()
    );
    assert_eq!(
        after.len(),
        before.len(),
        "fd count changed: before {before:#?}, after {after:#?}"
    );
    assert_eq!(after, before, "the fd table changed");
    assert_eq!(m.workers_by_arg("id"), pids, "the last generation runs");
    assert!(zombies_of(master).is_empty(), "no zombies");
}
