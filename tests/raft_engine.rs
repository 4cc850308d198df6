//! The raft engine end to end on a single member: concurrent proposals and their replies, group
//! commit, read barriers, restart replay, compaction, and the errors callers can see.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod raft_support;

use parking_lot::Mutex;
use raft_support::{block_on, Applied, ToySm};
use ringkv::raft::{self, Committed, RaftConfig, RaftError, RaftHandle, StateMachine};
use ringkv::wal::Record;

fn config(dir: &Path) -> RaftConfig {
    RaftConfig::small(dir.join("wal"), 1, 0xc1)
}

fn start(dir: &Path, log: &Applied, applied: u64) -> RaftHandle {
    raft::start(config(dir), ToySm::boxed(log.clone(), applied)).expect("start")
}

fn wait_leader(handle: &RaftHandle) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.status().leader_id != handle.status().member_id {
        assert!(
            Instant::now() < deadline,
            "no leader: {:?}",
            handle.status()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn reply_index(reply: &[u8], data: &[u8]) -> u64 {
    let s = std::str::from_utf8(reply).expect("utf8 reply");
    let (index, rest) = s.split_once(':').expect("index:data");
    assert_eq!(
        rest.as_bytes(),
        data,
        "reply carries the proposal's own data"
    );
    index.parse().expect("index")
}

/// 256 proposers at once from 8 threads: every proposal gets its own reply naming the index its
/// entry was applied at; the state machine saw the entries in log order; proposals shared WAL
/// batches (far fewer fdatasyncs than proposals). The status read right after the last reply
/// covers every applied proposal: it once lagged, because the engine answered proposers before
/// publishing the status, and this test failed now and then.
#[test]
fn concurrent_proposals_get_their_replies_and_share_batches() {
    const THREADS: usize = 8;
    const IN_FLIGHT_PER_THREAD: usize = 32;
    const ROUNDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let log = Applied::default();
    let handle = start(dir.path(), &log, 0);
    wait_leader(&handle);
    let syncs_before = handle.wal_stats().syncs;
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for round in 0..ROUNDS {
                    let proposals: Vec<_> = (0..IN_FLIGHT_PER_THREAD)
                        .map(|i| {
                            let data = format!("t{t}-r{round}-i{i}").into_bytes();
                            let f = handle.propose(data.clone());
                            async move { (data, f.await) }
                        })
                        .collect();
                    for (data, reply) in block_on(futures::future::join_all(proposals)) {
                        let reply = reply.expect("proposal applied");
                        got.push((reply_index(&reply, &data), data));
                    }
                }
                got
            })
        })
        .collect();
    let mut acked: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let proposals = THREADS * IN_FLIGHT_PER_THREAD * ROUNDS;
    assert_eq!(acked.len(), proposals);
    acked.sort();
    let applied = log.0.lock().clone();
    assert_eq!(
        applied.len(),
        proposals,
        "each proposal applied exactly once"
    );
    for (c, (index, data)) in applied.iter().zip(&acked) {
        assert_eq!(
            (c.index, &c.data),
            (*index, data),
            "reply index = applied index"
        );
    }
    assert!(
        applied.windows(2).all(|w| w[0].index < w[1].index),
        "applied in log order"
    );
    let syncs = handle.wal_stats().syncs - syncs_before;
    let elapsed = started.elapsed();
    println!(
        "{proposals} proposals in {elapsed:?} ({:.0}/s), {syncs} WAL fdatasyncs ({:.1} proposals \
         per sync), {:?}",
        proposals as f64 / elapsed.as_secs_f64(),
        proposals as f64 / syncs as f64,
        handle.wal_stats()
    );
    assert!(
        syncs * 4 < proposals as u64,
        "proposals share WAL batches: {syncs} syncs for {proposals} proposals"
    );
    let status = handle.status();
    assert_eq!(status.applied_index, status.commit_index);
    assert!(status.applied_index >= proposals as u64);
    handle.shutdown();
}

