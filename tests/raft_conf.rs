//! The raft engine's membership changes, in one process (three members and an in-memory
//! router, as `raft_peers.rs`), against a toy [`Membership`] that records what it applied: a
//! change applies once per member, in log order with the data around it, and raft's
//! configuration follows; a refused change leaves raft as it was; a member joining from the
//! record of another receives the log; and a restart passes over the changes its record
//! reflects but applies, exactly once, one it had not recorded before a crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Message};
use parking_lot::Mutex;
use ringkv::raft::{self, Committed, Membership, RaftConfig, RaftHandle, StateMachine, Transport};

const CLUSTER: u64 = 0xc2;

#[derive(Clone, Default)]
struct Applied(Arc<Mutex<Vec<Vec<u8>>>>);

struct ToySm {
    log: Applied,
    applied: u64,
}

impl StateMachine for ToySm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        let mut log = self.log.0.lock();
        for e in entries {
            assert!(e.index > self.applied, "applied twice: {}", e.index);
            self.applied = e.index;
            log.push(e.data.clone());
        }
        vec![Vec::new(); entries.len()]
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}

#[derive(Clone, Debug, Default)]
struct RecordState {
    voters: Vec<u64>,
    learners: Vec<u64>,
    conf_index: u64,
    /// Indexes of the changes applied, in order (across restarts).
    applied: Vec<u64>,
}

/// The toy record, shared with the test; refuses changes for node 99.
#[derive(Clone, Default)]
struct Record(Arc<Mutex<RecordState>>);

impl Membership for Record {
    fn conf_state(&self) -> ConfState {
        let r = self.0.lock();
        ConfState::from((r.voters.clone(), r.learners.clone()))
    }

    fn conf_index(&self) -> u64 {
        self.0.lock().conf_index
    }

    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange) -> Result<Vec<u8>, Vec<u8>> {
        let mut r = self.0.lock();
        let id = cc.node_id;
        if id == 99 {
            return Err(b"refused".to_vec());
        }
        r.voters.retain(|&v| v != id);
        r.learners.retain(|&v| v != id);
        match cc.get_change_type() {
            ConfChangeType::AddNode => r.voters.push(id),
            ConfChangeType::AddLearnerNode => r.learners.push(id),
            ConfChangeType::RemoveNode => {}
        }
        r.voters.sort_unstable();
        r.conf_index = index;
        r.applied.push(index);
        Ok(format!("applied {index}").into_bytes())
    }

    fn snapshot(&self) -> Vec<u8> {
        unimplemented!("no raft snapshots in this test")
    }

    fn restore(&mut self, _snapshot: &[u8]) -> Result<ConfState, String> {
        unimplemented!("no raft snapshots in this test")
    }
}

#[derive(Clone, Default)]
struct Router {
    handles: Arc<Mutex<HashMap<u64, RaftHandle>>>,
}

impl Transport for Router {
    fn send(&mut self, msg: Message) -> bool {
        let handle = self.handles.lock().get(&msg.to).cloned();
        handle.is_some_and(|h| h.step(msg).is_ok())
    }
}

struct Node {
    handle: RaftHandle,
    applied: Applied,
    record: Record,
    wal: PathBuf,
}

fn start(dir: &Path, router: &Router, id: u64, record: Record, applied: Applied) -> Node {
    let wal = dir.join(format!("wal{id}"));
    let cfg = RaftConfig::small(&wal, id, CLUSTER);
    let sm = Box::new(ToySm {
        log: applied.clone(),
        applied: 0,
    });
    let handle =
        raft::start_with_membership(cfg, sm, Box::new(router.clone()), Box::new(record.clone()))
            .expect("start");
    router.handles.lock().insert(id, handle.clone());
    Node {
        handle,
        applied,
        record,
        wal,
    }
}

fn voters(ids: &[u64]) -> Record {
    let record = Record::default();
    record.0.lock().voters = ids.to_vec();
    record
}

