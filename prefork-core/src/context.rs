//! Worker contexts: what a worker is, as a value the master can diff and a worker can decode.
//!
//! A context is a plain struct (or enum) that implements [`WorkerContext`], almost always by
//! `#[derive(WorkerContext)]`. The master keeps the *desired* set of contexts, as the `update`
//! callback declares it in a [`WorkerSet`], and the *running* set, one worker process per
//! context; both are keyed by [`WorkerContext::id`]. A worker process receives its context as one
//! encoded document on standard input, decodes it with [`WorkerContext::decode`], and hands it to
//! the worker function.
//!
//! The context is also what `ps` shows: [`WorkerContext::args`] becomes the worker's argv after
//! the program name (`sample-warp-like id=2`), followed by its [`RuntimeOptions`] rendered the way
//! GHC's `+RTS -N5 -RTS` was.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::fd::InheritedListener;

/// The description of one worker process.
///
/// The master diffs the desired set against the running one by [`id`](Self::id): an id that
/// appears is spawned, one that disappears is stopped, and one whose encoded context changed is
/// replaced. Everything else about a worker (its sockets, its port, its thread count) lives in
/// the other fields.
///
/// # Deriving
///
/// ```
/// use prefork_core::{InheritedListener, WorkerContext};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
/// struct Worker {
///     #[prefork(id, arg)]
///     id: u32,
///     #[prefork(fd)]
///     listener: Option<InheritedListener>,
///     #[prefork(threads)]
///     cap: usize,
/// }
///
/// let w = Worker { id: 2, listener: None, cap: 5 };
/// assert_eq!(w.id(), 2);
/// assert_eq!(w.args(), vec!["id=2".to_string()]);
/// assert_eq!(w.runtime_options().threads, Some(5));
/// ```
///
/// # Implementing by hand
///
/// Only [`id`](Self::id) is required. Encoding defaults to `serde_json`; override
/// [`encode`](Self::encode) and [`decode`](Self::decode) together for another format. A context
/// that carries sockets must also implement [`visit_fds`](Self::visit_fds), or the sockets are not
/// inherited (and the worker says so clearly instead of using a wrong fd).
pub trait WorkerContext: Serialize + DeserializeOwned + Clone + Debug + 'static {
    /// The identity the master diffs by. Two contexts with the same id are the same worker slot.
    type Id: Ord + Clone + Debug + Send + 'static;

    /// This worker's identity.
    fn id(&self) -> Self::Id;

    /// Extra argv for the worker process, after the program name. Purely informational: `ps`
    /// shows it, and the worker does not need to parse it (see [`crate::args`]).
    fn args(&self) -> Vec<String> {
        Vec::new()
    }

    /// Options applied to the worker process before user code runs.
    fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions::default()
    }

    /// Calls `f` on every inherited socket this context carries, in a fixed order.
    ///
    /// The spawner uses it to map each socket to a fixed fd in the child (3, 4, …) and to write
    /// that child-side number into the context it sends.
    fn visit_fds(&mut self, f: &mut dyn FnMut(&mut InheritedListener)) {
        let _ = f;
    }

    /// Encodes the context for the worker. Defaults to `serde_json`.
    fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Encode(e.to_string()))
    }

    /// Decodes what [`encode`](Self::encode) produced. Defaults to `serde_json`.
    fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// Options applied to a worker process by the library, the counterpart of GHC's RTS options.
///
/// Most are applied in the child between fork and exec (so they hold from the first instruction
/// of the worker): `nice`, `cpu_affinity`, `rlimits`, `env`, and the identity (`user`, `group`,
/// `supplementary_groups`). [`threads`](Self::threads) is handed
/// to the worker, which sizes its runtime with it (see [`crate::worker::threads`]).
///
/// [`to_args`](Self::to_args) renders them for `ps` as `+RTS -N5 -RTS`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// How many threads the worker should use (`-N`).
    pub threads: Option<usize>,
    /// CPUs the worker may run on (`sched_setaffinity`).
    pub cpu_affinity: Option<Vec<usize>>,
    /// Scheduling niceness, added to the master's (`setpriority`).
    pub nice: Option<i32>,
    /// Resource limits (`setrlimit`).
    pub rlimits: Vec<Rlimit>,
    /// Environment variables set for the worker (not shown in argv).
    pub env: Vec<(String, String)>,
    /// The user the worker runs as (a name, or a numeric uid): a master started as root binds
    /// its privileged port (or is given it by systemd) and its workers run unprivileged.
    /// Unless [`group`](Self::group) or [`supplementary_groups`](Self::supplementary_groups)
    /// say otherwise, the worker also gets the user's primary group and its groups from the
    /// group database (as `login` and `su` do). Changing the user needs the master to be
    /// privileged (`CAP_SETUID`, `CAP_SETGID`).
    ///
    /// Names are looked up in the master at every spawn (`getpwnam`, `getgrnam`,
    /// `getgrouplist`); an unknown one fails the spawn with
    /// [`Error::InvalidSetting`], which at start ends the master
    /// with one line. In the child the groups are set first, then the gid, then the uid, before
    /// `execve`.
    pub user: Option<String>,
    /// The worker's group (a name, or a numeric gid). Alone (without a user) it also clears
    /// the supplementary groups, unless they are given.
    pub group: Option<String>,
    /// The worker's supplementary groups (names or numeric gids), instead of the user's.
    pub supplementary_groups: Option<Vec<String>>,
}

