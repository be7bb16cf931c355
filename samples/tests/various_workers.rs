//! `sample-various-workers` runs two kinds of worker from one enum context; both greet, both
//! stay up until `SIGTERM`, and then everything exits cleanly.

use std::process::Command;

use testkit::{DEADLINE, Master, Signal, alive, cmdline, wait_until};

#[test]
fn both_kinds_run_until_term() {
    let mut m = Master::start(Command::new(env!("CARGO_BIN_EXE_sample-various-workers")));
    m.stdout
        .wait_line(DEADLINE, |l| l == "Greeter 0: Hello from a greeter worker.");
    m.stdout
        .wait_line(DEADLINE, |l| l == "Counter 1: 1 + 2 + ... + 10 = 55");

    let workers = m.wait_workers(2, "id");
    let argv = |id: &str| cmdline(workers[id]).unwrap_or_default();
    assert!(
        argv("0").iter().any(|a| a == "kind=greeter"),
        "{:?}",
        argv("0")
    );
    assert!(
        argv("1").iter().any(|a| a == "kind=counter"),
        "{:?}",
        argv("1")
    );
    assert!(argv("1").iter().any(|a| a == "upto=10"), "{:?}", argv("1"));

    m.signal(Signal::SIGTERM);
    assert_eq!(
        m.wait_exit(DEADLINE),
        0,
        "stderr:\n{}",
        m.stderr.all().join("\n")
    );
    for (id, pid) in &workers {
        wait_until(
            DEADLINE,
            &format!("worker id={id} (pid {pid}) to be gone"),
            || !alive(*pid),
        );
    }
    // Each greeted exactly once: nothing was relaunched on the way out.
    assert_eq!(m.stdout.count(|l| l.starts_with("Greeter 0:")), 1);
    assert_eq!(m.stdout.count(|l| l.starts_with("Counter 1:")), 1);
}
