//! The health flags the HTTP samples share: hang detection, recycling, the debug endpoints
//! that demonstrate them, and turning the scoreboard off (for the benchmark).

use std::time::Duration;

use prefork_core::{Settings, WorkerContext};

/// The longest timeout or age the flags accept: a day.
const MAX_SECS: u64 = 86_400;

/// Hang detection and recycling (`prefork_core::Settings::hang_timeout` and friends).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct HealthArgs {
    /// Seconds without a heartbeat after which a worker is hung: its replacement starts, then
    /// it gets SIGABRT, and SIGKILL 5 s later. Off by default.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub hang_timeout: Option<u64>,
    /// Recycle a worker (readiness-gated) after it served N requests (plus its jitter).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests: Option<u64>,
    /// Add a random 0..=N to each worker's --max-requests, so they do not recycle together.
    #[arg(long, value_name = "N", requires = "max_requests")]
    pub max_requests_jitter: Option<u64>,
    /// Recycle a worker (readiness-gated) after it lived SECS, plus a random 0-10 %.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub max_age: Option<u64>,
    /// Recycle a worker (readiness-gated) whose PSS passes N MiB (checked every second).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_memory_mb: Option<u64>,
    /// Demo aid, off by default: `GET /block?ms=N` blocks the thread serving it for N ms (at
    /// most 10 minutes), `GET /grow?mb=N` allocates and touches N MiB that stay allocated,
    /// `GET /drip?ms=N` streams a chunk every 100 ms for N ms. Never expose them.
    #[arg(long)]
    pub debug_endpoints: bool,
    /// Run without the scoreboard (no heartbeats or request counts; for the benchmark).
    #[arg(long, conflicts_with_all = ["hang_timeout", "max_requests"])]
    pub no_scoreboard: bool,
}

impl HealthArgs {
    /// `settings` with these flags applied.
    pub fn apply<C: 'static, W: WorkerContext>(&self, mut s: Settings<C, W>) -> Settings<C, W> {
        if let Some(t) = self.hang_timeout {
            s = s.hang_timeout(Duration::from_secs(t));
        }
        if let Some(n) = self.max_requests {
            s = s
                .max_requests(n)
                .max_requests_jitter(self.max_requests_jitter.unwrap_or(0));
        }
        if let Some(age) = self.max_age {
            let age = Duration::from_secs(age);
            s = s.max_age(age).max_age_jitter(age / 10);
        }
        if let Some(mb) = self.max_memory_mb {
            s = s
                .max_memory(mb << 20)
                .memory_check_interval(Duration::from_secs(1));
        }
        s.scoreboard(!self.no_scoreboard)
    }
}
