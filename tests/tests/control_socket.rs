//! The control socket from outside, against the `fx-master` fixture: no fd leak across reloads
//! and requests (gunicorn#3648), another uid refused, silent and garbage clients that cannot
//! wedge the master, the status file, `replace`, `metrics`, and `stop --fast`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use prefork_core::control::{self, Command, Response};
use prefork_core::status::{MasterState, ReloadResult, Status, WorkerState};
use testkit::{DEADLINE, Master, Pid, Signal, TempDir, fds, fx, wait_for};

/// Starts `fx-master --workers N --control DIR/ctl.sock` plus `extra`, waits for N ready
/// workers; returns the guard and the socket's path.
fn start(dir: &TempDir, n: u32, extra: &[&str]) -> (Master, PathBuf) {
    let sock = dir.path().join("ctl.sock");
    let n_text = n.to_string();
    let mut args = vec![
        "--workers",
        &n_text,
        "--mode",
        "serve",
        "--control",
        sock.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let m = fx!(&args);
    m.wait_workers(n as usize, "id");
    wait_for(DEADLINE, "every worker ready", || {
        (sock.exists() && status(&sock).master.ready == n as usize).then_some(())
    });
    (m, sock)
}

fn status(sock: &Path) -> Status {
    match control::request(sock, &Command::Status { resources: false }) {
        Ok(Response::Status { status }) => *status,
        other => panic!("status: {other:?}"),
    }
}

#[test]
fn the_masters_fds_are_the_same_after_20_reloads_and_500_requests() {
    let dir = TempDir::new("ctl-fds");
    let (mut m, sock) = start(&dir, 2, &[]);
    let pid = m.pid().as_raw();
    // One request first, so that anything allocated lazily on the first one is there.
    status(&sock);
    let before = fds(pid);
    for k in 1..=20u64 {
        match control::request(&sock, &Command::Reload) {
            Ok(Response::Reload { reload }) => {
                assert_eq!(reload.outcome, ReloadResult::Ok, "{reload:?}");
                assert_eq!(reload.generation, k);
            }
            other => panic!("reload {k}: {other:?}"),
        }
    }
    for k in 0..500 {
        let cmd = match k % 3 {
            0 => Command::Metrics,
            _ => Command::Status {
                resources: k % 3 == 2,
            },
        };
        let r = control::request(&sock, &cmd).unwrap();
        assert!(!matches!(r, Response::Error { .. }), "{r:?}");
    }
    // The answer reaches the client an instant before the master closes its end: wait for
    // that close, not for anything else.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fds(pid) != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fds(pid), before, "the master's open fds changed");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

/// Not a test of its own: the client half of [`a_client_of_another_uid_is_refused`], run in a
/// child process that dropped to uid 65534 (`nobody`). Prints `NOBODY-ANSWER <response>`
/// or `NOBODY-FAILED <error>`, on a line of its own.
#[test]
fn nobody_client() {
    let Some(sock) = std::env::var_os("FX_NOBODY_CLIENT_SOCKET") else {
        return; // run as a test of its own: nothing to do
    };
    let line = match control::request(&sock, &Command::Status { resources: false }) {
        Ok(r) => format!("NOBODY-ANSWER {}", serde_json::to_string(&r).unwrap()),
        Err(e) => format!("NOBODY-FAILED {}", e.report()),
    };
    println!("\n{line}");
}

/// Runs [`nobody_client`] as uid/gid 65534 against `sock`; returns its line.
fn as_nobody(sock: &Path) -> String {
    let mut cmd = Process::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "nobody_client",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("FX_NOBODY_CLIENT_SOCKET", sock)
    .stdin(Stdio::null());
    // SAFETY: setgroups/setgid/setuid are async-signal-safe system calls on plain integers,
    // made in the child between fork and exec; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::setgroups(0, std::ptr::null()) != 0
                || nix::libc::setgid(65534) != 0
                || nix::libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("cannot run the client as nobody");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("NOBODY-"))
        .unwrap_or_else(|| panic!("no answer line from the nobody client: {text}"))
        .to_string()
}

#[test]
fn a_client_of_another_uid_is_refused() {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        eprintln!("skipped: dropping to nobody needs root (CI runs as root)");
        return;
    }
    let dir = TempDir::new("ctl-nobody");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut m, sock) = start(&dir, 1, &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket file is owner-only");
    // The file mode stops it first...
    let line = as_nobody(&sock);
    assert!(
        line.starts_with("FAILED cannot connect to") && line.contains("Permission denied"),
        "{line}"
    );
    // ...and with the file opened up, the peer's credentials still do.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let line = as_nobody(&sock);
    assert!(
        line.contains(r#""result":"error""#)
            && line.contains("permission denied: uid 65534 is neither the master's (0) nor root"),
        "{line}"
    );
    // The master serves its own user all along.
    assert_eq!(status(&sock).master.ready, 1);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn silent_and_garbage_clients_do_not_wedge_the_master() {
    let dir = TempDir::new("ctl-hostile");
    let (mut m, sock) = start(&dir, 2, &[]);
    let t0 = Instant::now();
    // A client that connects and says nothing.
    let mut silent = UnixStream::connect(&sock).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A client that sends 1 MB without a newline.
    let garbage = std::thread::spawn({
        let sock = sock.clone();
        move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let junk = vec![b'x'; 1 << 20];
            let wrote = s.write_all(&junk); // cut short once the master gives up on it
            let mut answer = String::new();
            let _ = BufReader::new(&s).read_line(&mut answer);
            (wrote.is_ok(), answer)
        }
    });
    // A malformed request with its newline.
    let mut bad = UnixStream::connect(&sock).unwrap();
    bad.write_all(b"{\"cmd\":\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&bad).read_line(&mut answer).unwrap();
    assert!(answer.contains("bad request"), "{answer}");

    // Meanwhile the master serves, and respawns.
    let before = m.workers_by_arg("id");
    nix::sys::signal::kill(Pid::from_raw(before["0"]), Signal::SIGKILL).unwrap();
    let after = wait_for(DEADLINE, "id 0 respawned", || {
        let w = m.workers_by_arg("id");
        (w.len() == 2 && w["0"] != before["0"]).then_some(w)
    });
    let s = status(&sock);
    assert_eq!(
        s.workers
            .iter()
            .find(|w| w.id == "0" && w.state != WorkerState::Draining)
            .and_then(|w| w.pid),
        Some(after["0"])
    );

    let (_, garbage_answer) = garbage.join().unwrap();
    assert!(
        garbage_answer.is_empty() || garbage_answer.contains("request larger than 64 KiB"),
        "{garbage_answer}"
    );
    // The silent one gets an error (or a close) once its time is up, not before.
    let mut got = String::new();
    let _ = BufReader::new(&mut silent).read_line(&mut got);
    let waited = t0.elapsed();
    assert!(
        got.is_empty() || got.contains("timed out waiting for the request"),
        "{got}"
    );
    assert!(waited >= Duration::from_secs(4), "closed after {waited:?}");
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(rest.is_empty(), "then closed");
    assert_eq!(status(&sock).master.ready, 2);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn a_reload_that_update_rejects_is_answered_rejected_and_nothing_moves() {
    let dir = TempDir::new("ctl-rejected");
    let conf = dir.path().join("workers");
    std::fs::write(&conf, "2").unwrap();
    // Workers that ignore SIGTERM keep the master stopping for the whole shutdown timeout.
    let (mut m, sock) = start(
        &dir,
        2,
        &[
            "--workers-file",
            conf.to_str().unwrap(),
            "--mode",
            "ignore-term",
            "--shutdown-ms",
            "3000",
        ],
    );
    let before = m.workers_by_arg("id");
    std::fs::write(&conf, "not a number").unwrap();
    let r = control::request(&sock, &Command::Reload).unwrap();
    let Response::Reload { reload } = r else {
        panic!("{r:?}")
    };
    assert_eq!(reload.outcome, ReloadResult::Rejected);
    assert_eq!(reload.generation, 0);
    let s = status(&sock);
    assert_eq!(s.master.counters.reloads_rejected, 1);
    assert_eq!(
        s.master.last_reload.map(|r| r.outcome),
        Some(ReloadResult::Rejected)
    );
    assert_eq!(m.workers_by_arg("id"), before);
    // A second graceful stop does not escalate to SIGKILL (a second SIGTERM would): both are
    // answered, the workers live on until the shutdown timeout.
    for _ in 0..2 {
        let r = control::request(&sock, &Command::Stop { fast: false });
        assert!(matches!(r, Ok(Response::Stopping { fast: false })), "{r:?}");
    }
    assert!(before.values().all(|&p| testkit::alive(p)));
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(
        !m.stderr
            .all()
            .iter()
            .any(|l| l.contains("second stop signal")),
        "{:?}",
        m.stderr.all()
    );
}

#[test]
fn status_file_replace_metrics_and_a_fast_stop() {
    let dir = TempDir::new("ctl-misc");
    let file = dir.path().join("status.json");
    let (mut m, sock) = start(
        &dir,
        2,
        &["--status-file", file.to_str().unwrap(), "--scale"],
    );
    let read = || -> Option<Status> { serde_json::from_slice(&std::fs::read(&file).ok()?).ok() };
    wait_for(DEADLINE, "the status file with 2 ready", || {
        read().filter(|s| s.master.ready == 2).map(|_| ())
    });

    // replace: a new pid for id 1, only once it took over; id 0 untouched.
    let before = m.workers_by_arg("id");
    let r = control::request(&sock, &Command::Replace { id: "1".into() }).unwrap();
    let Response::Replace { replace } = r else {
        panic!("{r:?}")
    };
    assert_eq!(replace.old_pid, before["1"]);
    assert_ne!(replace.new_pid, before["1"]);
    let s = status(&sock);
    let w1 = s
        .workers
        .iter()
        .find(|w| w.pid == Some(replace.new_pid))
        .unwrap();
    assert_eq!(w1.state, WorkerState::Ready);
    assert_eq!(m.workers_by_arg("id")["0"], before["0"]);
    assert!(matches!(
        control::request(&sock, &Command::Replace { id: "7".into() }),
        Ok(Response::Error { .. })
    ));

    // The file follows the changes.
    wait_for(DEADLINE, "the status file to show the new id 1", || {
        read()
            .filter(|s| {
                s.workers
                    .iter()
                    .any(|w| w.pid == Some(replace.new_pid) && w.state == WorkerState::Ready)
            })
            .map(|_| ())
    });

    let Ok(Response::Metrics { text }) = control::request(&sock, &Command::Metrics) else {
        panic!("metrics")
    };
    for line in [
        "prefork_workers{state=\"ready\"} 2",
        "prefork_workers_desired 2",
        "prefork_scale 2",
        "prefork_worker_exits_total{reason=\"retired\"}",
        "prefork_reloads_total{outcome=\"ok\"} 0",
        "# TYPE prefork_spawns_total counter",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(
        text.contains("prefork_listener_accept_queue{addr=\"127.0.0.1:"),
        "{text}"
    );

    // A second master on the same path does not steal it: one line, exit 1, nothing started.
    let mut second = fx!(&["--workers", "1", "--control", sock.to_str().unwrap()]);
    assert_eq!(second.wait_exit(DEADLINE), 1);
    second.wait_output_closed(DEADLINE);
    let err = second.stderr.all().join("\n");
    assert!(
        err.contains(&format!(
            "prefork: cannot listen on {}: something is there already",
            sock.display()
        )),
        "{err}"
    );
    assert!(
        second
            .stdout
            .all()
            .iter()
            .all(|l| !l.contains(" started pid "))
    );
    assert_eq!(status(&sock).master.pid, m.pid().as_raw());

    // stop --fast: every worker gets SIGKILL at once; the master exits 0 and removes its
    // socket.
    let pids: Vec<i32> = m.workers();
    let r = control::request(&sock, &Command::Stop { fast: true }).unwrap();
    assert!(matches!(r, Response::Stopping { fast: true }), "{r:?}");
    assert_eq!(m.wait_exit(DEADLINE), 0);
    assert!(pids.iter().all(|&p| !testkit::alive(p)));
    assert!(!sock.exists());
    assert_eq!(read().unwrap().master.state, MasterState::Stopping);
}
