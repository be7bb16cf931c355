//! `--drain-timeout` and `--drain-grace` with values too large to be a duration the program can
//! add to a clock are bad input: `sample-warp-like` ends at once with a clear error naming the
//! flag and a non-zero status (not a panic, and not a master that starts and panics later in
//! a worker's drain), and leaves nothing running.

use std::time::Duration;

use testkit::probe::free_port;
use testkit::{Master, children_of};

const BIN: &str = env!("CARGO_BIN_EXE_sample-warp-like");
/// How long bad input may take to be rejected: it is parsed before anything starts.
const REJECTED_WITHIN: Duration = Duration::from_secs(15);

fn rejected(flag: &str, value: &str) {
    let port = free_port().to_string();
    let mut m = Master::start_program(BIN, &["-p", &port, "-w", "1", flag, value]);
    let master = m.pid().as_raw();
    let end = std::time::Instant::now() + REJECTED_WITHIN;
    while m.running() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    if m.running() {
        let kids = children_of(master);
        panic!(
            "{flag} {value}: accepted; the master is still running after {REJECTED_WITHIN:?} \
             with children {kids:?}; stderr:\n{}",
            m.stderr.all().join("\n")
        );
    }
    let code = m.wait_exit(Duration::from_secs(5));
    m.wait_output_closed(Duration::from_secs(10));
    let err = m.stderr.all().join("\n");
    assert!(
        !err.contains("panicked") && code != 101,
        "{flag} {value}: a panic (status {code}):\n{err}"
    );
    assert_ne!(code, 0, "{flag} {value}: status 0:\n{err}");
    assert!(
        err.contains(flag),
        "{flag} {value}: the error does not name the flag:\n{err}"
    );
    assert!(
        !err.contains("listening on"),
        "{flag} {value}: it started serving:\n{err}"
    );
}

#[test]
fn a_huge_drain_timeout_is_a_usage_error() {
    rejected("--drain-timeout", &u64::MAX.to_string());
    rejected("--drain-timeout", &i64::MAX.to_string());
}

#[test]
fn a_huge_drain_grace_is_a_usage_error() {
    rejected("--drain-grace", &u64::MAX.to_string());
    rejected("--drain-grace", &i64::MAX.to_string());
}
