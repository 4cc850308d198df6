//! The raft engine's leadership handling, in one process (three members on an in-memory
//! router, as in `raft_peers.rs`): `transfer_leader` hands the leadership to a voter and
//! refuses a non-voter or a follower; a proposal made while a member knows no leader waits for
//! one instead of failing, keeps its order, times out with `NoLeaderTimeout` if none comes, and
//! is never proposed once its caller has dropped it.

mod raft_support;

use std::time::Duration;

use futures::FutureExt;
use raft_support::{block_on, idx, wait_until, Members, IDS};
use ringkv::raft::RaftError;

#[test]
fn transfer_leader_hands_the_leadership_to_a_voter_only() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path(), Duration::from_secs(5));
    let leader = members.wait_leader();
    let target = IDS.iter().copied().find(|&id| id != leader).unwrap();
    let follower = IDS
        .iter()
        .copied()
        .find(|&id| id != leader && id != target)
        .unwrap();
    assert!(matches!(
        block_on(members.handles[idx(leader)].transfer_leader(99)),
        Err(RaftError::BadTransferee { target: 99 })
    ));
    assert!(matches!(
        block_on(members.handles[idx(follower)].transfer_leader(target)),
        Err(RaftError::NotLeader { leader_id }) if leader_id == leader
    ));
    block_on(members.handles[idx(leader)].transfer_leader(target)).expect("transfer");
    wait_until("the transferee leads", || members.wait_leader() == target);
    // To itself: nothing happens.
    block_on(members.handles[idx(target)].transfer_leader(target)).expect("no-op");
    assert_eq!(members.wait_leader(), target);
    block_on(members.handles[idx(leader)].propose(b"after".to_vec())).expect("propose");
    members.shutdown();
}

#[test]
fn proposals_without_a_leader_wait_for_one_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path(), Duration::from_secs(10));
    let leader = members.wait_leader();
    let survivor = IDS.iter().copied().find(|&id| id != leader).unwrap();
    let other = IDS
        .iter()
        .copied()
        .find(|&id| id != leader && id != survivor)
        .unwrap();
    members.router.isolated.lock().extend([leader, other]);
    let handle = &members.handles[idx(survivor)];
    wait_until("the survivor loses its leader", || {
        handle.status().leader_id == 0
    });
    // Queued in this order while there is no leader (try_propose queues at the call).
    let pending: Vec<_> = (0..5)
        .map(|i| handle.try_propose(format!("held{i}").into_bytes()))
        .collect();
    // One whose caller gives up before a leader is back: it must never be proposed.
    let mut abandoned = handle.try_propose(b"abandoned".to_vec()).boxed();
    assert!((&mut abandoned).now_or_never().is_none(), "it waits");
    drop(abandoned);
    std::thread::sleep(Duration::from_millis(300));
    members.router.isolated.lock().remove(&other);
    for p in pending {
        block_on(p).expect("applied once a leader is elected");
    }
    let applied = members.applied[idx(survivor)].data();
    let held: Vec<Vec<u8>> = applied
        .iter()
        .filter(|d| d.starts_with(b"held") || d.as_slice() == b"abandoned")
        .cloned()
        .collect();
    let expected: Vec<Vec<u8>> = (0..5).map(|i| format!("held{i}").into_bytes()).collect();
    assert_eq!(held, expected, "in order, and the abandoned one never");
    members.shutdown();
}

#[test]
fn a_proposal_no_leader_takes_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path(), Duration::from_millis(500));
    let leader = members.wait_leader();
    let survivor = IDS.iter().copied().find(|&id| id != leader).unwrap();
    let others: Vec<u64> = IDS.iter().copied().filter(|&id| id != survivor).collect();
    members.router.isolated.lock().extend(others);
    let handle = &members.handles[idx(survivor)];
    wait_until("the survivor loses its leader", || {
        handle.status().leader_id == 0
    });
    assert!(matches!(
        block_on(handle.propose(b"never".to_vec())),
        Err(RaftError::NoLeaderTimeout)
    ));
    members.router.isolated.lock().clear();
    members.wait_leader();
    block_on(handle.propose(b"later".to_vec())).expect("propose");
    assert!(!members.applied[idx(survivor)]
        .data()
        .contains(&b"never".to_vec()));
    members.shutdown();
}

/// raft-rs drops proposals on a leader while it transfers its leadership; they wait instead
/// (etcd fails them with "raft proposal dropped"). The transferee is cut off, so the transfer
/// hangs until raft-rs aborts it after an election timeout, and the proposals, made after the
/// transfer started, are held for that long and then applied by the same leader.
#[test]
fn proposals_during_a_leader_transfer_wait_for_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path(), Duration::from_secs(10));
    let leader = members.wait_leader();
    let target = IDS.iter().copied().find(|&id| id != leader).unwrap();
    let handle = &members.handles[idx(leader)];
    members.router.isolated.lock().insert(target);
    block_on(handle.transfer_leader(target)).expect("transfer started");
    let pending: Vec<_> = (0..20)
        .map(|i| handle.try_propose(format!("during{i}").into_bytes()))
        .collect();
    for p in pending {
        block_on(p).expect("applied once the transfer is over");
    }
    assert_eq!(members.wait_leader(), leader);
    let during: Vec<Vec<u8>> = members.applied[idx(leader)]
        .data()
        .into_iter()
        .filter(|d| d.starts_with(b"during"))
        .collect();
    let expected: Vec<Vec<u8>> = (0..20).map(|i| format!("during{i}").into_bytes()).collect();
    assert_eq!(during, expected);
    members.router.isolated.lock().clear();
    members.shutdown();
}
