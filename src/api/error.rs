//! Every error a client can see, and the one place they become gRPC statuses. Codes and messages
//! are etcd's (`api/v3rpc/rpctypes/error.go`) because clients match on them; the only message of
//! ringkv's own is `KeyTooLarge` (etcd has no key-size bound; ringkv's page store has one).

use tonic::{Code, Status};

use crate::apply::entry::ApplyError;
use crate::auth::AuthError;

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
    /// RoleGrantPermission without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Auth refusals found in the API layer (a bad token, a read not permitted); the same
    /// errors found while applying arrive as `Apply(ApplyError::Auth)`.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// An auth refusal of an admin-only Maintenance RPC: etcd returns the auth package's own
    /// error there, untranslated, so clients see code Unknown and "auth: permission denied".
    #[error("auth: {}", .0.to_string().trim_start_matches("etcdserver: "))]
    MaintenanceAuth(AuthError),
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
    #[error("etcdserver: member ID already exist")]
    MemberIdExists,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// etcd's strict reconfiguration check: a voter not connected for `HEALTH_INTERVAL`.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// A learner answers only Status and serializable Range (`api::learner`).
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// ringkv's own: etcd has no bound on members; raft's voters are bounded here.
    #[error("etcdserver: too many members in cluster")]
    TooManyMembers,
    /// ringkv's own: a membership change, which needs raft conf changes (issue 5 phase 2). Code
    /// Unimplemented, so that clients do not retry it.
    #[error("etcdserver: {0} is not supported yet: membership is fixed at bootstrap")]
    MembershipUnsupported(&'static str),
    /// The Lock and Election recipes' own errors; etcd returns them as plain errors (Unknown).
    #[error(transparent)]
    Recipe(#[from] super::recipe::RecipeError),
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

/// The record's refusals of a membership change, as etcd's v3rpc maps them (`ErrIDRemoved`
/// reads as "member not found" there too).
impl From<crate::peer::ChangeRefused> for ApiError {
    fn from(refused: crate::peer::ChangeRefused) -> ApiError {
        use crate::peer::ChangeRefused as R;
        match refused {
            R::IdExists => ApiError::MemberIdExists,
            R::IdRemoved | R::NotFound => ApiError::MemberNotFound,
            R::PeerUrlExists => ApiError::PeerUrlExists,
            R::TooManyLearners => ApiError::TooManyLearners,
            R::NotLearner => ApiError::MemberNotLearner,
            R::TooManyMembers => ApiError::TooManyMembers,
            R::NotEnoughStarted => ApiError::MemberNotEnoughStarted,
            R::Undecodable => ApiError::Internal(refused.to_string()),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::Auth(error) | ApiError::Apply(ApplyError::Auth(error)) => auth_code(*error),
            ApiError::EmptyKey
            | ApiError::KeyTooLarge
            | ApiError::ValueProvided
            | ApiError::LeaseProvided
            | ApiError::TooManyOps
            | ApiError::DuplicateKey
            | ApiError::InvalidSortOption
            | ApiError::RequestTooLarge
            | ApiError::PermissionNotGiven
            | ApiError::Apply(ApplyError::KeyNotFound)
            | ApiError::MemberBadUrls => Code::InvalidArgument,
            ApiError::Apply(ApplyError::LeaseNotFound) | ApiError::MemberNotFound => Code::NotFound,
            ApiError::Apply(
                ApplyError::Compacted | ApplyError::FutureRevision | ApplyError::LeaseTtlTooLarge,
            ) => Code::OutOfRange,
            ApiError::Stopped
            | ApiError::NoLeader
            | ApiError::NotLeader
            | ApiError::Timeout
            | ApiError::Unhealthy
            | ApiError::NotSupportedForLearner => Code::Unavailable,
            ApiError::TooManyRequests | ApiError::Apply(ApplyError::NoSpace) => {
                Code::ResourceExhausted
            }
            ApiError::Apply(ApplyError::LeaseExists)
            | ApiError::BadLeaderTransferee
            | ApiError::MemberNotEnoughStarted
            | ApiError::MemberNotLearner
            | ApiError::PeerUrlExists
            | ApiError::MemberIdExists
            | ApiError::TooManyLearners
            | ApiError::LearnerNotReady
            | ApiError::TooManyMembers => Code::FailedPrecondition,
            ApiError::MembershipUnsupported(_) => Code::Unimplemented,
            ApiError::Internal(_) | ApiError::MaintenanceAuth(_) | ApiError::Recipe(_) => {
                Code::Unknown
            }
        }
    }
}

/// etcd's codes for auth errors (`rpctypes/error.go`).
fn auth_code(error: AuthError) -> Code {
    match error {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidAuthMgmt
        | AuthError::AuthOldRevision => Code::InvalidArgument,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
    }
}

/// The status of a Lock or Election RPC that failed: etcd serves those with its client recipes
/// over an in-process client, whose errors (etcd's own messages, gRPC codes stripped by the
/// client) its server returns as plain errors, so every failure reaches the caller with code
/// Unknown and etcd's message (e.g. "etcdserver: requested lease not found").
pub fn recipe_status(error: &ApiError) -> Status {
    Status::new(Code::Unknown, error.to_string())
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
            (
                ApiError::MemberIdExists,
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                ApiError::TooManyLearners,
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                ApiError::LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                ApiError::Unhealthy,
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
            (
                ApiError::NotSupportedForLearner,
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
        ];
        let auth = [
            (
                AuthError::RootUserNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                AuthError::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                AuthError::UserAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                AuthError::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                AuthError::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                AuthError::RoleAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                AuthError::RoleNotFound,
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                AuthError::RoleEmpty,
                Code::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                AuthError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                AuthError::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                AuthError::RoleNotGranted,
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                AuthError::PermissionNotGranted,
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                AuthError::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                AuthError::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                AuthError::InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                AuthError::AuthOldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
        ];
        assert_eq!(auth.len(), AuthError::ALL.len());
        for (error, code, message) in auth {
            for status in [
                Status::from(ApiError::Auth(error)),
                Status::from(ApiError::Apply(ApplyError::Auth(error))),
            ] {
                assert_eq!((status.code(), status.message()), (code, message));
            }
        }
        let status = Status::from(ApiError::MaintenanceAuth(AuthError::PermissionDenied));
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unknown, "auth: permission denied")
        );
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
