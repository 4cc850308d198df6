//! The key space as a whole: a pinned export of every stored version in revision order (what
//! `snapshot save` and `HashKV` read), the bulk import that builds a store from such a stream
//! (`snapshot restore`), and the aux table (`0x05 ‖ name`) where layers above keep replicated
//! state that is not keys (alarms).

use std::sync::atomic::Ordering;

use crate::page_store::{PageStore, Snapshot, WriteTxn};

use super::encoding::{
    decode_i64, decode_revision_key, encode_i64, revision_key, version_key, CompactJob, Record,
    LAYOUT_VERSION, META_COMPACTED_REV, META_COMPACT_JOB, META_CURRENT_REV, META_LAYOUT,
    TABLE_REVISION,
};
use super::view::newest_at;
use super::{KeyValue, Mvcc, MvccBatch, Result, Revision};

/// First byte of every aux-table key.
const TABLE_AUX: u8 = 0x05;
/// Versions written per page-store commit by an import: bounds the import's memory.
const IMPORT_BATCH_VERSIONS: usize = 4096;

fn aux_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(TABLE_AUX);
    key.extend_from_slice(name);
    key
}

/// One stored version: a put's key-value, or a tombstone (a delete) of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportedVersion {
    Put(KeyValue),
    Tombstone { key: Vec<u8> },
}

impl ExportedVersion {
    pub fn key(&self) -> &[u8] {
        match self {
            ExportedVersion::Put(kv) => &kv.key,
            ExportedVersion::Tombstone { key } => key,
        }
    }
}

/// A pinned, consistent view of the whole key space: later writes, compactions and the cleaner
/// never change what it reads.
pub struct ExportView {
    snap: Snapshot,
    current: i64,
    compacted: i64,
    finished: i64,
}

impl Mvcc {
    /// Pins the latest commit for an export.
    pub fn export(&self) -> Result<ExportView> {
        let _writer = self.inner.writer.lock();
        let snap = self.inner.store.snapshot();
        let current = self.inner.current_rev.load(Ordering::Acquire);
        let compacted = self.inner.compacted_rev.load(Ordering::Acquire);
        let finished = match snap.get(META_COMPACT_JOB)? {
            Some(job) => CompactJob::decode(&job).from,
            None => compacted,
        };
        Ok(ExportView {
            snap,
            current,
            compacted,
            finished,
        })
    }

    /// The aux entry `name` as of the latest commit.
    pub fn aux(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.store.snapshot().get(&aux_key(name))?)
    }
}

impl MvccBatch<'_> {
    /// Sets aux entry `name` in this batch's commit (takes no revision).
    pub fn put_aux(&mut self, name: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.txn.put(&aux_key(name), value)?)
    }

    pub fn delete_aux(&mut self, name: &[u8]) -> Result<()> {
        self.txn.delete(&aux_key(name))?;
        Ok(())
    }
}

impl ExportView {
    /// Every row of table `table` (a layer's own, at least `FOREIGN_TABLE_MIN`) in the view.
    pub fn foreign_rows(&self, table: u8) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        assert!(
            table >= super::FOREIGN_TABLE_MIN,
            "table {table:#x} is MVCC's"
        );
        let mut rows = Vec::new();
        for row in self.snap.range(&[table], Some(&[table + 1])) {
            rows.push(row?);
        }
        Ok(rows)
    }

    pub fn current_revision(&self) -> i64 {
        self.current
    }

    /// Reads below it fail (etcd's `scheduledCompactRev`).
    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// The last compaction whose physical deletions are complete (etcd's
    /// `finishedCompactRev`); below `compacted_revision` while a compaction is in progress.
    pub fn finished_compaction(&self) -> i64 {
        self.finished
    }

    pub fn consistent_index(&self) -> u64 {
        self.snap.consistent_index()
    }

    pub fn aux(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snap.get(&aux_key(name))?)
    }

    /// Every stored version with `main <= to_rev`, in revision order.
    pub fn versions(
        &self,
        to_rev: i64,
    ) -> impl Iterator<Item = Result<(Revision, ExportedVersion)>> + '_ {
        let end = revision_key(Revision {
            main: to_rev.saturating_add(1).max(0),
            sub: 0,
        });
        self.snap
            .range(&[TABLE_REVISION], Some(&end))
            .map(move |entry| {
                let (rk, key) = entry?;
                let rev = decode_revision_key(&rk);
                let record = self
                    .snap
                    .get(&version_key(&key, rev))?
                    .expect("a revision entry without its version");
                let version = match Record::decode(&record).into_kv(key.clone(), rev.main) {
                    Some(kv) => ExportedVersion::Put(kv),
                    None => ExportedVersion::Tombstone { key },
                };
                Ok((rev, version))
            })
    }

    /// Whether the version of `key` at `rev` is what a compaction at `at` would keep: the
    /// key's newest version at or below `at`, and not a tombstone (etcd's `keyIndex.keep`).
    pub fn kept_at(&self, key: &[u8], rev: Revision, at: i64) -> Result<bool> {
        Ok(newest_at(&self.snap, key, at)?
            .is_some_and(|(newest, record)| newest == rev && !record.is_tombstone()))
    }
}

