//! The spool queue: a directory, no server.
//!
//! ```text
//! DIR/queue/<job-id>.job            a job waiting (body: `work_ms=N`, a newline, the data)
//! DIR/claimed/<worker-pid>/<job-id>.job
//!                                   claimed by that process: an atomic rename out of queue/
//! DIR/done/<job-id>.result          its result, written once
//! DIR/tmp/                          files being written (same file system, for the renames)
//! ```
//!
//! * **Enqueue**: write `tmp/<id>.job.new`, rename it into `queue/` (a worker never sees half
//!   a job).
//! * **Claim**: `rename(queue/<id>.job, claimed/<pid>/<id>.job)`. Of several processes trying
//!   the same job, exactly one rename succeeds; the others get `ENOENT` and try the next.
//! * **Complete**: write the result to `tmp/`, `link` it to `done/<id>.result` (which fails if
//!   that name exists: the first result is the one recorded), then remove the claim.
//! * **Recover**: the master, from its exit hook, once the pid is reaped, renames every file of
//!   `claimed/<pid>/` back into `queue/` (or drops it if `done/` has its result) and removes the
//!   directory.
//! * **Recover at start**: each worker holds an exclusive `flock` on its claim directory for
//!   its whole life, and the kernel releases it when the process dies, however it dies. A
//!   starting master takes every claim directory whose lock it can get (nobody alive holds it)
//!   and recovers it: what a master killed with its workers left behind.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::{Claimer, Counts, Job, Recorded, WorkerQueue};

/// How long an idle claimer sleeps between looks at an empty queue.
const POLL: Duration = Duration::from_millis(25);

fn sub(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Creates the layout under `dir` if it is not there.
pub fn create_layout(dir: &Path) -> io::Result<()> {
    for d in ["queue", "claimed", "done", "tmp"] {
        std::fs::create_dir_all(sub(dir, d)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", sub(dir, d).display()),
            )
        })?;
    }
    Ok(())
}

/// The job id of a `*.job` file name.
fn job_id(name: &std::ffi::OsStr) -> Option<&str> {
    name.to_str()?.strip_suffix(".job")
}

/// A worker process's claim directory, locked for its life.
#[derive(Debug)]
pub struct SpoolWorker {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    mine: PathBuf,
    /// Names temp files uniquely across this process's threads.
    seq: AtomicU64,
    _lock: Flock<File>,
}

impl Drop for Shared {
    /// A worker that stops cleanly removes its (empty) claim directory; one that holds claims
    /// leaves them for the master. The lock is released after this, with the fields.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.mine);
    }
}

impl SpoolWorker {
    /// Creates and locks `claimed/<this pid>/`. Jobs already in it (left by a dead process that
    /// had the same pid) go back to the queue first.
    pub fn open(dir: &Path) -> io::Result<SpoolWorker> {
        create_layout(dir)?;
        let mine = sub(dir, "claimed").join(std::process::id().to_string());
        std::fs::create_dir_all(&mine)?;
        let lock = Flock::lock(File::open(&mine)?, FlockArg::LockExclusiveNonblock).map_err(
            |(_, errno)| {
                io::Error::new(
                    io::Error::from(errno).kind(),
                    format!("cannot lock {}: {errno}", mine.display()),
                )
            },
        )?;
        let stale = requeue_claims(dir, &mine)?;
        if stale > 0 {
            tracing::warn!(jobs = stale, "put back stale claims found under this pid");
        }
        Ok(SpoolWorker {
            inner: Arc::new(Shared {
                dir: dir.to_path_buf(),
                mine,
                seq: AtomicU64::new(0),
                _lock: lock,
            }),
        })
    }
}

impl WorkerQueue for SpoolWorker {
    fn claimer(&self) -> io::Result<Box<dyn Claimer>> {
        Ok(Box::new(SpoolClaimer {
            inner: self.inner.clone(),
        }))
    }
}

struct SpoolClaimer {
    inner: Arc<Shared>,
}

