//! Simulated power loss under the raft engine: a member on a `SimDisk` takes proposals from
//! several threads until the disk "loses power" at a random operation; the member halts, every
//! pending request fails, and a member restarted on what survived (synced data; unsynced writes
//! lost, whole or torn) applies every acknowledged proposal at its acknowledged index. Run with
//! the WAL writer on the raft executor and on a thread of its own (`WalExecutor`). Seeded; the
//! seed is printed so a failure replays (`RAFT_CRASH_SEED`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use ringkv::raft::{self, Committed, RaftConfig, RaftError, StateMachine, WalExecutor};
use ringkv::wal::sim::SimDisk;

const SEEDS: u64 = 30;
const CRASHES_PER_SEED: usize = 3;
const PROPOSER_THREADS: usize = 4;
const PROPOSALS_PER_THREAD: usize = 200;

/// Keeps everything it applied; nothing durable, so every restart replays the whole log.
struct MemSm {
    seen: Arc<Mutex<Vec<Committed>>>,
}

impl StateMachine for MemSm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        self.seen.lock().extend_from_slice(entries);
        entries
            .iter()
            .map(|e| e.index.to_string().into_bytes())
            .collect()
    }

    fn applied_index(&self) -> u64 {
        0
    }
}

fn config(wal_executor: WalExecutor) -> RaftConfig {
    let mut cfg = RaftConfig::small(Path::new("/sim/member/wal"), 1, 0xc1);
    cfg.wal_executor = wal_executor;
    // The state machine keeps nothing durable, so the log must never be compacted.
    cfg.snapshot_entries = u64::MAX / 2;
    cfg
}

#[test]
fn acknowledged_proposals_survive_simulated_power_loss() {
    survive_power_loss(WalExecutor::Raft, SEEDS);
}

/// The writer on its own executor thread: submissions and completions cross threads, a crash
/// fails the writer on that thread, and shutdown must join it.
#[test]
fn acknowledged_proposals_survive_simulated_power_loss_with_wal_on_own_thread() {
    survive_power_loss(WalExecutor::Own, SEEDS / 2);
}

fn survive_power_loss(wal_executor: WalExecutor, seeds: u64) {
    println!("wal executor: {wal_executor:?}");
    let first_seed: u64 = std::env::var("RAFT_CRASH_SEED")
        .map_or_else(|_| rand::random::<u32>().into(), |s| s.parse().unwrap());
    let seeds = if std::env::var("RAFT_CRASH_SEED").is_ok() {
        1
    } else {
        seeds
    };
    println!("seeds {first_seed}..{}", first_seed + seeds);
    let mut halted_requests = 0;
    let mut acked_total = 0;
    for seed in first_seed..first_seed + seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut disk = SimDisk::new();
        // index -> payload of every acknowledged proposal of this seed's history.
        let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for crash in 0..=CRASHES_PER_SEED {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sm = MemSm { seen: seen.clone() };
            let handle = raft::start_with_disk(disk.clone(), config(wal_executor), Box::new(sm))
                .unwrap_or_else(|e| panic!("seed {seed} crash {crash}: restart failed: {e}"));
            // Replay: the whole committed log came back, every acknowledged proposal included.
            let applied: BTreeMap<u64, Vec<u8>> = seen
                .lock()
                .iter()
                .map(|c| (c.index, c.data.clone()))
                .collect();
            for (index, payload) in &acked {
                assert_eq!(
                    applied.get(index),
                    Some(payload),
                    "seed {seed} crash {crash}: acknowledged entry {index} lost"
                );
            }
            if crash == CRASHES_PER_SEED {
                handle.shutdown();
                break;
            }

            disk.crash_at_op(rng.gen_range(1..400), seed * 31 + crash as u64);
            let threads: Vec<_> = (0..PROPOSER_THREADS)
                .map(|t| {
                    let handle = handle.clone();
                    std::thread::spawn(move || {
                        let mut acks = Vec::new();
                        for n in 0..PROPOSALS_PER_THREAD {
                            let payload = format!("s{seed}-c{crash}-t{t}-n{n}").into_bytes();
                            match futures::executor::block_on(handle.propose(payload.clone())) {
                                Ok(reply) => {
                                    let index: u64 =
                                        String::from_utf8(reply).unwrap().parse().unwrap();
                                    acks.push((index, payload));
                                }
                                Err(RaftError::Halted { .. } | RaftError::Stopped) => {
                                    return (acks, true)
                                }
                                Err(e) => panic!("unexpected error {e}"),
                            }
                        }
                        (acks, false)
                    })
                })
                .collect();
            for t in threads {
                let (acks, halted) = t.join().unwrap();
                halted_requests += usize::from(halted);
                acked_total += acks.len();
                for (index, payload) in acks {
                    assert!(
                        acked.insert(index, payload).is_none(),
                        "seed {seed}: index {index} acknowledged twice"
                    );
                }
            }
            handle.shutdown();
            // Power loss at the armed operation, or (if the proposals finished first) now.
            disk = disk
                .crashed_image()
                .unwrap_or_else(|| disk.crash(seed * 31 + crash as u64));
        }
    }
    println!(
        "{seeds} seeds x {CRASHES_PER_SEED} crashes: {acked_total} proposals acknowledged, \
         {halted_requests} proposer threads saw the member halt"
    );
    assert!(
        halted_requests > 0,
        "some crashes must land while proposals are in flight"
    );
}
