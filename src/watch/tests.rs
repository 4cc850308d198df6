//! The hub on MVCC over an in-memory page store, with the commit hook called by hand: ordering,
//! exactly-once, the synced/unsynced hand-over, queue bounds, ids, compaction, progress.

use std::sync::Arc;

use super::*;
use crate::mvcc::{EventKind, Mvcc};
use crate::page_store::{PageStore, PageStoreConfig, SimDisk};

struct Harness {
    mvcc: Mvcc,
    hub: Arc<Hub>,
    index: u64,
}

impl Harness {
    fn new(config: WatchConfig) -> Harness {
        let store =
            PageStore::open_on(Arc::new(SimDisk::new()), PageStoreConfig::default()).unwrap();
        let mvcc = Mvcc::open(store).unwrap();
        let hub = Hub::new(mvcc.clone(), config);
        Harness {
            mvcc,
            hub,
            index: 0,
        }
    }

    /// One write transaction putting every key; returns its revision. The hook is not called.
    fn write(&mut self, keys: &[&str], value: &str) -> i64 {
        self.index += 1;
        let mut txn = self.mvcc.write();
        for key in keys {
            txn.put(key.as_bytes(), value.as_bytes(), 0).unwrap();
        }
        txn.commit(self.index).unwrap()
    }

    fn delete(&mut self, key: &str) -> i64 {
        self.index += 1;
        let mut txn = self.mvcc.write();
        txn.delete_range(key.as_bytes(), &[]).unwrap();
        txn.commit(self.index).unwrap()
    }

    /// A write followed by the hook, as the applier does.
    fn put(&mut self, key: &str, value: &str) -> i64 {
        let rev = self.write(&[key], value);
        self.hub.committed(rev);
        rev
    }
}

fn spec(range: KeyRange, start_revision: i64) -> WatchSpec {
    WatchSpec {
        watch_id: 0,
        range,
        start_revision,
        no_put: false,
        no_delete: false,
    }
}

fn single(key: &str) -> KeyRange {
    KeyRange::Single(key.as_bytes().to_vec())
}

fn prefix(p: &str) -> KeyRange {
    KeyRange::from_request(p.as_bytes(), &crate::mvcc::prefix_end(p.as_bytes())).unwrap()
}

/// (watch id, header revision, [(kind, key, mod revision)]) of each delivery.
type Seen = Vec<(i64, i64, Vec<(EventKind, String, i64)>)>;

fn seen(deliveries: &[Delivery]) -> Seen {
    deliveries
        .iter()
        .map(|d| {
            let events = d
                .events
                .iter()
                .map(|e| {
                    (
                        e.kind,
                        String::from_utf8(e.kv.key.clone()).unwrap(),
                        e.kv.mod_revision,
                    )
                })
                .collect();
            (d.watch_id, d.header_revision, events)
        })
        .collect()
}

/// Runs catch-up steps until the stream is synced; at most `steps` of them.
fn catch_up_all(stream: &StreamHandle, steps: usize) -> Vec<CatchUp> {
    let mut out = Vec::new();
    for _ in 0..steps {
        if !stream.has_unsynced() {
            return out;
        }
        out.extend(stream.catch_up_job()().unwrap());
    }
    assert!(!stream.has_unsynced(), "not synced after {steps} steps");
    out
}

#[test]
fn key_range_follows_etcd() {
    assert_eq!(KeyRange::from_request(b"", b""), Ok(single("\0")));
    assert_eq!(
        KeyRange::from_request(b"a", b"\0"),
        Ok(KeyRange::From(b"a".to_vec()))
    );
    assert_eq!(
        KeyRange::from_request(b"b", b"a"),
        Err(WatchError::EmptyRange)
    );
    assert_eq!(
        KeyRange::from_request(b"a", b"a"),
        Err(WatchError::EmptyRange)
    );
    let r = KeyRange::from_request(b"a", b"c").unwrap();
    assert!(r.contains(b"a") && r.contains(b"b\xff") && !r.contains(b"c") && !r.contains(b""));
    assert!(KeyRange::From(b"b".to_vec()).contains(b"zz"));
    assert!(!KeyRange::From(b"b".to_vec()).contains(b"a"));
}

