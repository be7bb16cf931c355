//! A worker that reports ready and dies at once is a failed start in both readiness modes: it
//! is retried with the crash-loop backoff, never in a tight loop. Dying within the startup
//! window after becoming ready does not count as having served.
//!
//! The fixture's `ready-exit` worker prints its start line (`worker 0 started … at <unix ms>`),
//! calls `ready()` and exits 3. With a backoff of 100 ms doubling up to 800 ms, the starts in a
//! 3 s window are at most 0, 100, 300, 700, 1500, 2300 (plus overheads): six, where a loop
//! without backoff makes hundreds.

use testkit::{DEADLINE, Master, fx};

/// The window watched, from the first start.
const WINDOW_MS: u64 = 3000;
/// Starts allowed in the window: the six of the schedule, plus slack for a late first retry.
const MAX_STARTS: usize = 8;

fn start_ms(l: &str) -> Option<u64> {
    l.starts_with("worker 0 started pid ")
        .then(|| l.rsplit(' ').next()?.parse().ok())
        .flatten()
}

/// Runs one `ready-exit` worker with `readiness` and returns the start times (unix ms) in the
/// first [`WINDOW_MS`] after the first start.
fn starts_in_window(readiness: &str) -> Vec<u64> {
    let m: Master = fx!(&[
        "--workers",
        "1",
        "--mode",
        "ready-exit",
        "--readiness",
        readiness,
        "--backoff-ms",
        "100,800",
    ]);
    let first = m.stdout.wait_line(DEADLINE, |l| start_ms(l).is_some());
    let t0 = start_ms(&first).unwrap();
    // The first start after the window: every line before it has been read by then.
    m.stdout.wait_line(DEADLINE, |l| {
        start_ms(l).is_some_and(|t| t > t0 + WINDOW_MS)
    });
    let at: Vec<u64> = m
        .stdout
        .all()
        .iter()
        .filter_map(|l| start_ms(l))
        .filter(|&t| t <= t0 + WINDOW_MS)
        .collect();
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    eprintln!(
        "{readiness} readiness: {} starts in {WINDOW_MS} ms; first gaps (ms): {:?}",
        at.len(),
        &gaps[..gaps.len().min(20)]
    );
    at
}

fn assert_backs_off(readiness: &str) {
    let at = starts_in_window(readiness);
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    assert!(
        at.len() <= MAX_STARTS,
        "{readiness} readiness: a worker that is ready and dies at once was started {} times in \
         {WINDOW_MS} ms (at most {MAX_STARTS} with a 100..800 ms backoff): no backoff; first \
         gaps {:?}",
        at.len(),
        &gaps[..gaps.len().min(20)]
    );
    assert!(at.len() >= 3, "the retries stalled: {gaps:?}");
    // The delays grow: the third gap is the 400 ms step (a floor, with slack for the clocks).
    assert!(
        gaps.get(2).is_none_or(|&g| g + 5 >= 400),
        "no exponential backoff: {gaps:?}"
    );
}

#[test]
fn explicit_readiness_ready_then_exit_backs_off() {
    assert_backs_off("explicit");
}

#[test]
fn implicit_readiness_ready_then_exit_backs_off() {
    assert_backs_off("implicit");
}
