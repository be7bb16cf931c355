//! The one status model of a running master: what the control socket's `status` returns, what
//! the status file holds, and what the Prometheus metrics are rendered from.
//!
//! Every figure comes from what the master already knows (its supervision state machine and
//! the counters it keeps from its events); nothing here keeps a second copy of the truth. Two
//! things are read from the kernel when a status is taken: each listening TCP socket's accept
//! queue (`TCP_INFO`), and, only when asked for ([`Command::Status`] with `resources`),
//! each worker's memory and CPU from `/proc`.
//!
//! In JSON (field by field below):
//!
//! ```json
//! {"master": {"pid": 4242, "started_at": "2026-12-01T10:00:00.000Z", "now": "…",
//!             "state": "running", "generation": 2, "scale": {"current": 5, "min": 1, "max": 64},
//!             "desired": 5, "ready": 5,
//!             "last_reload": {"generation": 2, "started_at": "…", "finished_at": "…",
//!                             "took_ms": 120, "outcome": "ok", "failed": []},
//!             "counters": {"spawns": 12, "restarts": 1, "failed_starts": 0, "reloads_ok": 2,
//!                          "reloads_incomplete": 0, "reloads_rejected": 0,
//!                          "exits": {"crashed": 1, "failed_start": 0, "retired": 10, …}}},
//!  "workers": [{"id": "2", "pid": 4310, "generation": 2, "state": "ready",
//!               "started_at": "…", "ready_at": "…", "restarts": 1, "failed_starts": 0,
//!               "last_exit": {"signal": "SIGKILL", "at": "…", "reason": "crashed"}}],
//!  "listeners": [{"addr": "127.0.0.1:3000", "kind": "tcp", "accept_queue": 0, "backlog": 1024}]}
//! ```
//!
//! [`Command::Status`]: crate::control::Command::Status

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fd::ListenerKind;
use crate::report::ExitReason;

/// A point in wall-clock time, in JSON as an RFC 3339 UTC string with milliseconds
/// (`2026-12-01T10:00:00.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// The time.
    pub fn system_time(self) -> SystemTime {
        self.0
    }

    /// Now.
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }

    /// How long before `later` this was (zero if it was not before).
    pub fn age_at(self, later: Timestamp) -> Duration {
        later.0.duration_since(self.0).unwrap_or(Duration::ZERO)
    }

    /// Parses the RFC 3339 form this type writes (UTC, `Z`, optional fraction).
    pub fn parse(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
            return None;
        }
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
        let (y, mo, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let frac = s.get(19..s.len() - 1)?;
        let nanos = match frac.strip_prefix('.') {
            None if frac.is_empty() => 0,
            Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|c| c.is_ascii_digit()) => {
                f.parse::<u64>().ok()? * 10u64.pow(9 - f.len() as u32)
            }
            _ => return None,
        };
        let days = days_from_civil(y, mo as i64, d as i64);
        let secs = days.checked_mul(86_400)? + (h * 3600 + mi * 60 + sec) as i64;
        let secs = u64::try_from(secs).ok()?;
        Some(Timestamp(
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos),
        ))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp(t)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = d.as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, day) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 UTC time: {s:?}")))
    }
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A running master, its workers and its listeners.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The master.
    pub master: MasterStatus,
    /// Every worker process the master has (current, starting replacements, draining), and each
    /// desired id that has no process right now (state `down`), in id order, draining ones last.
    pub workers: Vec<WorkerStatus>,
    /// The listening sockets the master made ([`InheritedListener`](crate::InheritedListener)).
    pub listeners: Vec<ListenerStatus>,
}

