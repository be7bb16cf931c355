//! `sample-simple` prints the Haskell sample's transcript: the master's line, one greeting at
//! start and one more per `SIGHUP`, never a relaunch of its own, and exits 0 on `SIGTERM`.

use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{DEADLINE, Master, Signal, children_of, wait_until};

const GREETING: &str = "Hello. I'm a worker.";

#[test]
fn greets_once_at_start_and_once_per_hup() {
    let mut m = Master::start(Command::new(env!("CARGO_BIN_EXE_sample-simple")));
    let master_line = format!("Please send SIGHUP to {} to relaunch a worker", m.pid());
    let is_greeting = |l: &str| l == GREETING;

    m.stdout.wait_count(DEADLINE, 1, &is_greeting);
    assert_eq!(
        m.stdout.all(),
        vec![master_line.clone(), GREETING.to_string()]
    );

    for n in 2..=3 {
        m.signal(Signal::SIGHUP);
        m.stdout.wait_count(DEADLINE, n, &is_greeting);
    }

    // Every greeter exits at once; default settings relaunch nothing. Once the master has no
    // child left (all three reaped), watch a little while that nothing new appears.
    let master = m.pid().as_raw();
    wait_until(DEADLINE, "the three workers to be reaped", || {
        children_of(master).is_empty()
    });
    let watch_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < watch_until {
        assert!(
            children_of(master).is_empty(),
            "a worker was started without a SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    m.signal(Signal::SIGTERM);
    assert_eq!(
        m.wait_exit(DEADLINE),
        0,
        "stderr:\n{}",
        m.stderr.all().join("\n")
    );
    wait_until(DEADLINE, "the master's stdout to close", || {
        m.stdout.closed()
    });
    assert_eq!(
        m.stdout.all(),
        vec![
            master_line,
            GREETING.to_string(),
            GREETING.to_string(),
            GREETING.to_string()
        ],
        "exactly the master's line and three greetings"
    );
}