/// A read barrier issued after a write was acknowledged sees it applied; concurrent barriers
/// all resolve.
#[test]
fn read_index_reflects_prior_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Applied::default();
    let handle = start(dir.path(), &log, 0);
    block_on(handle.read_index()).expect("read on a fresh member");
    for i in 0..50u32 {
        let data = format!("w{i}").into_bytes();
        block_on(handle.propose(data.clone())).unwrap();
        block_on(handle.read_index()).unwrap();
        assert_eq!(log.data().last(), Some(&data));
        assert!(handle.status().applied_index >= handle.status().commit_index);
    }
    let reads: Vec<_> = (0..100).map(|_| handle.read_index()).collect();
    for r in block_on(futures::future::join_all(reads)) {
        r.unwrap();
    }
    block_on(handle.shutdown_async());
    assert!(matches!(
        block_on(handle.read_index()),
        Err(RaftError::Stopped)
    ));
    handle.shutdown();
}

/// Propose N, shut down, restart with a state machine that durably applied only the first K:
/// entries K+1..=N are re-applied exactly once, in order, and nothing acknowledged is lost; a
/// state machine already at N gets nothing again.
#[test]
fn restart_reapplies_entries_above_the_state_machines_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = Applied::default();
    let handle = start(dir.path(), &log, 0);
    let n = 300;
    let mut acked = Vec::new();
    for i in 0..n {
        let data = format!("p{i}").into_bytes();
        let reply = block_on(handle.propose(data.clone())).unwrap();
        acked.push((reply_index(&reply, &data), data));
    }
    handle.shutdown();
    assert!(matches!(
        block_on(handle.propose(b"late".to_vec())),
        Err(RaftError::Stopped)
    ));
    let first_run = log.0.lock().clone();
    assert_eq!(first_run.len(), n);

    let k = 120;
    let (k_index, _) = acked[k - 1].clone();
    let log2 = Applied(Arc::new(Mutex::new(first_run[..k].to_vec())));
    let handle = start(dir.path(), &log2, k_index);
    // `start` returns with the member elected and the committed log replayed.
    assert_eq!(handle.status().leader_id, 1);
    let replayed = log2.0.lock().clone();
    assert_eq!(replayed, first_run, "K+1..=N re-applied once, in order");
    block_on(handle.read_index()).unwrap();
    assert_eq!(log2.0.lock().len(), n);
    // New proposals follow the replayed ones.
    let reply = block_on(handle.propose(b"after".to_vec())).unwrap();
    assert!(reply_index(&reply, b"after") > acked[n - 1].0);
    handle.shutdown();

    // A state machine that has applied everything gets nothing again.
    let all = log2.0.lock().clone();
    let last = all.last().unwrap().index;
    let log3 = Applied(Arc::new(Mutex::new(all.clone())));
    let handle = start(dir.path(), &log3, last);
    block_on(handle.read_index()).unwrap();
    assert_eq!(log3.0.lock().clone(), all);
    handle.shutdown();
}

/// Past `snapshot_entries`, the log is compacted: WAL segments are released and a restart with
/// the state machine at its applied index works; a state machine below the snapshot marker is
/// refused.
#[test]
fn compaction_releases_wal_segments_and_restart_works() {
    let dir = tempfile::tempdir().unwrap();
    let log = Applied::default();
    let handle = start(dir.path(), &log, 0);
    let payload = vec![b'x'; 500];
    for _ in 0..30 {
        let proposals: Vec<_> = (0..100).map(|_| handle.propose(payload.clone())).collect();
        for r in block_on(futures::future::join_all(proposals)) {
            r.unwrap();
        }
    }
    handle.shutdown();
    let applied = log.indexes();
    assert_eq!(applied.len(), 3000);
    let last = *applied.last().unwrap();
    let wal_dir = dir.path().join("wal");
    let segments: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == "wal"))
        .collect();
    let first_segment = segments.iter().min().unwrap();
    assert!(
        !first_segment.starts_with("0000000000000000-"),
        "oldest segments released ({} left, first {first_segment})",
        segments.len()
    );

    let handle = start(dir.path(), &log, last);
    let reply = block_on(handle.propose(b"next".to_vec())).unwrap();
    assert!(reply_index(&reply, b"next") > last);
    handle.shutdown();

    match raft::start(config(dir.path()), ToySm::boxed(Applied::default(), 0)) {
        Err(RaftError::StateMachineBehindLog {
            applied_index: 0,
            snapshot_index,
        }) => {
            assert!(snapshot_index > 0);
        }
        other => panic!("expected StateMachineBehindLog, got {other:?}"),
    }
}

