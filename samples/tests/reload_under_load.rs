//! Five SIGHUP reloads under a load of keep-alive connections sending back to back plus fresh
//! connections: not one failed request, not one non-200 response; with the default stop
//! signal, with `--stop-signal USR1` (the workers drain on exactly the configured signal), and
//! in reuseport mode (`--reuseport`: one socket per worker id, which an id's old and new worker
//! share).
//!
//! The client may reconnect after a response that said `Connection: close` (that is how a
//! draining worker hands its keep-alive clients over); it never retries a failed request.

use testkit::load::reloads_under_load;
use testkit::{DEADLINE, Master, Signal, listening_addr, zombies_of};

#[test]
fn five_reloads_under_keepalive_and_fresh_load_lose_nothing() {
    five_reloads(&[]);
}

#[test]
fn five_reloads_with_usr1_as_the_stop_signal_lose_nothing() {
    let m = five_reloads(&["--stop-signal", "USR1"]);
    let log = m.stderr.all();
    assert!(
        !log.iter().any(|l| l.contains("instead of draining")),
        "a retired worker died from SIGUSR1 instead of draining: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("retired worker exited") && l.contains("exit status 0")),
        "retired workers drained and exited 0"
    );
}

#[test]
fn five_reloads_in_reuseport_mode_lose_nothing() {
    let m = five_reloads(&["--reuseport"]);
    let log = m.stderr.all();
    assert!(
        log.iter()
            .any(|l| l.contains("stop requested: draining") && l.contains("own_sockets=1")),
        "the workers drained their own sockets"
    );
}

fn five_reloads(extra: &[&str]) -> Master {
    let mut args = vec!["-p", "0", "-w", "4", "--threads", "1"];
    args.extend_from_slice(extra);
    let mut m = Master::start_program(env!("CARGO_BIN_EXE_sample-warp-like"), &args);
    let addr = listening_addr(&m.stderr);
    let pids = m.wait_workers(4, "id");
    let report = reloads_under_load(&m, addr, pids, 5, 1000);
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    assert!(report.ok > 5000, "the load really ran: {report:?}");
    assert!(
        report.closes > 0,
        "draining workers handed keep-alive clients over with Connection: close"
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
    m.wait_output_closed(DEADLINE);
    m
}
