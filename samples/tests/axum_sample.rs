//! `sample-axum`: its routes, and five SIGHUP reloads of `-w 4` under 8 keep-alive and 2
//! fresh-connection clients without one failed request (the client reconnects after a
//! `Connection: close`, never retries a failure).

use std::time::Duration;

use testkit::load::reloads_under_load;
use testkit::{DEADLINE, Master, Signal, http_get, listening_addr, wait_for, zombies_of};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn start(workers: &str) -> Master {
    Master::start_program(
        env!("CARGO_BIN_EXE_sample-axum"),
        &["-p", "0", "-w", workers],
    )
}

/// `SIGTERM`: every worker drains, the master exits 0 and leaves no zombie.
fn stop(mut m: Master) {
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(zombies_of(m.pid().as_raw()).is_empty());
    assert!(!m.stderr.all().join("\n").contains("panicked"));
}

#[test]
fn sample_axum_answers_hello_its_worker_id_and_a_stream() {
    let m = start("2");
    let addr = listening_addr(&m.stderr);
    let workers = m.wait_workers(2, "id");
    let get = |path: &str| {
        wait_for(DEADLINE, &format!("GET {path}"), || {
            http_get(addr, path, IO_TIMEOUT).ok()
        })
    };
    assert_eq!(get("/"), (200, "hello".into()));
    let (status, id) = get("/id");
    assert_eq!(status, 200);
    assert!(workers.contains_key(id.trim()), "{id:?} among {workers:?}");
    // Chunked: the chunk sizes frame the three chunks, in order.
    let (status, body) = get("/stream");
    assert_eq!(status, 200);
    let at = |c: &str| body.find(c).unwrap_or_else(|| panic!("{c:?} in {body:?}"));
    assert!(at("chunk 0") < at("chunk 1") && at("chunk 1") < at("chunk 2"));
    assert_eq!(get("/nothing-here").0, 404);
    stop(m);
}

#[test]
fn sample_axum_loses_no_request_across_five_reloads() {
    let m = start("4");
    let addr = listening_addr(&m.stderr);
    let pids = m.wait_workers(4, "id");
    let report = reloads_under_load(&m, addr, pids, 5, 1000);
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.non_200, 0, "non-200 responses: {:?}", report.errors);
    assert!(report.ok > 5000, "the load really ran: {report:?}");
    assert!(report.closes > 0, "keep-alive clients were handed over");
    stop(m);
}
