//! The raft engine with peers, in one process: three members whose `Transport` is an in-memory
//! router (no sockets), so forwarding, request-id matching, ReadIndex on followers and leader
//! loss are tested without the network. The router can isolate a member (drop everything to and
//! from it), which is how a partition looks to raft.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::raft::eraftpb::Message;
use parking_lot::Mutex;
use ringkv::raft::{self, Committed, RaftConfig, RaftHandle, StateMachine, Transport};

const IDS: [u64; 3] = [1, 2, 3];

#[derive(Clone, Default)]
struct Applied(Arc<Mutex<Vec<Committed>>>);

impl Applied {
    fn data(&self) -> Vec<Vec<u8>> {
        self.0.lock().iter().map(|c| c.data.clone()).collect()
    }
}

struct ToySm {
    log: Applied,
    applied: u64,
}

impl StateMachine for ToySm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        let mut log = self.log.0.lock();
        entries
            .iter()
            .map(|e| {
                assert!(e.index > self.applied, "applied twice: {}", e.index);
                self.applied = e.index;
                log.push(e.clone());
                let mut reply = format!("{}:", e.index).into_bytes();
                reply.extend_from_slice(&e.data);
                reply
            })
            .collect()
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}

/// Delivers each message straight into the addressee's request queue, unless either end is
/// isolated (then the message is lost, as on a partitioned network).
#[derive(Clone, Default)]
struct Router {
    handles: Arc<Mutex<HashMap<u64, RaftHandle>>>,
    isolated: Arc<Mutex<HashSet<u64>>>,
}

impl Transport for Router {
    fn send(&mut self, msg: Message) -> bool {
        {
            let isolated = self.isolated.lock();
            if isolated.contains(&msg.to) || isolated.contains(&msg.from) {
                return true;
            }
        }
        let handle = self.handles.lock().get(&msg.to).cloned();
        handle.is_some_and(|h| h.step(msg).is_ok())
    }
}

struct Members {
    router: Router,
    handles: Vec<RaftHandle>,
    applied: Vec<Applied>,
}

impl Members {
    fn start(dir: &Path) -> Members {
        let router = Router::default();
        let mut handles = Vec::new();
        let mut applied = Vec::new();
        for id in IDS {
            let mut cfg = RaftConfig::small(dir.join(format!("wal{id}")), id, 0xc1);
            cfg.voters = IDS.to_vec();
            let log = Applied::default();
            let sm = Box::new(ToySm {
                log: log.clone(),
                applied: 0,
            });
            let handle =
                raft::start_with_transport(cfg, sm, Box::new(router.clone())).expect("start");
            router.handles.lock().insert(id, handle.clone());
            handles.push(handle);
            applied.push(log);
        }
        Members {
            router,
            handles,
            applied,
        }
    }

    /// Polls until every member not isolated names the same leader, itself not isolated.
    fn wait_leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let isolated = self.router.isolated.lock().clone();
            let leaders: Vec<u64> = self
                .handles
                .iter()
                .filter(|h| !isolated.contains(&h.status().member_id))
                .map(|h| h.status().leader_id)
                .collect();
            let leader = leaders[0];
            if leader != 0 && !isolated.contains(&leader) && leaders.iter().all(|&l| l == leader) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader: {leaders:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn shutdown(self) {
        for h in &self.handles {
            h.shutdown();
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Proposals through followers are forwarded to the leader and answered on the member that took
/// them, with that entry's own reply; a follower's read barrier returns only once it has applied
/// what was acknowledged before it; every member applies the same log.
#[test]
fn followers_forward_proposals_and_serve_read_index() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path());
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.data().len() < first.len() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(a.data(), first, "every member applies the same log");
    }
    members.shutdown();
}

/// Isolating the leader: the other two elect a new one (pre-vote and check-quorum on) and keep
/// committing; once the old leader rejoins it catches up with the same log.
#[test]
fn a_new_leader_takes_over_and_the_old_one_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let members = Members::start(dir.path());
    let old = members.wait_leader();
    let idx = |id: u64| IDS.iter().position(|&x| x == id).unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while members.handles[idx(old)].status().leader_id == old {
        assert!(
            Instant::now() < deadline,
            "the isolated leader did not step down"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
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
