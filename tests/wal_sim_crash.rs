//! Crash tests on the simulated disk: random raft-like workloads, power loss at a random disk
//! operation (unsynced writes lost or torn, unsynced directory operations lost), reopen. The
//! recovered log must be exactly the replay of a prefix of the submissions that contains every
//! acknowledged one. Failures print the seed; `WAL_SIM_SEED=<n>` replays one seed.

use std::collections::BTreeMap;
use std::path::Path;

use futures::executor::block_on;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::wal::sim::SimDisk;
use ringkv::wal::{HardState, Metadata, Record, Recovered, SnapshotMarker, Wal, WalConfig};

/// The log as the model sees it: a plain map, rewrites and snapshots applied by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
    hard_state: Option<HardState>,
    metadata: Option<Metadata>,
    snapshot: Option<SnapshotMarker>,
    /// Highest index written or covered by the snapshot: the next entry may be at most one past.
    last_index: u64,
}

impl Model {
    fn apply(&mut self, record: &Record) {
        match record {
            Record::Entry { index, term, data } => {
                self.entries.split_off(index);
                self.entries.insert(*index, (*term, data.clone()));
                self.last_index = *index;
            }
            Record::HardState { term, vote, commit } => {
                self.hard_state = Some(HardState {
                    term: *term,
                    vote: *vote,
                    commit: *commit,
                });
            }
            Record::Snapshot { index, term } => {
                self.snapshot = Some(SnapshotMarker {
                    index: *index,
                    term: *term,
                });
                self.entries = self.entries.split_off(&(index + 1));
                self.last_index = self.last_index.max(*index);
            }
            Record::Metadata {
                member_id,
                cluster_id,
            } => {
                self.metadata = Some(Metadata {
                    member_id: *member_id,
                    cluster_id: *cluster_id,
                });
            }
        }
    }

    fn matches(&self, recovered: &Recovered) -> bool {
        let entries: Vec<(u64, u64, Vec<u8>)> = recovered
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.clone()))
            .collect();
        let want: Vec<(u64, u64, Vec<u8>)> = self
            .entries
            .iter()
            .map(|(i, (t, d))| (*i, *t, d.clone()))
            .collect();
        entries == want
            && recovered.hard_state == self.hard_state
            && recovered.metadata == self.metadata
            && recovered.snapshot == self.snapshot
    }
}

enum Op {
    Append(Vec<Record>),
    Release(u64),
}

/// A random valid submission for the state `model` will be in once everything before it is in.
fn random_op(rng: &mut StdRng, model: &mut Model, term: &mut u64) -> Op {
    let snapshot_index = model.snapshot.map_or(0, |s| s.index);
    let mut records = Vec::new();
    match rng.gen_range(0..100) {
        0..=59 => {
            for _ in 0..rng.gen_range(1..=4) {
                let len = rng.gen_range(0..300);
                records.push(Record::Entry {
                    index: model.last_index + 1,
                    term: *term,
                    data: (0..len).map(|_| rng.gen()).collect(),
                });
                model.apply(records.last().unwrap());
            }
        }
        60..=69 if model.last_index > snapshot_index => {
            *term += 1;
            let from = model.last_index.saturating_sub(2).max(snapshot_index + 1);
            let index = rng.gen_range(from..=model.last_index);
            records.push(Record::Entry {
                index,
                term: *term,
                data: vec![rng.gen(); rng.gen_range(0..50)],
            });
            model.apply(records.last().unwrap());
        }
        70..=84 => {
            records.push(Record::HardState {
                term: *term,
                vote: rng.gen_range(0..5),
                commit: model.last_index,
            });
            model.apply(records.last().unwrap());
        }
        85..=89 => {
            let index = rng.gen_range(snapshot_index..=model.last_index);
            records.push(Record::Snapshot { index, term: *term });
            model.apply(records.last().unwrap());
        }
        90..=93 => {
            records.push(Record::Metadata {
                member_id: rng.gen_range(1..4),
                cluster_id: 77,
            });
            model.apply(records.last().unwrap());
        }
        _ if snapshot_index > 0 => return Op::Release(snapshot_index),
        _ => {
            records.push(Record::HardState {
                term: *term,
                vote: 1,
                commit: 0,
            });
            model.apply(records.last().unwrap());
        }
    }
    Op::Append(records)
}

