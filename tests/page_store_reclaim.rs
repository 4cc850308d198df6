//! Online space reclamation: overwriting a working set many times while the cleaner runs keeps
//! the files within twice the live data, and writes go on throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ringkv::page_store::{PageStore, PageStoreConfig, SimDisk};

const KEYS: u32 = 1500;
const ROUNDS: u32 = 30;

fn key(i: u32) -> Vec<u8> {
    format!("user/{:08}", i.wrapping_mul(2_654_435_761) % 100_000_000).into_bytes()
}

fn value(i: u32, round: u32) -> Vec<u8> {
    let len = if i % 50 == 0 { 6000 } else { 300 };
    vec![(i + round) as u8; len]
}

#[test]
fn overwriting_a_working_set_with_a_concurrent_cleaner_keeps_files_within_2x_live() {
    let config = PageStoreConfig {
        cache_bytes: 256 << 10,
        segment_bytes: 128 << 10,
        clean_live_percent_max: 75,
        ..PageStoreConfig::default()
    };
    let store = PageStore::open_on(Arc::new(SimDisk::new()), config).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut ci = 0;
            for round in 0..ROUNDS {
                for chunk in (0..KEYS).collect::<Vec<_>>().chunks(40) {
                    let mut txn = store.begin_write();
                    for &i in chunk {
                        txn.put(&key(i), &value(i, round)).unwrap();
                    }
                    ci += 1;
                    txn.commit(ci).unwrap();
                }
            }
            done.store(true, Ordering::Relaxed);
            ci
        })
    };
    let mut peak_file_bytes = 0;
    let mut cleaned = 0;
    while !done.load(Ordering::Relaxed) {
        cleaned += store.clean(2).unwrap().segments_cleaned;
        peak_file_bytes = peak_file_bytes.max(store.space().file_bytes);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let commits = writer.join().unwrap();
    for _ in 0..100 {
        let report = store.clean(4).unwrap();
        cleaned += report.segments_cleaned;
        if report.segments_cleaned == 0 && report.bytes_freed == 0 {
            break;
        }
    }
    let space = store.space();
    let data_bytes: u64 = (0..KEYS).map(|i| value(i, 0).len() as u64).sum();
    eprintln!(
        "commits {commits}, segments cleaned {cleaned}, peak file bytes {peak_file_bytes}, \
         {space:?}, data bytes {data_bytes}"
    );
    assert!(cleaned > 0);
    assert!(space.live_bytes >= data_bytes);
    assert!(
        space.file_bytes <= 2 * space.live_bytes,
        "files {} bytes for {} live bytes",
        space.file_bytes,
        space.live_bytes
    );
    store.check_integrity().unwrap();
    let snap = store.snapshot();
    for i in 0..KEYS {
        assert_eq!(snap.get(&key(i)).unwrap(), Some(value(i, ROUNDS - 1)));
    }
}

#[test]
fn a_background_cleaner_keeps_up_with_a_writer() {
    let config = PageStoreConfig {
        cache_bytes: 256 << 10,
        segment_bytes: 128 << 10,
        clean_live_percent_max: 75,
        ..PageStoreConfig::default()
    };
    let store = PageStore::open_on(Arc::new(SimDisk::new()), config).unwrap();
    let cleaner = store.spawn_cleaner(std::time::Duration::from_millis(1), 4);
    let mut ci = 0;
    for round in 0..10 {
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
            let mut txn = store.begin_write();
            for &i in chunk {
                txn.put(&key(i), &value(i, round)).unwrap();
            }
            ci += 1;
            txn.commit(ci).unwrap();
        }
    }
    let report = cleaner.stop().unwrap();
    assert!(report.segments_cleaned > 0, "{report:?}");
    store.check_integrity().unwrap();
    let snap = store.snapshot();
    for i in 0..KEYS {
        assert_eq!(snap.get(&key(i)).unwrap(), Some(value(i, 9)));
    }
}