#[test]
fn refuses_bad_proposals_and_foreign_wals() {
    let dir = tempfile::tempdir().unwrap();
    let log = Applied::default();
    let handle = start(dir.path(), &log, 0);
    assert!(matches!(
        block_on(handle.propose(Vec::new())),
        Err(RaftError::EmptyProposal)
    ));
    let limit = config(dir.path()).proposal_bytes_max;
    assert!(matches!(
        block_on(handle.propose(vec![0; limit + 1])),
        Err(RaftError::TooLarge { .. })
    ));
    // The largest proposal goes through.
    block_on(handle.propose(vec![7; limit])).unwrap();
    block_on(handle.try_propose(b"try".to_vec())).unwrap();
    handle.shutdown();
    handle.shutdown();

    let mut other = config(dir.path());
    other.cluster_id = 0xc2;
    match raft::start(other, ToySm::boxed(Applied::default(), 0)) {
        Err(RaftError::MemberMismatch {
            wal_cluster_id: 0xc1,
            cluster_id: 0xc2,
            ..
        }) => {}
        other => panic!("expected MemberMismatch, got {other:?}"),
    }
    let mut bad = config(dir.path());
    bad.election_timeout = bad.heartbeat;
    assert!(matches!(
        raft::start(bad, ToySm::boxed(Applied::default(), 0)),
        Err(RaftError::InvalidConfig(_))
    ));
}

/// `None`: nothing blocked yet; `Some(false)`: `apply` is blocked; `Some(true)`: open.
type Gate = Arc<(Mutex<Option<bool>>, parking_lot::Condvar)>;

/// Blocks in `apply` on an entry `"block"` until the test opens the gate.
struct GateSm {
    gate: Gate,
    applied: u64,
}

impl StateMachine for GateSm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        for e in entries {
            if e.data == b"block" {
                let (state, cv) = &*self.gate;
                let mut state = state.lock();
                *state = Some(false); // "the loop is blocked"
                while *state != Some(true) {
                    cv.wait(&mut state);
                }
            }
            assert!(e.data != b"boom", "the state machine fails on boom");
            self.applied = e.index;
        }
        entries.iter().map(|e| e.data.clone()).collect()
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}

fn gate_sm() -> (Box<dyn StateMachine>, Gate) {
    let gate = Arc::new((Mutex::new(None), parking_lot::Condvar::new()));
    let sm = GateSm {
        gate: gate.clone(),
        applied: 0,
    };
    (Box::new(sm), gate)
}

