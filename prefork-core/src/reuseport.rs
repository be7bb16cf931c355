//! Reuseport listener groups: one `SO_REUSEPORT` listening socket per worker id.
//!
//! # Why
//!
//! With one shared listening socket, the kernel hands each connection to whichever worker's
//! `accept` (or epoll wake-up) comes first, and nothing balances across processes: the
//! benchmark saw 64 keep-alive connections split 31/1 between two workers. A
//! [`ReuseportGroup`] gives each worker id a socket of its own, all bound to one address with
//! `SO_REUSEPORT`; the kernel spreads new connections over the group's sockets, and a worker
//! accepts only from its own.
//!
//! # What keeps reloads lossless
//!
//! * **An id keeps its socket.** [`ReuseportGroup::listener`] returns the same socket for the
//!   same slot every time, so the `fork` callback hands it to every worker of that id: the
//!   current one, its replacement on `SIGHUP`, its respawn after a crash. During a rolling
//!   reload the old and the new worker accept from the *same* queue, and nothing queued is lost
//!   when the old one stops (the same argument as for a shared socket, per id).
//! * **The master steers.** Connections are steered by a classic BPF program the master
//!   attaches to the group (`SO_ATTACH_REUSEPORT_CBPF`): a hash of the client's address and
//!   port, modulo the number K of live ids, mapped to the live ids' sockets (the hash is chosen
//!   so that one client's successive connections walk the sockets in turn: see `program` in
//!   the source). The kernel
//!   numbers a group's sockets in the order they started listening, and when one closes it
//!   moves the *last* socket into its place (`reuseport_detach_sock`, `net/core/sock_reuseport.c`).
//!   The master creates every socket and is always the last to close one, so it mirrors that
//!   array exactly and re-attaches the program after every change.
//! * **A removed id drains.** When an id leaves the desired set (a smaller set on `SIGHUP`, a
//!   scale down), the master, *before* it sends the worker its stop signal, re-attaches a
//!   program without that id's socket: from then on no new connection is steered to it. The
//!   worker learns from its boot header that the socket is its own (see
//!   [`worker::is_per_worker_socket`](crate::worker::is_per_worker_socket)); a serving layer
//!   (prefork-http does) keeps accepting on it while it drains, until its queue has stayed
//!   empty for a short linger, and then closes it. The master closes its own copy when the
//!   last worker that held it has been reaped; only then does the socket leave the group.
//!
//! # What is guaranteed, precisely
//!
//! On Linux ≥ 4.6 with the program attached (the master logs a warning if the kernel refuses
//! it), and with `net.ipv4.tcp_migrate_req` at its default 0:
//!
//! * a reload, a respawn or a crash loses no connection that reached an id's socket: it waits
//!   in that socket's queue for the id's next worker;
//! * removing an id loses no connection whose handshake completed before the worker that
//!   drains the socket stopped accepting, which is at least the linger after the switch (the
//!   worker's serving layer decides it; prefork-http keeps accepting until the queue stayed
//!   empty for its `accept_linger`, 100 ms by default). A connection steered to the
//!   socket before the switch whose handshake completes later than that (its final ACK lost and
//!   retransmitted after the linger) is reset when the socket closes. On 127.0.0.1 a handshake
//!   takes microseconds;
//! * if the removed id had no live worker (it was crashing), its queued connections are reset
//!   when the master closes the socket; with `tcp_migrate_req=1` the kernel moves them (and
//!   half-open ones) to another socket of the group instead. prefork never changes that
//!   sysctl.
//!
//! What it does not do: it does not balance by load (a busy worker gets its share of new
//! connections anyway), and any other process of the same user that binds the same port with
//! `SO_REUSEPORT` joins the group (that is how the option works) and breaks the mirror: run one
//! master per port.
//!
//! # Cost
//!
//! The program runs once per new connection (SYN), a few instructions plus a jump table over
//! the live ids; a keep-alive request never meets it.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::libc::sock_filter;

use crate::error::{Error, Result};
use crate::fd::{InheritedListener, bind_one};
use crate::process::Pid;

