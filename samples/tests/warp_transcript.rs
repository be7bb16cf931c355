//! The README's `sample-warp-like -p PORT -w 5` session, as tests: five workers `id=0` … `id=4`
//! with `+RTS -N5 -RTS` in argv, `GET /` answered, a killed worker relaunched under its id, a
//! `SIGHUP` that replaces all five without failing a single request, and a clean `SIGTERM`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::{
    DEADLINE, Master, Pid, Signal, alive, cmdline, http_get, listening_addr, wait_for, wait_until,
};

const IDS: [&str; 5] = ["0", "1", "2", "3", "4"];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts `sample-warp-like -p 0 -w 5`, waits for its five workers and a first answer.
fn start() -> (Master, SocketAddr, BTreeMap<String, i32>) {
    let m = Master::start_program(
        env!("CARGO_BIN_EXE_sample-warp-like"),
        &["-p", "0", "-w", "5"],
    );
    let addr = listening_addr(&m.stderr);
    assert!(addr.ip().is_loopback(), "{addr}");
    let workers = m.wait_workers(5, "id");
    assert_eq!(workers.keys().map(String::as_str).collect::<Vec<_>>(), IDS);
    let answer = wait_for(DEADLINE, "GET / to be answered", || {
        http_get(addr, "/", REQUEST_TIMEOUT).ok()
    });
    assert_eq!(answer, (200, "hello".to_string()));
    (m, addr, workers)
}

/// Waits until exactly five live workers carry ids 0–4 and `accept` holds for the map.
fn wait_five(
    m: &Master,
    what: &str,
    accept: impl Fn(&BTreeMap<String, i32>) -> bool,
) -> BTreeMap<String, i32> {
    wait_for(DEADLINE, what, || {
        let w = m.workers_by_arg("id");
        (w.len() == 5 && m.workers().len() == 5 && accept(&w)).then_some(w)
    })
}

/// `SIGTERM` to the master: exit 0, no worker left, nothing listening any more.
fn stop(mut m: Master, addr: SocketAddr, workers: &BTreeMap<String, i32>) {
    m.signal(Signal::SIGTERM);
    let code = m.wait_exit(DEADLINE);
    let stderr = m.stderr.all().join("\n");
    assert_eq!(code, 0, "stderr:\n{stderr}");
    for (id, &pid) in workers {
        wait_until(
            DEADLINE,
            &format!("worker id={id} (pid {pid}) to be gone"),
            || !alive(pid),
        );
    }
    let refused = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{addr} should refuse connections after the master exited: {refused:?}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

#[test]
fn five_workers_serve_and_a_killed_one_comes_back() {
    let (m, addr, before) = start();
    for (id, &pid) in &before {
        let argv = cmdline(pid).unwrap_or_default();
        assert!(
            argv.windows(3).any(|w| w == ["+RTS", "-N5", "-RTS"]),
            "worker id={id}: argv {argv:?}"
        );
        assert!(argv.iter().any(|a| *a == format!("id={id}")), "{argv:?}");
    }
    assert_eq!(
        http_get(addr, "/", REQUEST_TIMEOUT).unwrap(),
        (200, "hello".into())
    );
    assert_eq!(http_get(addr, "/nope", REQUEST_TIMEOUT).unwrap().0, 404);

    let victim = before["2"];
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGTERM).unwrap();
    let after = wait_five(&m, "id=2 to come back with a new pid", |w| w["2"] != victim);
    for id in IDS.iter().filter(|&&id| id != "2") {
        assert_eq!(
            after[*id], before[*id],
            "worker id={id} should be untouched"
        );
    }
    assert_eq!(
        http_get(addr, "/", REQUEST_TIMEOUT).unwrap(),
        (200, "hello".into())
    );
    stop(m, addr, &after);
}

/// What the request loop saw.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
}

#[test]
fn hup_replaces_every_worker_without_failing_a_request() {
    let (m, addr, before) = start();

    // Fresh connections in a loop, bounded in count and time, through the whole reload.
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (done, sent) = (Arc::clone(&done), Arc::clone(&sent));
        std::thread::spawn(move || {
            let mut t = Tally::default();
            let end = Instant::now() + Duration::from_secs(20);
            while !done.load(Ordering::Acquire) && sent.load(Ordering::Acquire) < 2000 {
                if Instant::now() > end {
                    break;
                }
                match http_get(addr, "/", REQUEST_TIMEOUT) {
                    Ok((200, body)) if body == "hello" => t.ok += 1,
                    other => t.failures.push(format!("{other:?}")),
                }
                sent.fetch_add(1, Ordering::AcqRel);
            }
            t
        })
    };
    wait_until(DEADLINE, "the request loop to get going", || {
        sent.load(Ordering::Acquire) >= 20 || loader.is_finished()
    });

    m.signal(Signal::SIGHUP);
    let old: Vec<i32> = before.values().copied().collect();
    let after = wait_five(&m, "all five workers to be replaced", |w| {
        w.values().all(|p| !old.contains(p))
    });
    let at_replacement = sent.load(Ordering::Acquire);
    // Keep the loop running a little past the end of the reload, while the old workers drain.
    wait_until(DEADLINE, "requests after the reload", || {
        sent.load(Ordering::Acquire) >= at_replacement + 50 || loader.is_finished()
    });
    done.store(true, Ordering::Release);
    let tally = loader.join().unwrap();
    eprintln!(
        "reload: {} requests ok, {} failed; all five replaced after {at_replacement}",
        tally.ok,
        tally.failures.len()
    );

    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed during the reload: {:?}",
        tally.failures.len(),
        tally.ok + tally.failures.len(),
        &tally.failures[..tally.failures.len().min(10)]
    );
    assert!(
        at_replacement < 2000,
        "the request loop ended (2000 requests) before the reload did; nothing was tested"
    );
    assert!(tally.ok >= at_replacement, "{tally:?}");
    for pid in old {
        wait_until(DEADLINE, &format!("old worker {pid} to be gone"), || {
            !alive(pid)
        });
    }
    stop(m, addr, &after);
}
