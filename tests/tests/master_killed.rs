//! Workers die with their master: `SIGKILL` the master (no chance to clean up) and every
//! worker is gone within 2 s, even workers that ignore `SIGTERM` (the death signal is
//! `SIGKILL`).

use std::time::{Duration, Instant};

use testkit::{DEADLINE, Signal, alive, fx, signal_masks, wait_until};

fn workers_die_with_the_master(mode: &str) {
    let mut m = fx!(&["--workers", "4", "--mode", mode]);
    let pids: Vec<i32> = m.wait_workers(4, "id").into_values().collect();
    if mode == "ignore-term" {
        let term = 1u64 << (nix::libc::SIGTERM - 1);
        for &p in &pids {
            wait_until(DEADLINE, &format!("worker {p} ignores SIGTERM"), || {
                signal_masks(p).is_some_and(|(_, ign, _)| ign & term != 0)
            });
        }
    }
    let t = Instant::now();
    m.signal(Signal::SIGKILL);
    // Bounded by 2 s plus polling slack; the assertion below is on the measured time.
    let mut gone_after = None;
    while t.elapsed() < Duration::from_secs(5) {
        if pids.iter().all(|&p| !alive(p)) {
            gone_after = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert_eq!(m.wait_exit(DEADLINE), 128 + 9, "the master died of SIGKILL");
    let took = gone_after.unwrap_or_else(|| panic!("workers {left:?} outlived their master"));
    eprintln!("mode {mode}: all workers gone {took:?} after the master's SIGKILL");
    assert!(
        took < Duration::from_secs(2),
        "workers outlived their master by {took:?}"
    );
}

#[test]
fn serving_workers_die_with_a_killed_master() {
    workers_die_with_the_master("serve");
}

#[test]
fn workers_ignoring_term_die_with_a_killed_master() {
    workers_die_with_the_master("ignore-term");
}