/// The server never calls `clean` between compactions, and every checkpoint rewrites the pages
/// it changed: a store that was only ever overwritten grew until NOSPACE (etcdctl check perf l
/// hit the 2 GiB quota within a minute). The background checkpointer now cleans once dead bytes
/// pass both the live bytes and four segments, so the files stay bounded with no compaction.
#[test]
fn the_checkpointer_cleans_a_store_that_is_mostly_garbage() {
    let segment_bytes = 128 << 10;
    let config = PageStoreConfig {
        cache_bytes: 256 << 10,
        segment_bytes,
        clean_live_percent_max: 75,
        checkpoint_interval: std::time::Duration::from_millis(5),
        background_clean_segments: 4,
        ..PageStoreConfig::default()
    };
    let store = PageStore::open_on(Arc::new(SimDisk::new()), config).unwrap();
    let checkpointer = store.spawn_checkpointer();
    let mut ci = 0;
    let mut peak_file_bytes = 0;
    for round in 0..20 {
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
            let mut txn = store.begin_write();
            for &i in chunk {
                txn.put(&key(i), &value(i, round)).unwrap();
            }
            ci += 1;
            txn.publish(ci).unwrap();
        }
        peak_file_bytes = peak_file_bytes.max(store.space().file_bytes);
    }
    let bound = |live: u64| 2 * live + 6 * segment_bytes as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.space().file_bytes > bound(store.space().live_bytes)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    checkpointer.stop().unwrap();
    let space = store.space();
    eprintln!("publishes {ci}, peak file bytes {peak_file_bytes}, {space:?}");
    assert!(
        space.file_bytes <= bound(space.live_bytes),
        "files {} bytes for {} live bytes",
        space.file_bytes,
        space.live_bytes
    );
    store.check_integrity().unwrap();
    let snap = store.snapshot();
    for i in 0..KEYS {
        assert_eq!(snap.get(&key(i)).unwrap(), Some(value(i, 19)));
    }
}

/// etcdctl `check perf l` puts 480,000 new random keys of 1.6 KB records in a minute, and ringkv
/// hit the 2 GiB quota after 200,000 of them while etcd's file stayed under 0.5 GiB. Two causes,
/// each guarded here: a 1.6 KB entry went to a whole-page overflow extent (4 KiB + a pointer
/// entry per key, so live bytes alone were 2.5x etcd's), and the background cleaner waited
/// until dead bytes passed the live bytes, then moved 2 segments per checkpoint whatever the
/// write rate, so the files settled at over 2x live. Now entries up to half a page stay inline,
/// and the cleaner starts at `clean_garbage_percent` (25%) of live and cleans as many segments
/// per step as the log grew.
#[test]
fn random_inserts_of_check_perf_records_stay_inline_and_within_a_quarter_of_garbage() {
    use rand::{Rng, SeedableRng};
    const INSERTS: usize = 12_000;
    let segment_bytes = 128 << 10;
    let config = PageStoreConfig {
        cache_bytes: 8 << 20,
        segment_bytes,
        clean_live_percent_max: 75,
        clean_garbage_percent: 25,
        checkpoint_interval: std::time::Duration::from_millis(5),
        background_clean_segments: 8,
        ..PageStoreConfig::default()
    };
    let store = PageStore::open_on(Arc::new(SimDisk::new()), config).unwrap();
    let checkpointer = store.spawn_checkpointer();
    let seed = 0x5eed_0006;
    eprintln!("seed {seed:#x}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // The shape of an MVCC version entry for a check-perf put: a ~540-byte key that is mostly
    // the same zero padding, and a 1049-byte record (7 + 540 + 1049 = 1596 bytes).
    let record = vec![0u8; 1049];
    let mut ci = 0;
    for chunk in 0..INSERTS / 40 {
        let mut txn = store.begin_write();
        for _ in 0..40 {
            let mut key = b"\x02/etcdctl-check-perf/".to_vec();
            key.extend_from_slice(&rng.gen::<u64>().to_be_bytes());
            key.resize(540, 0);
            txn.put(&key, &record).unwrap();
        }
        ci += 1;
        txn.publish(ci).unwrap();
        if chunk % 50 == 0 {
            // Let the checkpointer run as it would between bursts of client writes.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let space = store.space();
    let live_per_insert = space.live_bytes / INSERTS as u64;
    // Inline, random splits leave 1-2 entries per leaf: about 3 KiB per entry. An overflow
    // page per entry made it over 4.5 KiB.
    assert!(
        live_per_insert < 3600,
        "{live_per_insert} live bytes per insert: {space:?}"
    );
    let bound = |live: u64| live + live / 4 + 6 * segment_bytes as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.space().file_bytes > bound(store.space().live_bytes)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    checkpointer.stop().unwrap();
    let space = store.space();
    eprintln!("{space:?}");
    assert!(
        space.file_bytes <= bound(space.live_bytes),
        "files {} bytes for {} live bytes",
        space.file_bytes,
        space.live_bytes
    );
    store.check_integrity().unwrap();
    assert_eq!(store.snapshot().len(), INSERTS as u64);
}