#[test]
fn synced_watchers_get_one_delivery_per_revision_in_range() {
    let mut h = Harness::new(WatchConfig::default());
    let stream = h.hub.open_stream();
    let all = stream.create(spec(prefix("k"), 0)).unwrap();
    let one = stream.create(spec(single("k2"), 0)).unwrap();
    assert_eq!((all.watch_id, one.watch_id), (0, 1));
    assert_eq!(all.header_revision, 1);
    let r2 = h.put("k1", "a");
    let r3 = h.write(&["k2", "k3", "other"], "b");
    let r4 = h.delete("k2");
    h.hub.committed(r4); // one hook for two commits, as one apply batch gives
    assert_eq!(
        seen(&stream.take_queued()),
        vec![
            (0, r2, vec![(EventKind::Put, "k1".into(), r2)]),
            (
                0,
                r3,
                vec![
                    (EventKind::Put, "k2".into(), r3),
                    (EventKind::Put, "k3".into(), r3)
                ]
            ),
            (1, r3, vec![(EventKind::Put, "k2".into(), r3)]),
            (0, r4, vec![(EventKind::Delete, "k2".into(), r4)]),
            (1, r4, vec![(EventKind::Delete, "k2".into(), r4)]),
        ]
    );
    assert!(stream.take_queued().is_empty());
    assert_eq!(stream.progress(), Some(r4));
}

#[test]
fn filters_drop_puts_or_deletes() {
    let mut h = Harness::new(WatchConfig::default());
    let stream = h.hub.open_stream();
    let mut no_put = spec(single("k"), 0);
    no_put.no_put = true;
    let mut no_delete = spec(single("k"), 0);
    no_delete.no_delete = true;
    let a = stream.create(no_put).unwrap().watch_id;
    let b = stream.create(no_delete).unwrap().watch_id;
    let r2 = h.put("k", "v");
    let r3 = h.delete("k");
    h.hub.committed(r3);
    assert_eq!(
        seen(&stream.take_queued()),
        vec![
            (b, r2, vec![(EventKind::Put, "k".into(), r2)]),
            (a, r3, vec![(EventKind::Delete, "k".into(), r3)]),
        ]
    );
}

#[test]
fn history_is_replayed_then_live_events_follow() {
    let mut h = Harness::new(WatchConfig {
        catch_up_revisions: 2,
        ..WatchConfig::default()
    });
    for i in 0..5 {
        h.put("k", &i.to_string());
    }
    let stream = h.hub.open_stream();
    let created = stream.create(spec(single("k"), 3)).unwrap();
    assert_eq!(created.header_revision, 6);
    assert!(stream.progress().is_none(), "history is still owed");
    let replay = catch_up_all(&stream, 10);
    let mut revs = Vec::new();
    for step in replay {
        let CatchUp::Events(d) = step else {
            panic!("unexpected {step:?}")
        };
        assert_eq!(d.header_revision, 6);
        revs.extend(d.events.iter().map(|e| e.kv.mod_revision));
    }
    assert_eq!(revs, vec![3, 4, 5, 6]);
    let r7 = h.put("k", "live");
    assert_eq!(
        seen(&stream.take_queued()),
        vec![(created.watch_id, r7, vec![(EventKind::Put, "k".into(), r7)])]
    );
}

#[test]
fn a_future_start_skips_earlier_revisions() {
    let mut h = Harness::new(WatchConfig::default());
    let stream = h.hub.open_stream();
    let w = stream.create(spec(single("k"), 4)).unwrap().watch_id;
    h.put("k", "2");
    h.put("k", "3");
    let r4 = h.put("k", "4");
    assert_eq!(
        seen(&stream.take_queued()),
        vec![(w, r4, vec![(EventKind::Put, "k".into(), r4)])]
    );
}

/// A client that stops reading must not make the hub's memory grow: its watcher's queue stops
/// at the bound, the watcher falls back to the store, and catching up returns every revision
/// exactly once, in order, before the live ones.
#[test]
fn a_slow_watcher_is_bounded_and_catches_up_exactly_once() {
    let mut h = Harness::new(WatchConfig {
        watcher_queue_events_max: 8,
        catch_up_revisions: 7,
        ..WatchConfig::default()
    });
    let stream = h.hub.open_stream();
    let w = stream.create(spec(prefix("k"), 0)).unwrap().watch_id;
    let mut written = Vec::new();
    for i in 0..200 {
        written.push(h.put(&format!("k{}", i % 13), "v"));
        assert!(stream.with_stream(|s, _| s.queue.len()) <= 8);
    }
    assert!(stream.has_unsynced());
    let mut got = Vec::new();
    let mut record = |d: &Delivery| {
        assert_eq!(d.watch_id, w);
        got.extend(d.events.iter().map(|e| e.kv.mod_revision));
    };
    for _ in 0..100 {
        for d in stream.take_queued() {
            record(&d);
        }
        if !stream.has_unsynced() {
            break;
        }
        for step in stream.catch_up_job()().unwrap() {
            let CatchUp::Events(d) = step else {
                panic!("unexpected {step:?}")
            };
            record(&d);
        }
        // Writers go on while the watcher catches up.
        written.push(h.put("k-live", "v"));
    }
    assert!(!stream.has_unsynced());
    for d in stream.take_queued() {
        record(&d);
    }
    assert_eq!(got, written);
}