/// A group of `SO_REUSEPORT` TCP listening sockets on one address, one per worker slot, made
/// and steered by the master.
///
/// Make it once, in the master (lazily in the `fork` callback, like a shared listener), and
/// give each worker the socket of its id with [`listener`](Self::listener):
///
/// ```no_run
/// use prefork_core::{InheritedListener, Pid, ReuseportGroup, Spawner, WorkerContext};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
/// # struct Worker { #[prefork(id)] id: u32, #[prefork(fd)] listener: Option<InheritedListener> }
/// let mut group: Option<ReuseportGroup> = None;
/// let fork = move |w: &Worker, spawner: &Spawner| -> prefork_core::Result<Pid> {
///     let group = match &group {
///         Some(g) => g,
///         None => group.insert(ReuseportGroup::bind_tcp("127.0.0.1:3000")?),
///     };
///     let listener = group.listener(u64::from(w.id))?; // the same socket for every worker of id
///     spawner.fork_worker_process(&Worker { listener: Some(listener), ..w.clone() })
/// };
/// # let _ = fork;
/// ```
///
/// Cloning it is cheap and shares the group. See the [module docs](self) for what it
/// guarantees when ids are removed.
#[derive(Clone)]
pub struct ReuseportGroup {
    group: Arc<Group>,
}

impl std::fmt::Debug for ReuseportGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.group.lock();
        f.debug_struct("ReuseportGroup")
            .field("addr", &st.addr)
            .field("sockets", &st.members.len())
            .field("steered", &st.steer)
            .finish()
    }
}

/// One group: its state behind a lock (the master is single-threaded; the lock only makes the
/// type shareable).
pub(crate) struct Group {
    state: Mutex<GroupState>,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A socket of a group, as a worker's inherited listener carries it: which group, which member.
#[derive(Clone)]
pub(crate) struct MemberRef {
    group: Arc<Group>,
    key: u64,
}

impl std::fmt::Debug for MemberRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberRef").field("key", &self.key).finish()
    }
}

struct Member {
    /// Unique in the group.
    key: u64,
    /// The slot it serves; `None` for the socket `bind_tcp` made, until a slot takes it.
    slot: Option<u64>,
    /// The master's copy.
    fd: Arc<OwnedFd>,
    /// Its id was removed: no connection is steered to it any more.
    leaving: bool,
    /// Unreaped workers that inherited it.
    holders: BTreeSet<Pid>,
}

struct GroupState {
    addr: SocketAddr,
    /// The group's sockets in the kernel's order (the index a steering program returns).
    members: Vec<Member>,
    next_key: u64,
    /// Whether the master attaches a steering program (off: the kernel's own hash).
    steer: bool,
    /// The live indices the attached program steers to (to skip identical re-attaches).
    attached: Option<Vec<u32>>,
    /// The attach failed once (logged once).
    attach_failed: bool,
}

impl ReuseportGroup {
    /// Binds the group's first socket to `addr` (`SO_REUSEPORT`, `SO_REUSEADDR`, a backlog of
    /// [`DEFAULT_BACKLOG`](crate::fd::DEFAULT_BACKLOG), close-on-exec, non-blocking, listening). Port 0 picks a free port,
    /// which every later socket of the group then binds. A port held by a socket without
    /// `SO_REUSEPORT` (or by another user) is an error, as for
    /// [`InheritedListener::bind_tcp`].
    ///
    /// After an upgrade of the master in place, the group the old master had on that address
    /// is returned instead (the same sockets, in the same order, with the same slots).
    pub fn bind_tcp(addr: impl ToSocketAddrs) -> Result<Self> {
        if !inherited_groups().is_empty()
            && let Ok(addrs) = addr.to_socket_addrs()
            && let Some(group) = claim_group(&addrs.collect::<Vec<_>>())
        {
            return Ok(ReuseportGroup { group });
        }
        let l = crate::fd::bind_first(addr, true)?;
        let bound = l.local_addr().map_err(|e| Error::sys("getsockname", e))?;
        let fd = InheritedListener::register_master_fd(OwnedFd::from(l));
        let st = GroupState {
            addr: bound,
            members: vec![Member {
                key: 0,
                slot: None,
                fd,
                leaving: false,
                holders: BTreeSet::new(),
            }],
            next_key: 1,
            steer: true,
            attached: None,
            attach_failed: false,
        };
        let group = Arc::new(Group {
            state: Mutex::new(st),
        });
        all_groups().push(Arc::downgrade(&group));
        Ok(ReuseportGroup { group })
    }

