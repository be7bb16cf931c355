//! What haskell-prefork's own test suite checks, against real processes and signals: on_start
//! runs; SIGHUP calls update_server; SIGTERM and SIGINT end with on_finish; SIGQUIT calls
//! on_quit and the master keeps running; with relaunch settings a HUP yields exactly the desired
//! number of new workers, and a TERMed worker yields exactly one relaunch of the same id.

use std::time::Duration;

use testkit::fx::{hook, is_start_line, starts_total};
use testkit::{DEADLINE, Signal, fx, listening_addr, wait_until};

#[test]
fn on_start_runs_and_hup_calls_update_server() {
    let m = fx!(&[
        "--default-settings",
        "--hooks",
        "--workers",
        "1",
        "--mode",
        "sleep",
    ]);
    m.stdout.wait_line(DEADLINE, hook("on_start"));
    m.stdout.wait_line(DEADLINE, hook("update_server"));
    m.wait_workers(1, "id");
    m.signal(Signal::SIGHUP);
    m.stdout.wait_count(DEADLINE, 2, &hook("update_server"));
    // default settings do not replace: update_server forked one more worker beside the first.
    wait_until(DEADLINE, "two sleeping workers", || m.workers().len() == 2);
}

/// Stops a master with hooks by `sig`: it exits 0, and its hook `called` runs before
/// `on_finish`.
fn ends_with_on_finish(sig: Signal, called: &str) {
    let mut m = fx!(&["--hooks", "--workers", "2"]);
    let _ = listening_addr(&m.stdout);
    m.wait_workers(2, "id");
    m.signal(sig);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    let out = m.stdout.all();
    let c = out
        .iter()
        .position(|l| *l == format!("hook {called}"))
        .expect(called);
    let f = out
        .iter()
        .position(|l| l == "hook on_finish")
        .expect("on_finish");
    assert!(c < f, "{out:?}");
}

#[test]
fn sigterm_ends_with_on_finish() {
    ends_with_on_finish(Signal::SIGTERM, "on_terminate");
}

#[test]
fn sigint_ends_with_on_finish() {
    ends_with_on_finish(Signal::SIGINT, "on_interrupt");
}

#[test]
fn sigquit_calls_on_quit_and_the_master_keeps_running() {
    let mut m = fx!(&["--hooks", "--workers", "2"]);
    let _ = listening_addr(&m.stdout);
    let before = m.wait_workers(2, "id");
    m.signal(Signal::SIGQUIT);
    m.stdout.wait_line(DEADLINE, hook("on_quit"));
    assert!(m.running(), "the master survives SIGQUIT");
    assert_eq!(m.workers_by_arg("id"), before, "workers untouched");
    assert_eq!(m.stdout.count(hook("on_finish")), 0);
}

#[test]
fn relaunch_hup_yields_exactly_the_desired_number_of_new_workers() {
    let m = fx!(&["--workers", "3"]);
    let _ = listening_addr(&m.stdout);
    let before = m.wait_workers(3, "id");
    m.stdout.wait_count(DEADLINE, 3, &|l| {
        l.contains(" started pid ") && l.contains(" gen 0 ")
    });
    m.signal(Signal::SIGHUP);
    m.stdout.wait_count(DEADLINE, 3, &|l| {
        l.contains(" started pid ") && l.contains(" gen 1 ")
    });
    let after = m.wait_replaced(&before);
    assert_eq!(after.keys().collect::<Vec<_>>(), vec!["0", "1", "2"]);
    // Exactly three new workers were started by the HUP, no more.
    assert_eq!(starts_total(&m), 6, "{:?}", m.stdout.all());
}

#[test]
fn relaunch_a_termed_worker_yields_exactly_one_relaunch_of_the_same_id() {
    let m = fx!(&["--workers", "3"]);
    let _ = listening_addr(&m.stdout);
    let before = m.wait_workers(3, "id");
    m.stdout.wait_count(DEADLINE, 3, &is_start_line);
    nix::sys::signal::kill(testkit::Pid::from_raw(before["1"]), Signal::SIGTERM).unwrap();
    m.stdout.wait_count(DEADLINE, 4, &is_start_line);
    let after = m.wait_workers(3, "id");
    assert_ne!(after["1"], before["1"]);
    assert_eq!(after["0"], before["0"]);
    assert_eq!(after["2"], before["2"]);
    let relaunched = m.stdout.all();
    let ids: Vec<&String> = relaunched.iter().filter(|l| is_start_line(l)).collect();
    assert!(ids[3].starts_with("worker 1 started"), "{ids:?}");
    // And nothing more happens: still exactly four starts a moment later.
    let t = std::time::Instant::now();
    wait_until(DEADLINE, "a quiet second", || {
        t.elapsed() > Duration::from_secs(1)
    });
    assert_eq!(starts_total(&m), 4);
}
