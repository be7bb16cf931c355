//! The scoreboard: one shared-memory region, one slot per worker, that workers write and the
//! master reads. It is how the master learns that a worker still runs its loop (heartbeats) and
//! how much it served, without a message or a system call on the worker's side.
//!
//! # The region
//!
//! The master creates it once at start: a `memfd` of [`SLOTS`] + 1 blocks of 64 bytes (one
//! cache line each), sealed against any change of size (so no process can make the others
//! fault on a shrunk file), mapped shared. Each worker inherits it at the fd its boot header
//! names (laid out by the spawner after the readiness socket), maps it at boot and closes the
//! fd; the header also names its slot. Block 0 is the header; block 1 + i is slot i.
//!
//! | word | header block | slot |
//! |---|---|---|
//! | 0 | magic `prefsb01` | pid (written by the master when the worker started) |
//! | 1 | slot count | heartbeat: `CLOCK_MONOTONIC` in ns, 0 = never beat |
//! | 2 | – | requests served (completed) |
//! | 3 | – | requests in flight |
//! | 4 | – | state: 0 free, 1 starting, 2 ready, 3 draining |
//! | 5–7 | – | reserved (zero) |
//!
//! Every word is an `AtomicU64`. A beat is one relaxed store of the monotonic clock, which the
//! vDSO answers without entering the kernel; a request is two atomic additions on the way in
//! and out. The clock is system-wide, so the master compares a worker's beat with its own
//! reading directly.
//!
//! # Slots
//!
//! Every spawn through a [`Spawner`](crate::Spawner) claims a free slot (zeroed, state
//! starting) and names it in the boot header; the master records the pid once the spawn
//! returned, and frees the slot when it reaps that pid. With every slot taken (more than
//! [`SLOTS`] workers alive at once) a worker starts without one: it is neither judged nor
//! counted, and the master warns once.
//!
//! # Trust
//!
//! Workers map the whole region read-write: a buggy worker can scribble over another's slot
//! (as it could `kill` it). The master reads only through atomics and checks each slot's pid
//! word against the pid it assigned, so garbage can only make a value wrong, never crash it.
//! A process a worker forks (without exec) shares the mapping and may beat on its behalf.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::Pid;
use crate::sys::{self, SharedWords};

/// How many workers can have a slot at once. The region is `(SLOTS + 1) × 64` bytes of
/// shared memory (256 KiB of address space; only the pages of slots in use are ever touched).
pub const SLOTS: usize = 4096;

const WORDS_PER_BLOCK: usize = 8;
const MAGIC: u64 = u64::from_le_bytes(*b"prefsb01");

const PID: usize = 0;
const BEAT: usize = 1;
const SERVED: usize = 2;
const IN_FLIGHT: usize = 3;
const STATE: usize = 4;

/// A slot's state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum SlotState {
    Free = 0,
    Starting = 1,
    Ready = 2,
    Draining = 3,
}

/// The words of block `block` (0: header).
fn block(words: &[AtomicU64], block: usize) -> Option<&[AtomicU64]> {
    words.get(block * WORDS_PER_BLOCK..(block + 1) * WORDS_PER_BLOCK)
}

/// What the master saw of one worker: its slot, and its memory if asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    pub pid: Pid,
    /// Its last heartbeat, on the master's clock; `None` if it never beat.
    pub beat: Option<Instant>,
    pub served: u64,
    pub in_flight: u64,
    /// PSS in bytes (`/proc/<pid>/smaps_rollup`), when memory was read.
    pub memory: Option<u64>,
}

/// Which slots are taken, and by whom.
#[derive(Debug, Default)]
struct Table {
    /// Free slot numbers, the lowest last (popped first).
    free: Vec<u32>,
    by_pid: BTreeMap<Pid, u32>,
    warned_full: bool,
}

/// The master's side: the region, and the slot table.
#[derive(Debug)]
pub(crate) struct Board {
    fd: OwnedFd,
    map: SharedWords,
    beat_every: Option<Duration>,
    table: RefCell<Table>,
}

