//! `sample-warp-like --control PATH` steered by `prefork-ctl` (the program's own code,
//! [`prefork_ctl::run`], driven in-process): the status names every child, a `SIGKILL` shows in
//! the killed id's counters, `reload` answers once every worker is new and says `incomplete`
//! (exit 1) for a broken deploy, `scale` starts or drains only the ids that join or leave, and
//! `TTIN` ×3 then `HUP` keeps the three extra workers.

#[path = "support/ctl.rs"]
mod support_ctl;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use support_ctl::{by_state, ctl, status};
use testkit::{DEADLINE, Master, Pid, Signal, TempDir, alive, children_of, wait_for};

/// The worker entry of `id` that is not draining.
fn worker<'a>(s: &'a Value, id: &str) -> &'a Value {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id && w["state"] != "draining")
        .unwrap_or_else(|| panic!("no worker {id} in {s}"))
}

/// Starts `sample-warp-like -w N --control DIR/ctl.sock` (one thread per worker) at `bin`.
fn start(bin: &Path, dir: &TempDir, n: u32) -> (Master, std::path::PathBuf) {
    let sock = dir.path().join("ctl.sock");
    let m = Master::start_program(
        bin,
        &[
            "-p",
            "0",
            "-w",
            &n.to_string(),
            "--threads",
            "1",
            "--control",
            sock.to_str().unwrap(),
        ],
    );
    m.wait_workers(n as usize, "id");
    wait_for(DEADLINE, "every worker ready", || {
        (sock.exists() && by_state(&status(&sock), "ready").len() == n as usize).then_some(())
    });
    (m, sock)
}

fn warp() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sample-warp-like"))
}

#[test]
fn status_json_names_every_child_and_a_sigkill_shows_in_restarts_and_last_exit() {
    let dir = TempDir::new("ctl-status");
    let (mut m, sock) = start(warp(), &dir, 5);
    let s = status(&sock);
    let pids: BTreeSet<i32> = by_state(&s, "ready").into_values().collect();
    let children: BTreeSet<i32> = children_of(m.pid().as_raw()).into_iter().collect();
    assert_eq!(pids, children, "status pids = the master's children");
    assert_eq!(s["master"]["pid"], m.pid().as_raw());
    assert_eq!(s["master"]["state"], "running");
    assert_eq!(s["master"]["desired"], 5);
    assert_eq!(s["master"]["ready"], 5);
    assert_eq!(s["listeners"][0]["kind"], "tcp");
    assert_eq!(s["listeners"][0]["accept_queue"], 0);
    assert!(s["listeners"][0]["backlog"].as_u64().unwrap() > 0);
    assert_eq!(worker(&s, "2")["restarts"], 0);

    // The scoreboard's request counts, read when the status is taken.
    let addr = testkit::listening_addr(&m.stderr);
    for _ in 0..3 {
        let (code, _) = testkit::http_get(addr, "/", std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(code, 200);
    }
    // (A worker counts a request once it is done with it, a moment after the client has it.)
    wait_for(DEADLINE, "3 requests counted", || {
        let served: u64 = status(&sock)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["requests"].as_u64().unwrap())
            .sum();
        (served == 3).then_some(())
    });

    let victim = worker(&s, "2")["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let after = wait_for(DEADLINE, "id 2 respawned and ready", || {
        let s = status(&sock);
        let w = worker(&s, "2");
        (w["state"] == "ready" && w["pid"] != victim).then(|| s.clone())
    });
    let w = worker(&after, "2");
    assert_eq!(w["restarts"], 1, "{w}");
    assert_eq!(w["last_exit"]["signal"], "SIGKILL", "{w}");
    assert_eq!(w["last_exit"]["reason"], "crashed", "{w}");
    assert_eq!(after["master"]["counters"]["restarts"], 1);
    for id in ["0", "1", "3", "4"] {
        assert_eq!(worker(&after, id)["restarts"], 0);
    }
    // The readable table names the same workers.
    let (code, table, _) = ctl(&sock, &["status"]);
    assert_eq!(code, 0);
    assert!(table.contains("SIGKILL (crashed)"), "{table}");
    assert!(
        table.starts_with(&format!("master {}  running", m.pid())),
        "{table}"
    );

    let (code, out, _) = ctl(&sock, &["stop"]);
    assert_eq!((code, out.trim()), (0, "master stopping (draining)"));
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(!sock.exists(), "the master removes its socket file");
}

