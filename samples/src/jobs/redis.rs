//! The Redis queue: the same guarantees as the spool, for workers on several hosts.
//!
//! ```text
//! <prefix>:queue                          list: jobs waiting (LPUSH in, taken from the right)
//! <prefix>:processing:<host>:<pid>        list: the jobs that process holds
//! <prefix>:workers                        set: every processing list that exists
//! <prefix>:results                        hash: job id → result, set once (HSETNX)
//! ```
//!
//! A job is one list element, `id=<job-id>`, a newline, and the spool's job body.
//!
//! * **Claim**: `BLMOVE <prefix>:queue <processing list> RIGHT LEFT <timeout>`: atomic, so a job
//!   is always in exactly one list.
//! * **Complete**: `HSETNX <prefix>:results <id> <result>` (the first result wins), then
//!   `LREM` the job from the processing list.
//! * **Recover**: the master, from its exit hook, once the pid is reaped, `LMOVE`s every element
//!   of that pid's processing list back to the queue, one by one (each move is atomic: a master
//!   that dies half-way loses nothing), then removes the list from the set.
//! * **Recover at start**: the processing lists of this host whose pid is no longer alive. (A
//!   list is named by host and pid, so masters on several hosts share one queue; a pid reused by
//!   an unrelated process keeps its list until a later start.)

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::resp::{Conn, RedisUrl};
use super::{Claimer, Counts, Job, Recorded, WorkerQueue};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn key(prefix: &str, what: &str) -> String {
    format!("{prefix}:{what}")
}

/// This host's name, as the processing lists carry it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn processing(prefix: &str, pid: i32) -> String {
    format!("{prefix}:processing:{}:{pid}", host())
}

fn element(job: &Job) -> Vec<u8> {
    format!("id={}\n{}", job.id, job.body()).into_bytes()
}

fn parse_element(raw: &[u8]) -> io::Result<Job> {
    let text = String::from_utf8_lossy(raw);
    let (first, body) = text.split_once('\n').unwrap_or((&text, ""));
    let id = first
        .strip_prefix("id=")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a job without an id= line"))?;
    Ok(Job::parse(id, body))
}

fn connect(url: &RedisUrl) -> io::Result<Conn> {
    Conn::connect(url, CONNECT_TIMEOUT, IO_TIMEOUT)
        .map_err(|e| io::Error::new(e.kind(), format!("redis at {}: {e}", url.addr)))
}

/// A worker process's processing list, registered in `<prefix>:workers`.
#[derive(Debug)]
pub struct RedisWorker {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    url: RedisUrl,
    prefix: String,
    list: String,
}

impl RedisWorker {
    /// Registers this process's processing list. Jobs already in it (a dead process of this
    /// host had the same pid) go back to the queue first.
    pub fn open(url: &RedisUrl, prefix: &str) -> io::Result<RedisWorker> {
        let pid = std::process::id() as i32;
        let list = processing(prefix, pid);
        let stale = recover(url, prefix, pid)?;
        if stale > 0 {
            tracing::warn!(jobs = stale, "put back stale claims found under this pid");
        }
        let mut c = connect(url)?;
        c.cmd(&[b"SADD", key(prefix, "workers").as_bytes(), list.as_bytes()])?;
        Ok(RedisWorker {
            inner: Arc::new(Shared {
                url: url.clone(),
                prefix: prefix.to_string(),
                list,
            }),
        })
    }
}

impl WorkerQueue for RedisWorker {
    fn claimer(&self) -> io::Result<Box<dyn Claimer>> {
        Ok(Box::new(RedisClaimer {
            conn: connect(&self.inner.url)?,
            inner: self.inner.clone(),
            held: HashMap::new(),
        }))
    }
}

struct RedisClaimer {
    conn: Conn,
    inner: Arc<Shared>,
    /// The exact elements in hand, by job id, for `LREM`.
    held: HashMap<String, Vec<u8>>,
}

impl Claimer for RedisClaimer {
    fn claim(&mut self, wait: Duration) -> io::Result<Option<Job>> {
        let secs = format!("{:.3}", wait.as_secs_f64().max(0.01));
        let reply = self.conn.cmd(&[
            b"BLMOVE",
            key(&self.inner.prefix, "queue").as_bytes(),
            self.inner.list.as_bytes(),
            b"RIGHT",
            b"LEFT",
            secs.as_bytes(),
        ])?;
        let Some(raw) = reply.into_bulk() else {
            return Ok(None);
        };
        let job = parse_element(&raw)?;
        self.held.insert(job.id.clone(), raw);
        Ok(Some(job))
    }