/// One resource limit for a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rlimit {
    /// Which resource.
    pub resource: RlimitResource,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The resources a [`Rlimit`] can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum RlimitResource {
    /// Open files (`RLIMIT_NOFILE`).
    NoFile,
    /// Address space in bytes (`RLIMIT_AS`).
    AddressSpace,
    /// Core file size in bytes (`RLIMIT_CORE`).
    Core,
    /// CPU seconds (`RLIMIT_CPU`).
    Cpu,
    /// Processes of the user (`RLIMIT_NPROC`).
    NProc,
    /// Stack size in bytes (`RLIMIT_STACK`).
    Stack,
}

impl RlimitResource {
    pub(crate) fn raw(self) -> nix::libc::__rlimit_resource_t {
        use nix::libc;
        match self {
            RlimitResource::NoFile => libc::RLIMIT_NOFILE,
            RlimitResource::AddressSpace => libc::RLIMIT_AS,
            RlimitResource::Core => libc::RLIMIT_CORE,
            RlimitResource::Cpu => libc::RLIMIT_CPU,
            RlimitResource::NProc => libc::RLIMIT_NPROC,
            RlimitResource::Stack => libc::RLIMIT_STACK,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            RlimitResource::NoFile => "nofile",
            RlimitResource::AddressSpace => "as",
            RlimitResource::Core => "core",
            RlimitResource::Cpu => "cpu",
            RlimitResource::NProc => "nproc",
            RlimitResource::Stack => "stack",
        }
    }
}

impl RuntimeOptions {
    /// Options with a thread count.
    pub fn with_threads(threads: usize) -> Self {
        RuntimeOptions {
            threads: Some(threads),
            ..Self::default()
        }
    }

