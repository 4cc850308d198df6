//! Installing a raft snapshot into the applier: the whole store replaced, then every in-memory
//! state derived from it (MVCC's revisions, leases, auth, alarms) reloaded and the watch hub told.

use crate::mvcc::MvccError;
use crate::page_store::{PageStoreError, ReplaceStats};

use super::Applier;

impl Applier {
    /// Replaces the whole state with `records` (raw page-store records, ascending, from another
    /// member's pinned store) as of raft entry `index`, durably, then reloads what is derived
    /// from the store. `applied_index` and `durable_index` are `index` afterwards. A pending
    /// physical compaction in the image is handed to the compactor thread.
    pub fn restore<E: From<PageStoreError> + From<MvccError> + std::fmt::Display>(
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

#[cfg(test)]
mod tests {
    use ringkv_proto::etcdserverpb::{CompactionRequest, LeaseGrantRequest, PutRequest};

    use super::super::entry::ProposalRequest;
    use super::super::harness::Harness;
    use crate::mvcc::MvccError;
    use crate::mvcc::RangeOptions;

    fn put(key: &str, value: &str, lease: i64) -> ProposalRequest {
        ProposalRequest::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..PutRequest::default()
        })
    }

    fn grant(id: i64) -> ProposalRequest {
        ProposalRequest::LeaseGrant(LeaseGrantRequest { ttl: 600, id })
    }

    fn records(h: &Harness) -> Vec<(Vec<u8>, Vec<u8>)> {
        h.mvcc
            .page_store()
            .snapshot()
            .range(b"", None)
            .map(|r| r.unwrap())
            .collect()
    }

    fn all(h: &Harness, rev: i64) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let opts = RangeOptions {
            rev,
            ..RangeOptions::default()
        };
        h.mvcc
            .range(b"\0", b"\0", &opts)
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value, kv.lease))
            .collect()
    }

    /// A member that is behind (and has keys and a lease the leader has since dropped) takes
    /// the leader's image: same keys at every kept revision, same compaction, same leases with
    /// their keys attached, and it goes on applying from the snapshot's index.
    #[test]
    fn restore_replaces_keys_leases_and_compaction() {
        let mut leader = Harness::new();
        leader.apply(grant(7)).unwrap();
        for i in 0..300 {
            leader
                .apply(put(&format!("k{i:03}"), &format!("v{i}"), 0))
                .unwrap();
        }
        leader.apply(put("leased", "x", 7)).unwrap();
        leader
            .apply(ProposalRequest::Compaction(CompactionRequest {
                revision: 100,
                physical: false,
            }))
            .unwrap();
        super::super::finish_compaction(&leader.mvcc).unwrap();
        leader.apply(put("k000", "again", 0)).unwrap();

        let mut follower = Harness::new();
        follower.apply(grant(9)).unwrap();
        follower.apply(put("gone", "y", 9)).unwrap();
        follower.apply(put("k001", "old", 0)).unwrap();

        let image = records(&leader);
        let stats = follower
            .applier
            .restore::<MvccError>(image.clone().into_iter().map(Ok), leader.index)
            .unwrap();
        assert!(stats.deleted > 0 && stats.written > 0, "{stats:?}");
        assert_eq!(records(&follower), image);
        assert_eq!(follower.applier.applied_index(), leader.index);
        assert_eq!(follower.applier.durable_index(), leader.index);
        assert_eq!(
            follower.mvcc.current_revision(),
            leader.mvcc.current_revision()
        );
        assert_eq!(follower.mvcc.compacted_revision(), 100);
        for rev in [0, 100, 150, leader.mvcc.current_revision()] {
            assert_eq!(all(&follower, rev), all(&leader, rev), "at revision {rev}");
        }
        assert!(follower
            .mvcc
            .range(
                b"k",
                b"",
                &RangeOptions {
                    rev: 99,
                    ..RangeOptions::default()
                }
            )
            .is_err());
        assert_eq!(follower.lessor().leases(), vec![7]);
        assert_eq!(follower.lessor().keys(7), Some(vec![b"leased".to_vec()]));

        // It goes on from the snapshot's index like the leader.
        follower.index = leader.index;
        follower.apply(put("after", "z", 7)).unwrap();
        leader.apply(put("after", "z", 7)).unwrap();
        assert_eq!(records(&follower), records(&leader));
    }
}
