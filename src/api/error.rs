//! Every error a client can see, and the one place they become gRPC statuses. Codes and messages
//! are etcd's (`api/v3rpc/rpctypes/error.go`) because clients match on them; the only message of
//! ringkv's own is `KeyTooLarge` (etcd has no key-size bound; ringkv's page store has one).

use tonic::{Code, Status};

use crate::apply::entry::ApplyError;

use super::ConsensusError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key is too large")]
    KeyTooLarge,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// MoveLeader to a member that is not a voter of this cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// ringkv's own: a membership change that needs the peer transport, not built yet. Code
    /// Unimplemented, so that clients do not retry it.
    #[error("etcdserver: {0} is not supported yet: ringkv has no peer transport")]
    MembershipUnsupported(&'static str),
    /// A storage or internal failure; etcd answers these with code Unknown and the error text.
    #[error("{0}")]
    Internal(String),
}

impl From<ConsensusError> for ApiError {
    fn from(error: ConsensusError) -> ApiError {
        match error {
            ConsensusError::Stopped => ApiError::Stopped,
            ConsensusError::NoLeader => ApiError::NoLeader,
            ConsensusError::NotLeader => ApiError::NotLeader,
            ConsensusError::Timeout => ApiError::Timeout,
            ConsensusError::TooLarge => ApiError::RequestTooLarge,
            ConsensusError::TooManyRequests => ApiError::TooManyRequests,
            ConsensusError::Other(message) => ApiError::Internal(message),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::EmptyKey
            | ApiError::KeyTooLarge
            | ApiError::ValueProvided
            | ApiError::LeaseProvided
            | ApiError::TooManyOps
            | ApiError::DuplicateKey
            | ApiError::InvalidSortOption
            | ApiError::RequestTooLarge
            | ApiError::Apply(ApplyError::KeyNotFound)
            | ApiError::MemberBadUrls => Code::InvalidArgument,
            ApiError::Apply(ApplyError::LeaseNotFound) | ApiError::MemberNotFound => Code::NotFound,
            ApiError::Apply(
                ApplyError::Compacted | ApplyError::FutureRevision | ApplyError::LeaseTtlTooLarge,
            ) => Code::OutOfRange,
            ApiError::Stopped | ApiError::NoLeader | ApiError::NotLeader | ApiError::Timeout => {
                Code::Unavailable
            }
            ApiError::TooManyRequests | ApiError::Apply(ApplyError::NoSpace) => {
                Code::ResourceExhausted
            }
            ApiError::Apply(ApplyError::LeaseExists)
            | ApiError::BadLeaderTransferee
            | ApiError::MemberNotEnoughStarted
            | ApiError::MemberNotLearner
            | ApiError::PeerUrlExists => Code::FailedPrecondition,
            ApiError::MembershipUnsupported(_) => Code::Unimplemented,
            ApiError::Internal(_) => Code::Unknown,
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_etcds() {
        let cases = [
            (
                ApiError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                ApiError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                ApiError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                ApiError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                ApiError::Apply(ApplyError::Compacted),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                ApiError::Apply(ApplyError::FutureRevision),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                ApiError::Apply(ApplyError::LeaseNotFound),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                ApiError::Apply(ApplyError::NoSpace),
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                ApiError::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                ApiError::Apply(ApplyError::LeaseExists),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                ApiError::Apply(ApplyError::LeaseTtlTooLarge),
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                ApiError::Apply(ApplyError::KeyNotFound),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                ApiError::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                ApiError::MemberNotEnoughStarted,
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                ApiError::MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                ApiError::MemberBadUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                ApiError::PeerUrlExists,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