    /// Sets the thread count.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Sets the CPU affinity.
    pub fn cpu_affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.cpu_affinity = Some(cpus.into_iter().collect());
        self
    }

    /// Sets the niceness increment.
    pub fn nice(mut self, nice: i32) -> Self {
        self.nice = Some(nice);
        self
    }

    /// Adds a resource limit.
    pub fn rlimit(mut self, resource: RlimitResource, soft: u64, hard: u64) -> Self {
        self.rlimits.push(Rlimit {
            resource,
            soft,
            hard,
        });
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the worker as `user` (see [`user`](Self#structfield.user)).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Runs the worker with the group `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Runs the worker with these supplementary groups (an empty list clears them).
    pub fn supplementary_groups<S: Into<String>>(
        mut self,
        groups: impl IntoIterator<Item = S>,
    ) -> Self {
        self.supplementary_groups = Some(groups.into_iter().map(Into::into).collect());
        self
    }

    /// Merges `other` into `self`: fields set in `other` win, lists are appended.
    pub fn merge(mut self, other: RuntimeOptions) -> Self {
        if other.threads.is_some() {
            self.threads = other.threads;
        }
        if other.cpu_affinity.is_some() {
            self.cpu_affinity = other.cpu_affinity;
        }
        if other.nice.is_some() {
            self.nice = other.nice;
        }
        self.rlimits.extend(other.rlimits);
        self.env.extend(other.env);
        if other.user.is_some() {
            self.user = other.user;
        }
        if other.group.is_some() {
            self.group = other.group;
        }
        if other.supplementary_groups.is_some() {
            self.supplementary_groups = other.supplementary_groups;
        }
        self
    }

    /// True when no option is set.
    pub fn is_empty(&self) -> bool {
        self == &RuntimeOptions::default()
    }

    /// The argv form, as `ps` shows it: `["+RTS", "-N5", "--cpus=0,1", "--user=www", "-RTS"]`,
    /// or nothing when no argv-visible option is set. Environment variables are never shown.
    pub fn to_args(&self) -> Vec<String> {
        let mut inner = Vec::new();
        if let Some(n) = self.threads {
            inner.push(format!("-N{n}"));
        }
        if let Some(cpus) = &self.cpu_affinity {
            let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
            inner.push(format!("--cpus={}", list.join(",")));
        }
        if let Some(nice) = self.nice {
            inner.push(format!("--nice={nice}"));
        }
        for r in &self.rlimits {
            inner.push(format!(
                "--rlimit-{}={}:{}",
                r.resource.flag(),
                r.soft,
                r.hard
            ));
        }
        if let Some(u) = &self.user {
            inner.push(format!("--user={u}"));
        }
        if let Some(g) = &self.group {
            inner.push(format!("--group={g}"));
        }
        if let Some(gs) = &self.supplementary_groups {
            inner.push(format!("--groups={}", gs.join(",")));
        }
        if inner.is_empty() {
            return inner;
        }
        let mut out = Vec::with_capacity(inner.len() + 2);
        out.push("+RTS".to_string());
        out.extend(inner);
        out.push("-RTS".to_string());
        out
    }
}

/// The desired set of workers, filled by the `update` callback of
/// [`relaunch_settings`](crate::relaunch_settings): one context per id.
///
/// The counterpart of haskell-prefork's `updateWorkerSet`. Inserting a context whose id is
/// already present replaces it (the last one wins).
#[derive(Clone, Debug)]
pub struct WorkerSet<W: WorkerContext> {
    workers: BTreeMap<W::Id, W>,
    scale: Option<u32>,
}

impl<W: WorkerContext> Default for WorkerSet<W> {
    fn default() -> Self {
        WorkerSet {
            workers: BTreeMap::new(),
            scale: None,
        }
    }
}

impl<W: WorkerContext> WorkerSet<W> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole set with `workers` (haskell-prefork's `updateWorkerSet`).
    pub fn set(&mut self, workers: impl IntoIterator<Item = W>) {
        self.workers.clear();
        self.extend(workers);
    }

    /// Adds or replaces one worker.
    pub fn insert(&mut self, worker: W) -> Option<W> {
        self.workers.insert(worker.id(), worker)
    }

    /// Adds or replaces many workers.
    pub fn extend(&mut self, workers: impl IntoIterator<Item = W>) {
        for w in workers {
            self.insert(w);
        }
    }

    /// Removes a worker by id.
    pub fn remove(&mut self, id: &W::Id) -> Option<W> {
        self.workers.remove(id)
    }

    /// Removes every worker.
    pub fn clear(&mut self) {
        self.workers.clear();
    }

    /// The worker of this id.
    pub fn get(&self, id: &W::Id) -> Option<&W> {
        self.workers.get(id)
    }

    /// How many workers are desired.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// True when no worker is desired.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The workers in id order.
    pub fn iter(&self) -> impl Iterator<Item = &W> {
        self.workers.values()
    }

    /// The runtime scale, when scaling is on ([`Settings::scale`](crate::Settings::scale)):
    /// how many workers `update` should declare. `SIGTTIN`, `SIGTTOU` and the control socket
    /// change it between calls; a reload keeps it.
    pub fn scale(&self) -> Option<u32> {
        self.scale
    }

    pub(crate) fn set_scale(&mut self, scale: Option<u32>) {
        self.scale = scale;
    }

    pub(crate) fn into_map(self) -> BTreeMap<W::Id, W> {
        self.workers
    }
}

impl<W: WorkerContext> FromIterator<W> for WorkerSet<W> {
    fn from_iter<I: IntoIterator<Item = W>>(iter: I) -> Self {
        let mut s = WorkerSet::new();
        s.extend(iter);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_options_render_like_rts() {
        let o = RuntimeOptions::with_threads(5);
        assert_eq!(o.to_args(), vec!["+RTS", "-N5", "-RTS"]);
        let o = RuntimeOptions::default()
            .cpu_affinity([0, 1])
            .nice(3)
            .rlimit(RlimitResource::NoFile, 1024, 2048)
            .env("SECRET", "x")
            .user("nobody")
            .group("nogroup")
            .supplementary_groups(["a", "b"]);
        assert_eq!(
            o.to_args(),
            vec![
                "+RTS",
                "--cpus=0,1",
                "--nice=3",
                "--rlimit-nofile=1024:2048",
                "--user=nobody",
                "--group=nogroup",
                "--groups=a,b",
                "-RTS"
            ]
        );
        assert!(RuntimeOptions::default().to_args().is_empty());
        assert!(
            RuntimeOptions::default().env("A", "b").to_args().is_empty(),
            "env is never shown in argv"
        );
    }

    #[test]
    fn merge_prefers_other() {
        let a = RuntimeOptions::with_threads(2).nice(1);
        let b = RuntimeOptions::with_threads(4);
        let m = a.merge(b);
        assert_eq!(m.threads, Some(4));
        assert_eq!(m.nice, Some(1));
    }
}