fn wait_leader(nodes: &[&Node]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<u64> = nodes.iter().map(|n| n.handle.status().leader_id).collect();
        if leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]) {
            if let Some(i) = nodes
                .iter()
                .position(|n| n.handle.status().member_id == leaders[0])
            {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader: {leaders:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Proposes `cc` on `node`, retrying while raft has no leader or drops it (bounded).
fn change(node: &Node, cc: &ConfChange) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match block_on(node.handle.propose_conf_change(cc.clone())) {
            Ok(reply) => return reply,
            Err(e) => assert!(Instant::now() < deadline, "conf change: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cc(kind: ConfChangeType, id: u64) -> ConfChange {
    let mut cc = ConfChange {
        node_id: id,
        ..ConfChange::default()
    };
    cc.set_change_type(kind);
    cc
}

fn wait_applied(node: &Node, data: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.applied.0.lock().iter().any(|d| d == data) {
        assert!(Instant::now() < deadline, "{data:?} never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn changes_apply_once_in_order_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let mut nodes: Vec<Node> = [1, 2, 3]
        .into_iter()
        .map(|id| {
            start(
                dir.path(),
                &router,
                id,
                voters(&[1, 2, 3]),
                Applied::default(),
            )
        })
        .collect();
    let leader = wait_leader(&nodes.iter().collect::<Vec<_>>());
    let put = |n: &Node, data: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while block_on(n.handle.propose(data.to_vec())).is_err() {
            assert!(Instant::now() < deadline, "propose");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    put(&nodes[leader], b"before");

    // A refused change: reply as the record said, raft's configuration unchanged.
    let refused = change(&nodes[leader], &cc(ConfChangeType::AddNode, 99));
    assert_eq!(refused, b"refused");

    // A learner, proposed through a follower (forwarded like any proposal).
    let follower = (leader + 1) % 3;
    let reply = change(&nodes[follower], &cc(ConfChangeType::AddLearnerNode, 4));
    let index: u64 = String::from_utf8(reply)
        .unwrap()
        .trim_start_matches("applied ")
        .parse()
        .unwrap();
    put(&nodes[leader], b"after learner");
    for n in &nodes {
        wait_applied(n, b"after learner");
        let r = n.record.0.lock().clone();
        assert_eq!(
            (r.voters.clone(), r.learners.clone()),
            (vec![1, 2, 3], vec![4])
        );
        assert_eq!(r.applied, vec![index], "applied once, at its index");
    }
    let data: Vec<Vec<u8>> = nodes[0].applied.0.lock().clone();
    assert_eq!(data, vec![b"before".to_vec(), b"after learner".to_vec()]);

    // Node 4 joins from node 1's record with an empty log and receives it.
    let joined = Record(Arc::new(Mutex::new(RecordState {
        applied: Vec::new(),
        ..nodes[0].record.0.lock().clone()
    })));
    let n4 = start(dir.path(), &router, 4, joined, Applied::default());
    wait_applied(&n4, b"after learner");
    assert!(
        n4.record.0.lock().applied.is_empty(),
        "reflected: passed over"
    );

    // Promote it.
    change(&nodes[leader], &cc(ConfChangeType::AddNode, 4));
    put(&nodes[leader], b"after promote");
    wait_applied(&n4, b"after promote");
    assert_eq!(n4.record.0.lock().voters, vec![1, 2, 3, 4]);

    // Node 2 (not the leader, to keep a quorum simple) restarts with its record: the changes
    // it reflects are passed over.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let old = nodes.remove(victim);
    old.handle.shutdown();
    let id = old.handle.status().member_id;
    let kept = old.record.0.lock().applied.clone();
    let restarted = start(
        dir.path(),
        &router,
        id,
        old.record.clone(),
        Applied::default(),
    );
    put(&nodes[0], b"after restart");
    wait_applied(&restarted, b"after restart");
    assert_eq!(restarted.record.0.lock().applied, kept);
    assert_eq!(restarted.record.0.lock().voters, vec![1, 2, 3, 4]);
    restarted.handle.shutdown();

    // As if it crashed before recording the promotion: the record is one change behind, and
    // the promotion is applied again, once.
    {
        let mut r = restarted.record.0.lock();
        let promotion = r.applied.pop().unwrap();
        r.conf_index = *r.applied.last().unwrap();
        r.voters = vec![1, 2, 3];
        r.learners = vec![4];
        drop(r);
        let again = start(
            dir.path(),
            &router,
            id,
            restarted.record.clone(),
            Applied::default(),
        );
        put(&nodes[0], b"after crash");
        wait_applied(&again, b"after crash");
        let r = again.record.0.lock().clone();
        assert_eq!(r.applied.last(), Some(&promotion));
        assert_eq!(r.applied.len(), kept.len());
        assert_eq!((r.voters, r.learners), (vec![1, 2, 3, 4], vec![]));
        again.handle.shutdown();
    }
    assert!(restarted.wal.exists());
    for n in nodes.iter().chain([&n4]) {
        n.handle.shutdown();
    }
}
