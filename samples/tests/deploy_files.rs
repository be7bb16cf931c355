//! The files in `deploy/` are right and agree with each other and with the sample:
//!
//! * the units pass `systemd-analyze verify` (where it is installed: always in CI), with the
//!   `Type=notify-reload` one verified on systemd >= 253 only and its `Type=notify` fallback
//!   everywhere; they say `KillMode=mixed`, a `TimeoutStopSec` above the master's shutdown
//!   delay + shutdown timeout, a watchdog, an fd store when the command line asks for one, and the
//!   `.socket`'s name is the one the sample adopts;
//! * the command lines of the unit, the Dockerfile and the pod really start the sample, which
//!   says `READY=1` to a fake systemd once its workers are ready, and stops with 0;
//! * the Dockerfile runs the master as PID 1 (exec form), and the pod's
//!   `terminationGracePeriodSeconds` covers its preStop, the shutdown delay and the drain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::notify::NotifySocket;
use testkit::{DEADLINE, Master, Signal, TempDir};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy().join(name)).unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// `Key=value` lines of a unit file (the last of each key; comments and sections skipped).
fn keys(unit: &str) -> BTreeMap<String, String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The longest a sample with `args` may take to stop: its shutdown delay, then its shutdown
/// timeout (its drain timeout + 5 s, as the sample sets it).
fn stop_budget(args: &[String]) -> Duration {
    let secs = |f: &str, default: u64| flag(args, f).map_or(default, |v| v.parse().unwrap());
    let drain = secs(
        "--drain-timeout",
        prefork_http::Options::DEFAULT_DRAIN_TIMEOUT.as_secs(),
    );
    Duration::from_secs(secs("--shutdown-delay", 0) + drain + 5)
}

/// `10s`, `1min`, `30` (seconds) as systemd writes time spans (the forms used here).
fn span(v: &str) -> Duration {
    if let Some(m) = v.strip_suffix("min") {
        return Duration::from_secs(m.parse::<u64>().unwrap() * 60);
    }
    Duration::from_secs(v.trim_end_matches('s').parse().unwrap())
}

/// A JSON array written in a Dockerfile or YAML line after `prefix`.
fn json_array(text: &str, prefix: &str) -> Vec<String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix}"));
    serde_json::from_str(line[prefix.len()..].trim()).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Starts the sample with `args` (the port made 0, the host 127.0.0.1, and without `--user` and
/// `--group` unless this test runs as root) under a fake systemd; waits for `READY=1`, stops
/// it, expects 0.
fn starts_and_stops(args: &[String]) {
    let root = nix::unistd::geteuid().is_root();
    let mut out: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-p" | "--port" => {
                it.next();
                out.extend(["-p".into(), "0".into()]);
            }
            "--host" => {
                it.next();
                out.extend(["--host".into(), "127.0.0.1".into()]);
            }
            "--user" | "--group" if !root => {
                it.next();
            }
            _ => out.push(a.clone()),
        }
    }
    let ns = NotifySocket::bind_path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sample-warp-like"));
    cmd.args(&out).env("NOTIFY_SOCKET", ns.address());
    let mut m = Master::start(cmd);
    ns.wait(DEADLINE, &format!("READY=1 from {out:?}"), |n| {
        n.has("READY", "1")
    });
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE + stop_budget(&out)), 0, "{out:?}");
}

/// `ExecStart=` split into the program's arguments.
fn exec_start_args(unit: &BTreeMap<String, String>) -> Vec<String> {
    let cmd = &unit["ExecStart"];
    let mut words = cmd.split_whitespace().map(str::to_owned);
    let program = words.next().unwrap();
    assert!(program.ends_with("/sample-warp-like"), "{cmd}");
    words.collect()
}

#[test]
fn the_units_agree_with_the_sample_and_with_each_other() {
    let main = read("sample-warp-like.service");
    let fallback = read("sample-warp-like-notify.service");
    let (m, f) = (keys(&main), keys(&fallback));
    assert_eq!(m["Type"], "notify-reload");
    assert_eq!(f["Type"], "notify");
    assert_eq!(f["ExecReload"], "/bin/kill -HUP $MAINPID");
    assert!(
        !m.contains_key("ExecReload"),
        "notify-reload sends the signal itself"
    );
    // Otherwise the same unit.
    let strip = |mut k: BTreeMap<String, String>| {
        k.remove("Type");
        k.remove("ExecReload");
        k
    };
    assert_eq!(strip(m.clone()), strip(f.clone()));

    assert_eq!(m["KillMode"], "mixed");
    assert_eq!(m["NotifyAccess"], "main");
    let args = exec_start_args(&m);
    let stop = span(&m["TimeoutStopSec"]);
    assert!(
        stop > stop_budget(&args),
        "TimeoutStopSec {stop:?} must exceed the master's {:?}",
        stop_budget(&args)
    );
    assert!(span(&m["WatchdogSec"]) >= Duration::from_secs(2));
    if args.iter().any(|a| a == "--fdstore") {
        assert!(m["FileDescriptorStoreMax"].parse::<u32>().unwrap() > 0);
    }
    let socket = keys(&read("sample-warp-like.socket"));
    assert_eq!(
        socket["FileDescriptorName"], "http",
        "the name the sample adopts"
    );
    assert!(socket.contains_key("ListenStream"));
    starts_and_stops(&args);
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing; .ci/run installs it (apt-get install systemd)"
        );
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let version = Command::new(&analyze).arg("--version").output().unwrap();
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemd-analyze --version");
    // The units point at the built sample, in a directory of their own; the .socket verifies
    // against the service of its name, so each service is verified as that name beside it.
    let bin = env!("CARGO_BIN_EXE_sample-warp-like");
    let mut services = vec!["sample-warp-like-notify.service"];
    if version >= 253 {
        services.push("sample-warp-like.service");
    }
    for service in services {
        let dir = TempDir::new("units");
        for (from, to) in [
            (service, "sample-warp-like.service"),
            ("sample-warp-like.socket", "sample-warp-like.socket"),
        ] {
            let text = read(from).replace("/usr/local/bin/sample-warp-like", bin);
            std::fs::write(dir.path().join(to), text).unwrap();
        }
        let out = Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(dir.path().join("sample-warp-like.service"))
            .arg(dir.path().join("sample-warp-like.socket"))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {service} (systemd {version}):\n{said}"
        );
    }
}

#[test]
fn the_container_files_run_the_master_as_pid_1_and_give_it_time_to_drain() {
    let docker = read("Dockerfile");
    let entry = json_array(&docker, "ENTRYPOINT");
    assert_eq!(
        entry,
        ["/usr/local/bin/sample-warp-like"],
        "exec form: the master is PID 1"
    );
    assert!(docker.lines().any(|l| l.trim() == "STOPSIGNAL SIGTERM"));
    let cmd = json_array(&docker, "CMD");
    starts_and_stops(&cmd);

    let pod = read("kubernetes.yaml");
    let grace: u64 = pod
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .unwrap();
    let pre_stop = json_array(&pod, "command:");
    assert_eq!(pre_stop[0], "sleep", "the preStop hook: {pre_stop:?}");
    let pre_stop = Duration::from_secs(pre_stop[1].parse().unwrap());
    let args = json_array(&pod, "args:");
    let needed = pre_stop + stop_budget(&args);
    assert!(
        Duration::from_secs(grace) > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop + delay + drain = {needed:?}"
    );
    starts_and_stops(&args);
}
