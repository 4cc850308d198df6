//! Installing a raft snapshot into the applier: the whole store replaced, then every in-memory
//! state derived from it (MVCC's revisions, leases, auth, alarms) reloaded and the watch hub told.

use crate::page_store::{PageStoreError, ReplaceStats};

use super::Applier;

impl Applier {
    /// Replaces the whole state with `records` (raw page-store records, ascending, from another
    /// member's pinned store) as of raft entry `index`, durably, then reloads what is derived
    /// from the store. `applied_index` and `durable_index` are `index` afterwards. A pending
    /// physical compaction in the image is handed to the compactor thread.
    pub fn restore<E: From<PageStoreError> + std::fmt::Display>(
        &mut self,
        records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
        index: u64,
    ) -> Result<ReplaceStats, String> {
        assert!(
            index > self.applied_index,
            "a snapshot at {index} is not past the applied index {}",
            self.applied_index
        );
        let stats = self
            .mvcc
            .replace_all(records, index)
            .map_err(|e| e.to_string())?;
        self.applied_index = index;
        self.lessor
            .reload(&self.mvcc)
            .map_err(|e| format!("cannot reload the leases: {e}"))?;
        self.auth
            .reload(&self.mvcc)
            .map_err(|e| format!("cannot reload the auth state: {e}"))?;
        self.guard.reload(&self.mvcc);
        self.compactor.wake();
        if let Some(hook) = &mut self.on_commit {
            hook(self.mvcc.current_revision());
        }
        Ok(stats)
    }
}
