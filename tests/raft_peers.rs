//! The raft engine with peers, in one process: three members whose `Transport` is an in-memory
//! router (no sockets), so forwarding, request-id matching, ReadIndex on followers and leader
//! loss are tested without the network. The router can isolate a member (drop everything to and
//! from it), which is how a partition looks to raft.

mod raft_support;

use std::time::Duration;

use raft_support::{block_on, idx, wait_until, Members, IDS};

/// Proposals through followers are forwarded to the leader and answered on the member that took
/// them, with that entry's own reply; a follower's read barrier returns only once it has applied
/// what was acknowledged before it; every member applies the same log.
#[test]
fn followers_forward_proposals_and_serve_read_index() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path(), Duration::from_secs(5));
    members.wait_leader();
    for round in 0..20 {
        for (i, handle) in members.handles.iter().enumerate() {
            let data = format!("r{round}m{i}").into_bytes();
            let reply = block_on(handle.propose(data.clone())).expect("propose");
            let text = String::from_utf8(reply).unwrap();
            let (index, echoed) = text.split_once(':').unwrap();
            assert_eq!(
                echoed.as_bytes(),
                data,
                "the reply is for this proposal's entry"
            );
            assert!(index.parse::<u64>().unwrap() > 0);
            // Linearizable on another member: it has applied this entry when the barrier returns.
            let other = &members.handles[(i + 1) % IDS.len()];
            block_on(other.read_index()).expect("read index");
            let seen = members.applied[(i + 1) % IDS.len()].data();
            assert!(seen.contains(&data), "member {} missed {text}", (i + 1) % 3);
        }
    }
    let first = members.applied[0].data();
    assert_eq!(first.len(), 60);
    for a in &members.applied {
        block_on(members.handles[0].read_index()).unwrap();
        wait_until("a member applies the log", || a.data().len() >= first.len());
        assert_eq!(a.data(), first, "every member applies the same log");
    }
    members.shutdown();
}

/// Isolating the leader: the other two elect a new one (pre-vote and check-quorum on) and keep
/// committing; once the old leader rejoins it catches up with the same log.
#[test]
fn a_new_leader_takes_over_and_the_old_one_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path(), Duration::from_secs(5));
    let old = members.wait_leader();
    block_on(members.handles[idx(old)].propose(b"before".to_vec())).unwrap();
    members.router.isolated.lock().insert(old);
    let new = members.wait_leader();
    assert_ne!(new, old);
    let survivor = IDS
        .iter()
        .copied()
        .find(|&id| id != old && id != new)
        .unwrap();
    for i in 0..10 {
        block_on(members.handles[idx(survivor)].propose(format!("during{i}").into_bytes()))
            .expect("the majority commits");
    }
    // The isolated member steps down (check-quorum) and cannot serve a linearizable read.
    wait_until("the isolated leader steps down", || {
        members.handles[idx(old)].status().leader_id != old
    });
    members.router.isolated.lock().clear();
    members.wait_leader();
    block_on(members.handles[idx(old)].read_index()).expect("read after rejoining");
    let expected = members.applied[idx(new)].data();
    assert_eq!(
        members.applied[idx(old)].data()[..expected.len()],
        expected[..]
    );
    assert!(members.applied[idx(old)]
        .data()
        .contains(&b"during9".to_vec()));
    members.shutdown();
}
