//! Section 9, the control socket: the `status` round trip (connect, request, the master builds
//! and writes the status, the client reads and parses it) with 16 and with 1000 workers, and
//! the idle master's wake-ups with the control socket on (it must stay at 0: the socket is one
//! more fd of the same `poll`, with no timer while no client is connected).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prefork_core::control::{self, Command, Response};

use super::{Section, snap, start_http_with, start_sleeper};
use crate::bins::Bins;
use crate::clock;
use crate::plan::Plan;
use crate::report::Unit;

/// A directory for the sockets, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `status` request; returns how many workers it listed.
fn status(sock: &Path) -> Result<usize> {
    match control::request(sock, &Command::Status { resources: false }) {
        Ok(Response::Status { status }) => Ok(status.workers.len()),
        Ok(other) => bail!("unexpected answer {other:?}"),
        Err(e) => bail!("{}", e.report()),
    }
}

/// Measures section 7.
pub fn run(sec: &mut Section, plan: &Plan, bins: &Bins) -> Result<()> {
    let dir = Dir(std::env::temp_dir().join(format!("prefork-bench-ctl-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).context("cannot create the socket directory")?;

    // The idle master, with the control socket on and after it served a request.
    let sock = dir.0.join("warp.sock");
    let sock_arg = sock.to_str().context("odd temp path")?;
    let (mut warp, _) = start_http_with(
        &bins.warp,
        "sample-warp-like",
        2,
        None,
        &[],
        &["--control", sock_arg],
    )?;
    status(&sock)?;
    std::thread::sleep(Duration::from_secs(1));
    let pid = warp.pid();
    let (mut wakeups, mut ticks) = (Vec::new(), Vec::new());
    for _ in 0..plan.idle_reps {
        let b = snap(pid)?;
        std::thread::sleep(plan.idle_window);
        let a = snap(pid)?;
        wakeups.push((a.voluntary - b.voluntary) as f64);
        ticks.push((a.ticks - b.ticks) as f64);
    }
    let secs = plan.idle_window.as_secs();
    sec.row(
        format!(
            "sample-warp-like -w 2 --control: idle master wake-ups over {secs} s (voluntary ctxt switches)"
        ),
        &wakeups,
        Unit::Count,
    )
    .target("0", |m| m == 0.0);
    sec.row(
        format!(
            "sample-warp-like -w 2 --control: idle master CPU over {secs} s (utime+stime ticks)"
        ),
        &ticks,
        Unit::Count,
    )
    .target("0", |m| m == 0.0);
    let _ = warp.workers();
    warp.stop(Duration::from_secs(30))?;

    // The status round trip.
    for n in [16, plan.scale_n] {
        let sock = dir.0.join(format!("sleeper-{n}.sock"));
        let sock_arg = sock.to_str().context("odd temp path")?;
        let mut s = start_sleeper(bins, n, &["--control", sock_arg], Duration::from_secs(120))?;
        for _ in 0..5 {
            let listed = status(&sock)?;
            if listed != n as usize {
                bail!("status listed {listed} workers, wanted {n}");
            }
        }
        let mut times = Vec::with_capacity(plan.control_reps);
        for _ in 0..plan.control_reps {
            let t0 = clock::mono_ns();
            status(&sock)?;
            times.push((clock::mono_ns() - t0) as f64);
        }
        let bytes = match control::request(&sock, &Command::Status { resources: false }) {
            Ok(Response::Status { status }) => serde_json::to_vec(&status).map_or(0, |v| v.len()),
            _ => 0,
        };
        let row = sec.row(
            format!(
                "control: `status` round trip, {n} workers ({} kB of JSON)",
                bytes / 1000
            ),
            &times,
            Unit::Time,
        );
        if n == 16 {
            row.target("≤ 1 ms", |m| m <= 1e6);
        } else if n >= 1000 {
            row.target("≤ 20 ms", |m| m <= 20e6);
        }
        let _ = s.server.workers();
        s.server.stop(Duration::from_secs(60))?;
    }
    sec.note(format!(
        "Control: {} `status` round trips per master through prefork_core::control::request \
         (connect, one JSON line each way, the client parses the status), after 5 warm-up ones; \
         the idle rows are {} window(s) of {secs} s after one request and 1 s of settling.",
        plan.control_reps, plan.idle_reps
    ));
    Ok(())
}
