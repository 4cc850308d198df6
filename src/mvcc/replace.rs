//! Installing a whole key space at once (a raft snapshot): every table, MVCC's and the foreign
//! ones above it, replaced in one durable page-store commit, then MVCC's in-memory revisions
//! reloaded from it.

use std::sync::atomic::Ordering;

use crate::page_store::{PageStoreError, ReplaceStats};

use super::encoding::{
    decode_i64, encode_i64, LAYOUT_VERSION, META_COMPACTED_REV, META_CURRENT_REV, META_LAYOUT,
    TABLE_VERSION,
};
use super::{check_layout, LayoutCheck, Mvcc, MvccError};

impl Mvcc {
    /// Makes the store hold exactly `records` (raw page-store records in strictly ascending key
    /// order, as a pinned snapshot of another member's store lists them), durably, with
    /// `consistent_index`. A physical compaction the records leave pending is for the caller to
    /// run (`compact_step`). Records of another key layout (a member on another ringkv version)
    /// are refused with `MvccError::Layout` and the store is left as it was.
    ///
    /// Readers never see a mix: the compacted revision is raised before the commit (a read of
    /// the old content below it fails `Compacted`, which the new content makes true), the
    /// content changes at the commit, and the current revision after it (a read at an older
    /// current revision in the new content sees that revision's history).
    pub fn replace_all<E: From<PageStoreError> + From<MvccError>>(
        &self,
        records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
        consistent_index: u64,
    ) -> Result<ReplaceStats, E> {
        let _writer = self.inner.writer.lock();
        let store = &self.inner.store;
        let mut txn = store.begin_write();
        let base = store.snapshot();
        let mut has_versions = false;
        let records = records.inspect(|r| {
            if let Ok((k, _)) = r {
                has_versions |= k.first() == Some(&TABLE_VERSION);
            }
        });
        let stats = txn.replace_all(&base, records)?;
        drop(base);
        // On error the transaction is dropped uncommitted: the store keeps its content.
        let layout = txn.get(META_LAYOUT)?;
        if check_layout(layout.as_deref(), has_versions)? == LayoutCheck::Unmarked {
            txn.put(META_LAYOUT, &encode_i64(LAYOUT_VERSION))?;
        }
        let current = txn.get(META_CURRENT_REV)?.map_or(1, |v| decode_i64(&v));
        let compacted = txn.get(META_COMPACTED_REV)?.map_or(-1, |v| decode_i64(&v));
        assert!(
            current >= 1 && compacted <= current,
            "restored meta: current {current}, compacted {compacted}"
        );
        self.inner
            .compacted_rev
            .fetch_max(compacted, Ordering::AcqRel);
        txn.commit(consistent_index)?;
        self.inner.compacted_rev.store(compacted, Ordering::Release);
        self.inner.current_rev.store(current, Ordering::Release);
        Ok(stats)
    }
}
