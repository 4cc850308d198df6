//! Page-store micro-benchmark: point put rate (batched and one put per commit) and point get
//! rate (cached and uncached) on a real directory (io_uring), printed as a markdown table.
//!
//! `cargo bench --bench page_store_bench -- [keys] [dir]`: `keys` defaults to 1,000,000; CI
//! runs it with a tiny count so it cannot rot. `dir` defaults to a temporary directory (put it
//! on the disk under test).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::page_store::{PageStore, PageStoreConfig};

const VALUE_BYTES: usize = 256;
const BATCH_PUTS: u64 = 1000;

/// An etcd MVCC revision key: main revision, `_`, sub revision (17 bytes, big-endian), so
/// inserts arrive in key order as they do from the MVCC layer.
fn key(i: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&(i + 1).to_be_bytes());
    k[8] = b'_';
    k
}

struct Row {
    name: String,
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

fn row(name: &str, ops: u64, elapsed: Duration, hist: Histogram<u64>) -> Row {
    Row {
        name: name.to_string(),
        ops,
        elapsed,
        hist,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let keys: u64 = args.first().map_or(1_000_000, |a| a.parse().expect("keys"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = args
        .get(1)
        .map_or(tmp.path().to_path_buf(), std::path::PathBuf::from);
    let cached = PageStoreConfig::default();
    let uncached = PageStoreConfig {
        cache_bytes: PageStoreConfig::CACHE_BYTES_MIN,
        ..PageStoreConfig::default()
    };
    let value = vec![0xA5u8; VALUE_BYTES];
    let mut rows = Vec::new();

    // Batched puts: BATCH_PUTS per commit; the histogram is per-commit latency.
    let store = PageStore::open(&dir, cached.clone()).unwrap();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut ci = 0;
    for chunk_start in (0..keys).step_by(BATCH_PUTS as usize) {
        let t = Instant::now();
        let mut txn = store.begin_write();
        for i in chunk_start..(chunk_start + BATCH_PUTS).min(keys) {
            txn.put(&key(i), &value).unwrap();
        }
        ci += 1;
        txn.commit(ci).unwrap();
        hist.record(t.elapsed().as_micros() as u64).unwrap();
    }
    rows.push(row(
        &format!("put, {BATCH_PUTS} per commit, ascending keys"),
        keys,
        start.elapsed(),
        hist,
    ));

    // Batched overwrites of random existing keys: copy-on-write rewrites a leaf per touched
    // key, the worst case for a CoW tree.
    let overwrites = keys.min(100_000);
    let mut rng = StdRng::seed_from_u64(3);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    for chunk_start in (0..overwrites).step_by(BATCH_PUTS as usize) {
        let t = Instant::now();
        let mut txn = store.begin_write();
        for _ in chunk_start..(chunk_start + BATCH_PUTS).min(overwrites) {
            txn.put(&key(rng.gen_range(0..keys)), &value).unwrap();
        }
        ci += 1;
        txn.commit(ci).unwrap();
        hist.record(t.elapsed().as_micros() as u64).unwrap();
    }
    rows.push(row(
        &format!("put, {BATCH_PUTS} per commit, random keys"),
        overwrites,
        start.elapsed(),
        hist,
    ));

    // One put per commit: bounded by fdatasync latency, so fewer of them.
    let singles = keys.min(2000);
    let mut rng = StdRng::seed_from_u64(1);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    for _ in 0..singles {
        let t = Instant::now();
        let mut txn = store.begin_write();
        txn.put(&key(rng.gen_range(0..keys)), &value).unwrap();
        ci += 1;
        txn.commit(ci).unwrap();
        hist.record(t.elapsed().as_micros() as u64).unwrap();
    }
    rows.push(row("put, 1 per commit", singles, start.elapsed(), hist));

    let gets = |store: &PageStore, name: &str, rows: &mut Vec<Row>| {
        let snap = store.snapshot();
        let mut rng = StdRng::seed_from_u64(2);
        let mut hist = Histogram::<u64>::new(3).unwrap();
        let n = keys.min(200_000);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let v = snap.get(&key(rng.gen_range(0..keys))).unwrap();
            assert!(v.is_some());
            hist.record(t.elapsed().as_nanos() as u64 / 1000).unwrap();
        }
        rows.push(row(name, n, start.elapsed(), hist));
    };
    // Warm the cache with one pass, then measure.
    for i in 0..keys {
        store.snapshot().get(&key(i)).unwrap();
    }
    gets(&store, "get, cached", &mut rows);
    let space = store.space();

    // Reclaim what the overwrites left behind; one row per cleaner step, latency per step.
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    let mut steps = 0;
    loop {
        let t = Instant::now();
        let report = store.clean(4).unwrap();
        hist.record(t.elapsed().as_micros() as u64).unwrap();
        steps += 1;
        if report.segments_cleaned == 0 && report.bytes_freed == 0 {
            break;
        }
    }
    rows.push(row("clean step (4 segments)", steps, start.elapsed(), hist));
    let cleaned_space = store.space();
    drop(store);

    let store = PageStore::open(&dir, uncached).unwrap();
    gets(&store, "get, uncached (64 KiB cache)", &mut rows);

    println!("page store: {keys} keys, {VALUE_BYTES}-byte values, {space:?} before cleaning");
    println!("after cleaning: {cleaned_space:?}");
    println!("latency columns: per commit for puts, per get for gets, per step for clean");
    println!();
    println!("| operation | ops | ops/s | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            r.name,
            r.ops,
            r.ops as f64 / r.elapsed.as_secs_f64(),
            r.hist.value_at_quantile(0.5),
            r.hist.value_at_quantile(0.99),
            r.hist.max()
        );
    }
}
