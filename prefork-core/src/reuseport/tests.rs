//! The group against the real kernel: which socket of the group a connection reaches, before
//! and after sockets leave. 127.0.0.1 only.

use super::*;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A listener of the master's side, as a plain socket to accept on (a dup: the group keeps its
/// own copy).
fn accept_side(l: &InheritedListener) -> TcpListener {
    let fd = l.master_fd().unwrap().try_clone_to_owned().unwrap();
    TcpListener::from(fd)
}

/// Opens `n` connections and returns, for each listener, how many it got.
fn split(addr: SocketAddr, listeners: &[TcpListener], n: usize) -> Vec<usize> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).unwrap());
    }
    let mut counts = vec![0; listeners.len()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts.iter().sum::<usize>() < n {
        assert!(Instant::now() < deadline, "only {counts:?} of {n} accepted");
        for (i, l) in listeners.iter().enumerate() {
            while l.accept().is_ok() {
                counts[i] += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    counts
}

fn group_of(n: u64) -> (ReuseportGroup, Vec<InheritedListener>, Vec<TcpListener>) {
    let g = ReuseportGroup::bind_tcp("127.0.0.1:0").unwrap();
    let ls: Vec<InheritedListener> = (0..n).map(|s| g.listener(s).unwrap()).collect();
    let acc = ls.iter().map(accept_side).collect();
    (g, ls, acc)
}

#[test]
fn a_slot_keeps_its_socket_and_every_socket_shares_the_port() {
    let (g, ls, _) = group_of(3);
    assert_eq!(g.sockets(), 3);
    let again = g.listener(1).unwrap();
    assert_eq!(
        again.master_fd().unwrap().as_raw_fd(),
        ls[1].master_fd().unwrap().as_raw_fd()
    );
    for l in &ls {
        assert_eq!(l.local_addr().unwrap(), g.local_addr());
        assert!(l.is_per_worker());
    }
    assert!(
        !InheritedListener::bind_tcp("127.0.0.1:0")
            .unwrap()
            .is_per_worker()
    );
}

#[test]
fn the_program_spreads_connections_over_every_live_socket() {
    let (g, _ls, acc) = group_of(4);
    let counts = split(g.local_addr(), &acc, 200);
    let mean = 50.0;
    for &c in &counts {
        assert!(
            (c as f64) >= mean / 2.0 && (c as f64) <= mean * 2.0,
            "uneven: {counts:?}"
        );
    }
}

#[test]
fn a_leaving_socket_gets_no_new_connection_and_closes_with_its_last_holder() {
    let (g, ls, acc) = group_of(4);
    let holder = Pid::from_raw(999_999);
    let m2 = ls[2].member().unwrap().clone();
    m2.add_holder(holder);
    m2.leave();
    // Still in the group (held), but steered around.
    assert_eq!(g.sockets(), 4);
    let counts = split(g.local_addr(), &acc, 120);
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(
        counts.iter().enumerate().all(|(i, &c)| i == 2 || c > 0),
        "{counts:?}"
    );
    // The holder is reaped: the master closes its copy. The kernel moves the last socket
    // (slot 3) into index 2; the mirror must agree, or slot 3 would get nothing (its index
    // out of range falls back to the hash) or slot 2's traffic.
    m2.holder_gone(holder);
    assert_eq!(g.sockets(), 3);
    drop(acc);
    let acc: Vec<TcpListener> = [0usize, 1, 3]
        .iter()
        .map(|&i| accept_side(&ls[i]))
        .collect();
    let counts = split(g.local_addr(), &acc, 120);
    assert!(counts.iter().all(|&c| c > 20), "{counts:?}");
    // A new socket for the removed slot joins at the end.
    let back = g.listener(2).unwrap();
    assert_ne!(
        back.master_fd().unwrap().as_raw_fd(),
        ls[2].master_fd().unwrap().as_raw_fd(),
        "a removed slot that comes back gets a new socket"
    );
    assert_eq!(g.sockets(), 4);
}

#[test]
fn the_mirror_follows_the_kernel_through_many_leaves() {
    // Slots leave in an order that moves the last socket around; after each, every live
    // socket must still get connections and the leaving ones none.
    let (g, ls, _) = group_of(6);
    let mut live: Vec<usize> = (0..6).collect();
    for (step, gone) in [1usize, 4, 0].into_iter().enumerate() {
        let pid = Pid::from_raw(900_000 + step as i32);
        let m = ls[gone].member().unwrap().clone();
        m.add_holder(pid);
        m.leave();
        m.holder_gone(pid);
        live.retain(|&i| i != gone);
        assert_eq!(g.sockets(), live.len());
        let acc: Vec<TcpListener> = live.iter().map(|&i| accept_side(&ls[i])).collect();
        let counts = split(g.local_addr(), &acc, 30 * live.len());
        assert!(
            counts.iter().all(|&c| c > 5),
            "after {gone} left: {counts:?}"
        );
    }
}

#[test]
fn the_program_is_the_identity_while_nothing_leaves() {
    let p = program(false, 4, &[0, 1, 2, 3]);
    assert_eq!(p.last().map(|i| i.code), Some(BPF_RET | BPF_A));
    let p = program(false, 4, &[0, 2, 3]);
    assert_eq!(p.len(), 7 + 2 * 3 + 1);
    let p = program(true, 2, &[1]);
    assert_eq!(p.last().map(|i| i.k), Some(1));
}

#[test]
fn one_clients_connections_split_within_half_and_twice_the_mean_over_16_sockets() {
    // One client opening connections one after the other: what a proxy in front does, and
    // what the bench does. (The program's port shift is chosen for this, see `program`; with
    // 256 connections no run of the allocator's simulation falls outside, where a uniform
    // hash does in 14 % of runs.)
    let (g, _ls, acc) = group_of(16);
    let counts = split(g.local_addr(), &acc, 256);
    assert!(
        counts.iter().all(|&c| (8..=32).contains(&c)),
        "16 sockets, 256 connections: {counts:?}"
    );
}
