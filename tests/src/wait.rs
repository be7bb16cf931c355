//! Waiting for a condition with a deadline (never a bare sleep), and the wall clock the fixture
//! stamps its lines with.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A generous default deadline for conditions on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` every 10 ms until it returns `Some`, or panics after `deadline` naming `what`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// As [`wait_for`], for a condition.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for(deadline, what, || f().then_some(()))
}

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is before it): the
/// clock of the `at <unix ms>` in the fixture's start lines.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
