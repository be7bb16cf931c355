//! A worker that crashes at start is retried with exponential backoff, capped, never in a tight
//! loop; a `SIGHUP` resets the backoff and retries at once.
//!
//! The fixture's `crash` worker prints `worker 0 started pid … gen … at <unix ms>` and exits 3.
//! With implicit readiness and the default 1 s startup window, every such death is a failed
//! start. The gap between two starts is the crashed worker's life, plus the reap, plus the
//! backoff delay, plus the next exec: never less than the delay (timers must not fire early).

use testkit::{DEADLINE, Master, Signal, fx, now_ms, state, wait_until};

/// Clock slack: the gaps are measured with the workers' wall clock, the delays with the
/// master's monotonic clock.
const TOLERANCE_MS: u64 = 5;

/// Starts one `crash` worker with implicit readiness and `--backoff-ms <backoff>`.
fn crash_loop(backoff: &str) -> Master {
    fx!(&[
        "--workers",
        "1",
        "--mode",
        "crash",
        "--readiness",
        "implicit",
        "--backoff-ms",
        backoff,
    ])
}

/// (generation, unix ms) of every `worker 0 started …` line so far.
fn starts(m: &Master) -> Vec<(u64, u64)> {
    fx::starts(m)
        .into_iter()
        .filter(|s| s.id == 0)
        .map(|s| (s.generation, s.at_ms))
        .collect()
}

fn is_start(l: &str) -> bool {
    l.starts_with("worker 0 started pid ")
}

/// The delay before retry `n` (1-based): `initial × 2^(n-1)`, capped at `max`.
fn scheduled(initial: u64, max: u64, n: usize) -> u64 {
    (initial << (n - 1).min(20)).min(max)
}

#[test]
fn crash_loop_backs_off_exponentially_up_to_the_cap() {
    let m = crash_loop("100,800");
    let first = m.stdout.wait_line(DEADLINE, is_start);
    let t0: u64 = first.rsplit(' ').next().unwrap().parse().unwrap();
    // Watch 5 s of it (from the first start), bounded by the deadline.
    const WINDOW_MS: u64 = 5000;
    // The first start after the window: every line before it has been read by then.
    m.stdout.wait_line(DEADLINE, |l| {
        is_start(l)
            && l.rsplit(' ')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t > t0 + WINDOW_MS)
    });
    let all = starts(&m);
    let at: Vec<u64> = all
        .iter()
        .map(|&(_, t)| t)
        .filter(|&t| t <= t0 + WINDOW_MS)
        .collect();
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    eprintln!(
        "starts in {WINDOW_MS} ms: {}; gaps (ms): {gaps:?}",
        at.len()
    );
    assert!(all.iter().all(|&(g, _)| g == 0), "no reload happened");
    // Zero-overhead schedule 0, 100, 300, 700, 1500, 2300, 3100, 3900, 4700: at most 9 starts.
    assert!(
        at.len() <= 9,
        "more starts than the backoff allows (tight loop?): {gaps:?}"
    );
    assert!(at.len() >= 5, "the crash loop stalled: {gaps:?}");
    // Each gap lies in [scheduled, scheduled + slack): they double 100, 200, 400, then stay at
    // 800, and no retry came before its time.
    for (i, &g) in gaps.iter().enumerate() {
        let want = scheduled(100, 800, i + 1);
        assert!(
            g + TOLERANCE_MS >= want,
            "gap {} is {g} ms, scheduled {want} ms (a timer fired early): {gaps:?}",
            i + 1
        );
        // Generous for a loaded machine, yet it tells the cap (800) from the next doubling
        // (1600).
        assert!(
            g < want + 700,
            "gap {} is {g} ms, scheduled {want} ms: {gaps:?}",
            i + 1
        );
    }
}

#[test]
fn hup_resets_the_backoff_and_retries_at_once() {
    // Delays 300, 600, 1200, 2400, 4800 ms.
    let (initial, max) = (300u64, 4800u64);
    let m = crash_loop(&format!("{initial},{max}"));
    // Four failed starts: the next retry is scheduled 2400 ms after the fourth death.
    let fourth = m.stdout.wait_count(DEADLINE, 4, &is_start).remove(3);
    // Once it is reaped, the retry is pending (without this wait, a HUP that overtakes the
    // crash would start a replacement beside the dying worker instead).
    let pid: i32 = fourth.split_whitespace().nth(4).unwrap().parse().unwrap();
    wait_until(DEADLINE, "the fourth crashed worker reaped", || {
        state(pid).is_none()
    });
    let before = starts(&m);
    assert_eq!(before.len(), 4, "no fifth start before the 2400 ms delay");
    let hup_at = now_ms();
    m.signal(Signal::SIGHUP);
    m.stdout
        .wait_line(DEADLINE, |l| l.starts_with("update desired 1"));
    // The HUP's start (generation 1), and the one after it.
    m.stdout.wait_count(DEADLINE, 6, &is_start);
    let all = starts(&m);
    let (g5, t5) = all[4];
    let (g6, t6) = all[5];
    let prompt = t5.saturating_sub(hup_at);
    let next_gap = t6.saturating_sub(t5);
    eprintln!(
        "start gaps before the HUP: {:?}; HUP → start {prompt} ms; then {next_gap} ms",
        before
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (g5, g6),
        (1, 1),
        "the starts after the HUP run generation 1"
    );
    let pending = scheduled(initial, max, 4);
    assert!(
        prompt < pending / 2,
        "the HUP's start came {prompt} ms after it, the pending delay was {pending} ms"
    );
    // The failure count restarted: the next delay is the initial one again, not 4800 ms.
    assert!(
        next_gap + TOLERANCE_MS >= initial,
        "the retry after the reset came early: {next_gap} ms"
    );
    assert!(
        next_gap < 2 * initial,
        "the retry after the reset took {next_gap} ms: the backoff was not reset"
    );
}
