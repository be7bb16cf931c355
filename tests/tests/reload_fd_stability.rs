//! Ten reloads leave the master's fd table as it was: every pipe and socket a spawn opens in
//! the master is closed again, and the listener and readiness socket are the same objects.

use testkit::fx::wait_generation;
use testkit::probe::idle_fds;
use testkit::{DEADLINE, Signal, fx, wait_until, zombies_of};

const N: usize = 3;
const RELOADS: u64 = 10;

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