impl SpoolClaimer {
    fn try_claim(&self) -> io::Result<Option<Job>> {
        let queue = sub(&self.inner.dir, "queue");
        for entry in std::fs::read_dir(&queue)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = job_id(&name) else { continue };
            let claimed = self.inner.mine.join(&name);
            match std::fs::rename(entry.path(), &claimed) {
                Ok(()) => {
                    let body = std::fs::read_to_string(&claimed)?;
                    return Ok(Some(Job::parse(id, &body)));
                }
                // Another process (or thread) took it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

impl Claimer for SpoolClaimer {
    fn claim(&mut self, wait: Duration) -> io::Result<Option<Job>> {
        let job = self.try_claim()?;
        if job.is_none() {
            std::thread::sleep(wait.min(POLL));
        }
        Ok(job)
    }

    fn complete(&mut self, job: &Job, result: &str) -> io::Result<Recorded> {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = sub(&self.inner.dir, "tmp").join(format!(
            "{}.{}.{n}.result",
            job.id,
            std::process::id()
        ));
        std::fs::write(&tmp, result)?;
        let done = sub(&self.inner.dir, "done").join(format!("{}.result", job.id));
        let recorded = match std::fs::hard_link(&tmp, &done) {
            Ok(()) => Ok(Recorded::First),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Recorded::Duplicate),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        let recorded = recorded?;
        std::fs::remove_file(self.inner.mine.join(format!("{}.job", job.id)))?;
        Ok(recorded)
    }
}

/// Moves every claim in `claims` back to the queue (or drops it if its result exists); returns
/// how many went back. The directory stays.
fn requeue_claims(dir: &Path, claims: &Path) -> io::Result<usize> {
    let mut back = 0;
    for entry in std::fs::read_dir(claims)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = job_id(&name) else { continue };
        if sub(dir, "done").join(format!("{id}.result")).exists() {
            std::fs::remove_file(entry.path())?;
        } else {
            std::fs::rename(entry.path(), sub(dir, "queue").join(&name))?;
            back += 1;
        }
    }
    Ok(back)
}

/// Removes what `pid` left in `tmp/` (a result it was writing when it died).
fn remove_temp_files(dir: &Path, pid: i32) -> io::Result<()> {
    let mark = format!(".{pid}.");
    for entry in std::fs::read_dir(sub(dir, "tmp"))? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.contains(&mark))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The master's recovery of a reaped process: see the module docs.
pub fn recover(dir: &Path, pid: i32) -> io::Result<usize> {
    let claims = sub(dir, "claimed").join(pid.to_string());
    if !claims.exists() {
        return Ok(0);
    }
    let back = requeue_claims(dir, &claims)?;
    remove_temp_files(dir, pid)?;
    std::fs::remove_dir(&claims)?;
    Ok(back)
}

/// The master's recovery at start: every claim directory whose lock is free.
pub fn recover_orphans(dir: &Path) -> io::Result<usize> {
    create_layout(dir)?;
    let mut back = 0;
    for entry in std::fs::read_dir(sub(dir, "claimed"))? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(f) = File::open(entry.path()) else {
            continue;
        };
        // Held: its process lives. Free: nobody alive can add to it any more.
        let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        back += requeue_claims(dir, &entry.path())?;
        remove_temp_files(dir, pid)?;
        std::fs::remove_dir(entry.path())?;
        drop(lock);
    }
    Ok(back)
}

/// Adds jobs: see the module docs.
pub fn enqueue(dir: &Path, jobs: &[Job]) -> io::Result<()> {
    create_layout(dir)?;
    for job in jobs {
        let tmp = sub(dir, "tmp").join(format!("{}.job.new", job.id));
        std::fs::write(&tmp, job.body())?;
        std::fs::rename(&tmp, sub(dir, "queue").join(format!("{}.job", job.id)))?;
    }
    Ok(())
}

fn count_suffix(dir: &Path, suffix: &str) -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        if entry?
            .file_name()
            .to_str()
            .is_some_and(|s| s.ends_with(suffix))
        {
            n += 1;
        }
    }
    Ok(n)
}

/// How many jobs are queued, claimed and done.
pub fn counts(dir: &Path) -> io::Result<Counts> {
    let mut claimed = 0;
    for entry in std::fs::read_dir(sub(dir, "claimed"))? {
        // A directory may vanish under us (its process ended and was recovered).
        match count_suffix(&entry?.path(), ".job") {
            Ok(n) => claimed += n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Counts {
        queued: count_suffix(&sub(dir, "queue"), ".job")?,
        claimed,
        done: count_suffix(&sub(dir, "done"), ".result")?,
    })
}

/// How many jobs `pid` holds.
pub fn held_by(dir: &Path, pid: i32) -> io::Result<usize> {
    match count_suffix(&sub(dir, "claimed").join(pid.to_string()), ".job") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        r => r,
    }
}

/// Every result: job id → its file's content.
pub fn results(dir: &Path) -> io::Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    for entry in std::fs::read_dir(sub(dir, "done"))? {
        let entry = entry?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".result"))
        {
            out.insert(id.to_string(), std::fs::read_to_string(entry.path())?);
        }
    }
    Ok(out)
}

/// The ids in `queue/`.
pub fn queued_ids(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sub(dir, "queue"))? {
        if let Some(id) = job_id(&entry?.file_name()) {
            out.push(id.to_string());
        }
    }
    Ok(out)
}
