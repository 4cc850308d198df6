//! SIGKILL loop: a child process commits MVCC writes to a real on-disk page store and reports
//! each one after its commit returns; the parent kills it at random moments, reopens the store
//! and checks that every reported write is there with its revision.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use ringkv::mvcc::{Mvcc, MvccConfig, MvccError, RangeOptions};
use ringkv::page_store::{PageStore, PageStoreConfig};

const DIR_ENV: &str = "RINGKV_MVCC_SIGKILL_DIR";
const CYCLE_ENV: &str = "RINGKV_MVCC_SIGKILL_CYCLE";
const CYCLES: u64 = 60;
const CYCLES_MIN: u64 = 50;
const TEST_BUDGET: Duration = Duration::from_secs(40);

/// One acknowledged put: `key` had `value` at revision `rev`.
#[derive(Debug, Clone)]
struct Ack {
    key: Vec<u8>,
    rev: i64,
    value: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}")).unwrap();
        s
    })
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split_whitespace();
    let key = unhex(parts.next()?);
    let rev = parts.next()?.parse().ok()?;
    let value = unhex(parts.next().unwrap_or(""));
    Some(Ack { key, rev, value })
}

fn open(dir: &PathBuf) -> Mvcc {
    let store = PageStore::open(dir, PageStoreConfig::default()).expect("open page store");
    Mvcc::open(store).expect("open mvcc")
}

/// The child: commits forever (until killed), one unique key per transaction plus churn on a
/// few shared keys so that compaction has history to remove, and prints `ACK key rev value`
/// after each commit returns. Does nothing unless started by `sigkill_loop`.
#[test]
#[ignore = "child process of sigkill_loop"]
fn sigkill_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var(CYCLE_ENV).unwrap().parse().unwrap();
    // Small compaction batches, so that kills also land between the batches of a compaction.
    let store = PageStore::open(dir, PageStoreConfig::default()).expect("open page store");
    let config = MvccConfig {
        compaction_batch_entries: 8,
        ..MvccConfig::default()
    };
    let mvcc = Mvcc::open_with(store, config).expect("open mvcc");
    let mut rng = rand::rngs::StdRng::seed_from_u64(cycle);
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    for i in 0u64.. {
        assert!(started.elapsed() < Duration::from_secs(30), "never killed");
        let key = format!("c{cycle:03}/k{i:06}").into_bytes();
        let value = rng.gen::<u64>().to_be_bytes().to_vec();
        let mut txn = mvcc.write();
        txn.put(&key, &value, 0).unwrap();
        let churn = format!("churn/{}", rng.gen_range(0..8)).into_bytes();
        if rng.gen_bool(0.3) {
            txn.delete_range(&churn, b"").unwrap();
        } else {
            txn.put(&churn, &value, 0).unwrap();
        }
        let consistent_index = mvcc.page_store().consistent_index() + 1;
        let rev = txn.commit(consistent_index).unwrap();
        writeln!(out, "ACK {} {rev} {}", hex(&key), hex(&value)).unwrap();
        out.flush().unwrap();
        if i % 8 == 7 {
            match mvcc.compact(rev - 8) {
                Ok(()) | Err(MvccError::Compacted) => {}
                Err(e) => panic!("compact: {e}"),
            }
        }
    }
}

fn check(mvcc: &Mvcc, acks: &[Ack]) {
    mvcc.check_integrity().expect("integrity");
    let compacted = mvcc.compacted_revision();
    for ack in acks {
        assert!(
            mvcc.current_revision() >= ack.rev,
            "revision {} lost",
            ack.rev
        );
        // Each key is written once, so its latest version is the acknowledged one.
        let latest = mvcc.range(&ack.key, b"", &RangeOptions::default()).unwrap();
        let kv = latest.kvs.first().unwrap_or_else(|| panic!("lost {ack:?}"));
        assert_eq!(
            (kv.mod_revision, &kv.value),
            (ack.rev, &ack.value),
            "{ack:?}"
        );
        if ack.rev >= compacted {
            let opts = RangeOptions {
                rev: ack.rev,
                ..RangeOptions::default()
            };
            let then = mvcc.range(&ack.key, b"", &opts).unwrap();
            assert_eq!(then.kvs, latest.kvs, "{ack:?} read at its revision");
        }
    }
}

#[test]
#[ignore = "needs the real page store: the placeholder keeps nothing on disk, so every restart \
            finds an empty store; un-ignore when the log-structured store is merged"]
fn sigkill_loop() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let mut acks: Vec<Ack> = Vec::new();
    let mut cycles = 0;
    for cycle in 0..CYCLES {
        if started.elapsed() > TEST_BUDGET {
            break;
        }
        let mut child = Command::new(&exe)
            .args(["--exact", "sigkill_child", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(DIR_ENV, dir.path())
            .env(CYCLE_ENV, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            // A line without its newline was cut by the kill: not acknowledged.
            while stdout.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                if let Some(ack) = parse_ack(&line) {
                    if tx.send(ack).is_err() {
                        break;
                    }
                }
                line.clear();
            }
        });
        // Kill after a random number of acknowledgements or a random time, whichever first,
        // so that some kills land mid-commit and some mid-compaction.
        let wait_acks = rng.gen_range(0..120);
        let deadline = Instant::now() + Duration::from_millis(rng.gen_range(5..300));
        let mut seen = 0;
        while seen < wait_acks {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(ack) => {
                    acks.push(ack);
                    seen += 1;
                }
                Err(_) => break,
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child exited on its own: {status}");
        reader.join().unwrap();
        acks.extend(rx.try_iter());
        let mvcc = open(&dir.path().to_path_buf());
        check(&mvcc, &acks);
        cycles += 1;
    }
    eprintln!(
        "{cycles} kill cycles, {} acknowledged writes, {:?}",
        acks.len(),
        started.elapsed()
    );
    assert!(
        cycles >= CYCLES_MIN,
        "only {cycles} cycles fit in {TEST_BUDGET:?}"
    );
}
