//! `O_NONBLOCK` on a shared non-blocking listener is the master's to keep: it belongs to the
//! open file description that the master and every worker share, so one worker that clears it
//! makes every sibling's `accept` block (and a draining sibling unstoppable by `SIGTERM`). The
//! master sets it again before each spawn (and a worker's boot checks it).
//!
//! The fixture binds with `--nonblocking` (`InheritedListener::bind_tcp`, as the samples do).
//! Worker id=0 runs `clear-nonblock` once: it reports ready, clears `O_NONBLOCK` on the shared
//! listener and prints `worker 0 cleared O_NONBLOCK`. Then the test kills worker id=1; once its
//! replacement runs, the listener must be non-blocking again. The flag is read from
//! `/proc/<master>/fdinfo/<fd>` (the description's flags, whoever holds it).

use testkit::probe::{free_port, listener_nonblocking, wait_alive};
use testkit::{DEADLINE, Pid, Signal, TempFile, fx};

#[test]
fn the_master_sets_o_nonblock_again_before_it_spawns() {
    let once = TempFile::new("clear-nonblock-once");
    let port = free_port();
    let mut m = fx!(&[
        "--nonblocking",
        "--port",
        &port.to_string(),
        "--workers",
        "2",
        "--mode",
        "serve",
        "--mode-of",
        "0=clear-nonblock",
        "--once",
        once.path().to_str().unwrap(),
    ]);
    let master = m.pid().as_raw();
    let w = m.wait_workers(2, "id");
    m.stdout
        .wait_line(DEADLINE, |l| l == "worker 0 cleared O_NONBLOCK");
    // (The flag may already be back: any spawn since, of any id, restores it. What matters is
    // that it is set once a worker was spawned after the clearing, checked below.)

    // A spawn: id=1 is killed and started again.
    let victim = w["1"];
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let new = wait_alive(&mut m, DEADLINE, "worker id=1 respawned", |m| {
        m.workers_by_arg("id")
            .get("1")
            .copied()
            .filter(|&p| p != victim)
    });
    m.stdout.wait_line(DEADLINE, |l| {
        l.starts_with(&format!("worker 1 started pid {new} "))
    });
    assert_eq!(
        listener_nonblocking(master, port),
        Some(true),
        "the master spawned worker {new} on a listener that a worker had made blocking"
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
