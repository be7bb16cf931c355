//! `sample-job-worker`'s configuration: command-line flags, overridden by a file that is read
//! again on every `SIGHUP`.
//!
//! The file has one `key = value` per line; `#` starts a comment; every key is optional:
//!
//! ```text
//! # /etc/job-worker.conf
//! workers = 4                       # worker processes (a fixed pool)
//! concurrency = 2                   # jobs each worker runs at once (threads)
//! spool = /var/spool/jobs           # the queue: a spool directory …
//! # redis = redis://127.0.0.1:6379/0   … or a Redis server (one of the two)
//! prefix = prefork-jobs             # Redis key prefix
//! min_spare = 1                     # an adaptive pool instead of `workers`: idle workers
//! max_spare = 3                     #   kept between min_spare and max_spare,
//! max_workers = 16                  #   never more than max_workers
//! ```
//!
//! An unknown key, a bad number or a contradiction (`spool` and `redis`, `min_spare` above
//! `max_spare`) makes the whole file invalid: at start the program says why in one line and
//! exits 2; on `SIGHUP` it logs why and keeps what runs.

use std::path::{Path, PathBuf};

use super::{QueueSpec, RedisUrl};

/// The adaptive pool's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spare {
    /// Fewest idle workers.
    pub min_spare: u32,
    /// Most idle workers.
    pub max_spare: u32,
    /// Most workers in all.
    pub max_workers: u32,
}

/// Everything the master needs to declare its workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Worker processes (a fixed pool; with `spare`, the most that may run is `max_workers`).
    pub workers: u32,
    /// Jobs each worker runs at once.
    pub concurrency: u32,
    /// The queue.
    pub queue: QueueSpec,
    /// The adaptive pool's bounds, if it is on.
    pub spare: Option<Spare>,
}

/// What the flags said (every field optional except what has a default).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `-w`.
    pub workers: Option<u32>,
    /// `-c`.
    pub concurrency: Option<u32>,
    /// `--spool`.
    pub spool: Option<PathBuf>,
    /// `--redis`.
    pub redis: Option<RedisUrl>,
    /// `--prefix`.
    pub prefix: Option<String>,
    /// `--min-spare`.
    pub min_spare: Option<u32>,
    /// `--max-spare`.
    pub max_spare: Option<u32>,
    /// `--max-workers`.
    pub max_workers: Option<u32>,
}

/// The most workers or threads a value may ask for.
pub const MAX_COUNT: u32 = 1024;

fn count(key: &str, v: &str, min: u32) -> Result<u32, String> {
    let n: u32 = v
        .parse()
        .map_err(|_| format!("{key} = {v:?}: not a number"))?;
    if n < min || n > MAX_COUNT {
        return Err(format!("{key} = {n}: must be {min} ..= {MAX_COUNT}"));
    }
    Ok(n)
}

impl Flags {
    /// The flags with the file's keys laid over them.
    pub fn with_file_text(&self, text: &str) -> Result<Flags, String> {
        let mut f = self.clone();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", i + 1);
            let (k, v) = line
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| at(format!("{line:?} is not `key = value`")))?;
            match k {
                "workers" => f.workers = Some(count(k, v, 1).map_err(at)?),
                "concurrency" => f.concurrency = Some(count(k, v, 1).map_err(at)?),
                "spool" => {
                    f.spool = Some(PathBuf::from(v));
                    f.redis = None;
                }
                "redis" => {
                    f.redis = Some(v.parse().map_err(at)?);
                    f.spool = None;
                }
                "prefix" => f.prefix = Some(v.to_string()),
                "min_spare" => f.min_spare = Some(count(k, v, 0).map_err(at)?),
                "max_spare" => f.max_spare = Some(count(k, v, 1).map_err(at)?),
                "max_workers" => f.max_workers = Some(count(k, v, 1).map_err(at)?),
                _ => return Err(at(format!("unknown key {k:?}"))),
            }
        }
        Ok(f)
    }

    /// The configuration: the flags, with `file` (if any) read and laid over them.
    pub fn load(&self, file: Option<&Path>) -> Result<Config, String> {
        let f = match file {
            None => self.clone(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                self.with_file_text(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
        };
        f.resolve()
    }

    fn resolve(&self) -> Result<Config, String> {
        let queue = match (&self.spool, &self.redis) {
            (Some(_), Some(_)) => return Err("give a spool or a redis queue, not both".into()),
            (Some(dir), None) => QueueSpec::Spool {
                dir: std::path::absolute(dir)
                    .map_err(|e| format!("spool {}: {e}", dir.display()))?,
            },
            (None, Some(url)) => QueueSpec::Redis {
                url: url.clone(),
                prefix: self.prefix.clone().unwrap_or_else(|| "prefork-jobs".into()),
            },
            (None, None) => return Err("no queue: give --spool DIR or --redis URL".into()),
        };
        let spare = match (self.min_spare, self.max_spare) {
            (None, None) => None,
            (min, max) => {
                let min_spare = min.unwrap_or(1);
                let max_spare = max.unwrap_or(min_spare.max(1) * 2);
                let max_workers = self.max_workers.unwrap_or(16);
                if min_spare > max_spare {
                    return Err(format!(
                        "min_spare ({min_spare}) is above max_spare ({max_spare})"
                    ));
                }
                if min_spare > max_workers || max_workers == 0 {
                    return Err(format!(
                        "max_workers ({max_workers}) must be at least min_spare ({min_spare}) and 1"
                    ));
                }
                Some(Spare {
                    min_spare,
                    max_spare,
                    max_workers,
                })
            }
        };
        Ok(Config {
            workers: self.workers.unwrap_or(2),
            concurrency: self.concurrency.unwrap_or(1),
            queue,
            spare,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Flags {
        Flags {
            spool: Some("/tmp/q".into()),
            ..Flags::default()
        }
    }

    #[test]
    fn the_file_overrides_the_flags() {
        let f = base()
            .with_file_text("# c\nworkers = 5\n concurrency=3 # three\n\n")
            .unwrap();
        let c = f.resolve().unwrap();
        assert_eq!((c.workers, c.concurrency), (5, 3));
        let f = base()
            .with_file_text("redis = redis://127.0.0.1:1\n")
            .unwrap();
        assert!(matches!(
            f.resolve().unwrap().queue,
            QueueSpec::Redis { .. }
        ));
    }

    #[test]
    fn bad_files_say_where() {
        let e = base()
            .with_file_text("workers = 2\nworkers = x\n")
            .unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(base().with_file_text("nope = 1").is_err());
        assert!(base().with_file_text("workers = 0").is_err());
        assert!(base().with_file_text("just words").is_err());
        let f = base()
            .with_file_text("min_spare = 3\nmax_spare = 2")
            .unwrap();
        assert!(f.resolve().is_err());
        assert!(Flags::default().resolve().is_err());
    }
}
