//! Code shared by the sample binaries, and by the bench's `bench-baseline`, which runs
//! `sample-warp-like`'s serving code in one process, without prefork.
//!
//! * [`init_tracing`]: the samples' log setup.
//! * [`health`]: the hang-detection and recycling flags of the HTTP samples, and [`debug`]:
//!   their debug endpoints (`--debug-endpoints`).
//! * [`warp`]: `sample-warp-like`'s application, served by `prefork-http` (which accepts,
//!   says when the worker is ready and drains without dropping a request).
//! * [`jobs`]: `sample-job-worker`'s queues (a spool directory, Redis) and configuration.

#![warn(missing_docs)]

pub mod debug;
pub mod health;
pub mod jobs;
pub mod warp;

/// Logs go to standard error (`RUST_LOG`, default `info`), coloured only on a terminal,
/// through the library's writer, which never blocks and never panics (a full disk or a
/// restarting log reader drops lines instead of stopping the master); standard output is left
/// to the program (`sample-simple`'s transcript, for one).
pub fn init_tracing() {
    prefork_core::log::init_default();
}

/// Writes `line` and a newline to standard error in one `write` (a line written piece by piece,
/// as `writeln!` on the unbuffered `Stderr` does, can be torn by a worker's log line written
/// between two pieces), ignoring errors (never `eprintln!`: it panics when standard error is a
/// full disk or a closed pipe).
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// The runtime threads of one of `workers` workers that split the machine: `max(1, CPUs /
/// workers)`, at most `workers` (the CPUs are those this process may run on, so a `taskset`
/// or a cgroup limit counts). More threads than cores only add context switches: measured in
/// BENCHMARKS.md, section 10.
pub fn share_of_cpus(workers: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / workers.max(1)).max(1).min(workers.max(1))
}
