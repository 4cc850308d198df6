//! Snapshot isolation: a pinned snapshot reads the same bytes while thousands of commits and
//! concurrent cleaner steps go on, and readers on other threads share it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::page_store::{CleanReport, PageStore, PageStoreConfig, SimDisk};

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

#[test]
fn a_pinned_snapshot_is_unchanged_by_10000_commits_and_a_concurrent_cleaner() {
    let config = PageStoreConfig {
        cache_bytes: 256 << 10,
        segment_bytes: 64 << 10,
        clean_live_percent_max: 80,
        ..PageStoreConfig::default()
    };
    let store = PageStore::open_on(Arc::new(SimDisk::new()), config).unwrap();
    let mut txn = store.begin_write();
    for i in 0..3000 {
        let big = if i % 100 == 0 { 9000 } else { 60 };
        txn.put(&key(i), &vec![i as u8; big]).unwrap();
    }
    txn.commit(1).unwrap();

    let snap = store.snapshot();
    let before: Vec<_> = snap.range(b"", None).map(Result::unwrap).collect();
    assert_eq!(before.len(), 3000);

    let stop = Arc::new(AtomicBool::new(false));
    let cleaner = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut moved = 0;
            while !stop.load(Ordering::Relaxed) {
                moved += store.clean(2).unwrap().pages_moved;
                std::thread::yield_now();
            }
            moved
        })
    };
    let reader = {
        let (snap, stop, before) = (snap.clone(), stop.clone(), before.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) || rounds == 0 {
                let now: Vec<_> = snap.range(b"", None).map(Result::unwrap).collect();
                assert!(now == before, "snapshot changed under a concurrent reader");
                rounds += 1;
            }
            rounds
        })
    };

    let mut rng = StdRng::seed_from_u64(1);
    for ci in 2..10_002u64 {
        let mut txn = store.begin_write();
        let k = key(rng.gen_range(0..3000));
        if rng.gen_bool(0.1) {
            txn.delete(&k).unwrap();
        } else {
            let len = if rng.gen_bool(0.02) { 20_000 } else { 70 };
            txn.put(&k, &vec![ci as u8; len]).unwrap();
        }
        txn.commit(ci).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let moved = cleaner.join().unwrap();
    let rounds = reader.join().unwrap();
    eprintln!("cleaner moved {moved} pages; reader compared {rounds} full ranges");

    let after: Vec<_> = snap.range(b"", None).map(Result::unwrap).collect();
    assert!(after == before, "snapshot changed");
    assert_eq!(snap.consistent_index(), 1);
    for (k, v) in before.iter().step_by(97) {
        assert_eq!(snap.get(k).unwrap().as_ref(), Some(v));
    }
    assert_eq!(store.consistent_index(), 10_001);
    store.check_integrity().unwrap();

    // Once the pin drops, the cleaner can give the space back.
    drop(snap);
    let pinned_file_bytes = store.space().file_bytes;
    for _ in 0..50 {
        if store.clean(8).unwrap() == CleanReport::default() {
            break;
        }
    }
    assert!(store.space().file_bytes < pinned_file_bytes);
    store.check_integrity().unwrap();
}

#[test]
fn snapshots_and_range_iterators_are_clone_send_sync_and_hold_the_pin() {
    fn is<T: Clone + Send + Sync>(_: &T) {}
    let store = PageStore::open_on(Arc::new(SimDisk::new()), PageStoreConfig::default()).unwrap();
    let mut txn = store.begin_write();
    txn.put(b"a", b"1").unwrap();
    txn.put(b"b", b"2").unwrap();
    txn.commit(1).unwrap();
    let snap = store.snapshot();
    is(&snap);
    let mut iter = snap.range(b"", None);
    drop(snap);
    let mut txn = store.begin_write();
    txn.delete(b"a").unwrap();
    txn.delete(b"b").unwrap();
    txn.commit(2).unwrap();
    store.clean(16).unwrap();
    assert_eq!(
        iter.next().unwrap().unwrap(),
        (b"a".to_vec(), b"1".to_vec())
    );
    assert_eq!(
        iter.next().unwrap().unwrap(),
        (b"b".to_vec(), b"2".to_vec())
    );
    assert!(iter.next().is_none());
    assert!(store.snapshot().is_empty());
}

/// Fresh snapshots taken on several threads while a writer commits and the cleaner moves and
/// deletes segments: each sees one whole commit (its consistent index matches the values that
/// commit wrote), and nothing it can reach is deleted under it.
#[test]
fn fresh_snapshots_on_many_threads_see_whole_commits_while_the_cleaner_runs() {
    let config = PageStoreConfig {
        cache_bytes: 128 << 10,
        segment_bytes: 32 << 10,
        clean_live_percent_max: 80,
        ..PageStoreConfig::default()
    };
    let store = PageStore::open_on(Arc::new(SimDisk::new()), config).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let cleaner = store.spawn_cleaner(std::time::Duration::from_micros(200), 2);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    let snap = store.snapshot();
                    let ci = snap.consistent_index();
                    if ci == 0 {
                        continue;
                    }
                    // Every commit rewrites a stripe of keys with its own index.
                    let stripe = ci % 20;
                    for j in 0..10u64 {
                        let v = snap.get(&key((stripe * 10 + j) as u32)).unwrap().unwrap();
                        assert_eq!(&v[..8], &ci.to_le_bytes(), "torn commit seen");
                    }
                    let v = snap.get(b"counter").unwrap().unwrap();
                    assert_eq!(v, ci.to_le_bytes());
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for ci in 1..=3000u64 {
        let mut txn = store.begin_write();
        let stripe = ci % 20;
        for j in 0..10 {
            let mut v = ci.to_le_bytes().to_vec();
            v.resize(if j == 0 { 5000 } else { 200 }, 0);
            txn.put(&key((stripe * 10 + j) as u32), &v).unwrap();
        }
        txn.put(b"counter", &ci.to_le_bytes()).unwrap();
        txn.commit(ci).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let cleaned = cleaner.stop().unwrap();
    eprintln!("readers checked {seen} snapshots; cleaner {cleaned:?}");
    assert!(cleaned.segments_cleaned > 0);
    store.check_integrity().unwrap();
}