/// The master itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MasterStatus {
    /// Its pid.
    pub pid: i32,
    /// When it started.
    pub started_at: Timestamp,
    /// When this status was taken (absent in the status file, which is rewritten only when
    /// something changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<Timestamp>,
    /// Running, reloading or stopping.
    pub state: MasterState,
    /// The reload generation: 0 at start, + 1 per reload.
    pub generation: u64,
    /// The runtime scale, when scaling is on ([`Settings::scale`](crate::Settings::scale)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleStatus>,
    /// How many ids are desired (with the adaptive pool: how many of its candidates it runs).
    pub desired: usize,
    /// How many desired ids have a ready worker.
    pub ready: usize,
    /// The adaptive pool, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveStatus>,
    /// The last reload that finished (by `SIGHUP` or the control socket's `reload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadStatus>,
    /// Counters since the master started.
    pub counters: Counters,
    /// The last upgrade of the master in place (`SIGUSR2`, `prefork-ctl upgrade`) that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade: Option<UpgradeStatus>,
}

/// An upgrade of the master in place that ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// How it ended.
    pub outcome: UpgradeResult,
    /// Why it was refused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended (for `upgraded`: when the new code's workers all took over).
    pub finished_at: Timestamp,
    /// The generation the master runs after it.
    pub generation: u64,
    /// The master's pid (the same before and after).
    pub pid: i32,
}

/// How an upgrade in place ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeResult {
    /// The master runs the new binary and every worker was replaced by one of the new code
    /// (or the roll ended incomplete: see the last reload).
    Upgraded,
    /// The new binary failed its check (or could not be executed); nothing changed.
    Refused,
    /// The new binary could not adopt the state and the old one came back; its workers kept
    /// serving.
    RolledBack,
}

/// The adaptive pool's state and bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdaptiveStatus {
    /// Candidate ids that run (the first ones, in id order).
    pub active: usize,
    /// Of those, with nothing in flight at the last scan.
    pub idle: usize,
    /// The declared candidates.
    pub candidates: usize,
    /// Start workers while fewer than this many are idle.
    pub min_spare: u32,
    /// Retire workers while more than this many are idle.
    pub max_spare: u32,
    /// Never more workers than this.
    pub max_workers: u32,
}

/// What the master is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterState {
    /// Keeping the declared workers alive.
    Running,
    /// A reload has started and not finished yet.
    Reloading,
    /// Upgrading itself in place: checking the new binary, or (after the exec) replacing the
    /// old code's workers.
    Upgrading,
    /// Stopping (`SIGTERM`, `SIGINT`, or the control socket's `stop`).
    Stopping,
}

/// The runtime scale and its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleStatus {
    /// The scale `update` currently gets.
    pub current: u32,
    /// The smallest scale a request may ask for.
    pub min: u32,
    /// The largest.
    pub max: u32,
}

/// A finished reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// The generation it made (for a rejected reload: the generation that stayed).
    pub generation: u64,
    /// When it started.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Timestamp,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
    /// How it ended.
    pub outcome: ReloadResult,
    /// With `incomplete`: the ids it gave up on, and why.
    #[serde(default)]
    pub failed: Vec<FailedId>,
}

/// How a reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// Every desired id runs a ready worker of the new generation.
    Ok,
    /// Some ids failed to start several times in a row; their old workers keep serving.
    Incomplete,
    /// `update` returned no configuration (or panicked): nothing changed.
    Rejected,
}

/// An id a reload gave up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedId {
    /// The id.
    pub id: String,
    /// Why its last start failed.
    pub reason: String,
}

/// Counters since the master started (Prometheus counters: they only grow).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Worker processes started.
    pub spawns: u64,
    /// Respawns of a worker that had served and died.
    pub restarts: u64,
    /// Starts that failed (died before serving, missed the readiness deadline, spawn error).
    pub failed_starts: u64,
    /// Reloads that ended `ok`.
    pub reloads_ok: u64,
    /// Reloads that ended `incomplete`.
    pub reloads_incomplete: u64,
    /// Reloads that ended `rejected`.
    pub reloads_rejected: u64,
    /// Worker exits by reason.
    pub exits: ExitCounts,
    /// Workers replaced by a health rule, by rule (see [`Settings::hang_timeout`] and the
    /// recycling settings).
    ///
    /// [`Settings::hang_timeout`]: crate::Settings::hang_timeout
    #[serde(default)]
    pub replaced: ReplacedCounts,
    /// Upgrades in place that ended `upgraded`.
    #[serde(default)]
    pub upgrades_ok: u64,
    /// Upgrades in place refused (failed check) or rolled back.
    #[serde(default)]
    pub upgrades_failed: u64,
}

