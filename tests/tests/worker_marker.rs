//! Only the exact marker the master sets makes a program a worker: `PREFORK_WORKER` left in the
//! environment with another value (empty, `0`, `false`, `no`: a user's shell, a container's
//! env file) is not the marker, and the program runs as a master. Its workers still do not see
//! the variable.

use std::process::Command;

use testkit::probe::wait_alive;
use testkit::{DEADLINE, Master, Signal};

/// Values that are not the master's marker.
const NOT_THE_MARKER: [&str; 4] = ["", "0", "false", "no"];

#[test]
fn a_stray_prefork_worker_variable_does_not_make_a_worker() {
    for value in NOT_THE_MARKER {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
        cmd.args(["--workers", "1", "--mode", "serve"])
            .env("PREFORK_WORKER", value);
        let mut m = Master::start(cmd);
        wait_alive(
            &mut m,
            DEADLINE,
            &format!("PREFORK_WORKER={value:?}: the program to run as a master and start worker 0"),
            |m| (m.stdout.count(|l| l.starts_with("worker 0 started pid ")) >= 1).then_some(()),
        );
        m.stdout
            .wait_line(DEADLINE, |l| l.starts_with("listening on "));
        m.stdout
            .wait_line(DEADLINE, |l| l.starts_with("worker env PREFORK_WORKER="));
        assert!(
            m.stdout
                .all()
                .contains(&"worker env PREFORK_WORKER=unset".to_string()),
            "PREFORK_WORKER={value:?}: the worker saw the variable: {:#?}",
            m.stdout.all()
        );
        m.signal(Signal::SIGTERM);
        assert_eq!(m.wait_exit(DEADLINE), 0, "PREFORK_WORKER={value:?}");
    }
}
