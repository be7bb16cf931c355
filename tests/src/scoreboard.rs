//! A master's scoreboard seen from outside: the test opens the memory file through the master's
//! fd table (`/proc/<master>/fd/N`, the `memfd:prefork-scoreboard` link) and reads the slots,
//! as the master would (layout in `prefork_core::scoreboard`). Reads are snapshots: a slot
//! read while it changes may mix two moments, which the tests' counts tolerate.

use std::io::Read;
use std::path::PathBuf;

/// One slot as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Slot number.
    pub slot: usize,
    /// The worker's pid (0: free).
    pub pid: u64,
    /// Last heartbeat, CLOCK_MONOTONIC ns (0: never).
    pub beat_ns: u64,
    /// Requests served.
    pub served: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// 0 free, 1 starting, 2 ready, 3 draining.
    pub state: u64,
}

/// The slot state of a worker that said it is ready and was not asked to stop.
pub const READY: u64 = 2;

/// A master's scoreboard file.
#[derive(Debug)]
pub struct Scoreboard {
    path: PathBuf,
}

impl Scoreboard {
    /// The scoreboard of `master`, if it holds one.
    pub fn of(master: i32) -> Option<Scoreboard> {
        let dir = std::fs::read_dir(format!("/proc/{master}/fd")).ok()?;
        dir.filter_map(Result::ok).find_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .contains("memfd:prefork-scoreboard")
                .then(|| Scoreboard { path: e.path() })
        })
    }

    /// The first `n` slots.
    pub fn slots(&self, n: usize) -> Vec<SlotSnapshot> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut buf = vec![0u8; (n + 1) * 64];
        if f.read_exact(&mut buf).is_err() {
            return Vec::new();
        }
        let word = |b: &[u8], i: usize| {
            u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        };
        (0..n)
            .map(|slot| {
                let b = &buf[(slot + 1) * 64..(slot + 2) * 64];
                SlotSnapshot {
                    slot,
                    pid: word(b, 0),
                    beat_ns: word(b, 1),
                    served: word(b, 2),
                    in_flight: word(b, 3),
                    state: word(b, 4),
                }
            })
            .collect()
    }

    /// How many of the first `n` slots hold a ready worker (said ready, not asked to stop).
    pub fn ready(&self, n: usize) -> usize {
        self.slots(n)
            .iter()
            .filter(|s| s.pid != 0 && s.state == READY)
            .count()
    }
}