/// Workers replaced by each health rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // one counter per ReplaceReason, named as it prints
pub struct ReplacedCounts {
    pub hang: u64,
    pub max_requests: u64,
    pub max_age: u64,
    pub max_memory: u64,
}

/// Worker exits by [`ExitReason`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // one counter per ExitReason, named as it serializes
pub struct ExitCounts {
    pub crashed: u64,
    pub failed_start: u64,
    pub retired: u64,
    pub removed: u64,
    pub killed_at_deadline: u64,
    pub shutdown: u64,
    pub hang: u64,
    pub max_requests: u64,
    pub max_age: u64,
    pub max_memory: u64,
}

impl ExitCounts {
    /// Counts one exit.
    pub fn add(&mut self, reason: ExitReason) {
        *match reason {
            ExitReason::Crashed => &mut self.crashed,
            ExitReason::FailedStart => &mut self.failed_start,
            ExitReason::Retired => &mut self.retired,
            ExitReason::Removed => &mut self.removed,
            ExitReason::KilledAtDeadline => &mut self.killed_at_deadline,
            ExitReason::Shutdown => &mut self.shutdown,
            ExitReason::Hang => &mut self.hang,
            ExitReason::MaxRequests => &mut self.max_requests,
            ExitReason::MaxAge => &mut self.max_age,
            ExitReason::MaxMemory => &mut self.max_memory,
        } += 1;
    }

    fn pairs(&self) -> [(&'static str, u64); 10] {
        [
            ("crashed", self.crashed),
            ("failed_start", self.failed_start),
            ("retired", self.retired),
            ("removed", self.removed),
            ("killed_at_deadline", self.killed_at_deadline),
            ("shutdown", self.shutdown),
            ("hang", self.hang),
            ("max_requests", self.max_requests),
            ("max_age", self.max_age),
            ("max_memory", self.max_memory),
        ]
    }
}

/// One worker process, or a desired id without one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The context's id, as its `Debug` form renders (`2`; a string id without its quotes).
    pub id: String,
    /// Its pid (none for a `down` id).
    pub pid: Option<i32>,
    /// The reload generation it was started for.
    pub generation: Option<u64>,
    /// Starting, ready, draining, or down.
    pub state: WorkerState,
    /// When it was started.
    pub started_at: Option<Timestamp>,
    /// When it said it was ready.
    pub ready_at: Option<Timestamp>,
    /// Respawns of this id after a worker of it had served and died.
    pub restarts: u64,
    /// Failed starts of this id since it joined the set.
    pub failed_starts: u64,
    /// How the last worker of this id ended.
    pub last_exit: Option<LastExit>,
    /// Requests it served, from the scoreboard (0 without one, or for a worker that does not
    /// count them: see [`worker::request_guard`](crate::worker::request_guard)).
    #[serde(default)]
    pub requests: u64,
    /// Requests in flight at the master's last look at the scoreboard.
    #[serde(default)]
    pub in_flight: u64,
    /// How long ago its last beat ([`worker::heartbeat`](crate::worker::heartbeat)) that the
    /// master saw was, in ms; none for a worker that never beat, and never in the status file
    /// (which changes only with the state, not with the clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_ms: Option<u64>,
    /// Its request budget (jitter included), with [`Settings::max_requests`].
    ///
    /// [`Settings::max_requests`]: crate::Settings::max_requests
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    /// Its PSS in kB at the memory rule's last read (with [`Settings::max_memory`] only).
    ///
    /// [`Settings::max_memory`]: crate::Settings::max_memory
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_kb: Option<u64>,
    /// Memory and CPU, read from `/proc` when the status asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// A worker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Started, not ready yet.
    Starting,
    /// Ready and serving (or a ready replacement about to take over).
    Ready,
    /// Asked to stop; draining.
    Draining,
    /// A desired id with no process: it is waiting for its next start (backoff).
    Down,
    /// A candidate id that the adaptive pool keeps stopped for now
    /// ([`Settings::adaptive`](crate::Settings::adaptive)).
    Dormant,
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Its exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it (`SIGKILL`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// When it was reaped.
    pub at: Timestamp,
    /// Why, as the master saw it.
    pub reason: ExitReason,
}

/// A worker's memory and CPU, from `/proc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Resident set size, kB (`smaps_rollup` `Rss`).
    pub rss_kb: u64,
    /// Proportional set size, kB: shared pages split between their users (`Pss`).
    pub pss_kb: u64,
    /// CPU time used, user + system, ms (`stat`).
    pub cpu_ms: u64,
}

