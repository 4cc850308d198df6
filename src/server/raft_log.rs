//! The raft engine behind the API's [`Consensus`] seam, and the applier as raft's
//! [`StateMachine`], with its raft snapshots: the image is a pinned page-store snapshot (every
//! record of the store); a restore merges a staged image into the store (`Applier::restore`).
//! The image's header belongs to the raft engine (it carries the membership record,
//! `raft::Membership::snapshot`): the applier hands it over before it touches the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::api::{Consensus, ConsensusError, ConsensusStatus};
use crate::apply::Applier;
use crate::metrics::METRICS;
use crate::mvcc::Mvcc;
use crate::page_store::PageStoreError;
use crate::raft::snapshot::{parse_staged_name, staged_path, RecordResult, StagedImage};
use crate::raft::StateMachine;
use crate::raft::{Committed, RaftError, RaftHandle, SnapshotImage, SnapshotStreamError};

/// The applier: each `apply` call's entries are one MVCC batch, one page-store commit (see
/// `crate::apply`).
pub struct ApplierSm {
    applier: Applier,
    mvcc: Mvcc,
    /// Where the peer service stages received images (`member/raft-snap`).
    staging_dir: PathBuf,
}

impl ApplierSm {
    /// Also removes staged images the store is already past (restored, or never needed).
    pub fn new(applier: Applier, mvcc: Mvcc, staging_dir: PathBuf) -> ApplierSm {
        remove_staged(&staging_dir, applier.applied_index());
        ApplierSm {
            applier,
            mvcc,
            staging_dir,
        }
    }
}

/// Removes staged images at or below `index`, and partial ones (`.part`: a receive cut short).
fn remove_staged(dir: &Path, index: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = parse_staged_name(&name).is_some_and(|i| i <= index)
            || Path::new(&name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("part"));
        if stale {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                eprintln!(
                    "ringkv: warning: cannot remove {}: {e}",
                    entry.path().display()
                );
            }
        }
    }
}

impl StateMachine for ApplierSm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        self.applier
            .apply_entries(entries.iter().map(|e| (e.index, e.data.as_slice())))
    }

    fn applied_index(&self) -> u64 {
        self.applier.applied_index()
    }

    fn durable_index(&self) -> u64 {
        self.applier.durable_index()
    }

    fn snapshot(&mut self) -> Option<Arc<dyn SnapshotImage>> {
        let snap = self.mvcc.page_store().snapshot();
        // Taken on the raft thread between applies: the store's latest publish is the last
        // applied batch (a physical compaction step keeps the consistent index).
        assert_eq!(
            snap.consistent_index(),
            self.applier.applied_index(),
            "the pinned store is at the applied index"
        );
        Some(Arc::new(StoreImage { snap }))
    }

    fn restore(
        &mut self,
        index: u64,
        term: u64,
        header: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let path = staged_path(&self.staging_dir, index);
        let image = StagedImage::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if (image.index, image.term) != (index, term) {
            return Err(format!(
                "{} holds the snapshot at index {} term {}, not {index} term {term}",
                path.display(),
                image.index,
                image.term
            ));
        }
        header(&image.app)?;
        let stats = self
            .applier
            .restore(image.map(|r| r.map_err(RestoreError::Stream)), index)?;
        eprintln!(
            "ringkv: info: restored the store from the snapshot at index {index}: {} records \
             written, {} deleted, {} unchanged; revision {}",
            stats.written,
            stats.deleted,
            stats.unchanged,
            self.mvcc.current_revision()
        );
        remove_staged(&self.staging_dir, index);
        Ok(())
    }
}

/// Why records of a staged image could not be installed.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error(transparent)]
    Stream(#[from] SnapshotStreamError),
    #[error(transparent)]
    Store(#[from] PageStoreError),
    /// The image is of another MVCC key layout (a leader on another ringkv version).
    #[error(transparent)]
    Mvcc(#[from] crate::mvcc::MvccError),
}

/// The leader's image: a pinned page-store snapshot, walked by the sender.
struct StoreImage {
    snap: crate::page_store::Snapshot,
}

impl SnapshotImage for StoreImage {
    fn records(&self) -> Box<dyn Iterator<Item = RecordResult> + Send> {
        Box::new(
            self.snap
                .range(b"", None)
                .map(|r| r.map_err(|e| e.to_string())),
        )
    }
}

pub struct RaftLog {
    pub handle: RaftHandle,
}

/// What a client is told when raft cannot carry its request, in etcd's terms.
pub(super) fn consensus_error(error: RaftError) -> ConsensusError {
    match error {
        RaftError::Stopped | RaftError::Halted { .. } => ConsensusError::Stopped,
        RaftError::NotLeader { leader_id: 0 } => ConsensusError::NoLeader,
        RaftError::NotLeader { .. } => ConsensusError::NotLeader,
        // A dropped proposal was not applied; etcd reports it as a timeout too.
        RaftError::Timeout | RaftError::Dropped { .. } => ConsensusError::Timeout,
        RaftError::TooLarge { .. } => ConsensusError::TooLarge,
        RaftError::Overloaded { .. } => ConsensusError::TooManyRequests,
        RaftError::BadTransferee { .. } => ConsensusError::BadTransferee,
        RaftError::NoLeaderTimeout => ConsensusError::NoLeaderTimeout,
        RaftError::TimeoutLeaderFail => ConsensusError::TimeoutLeaderFail,
        other => ConsensusError::Other(other.to_string()),
    }
}

impl Consensus for RaftLog {
    fn propose(&self, data: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, ConsensusError>> {
        let pending = METRICS.proposals_pending.track();
        self.handle
            .propose(data)
            .map(move |result| {
                drop(pending);
                result.map_err(|error| {
                    METRICS.proposals_failed.inc();
                    consensus_error(error)
                })
            })
            .boxed()
    }

    fn read_index(&self) -> BoxFuture<'static, Result<(), ConsensusError>> {
        self.handle
            .read_index()
            .map(|result| result.map_err(consensus_error))
            .boxed()
    }

    fn transfer_leader(&self, target: u64) -> BoxFuture<'static, Result<(), ConsensusError>> {
        self.handle
            .transfer_leader(target)
            .map(|result| result.map_err(consensus_error))
            .boxed()
    }

    fn status(&self) -> ConsensusStatus {
        let status = self.handle.status();
        ConsensusStatus {
            term: status.term,
            leader_id: status.leader_id,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
        }
    }
}