#[test]
fn a_watcher_created_between_commit_and_hook_gets_that_revision() {
    let mut h = Harness::new(WatchConfig::default());
    let r2 = h.write(&["k"], "v"); // committed, hook not yet run
    let stream = h.hub.open_stream();
    let created = stream.create(spec(single("k"), 0)).unwrap();
    assert_eq!(created.header_revision, 1);
    h.hub.committed(r2);
    assert_eq!(
        seen(&stream.take_queued()),
        vec![(created.watch_id, r2, vec![(EventKind::Put, "k".into(), r2)])]
    );
}

#[test]
fn compacted_history_ends_the_watcher() {
    let mut h = Harness::new(WatchConfig::default());
    for _ in 0..4 {
        h.put("k", "v");
    }
    h.mvcc.compact(4).unwrap();
    let stream = h.hub.open_stream();
    let old = stream.create(spec(single("k"), 2)).unwrap().watch_id;
    let at = stream.create(spec(single("k"), 4)).unwrap().watch_id;
    let out = catch_up_all(&stream, 5);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0],
        CatchUp::Compacted {
            watch_id: old,
            compact_revision: 4
        }
    );
    let CatchUp::Events(d) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(d.watch_id, at);
    assert_eq!(
        d.events
            .iter()
            .map(|e| e.kv.mod_revision)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(stream.cancel(old), None, "a compacted watcher is gone");
    assert_eq!(h.hub.watchers.load(std::sync::atomic::Ordering::Acquire), 1);
}

#[test]
fn ids_limits_and_cancel() {
    let mut h = Harness::new(WatchConfig {
        watchers_per_stream_max: 3,
        ..WatchConfig::default()
    });
    let stream = h.hub.open_stream();
    let mut chosen = spec(single("k"), 0);
    chosen.watch_id = 1;
    assert_eq!(stream.create(chosen.clone()).unwrap().watch_id, 1);
    assert_eq!(stream.create(chosen), Err(WatchError::DuplicateId));
    assert_eq!(stream.create(spec(single("k"), 0)).unwrap().watch_id, 0);
    assert_eq!(stream.create(spec(single("k"), 0)).unwrap().watch_id, 2);
    assert_eq!(
        stream.create(spec(single("k"), 0)),
        Err(WatchError::TooManyWatchers(3))
    );
    let r2 = h.put("k", "v");
    assert_eq!(stream.cancel(1), Some(r2));
    assert_eq!(stream.cancel(1), None);
    let ids: Vec<i64> = stream.take_queued().iter().map(|d| d.watch_id).collect();
    assert_eq!(ids, vec![0, 2], "the canceled watcher's queue is dropped");
    // A second stream has its own ids.
    let other = h.hub.open_stream();
    assert_eq!(other.create(spec(single("k"), 0)).unwrap().watch_id, 0);
    drop(stream);
    drop(other);
    assert_eq!(h.hub.watchers.load(std::sync::atomic::Ordering::Acquire), 0);
}

#[test]
fn progress_waits_for_queued_events() {
    let mut h = Harness::new(WatchConfig::default());
    let stream = h.hub.open_stream();
    assert_eq!(stream.progress(), Some(1));
    let w = stream.create(spec(single("k"), 0)).unwrap().watch_id;
    let r2 = h.put("k", "v");
    assert_eq!(stream.progress(), None);
    assert_eq!(stream.watcher_progress(w), None);
    stream.take_queued();
    assert_eq!(stream.progress(), Some(r2));
    assert_eq!(stream.watcher_progress(w), Some(r2));
    let r3 = h.put("other", "v");
    assert_eq!(stream.watcher_progress(w), Some(r3));
}

/// Regression: a stream took a watcher's queue and, while it was still sending it, the hook
/// queued more for the watcher and then overflowed it. A catch-up step run before the stream
/// took that second queue would send newer revisions ahead of it.
#[test]
fn catch_up_waits_for_a_watchers_queued_deliveries() {
    let mut h = Harness::new(WatchConfig {
        watcher_queue_events_max: 2,
        ..WatchConfig::default()
    });
    let stream = h.hub.open_stream();
    stream.create(spec(single("k"), 0)).unwrap();
    let r2 = h.put("k", "2");
    assert_eq!(stream.take_queued().len(), 1);
    let r3 = h.put("k", "3");
    let r4 = h.put("k", "4");
    let r5 = h.put("k", "5"); // overflows: unsynced at r5 with r3, r4 queued
    assert!(stream.has_unsynced());
    assert_eq!(stream.catch_up_job()().unwrap(), vec![]);
    let queued: Vec<i64> = stream
        .take_queued()
        .iter()
        .map(|d| d.header_revision)
        .collect();
    assert_eq!(queued, vec![r3, r4]);
    let out = stream.catch_up_job()().unwrap();
    let [CatchUp::Events(d)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(
        d.events
            .iter()
            .map(|e| e.kv.mod_revision)
            .collect::<Vec<_>>(),
        vec![r5]
    );
    assert!(r2 < r3);
}
