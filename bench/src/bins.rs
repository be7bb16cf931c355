//! The binaries under test: built in release mode with the `cargo` that runs the benchmark, and
//! found next to its own executable; and, for a comparison with the code of an older commit, a
//! binary built from that commit ([`old_build`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::guard;

/// The binaries under test.
#[derive(Debug)]
pub struct Bins {
    /// `sample-warp-like`.
    pub warp: PathBuf,
    /// `sample-axum`.
    pub axum: PathBuf,
    /// `bench-sleeper`, a cheap prefork master whose workers only accept.
    pub sleeper: PathBuf,
    /// `bench-baseline`, the same HTTP stack in one process.
    pub baseline: PathBuf,
    /// The cargo target directory the binaries are in (`target/`).
    pub target_dir: PathBuf,
    /// `--skip-build`: build nothing, use what is there (old builds too).
    pub skip_build: bool,
}

/// The workspace root (where `BENCHMARKS.md` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds the binaries in release mode and finds them next to this executable.
pub fn build_and_locate(skip_build: bool) -> Result<Bins> {
    if !skip_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("bench: cargo build --release -p samples -p bench --bins");
        let st = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "samples",
                "-p",
                "bench",
                "--bins",
            ])
            .current_dir(workspace_root())
            .status()
            .context("cannot run cargo")?;
        if !st.success() {
            bail!("cargo build failed: {st}");
        }
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    // target/<profile>/bench → target/release/…
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("odd executable path")?
        .to_path_buf();
    let dir = target_dir.join("release");
    let find = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!("{} is missing (build it with --release)", p.display())
        }
    };
    Ok(Bins {
        warp: find("sample-warp-like")?,
        axum: find("sample-axum")?,
        sleeper: find("bench-sleeper")?,
        baseline: find("bench-baseline")?,
        target_dir,
        skip_build,
    })
}

/// A binary built from an old commit, or why there is none.
#[derive(Debug)]
pub enum Old {
    /// Built (now or by an earlier run): its path.
    Built(PathBuf),
    /// Not available here (no git, the commit is not in this clone, `--skip-build` without a
    /// cached build): the reason, for a "not measured" row.
    Unavailable(String),
}

/// How long building an old commit may take (from scratch, on 2 cores).
const OLD_BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// The binary `bin` of package `package` built in release mode from `commit` of this
/// repository, with the same toolchain: the commit is checked out in a temporary detached
/// worktree (removed afterwards) and built there with its own lock file into
/// `target/bench-old-<full hash>/`, so the main target directory is not touched. The build is
/// cached: when the binary is there for that commit, nothing is built.
///
/// Errors only when the build itself fails; a missing git, a commit this clone does not have (a
/// shallow clone) or `--skip-build` without a cached build are [`Old::Unavailable`].
pub fn old_build(bins: &Bins, commit: &str, package: &str, bin: &str) -> Result<Old> {
    let root = workspace_root();
    let full = match git(
        &root,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{commit}^{{commit}}"),
        ],
    ) {
        Err(e) => return Ok(Old::Unavailable(format!("git is not available ({e})"))),
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => {
            let shallow = git(&root, &["rev-parse", "--is-shallow-repository"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true");
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let why = if shallow {
                format!("commit {commit} is not in this shallow clone")
            } else if err.is_empty() {
                format!("commit {commit} is not in this repository")
            } else {
                format!("commit {commit} not found: {err}")
            };
            return Ok(Old::Unavailable(why));
        }
    };
    let out_dir = bins.target_dir.join(format!("bench-old-{full}"));
    let path = out_dir.join("release").join(bin);
    if path.is_file() {
        return Ok(Old::Built(path));
    }
    if bins.skip_build {
        return Ok(Old::Unavailable(format!(
            "--skip-build, and {} is not built",
            path.display()
        )));
    }
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let tree = TempWorktree::add(&root, &full)?;
    let log_path = out_dir.join("build.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "bench: building {bin} at {commit} in {} (once; log: {})",
        tree.path.display(),
        log_path.display()
    );
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .current_dir(&tree.path)
        .env("CARGO_TARGET_DIR", &out_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot run cargo")?;
    let status = guard::wait_bounded(
        &mut child,
        OLD_BUILD_TIMEOUT,
        &format!("building {bin} at {commit}"),
    )?;
    drop(tree);
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        bail!(
            "building {bin} at {commit} failed ({status}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    if !path.is_file() {
        bail!("the build of {commit} made no {}", path.display());
    }
    Ok(Old::Built(path))
}

/// `git -C dir args…`, its output.
fn git(dir: &Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// A detached worktree of a commit in a temporary directory, removed when dropped.
#[derive(Debug)]
struct TempWorktree {
    root: PathBuf,
    path: PathBuf,
}

impl TempWorktree {
    fn add(root: &Path, commit: &str) -> Result<TempWorktree> {
        let short = commit.get(..12).unwrap_or(commit);
        let path =
            std::env::temp_dir().join(format!("prefork-bench-old-{short}-{}", std::process::id()));
        let path_s = path.to_string_lossy().into_owned();
        let out = git(root, &["worktree", "add", "--detach", &path_s, commit])
            .context("cannot run git worktree add")?;
        let tree = TempWorktree {
            root: root.to_path_buf(),
            path,
        };
        if !out.status.success() {
            bail!(
                "git worktree add {path_s} {commit} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(tree)
    }
}

impl Drop for TempWorktree {
    fn drop(&mut self) {
        let path = self.path.to_string_lossy().into_owned();
        let removed = git(&self.root, &["worktree", "remove", "--force", &path])
            .is_ok_and(|o| o.status.success());
        if !removed {
            let _ = std::fs::remove_dir_all(&self.path);
            let _ = git(&self.root, &["worktree", "prune"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_this_clone_lacks_is_not_measured_rather_than_failed() {
        let bins = Bins {
            warp: PathBuf::new(),
            axum: PathBuf::new(),
            sleeper: PathBuf::new(),
            baseline: PathBuf::new(),
            target_dir: std::env::temp_dir().join("prefork-bench-no-target"),
            skip_build: false,
        };
        // No such object (with git) or no git at all: either way a reason, not an error.
        match old_build(
            &bins,
            "0000000000000000000000000000000000000bad",
            "samples",
            "x",
        ) {
            Ok(Old::Unavailable(why)) => assert!(!why.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(!bins.target_dir.exists());
    }
}
