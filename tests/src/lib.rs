//! Test kit for black-box tests of prefork programs: start a master, read its output as it
//! comes, look at its processes through `/proc`, talk HTTP to it, and always clean up.
//!
//! The rules it enforces: wait for conditions with a deadline (never a bare sleep), signal only
//! processes this test started (by pid), and reap everything, even when the test fails
//! (the [`Master`] guard does it in `Drop`).

//!
//! One module a concern: [waiting](wait_for) with a deadline, [line capture](Lines), the
//! [`Master`] guard, [temp files](TempFile), [fd inheritance](inherit_fd), a fake service
//! manager's [notification socket](notify::NotifySocket). The `/proc` readers
//! ([`children_of`], [`state`], …) and the HTTP/1.1 client side ([`http_get`],
//! [`parse_response`]) come from the `proc-kit` crate, which the benchmark shares.

mod inherit;
mod lines;
mod master;
mod temp;
mod wait;

pub mod fx;
pub mod load;
pub mod notify;
pub mod scoreboard;

pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;
pub use proc_kit::http::{Headers, http_get, parse_response};
pub use proc_kit::procfs::{
    alive, children_of, cmdline, cpu_ticks, fds, ppid, signal_masks, state, zombies_of,
};

pub use inherit::inherit_fd;
pub use lines::{Lines, listening_addr};
pub use master::Master;
pub use temp::{TempDir, TempFile};
pub use wait::{DEADLINE, now_ms, wait_for, wait_until};

// Helpers of the hardening tests (log sinks that fail or stall, what a parent hands down, probes
// of a master seen from outside), in modules of their own.
pub mod logpipe;
pub mod parent;
pub mod probe;
