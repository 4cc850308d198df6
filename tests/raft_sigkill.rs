//! SIGKILL loop against real processes: a child (this test binary, re-executed) runs a raft
//! member whose state machine records its applied index in a file, proposes from many threads
//! and prints every acknowledged proposal; the parent kills it at random moments, then checks
//! that every acknowledged proposal is in the recovered WAL and that a restarted member re-applies
//! exactly the entries above the state machine's recorded index, in order, acknowledged ones
//! included.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use ringkv::raft::storage::decode_entry;
use ringkv::raft::{self, Committed, RaftConfig, StateMachine};
use ringkv::wal::Wal;

const CHILD_DIR_ENV: &str = "RINGKV_RAFT_SIGKILL_CHILD_DIR";
const CYCLES: usize = 24;
const PROPOSER_THREADS: usize = 16;

fn config(dir: &Path) -> RaftConfig {
    RaftConfig::small(dir.join("wal"), 1, 0xc1)
}

fn applied_file(dir: &Path) -> PathBuf {
    dir.join("applied")
}

fn read_applied(dir: &Path) -> u64 {
    std::fs::read_to_string(applied_file(dir)).map_or(0, |s| s.trim().parse().unwrap())
}

/// Applies by counting. Its durable applied index is written to a file (temp + rename, so a
/// kill leaves the old or the new value) only every `DURABLE_EVERY` entries, like a store that
/// commits its consistent index in batches: on restart, acknowledged entries above it must be
/// re-applied. Optionally keeps what it applied.
struct FileSm {
    dir: PathBuf,
    applied: u64,
    durable: u64,
    seen: Option<Arc<Mutex<Vec<Committed>>>>,
}

const DURABLE_EVERY: u64 = 50;

impl FileSm {
    fn new(dir: &Path, seen: Option<Arc<Mutex<Vec<Committed>>>>) -> Self {
        let applied = read_applied(dir);
        FileSm {
            dir: dir.to_path_buf(),
            applied,
            durable: applied,
            seen,
        }
    }
}

impl StateMachine for FileSm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        let replies = entries
            .iter()
            .map(|e| {
                assert!(e.index > self.applied, "entry {} applied twice", e.index);
                self.applied = e.index;
                e.index.to_string().into_bytes()
            })
            .collect();
        if let Some(seen) = &self.seen {
            seen.lock().extend_from_slice(entries);
        }
        if self.applied - self.durable >= DURABLE_EVERY {
            let tmp = self.dir.join("applied.tmp");
            std::fs::write(&tmp, self.applied.to_string()).unwrap();
            std::fs::rename(&tmp, applied_file(&self.dir)).unwrap();
            self.durable = self.applied;
        }
        replies
    }

    fn applied_index(&self) -> u64 {
        self.durable
    }
}

/// The child: proposes from `PROPOSER_THREADS` threads until killed, printing
/// `ack <index> <payload>` once each proposal is applied. Only runs when the parent sets the
/// environment variable.
#[test]
#[ignore = "run by raft_sigkill_loop as a child process"]
fn raft_sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let sm = FileSm::new(&dir, None);
    let handle = raft::start(config(&dir), Box::new(sm)).unwrap();
    println!("\nstart");
    std::io::stdout().flush().unwrap();
    let pid = std::process::id();
    // Bounded, in case the parent is gone and cannot kill it.
    let give_up = Instant::now() + Duration::from_secs(10);
    let threads: Vec<_> = (0..PROPOSER_THREADS)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < give_up {
                    let payload = format!("p{pid}-t{t}-n{n}");
                    n += 1;
                    let reply =
                        futures::executor::block_on(handle.propose(payload.clone().into_bytes()))
                            .unwrap();
                    let index = String::from_utf8(reply).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {index} {payload}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    handle.shutdown();
}

/// Runs the child once, kills it after a random while, returns its acknowledged proposals.
fn run_child(exe: &Path, dir: &Path, run_for: Duration) -> Vec<(u64, String)> {
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "raft_sigkill_child",
            "--nocapture",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("child started");
        if line == "start" {
            break;
        }
    }
    std::thread::sleep(run_for);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    lines_rx
        .try_iter()
        .filter_map(|line| {
            let rest = line.strip_prefix("ack ")?;
            let (index, payload) = rest.split_once(' ').unwrap();
            Some((index.parse().unwrap(), payload.to_string()))
        })
        .collect()
}

