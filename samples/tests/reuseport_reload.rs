//! Reuseport mode (`--reuseport`: one socket per worker id): five SIGHUP reloads under a load
//! of keep-alive connections plus fresh connections lose not one request: an id's old and new
//! worker accept from the same socket.

use std::time::Duration;

use testkit::load::{Load, LoadSpec};
use testkit::{DEADLINE, Master, Signal, listening_addr, wait_for, zombies_of};

#[test]
fn five_reloads_under_load_in_reuseport_mode_lose_nothing() {
    let mut m = Master::start_program(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &["-p", "0", "-w", "4", "--threads", "1", "--reuseport"],
    );
    let addr = listening_addr(&m.stderr);
    let mut pids = m.wait_workers(4, "id");
    let load = Load::start(
        addr,
        LoadSpec {
            keepalive: 8,
            fresh: 2,
            max_requests_per_thread: 1_000_000,
            max_time: Duration::from_secs(120),
            io_timeout: Duration::from_secs(15),
        },
    );
    wait_for(DEADLINE, "the load to get going", || {
        (load.progress() > 200).then_some(())
    });
    for round in 0..5 {
        let before_requests = load.progress();
        m.signal(Signal::SIGHUP);
        pids = m.wait_replaced(&pids);
        wait_for(DEADLINE, "requests after the reload", || {
            (load.progress() > before_requests + 1000).then_some(())
        });
        eprintln!(
            "reload {round}: workers {pids:?}, {} requests so far",
            load.progress()
        );
    }
    let report = load.finish();
    eprintln!("{report:?}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    assert!(report.ok > 5000, "the load really ran: {report:?}");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
}
