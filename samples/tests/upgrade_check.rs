//! An upgrade's check runs what the new binary's master would refuse at start: a new build
//! whose settings are invalid (here, `sample-job-worker` told to forward `SIGHUP`, which the
//! master reloads on) is refused by the check, and the running master and its workers are left
//! as they were. (Without the settings in the check, the new image would exec, fail to start,
//! and take every worker down with it.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use testkit::{DEADLINE, Master, Signal, TempDir, alive, ppid, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sample-job-worker");

/// `content` at `dir/name`, executable, renamed into place (no `ETXTBSY` on a file being
/// written).
fn executable(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.join(name);
    std::fs::rename(&tmp, &p).unwrap();
    p
}

#[test]
fn a_new_build_with_settings_the_master_refuses_fails_its_check() {
    let dir = TempDir::new("upgrade-check");
    let spool = dir.path().join("spool");
    let bin = dir.path().join("sample-job-worker");
    let real = dir.path().join("real");
    std::fs::copy(BIN, &real).unwrap();
    std::fs::copy(BIN, dir.path().join(".first")).unwrap();
    std::fs::rename(dir.path().join(".first"), &bin).unwrap();
    let mut m = Master::start_program(&bin, &["--spool", spool.to_str().unwrap(), "-w", "2"]);
    let workers = m.wait_workers(2, "id");
    m.stderr
        .wait_count(DEADLINE, 2, &|l| l.contains("taking jobs"));

    // The new build: the same program, started with a forward of SIGHUP (refused at start).
    let script = format!(
        "#!/bin/bash\nexec -a \"$0\" {} --forward HUP:USR1 \"$@\"\n",
        real.display()
    );
    let wrapper = executable(dir.path(), "wrapper", script.as_bytes());
    std::fs::rename(&wrapper, &bin).unwrap();
    m.signal(Signal::SIGUSR2);
    let refused = m
        .stderr
        .wait_line(DEADLINE, |l| l.contains("upgrade refused"));
    assert!(refused.contains("failed its check"), "{refused}");
    assert!(
        m.stderr
            .all()
            .iter()
            .any(|l| l.contains("upgrade check failed") && l.contains("cannot forward SIGHUP")),
        "the check child said why: {:#?}",
        m.stderr.all()
    );
    assert!(m.running(), "the master runs on");
    for (id, pid) in &workers {
        assert!(
            alive(*pid) && ppid(*pid) == Some(m.pid().as_raw()),
            "worker {id} (pid {pid}) serves on"
        );
    }
    assert_eq!(m.workers_by_arg("id"), workers, "no worker replaced");
    // Still supervising after it.
    m.signal(Signal::SIGHUP);
    wait_until(DEADLINE, "a reload after the refused upgrade", || {
        let now = m.workers_by_arg("id");
        now.len() == 2 && now.iter().all(|(id, pid)| workers[id] != *pid)
    });
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(DEADLINE), 0);
}
