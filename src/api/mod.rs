//! The gRPC front end: etcd's KV service (and a minimal Maintenance.Status) as tonic services.
//! Requests are validated here (`validate`), writes become raft proposals through
//! [`Consensus`], reads are served from MVCC after a ReadIndex (or at once when serializable),
//! and every error is turned into a gRPC status in one place (`error`).

pub mod auth;
pub mod cluster;
pub mod election;
pub mod error;
pub mod http;
pub mod kv;
pub mod learner;
pub mod lease;
pub mod limit;
pub mod lock;
pub mod maintenance;
pub mod quota;
pub mod recipe;
pub mod traffic;
pub mod validate;
pub mod watch;

use std::sync::Arc;

use futures::future::BoxFuture;
use ringkv_proto::etcdserverpb::ResponseHeader;

use crate::apply::entry::{ApplyError, Outcome, OutcomeResult, Proposal, ProposalRequest};
use crate::auth::AuthStore;
use crate::lease::Lessor;
use crate::mvcc::Mvcc;

pub use error::ApiError;

/// Why the consensus layer could not carry a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    #[error("server stopped")]
    Stopped,
    #[error("no leader")]
    NoLeader,
    #[error("not leader")]
    NotLeader,
    #[error("request timed out")]
    Timeout,
    #[error("request too large")]
    TooLarge,
    #[error("too many requests")]
    TooManyRequests,
    #[error("{0}")]
    Other(String),
}

/// Raft as the API layer sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsensusStatus {
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// The replicated log the API proposes writes to: `propose` resolves with the state machine's
/// output for the entry once it is committed and applied; `read_index` resolves once everything
/// committed before the call has been applied (a linearizable read may then read MVCC).
pub trait Consensus: Send + Sync + 'static {
    fn propose(&self, data: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, ConsensusError>>;
    fn read_index(&self) -> BoxFuture<'static, Result<(), ConsensusError>>;
    fn status(&self) -> ConsensusStatus;
}

/// Limits checked before a request reaches raft.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// etcd's `--max-request-bytes`: the largest encoded proposal.
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    /// etcd's `--quota-backend-bytes`: writes that would take the store past it are refused
    /// and raise the NOSPACE alarm.
    pub quota_backend_bytes: u64,
}

/// What every service shares.
pub struct Context {
    pub mvcc: Mvcc,
    pub consensus: Arc<dyn Consensus>,
    pub cluster_id: u64,
    pub member_id: u64,
    pub limits: Limits,
    /// The applier's leases (read and renewed by the Lease service).
    pub lessor: Arc<Lessor>,
    /// The applier's auth state and this member's tokens (`api::auth` checks callers).
    pub auth: Arc<AuthStore>,
}

impl Context {
    /// Completes a response header with this member's ids and the raft term.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let header = header.get_or_insert_with(ResponseHeader::default);
        header.cluster_id = self.cluster_id;
        header.member_id = self.member_id;
        header.raft_term = self.consensus.status().term;
    }

    /// A complete response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let mut header = Some(ResponseHeader {
            revision,
            ..ResponseHeader::default()
        });
        self.fill(&mut header);
        header
    }

    /// Proposes `request` as an anonymous client (no token) and waits for its outcome;
    /// refusals come back as errors. A client's request goes through `propose_as` instead.
    pub async fn propose(&self, request: ProposalRequest) -> Result<OutcomeResult, ApiError> {
        self.submit(Proposal::new(request)).await
    }

    /// Proposes `proposal` and waits for its outcome; refusals come back as errors.
    async fn submit(&self, proposal: Proposal) -> Result<OutcomeResult, ApiError> {
        use prost::Message;
        let data = proposal.encode_to_vec();
        if data.len() as u64 > self.limits.max_request_bytes {
            return Err(ApiError::RequestTooLarge);
        }
        let output = self.consensus.propose(data).await?;
        let outcome = Outcome::decode(output.as_slice())
            .map_err(|error| ApiError::Internal(format!("undecodable apply outcome: {error}")))?;
        if outcome.result == Some(OutcomeResult::Error(ApplyError::NoSpace.code())) {
            quota::raise_nospace(self).await;
        }
        match outcome.result {
            Some(OutcomeResult::Error(code)) => Err(ApplyError::from_code(code).map_or_else(
                || ApiError::Internal(format!("apply error {code}")),
                Into::into,
            )),
            Some(result) => Ok(result),
            None => Err(ApiError::Internal("empty apply outcome".to_owned())),
        }
    }
}

/// etcd's gRPC receive limit: the request bound plus room for the envelope (`grpcOverheadBytes`).
pub fn max_decoding_message_bytes(max_request_bytes: u64) -> usize {
    const GRPC_OVERHEAD_BYTES: u64 = 512 * 1024;
    usize::try_from(max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES)).unwrap_or(usize::MAX)
}
