//! The write transaction: puts and range deletes that share one main revision, reads that see
//! the transaction's own writes, and the commit that makes them durable with `current_rev`.

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

/// The single write transaction. Changes become visible and durable at `commit`; dropping it
/// discards them. Holds the writer lock until it ends.
pub struct MvccTxn<'a> {
    // Field order is drop order: the page store's transaction ends before the writer lock.
    txn: WriteTxn<'a>,
    /// The committed state this transaction started from (the writer lock keeps it current).
    snap: Snapshot,
    inner: &'a Inner,
    /// Revision of the last commit; this transaction's changes get `begin_rev + 1`.
    begin_rev: i64,
    compacted_rev: i64,
    /// Changes made so far; the change at index `i` has sub revision `i`.
    changes: usize,
    /// The latest state of every key this transaction changed (`None`: deleted).
    written: BTreeMap<Vec<u8>, Option<KeyValue>>,
    _writer: MutexGuard<'a, ()>,
}

impl<'a> MvccTxn<'a> {
    pub(super) fn begin(inner: &'a Inner) -> MvccTxn<'a> {
        let writer = inner.writer.lock();
        let txn = inner.store.begin_write();
        let snap = inner.store.snapshot();
        let begin_rev = inner.current_rev.load(Ordering::Acquire);
        debug_assert_eq!(
            snap.get(META_CURRENT_REV)
                .expect("read current_rev")
                .map_or(1, |v| super::encoding::decode_i64(&v)),
            begin_rev,
            "in-memory current revision disagrees with the store"
        );
        MvccTxn {
            txn,
            snap,
            inner,
            begin_rev,
            compacted_rev: inner.compacted_rev.load(Ordering::Acquire),
            changes: 0,
            written: BTreeMap::new(),
            _writer: writer,
        }
    }

    /// The revision reads in this transaction see: the next one once it has changed something.
    pub fn revision(&self) -> i64 {
        if self.changes > 0 {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.written.get(key) {
            Some(state) => Ok(state.clone()),
            None => get_at(&self.snap, key, self.begin_rev),
        }
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision {
            main: self.begin_rev + 1,
            sub: self.changes as i64,
        };
        self.changes += 1;
        rev
    }

    fn write_record(&mut self, key: &[u8], rev: Revision, record: &Record) -> Result<()> {
        self.txn.put(&version_key(key, rev), &record.encode())?;
        self.txn.put(&revision_key(rev), key)?;
        Ok(())
    }

    /// Writes `value` under `key`; returns the key's previous kv (seeing this transaction's own
    /// earlier writes), if it existed.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>> {
        let prev = self.latest(key)?;
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
        self.write_record(key, rev, &record)?;
        let kv = record.into_kv(key.to_vec(), rev.main);
        self.written.insert(key.to_vec(), kv);
        Ok(prev)
    }

    /// Deletes the keys alive in the range (`range_end` as in `Mvcc::range`), writing one
    /// tombstone per key in ascending key order; returns their previous kvs.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>> {
        let range = KeyRange::new(key, range_end);
        let doomed: Vec<KeyValue> = self.alive(&range).collect::<Result<_>>()?;
        for kv in &doomed {
            let rev = self.next_revision();
            self.write_record(&kv.key, rev, &Record::Tombstone)?;
            self.written.insert(kv.key.clone(), None);
        }
        Ok(doomed)
    }

    /// Kvs alive in `range` as of this transaction's own writes.
    fn alive<'s>(&'s self, range: &KeyRange) -> impl Iterator<Item = Result<KeyValue>> + 's {
        let committed = AliveKeys::new(&self.snap, range, self.begin_rev).peekable();
        let range = range.clone();
        let written = self
            .written
            .iter()
            .filter(move |(k, _)| range.contains(k))
            .peekable();
        Merge { committed, written }
    }

    /// A range as `Mvcc::range` answers it, but at this transaction's revision (see `revision`)
    /// and seeing its own writes when reading at that revision.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        let txn_rev = self.revision();
        let rev = check_read_rev(opts.rev, txn_rev, self.compacted_rev)?;
        let range = KeyRange::new(key, range_end);
        let limit = range::fetch_limit(opts);
        let (kvs, count) = if rev > self.begin_rev {
            range::collect(self.alive(&range), limit, opts.count_only)?
        } else {
            range::collect(
                AliveKeys::new(&self.snap, &range, rev),
                limit,
                opts.count_only,
            )?
        };
        Ok(range::finish(kvs, count, txn_rev, opts))
    }

    /// Makes the changes durable and visible with `consistent_index` (the raft index applied);
    /// returns the revision they got, or the unchanged current revision if there were none.
    pub fn commit(mut self, consistent_index: u64) -> Result<i64> {
        if self.changes == 0 {
            if consistent_index != self.snap.consistent_index() {
                self.txn.commit(consistent_index)?;
            }
            return Ok(self.begin_rev);
        }
        let rev = self.begin_rev + 1;
        self.txn.put(META_CURRENT_REV, &encode_i64(rev))?;
        self.txn.commit(consistent_index)?;
        // Still under the writer lock (`self._writer` drops on return), so the next writer
        // starts from this revision.
        self.inner.current_rev.store(rev, Ordering::Release);
        Ok(rev)
    }
}

/// Merges committed kvs with the transaction's own writes, both ascending by key; a write
/// replaces the committed kv of the same key, and a delete hides it.
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