/// With the loop stuck in `apply`, the queue fills to exactly `proposal_queue_depth`: then
/// `try_propose` fails with `Overloaded` and `propose` waits; once the loop moves, every queued
/// proposal and every waiting one complete (also when other waiters gave up meanwhile).
#[test]
fn full_queue_makes_propose_wait_and_try_propose_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (sm, gate) = gate_sm();
    let cfg = config(dir.path());
    let depth = cfg.proposal_queue_depth;
    let handle = raft::start(cfg, sm).unwrap();
    let blocker = std::thread::spawn({
        let handle = handle.clone();
        move || block_on(handle.propose(b"block".to_vec()))
    });
    while gate.0.lock().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let queued: Vec<_> = (0..depth)
        .map(|i| handle.try_propose(format!("q{i}").into_bytes()))
        .collect();
    assert!(matches!(
        futures::FutureExt::now_or_never(handle.try_propose(b"one too many".to_vec())),
        Some(Err(RaftError::Overloaded { depth: d })) if d == depth
    ));
    let waiting = std::thread::spawn({
        let handle = handle.clone();
        move || {
            // Waiters that give up: their wakers must not strand the live ones.
            for _ in 0..depth {
                block_on(async {
                    let mut gives_up = std::pin::pin!(handle.propose(b"gives up".to_vec()));
                    assert!(futures::poll!(gives_up.as_mut()).is_pending());
                });
            }
            let waiters: Vec<_> = (0..3 * depth)
                .map(|i| handle.propose(format!("w{i}").into_bytes()))
                .collect();
            block_on(futures::future::join_all(waiters))
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiting.is_finished(), "propose waits for room");
    *gate.0.lock() = Some(true);
    gate.1.notify_all();
    assert_eq!(blocker.join().unwrap().unwrap(), b"block");
    for (i, reply) in block_on(futures::future::join_all(queued))
        .into_iter()
        .enumerate()
    {
        assert_eq!(reply.unwrap(), format!("q{i}").into_bytes());
    }
    for (i, reply) in waiting.join().unwrap().into_iter().enumerate() {
        assert_eq!(reply.unwrap(), format!("w{i}").into_bytes());
    }
    handle.shutdown();
}

/// A panic in the state machine stops the member: the proposer and every later caller get
/// `Stopped` instead of waiting forever, and `shutdown` returns.
#[test]
fn state_machine_panic_stops_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let (sm, _gate) = gate_sm();
    let handle = raft::start(config(dir.path()), sm).unwrap();
    block_on(handle.propose(b"fine".to_vec())).unwrap();
    assert!(matches!(
        block_on(handle.propose(b"boom".to_vec())),
        Err(RaftError::Stopped)
    ));
    assert!(matches!(
        block_on(handle.propose(b"after".to_vec())),
        Err(RaftError::Stopped)
    ));
    assert!(matches!(
        block_on(handle.read_index()),
        Err(RaftError::Stopped)
    ));
    handle.shutdown();
}

/// A log written by hand: entries 1..=10 of term 1 (1 is the leader's no-op), hard state commit
/// 3 (the commit index is persisted lazily, so it may lag what was applied). A state machine at
/// 6 gets exactly 7..=10; one at 2 gets 3..=10; the no-op is never passed.
#[test]
fn restart_passes_over_entries_between_persisted_commit_and_applied_index() {
    for (sm_applied, expect_first) in [(6u64, 7u64), (2, 3), (0, 2), (10, 11)] {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let (wal, _) = ringkv::wal::Wal::open(&wal_dir, config(dir.path()).wal).unwrap();
        let mut records = vec![
            Record::Metadata {
                member_id: 1,
                cluster_id: 0xc1,
            },
            Record::HardState {
                term: 1,
                vote: 1,
                commit: 3,
            },
        ];
        for index in 1..=10u64 {
            let mut data = vec![0u8]; // entry type: normal
            if index > 1 {
                data.extend_from_slice(format!("e{index}").as_bytes());
            }
            records.push(Record::Entry {
                index,
                term: 1,
                data,
            });
        }
        block_on(wal.append(records)).unwrap();
        wal.close().unwrap();

        let log = Applied::default();
        let handle = start(dir.path(), &log, sm_applied);
        block_on(handle.read_index()).unwrap();
        let want: Vec<u64> = (expect_first..=10).collect();
        assert_eq!(log.indexes(), want, "state machine at {sm_applied}");
        for c in log.0.lock().iter() {
            assert_eq!(c.data, format!("e{}", c.index).into_bytes());
        }
        handle.shutdown();
    }
}
