//! The master under a fake systemd: a notification socket with `SO_PASSCRED` (so every message
//! carries its sender's pid, as `NotifyAccess=main` needs) sees `READY=1` only once every worker
//! is ready, `RELOADING=1` with a `MONOTONIC_USEC` then `READY=1` on a reload (a broken one
//! included), `STOPPING=1` on `TERM`, watchdog pings at half of `WATCHDOG_USEC` that stop while
//! the master is stopped, and nothing of systemd's in a worker's environment.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::notify::{Notification, NotifySocket, monotonic_usec};
use testkit::{DEADLINE, Master, Signal, TempFile, wait_until};

/// `fx-master` with `args`, told to notify `ns`, plus `env`.
fn start(ns: &NotifySocket, args: &[&str], env: &[(&str, &str)]) -> Master {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.args(args).env("NOTIFY_SOCKET", ns.address());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Master::start(cmd)
}

/// id → when (wall ms) each worker of generation `g` said it was ready, from the
/// `worker <id> ready gen <g> at <ms>` lines; waits until `n` of them are there.
fn ready_at(m: &Master, g: u64, n: usize) -> BTreeMap<u32, u64> {
    let tag = format!(" ready gen {g} at ");
    let lines = m.stdout.wait_count(DEADLINE, n, &|l: &str| {
        l.starts_with("worker ") && l.contains(&tag)
    });
    lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].parse().unwrap(), f[6].parse().unwrap())
        })
        .collect()
}

fn is_ready(n: &Notification) -> bool {
    n.has("READY", "1")
}

/// Every message so far came from `pid`.
fn all_from(ns: &NotifySocket, pid: i32) {
    ns.with_all(|all| {
        for n in all.iter() {
            assert_eq!(n.pid, pid, "a message not from the master: {:?}", n.text);
        }
    });
}

#[test]
fn ready_comes_from_the_master_once_every_worker_is_ready() {
    let ns = NotifySocket::bind_path();
    // Worker 2 becomes ready 800 ms after worker 0.
    let mut m = start(&ns, &["--workers", "3", "--ready-delay-ms", "400"], &[]);
    let i = ns.wait(DEADLINE, "READY=1", is_ready);
    let workers = ready_at(&m, 0, 3);
    ns.with_all(|all| {
        let ready = &all[i];
        for (id, at) in &workers {
            assert!(
                *at <= ready.at_ms,
                "READY=1 at {} came before worker {id} was ready at {at}",
                ready.at_ms
            );
        }
        assert_eq!(ready.get("STATUS"), Some("3/3 workers ready, generation 0"));
        assert!(
            all[..i].iter().all(|n| !is_ready(n)),
            "one READY=1 only: {:?}",
            all.iter().map(|n| &n.text).collect::<Vec<_>>()
        );
    });
    all_from(&ns, m.pid().as_raw());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    all_from(&ns, m.pid().as_raw());
}