    /// Whether the master steers connections with its BPF program (the default) or leaves the
    /// choice to the kernel's own hash of the connection (`false`). Without steering a removed
    /// id's socket keeps receiving its share of new connections until it closes, and those
    /// still queued then are reset: it exists to measure the kernel's hash against the
    /// program's. Call it before the first worker starts.
    pub fn steering(self, on: bool) -> Self {
        self.group.lock().steer = on;
        self
    }

    /// The address the group is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.group.lock().addr
    }

    /// The socket of `slot` (use the worker's id): the same socket on every call while the
    /// slot's id is in the set, a new one (joining the group) the first time, and a new one
    /// after the id was removed and came back. Call it in the master, in the `fork` callback.
    ///
    /// Errors: a new socket cannot be made or bound (out of fds, the port taken meanwhile by
    /// a socket without `SO_REUSEPORT`).
    pub fn listener(&self, slot: u64) -> Result<InheritedListener> {
        let mut st = self.group.lock();
        let found = st
            .members
            .iter()
            .position(|m| m.slot == Some(slot) && !m.leaving);
        let i = match found {
            Some(i) => i,
            None => match st
                .members
                .iter()
                .position(|m| m.slot.is_none() && !m.leaving)
            {
                Some(i) => {
                    st.members[i].slot = Some(slot);
                    i
                }
                None => {
                    let addr = st.addr;
                    let l = bind_one(addr, true).map_err(|source| Error::Listen {
                        addr: addr.to_string(),
                        source,
                    })?;
                    let fd = InheritedListener::register_master_fd(OwnedFd::from(l));
                    let key = st.next_key;
                    st.next_key += 1;
                    // listen() appended it to the kernel's array: so does the mirror.
                    st.members.push(Member {
                        key,
                        slot: Some(slot),
                        fd,
                        leaving: false,
                        holders: BTreeSet::new(),
                    });
                    st.members.len() - 1
                }
            },
        };
        st.resteer();
        let m = &st.members[i];
        Ok(InheritedListener::group_member(
            Arc::clone(&m.fd),
            MemberRef {
                group: Arc::clone(&self.group),
                key: m.key,
            },
        ))
    }

    /// How many sockets the group has (live and draining), as the master sees them.
    pub fn sockets(&self) -> usize {
        self.group.lock().members.len()
    }
}

impl MemberRef {
    /// `pid` inherited this socket.
    pub(crate) fn add_holder(&self, pid: Pid) {
        let mut st = self.group.lock();
        if let Some(m) = st.members.iter_mut().find(|m| m.key == self.key) {
            m.holders.insert(pid);
        }
    }

    /// The id of this socket was removed: steer away from it now; close it once no worker
    /// holds it.
    pub(crate) fn leave(&self) {
        let mut st = self.group.lock();
        let Some(i) = st.index(self.key) else { return };
        if st.members[i].leaving {
            return;
        }
        st.members[i].leaving = true;
        tracing::debug!(addr = %st.addr, index = i, "reuseport socket leaves the steering");
        st.resteer();
        st.close_if_unheld(i);
    }

    /// `pid`, which held this socket, was reaped.
    pub(crate) fn holder_gone(&self, pid: Pid) {
        let mut st = self.group.lock();
        let Some(i) = st.index(self.key) else { return };
        st.members[i].holders.remove(&pid);
        st.close_if_unheld(i);
    }

    /// A worker had shut this socket down and the master made it listen again: it left the
    /// kernel's array (the last socket took its place) and joined again at the end.
    pub(crate) fn relistened(&self) {
        let mut st = self.group.lock();
        let Some(i) = st.index(self.key) else { return };
        let m = st.members.swap_remove(i);
        st.members.push(m);
        st.attached = None;
        st.resteer();
    }
}

impl GroupState {
    fn index(&self, key: u64) -> Option<usize> {
        self.members.iter().position(|m| m.key == key)
    }

