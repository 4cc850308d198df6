//! Three raft members in one process for the engine's tests: a toy state machine that records
//! what it applies, and a `Transport` that is an in-memory router (no sockets) which can isolate
//! a member (drop everything to and from it), which is how a partition looks to raft.
#![allow(dead_code)] // each test binary uses its own part of it

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::raft::eraftpb::Message;
use parking_lot::Mutex;
use ringkv::raft::{self, Committed, RaftConfig, RaftHandle, StateMachine, Transport};

pub const IDS: [u64; 3] = [1, 2, 3];

#[derive(Clone, Default)]
pub struct Applied(pub Arc<Mutex<Vec<Committed>>>);

impl Applied {
    pub fn data(&self) -> Vec<Vec<u8>> {
        self.0.lock().iter().map(|c| c.data.clone()).collect()
    }

    pub fn indexes(&self) -> Vec<u64> {
        self.0.lock().iter().map(|c| c.index).collect()
    }
}

/// Appends every entry to `log`; its "durable" applied index is the last one it applied. Replies
/// `"<index>:<data>"`.
pub struct ToySm {
    log: Applied,
    applied: u64,
}

impl ToySm {
    pub fn boxed(log: Applied, applied: u64) -> Box<dyn StateMachine> {
        Box::new(ToySm { log, applied })
    }
}

impl StateMachine for ToySm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        let mut log = self.log.0.lock();
        entries
            .iter()
            .map(|e| {
                assert!(e.index > self.applied, "applied twice: {}", e.index);
                assert!(!e.data.is_empty(), "the engine hands over only proposals");
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
pub struct Router {
    pub handles: Arc<Mutex<HashMap<u64, RaftHandle>>>,
    pub isolated: Arc<Mutex<HashSet<u64>>>,
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

pub struct Members {
    pub router: Router,
    pub handles: Vec<RaftHandle>,
    pub applied: Vec<Applied>,
}

impl Members {
    pub fn start(dir: &Path, request_timeout: Duration) -> Members {
        let router = Router::default();
        let mut handles = Vec::new();
        let mut applied = Vec::new();
        for id in IDS {
            let mut cfg = RaftConfig::small(dir.join(format!("wal{id}")), id, 0xc1);
            cfg.voters = IDS.to_vec();
            cfg.request_timeout = request_timeout;
            let log = Applied::default();
            let sm = ToySm::boxed(log.clone(), 0);
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
    pub fn wait_leader(&self) -> u64 {
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

    pub fn shutdown(self) {
        for h in &self.handles {
            h.shutdown();
        }
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

pub fn idx(id: u64) -> usize {
    IDS.iter().position(|&x| x == id).unwrap()
}

/// Polls (bounded) until `cond` holds.
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
