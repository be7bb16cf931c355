//! Workers under another identity: a master started as root runs its workers as an
//! unprivileged user, set in the child before `execve` (groups, then gid, then uid); an unknown
//! user is one clear line at start.
//!
//! Needs root (CI runs as root); elsewhere the tests say so and pass, except under `CI`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use testkit::{DEADLINE, Master, Signal, TempDir, wait_for};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI runs these tests as root"
    );
    eprintln!("skipped: changing a worker's user needs root");
    true
}

/// The fixture copied into a fresh temp dir that any user may read and execute (the build
/// directory may sit under a home directory other users cannot enter).
fn world_executable_fixture(dir: &TempDir) -> PathBuf {
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("fx-master");
    std::fs::copy(env!("CARGO_BIN_EXE_fx-master"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `Uid:`, `Gid:` and `Groups:` of /proc/<pid>/status.
fn ids(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

#[test]
fn workers_run_as_the_user_and_groups_they_are_given() {
    if skip_unless_root() {
        return;
    }
    let dir = TempDir::new("privileges");
    let bin = world_executable_fixture(&dir);
    let mut m = Master::start_program(
        &bin,
        &[
            "--workers",
            "2",
            "--mode",
            "serve",
            "--user",
            "nobody",
            "--group",
            "nogroup",
        ],
    );
    let workers = m.wait_workers(2, "id");
    // Every worker reached its accept loop (it adopted the listener and said it was ready).
    m.stdout
        .wait_count(DEADLINE, 2, &|l: &str| l.contains(" started pid "));
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nogroup.gid.as_raw());
    for pid in workers.values() {
        let (u, g, groups) = ids(*pid);
        assert_eq!(
            u,
            format!("{uid} {uid} {uid} {uid}"),
            "real, effective, saved, fs uid"
        );
        assert_eq!(
            g,
            format!("{gid} {gid} {gid} {gid}"),
            "real, effective, saved, fs gid"
        );
        assert!(
            groups.split(' ').all(|g| g != "0"),
            "root's groups do not follow the worker: {groups}"
        );
        // What `ps` shows.
        let ps = Command::new("ps")
            .args(["-o", "user=,group=", "-p", &pid.to_string()])
            .output()
            .unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        assert_eq!(
            ps.split_whitespace().collect::<Vec<_>>(),
            ["nobody", "nogroup"],
            "ps -o user,group"
        );
        // argv says so too.
        let argv = testkit::cmdline(*pid).unwrap().join(" ");
        assert!(argv.contains("--user=nobody --group=nogroup"), "{argv}");
    }
    // The master keeps root, and the workers serve.
    assert_eq!(ids(m.pid().as_raw()).0, "0 0 0 0");
    let addr = testkit::listening_addr(&m.stdout);
    let answer: String = wait_for(DEADLINE, "an answer", || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    });
    assert!(answer.starts_with("pid "), "{answer}");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}

#[test]
fn explicit_supplementary_groups_replace_the_users() {
    if skip_unless_root() {
        return;
    }
    let dir = TempDir::new("privileges");
    let bin = world_executable_fixture(&dir);
    let m = Master::start_program(
        &bin,
        &[
            "--workers",
            "1",
            "--mode",
            "sleep",
            "--user",
            "nobody",
            "--groups",
            "nogroup,12345",
        ],
    );
    let pid = m.wait_workers(1, "id")["0"];
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    let (_, _, groups) = ids(pid);
    let mut got: Vec<u32> = groups.split(' ').map(|g| g.parse().unwrap()).collect();
    got.sort();
    let mut want = vec![nogroup.gid.as_raw(), 12345];
    want.sort();
    assert_eq!(got, want, "the kernel keeps the list sorted");
}

#[test]
fn an_unknown_user_is_one_line_at_start() {
    let mut m = Master::start_program(
        env!("CARGO_BIN_EXE_fx-master"),
        &["--workers", "2", "--user", "no-such-user-prefork"],
    );
    assert_eq!(m.wait_exit(DEADLINE), 1);
    m.wait_output_closed(DEADLINE);
    let err: Vec<String> = m
        .stderr
        .all()
        .into_iter()
        .filter(|l| l.starts_with("prefork:"))
        .collect();
    assert_eq!(
        err,
        ["prefork: invalid setting: unknown user \"no-such-user-prefork\" (runtime option user)"]
    );
    assert!(m.workers().is_empty(), "nothing was started");
}
