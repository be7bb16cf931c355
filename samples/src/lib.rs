//! Code shared by the sample binaries, and by the bench's `bench-baseline`, which runs
//! `sample-warp-like`'s serving code in one process, without prefork.
//!
//! * [`init_tracing`]: the samples' log setup.
//! * [`warp`]: `sample-warp-like`'s application, served by `prefork-http` (which accepts,
//!   says when the worker is ready and drains without dropping a request).

#![warn(missing_docs)]

pub mod warp;

/// Logs go to standard error (`RUST_LOG`, default `info`), coloured only on a terminal;
/// standard output is left to the program (`sample-simple`'s transcript, for one).
pub fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
