//! The fd store: `sample-warp-like --fdstore` hands the socket it bound to systemd
//! (`FDSTORE=1`, `FDNAME=http`); the test plays systemd. It keeps the stored fd, restarts the
//! service the way `systemctl restart` does with `KillMode=mixed` (`SIGTERM` to the master, wait
//! for it to exit, `SIGKILL` to whatever is left), and starts a new master with the fd as
//! `LISTEN_FDS=1`. A client connecting every millisecond throughout sees no refused connection
//! and every request answered: while no master runs, connections wait in the socket's queue.
//!
//! (Without the store, the stopping master lets go of its socket and connections are refused:
//! that is the point of the store.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::notify::NotifySocket;
use testkit::{DEADLINE, Master, Signal, children_of, inherit_fd, listening_addr, wait_for};

/// What the client saw.
#[derive(Debug, Default)]
struct Seen {
    connected: u64,
    /// When each connection was made.
    times: Vec<Instant>,
    refused: Vec<String>,
    answered: u64,
    unanswered: Vec<String>,
}

/// Connects every millisecond and sends one request per connection; a reader collects the
/// answers, so a connection waiting in the queue never holds up the next connect.
fn client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let (tx, rx) = mpsc::channel::<TcpStream>();
        let reader = std::thread::spawn(move || {
            let mut seen = Seen::default();
            for mut s in rx {
                let mut buf = Vec::new();
                match s.read_to_end(&mut buf) {
                    Ok(_) if buf.starts_with(b"HTTP/1.1 200") && buf.ends_with(b"hello") => {
                        seen.answered += 1;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    other => seen
                        .unanswered
                        .push(format!("{other:?}: {:?}", String::from_utf8_lossy(&buf))),
                }
            }
            seen
        });
        let mut refused = Vec::new();
        let mut connected = 0;
        let mut times = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(mut s) => {
                    connected += 1;
                    times.push(Instant::now());
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let req = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
                    if let Err(e) = s.write_all(req) {
                        refused.push(format!("write: {e}"));
                        continue;
                    }
                    let _ = tx.send(s);
                }
                Err(e) => refused.push(format!("connect: {e}")),
            }
            // The pace: one connection a millisecond.
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(tx);
        let mut seen = reader.join().unwrap_or_default();
        seen.connected = connected;
        seen.times = times;
        seen.refused = refused;
        seen
    })
}

#[test]
fn a_restart_with_the_fd_store_refuses_no_connection() {
    let ns = NotifySocket::bind_path();
    let start = |listen: Option<std::os::fd::RawFd>| {
        let sample = env!("CARGO_BIN_EXE_sample-warp-like");
        let args = ["-p", "0", "-w", "2", "--threads", "1", "--fdstore"];
        let mut cmd = match listen {
            None => {
                let mut c = Command::new(sample);
                c.args(args);
                c
            }
            Some(fd) => {
                // As systemd does: the fd at 3, LISTEN_PID the new process's own pid (`exec`
                // keeps it), LISTEN_FDNAMES the name it was stored under.
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0" "$@""#)
                    .arg(sample)
                    .args(args);
                inherit_fd(&mut c, fd, 3);
                c
            }
        };
        cmd.env("NOTIFY_SOCKET", ns.address());
        Master::start(cmd)
    };

    let mut first = start(None);
    let addr = listening_addr(&first.stderr);
    let stored = ns.wait(DEADLINE, "FDSTORE=1", |n| n.has("FDSTORE", "1"));
    let ready = ns.wait(DEADLINE, "READY=1", |n| n.has("READY", "1"));
    let fd = ns.with_all(|all| {
        let n = &mut all[stored];
        assert_eq!(n.get("FDNAME"), Some("http"));
        assert_eq!(n.pid, first.pid().as_raw(), "the master stores it");
        assert_eq!(n.fds.len(), 1, "one fd");
        n.fds.remove(0)
    });
    let sock = socket2::SockRef::from(&fd);
    assert_eq!(
        sock.local_addr().unwrap().as_socket(),
        Some(addr),
        "the stored fd is the listening socket"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = client(addr, stop.clone(), answered.clone());
    wait_for(DEADLINE, "answers before the restart", || {
        (answered.load(Ordering::Relaxed) > 100).then_some(())
    });

    // systemctl restart, KillMode=mixed: TERM to the master, wait, SIGKILL what is left.
    let workers = children_of(first.pid().as_raw());
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(DEADLINE), 0);
    let down = Instant::now();
    for w in workers {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w), Signal::SIGKILL);
    }
    let second = start(Some(fd.as_raw_fd()));
    let again = ns.wait_from(ready + 1, DEADLINE, "READY=1 of the new master", |n| {
        n.has("READY", "1")
    });
    let up = ns.with_all(|all| all[again].at);
    let adopted = second.stderr.wait_line(DEADLINE, |l| {
        l.contains("adopted the socket systemd passed")
    });
    assert_eq!(listening_addr(&second.stderr), addr, "{adopted}");
    ns.with_all(|all| {
        assert_eq!(all[again].pid, second.pid().as_raw());
        assert!(
            all[ready + 1..].iter().all(|n| n.get("FDSTORE").is_none()),
            "an adopted socket is not stored again"
        );
    });
    // Let the client run on the new master a while too.
    let before = answered.load(Ordering::Relaxed);
    wait_for(DEADLINE, "answers from the new master", || {
        (answered.load(Ordering::Relaxed) > before + 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    let while_down = seen.times.iter().filter(|t| **t > down && **t < up).count();
    eprintln!(
        "connected {}, answered {}, refused {}, unanswered {}, {while_down} while no master ran ({:?})",
        seen.connected,
        seen.answered,
        seen.refused.len(),
        seen.unanswered.len(),
        up - down
    );
    assert!(while_down > 0, "connections were made while no master ran");
    assert!(
        seen.refused.is_empty(),
        "refused: {:?}",
        &seen.refused[..seen.refused.len().min(5)]
    );
    assert!(
        seen.unanswered.is_empty(),
        "unanswered: {:?}",
        &seen.unanswered[..seen.unanswered.len().min(5)]
    );
    assert_eq!(seen.answered, seen.connected);
    assert!(seen.connected > 100, "the client really ran: {seen:?}");
}
