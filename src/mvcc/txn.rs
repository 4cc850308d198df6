//! Write transactions: a batch of successive revisions sharing one page-store write transaction
//! and one commit (`MvccBatch`, `BatchTxn`), and the single write transaction (`MvccTxn`), a
//! batch of one revision. Reads see the batch's own writes; the commit makes them durable and
//! visible together with `current_rev`.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use crate::page_store::{Snapshot, WriteTxn};

use super::encoding::{encode_i64, revision_key, version_key, Record, META_CURRENT_REV};
use super::range::{self, KeyRange};
use super::view::{get_at, AliveKeys};
use super::{check_read_rev, Inner, KeyValue, RangeOptions, RangeResult, Result, Revision};

/// Revisions applied in one page-store commit. Each `txn()` opens the next revision scope; a
/// scope that ends having changed something takes the next main revision, exactly as a
/// separate `MvccTxn` would. Nothing is visible to readers, and nothing is durable, until
/// `finish` commits every revision at once and then publishes the last one as current; a crash
/// or a drop before that leaves the store at its previous commit. Holds the writer lock, so
/// compaction batches and other writers wait until it ends.
pub struct MvccBatch<'a> {
    // Field order is drop order: the page store's transaction ends before the writer lock.
    pub(super) txn: WriteTxn<'a>,
    /// The committed state this batch started from (the writer lock keeps it current).
    snap: Snapshot,
    inner: &'a Inner,
    /// Revision of the last commit; the batch's first revision is `committed_rev + 1`.
    committed_rev: i64,
    /// Revision of the last scope that ended with changes (`committed_rev` if none did).
    last_rev: i64,
    /// Stable while the batch holds the writer lock (compaction takes it to move).
    compacted_rev: i64,
    /// For every key the batch changed, its states in ascending main revision (`None`:
    /// deleted); the revision's last state only when a scope changed the key twice.
    written: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    /// A scope with changes was dropped without `end` or `rollback`: its writes are in `txn`
    /// but own no revision, so the batch must not commit.
    poisoned: bool,
    _writer: MutexGuard<'a, ()>,
}

/// One revision scope of a batch: changes made in it share main revision `revision()`, and its
/// reads see every earlier scope of the batch. End it with `end` (keeping its changes) or
/// `rollback` (removing them; it then takes no revision). A scope that changed nothing takes no
/// revision either way.
pub struct BatchTxn<'b, 'a> {
    batch: &'b mut MvccBatch<'a>,
    /// Changes made so far; the change at index `i` has sub revision `i`.
    changes: usize,
    ended: bool,
}

/// The single write transaction: a batch of one scope, committed on its own. Changes become
/// visible and durable at `commit`; dropping it discards them. Holds the writer lock.
pub struct MvccTxn<'a> {
    batch: MvccBatch<'a>,
    changes: usize,
}

