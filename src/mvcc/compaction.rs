//! Compaction: the logical step that moves the compacted revision and records a job, and the
//! bounded physical batches that delete what it made unreachable (protocol in the module doc).

use std::sync::atomic::Ordering;

use crate::page_store::{Snapshot, WriteTxn};

use super::encoding::{
    decode_i64, encode_i64, revision_key, version_key, CompactJob, META_COMPACTED_REV,
    META_COMPACT_JOB,
};
use super::view::newest_at;
use super::{Mvcc, MvccError, Result, Revision};

impl Mvcc {
    /// etcd's `Compact(rev)`, run to completion: the logical step (durable, with the page
    /// store's current consistent index), then every physical batch, then one bounded cleaner
    /// call. Writers interleave between batches.
    pub fn compact(&self, rev: i64) -> Result<()> {
        let consistent_index = self.inner.store.consistent_index();
        self.schedule_compaction(rev, consistent_index)?;
        while !self.compact_step()? {}
        self.inner
            .store
            .clean(self.inner.config.clean_segments_after_compaction)?;
        Ok(())
    }

    /// The logical step alone: from its durable commit (recording `consistent_index`) on, reads
    /// below `rev` fail with `Compacted`. Leaves the physical work to `compact_step`.
    pub fn schedule_compaction(&self, rev: i64, consistent_index: u64) -> Result<()> {
        let _writer = self.inner.writer.lock();
        let compacted = self.inner.compacted_rev.load(Ordering::Acquire);
        if rev <= compacted {
            return Err(MvccError::Compacted);
        }
        if rev > self.inner.current_rev.load(Ordering::Acquire) {
            return Err(MvccError::FutureRevision);
        }
        let mut txn = self.inner.store.begin_write();
        let from = match txn.get(META_COMPACT_JOB)? {
            Some(pending) => CompactJob::decode(&pending).from,
            None => compacted,
        };
        let job = CompactJob {
            from,
            target: rev,
            next: Revision {
                main: from.max(0),
                sub: 0,
            },
        };
        txn.put(META_COMPACTED_REV, &encode_i64(rev))?;
        txn.put(META_COMPACT_JOB, &job.encode())?;
        txn.commit(consistent_index)?;
        self.inner.compacted_rev.store(rev, Ordering::Release);
        Ok(())
    }

    /// One physical compaction batch, one commit; returns whether no physical work remains.
    pub fn compact_step(&self) -> Result<bool> {
        let _writer = self.inner.writer.lock();
        let mut txn = self.inner.store.begin_write();
        let Some(job) = txn.get(META_COMPACT_JOB)? else {
            return Ok(true);
        };
        let mut job = CompactJob::decode(&job);
        assert!(job.target <= self.inner.compacted_rev.load(Ordering::Acquire));
        let snap = self.inner.store.snapshot();
        let end = revision_key(Revision {
            main: job.target + 1,
            sub: 0,
        });
        let mut done = true;
        for (examined, entry) in snap.range(&revision_key(job.next), Some(&end)).enumerate() {
            if examined == self.inner.config.compaction_batch_entries {
                done = false;
                break;
            }
            let (rk, key) = entry?;
            let rev = super::encoding::decode_revision_key(&rk);
            compact_entry(&snap, &mut txn, &job, &key, rev)?;
            job.next = Revision {
                main: rev.main,
                sub: rev.sub + 1,
            };
        }
        if done {
            txn.delete(META_COMPACT_JOB)?;
        } else {
            txn.put(META_COMPACT_JOB, &job.encode())?;
        }
        debug_assert_eq!(
            txn.get(super::encoding::META_COMPACTED_REV)?
                .map(|v| decode_i64(&v)),
            Some(self.inner.compacted_rev.load(Ordering::Acquire))
        );
        txn.commit(snap.consistent_index())?;
        Ok(done)
    }
}

/// Applies the compaction rule to the version `(key, rev)` (`rev.main <= job.target`).
fn compact_entry(
    snap: &Snapshot,
    txn: &mut WriteTxn<'_>,
    job: &CompactJob,
    key: &[u8],
    rev: Revision,
) -> Result<()> {
    let (newest, record) = newest_at(snap, key, job.target)?
        .unwrap_or_else(|| panic!("revision entry {rev:?} has no version of {key:x?}"));
    assert!(newest >= rev);
    if newest != rev {
        return delete_version(txn, key, rev);
    }
    if record.is_tombstone() && rev.main < job.target {
        delete_version(txn, key, rev)?;
    }
    // The previous compaction left at most one version at or below `from`; `rev` supersedes it.
    if job.from >= 0 {
        if let Some((survivor, _)) = newest_at(snap, key, job.from)? {
            if survivor < rev {
                delete_version(txn, key, survivor)?;
            }
        }
    }
    Ok(())
}

fn delete_version(txn: &mut WriteTxn<'_>, key: &[u8], rev: Revision) -> Result<()> {
    txn.delete(&version_key(key, rev))?;
    txn.delete(&revision_key(rev))?;
    Ok(())
}
