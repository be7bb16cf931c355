//! The `fx-master` fixture (`src/bin/fx-master.rs`): starting it, and reading what it prints.
//!
//! Each of its workers prints `worker <id> started pid <pid> gen <generation> at <unix ms>` on
//! stdout when it starts; with `--hooks`, each hook prints `hook <name>`.

use std::collections::BTreeMap;

use crate::{DEADLINE, Master, wait_for};

/// Starts the `fx-master` fixture with `args` (a `&[&str]`) under the [`Master`] guard:
/// `fx!(&["--workers", "2", "--mode", "serve"])`.
///
/// A macro because the fixture's path, `env!("CARGO_BIN_EXE_fx-master")`, is known only while
/// compiling the `prefork-tests` package's integration tests, the only place to use it; to start
/// another program, use [`Master::start_program`](crate::Master::start_program).
#[macro_export]
macro_rules! fx {
    ($args:expr) => {
        $crate::Master::start_program(::core::env!("CARGO_BIN_EXE_fx-master"), $args)
    };
}

/// A worker's start line: `worker <id> started pid <pid> gen <generation> at <unix ms>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The worker's id.
    pub id: u32,
    /// Its pid.
    pub pid: i32,
    /// The generation (the number of reloads before it) it was started for.
    pub generation: u64,
    /// When it started, by the worker's wall clock (see [`crate::now_ms`]).
    pub at_ms: u64,
}

impl Start {
    /// Parses a start line; `None` for any other line.
    pub fn parse(line: &str) -> Option<Start> {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["worker", id, "started", "pid", pid, "gen", g, "at", at] => Some(Start {
                id: id.parse().ok()?,
                pid: pid.parse().ok()?,
                generation: g.parse().ok()?,
                at_ms: at.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Every start line the master's stdout carried so far, in order.
pub fn starts(m: &Master) -> Vec<Start> {
    m.stdout
        .all()
        .iter()
        .filter_map(|l| Start::parse(l))
        .collect()
}

/// id → pid of the start lines of generation `generation` (the last one of each id).
pub fn started(m: &Master, generation: u64) -> BTreeMap<String, i32> {
    starts(m)
        .into_iter()
        .filter(|s| s.generation == generation)
        .map(|s| (s.id.to_string(), s.pid))
        .collect()
}

/// True for a start line (one that says ` started pid `).
pub fn is_start_line(l: &str) -> bool {
    l.contains(" started pid ")
}

/// How many start lines the master's stdout carried so far.
pub fn starts_total(m: &Master) -> usize {
    m.stdout.count(is_start_line)
}

/// Waits until the running workers are exactly generation `generation`'s, ids `0..n`, as their
/// start lines say; returns id → pid.
pub fn wait_generation(m: &Master, generation: u64, n: usize) -> BTreeMap<String, i32> {
    wait_for(
        DEADLINE,
        &format!("ids 0..{n} of generation {generation}"),
        || {
            let want = started(m, generation);
            (want.len() == n
                && (0..n).all(|i| want.contains_key(&i.to_string()))
                && m.workers_by_arg("id") == want
                && m.workers().len() == n)
                .then_some(want)
        },
    )
}

/// Matches the line `hook <name>`.
pub fn hook(name: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| l == format!("hook {name}")
}