impl<'a> MvccBatch<'a> {
    pub(super) fn begin(inner: &'a Inner) -> MvccBatch<'a> {
        let writer = inner.writer.lock();
        let txn = inner.store.begin_write();
        let snap = inner.store.snapshot();
        let committed_rev = inner.current_rev.load(Ordering::Acquire);
        debug_assert_eq!(
            snap.get(META_CURRENT_REV)
                .expect("read current_rev")
                .map_or(1, |v| super::encoding::decode_i64(&v)),
            committed_rev,
            "in-memory current revision disagrees with the store"
        );
        MvccBatch {
            txn,
            snap,
            inner,
            committed_rev,
            last_rev: committed_rev,
            compacted_rev: inner.compacted_rev.load(Ordering::Acquire),
            written: BTreeMap::new(),
            poisoned: false,
            _writer: writer,
        }
    }

    /// Opens the next revision scope.
    pub fn txn(&mut self) -> BatchTxn<'_, 'a> {
        BatchTxn {
            batch: self,
            changes: 0,
            ended: false,
        }
    }

    /// The compacted revision: stable while the batch holds the writer lock.
    pub fn compacted_revision(&self) -> i64 {
        self.compacted_rev
    }

    /// The revision of the batch's latest ended scope with changes, or the committed revision.
    pub fn revision(&self) -> i64 {
        self.last_rev
    }

    /// Commits every revision of the batch in one durable page-store commit recording
    /// `consistent_index`, then publishes the last revision to readers; returns it (the
    /// unchanged current revision if no scope changed anything).
    pub fn finish(self, consistent_index: u64) -> Result<i64> {
        self.end(consistent_index, true)
    }

    /// `finish` without waiting for durability: every revision of the batch is visible to
    /// readers when this returns, and durable at the page store's next checkpoint (its
    /// `durable_consistent_index` then reaches `consistent_index`). A crash before that
    /// recovers the previous checkpoint; the caller redoes the rest (ringkv replays the WAL).
    pub fn publish(self, consistent_index: u64) -> Result<i64> {
        self.end(consistent_index, false)
    }

    fn end(mut self, consistent_index: u64, durable: bool) -> Result<i64> {
        assert!(
            !self.poisoned,
            "a batch scope was dropped with changes it neither ended nor rolled back"
        );
        let changed = self.last_rev != self.committed_rev;
        if changed {
            self.txn.put(META_CURRENT_REV, &encode_i64(self.last_rev))?;
        } else if consistent_index == self.snap.consistent_index() {
            // Nothing to publish; a durable finish still makes earlier publishes durable.
            if durable {
                // The checkpoint takes the page store's writer, which `txn` holds.
                drop(self.txn);
                self.inner.store.checkpoint()?;
            }
            return Ok(self.committed_rev);
        }
        if durable {
            self.txn.commit(consistent_index)?;
        } else {
            self.txn.publish(consistent_index)?;
        }
        if changed {
            // Only now, after the page-store commit and still under the writer lock (dropped
            // on return): readers never see part of a batch.
            self.inner
                .current_rev
                .store(self.last_rev, Ordering::Release);
        }
        Ok(self.last_rev)
    }

    /// Writes `key -> value` in a table MVCC does not own (first byte at least
    /// `FOREIGN_TABLE_MIN`) as part of the batch's commit. A scope's rollback does not undo it:
    /// write only what the entry keeps, outside any open scope.
    pub fn put_foreign(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        assert!(
            key.first().is_some_and(|&t| t >= super::FOREIGN_TABLE_MIN),
            "{key:x?} is in a table MVCC owns"
        );
        Ok(self.txn.put(key, value)?)
    }

    /// Deletes `key` from a table MVCC does not own (see `put_foreign`); returns whether it
    /// existed.
    pub fn delete_foreign(&mut self, key: &[u8]) -> Result<bool> {
        assert!(
            key.first().is_some_and(|&t| t >= super::FOREIGN_TABLE_MIN),
            "{key:x?} is in a table MVCC owns"
        );
        Ok(self.txn.delete(key)?)
    }

    /// The newest state of `key` the batch wrote at or below `rev`; `None` if it wrote none
    /// there (the committed store answers).
    fn written_at(&self, key: &[u8], rev: i64) -> Option<&Option<KeyValue>> {
        let states = self.written.get(key)?;
        states
            .iter()
            .rev()
            .find(|(main, _)| *main <= rev)
            .map(|(_, s)| s)
    }

    /// The kv of `key` at `rev` (`rev` at most the scope being written).
    fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        match self.written_at(key, rev) {
            Some(state) => Ok(state.clone()),
            None => get_at(&self.snap, key, rev.min(self.committed_rev)),
        }
    }

    /// Kvs alive in `range` at `rev`, seeing the batch's writes up to `rev`.
    fn alive<'s>(
        &'s self,
        range: &KeyRange,
        rev: i64,
    ) -> Box<dyn Iterator<Item = Result<KeyValue>> + 's> {
        if rev <= self.committed_rev {
            return Box::new(AliveKeys::new(&self.snap, range, rev));
        }
        let committed = AliveKeys::new(&self.snap, range, self.committed_rev).peekable();
        let range = range.clone();
        let written = self
            .written
            .keys()
            .filter(move |k| range.contains(k))
            .filter_map(move |k| self.written_at(k, rev).map(|s| (k, s)))
            .peekable();
        Box::new(Merge { committed, written })
    }

    /// A range read by a scope whose reads see `txn_rev`.
    fn range(
        &self,
        txn_rev: i64,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> Result<RangeResult> {
        let rev = check_read_rev(opts.rev, txn_rev, self.compacted_rev)?;
        let range = KeyRange::new(key, range_end);
        let limit = range::fetch_limit(opts);
        let (kvs, count) = range::collect(self.alive(&range, rev), limit, opts.count_only)?;
        Ok(range::finish(kvs, count, txn_rev, opts))
    }

    fn write_record(&mut self, key: &[u8], rev: Revision, record: &Record) -> Result<()> {
        self.txn.put(&version_key(key, rev), &record.encode())?;
        self.txn.put(&revision_key(rev), key)?;
        Ok(())
    }

    fn note_written(&mut self, key: &[u8], main: i64, state: Option<KeyValue>) {
        // Room for one state: nearly every key gets only one per batch, and `Vec`'s first push
        // would reserve four (88 bytes each), 264 bytes wasted per key: 120 MiB of the peak
        // when check perf l deletes its 480k keys in one request.
        let states = self
            .written
            .entry(key.to_vec())
            .or_insert_with(|| Vec::with_capacity(1));
        match states.last_mut() {
            Some((m, s)) if *m == main => *s = state,
            _ => {
                debug_assert!(states.last().is_none_or(|(m, _)| *m < main));
                states.push((main, state));
            }
        }
    }

    /// Removes the `changes` writes of scope `main` from the transaction and the overlay.
    /// A scope only adds keys (new version and revision entries), so deleting them restores
    /// the page-store transaction's previous contents exactly.
    fn undo_scope(&mut self, main: i64, changes: usize) -> Result<()> {
        for sub in 0..changes as i64 {
            let rk = revision_key(Revision { main, sub });
            let key = self
                .txn
                .get(&rk)?
                .expect("a scope's revision entry is in its batch");
            assert!(self
                .txn
                .delete(&version_key(&key, Revision { main, sub }))?);
            assert!(self.txn.delete(&rk)?);
            if let Some(states) = self.written.get_mut(&key) {
                if states.last().is_some_and(|(m, _)| *m == main) {
                    states.pop();
                }
                if states.is_empty() {
                    self.written.remove(&key);
                }
            }
        }
        Ok(())
    }
}