    /// Closes member `i` if it is leaving and no worker holds it any more.
    fn close_if_unheld(&mut self, i: usize) {
        let m = &self.members[i];
        if !m.leaving || !m.holders.is_empty() {
            return;
        }
        // The master's copy is the last: closing it takes the socket out of the kernel's
        // array, and the kernel moves the last socket into its place; so does `swap_remove`.
        // The number is pointed at /dev/null rather than closed, so that a clone of the
        // listener the application kept cannot keep the socket in the group behind the
        // mirror's back.
        let m = self.members.swap_remove(i);
        if let Err(e) = crate::sys::detach_fd(m.fd.as_raw_fd()) {
            tracing::warn!(addr = %self.addr, error = %e, "cannot close a removed reuseport socket");
        }
        tracing::debug!(addr = %self.addr, index = i, sockets = self.members.len(),
            "reuseport socket closed");
        drop(m);
        self.attached = None; // the indices moved
        self.resteer();
    }

    /// Attaches the steering program for the live members, if it changed.
    fn resteer(&mut self) {
        if !self.steer {
            return;
        }
        let live: Vec<u32> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.leaving && m.slot.is_some())
            .map(|(i, _)| i as u32)
            .collect();
        if live.is_empty() || self.attached.as_ref() == Some(&live) {
            return;
        }
        let Some(first) = self.members.first() else {
            return;
        };
        let prog = program(self.addr.is_ipv6(), self.members.len(), &live);
        if prog.len() > MAX_INSNS {
            if !self.attach_failed {
                tracing::warn!(addr = %self.addr, sockets = self.members.len(),
                    "too many reuseport sockets to steer; the kernel's hash chooses (a removed \
                     id's queued connections can be reset)");
                self.attach_failed = true;
            }
            return;
        }
        match crate::sys::attach_reuseport_cbpf(first.fd.as_fd(), &prog) {
            Ok(()) => {
                tracing::debug!(addr = %self.addr, live = live.len(), sockets = self.members.len(),
                    "reuseport steering attached");
                self.attached = Some(live);
            }
            Err(e) => {
                if !self.attach_failed {
                    tracing::warn!(addr = %self.addr, error = %e,
                        "cannot attach the reuseport steering program; the kernel's hash \
                         chooses (a removed id's queued connections can be reset)");
                    self.attach_failed = true;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Across an upgrade of the master in place

/// Every group this process made or adopted (weakly: a group the application dropped, whose
/// sockets no worker holds, is gone).
static GROUPS: Mutex<Vec<std::sync::Weak<Group>>> = Mutex::new(Vec::new());

fn all_groups() -> MutexGuard<'static, Vec<std::sync::Weak<Group>>> {
    let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    g.retain(|w| w.strong_count() > 0);
    g
}

/// Groups an old master handed over, not yet claimed by [`ReuseportGroup::bind_tcp`].
static INHERITED_GROUPS: Mutex<Vec<Arc<Group>>> = Mutex::new(Vec::new());

fn inherited_groups() -> MutexGuard<'static, Vec<Arc<Group>>> {
    INHERITED_GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The groups, for an upgrade's hand-over: each socket's fd, in the kernel's order, with its
/// slot and its holders.
pub(crate) fn export_groups() -> Vec<crate::upgrade::GroupHandover> {
    all_groups()
        .iter()
        .filter_map(|w| w.upgrade())
        .map(|g| {
            let st = g.lock();
            crate::upgrade::GroupHandover {
                addr: st.addr.to_string(),
                steer: st.steer,
                next_key: st.next_key,
                members: st
                    .members
                    .iter()
                    .map(|m| crate::upgrade::MemberHandover {
                        fd: m.fd.as_raw_fd(),
                        key: m.key,
                        slot: m.slot,
                        leaving: m.leaving,
                        holders: m.holders.iter().map(|p| p.as_raw()).collect(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The fds of every group's sockets (they travel with their group, not as listeners).
pub(crate) fn group_fds() -> BTreeSet<std::os::fd::RawFd> {
    all_groups()
        .iter()
        .filter_map(|w| w.upgrade())
        .flat_map(|g| {
            g.lock()
                .members
                .iter()
                .map(|m| m.fd.as_raw_fd())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// In the new image: rebuilds the old master's groups (their sockets are open, in the same
/// kernel order), records which adopted worker holds which socket in `holders`, and keeps the
/// groups for [`ReuseportGroup::bind_tcp`] to claim by address. A group whose numbers are not
/// all open is refused (`Err`: the caller rolls back).
pub(crate) fn adopt_groups(
    list: &[crate::upgrade::GroupHandover],
    holders: &Holders,
) -> std::result::Result<(), String> {
    for g in list {
        if g.addr.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "a reuseport group's address {:?} is not an address",
                g.addr
            ));
        }
        for m in &g.members {
            crate::sys::set_cloexec_raw(m.fd)
                .map_err(|e| format!("a reuseport socket of the old master is not open: {e}"))?;
        }
    }
    let mut by_pid: std::collections::BTreeMap<Pid, Vec<MemberRef>> =
        std::collections::BTreeMap::new();
    for g in list {
        let Ok(addr) = g.addr.parse::<SocketAddr>() else {
            continue; // checked above
        };
        let members = g
            .members
            .iter()
            .map(|m| Member {
                key: m.key,
                slot: m.slot,
                // Checked open above; handed over for this image only, one number per socket.
                fd: InheritedListener::register_master_fd(crate::sys::own_inherited(m.fd)),
                leaving: m.leaving,
                holders: m.holders.iter().map(|&p| Pid::from_raw(p)).collect(),
            })
            .collect();
        let group = Arc::new(Group {
            state: Mutex::new(GroupState {
                addr,
                members,
                next_key: g.next_key,
                steer: g.steer,
                // Re-attached (the same program) at the first change.
                attached: None,
                attach_failed: false,
            }),
        });
        for m in &g.members {
            for &p in &m.holders {
                by_pid.entry(Pid::from_raw(p)).or_default().push(MemberRef {
                    group: Arc::clone(&group),
                    key: m.key,
                });
            }
        }
        all_groups().push(Arc::downgrade(&group));
        inherited_groups().push(group);
    }
    for (pid, members) in by_pid {
        holders.spawned(pid, members);
    }
    Ok(())
}

/// Takes the handed-over group on one of `addrs` (a port of 0: the first on that address).
fn claim_group(addrs: &[SocketAddr]) -> Option<Arc<Group>> {
    let mut table = inherited_groups();
    let i = addrs.iter().find_map(|a| {
        table.iter().position(|g| {
            let got = g.lock().addr;
            got == *a || (a.port() == 0 && got.ip() == a.ip())
        })
    })?;
    let g = table.remove(i);
    tracing::info!(addr = %g.lock().addr, "kept the old master's reuseport group");
    Some(g)
}

/// Groups the new code did not claim: every socket leaves the steering and closes once no
/// worker holds it. Returns how many groups.
pub(crate) fn release_unclaimed_groups() -> usize {
    let left = std::mem::take(&mut *inherited_groups());
    for g in &left {
        let mut st = g.lock();
        tracing::info!(addr = %st.addr, "the new code did not use a reuseport group of the old master; it closes as its workers leave");
        for m in &mut st.members {
            m.leaving = true;
        }
        st.attached = None;
        let mut i = st.members.len();
        while i > 0 {
            i -= 1;
            if i < st.members.len() {
                st.close_if_unheld(i);
            }
        }
    }
    left.len()
}

// ---------------------------------------------------------------------------------------------
// The steering program (classic BPF, `linux/filter.h`)

const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_ADD: u16 = 0x00;
const BPF_RSH: u16 = 0x70;
const BPF_MOD: u16 = 0x90;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_A: u16 = 0x10;
const BPF_TAX: u16 = 0x00;
/// Loads relative to the network header (`SKF_NET_OFF`).
const SKF_NET_OFF: i32 = -0x100000;
/// How far the source port is shifted right before hashing (see [`program`]).
const PORT_SHIFT: u32 = 4;
/// The kernel's limit on a classic program (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn net(off: i32) -> u32 {
    (SKF_NET_OFF + off) as u32
}

/// The program: `h = (source port >> 4) + (low word of the source address)`, then `h % K`
/// through a table to the live sockets' indices (straight `h % K` when the live sockets are
/// exactly 0 … K-1). It runs on the SYN only (the handshake's later packets find their
/// request socket).
///
/// Why the port divided by 16: from many clients any hash is as good (a uniform spread, with
/// the multinomial's unevenness: 64 connections over 16 sockets leave some socket with fewer
/// than half the mean in about 3 runs out of 4). From *one* client, a proxy in front or a load
/// generator, Linux (≥ 5.18, and the kernels that took its fix for CVE-2022-1012) gives each
/// new connection a port 2 to 16 above the previous one, at random; divided by 16 the port
/// advances about half a socket per connection, so consecutive connections walk the sockets
/// in order and 64 of them over 16 sockets give each 2 to 8 (a simulation of that allocator:
/// 95 % of runs, against 16 % for a random hash; measured: 20 runs out of 20). On older kernels,
/// whose ports go up by 2, one client's connections come in runs of 8 per socket, which evens
/// out beyond 8 × K connections.
pub(crate) fn program(ipv6: bool, sockets: usize, live: &[u32]) -> Vec<sock_filter> {
    let k = live.len().max(1) as u32;
    let mut p = Vec::with_capacity(8 + 2 * live.len());
    if ipv6 {
        // Fixed 40-byte header (a SYN with extension headers hashes on other bytes; still a
        // valid index).
        p.push(insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, net(40)));
    } else {
        // X = the IPv4 header's length, then the TCP source port right after it.
        p.push(insn(BPF_LDX | BPF_B | BPF_MSH, 0, 0, net(0)));
        p.push(insn(BPF_LD | BPF_H | BPF_IND, 0, 0, net(0)));
    }
    p.push(insn(BPF_ALU | BPF_RSH | BPF_K, 0, 0, PORT_SHIFT));
    p.push(insn(BPF_MISC | BPF_TAX, 0, 0, 0));
    // The source address: IPv4 bytes 12..16, IPv6 its last word (bytes 20..24).
    p.push(insn(
        BPF_LD | BPF_W | BPF_ABS,
        0,
        0,
        net(if ipv6 { 20 } else { 12 }),
    ));
    p.push(insn(BPF_ALU | BPF_ADD | BPF_X, 0, 0, 0));
    p.push(insn(BPF_ALU | BPF_MOD | BPF_K, 0, 0, k));
    let identity = sockets == live.len() && live.iter().enumerate().all(|(i, &x)| x == i as u32);
    if identity {
        p.push(insn(BPF_RET | BPF_A, 0, 0, 0));
        return p;
    }
    for (i, &index) in live.iter().enumerate() {
        p.push(insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, i as u32));
        p.push(insn(BPF_RET | BPF_K, 0, 0, index));
    }
    p.push(insn(
        BPF_RET | BPF_K,
        0,
        0,
        live.first().copied().unwrap_or(0),
    ));
    p
}

#[cfg(test)]
mod tests;

/// The master's record of which unreaped worker holds which reuseport socket: filled by the
/// spawner, read when the pool removes a worker's id and when a worker is reaped.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    by_pid: std::cell::RefCell<std::collections::BTreeMap<Pid, Vec<MemberRef>>>,
}

impl Holders {
    /// `pid` was started with these sockets.
    pub(crate) fn spawned(&self, pid: Pid, members: Vec<MemberRef>) {
        if members.is_empty() {
            return;
        }
        for m in &members {
            m.add_holder(pid);
        }
        self.by_pid.borrow_mut().insert(pid, members);
    }

    /// The id of `pid` left the desired set: its sockets leave the steering (before the pool
    /// sends `pid` its stop signal).
    pub(crate) fn removing(&self, pid: Pid) {
        let members = self.by_pid.borrow().get(&pid).cloned().unwrap_or_default();
        for m in members {
            m.leave();
        }
    }

    /// `pid` was reaped: a removed id's socket closes when its last holder is gone.
    pub(crate) fn reaped(&self, pid: Pid) {
        let members = self.by_pid.borrow_mut().remove(&pid);
        for m in members.into_iter().flatten() {
            m.holder_gone(pid);
        }
    }
}