impl Board {
    /// Creates the region. Workers are told to beat every `beat_every` (not at all: `None`).
    pub fn new(beat_every: Option<Duration>) -> Result<Board> {
        let len = (SLOTS + 1) * WORDS_PER_BLOCK * std::mem::size_of::<u64>();
        let fd = sys::sealed_memfd(c"prefork-scoreboard", len)
            .map_err(|e| Error::sys("cannot create the scoreboard", e))?;
        let map =
            SharedWords::map(fd.as_fd()).map_err(|e| Error::sys("cannot map the scoreboard", e))?;
        if let Some(h) = block(map.words(), 0) {
            h[0].store(MAGIC, Ordering::Relaxed);
            h[1].store(SLOTS as u64, Ordering::Relaxed);
        }
        Ok(Board {
            fd,
            map,
            beat_every,
            table: RefCell::new(Table {
                free: (0..SLOTS as u32).rev().collect(),
                ..Table::default()
            }),
        })
    }

    /// The region and the slot table, for an upgrade's hand-over.
    pub(crate) fn export(&self) -> crate::upgrade::BoardState {
        crate::upgrade::BoardState {
            fd: self.fd.as_raw_fd(),
            slots: self
                .table
                .borrow()
                .by_pid
                .iter()
                .map(|(pid, &slot)| (pid.as_raw(), slot))
                .collect(),
        }
    }

    /// The region an old master handed over (its workers keep writing their slots), with its
    /// slot table.
    pub(crate) fn adopt(
        state: &crate::upgrade::BoardState,
        beat_every: Option<Duration>,
    ) -> Result<Board> {
        sys::set_cloexec_raw(state.fd)
            .map_err(|e| Error::sys("the scoreboard of the old master is not open", e))?;
        // Checked through a borrow first: a failure leaves the number open (a rollback hands
        // it back to the old image).
        let borrowed = sys::borrow_inherited(state.fd);
        if !sys::size_is_sealed(borrowed) {
            return Err(Error::InvalidSetting(
                "the scoreboard of the old master is not a sealed memfd".into(),
            ));
        }
        let map =
            SharedWords::map(borrowed).map_err(|e| Error::sys("cannot map the scoreboard", e))?;
        let header_ok = block(map.words(), 0).is_some_and(|h| {
            h[0].load(Ordering::Relaxed) == MAGIC && h[1].load(Ordering::Relaxed) == SLOTS as u64
        });
        if !header_ok {
            return Err(Error::InvalidSetting(
                "the scoreboard of the old master has another layout".into(),
            ));
        }
        // Open, checked, handed over for this image only: this is its one owner.
        let fd = sys::own_inherited(state.fd);
        let mut by_pid = BTreeMap::new();
        for &(pid, slot) in &state.slots {
            if (slot as usize) < SLOTS && pid > 0 {
                by_pid.insert(Pid::from_raw(pid), slot);
            }
        }
        let free = (0..SLOTS as u32)
            .rev()
            .filter(|s| !by_pid.values().any(|t| t == s))
            .collect();
        Ok(Board {
            fd,
            map,
            beat_every,
            table: RefCell::new(Table {
                free,
                by_pid,
                warned_full: false,
            }),
        })
    }

    /// The fd every worker inherits.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How often workers beat, if they should.
    pub fn beat_every(&self) -> Option<Duration> {
        self.beat_every
    }

    fn slot(&self, slot: u32) -> Option<&[AtomicU64]> {
        block(self.map.words(), slot as usize + 1)
    }

    /// Takes a free slot for a worker about to start: zeroed, state starting. `None` when
    /// every slot is taken (warned once).
    pub fn claim(&self) -> Option<u32> {
        let mut t = self.table.borrow_mut();
        let Some(slot) = t.free.pop() else {
            if !t.warned_full {
                t.warned_full = true;
                tracing::warn!(
                    slots = SLOTS,
                    "every scoreboard slot is taken: new workers start without one \
                     (no heartbeat or request counts for them)"
                );
            }
            return None;
        };
        if let Some(w) = self.slot(slot) {
            for word in w {
                word.store(0, Ordering::Relaxed);
            }
            w[STATE].store(SlotState::Starting as u64, Ordering::Release);
        }
        Some(slot)
    }