    fn complete(&mut self, job: &Job, result: &str) -> io::Result<Recorded> {
        let set = self.conn.cmd(&[
            b"HSETNX",
            key(&self.inner.prefix, "results").as_bytes(),
            job.id.as_bytes(),
            result.as_bytes(),
        ])?;
        let recorded = if set.as_int() == Some(1) {
            Recorded::First
        } else {
            Recorded::Duplicate
        };
        let raw = self.held.remove(&job.id).unwrap_or_else(|| element(job));
        self.conn
            .cmd(&[b"LREM", self.inner.list.as_bytes(), b"1", &raw])?;
        Ok(recorded)
    }
}

/// The master's recovery of a reaped process of this host: see the module docs.
pub fn recover(url: &RedisUrl, prefix: &str, pid: i32) -> io::Result<usize> {
    recover_list(url, prefix, &processing(prefix, pid))
}

fn recover_list(url: &RedisUrl, prefix: &str, list: &str) -> io::Result<usize> {
    let mut c = connect(url)?;
    let queue = key(prefix, "queue");
    let mut back = 0;
    loop {
        let r = c.cmd(&[
            b"LMOVE",
            list.as_bytes(),
            queue.as_bytes(),
            b"RIGHT",
            b"RIGHT",
        ])?;
        if r.into_bulk().is_none() {
            break;
        }
        back += 1;
    }
    c.cmd(&[b"SREM", key(prefix, "workers").as_bytes(), list.as_bytes()])?;
    Ok(back)
}

/// The master's recovery at start: the lists of this host's dead processes.
pub fn recover_orphans(url: &RedisUrl, prefix: &str) -> io::Result<usize> {
    let mut c = connect(url)?;
    let mine = format!("{prefix}:processing:{}:", host());
    let lists = c
        .cmd(&[b"SMEMBERS", key(prefix, "workers").as_bytes()])?
        .into_bulks();
    drop(c);
    let mut back = 0;
    for list in lists {
        let list = String::from_utf8_lossy(&list).into_owned();
        let Some(pid) = list.strip_prefix(&mine).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        back += recover_list(url, prefix, &list)?;
    }
    Ok(back)
}

/// Adds jobs (`LPUSH`, a thousand per command).
pub fn enqueue(url: &RedisUrl, prefix: &str, jobs: &[Job]) -> io::Result<()> {
    let mut c = connect(url)?;
    let queue = key(prefix, "queue");
    for chunk in jobs.chunks(1000) {
        let elements: Vec<Vec<u8>> = chunk.iter().map(element).collect();
        let mut args: Vec<&[u8]> = vec![b"LPUSH", queue.as_bytes()];
        args.extend(elements.iter().map(Vec::as_slice));
        c.cmd(&args)?;
    }
    Ok(())
}

/// How many jobs are queued, claimed (in any processing list) and done.
pub fn counts(url: &RedisUrl, prefix: &str) -> io::Result<Counts> {
    let mut c = connect(url)?;
    let int = |r: super::resp::Reply| r.as_int().unwrap_or(0).max(0) as usize;
    let queued = int(c.cmd(&[b"LLEN", key(prefix, "queue").as_bytes()])?);
    let done = int(c.cmd(&[b"HLEN", key(prefix, "results").as_bytes()])?);
    let mut claimed = 0;
    for list in c
        .cmd(&[b"SMEMBERS", key(prefix, "workers").as_bytes()])?
        .into_bulks()
    {
        claimed += int(c.cmd(&[b"LLEN", &list])?);
    }
    Ok(Counts {
        queued,
        claimed,
        done,
    })
}

/// How many jobs `pid` (of this host) holds.
pub fn held_by(url: &RedisUrl, prefix: &str, pid: i32) -> io::Result<usize> {
    let mut c = connect(url)?;
    let r = c.cmd(&[b"LLEN", processing(prefix, pid).as_bytes()])?;
    Ok(r.as_int().unwrap_or(0).max(0) as usize)
}

/// The ids of the jobs in the queue.
pub fn queued_ids(url: &RedisUrl, prefix: &str) -> io::Result<Vec<String>> {
    let mut c = connect(url)?;
    let all = c
        .cmd(&[b"LRANGE", key(prefix, "queue").as_bytes(), b"0", b"-1"])?
        .into_bulks();
    all.iter()
        .map(|raw| parse_element(raw).map(|j| j.id))
        .collect()
}

/// Every recorded result, job id → result (`HGETALL`), for checks.
pub fn results(url: &RedisUrl, prefix: &str) -> io::Result<HashMap<String, String>> {
    let mut c = connect(url)?;
    let flat = c
        .cmd(&[b"HGETALL", key(prefix, "results").as_bytes()])?
        .into_bulks();
    Ok(flat
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_round_trip() {
        let j = Job::new(1, 3, "data");
        assert_eq!(parse_element(&element(&j)).unwrap(), j);
        assert!(parse_element(b"no id").is_err());
    }
}