#[test]
fn raft_sigkill_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seed: u64 =
        std::env::var("RAFT_SIGKILL_SEED").map_or_else(|_| rand::random(), |s| s.parse().unwrap());
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    // Every acknowledged proposal over the whole run: committed entries are never rewritten.
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut kills_after_acks = 0;
    let mut replayed_total = 0;
    let mut replayed_acked = 0;
    for cycle in 0..CYCLES {
        let run_for = Duration::from_millis(rng.gen_range(20..250));
        let new_acks = run_child(&exe, dir, run_for);
        kills_after_acks += usize::from(!new_acks.is_empty());
        for (index, payload) in new_acks {
            if let Some(old) = acked.insert(index, payload.clone()) {
                assert_eq!(
                    old, payload,
                    "seed {seed} cycle {cycle}: index {index} acked twice"
                );
            }
        }

        // Durability: every acknowledged proposal is in the recovered log, unless compacted
        // (which happens only below the state machine's durable applied index).
        let (wal, recovered) = Wal::open(&dir.join("wal"), config(dir).wal)
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: {e}"));
        let compacted_to = recovered.snapshot.map_or(0, |s| s.index);
        let applied = read_applied(dir);
        assert!(
            compacted_to <= applied,
            "seed {seed} cycle {cycle}: compacted past applied"
        );
        // Decoded as the engine reads them back (entry type, request id, data).
        let entries: Vec<::raft::eraftpb::Entry> = recovered
            .entries
            .iter()
            .map(|e| decode_entry(e).unwrap_or_else(|e| panic!("seed {seed}: {e}")))
            .collect();
        let log: BTreeMap<u64, &::raft::eraftpb::Entry> =
            entries.iter().map(|e| (e.index, e)).collect();
        for (index, payload) in acked.range(compacted_to + 1..) {
            let data = log.get(index).unwrap_or_else(|| {
                panic!("seed {seed} cycle {cycle}: acknowledged entry {index} lost")
            });
            assert_eq!(
                data.get_entry_type(),
                ::raft::eraftpb::EntryType::EntryNormal,
                "a normal entry"
            );
            assert_eq!(
                &data.data[..],
                payload.as_bytes(),
                "seed {seed} cycle {cycle}"
            );
        }
        // A single member commits its whole log once re-elected: these must be re-applied.
        let expected: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .filter(|e| e.index > applied && !e.data.is_empty())
            .map(|e| (e.index, e.data.to_vec()))
            .collect();
        wal.close().unwrap();

        // Replay: a restarted member re-applies exactly the entries above the recorded index.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sm = FileSm::new(dir, Some(seen.clone()));
        let handle = raft::start(config(dir), Box::new(sm)).unwrap();
        futures::executor::block_on(handle.read_index()).unwrap();
        handle.shutdown();
        let seen: Vec<(u64, Vec<u8>)> = seen
            .lock()
            .iter()
            .map(|c| (c.index, c.data.clone()))
            .collect();
        assert_eq!(
            seen, expected,
            "seed {seed} cycle {cycle}: the log above {applied} re-applied once, in order"
        );
        let seen: BTreeMap<u64, Vec<u8>> = seen.into_iter().collect();
        for (index, payload) in acked.range(applied + 1..) {
            assert_eq!(
                seen.get(index).map(Vec::as_slice),
                Some(payload.as_bytes()),
                "seed {seed} cycle {cycle}: acknowledged entry {index} not re-applied"
            );
            replayed_acked += 1;
        }
        replayed_total += seen.len();
    }
    println!(
        "{CYCLES} kills in {:?}: {} proposals acknowledged, {kills_after_acks} kills with new \
         acks, {replayed_total} entries re-applied on restarts ({replayed_acked} of them \
         acknowledged)",
        started.elapsed(),
        acked.len()
    );
    assert!(
        replayed_acked > 0,
        "restarts re-applied acknowledged entries"
    );
    assert!(
        kills_after_acks * 3 >= CYCLES * 2,
        "most kills must land while the child is acknowledging proposals"
    );
}