    /// The worker that got `slot` started as `pid`.
    pub fn assign(&self, slot: u32, pid: Pid) {
        if let Some(w) = self.slot(slot) {
            w[PID].store(pid.as_raw() as u64, Ordering::Release);
        }
        self.table.borrow_mut().by_pid.insert(pid, slot);
    }

    /// A claimed slot whose spawn failed.
    pub fn unclaim(&self, slot: u32) {
        self.free_slot(slot);
    }

    /// `pid` was reaped: its slot (if it had one) is free again.
    pub fn release(&self, pid: Pid) {
        let slot = self.table.borrow_mut().by_pid.remove(&pid);
        if let Some(slot) = slot {
            self.free_slot(slot);
        }
    }

    fn free_slot(&self, slot: u32) {
        if let Some(w) = self.slot(slot) {
            w[STATE].store(SlotState::Free as u64, Ordering::Release);
            w[PID].store(0, Ordering::Relaxed);
        }
        self.table.borrow_mut().free.push(slot);
    }

    /// Reads the slots of `pids` (those that have one), and their PSS if `memory`.
    pub fn observe(&self, pids: &[Pid], memory: bool) -> Vec<Observation> {
        let now = Instant::now();
        let now_ns = sys::monotonic_ns();
        let t = self.table.borrow();
        let mut out = Vec::with_capacity(pids.len());
        for &pid in pids {
            let Some(w) = t.by_pid.get(&pid).and_then(|&s| self.slot(s)) else {
                continue;
            };
            if w[PID].load(Ordering::Acquire) != pid.as_raw() as u64 {
                continue; // scribbled over: no value of it can be trusted
            }
            let beat_ns = w[BEAT].load(Ordering::Acquire);
            let beat = (beat_ns != 0).then(|| {
                let age = Duration::from_nanos(now_ns.saturating_sub(beat_ns));
                now.checked_sub(age).unwrap_or(now)
            });
            out.push(Observation {
                pid,
                beat,
                served: w[SERVED].load(Ordering::Relaxed),
                in_flight: w[IN_FLIGHT].load(Ordering::Relaxed),
                memory: if memory { pss_bytes(pid) } else { None },
            });
        }
        out
    }
}

