//! SIGKILL loop against real processes: a child (this test binary, re-executed) appends entries
//! and prints each acknowledged index; the parent kills it at random moments, reopens the WAL
//! and checks that every acknowledged entry is there, intact and in order.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use rand::{Rng, SeedableRng};
use ringkv::wal::{Record, Wal, WalConfig};

const CHILD_DIR_ENV: &str = "RINGKV_WAL_SIGKILL_CHILD_DIR";
const CYCLES: usize = 60;
const IN_FLIGHT: usize = 32;

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 256 << 10,
        batch_bytes_max: 32 << 10,
        ..WalConfig::default()
    }
}

/// The data of entry `index` is a function of the index, so the parent can check it.
fn entry_data(index: u64) -> Vec<u8> {
    let len = 16 + (index % 200) as usize;
    index
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// The child: appends entries with up to `IN_FLIGHT` in flight until killed, printing
/// `ack <index>` once each is durable. Only runs when the parent sets the environment variable.
#[test]
#[ignore = "run by wal_sigkill_loop as a child process"]
fn wal_sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let (wal, recovered) = Wal::open(Path::new(&dir), config()).unwrap();
    let mut next = recovered.entries.last().map_or(1, |e| e.index + 1);
    let mut out = std::io::stdout().lock();
    writeln!(out, "start {next}").unwrap();
    out.flush().unwrap();
    let mut in_flight = FuturesOrdered::new();
    // Bounded, in case the parent is gone and cannot kill it.
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    futures::executor::block_on(async {
        while std::time::Instant::now() < give_up {
            while in_flight.len() < IN_FLIGHT {
                let index = next;
                next += 1;
                let durable = wal.append(vec![Record::Entry {
                    index,
                    term: 1,
                    data: entry_data(index),
                }]);
                in_flight.push_back(async move { durable.await.map(|()| index) });
            }
            let index = in_flight.next().await.unwrap().unwrap();
            writeln!(out, "ack {index}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn wal_sigkill_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member").join("wal");
    let seed: u64 =
        std::env::var("WAL_SIGKILL_SEED").map_or_else(|_| rand::random(), |s| s.parse().unwrap());
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut acked_max = 0u64;
    let mut kills_after_acks = 0;
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "wal_sigkill_child",
                "--nocapture",
                "--ignored",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DIR_ENV, &dir)
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
        // Wait until the child has recovered, then let it run for a random while.
        // The test harness prints its own text too ("test wal_sigkill_child ... " without a
        // newline, so "start" may share its line).
        let deadline = Instant::now() + Duration::from_secs(20);
        let start: u64 = loop {
            let line = lines_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("child started");
            if let Some(at) = line.find("start ") {
                break line[at + "start ".len()..].trim().parse().unwrap();
            }
        };
        assert!(
            start > acked_max,
            "cycle {cycle}: child resumed at {start}, but {acked_max} was acknowledged"
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..80)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let before = acked_max;
        for line in lines_rx.try_iter() {
            if let Some(at) = line.find("ack ") {
                acked_max = acked_max.max(line[at + "ack ".len()..].trim().parse().unwrap());
            }
        }
        kills_after_acks += usize::from(acked_max > before);

        let (wal, recovered) =
            Wal::open(&dir, config()).unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: {e}"));
        let last = recovered.entries.last().map_or(0, |e| e.index);
        assert!(
            last >= acked_max,
            "seed {seed} cycle {cycle}: log ends at {last}, {acked_max} was acknowledged"
        );
        for (i, entry) in recovered.entries.iter().enumerate() {
            assert_eq!(entry.index, i as u64 + 1, "seed {seed} cycle {cycle}");
            assert_eq!(
                entry.data,
                entry_data(entry.index),
                "seed {seed} cycle {cycle}: entry {}",
                entry.index
            );
        }
        wal.close().unwrap();
    }
    println!("{CYCLES} kills in {:?}, {acked_max} entries acknowledged, {kills_after_acks} kills with new acks", started.elapsed());
    assert!(
        kills_after_acks * 3 >= CYCLES,
        "most kills must land while the child is acknowledging writes"
    );
}
