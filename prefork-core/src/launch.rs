//! The program's identity: what a worker execs, and the argv the master was started with.
//!
//! Recorded once, first thing (by `default_main`, `args()` or the master), so a later change of
//! directory does not change what "the program" is. A worker is an exec of [`Launch::path`]:
//! `argv[0]` made absolute when it contains a `/`, else what `/proc/self/exe` said at start. A
//! binary renamed over that path is what the next worker runs (a code upgrade by `SIGHUP`);
//! the master itself keeps its old code.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How the program was started.
#[derive(Debug)]
pub(crate) struct Launch {
    /// The file to exec for a worker.
    pub path: PathBuf,
    /// `argv[0]` as given (what `ps` shows).
    pub argv0: OsString,
    /// The master's own arguments (after `argv[0]`).
    pub args: Vec<OsString>,
}

static LAUNCH: OnceLock<Launch> = OnceLock::new();

/// Records how the program was started; later calls return the first record.
pub(crate) fn launch() -> &'static Launch {
    LAUNCH.get_or_init(|| {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        let args = argv.collect();
        let path = resolve_program(&argv0);
        Launch { path, argv0, args }
    })
}

fn resolve_program(argv0: &OsStr) -> PathBuf {
    let p = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        if let Ok(cwd) = std::env::current_dir() {
            // `./app` → `/srv/app`: `.` components dropped (lexically: a symlink in the path is
            // kept, so a deploy that switches it is followed).
            return cwd.join(p).components().collect();
        }
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}
