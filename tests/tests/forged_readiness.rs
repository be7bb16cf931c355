//! Readiness is authenticated: the master takes the sender of a readiness message from the
//! kernel (`SCM_CREDENTIALS`), not from its text, so one worker cannot mark another ready.
//!
//! Worker id=0 (`sleep`) never reports ready; with explicit readiness and a 5 s readiness
//! deadline the master must kill it at the deadline and start it again. Worker id=1
//! (`forge-ready`) reports its own readiness, then sends `ready <pid>` for every sibling on the
//! shared readiness socket every 50 ms, printing `forged ready <pid>` the first time. A master
//! that believes it keeps id=0's first process forever.

use testkit::probe::wait_alive;
use testkit::{DEADLINE, alive, fx};

#[test]
fn a_worker_cannot_report_a_sibling_ready() {
    let mut m = fx!(&[
        "--workers",
        "2",
        "--mode",
        "sleep",
        "--mode-of",
        "1=forge-ready",
        "--readiness",
        "explicit",
        "--ready-ms",
        "5000",
        "--backoff-ms",
        "100,400",
    ]);
    let w = m.wait_workers(2, "id");
    let (victim, forger) = (w["0"], w["1"]);
    // The forgery happened, well before id=0's readiness deadline.
    m.stdout
        .wait_line(DEADLINE, |l| l == format!("forged ready {victim}"));

    // The deadline passes: id=0 is killed and started again.
    wait_alive(
        &mut m,
        DEADLINE,
        &format!(
            "worker id=0 (pid {victim}, never ready) to be killed at its readiness deadline; \
             it was marked ready by its sibling's forged message"
        ),
        |m| {
            (!alive(victim)
                && m.workers_by_arg("id")
                    .get("0")
                    .is_some_and(|&p| p != victim))
            .then_some(())
        },
    );
    // The forger's own readiness was genuine: it keeps running.
    assert!(alive(forger), "the honestly ready worker id=1 was kept");
    assert_eq!(m.workers_by_arg("id").get("1"), Some(&forger));
}