#[test]
fn reload_answers_once_every_worker_is_new() {
    let dir = TempDir::new("ctl-reload");
    let (mut m, sock) = start(warp(), &dir, 3);
    let before: BTreeSet<i32> = by_state(&status(&sock), "ready").into_values().collect();
    let (code, out, err) = ctl(&sock, &["reload"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.starts_with("reload: generation 1 ok in "), "{out}");
    // At the answer, no later: every worker is new, of generation 1, and ready.
    let s = status(&sock);
    let now = by_state(&s, "ready");
    assert_eq!(now.len(), 3, "{s}");
    assert!(now.values().all(|p| !before.contains(p)), "{s}");
    assert!(
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] != "draining")
            .all(|w| w["generation"] == 1),
        "{s}"
    );
    assert_eq!(s["master"]["last_reload"]["outcome"], "ok");
    assert_eq!(s["master"]["counters"]["reloads_ok"], 1);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn reload_of_a_broken_deploy_reports_incomplete_and_exits_1() {
    let dir = TempDir::new("ctl-broken");
    let bin = dir.path().join("sample-warp-like");
    let good = std::fs::read(warp()).unwrap();
    let deploy = |content: &[u8]| {
        let tmp = bin.with_extension("new");
        std::fs::write(&tmp, content).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &bin).unwrap();
    };
    deploy(&good);
    let (mut m, sock) = start(&bin, &dir, 2);
    let original = by_state(&status(&sock), "ready");

    deploy(b"#!/bin/sh\nexit 1\n");
    let (code, out, err) = ctl(&sock, &["reload"]);
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
    assert!(out.contains("incomplete"), "{out}");
    assert!(
        err.starts_with("prefork-ctl: reload incomplete: id 0: ")
            && err.contains("id 1: ")
            && err.contains("exit status 1"),
        "{err}"
    );
    // The old workers keep serving.
    for pid in original.values() {
        assert!(alive(*pid));
    }
    let s = status(&sock);
    assert_eq!(by_state(&s, "ready"), original);
    assert_eq!(s["master"]["last_reload"]["outcome"], "incomplete");

    // The fixed binary: a reload completes.
    deploy(&good);
    let (code, out, err) = ctl(&sock, &["reload"]);
    assert_eq!(code, 0, "{out} {err}");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn scale_up_starts_only_the_new_ids_and_down_drains_the_removed_ones() {
    let dir = TempDir::new("ctl-scale");
    let (mut m, sock) = start(warp(), &dir, 5);
    let before = m.workers_by_arg("id");

    let (code, out, err) = ctl(&sock, &["scale", "7"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "scale 5 -> 7; starting id 5, 6");
    let seven = m.wait_workers(7, "id");
    for (id, pid) in &before {
        assert_eq!(seven[id], *pid, "id {id} untouched");
    }

    let (code, out, err) = ctl(&sock, &["scale", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "scale 7 -> 2; stopping id 2, 3, 4, 5, 6");
    let two = m.wait_workers(2, "id");
    assert_eq!(two["0"], before["0"]);
    assert_eq!(two["1"], before["1"]);
    for id in ["2", "3", "4", "5", "6"] {
        let pid = seven[id];
        wait_for(DEADLINE, &format!("id {id} (pid {pid}) to exit"), || {
            (!alive(pid)).then_some(())
        });
    }
    let s = status(&sock);
    assert_eq!(s["master"]["scale"]["current"], 2);
    assert_eq!(s["master"]["counters"]["exits"]["removed"], 5);

    // Outside the bounds: refused with the reason, nothing changes.
    let (code, _, err) = ctl(&sock, &["scale", "-2"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "prefork-ctl: scale 0 is outside the bounds 1..=1024 (now 2)"
    );
    assert_eq!(m.workers_by_arg("id"), two);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn ttin_three_times_then_hup_leaves_three_more_workers() {
    let dir = TempDir::new("ctl-ttin");
    let (mut m, sock) = start(warp(), &dir, 2);
    for k in 1..=3u64 {
        m.signal(Signal::SIGTTIN);
        // Signals of one kind coalesce: wait for each to take effect before the next.
        wait_for(DEADLINE, &format!("scale {}", 2 + k), || {
            (status(&sock)["master"]["scale"]["current"] == 2 + k).then_some(())
        });
    }
    let five = m.wait_workers(5, "id");
    m.signal(Signal::SIGHUP);
    let after = m.wait_replaced(&five);
    assert_eq!(after.len(), 5, "a reload keeps the scale: {after:?}");
    let s = wait_for(DEADLINE, "the reload to finish", || {
        let s = status(&sock);
        (s["master"]["last_reload"]["generation"] == 1).then_some(s)
    });
    assert_eq!(s["master"]["scale"]["current"], 5);
    assert_eq!(s["master"]["desired"], 5);

    m.signal(Signal::SIGTTOU);
    m.wait_workers(4, "id");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
