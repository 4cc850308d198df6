//! Peers: the membership this member knows (`members.rs`, recorded in the data dir) and the raft
//! transport between members, a gRPC service of ringkv's own (`proto/ringkv/peer.proto`) served
//! with tonic on `--listen-peer-urls` (`service.rs`), with one bounded queue and one sender task
//! per peer on the same tokio runtime (`transport.rs`). ARCHITECTURE.md ("Peers") says why.
//!
//! # Protocol
//!
//! - `Greet(Hello) -> Hello`, on every (re)connection: cluster id, member id, name and client
//!   URLs of the caller; the answer is the callee's. A cluster id other than ours is refused with
//!   etcd's "request cluster ID mismatch", a member id we do not list with "unknown member".
//! - `Send(MessageBatch) -> BatchAck`: raft-rs messages (raft's protobuf encoding) from one
//!   member, each addressed to the callee; the same refusals, and a removed member is told so
//!   with etcd's "the member has been permanently removed from the cluster" (it then stops).
//! - `Members() -> MembersReply`: the cluster id and the membership record (for a member
//!   joining with `--initial-cluster-state existing`, which knows neither yet).
//! - `LearnerReady(learner id)`: asked of the leader before a promote; refused with etcd's
//!   "can only promote a learner member which is in sync with leader" while the learner's log
//!   is below 90% of the leader's. The callee hands each message to
//!   its raft loop, dropping it if the loop's queue is full; the ack only means "received".
//!
//! # Limits
//!
//! [`PeerConfig`]: messages queued per peer (beyond them the raft loop drops and reports the peer
//! unreachable), messages and bytes per batch, connect and call timeouts, backoff bounds, and
//! the largest gRPC message either side accepts. Memory per peer stays bounded by the queue and
//! raft's own `max_inflight_msgs` x `max_size_per_msg`.

pub mod change;
pub mod members;
pub mod service;
pub mod snapshot;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use crate::raft::RaftHandle;

pub use change::{Change, ChangeRefused, ClusterMembership};
pub use members::{MemberInfo, Members, MembersError, MembershipImage};
pub use service::RaftPeerService;
pub use transport::{PeerSet, PeerTransport};

/// Limits of the peer transport. [`PeerConfig::new`] is the production profile.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Messages waiting for one peer (etcd's stream buffer is 4096).
    pub queue_messages_max: usize,
    /// Messages in one `Send` call.
    pub batch_messages_max: usize,
    /// A batch stops growing once its messages reach this many bytes.
    pub batch_bytes_max: usize,
    /// The largest gRPC message either side sends or accepts: a full batch plus one more
    /// message, which may carry an entry of `--max-request-bytes`.
    pub message_bytes_max: usize,
    pub connect_timeout: Duration,
    /// A `Send` or `Greet` not answered in this time fails (the peer is then unreachable).
    pub request_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl PeerConfig {
    /// Production profile for a cluster whose largest proposal is `proposal_bytes_max`.
    pub fn new(proposal_bytes_max: usize) -> PeerConfig {
        let batch_bytes_max = 4 << 20;
        PeerConfig {
            queue_messages_max: 4096,
            batch_messages_max: 1024,
            batch_bytes_max,
            // Raft's max_size_per_msg (1 MiB) bounds an append, but one entry may exceed it;
            // a snapshot chunk holds one frame, which may carry a record of the largest value.
            message_bytes_max: (batch_bytes_max + proposal_bytes_max + (2 << 20))
                .max(crate::raft::snapshot::FRAME_BYTES_MAX + (1 << 20)),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// What the service and the sender tasks share.
pub struct PeerContext {
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Arc<Members>,
    pub peers: Arc<PeerSet>,
    pub raft: RaftHandle,
    /// Where received snapshots are staged (`member/raft-snap`).
    pub staging: snapshot::Staging,
}

/// Why a peer request was refused. The peer protocol is ringkv's own, not etcd's client API, so
/// its statuses are mapped here rather than in `api::error`; the cluster id message is etcd's.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("request cluster ID mismatch")]
    ClusterIdMismatch,
    #[error("unknown member {0:016x}")]
    UnknownMember(u64),
    /// etcd's message (its peers answer 410 Gone); the sender stops when it reads it.
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    #[error("not leader")]
    NotLeader,
    #[error("{0}")]
    LearnerNotReady(String),
    #[error("undecodable raft message")]
    Undecodable,
    #[error("raft message from {from:016x} to {to:016x} on the wrong connection")]
    Misaddressed { from: u64, to: u64 },
    #[error("member stopped")]
    Stopped,
    #[error("a snapshot is already being received")]
    SnapshotBusy,
    /// The raft loop's request queue was full; the sender retries.
    #[error("raft request queue full")]
    Overloaded,
    #[error("snapshot: {0}")]
    SnapshotIo(String),
    #[error(
        "snapshot stream holds index {stream_index} term {stream_term}, its message index {index} \
         term {term}"
    )]
    SnapshotMismatch {
        index: u64,
        term: u64,
        stream_index: u64,
        stream_term: u64,
    },
    #[error(transparent)]
    Stream(#[from] crate::raft::SnapshotStreamError),
}

impl From<PeerError> for tonic::Status {
    fn from(error: PeerError) -> tonic::Status {
        let message = error.to_string();
        match error {
            PeerError::ClusterIdMismatch
            | PeerError::UnknownMember(_)
            | PeerError::LearnerNotReady(_) => tonic::Status::failed_precondition(message),
            PeerError::Removed => tonic::Status::permission_denied(message),
            PeerError::Undecodable
            | PeerError::Misaddressed { .. }
            | PeerError::SnapshotMismatch { .. }
            | PeerError::Stream(_) => tonic::Status::invalid_argument(message),
            PeerError::NotLeader
            | PeerError::Stopped
            | PeerError::SnapshotBusy
            | PeerError::Overloaded => tonic::Status::unavailable(message),
            PeerError::SnapshotIo(_) => tonic::Status::internal(message),
        }
    }
}
