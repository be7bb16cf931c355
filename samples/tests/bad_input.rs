//! Bad input to `sample-warp-like` ends it with one clear line and a non-zero status, and
//! leaves nothing behind: a bad flag is clap's (status 2), a port in use is the library's
//! `prefork: cannot listen on …` (status 1).

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use testkit::{DEADLINE, Master, children_of, cmdline, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sample-warp-like");

#[test]
fn a_port_that_is_not_a_number_is_a_usage_error() {
    let mut m = Master::start_program(BIN, &["-p", "notaport", "-w", "2"]);
    assert_eq!(m.wait_exit(DEADLINE), 2);
    wait_until(DEADLINE, "stderr to close", || m.stderr.closed());
    let err = m.stderr.all().join("\n");
    assert!(
        err.contains("error: invalid value 'notaport'"),
        "stderr:\n{err}"
    );
    assert!(err.contains("--port"), "stderr:\n{err}");
    assert!(!err.contains("panicked"), "stderr:\n{err}");
}

/// The pids of processes whose environment carries `tag`: the master under test and anything
/// it started (workers inherit the environment).
fn tagged(tag: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == tag.as_bytes()))
        })
        .collect()
}

#[test]
fn a_port_in_use_ends_the_master_with_one_line_and_no_child() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tag = format!("SAMPLES_BAD_INPUT_TAG={}-{port}", std::process::id());
    let (key, value) = tag.split_once('=').unwrap();

    let mut cmd = Command::new(BIN);
    cmd.args(["-p", &port.to_string(), "-w", "3"])
        .env(key, value);
    let mut m = Master::start(cmd);
    let master = m.pid().as_raw();
    let code = m.wait_exit(DEADLINE);
    wait_until(DEADLINE, "stderr to close", || m.stderr.closed());
    let lines = m.stderr.all();
    let err = lines.join("\n");
    assert_ne!(code, 0, "stderr:\n{err}");
    let last = lines.iter().rev().find(|l| !l.trim().is_empty()).cloned();
    let want = format!("prefork: cannot listen on 127.0.0.1:{port}: ");
    assert!(
        last.as_deref()
            .is_some_and(|l| l.starts_with(&want) && l.contains("in use")),
        "last line {last:?}, stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "stderr:\n{err}");
    assert!(!err.contains("listening on"), "stderr:\n{err}");

    // Nothing it started survives it: no process with its environment, no child of its pid
    // running this program as a worker.
    assert_eq!(tagged(&tag), Vec::<i32>::new(), "processes left behind");
    let orphans: Vec<i32> = children_of(master)
        .into_iter()
        .filter(|&p| {
            cmdline(p).is_some_and(|a| {
                a.first().is_some_and(|a0| a0.ends_with("sample-warp-like"))
                    && a.iter().any(|x| x.starts_with("id="))
            })
        })
        .collect();
    assert_eq!(orphans, Vec::<i32>::new());

    // And nobody else took the port: once this test's listener is gone, nothing answers.
    drop(taken);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something answers on {port}"
    );
}