/// Counts of what the seeds exercised, to keep the test honest about its coverage.
#[derive(Debug, Default)]
struct Coverage {
    crashes_mid_workload: u64,
    lost_unacknowledged: u64,
    repaired_tails: u64,
    segments_max: usize,
}

fn run_seed(seed: u64, coverage: &mut Coverage) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = Path::new("/sim/member/wal");
    let cfg = WalConfig {
        segment_bytes: rng.gen_range(16..=24) * 4096,
        batch_bytes_max: rng.gen_range(1..=8) * 1024,
        ..WalConfig::small()
    };
    let mut disk = SimDisk::new();
    let mut durable = Model::default();
    let mut term = 1;
    let mut pending: Vec<Vec<Record>> = Vec::new();
    let mut acked = 0;
    for cycle in 0..5 {
        let (wal, recovered) = Wal::open_with_disk(disk.clone(), dir, cfg.clone())
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: open failed: {e}"));
        // Find the prefix of the last cycle's submissions that the log holds.
        let mut model = durable.clone();
        let mut found = None;
        for p in 0..=pending.len() {
            if p > 0 {
                for record in &pending[p - 1] {
                    model.apply(record);
                }
            }
            if p >= acked && model.matches(&recovered) {
                coverage.lost_unacknowledged += u64::from(p < pending.len());
                found = Some(model.clone());
                break;
            }
        }
        coverage.repaired_tails += u64::from(recovered.repaired_tail.is_some());
        coverage.segments_max = coverage.segments_max.max(recovered.segments);
        durable = found.unwrap_or_else(|| {
            panic!("seed {seed} cycle {cycle}: recovered log is no prefix of the submissions holding all {acked} acknowledged ones\nrecovered: {recovered:?}")
        });

        // Submit a random workload, some waited for one by one, some pipelined; the disk dies
        // at a random operation.
        disk.crash_at_op(rng.gen_range(1..80), rng.gen());
        let mut model = durable.clone();
        pending.clear();
        let mut waiting = Vec::new();
        let mut results = Vec::new();
        for _ in 0..rng.gen_range(5..60) {
            match random_op(&mut rng, &mut model, &mut term) {
                Op::Append(records) => {
                    waiting.push(wal.append(records.clone()));
                    pending.push(records);
                }
                Op::Release(index) => {
                    let _ = block_on(wal.release_to(index));
                }
            }
            if rng.gen_bool(0.3) {
                results.extend(waiting.drain(..).map(|f| block_on(f).is_ok()));
            }
        }
        results.extend(waiting.drain(..).map(|f| block_on(f).is_ok()));
        // Batches become durable in order and a failure poisons the WAL: successes form a prefix.
        let first_failure = results.iter().position(|ok| !ok).unwrap_or(results.len());
        assert!(
            results[first_failure..].iter().all(|ok| !ok),
            "seed {seed} cycle {cycle}: success after a failure: {results:?}"
        );
        acked = first_failure;
        wal.close().unwrap();
        disk = if let Some(image) = disk.crashed_image() {
            coverage.crashes_mid_workload += 1;
            image
        } else {
            assert_eq!(
                acked,
                pending.len(),
                "seed {seed} cycle {cycle}: failures without a crash"
            );
            disk.crash(rng.gen())
        };
    }
}

#[test]
fn random_workloads_survive_random_crashes() {
    let seeds: Vec<u64> = match std::env::var("WAL_SIM_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => (0..120).collect(),
    };
    let mut coverage = Coverage::default();
    for seed in seeds {
        println!("seed {seed}");
        run_seed(seed, &mut coverage);
    }
    println!("{coverage:?}");
    assert!(
        coverage.crashes_mid_workload > 100
            && coverage.repaired_tails > 5
            && coverage.segments_max > 2,
        "{coverage:?}"
    );
}
