//! Looking at a master from outside when its log cannot be read or its death is the failure:
//! waits that fail at once (with the exit status) if the master died, where the kernel says a
//! process is blocked, and the flags of a listening socket.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::{DEADLINE, Master, fds, state, wait_for};

/// Polls `f` every 10 ms until it returns `Some`. Panics after `deadline` naming `what` and
/// where the master is blocked, or as soon as the master exited, with its status (code, or
/// 128+signal): a test of "the master survives X" fails at once, not at the deadline.
#[track_caller]
pub fn wait_alive<T>(
    m: &mut Master,
    deadline: Duration,
    what: &str,
    mut f: impl FnMut(&Master) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f(m) {
            return v;
        }
        assert_running(m, what);
        if start.elapsed() > deadline {
            let pid = m.pid().as_raw();
            panic!(
                "timed out after {deadline:?} waiting for {what} (master {pid}: state {:?}, \
                 blocked in {:?})",
                state(pid),
                wchan(pid)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Panics, with its exit status, if the master exited; `during` says what the test was doing.
#[track_caller]
pub fn assert_running(m: &mut Master, during: &str) {
    if !m.running() {
        let code = m.wait_exit(Duration::from_secs(5));
        // Its last words, if its standard error is the guard's (bounded: a worker that outlived
        // it may hold the pipe open).
        let end = Instant::now() + Duration::from_secs(2);
        while !m.stderr.closed() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = m.stderr.all();
        let tail = if err.is_empty() {
            " (none captured)".to_string()
        } else {
            format!(":\n{}", err[err.len().saturating_sub(5)..].join("\n"))
        };
        panic!(
            "the master exited with status {code}{} during: {during}; its last stderr lines{tail}",
            describe_status(code),
        );
    }
}

/// ` (SIGUSR1)` for a status above 128, ` (a Rust panic)` for 101, else nothing.
pub fn describe_status(code: i32) -> String {
    if code == 101 {
        return " (a Rust panic)".into();
    }
    if code > 128 {
        if let Ok(s) = nix::sys::signal::Signal::try_from(code - 128) {
            return format!(" (killed by {})", s.as_str());
        }
        return format!(" (killed by signal {})", code - 128);
    }
    String::new()
}

/// The kernel function a process sleeps in (`/proc/<pid>/wchan`, e.g. `pipe_write`,
/// `do_sys_poll`), if the kernel tells.
pub fn wchan(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .ok()
        .filter(|s| !s.is_empty() && s != "0")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed), for a
/// program whose "listening on" line cannot be read.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// The socket inode of the TCP socket listening on 127.0.0.1:`port` (`/proc/net/tcp`, state
/// `0A`), if there is one.
pub fn listening_inode(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A"))
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// The fd number under which `pid` holds the socket with `inode`.
pub fn fd_of_socket(pid: i32, inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    crate::fds(pid)
        .into_iter()
        .find_map(|(n, t)| (t == want).then_some(n))
}

/// The file status flags of `pid`'s `fd` (`/proc/<pid>/fdinfo/<fd>`, `flags:` in octal):
/// those of the open file description, shared by every process holding it.
pub fn fd_flags(pid: i32, fd: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let v = s.lines().find_map(|l| l.strip_prefix("flags:"))?;
    i32::from_str_radix(v.trim(), 8).ok()
}

/// Whether the socket listening on 127.0.0.1:`port`, as `pid` holds it, is non-blocking
/// (`O_NONBLOCK`). `None` if `pid` holds no such socket.
pub fn listener_nonblocking(pid: i32, port: u16) -> Option<bool> {
    let fd = fd_of_socket(pid, listening_inode(port)?)?;
    Some(fd_flags(pid, fd)? & nix::libc::O_NONBLOCK != 0)
}

/// Waits for the master to exit and returns its status (code, or 128+signal); after
/// `deadline` panics naming `what` and where the master is blocked.
#[track_caller]
pub fn wait_exit_or_report(m: &mut Master, deadline: Duration, what: &str) -> i32 {
    let start = Instant::now();
    while m.running() {
        if start.elapsed() > deadline {
            let pid = m.pid().as_raw();
            panic!(
                "the master did not exit within {deadline:?} after {what} (master {pid}: \
                 state {:?}, blocked in {:?})",
                state(pid),
                wchan(pid)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    m.wait_exit(Duration::from_secs(5))
}

/// How long ago `pid` started (`/proc/<pid>/stat` start time against `/proc/uptime`, in clock
/// ticks of 10 ms).
pub fn age(pid: i32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // Field 22 of stat is the 20th after the command name.
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let up = std::fs::read_to_string("/proc/uptime").ok()?;
    let up_secs: f64 = up.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let started = start_ticks as f64 / hz;
    Some(Duration::from_secs_f64((up_secs - started).max(0.0)))
}

/// The master's fd table (fd → what it points at), read while it is idle: asleep in `poll`, not
/// half-way through a spawn (whose pipes are open only for its duration) or an upgrade.
pub fn idle_fds(m: &Master) -> BTreeMap<i32, String> {
    let pid = m.pid().as_raw();
    wait_for(DEADLINE, "the master idle in poll", || {
        let sys = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        let nr: i64 = sys.split_whitespace().next()?.parse().ok()?;
        let polling = nr == nix::libc::SYS_ppoll || {
            #[cfg(target_arch = "x86_64")]
            {
                nr == nix::libc::SYS_poll
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        if !polling || state(pid) != Some('S') {
            return None;
        }
        let t = fds(pid);
        // Still asleep in the same call: the table was read while it was idle.
        let again = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        (again == sys && state(pid) == Some('S')).then_some(t)
    })
}