impl BatchTxn<'_, '_> {
    fn main(&self) -> i64 {
        self.batch.last_rev + 1
    }

    /// The revision reads in this scope see: its own once it has changed something.
    pub fn revision(&self) -> i64 {
        if self.changes > 0 {
            self.main()
        } else {
            self.batch.last_rev
        }
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision {
            main: self.main(),
            sub: self.changes as i64,
        };
        self.changes += 1;
        rev
    }

    /// Writes `value` under `key`; returns the key's previous kv (seeing the batch's own
    /// earlier writes), if it existed.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>> {
        let prev = self.batch.get(key, self.main())?;
        let rev = self.next_revision();
        let (create_revision, version) = prev
            .as_ref()
            .map_or((rev.main, 1), |p| (p.create_revision, p.version + 1));
        let record = Record::Put {
            create_revision,
            version,
            lease,
            value: value.to_vec(),
        };
        self.batch.write_record(key, rev, &record)?;
        let kv = record.into_kv(key.to_vec(), rev.main);
        self.batch.note_written(key, rev.main, kv);
        Ok(prev)
    }

    /// Deletes the keys alive in the range (`range_end` as in `Mvcc::range`), writing one
    /// tombstone per key in ascending key order; returns their previous kvs.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        self.delete_range_values(key, range_end, true)
    }

    /// `delete_range`, but the previous kvs come with empty values unless `keep_values`: a
    /// caller that does not answer them (etcd's DeleteRange without `prev_kv`) need not hold
    /// every deleted value at once (480k of 1 KiB in check perf's final delete).
    pub fn delete_range_values(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        keep_values: bool,
    ) -> Result<Vec<KeyValue>> {
        let range = KeyRange::new(key, range_end);
        let doomed: Vec<KeyValue> = self
            .batch
            .alive(&range, self.main())
            .map(|kv| {
                kv.map(|mut kv| {
                    if !keep_values {
                        kv.value = Vec::new();
                    }
                    kv
                })
            })
            .collect::<Result<_>>()?;
        for kv in &doomed {
            let rev = self.next_revision();
            self.batch.write_record(&kv.key, rev, &Record::Tombstone)?;
            self.batch.note_written(&kv.key, rev.main, None);
        }
        Ok(doomed)
    }

    /// A range as `Mvcc::range` answers it, but at this scope's revision (see `revision`) and
    /// seeing the batch's own writes.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        self.batch.range(self.revision(), key, range_end, opts)
    }

    /// Keeps the scope's changes in the batch; returns the revision they got, or the batch's
    /// unchanged revision if there were none.
    pub fn end(mut self) -> i64 {
        self.ended = true;
        if self.changes > 0 {
            self.batch.last_rev = self.main();
        }
        self.batch.last_rev
    }

    /// Removes the scope's changes from the batch: it takes no revision, and the batch goes on
    /// as if the scope had never been opened.
    pub fn rollback(mut self) -> Result<()> {
        self.ended = true;
        let (main, changes) = (self.main(), self.changes);
        if let Err(e) = self.batch.undo_scope(main, changes) {
            self.batch.poisoned = true;
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for BatchTxn<'_, '_> {
    fn drop(&mut self) {
        if !self.ended && self.changes > 0 {
            self.batch.poisoned = true;
        }
    }
}

impl<'a> MvccTxn<'a> {
    pub(super) fn begin(inner: &'a Inner) -> MvccTxn<'a> {
        MvccTxn {
            batch: MvccBatch::begin(inner),
            changes: 0,
        }
    }

    /// Runs `f` on the batch's one scope, carrying the change count across calls.
    fn scope<T>(&mut self, f: impl FnOnce(&mut BatchTxn<'_, 'a>) -> T) -> T {
        let mut scope = BatchTxn {
            batch: &mut self.batch,
            changes: self.changes,
            ended: true,
        };
        let out = f(&mut scope);
        self.changes = scope.changes;
        out
    }

    /// The revision reads in this transaction see: the next one once it has changed something.
    pub fn revision(&self) -> i64 {
        if self.changes > 0 {
            self.batch.last_rev + 1
        } else {
            self.batch.last_rev
        }
    }

    /// Writes `value` under `key`; returns the key's previous kv (seeing this transaction's own
    /// earlier writes), if it existed.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>> {
        self.scope(|s| s.put(key, value, lease))
    }

    /// Deletes the keys alive in the range (`range_end` as in `Mvcc::range`), writing one
    /// tombstone per key in ascending key order; returns their previous kvs.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        self.scope(|s| s.delete_range(key, range_end))
    }

    /// A range as `Mvcc::range` answers it, but at this transaction's revision (see `revision`)
    /// and seeing its own writes when reading at that revision.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        self.batch.range(self.revision(), key, range_end, opts)
    }

    /// Makes the changes durable and visible with `consistent_index` (the raft index applied);
    /// returns the revision they got, or the unchanged current revision if there were none.
    pub fn commit(mut self, consistent_index: u64) -> Result<i64> {
        if self.changes > 0 {
            self.batch.last_rev += 1;
        }
        self.batch.finish(consistent_index)
    }
}

