//! Files and directories in the system temp dir, unique to the test, removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A new path in the system temp dir, unique to this process and call:
/// `prefork-<tag>-<pid>-<n>-<unix ns>`.
fn temp_path(tag: &str) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("prefork-{tag}-{}-{n}-{nanos}", std::process::id()))
}

/// A path for a file in the system temp dir, unique to the test; the file (not created until
/// [`TempFile::write`]) is removed on drop.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// A new path named after `tag`.
    pub fn new(tag: &str) -> TempFile {
        TempFile(temp_path(tag))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates the file or replaces its content; panics on failure.
    pub fn write(&self, content: impl AsRef<[u8]>) {
        std::fs::write(&self.0, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.0.display()));
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory created in the system temp dir, unique to the test, removed with everything in
/// it on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a new directory named after `tag`; panics on failure.
    pub fn new(tag: &str) -> TempDir {
        let p = temp_path(tag);
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        TempDir(p)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
