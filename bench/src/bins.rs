//! The binaries under test: built in release mode with the `cargo` that runs the benchmark, and
//! found next to its own executable.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The binaries under test.
#[derive(Debug)]
pub struct Bins {
    /// `sample-warp-like`.
    pub warp: PathBuf,
    /// `bench-sleeper`, a cheap prefork master whose workers only accept.
    pub sleeper: PathBuf,
    /// `bench-baseline`, the same HTTP stack in one process.
    pub baseline: PathBuf,
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
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("release"))
        .context("odd executable path")?;
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
        sleeper: find("bench-sleeper")?,
        baseline: find("bench-baseline")?,
    })
}