/// A listening socket of the master.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// Its address (`127.0.0.1:3000`, or a Unix socket's path).
    pub addr: String,
    /// TCP or Unix.
    pub kind: ListenerKind,
    /// Connections waiting to be accepted (TCP only: `TCP_INFO`'s `tcpi_unacked`).
    pub accept_queue: Option<u32>,
    /// The most that may wait (TCP only: `tcpi_sacked`, the effective backlog).
    pub backlog: Option<u32>,
}

impl Status {
    /// The status in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut o = String::new();
        let m = &self.master;
        let c = &m.counters;
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(
                o,
                "# HELP prefork_{name} {help}\n# TYPE prefork_{name} {kind}"
            );
        };
        head(&mut o, "workers", "gauge", "Worker processes by state.");
        for (state, label) in [
            (WorkerState::Starting, "starting"),
            (WorkerState::Ready, "ready"),
            (WorkerState::Draining, "draining"),
            (WorkerState::Down, "down"),
            (WorkerState::Dormant, "dormant"),
        ] {
            let n = self.workers.iter().filter(|w| w.state == state).count();
            let _ = writeln!(o, "prefork_workers{{state=\"{label}\"}} {n}");
        }
        // One unlabelled sample each.
        let scalars = [
            (
                "workers_desired",
                "gauge",
                "Desired worker ids.",
                Some(m.desired as u64),
            ),
            (
                "workers_ready",
                "gauge",
                "Desired ids with a ready worker.",
                Some(m.ready as u64),
            ),
            (
                "scale",
                "gauge",
                "The runtime scale.",
                m.scale.map(|s| u64::from(s.current)),
            ),
            (
                "adaptive_active",
                "gauge",
                "Candidate ids the adaptive pool runs.",
                m.adaptive.map(|a| a.active as u64),
            ),
            (
                "adaptive_idle",
                "gauge",
                "Of those, idle at the last scan.",
                m.adaptive.map(|a| a.idle as u64),
            ),
            (
                "generation",
                "gauge",
                "Reload generation.",
                Some(m.generation),
            ),
            (
                "spawns_total",
                "counter",
                "Worker processes started.",
                Some(c.spawns),
            ),
            (
                "restarts_total",
                "counter",
                "Respawns of workers that had served and died.",
                Some(c.restarts),
            ),
            (
                "failed_starts_total",
                "counter",
                "Failed worker starts.",
                Some(c.failed_starts),
            ),
        ];
        for (name, kind, help, value) in scalars {
            if let Some(v) = value {
                head(&mut o, name, kind, help);
                let _ = writeln!(o, "prefork_{name} {v}");
            }
        }
        head(
            &mut o,
            "reloads_total",
            "counter",
            "Finished reloads by outcome.",
        );
        for (label, n) in [
            ("ok", c.reloads_ok),
            ("incomplete", c.reloads_incomplete),
            ("rejected", c.reloads_rejected),
        ] {
            let _ = writeln!(o, "prefork_reloads_total{{outcome=\"{label}\"}} {n}");
        }
        head(
            &mut o,
            "upgrades_total",
            "counter",
            "Upgrades of the master in place, by outcome (failed: refused or rolled back).",
        );
        for (label, n) in [("ok", c.upgrades_ok), ("failed", c.upgrades_failed)] {
            let _ = writeln!(o, "prefork_upgrades_total{{outcome=\"{label}\"}} {n}");
        }
        head(
            &mut o,
            "worker_exits_total",
            "counter",
            "Worker exits by reason.",
        );
        for (label, n) in c.exits.pairs() {
            let _ = writeln!(o, "prefork_worker_exits_total{{reason=\"{label}\"}} {n}");
        }
        head(
            &mut o,
            "worker_replacements_total",
            "counter",
            "Workers replaced by a health rule, by rule.",
        );
        let r = &c.replaced;
        for (label, n) in [
            ("hang", r.hang),
            ("max_requests", r.max_requests),
            ("max_age", r.max_age),
            ("max_memory", r.max_memory),
        ] {
            let _ = writeln!(
                o,
                "prefork_worker_replacements_total{{reason=\"{label}\"}} {n}"
            );
        }
        head(
            &mut o,
            "requests_in_flight",
            "gauge",
            "Requests in flight in all workers (scoreboard).",
        );
        let busy: u64 = self.workers.iter().map(|w| w.in_flight).sum();
        let _ = writeln!(o, "prefork_requests_in_flight {busy}");
        head(
            &mut o,
            "worker_restarts",
            "gauge",
            "Respawns of each desired id after it had served.",
        );
        let mut seen = std::collections::BTreeSet::new();
        for w in &self.workers {
            if !matches!(w.state, WorkerState::Draining | WorkerState::Dormant)
                && seen.insert(&w.id)
            {
                let _ = writeln!(
                    o,
                    "prefork_worker_restarts{{id=\"{}\"}} {}",
                    escape_label(&w.id),
                    w.restarts
                );
            }
        }
        let tcp: Vec<&ListenerStatus> = self
            .listeners
            .iter()
            .filter(|l| l.accept_queue.is_some())
            .collect();
        type Gauge = (
            &'static str,
            &'static str,
            fn(&ListenerStatus) -> Option<u32>,
        );
        let gauges: [Gauge; 2] = [
            (
                "listener_accept_queue",
                "Connections waiting to be accepted.",
                |l| l.accept_queue,
            ),
            ("listener_backlog", "Accept queue capacity.", |l| l.backlog),
        ];
        for (name, help, value) in gauges {
            if tcp.is_empty() {
                break;
            }
            head(&mut o, name, "gauge", help);
            for l in &tcp {
                let _ = writeln!(
                    o,
                    "prefork_{name}{{addr=\"{}\"}} {}",
                    escape_label(&l.addr),
                    value(l).unwrap_or(0)
                );
            }
        }
        o
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_as_rfc3339() {
        let t = Timestamp(UNIX_EPOCH + Duration::from_millis(1_796_601_600_123));
        let s = t.to_string();
        assert_eq!(s, "2026-12-07T00:00:00.123Z");
        assert_eq!(Timestamp::parse(&s), Some(t));
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00Z"),
            Some(Timestamp(UNIX_EPOCH))
        );
        assert_eq!(
            Timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        for bad in [
            "",
            "2026-12-07",
            "2026-13-01T00:00:00Z",
            "2026-12-07T00:00:00+01:00",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn exit_counts_name_every_reason_as_it_serializes() {
        let mut c = ExitCounts::default();
        for r in [
            ExitReason::Crashed,
            ExitReason::FailedStart,
            ExitReason::Retired,
            ExitReason::Removed,
            ExitReason::KilledAtDeadline,
            ExitReason::Shutdown,
            ExitReason::Hang,
            ExitReason::MaxRequests,
            ExitReason::MaxAge,
            ExitReason::MaxMemory,
        ] {
            c.add(r);
            let name = serde_json::to_string(&r).unwrap();
            let json = serde_json::to_value(&c).unwrap();
            assert_eq!(json[name.trim_matches('"')], 1, "{name}");
        }
    }
}