/// Builds a key space from versions given in revision order, into an empty page store. Commits
/// every `IMPORT_BATCH_VERSIONS` versions; `finish` writes the revisions last, so a crash
/// mid-import leaves a store that opens at revision 1 with stray versions (restore refuses a
/// non-empty directory, and its caller deletes a failed attempt).
pub struct Importer<'a> {
    store: &'a PageStore,
    txn: Option<WriteTxn<'a>>,
    pending: usize,
    last: Option<Revision>,
}

impl<'a> Importer<'a> {
    /// Panics unless `store` is empty.
    pub fn new(store: &'a PageStore) -> Importer<'a> {
        assert!(store.snapshot().is_empty(), "import into a non-empty store");
        Importer {
            store,
            txn: None,
            pending: 0,
            last: None,
        }
    }

    /// Adds the next version. The caller has validated it: revisions strictly increase, a
    /// put's `create_revision` and `version` are positive, keys and values are within the page
    /// store's limits.
    pub fn push(&mut self, rev: Revision, version: &ExportedVersion) -> Result<()> {
        assert!(self.last.is_none_or(|last| last < rev) && rev.main >= 1 && rev.sub >= 0);
        self.last = Some(rev);
        let record = match version {
            ExportedVersion::Put(kv) => Record::Put {
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                value: kv.value.clone(),
            },
            ExportedVersion::Tombstone { .. } => Record::Tombstone,
        };
        let txn = self.txn.get_or_insert_with(|| self.store.begin_write());
        txn.put(&version_key(version.key(), rev), &record.encode())?;
        txn.put(&revision_key(rev), version.key())?;
        self.pending += 1;
        if self.pending == IMPORT_BATCH_VERSIONS {
            self.pending = 0;
            self.txn.take().expect("open").commit(0)?;
        }
        Ok(())
    }

    /// Writes a row of a layer's own table (at least `FOREIGN_TABLE_MIN`).
    pub fn put_foreign(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        assert!(
            key.first().is_some_and(|&t| t >= super::FOREIGN_TABLE_MIN),
            "{key:x?} is in a table MVCC owns"
        );
        let txn = self.txn.get_or_insert_with(|| self.store.begin_write());
        Ok(txn.put(key, value)?)
    }

    pub fn put_aux(&mut self, name: &[u8], value: &[u8]) -> Result<()> {
        let txn = self.txn.get_or_insert_with(|| self.store.begin_write());
        Ok(txn.put(&aux_key(name), value)?)
    }

    /// Writes the current and compacted revisions and commits. The current revision is at
    /// least every imported one and the compacted revision; returns it.
    pub fn finish(mut self, current: i64, compacted: i64) -> Result<i64> {
        let current = current
            .max(self.last.map_or(1, |r| r.main))
            .max(compacted)
            .max(1);
        let mut txn = self.txn.take().unwrap_or_else(|| self.store.begin_write());
        txn.put(META_LAYOUT, &encode_i64(LAYOUT_VERSION))?;
        txn.put(META_CURRENT_REV, &encode_i64(current))?;
        if compacted > 0 {
            txn.put(META_COMPACTED_REV, &encode_i64(compacted))?;
        }
        txn.commit(0)?;
        debug_assert_eq!(
            self.store
                .snapshot()
                .get(META_CURRENT_REV)?
                .map(|v| decode_i64(&v)),
            Some(current)
        );
        Ok(current)
    }
}