/// Merges committed kvs with the batch's own writes, both ascending by key; a write replaces
/// the committed kv of the same key, and a delete hides it.
struct Merge<C: Iterator, W: Iterator> {
    committed: Peekable<C>,
    written: Peekable<W>,
}

impl<'w, C, W> Iterator for Merge<C, W>
where
    C: Iterator<Item = Result<KeyValue>>,
    W: Iterator<Item = (&'w Vec<u8>, &'w Option<KeyValue>)>,
{
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.committed.peek(), self.written.peek()) {
                (None, None) => return None,
                (Some(_), None) | (Some(Err(_)), Some(_)) => CmpOrdering::Less,
                (None, Some(_)) => CmpOrdering::Greater,
                (Some(Ok(c)), Some((k, _))) => c.key.as_slice().cmp(k.as_slice()),
            };
            match order {
                CmpOrdering::Less => return self.committed.next(),
                CmpOrdering::Equal => drop(self.committed.next()),
                CmpOrdering::Greater => {}
            }
            let (_, state) = self.written.next().expect("peeked");
            if let Some(kv) = state {
                return Some(Ok(kv.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::mvcc::{Mvcc, RangeOptions};
    use crate::page_store::{PageStore, PageStoreConfig, SimDisk};

    #[test]
    fn the_overlay_reserves_one_state_per_key_and_still_takes_more() {
        let store =
            PageStore::open_on(Arc::new(SimDisk::new()), PageStoreConfig::default()).unwrap();
        let m = Mvcc::open(store).unwrap();
        let mut txn = m.write();
        for key in [b"a", b"b", b"c"] {
            txn.put(key, b"v", 0).unwrap();
        }
        txn.commit(0).unwrap();

        let mut batch = m.batch();
        let mut scope = batch.txn();
        let deleted = scope.delete_range_values(b"a", b"d", false).unwrap();
        let keys: Vec<&[u8]> = deleted.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [b"a", b"b", b"c"]);
        assert!(deleted
            .iter()
            .all(|kv| kv.value.is_empty() && kv.version == 1));
        scope.end();
        assert_eq!(batch.written.len(), 3);
        assert!(batch.written.values().all(|s| s.capacity() == 1));

        // A key written again in a later scope of the same batch keeps both states.
        let mut scope = batch.txn();
        assert_eq!(scope.put(b"a", b"w", 0).unwrap(), None);
        scope.end();
        assert_eq!(batch.written[&b"a"[..]].len(), 2);
        let mut scope = batch.txn();
        let deleted = scope.delete_range_values(b"a", b"", true).unwrap();
        assert_eq!(deleted[0].value, b"w");
        scope.rollback().unwrap();
        let rev = batch.finish(0).unwrap();
        assert_eq!(rev, 4);
        let got = m.range(b"a", b"", &RangeOptions::default()).unwrap();
        assert_eq!(got.kvs[0].value, b"w");
    }
}
