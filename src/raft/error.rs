//! `RaftError`: every way a replicated-state-machine operation can fail, expected outcomes
//! (not leader, dropped, overloaded, timeout) apart from the loop having stopped.

use crate::wal::WalError;

/// Errors of the raft engine.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The engine was shut down (or is shutting down); the request was not, or not knowingly,
    /// applied.
    #[error("raft: stopped")]
    Stopped,

    /// The raft loop stopped on an error (WAL failure, storage error); every request pending at
    /// that moment fails with this. Restart the engine to recover.
    #[error("raft: halted: {reason}")]
    Halted { reason: String },

    /// `try_propose` found the request queue full (`RaftConfig::proposal_queue_depth`).
    /// `propose` waits for room instead.
    #[error("raft: overloaded: {depth} requests queued")]
    Overloaded { depth: usize },

    /// This member is not the leader. `leader_id` is 0 when no leader is known.
    #[error("raft: not leader (leader is {leader_id})")]
    NotLeader { leader_id: u64 },

    /// A leader transfer to a member that is not a voter of this cluster.
    #[error("raft: {target:x} is not a voter to transfer the leadership to")]
    BadTransferee { target: u64 },

    /// The proposal's log slot was taken by another entry (a new leader rewrote the log tail)
    /// before it committed: it was not applied.
    #[error("raft: proposal dropped: its entry at index {index} was replaced")]
    Dropped { index: u64 },

    /// No answer within `RaftConfig::request_timeout`. A proposal may still be applied later.
    #[error("raft: request timed out")]
    Timeout,

    /// `Timeout`, for a proposal made shortly before the current leader was elected: most
    /// likely lost with the previous leader (etcd's `ErrTimeoutDueToLeaderFail`).
    #[error("raft: request timed out, possibly due to previous leader failure")]
    TimeoutLeaderFail,

    /// No leader took the proposal within `RaftConfig::request_timeout`: it was never
    /// proposed, so it will not apply.
    #[error("raft: no leader within the request timeout")]
    NoLeaderTimeout,

    /// Proposals must carry data: empty entries are raft's own (leader no-op) and are never
    /// passed to the state machine.
    #[error("raft: empty proposal")]
    EmptyProposal,

    /// The proposal exceeds `RaftConfig::proposal_bytes_max`.
    #[error("raft: proposal of {bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge { bytes: usize, limit_bytes: usize },

    /// The WAL was written by another member or cluster.
    #[error(
        "raft: wal belongs to member {wal_member_id:x} of cluster {wal_cluster_id:x}, \
         not member {member_id:x} of cluster {cluster_id:x}"
    )]
    MemberMismatch {
        wal_member_id: u64,
        wal_cluster_id: u64,
        member_id: u64,
        cluster_id: u64,
    },

    /// The state machine's durable applied index is below the log's snapshot marker: entries it
    /// has not applied were compacted away, so it cannot be brought up to date from the log.
    #[error(
        "raft: state machine applied index {applied_index} is below the log's snapshot at {snapshot_index}"
    )]
    StateMachineBehindLog {
        applied_index: u64,
        snapshot_index: u64,
    },

    /// Restoring the state machine from a received snapshot failed; the loop halts.
    #[error("raft: cannot restore the snapshot at index {index}: {reason}")]
    Restore { index: u64, reason: String },

    /// A recovered WAL record cannot be a raft entry written by this engine.
    #[error("raft: corrupt log: {0}")]
    CorruptLog(String),

    /// The configuration breaks one of `RaftConfig`'s documented limits.
    #[error("raft: invalid config: {0}")]
    InvalidConfig(String),

    #[error(transparent)]
    Wal(#[from] WalError),

    #[error("raft: {0}")]
    Raft(#[from] raft::Error),

    /// Starting the raft executor thread failed.
    #[error("raft: i/o error: {0}")]
    Io(#[from] std::io::Error),
}
