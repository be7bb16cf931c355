//! A reload whose configuration is rejected changes nothing: the same workers keep running.
//! Later good reloads shrink and grow the pool by id.
//!
//! The fixture reads the worker count from `--workers-file` at start and on every `SIGHUP`; a
//! file that does not parse makes `update` print `config rejected: …` and return `None`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::{DEADLINE, Master, Signal, wait_for};

fn fx(args: &[&str]) -> Master {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fx-master"));
    cmd.args(args);
    Master::start(cmd)
}

/// The log text without its ANSI colour codes (tracing-subscriber colours even into a pipe).
fn plain(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut it = l.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        TempFile(std::env::temp_dir().join(format!("prefork-{tag}-{}-{nanos}", std::process::id())))
    }

    fn write(&self, s: &str) {
        std::fs::write(&self.0, s).expect("write the workers file");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// id → pid of the `worker <id> started pid <pid> gen <gen> …` lines of generation `gen`.
fn started(m: &Master, gen_: u64) -> BTreeMap<String, i32> {
    m.stdout
        .all()
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["worker", id, "started", "pid", pid, "gen", g, "at", _]
                    if g.parse::<u64>().ok() == Some(gen_) =>
                {
                    Some((id.to_string(), pid.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

fn starts_total(m: &Master) -> usize {
    m.stdout.count(|l| l.contains(" started pid "))
}

/// Waits until the running workers are exactly generation `gen`'s, ids `0..n`.
fn wait_generation(m: &Master, gen_: u64, n: usize) -> BTreeMap<String, i32> {
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    wait_for(
        DEADLINE,
        &format!("ids 0..{n} of generation {gen_}"),
        || {
            let want = started(m, gen_);
            (want.keys().cloned().collect::<Vec<_>>() == ids
                && m.workers_by_arg("id") == want
                && m.workers().len() == n)
                .then_some(want)
        },
    )
}

#[test]
fn a_rejected_config_keeps_the_workers_and_good_ones_resize_the_pool() {
    let file = TempFile::new("workers");
    file.write("3");
    let path = file.0.to_str().expect("a UTF-8 temp path").to_string();
    let m = fx(&["--workers-file", &path, "--mode", "serve"]);
    let gen0 = wait_generation(&m, 0, 3);

    // A bad file: rejected, nothing moves.
    file.write("garbage");
    m.signal(Signal::SIGHUP);
    m.stdout
        .wait_line(DEADLINE, |l| l.starts_with("config rejected"));
    m.stderr.wait_line(DEADLINE, |l| {
        plain(l).contains("update returned no configuration; keeping the running workers")
    });
    let t = Instant::now();
    let mut checks = 0;
    while t.elapsed() < Duration::from_millis(500) {
        assert_eq!(
            m.workers_by_arg("id"),
            gen0,
            "the workers changed after a rejected config"
        );
        assert_eq!(m.workers().len(), 3, "no worker was added");
        checks += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(checks > 0);
    assert_eq!(
        starts_total(&m),
        3,
        "no worker was started: {:#?}",
        m.stdout.all()
    );
    assert_eq!(
        m.stdout.count(|l| l.starts_with("update desired")),
        1,
        "only the start's"
    );

    // Two: id 2 stops, ids 0 and 1 are replaced (generation 1: the rejected HUP did not count).
    file.write("2");
    m.signal(Signal::SIGHUP);
    m.stdout.wait_line(DEADLINE, |l| l == "update desired 2");
    let gen1 = wait_generation(&m, 1, 2);
    for (id, pid) in &gen1 {
        assert_ne!(gen0.get(id), Some(pid), "id {id} was replaced");
    }
    assert!(!testkit::alive(gen0["2"]), "id 2's worker stopped");

    // Four: ids 0 and 1 are replaced again, 2 and 3 start.
    file.write("4");
    m.signal(Signal::SIGHUP);
    m.stdout.wait_line(DEADLINE, |l| l == "update desired 4");
    let gen2 = wait_generation(&m, 2, 4);
    for (id, pid) in &gen1 {
        assert_ne!(gen2.get(id), Some(pid), "id {id} was replaced");
    }
    assert_eq!(starts_total(&m), 3 + 2 + 4, "{:#?}", m.stdout.all());
}
