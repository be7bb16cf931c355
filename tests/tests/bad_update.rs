//! A reload whose configuration is rejected changes nothing: the same workers keep running.
//! Later good reloads shrink and grow the pool by id.
//!
//! The fixture reads the worker count from `--workers-file` at start and on every `SIGHUP`; a
//! file that does not parse makes `update` print `config rejected: …` and return `None`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testkit::fx::{starts_total, wait_generation};
use testkit::{DEADLINE, Master, Signal, TempFile, fx};

/// Writes `n` to the workers file, sends `SIGHUP`, and waits for the update to `n` workers and
/// for the ids `0..n` of generation `gen_` to run; returns them.
fn resize(m: &Master, file: &TempFile, n: usize, gen_: u64) -> BTreeMap<String, i32> {
    file.write(n.to_string());
    m.signal(Signal::SIGHUP);
    m.stdout
        .wait_line(DEADLINE, |l| l == format!("update desired {n}"));
    wait_generation(m, gen_, n)
}

#[test]
fn a_rejected_config_keeps_the_workers_and_good_ones_resize_the_pool() {
    let file = TempFile::new("workers");
    file.write("3");
    let path = file.path().to_str().expect("a UTF-8 temp path");
    let m = fx!(&["--workers-file", path, "--mode", "serve"]);
    let gen0 = wait_generation(&m, 0, 3);

    // A bad file: rejected, nothing moves.
    file.write("garbage");
    m.signal(Signal::SIGHUP);
    m.stdout
        .wait_line(DEADLINE, |l| l.starts_with("config rejected"));
    m.stderr.wait_line(DEADLINE, |l| {
        l.contains("update returned no configuration; keeping the running workers")
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
    let gen1 = resize(&m, &file, 2, 1);
    for (id, pid) in &gen1 {
        assert_ne!(gen0.get(id), Some(pid), "id {id} was replaced");
    }
    assert!(!testkit::alive(gen0["2"]), "id 2's worker stopped");

    // Four: ids 0 and 1 are replaced again, 2 and 3 start.
    let gen2 = resize(&m, &file, 4, 2);
    for (id, pid) in &gen1 {
        assert_ne!(gen2.get(id), Some(pid), "id {id} was replaced");
    }
    assert_eq!(starts_total(&m), 3 + 2 + 4, "{:#?}", m.stdout.all());
}
