//! The lame duck (`--shutdown-delay 2`): after `SIGTERM` the workers keep serving new
//! connections for 2 s (a load balancer or Kubernetes is still sending some), then the master
//! drains them and exits 0.

use std::time::{Duration, Instant};

use testkit::{DEADLINE, Master, Signal, http_get, listening_addr, wait_for};

#[test]
fn new_connections_are_served_for_the_shutdown_delay_then_the_master_drains_and_exits_0() {
    let mut m = Master::start_program(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &[
            "-p",
            "0",
            "-w",
            "2",
            "--threads",
            "1",
            "--shutdown-delay",
            "2",
        ],
    );
    let addr = listening_addr(&m.stderr);
    m.wait_workers(2, "id");
    wait_for(DEADLINE, "the workers to serve", || {
        http_get(addr, "/", Duration::from_secs(5)).ok()
    });

    let term = Instant::now();
    m.signal(Signal::SIGTERM);
    // Fresh connections, one every 50 ms, for 1.8 s: every one is served.
    let mut served = 0;
    while term.elapsed() < Duration::from_millis(1800) {
        let t = term.elapsed();
        match http_get(addr, "/", Duration::from_secs(5)) {
            Ok((200, body)) if body == "hello" => served += 1,
            other => panic!("a new connection {t:?} after SIGTERM was not served: {other:?}"),
        }
        wait_for(DEADLINE, "50 ms", || {
            (term.elapsed() >= t + Duration::from_millis(50)).then_some(())
        });
    }
    assert!(served >= 10, "served {served}");
    assert_eq!(m.wait_exit(DEADLINE), 0);
    let took = term.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the master exited {took:?} after SIGTERM, before the delay ended"
    );
    let log = m.stderr.all().join("\n");
    assert!(log.contains("serving on for the shutdown delay"), "{log}");
    // After the delay, the drain: the workers stopped and drained.
    assert!(log.contains("stopping"), "{log}");
    assert!(!log.contains("SIGKILL"), "{log}");
}
