//! Handing an open fd down to a process a test starts, at a chosen number.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the process that `cmd` starts inherit this process's open `fd` as fd `target`, without
/// close-on-exec (with `fd == target`, it only clears close-on-exec). `fd` must stay open until
/// the spawn.
pub fn inherit_fd(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child before exec; it only calls dup2 and fcntl,
    // which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // dup2(fd, fd) would keep close-on-exec: clear it explicitly too.
            if nix::libc::dup2(fd, target) < 0
                || nix::libc::fcntl(target, nix::libc::F_SETFD, 0) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
