//! The raft engine behind the API's [`Consensus`] seam, and the applier as raft's
//! [`StateMachine`].

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::api::{Consensus, ConsensusError, ConsensusStatus};
use crate::apply::Applier;
use crate::metrics::METRICS;
use crate::raft::{Committed, RaftError, RaftHandle, StateMachine};

/// The applier: each `apply` call's entries are one MVCC batch, one page-store commit (see
/// `crate::apply`).
pub struct ApplierSm(pub Applier);

impl StateMachine for ApplierSm {
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>> {
        self.0
            .apply_entries(entries.iter().map(|e| (e.index, e.data.as_slice())))
    }

    fn applied_index(&self) -> u64 {
        self.0.applied_index()
    }

    fn durable_index(&self) -> u64 {
        self.0.durable_index()
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