#[test]
fn a_reload_says_reloading_with_its_monotonic_time_then_ready_once_all_workers_are_new() {
    // The abstract namespace this time (`NOTIFY_SOCKET=@name`).
    let ns = NotifySocket::bind_abstract();
    let mut m = start(&ns, &["--workers", "3", "--ready-delay-ms", "200"], &[]);
    let first = ns.wait(DEADLINE, "READY=1", is_ready);
    let before = monotonic_usec();
    m.signal(Signal::SIGHUP);
    let r = ns.wait_from(first + 1, DEADLINE, "RELOADING=1", |n| {
        n.has("RELOADING", "1")
    });
    let done = ns.wait_from(r + 1, DEADLINE, "READY=1 after the reload", is_ready);
    let new = ready_at(&m, 1, 3);
    eprintln!("{:#?}", ns.texts());
    ns.with_all(|all| {
        let reloading = &all[r];
        let mono: u64 = reloading
            .get("MONOTONIC_USEC")
            .expect("MONOTONIC_USEC in the RELOADING=1 datagram")
            .parse()
            .unwrap();
        assert!(
            before <= mono && mono <= reloading.monotonic_usec,
            "MONOTONIC_USEC {mono} not between {before} and {}",
            reloading.monotonic_usec
        );
        let ready = &all[done];
        for (id, at) in &new {
            assert!(
                *at <= ready.at_ms,
                "READY=1 came before the new worker {id} was ready"
            );
        }
        assert_eq!(ready.get("STATUS"), Some("3/3 workers ready, generation 1"));
        assert!(all[r + 1..done].iter().all(|n| !is_ready(n)));
    });
    all_from(&ns, m.pid().as_raw());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn a_broken_deploy_still_ends_the_reload_with_ready_and_a_status_naming_the_failure() {
    let ns = NotifySocket::bind_path();
    let mode = TempFile::new("mode");
    mode.write("serve");
    let mode_path = mode.path().to_str().unwrap();
    let mut m = start(
        &ns,
        &[
            "--workers",
            "2",
            "--mode-file",
            mode_path,
            "--backoff-ms",
            "20,100",
        ],
        &[],
    );
    let first = ns.wait(DEADLINE, "READY=1", is_ready);
    let old = m.wait_workers(2, "id");
    // The new code crashes at start.
    mode.write("crash");
    m.signal(Signal::SIGHUP);
    let r = ns.wait_from(first + 1, DEADLINE, "RELOADING=1", |n| {
        n.has("RELOADING", "1")
    });
    let done = ns.wait_from(r + 1, DEADLINE, "READY=1 after the broken reload", is_ready);
    eprintln!("{:#?}", ns.texts());
    let status = ns.with_all(|all| all[done].get("STATUS").unwrap_or("").to_owned());
    assert!(
        status.starts_with("2/2 workers ready, 0 of generation 1; ")
            && status.contains("reload of generation 1 incomplete")
            && status.contains("id 0 failed")
            && status.contains("id 1 failed")
            && status.contains("exit status 3"),
        "{status}"
    );
    // It is true: the old workers still serve.
    for pid in old.values() {
        assert!(testkit::alive(*pid));
    }
    all_from(&ns, m.pid().as_raw());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn term_says_stopping_first() {
    let ns = NotifySocket::bind_path();
    let mut m = start(&ns, &["--workers", "2", "--extend-ms", "5000"], &[]);
    let ready = ns.wait(DEADLINE, "READY=1", is_ready);
    let seen = ns.len();
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    // --extend-ms: each worker that exited during the drain extended the stop timeout. The
    // last of them is sent after the last worker exited: everything before it has arrived.
    let extended = ns.wait_from(
        seen,
        DEADLINE,
        "EXTEND_TIMEOUT_USEC during the drain",
        |n| {
            n.has("EXTEND_TIMEOUT_USEC", "5000000")
                && n.get("STATUS") == Some("stopping: 0 workers left")
        },
    );
    ns.with_all(|all| {
        let after: Vec<&str> = all[seen..=extended]
            .iter()
            .map(|n| n.text.as_str())
            .collect();
        assert!(
            all[seen].has("STOPPING", "1"),
            "STOPPING=1 first: {after:?}"
        );
        assert!(
            all[seen..].iter().all(|n| !is_ready(n)),
            "no READY=1 after STOPPING=1: {after:?}"
        );
        assert!(ready < seen);
    });
    all_from(&ns, m.pid().as_raw());
}

#[test]
fn watchdog_pings_every_half_period_from_the_loop_and_not_while_the_master_is_stopped() {
    let ns = NotifySocket::bind_path();
    // 400 ms: a ping every 200 ms.
    let mut m = start(&ns, &["--workers", "1"], &[("WATCHDOG_USEC", "400000")]);
    let ready = ns.wait(DEADLINE, "READY=1", is_ready);
    ns.with_all(|all| assert!(all[ready].has("WATCHDOG", "1"), "a ping goes with READY=1"));
    let pinged = |n: &Notification| n.text == "WATCHDOG=1";
    let mut last = ready;
    for _ in 0..5 {
        last = ns.wait_from(last + 1, DEADLINE, "a watchdog ping", pinged);
    }
    let gaps: Vec<Duration> = ns.with_all(|all| {
        let pings: Vec<Instant> = all[ready..=last]
            .iter()
            .filter(|n| pinged(n) || n.has("WATCHDOG", "1"))
            .map(|n| n.at)
            .collect();
        pings.windows(2).map(|w| w[1] - w[0]).collect()
    });
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(
        mean >= Duration::from_millis(180) && mean <= Duration::from_millis(350),
        "pings every {mean:?} ({gaps:?}), not about 200 ms"
    );

    // A stopped master (its loop does not run) stops pinging: that is what the watchdog is for.
    m.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    wait_until(DEADLINE, "1 s with the master stopped (5 periods)", || {
        stopped.elapsed() >= Duration::from_secs(1)
    });
    let during = ns.with_all(|all| {
        all.iter()
            .filter(|n| pinged(n) && n.at > stopped + Duration::from_millis(50))
            .count()
    });
    let resumed = ns.len();
    m.signal(Signal::SIGCONT);
    assert_eq!(during, 0, "pings while the master was stopped");
    ns.wait_from(resumed, DEADLINE, "pings again once it runs", pinged);
    all_from(&ns, m.pid().as_raw());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn workers_inherit_nothing_of_systemd_and_a_watchdog_for_another_pid_is_not_pinged() {
    let ns = NotifySocket::bind_path();
    let mut m = start(
        &ns,
        &["--workers", "2"],
        &[
            ("LISTEN_FDS", "1"),
            ("LISTEN_PID", "1"),
            ("LISTEN_FDNAMES", "http"),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    ns.wait(DEADLINE, "READY=1", is_ready);
    for pid in m.wait_workers(2, "id").values() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let keys: Vec<String> = env
            .split(|b| *b == 0)
            .filter_map(|kv| kv.split(|b| *b == b'=').next())
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        for k in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ] {
            assert!(!keys.iter().any(|x| x == k), "worker {pid} inherited {k}");
        }
        assert!(
            keys.iter().any(|x| x == "FX_FROM_RUNTIME_OPTIONS"),
            "{keys:?}"
        );
    }
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
    ns.with_all(|all| {
        assert!(
            all.iter().all(|n| n.get("WATCHDOG").is_none()),
            "WATCHDOG_PID names another process: no ping"
        );
    });
    all_from(&ns, m.pid().as_raw());
}

#[test]
fn a_slow_start_extends_the_start_timeout_as_workers_become_ready() {
    let ns = NotifySocket::bind_path();
    let mut m = start(
        &ns,
        &[
            "--workers",
            "3",
            "--ready-delay-ms",
            "300",
            "--extend-ms",
            "5000",
        ],
        &[],
    );
    let ready = ns.wait(DEADLINE, "READY=1", is_ready);
    ns.with_all(|all| {
        let extended = all[..ready]
            .iter()
            .filter(|n| n.has("EXTEND_TIMEOUT_USEC", "5000000"))
            .count();
        assert!(
            extended >= 1,
            "{:?}",
            all.iter().map(|n| &n.text).collect::<Vec<_>>()
        );
    });
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
