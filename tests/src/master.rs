//! The [`Master`] guard: a started master process whose output is captured, whose workers are
//! found through `/proc`, and which is stopped and reaped in `Drop` even when the test fails.
//!
//! Cleanup signals by pid only: the master first (`SIGTERM`, then `SIGKILL` after 10 s), then
//! each worker it was seen with that is still alive and no longer anybody else's child.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proc_kit::procfs::{by_arg, children_of, live_children, ppid, state};

use crate::{DEADLINE, Lines, Pid, Signal, wait_for, wait_until};

/// A started master process. `Drop` stops it and everything it started, and reaps it.
#[derive(Debug)]
pub struct Master {
    child: Option<Child>,
    /// Its standard output, line by line.
    pub stdout: Lines,
    /// Its standard error, line by line.
    pub stderr: Lines,
    pid: Pid,
    seen_descendants: Arc<Mutex<Vec<i32>>>,
}

impl Master {
    /// Starts `cmd` with piped stdout/stderr (and stdin from /dev/null).
    pub fn start(mut cmd: Command) -> Master {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() && !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("cannot start the master under test");
        let stdout = Lines::capture(child.stdout.take().unwrap(), "out");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "err");
        let pid = Pid::from_raw(child.id() as i32);
        Master {
            child: Some(child),
            stdout,
            stderr,
            pid,
            seen_descendants: Arc::default(),
        }
    }

    /// Starts `program` with `args`, as [`Master::start`] does.
    pub fn start_program(program: impl AsRef<OsStr>, args: &[&str]) -> Master {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Master::start(cmd)
    }

    /// The master's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(self.pid, sig).expect("kill(master)");
    }

    /// The master's live children (not zombies), remembered for cleanup.
    pub fn workers(&self) -> Vec<i32> {
        let kids = live_children(self.pid.as_raw());
        let mut seen = self.seen_descendants.lock().unwrap();
        for k in &kids {
            if !seen.contains(k) {
                seen.push(*k);
            }
        }
        kids
    }

    /// Live workers by the value of their `key=` argument (e.g. `id` → {"0": pid, …}).
    pub fn workers_by_arg(&self, key: &str) -> BTreeMap<String, i32> {
        by_arg(self.workers(), key)
    }

    /// Waits until exactly `n` live workers show `key=` arguments, and returns them.
    pub fn wait_workers(&self, n: usize, key: &str) -> BTreeMap<String, i32> {
        wait_for(DEADLINE, &format!("{n} workers with {key}=…"), || {
            let w = self.workers_by_arg(key);
            (w.len() == n && self.workers().len() == n).then_some(w)
        })
    }

    /// Waits until every worker of `before` (id → pid, as [`Master::wait_workers`] returns it)
    /// has been replaced: as many live workers as before, all showing `id=`, none of them with
    /// its id's old pid. Returns the new id → pid.
    pub fn wait_replaced(&self, before: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
        wait_for(DEADLINE, "every worker replaced", || {
            let now = self.workers_by_arg("id");
            (now.len() == before.len()
                && self.workers().len() == before.len()
                && now.iter().all(|(id, pid)| before.get(id) != Some(pid)))
            .then_some(now)
        })
    }

    /// Waits for the master to exit and returns its status (code, or 128+signal).
    pub fn wait_exit(&mut self, deadline: Duration) -> i32 {
        let child = self.child.as_mut().expect("already reaped");
        let status = wait_for(deadline, "the master to exit", || child.try_wait().unwrap());
        self.child = None;
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    }

    /// Waits until the master's stdout and stderr reached end-of-file (every process holding
    /// them exited), so every line they wrote has been captured.
    pub fn wait_output_closed(&self, deadline: Duration) {
        wait_until(deadline, "the master's output to close", || {
            self.stdout.closed() && self.stderr.closed()
        });
    }

    /// True while the master has not exited.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().unwrap().is_none(),
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let mut victims = self.seen_descendants.lock().unwrap().clone();
        if let Some(mut child) = self.child.take() {
            victims.extend(children_of(self.pid.as_raw()));
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers die with their master (PDEATHSIG); make sure of it for the ones we saw, by
        // pid, only while they are still children of nobody we do not know (ppid 1 or gone).
        for p in victims {
            if state(p).is_some() && ppid(p).is_none_or(|pp| pp == 1 || pp == self.pid.as_raw()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}