/// A process's proportional set size in bytes (`Pss:` of `/proc/<pid>/smaps_rollup`): shared
/// pages divided among the processes that share them, so summing it over workers does not
/// count the binary and libc once per worker, as summed RSS does.
pub(crate) fn pss_bytes(pid: Pid) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// What the kernel says `pid` is doing, thread by thread (at most 8): for each,
/// `<tid>:<wchan>/<syscall>`, from `/proc/<pid>/task/<tid>/wchan` (the kernel function it
/// sleeps in) and the first field of `.../syscall` (the number of the system call it is blocked
/// in, or `running`), best effort. A blocked serving thread shows beside the idle ones, e.g.
/// `15866:futex_do_wait/202 15867:hrtimer_nanosleep/230`.
pub(crate) fn kernel_state(pid: Pid) -> String {
    let read = |path: String| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    let total = tids.len();
    let mut out: Vec<String> = tids
        .into_iter()
        .take(8)
        .map(|tid| {
            let base = format!("/proc/{pid}/task/{tid}");
            let wchan = read(format!("{base}/wchan")).filter(|w| w != "0");
            let syscall = read(format!("{base}/syscall"))
                .and_then(|s| s.split_whitespace().next().map(str::to_string));
            format!(
                "{tid}:{}/{}",
                wchan.as_deref().unwrap_or("-"),
                syscall.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if total > out.len() {
        out.push(format!("(+{} threads)", total - out.len()));
    }
    if out.is_empty() {
        return "unknown (no /proc entry)".into();
    }
    out.join(" ")
}

// ---------------------------------------------------------------------------------------------
// The worker's side

/// This worker's slot, mapped at boot.
#[derive(Debug)]
pub(crate) struct WorkerSlot {
    words: &'static [AtomicU64],
    beat_every: Option<Duration>,
    /// The request count at which this worker asks to be recycled (0: never).
    max_requests: u64,
}

static MAPPING: OnceLock<SharedWords> = OnceLock::new();
static SLOT: OnceLock<WorkerSlot> = OnceLock::new();

/// This worker's slot, if its master gave it one.
pub(crate) fn slot() -> Option<&'static WorkerSlot> {
    SLOT.get()
}

/// At boot: adopts the inherited scoreboard fd, maps the region, checks it, and closes the fd.
pub(crate) fn attach(fd: RawFd, slot: u32, beat_ms: u64, max_requests: Option<u64>) -> Result<()> {
    let bad = |found: String| Error::InvalidInheritedFd {
        fd,
        expected: "scoreboard",
        found,
    };
    if fd <= 2 || sys::set_cloexec_raw(fd).is_err() {
        return Err(bad("not an open fd above stdio".into()));
    }
    // Open (checked above) and put there by the master for this purpose; the boot runs once.
    let owned = sys::own_inherited(fd);
    let map = SharedWords::map(owned.as_fd()).map_err(|e| bad(e.to_string()))?;
    drop(owned);
    let map = MAPPING.get_or_init(|| map);
    let words = map.words();
    let header_ok = block(words, 0).is_some_and(|h| h[0].load(Ordering::Relaxed) == MAGIC);
    let Some(words) = block(words, slot as usize + 1).filter(|_| header_ok) else {
        return Err(bad(format!("not a scoreboard with a slot {slot}")));
    };
    let _ = SLOT.set(WorkerSlot {
        words,
        beat_every: (beat_ms > 0).then(|| Duration::from_millis(beat_ms)),
        max_requests: max_requests.unwrap_or(0),
    });
    Ok(())
}

impl WorkerSlot {
    /// One relaxed store of the monotonic clock.
    #[inline]
    pub fn beat(&self) {
        self.words[BEAT].store(sys::monotonic_ns(), Ordering::Relaxed);
    }

    pub fn beat_every(&self) -> Option<Duration> {
        self.beat_every
    }

    pub fn set_state(&self, s: SlotState) {
        self.words[STATE].store(s as u64, Ordering::Release);
    }

    #[inline]
    pub fn begin_request(&self) {
        self.words[IN_FLIGHT].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished request; true when the master should be told that this worker
    /// reached its request budget (at the budget, and again every 1024 requests past it, in
    /// case a message was lost).
    #[inline]
    pub fn end_request(&self) -> bool {
        self.words[IN_FLIGHT].fetch_sub(1, Ordering::Relaxed);
        let n = self.words[SERVED].fetch_add(1, Ordering::Relaxed) + 1;
        self.max_requests != 0
            && n >= self.max_requests
            && (n - self.max_requests).is_multiple_of(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_slot_is_read_back_by_pid_and_freed_on_release() {
        let b = Board::new(Some(Duration::from_millis(100))).unwrap();
        let s = b.claim().unwrap();
        assert_eq!(s, 0, "the lowest slot first");
        let pid = Pid::from_raw(4242);
        b.assign(s, pid);
        // A worker's writes, through a second mapping of the same file.
        let other = SharedWords::map(b.fd()).unwrap();
        let w = block(other.words(), 1).unwrap();
        w[BEAT].store(sys::monotonic_ns(), Ordering::Relaxed);
        w[SERVED].store(7, Ordering::Relaxed);
        let seen = b.observe(&[pid, Pid::from_raw(1)], false);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].served, 7);
        let age = Instant::now() - seen[0].beat.unwrap();
        assert!(age < Duration::from_secs(1), "{age:?}");
        b.release(pid);
        assert!(b.observe(&[pid], false).is_empty());
        assert_eq!(b.claim(), Some(0), "freed and claimed again, zeroed");
        assert_eq!(w[SERVED].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_region_cannot_be_resized() {
        let b = Board::new(Some(Duration::from_millis(100))).unwrap();
        assert!(nix::unistd::ftruncate(b.fd(), 4096).is_err());
        assert!(sys::size_is_sealed(b.fd()));
    }

    #[test]
    fn pss_of_this_process_is_read() {
        assert!(pss_bytes(Pid::this()).is_some_and(|b| b > 0));
    }
}
