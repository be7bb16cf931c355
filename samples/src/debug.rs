//! The samples' debug endpoints (`--debug-endpoints`, off by default): a demo aid for hang
//! detection and memory recycling. Never expose them: they let any client block a worker or
//! grow its memory.

use std::sync::Mutex;
use std::time::Duration;

/// The longest `/block` (10 minutes).
pub const MAX_BLOCK: Duration = Duration::from_secs(600);
/// The most one `/grow` allocates (4 GiB).
pub const MAX_GROW_MB: u64 = 4096;

/// Memory `/grow` allocated, kept for the worker's life.
static GROWN: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The number after `key=` in a query string.
pub fn param(query: Option<&str>, key: &str) -> Option<u64> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// `GET /block?ms=N`: blocks the calling thread for N ms (at most [`MAX_BLOCK`]).
pub fn block(query: Option<&str>) -> String {
    let d = Duration::from_millis(param(query, "ms").unwrap_or(1000)).min(MAX_BLOCK);
    std::thread::sleep(d);
    format!("blocked {} ms pid {}\n", d.as_millis(), std::process::id())
}

/// `GET /grow?mb=N`: allocates N MiB (at most [`MAX_GROW_MB`]), writes every page so it is
/// resident, and keeps it.
pub fn grow(query: Option<&str>) -> String {
    let mb = param(query, "mb").unwrap_or(1).min(MAX_GROW_MB);
    let len = usize::try_from(mb << 20).unwrap_or(usize::MAX);
    // Zeroed memory may be mapped lazily: writing a byte in every page makes it resident.
    let mut v = vec![0u8; len];
    for i in (0..len).step_by(4096) {
        v[i] = 1;
    }
    let mut g = GROWN.lock().unwrap_or_else(|p| p.into_inner());
    g.push(v);
    let total: usize = g.iter().map(Vec::len).sum();
    format!(
        "grew {mb} MiB pid {} holds {} MiB\n",
        std::process::id(),
        total >> 20
    )
}

/// `GET /drip?ms=N`: how many 100 ms chunks to stream (at least 1, at most 10 minutes' worth).
pub fn drip_chunks(query: Option<&str>) -> u64 {
    let ms = param(query, "ms")
        .unwrap_or(1000)
        .min(MAX_BLOCK.as_millis() as u64);
    (ms / 100).max(1)
}

/// The time between two `/drip` chunks.
pub const DRIP_EVERY: Duration = Duration::from_millis(100);

/// The stream of `/drip`: `drip <i> pid <pid>` for chunk i, after i × [`DRIP_EVERY`].
pub fn drip(chunks: u64) -> impl futures_util::Stream<Item = String> + Send {
    futures_util::stream::unfold(0u64, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(DRIP_EVERY).await;
        }
        Some((format!("drip {i} pid {}\n", std::process::id()), i + 1))
    })
}
