//! The raft entry format of client writes and the encoding of their outcomes.
//!
//! A proposal is a protobuf message of ringkv's own (hand-written prost, so it needs no `.proto`
//! file): a oneof of etcd's own request messages, so an entry holds exactly the request the
//! client sent, after validation. Field numbers are part of the on-disk format (the WAL keeps
//! entries) and never change:
//!
//! ```text
//! Proposal { oneof request { PutRequest put = 1; DeleteRangeRequest delete_range = 2;
//!                            TxnRequest txn = 3; CompactionRequest compaction = 4;
//!                            LeaseGrantRequest lease_grant = 6;
//!                            LeaseRevokeRequest lease_revoke = 7;
//!                            AlarmRequest alarm = 10;
//!                            /* auth, 20-35: etcd's Auth*Request messages */
//!                            AuthEnableRequest auth_enable = 20;
//!                            AuthDisableRequest auth_disable = 21;
//!                            AuthenticateEntry authenticate = 22;
//!                            AuthUserAddRequest user_add = 23;  /* hashed_password only */
//!                            AuthUserDeleteRequest user_delete = 24;
//!                            AuthUserChangePasswordRequest user_change_password = 25;
//!                            AuthUserGrantRoleRequest user_grant_role = 26;
//!                            AuthUserRevokeRoleRequest user_revoke_role = 27;
//!                            AuthRoleAddRequest role_add = 28;
//!                            AuthRoleDeleteRequest role_delete = 29;
//!                            AuthRoleGrantPermissionRequest role_grant_permission = 30;
//!                            AuthRoleRevokePermissionRequest role_revoke_permission = 31; }
//!            AuthHeader auth = 39; }
//! AuthenticateEntry { string name = 1; string token_prefix = 2; }
//! AuthHeader { string username = 1; uint64 revision = 2; bool internal = 3; }
//! Outcome  { oneof result  { PutResponse put = 1; DeleteRangeResponse delete_range = 2;
//!                            TxnResponse txn = 3; CompactionResponse compaction = 4;
//!                            int32 error = 5; /* ApplyError::code */
//!                            LeaseGrantResponse lease_grant = 6;
//!                            LeaseRevokeResponse lease_revoke = 7;
//!                            AlarmResponse alarm = 10;
//!                            /* 20-31: the matching Auth*Response */ } }
//! ```
//!
//! `auth` names the client that sent the request (see `crate::auth`): absent for a client that
//! sent no token, `internal` for requests the server makes itself (lease expiry), which are
//! not checked. Passwords never enter the log: `user_add` and `user_change_password` carry
//! only the bcrypt hash, made by the API.
//!
//! Tags 8 and 9 are reserved for leases (checkpoints) in both messages. A `lease_grant` entry
//! carries a non-zero id (the API picks one when the client asks for 0) and the TTL already
//! raised to the minimum (`lease::LeaseConfig::ttl_min_secs`), so applying it needs no
//! configuration.
//!
//! An entry with empty data (raft's own no-op after an election) or with no request set is
//! applied as nothing and answered with an empty outcome.

use ringkv_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest,
    AuthRoleDeleteResponse, AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthUserAddRequest,
    AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse,
    AuthenticateResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

/// A write request as it travels through raft.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Proposal {
    #[prost(
        oneof = "ProposalRequest",
        tags = "1, 2, 3, 4, 6, 7, 10, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31"
    )]
    pub request: Option<ProposalRequest>,
    /// The client that sent the request (`crate::auth`).
    #[prost(message, optional, tag = "39")]
    pub auth: Option<AuthHeader>,
}

/// Who proposed an entry: etcd's `RequestHeader.{Username, AuthRevision}`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthHeader {
    #[prost(string, tag = "1")]
    pub username: String,
    /// The auth revision at which the caller's token was checked; 0: no token.
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    /// Made by the server itself (lease expiry): no permission applies.
    #[prost(bool, tag = "3")]
    pub internal: bool,
}

/// etcd's `InternalAuthenticateRequest`: the password was checked by the API; the token is
/// `<token_prefix>.<entry index>`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthenticateEntry {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub token_prefix: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ProposalRequest {
    #[prost(message, tag = "1")]
    Put(PutRequest),
    #[prost(message, tag = "2")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "3")]
    Txn(TxnRequest),
    #[prost(message, tag = "4")]
    Compaction(CompactionRequest),
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeRequest),
    /// etcd's `Alarm` (GET, ACTIVATE, DEACTIVATE): alarms are replicated state.
    #[prost(message, tag = "10")]
    Alarm(AlarmRequest),
    #[prost(message, tag = "20")]
    AuthEnable(AuthEnableRequest),
    #[prost(message, tag = "21")]
    AuthDisable(AuthDisableRequest),
    #[prost(message, tag = "22")]
    Authenticate(AuthenticateEntry),
    #[prost(message, tag = "23")]
    UserAdd(AuthUserAddRequest),
    #[prost(message, tag = "24")]
    UserDelete(AuthUserDeleteRequest),
    #[prost(message, tag = "25")]
    UserChangePassword(AuthUserChangePasswordRequest),
    #[prost(message, tag = "26")]
    UserGrantRole(AuthUserGrantRoleRequest),
    #[prost(message, tag = "27")]
    UserRevokeRole(AuthUserRevokeRoleRequest),
    #[prost(message, tag = "28")]
    RoleAdd(AuthRoleAddRequest),
    #[prost(message, tag = "29")]
    RoleDelete(AuthRoleDeleteRequest),
    #[prost(message, tag = "30")]
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "31")]
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// What applying one entry produced, returned to the proposer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Outcome {
    #[prost(
        oneof = "OutcomeResult",
        tags = "1, 2, 3, 4, 5, 6, 7, 10, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31"
    )]
    pub result: Option<OutcomeResult>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OutcomeResult {
    #[prost(message, tag = "1")]
    Put(PutResponse),
    #[prost(message, tag = "2")]
    DeleteRange(DeleteRangeResponse),
    #[prost(message, tag = "3")]
    Txn(TxnResponse),
    #[prost(message, tag = "4")]
    Compaction(CompactionResponse),
    /// An `ApplyError` code.
    #[prost(int32, tag = "5")]
    Error(i32),
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantResponse),
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeResponse),
    #[prost(message, tag = "10")]
    Alarm(AlarmResponse),
    #[prost(message, tag = "20")]
    AuthEnable(AuthEnableResponse),
    #[prost(message, tag = "21")]
    AuthDisable(AuthDisableResponse),
    #[prost(message, tag = "22")]
    Authenticate(AuthenticateResponse),
    #[prost(message, tag = "23")]
    UserAdd(AuthUserAddResponse),
    #[prost(message, tag = "24")]
    UserDelete(AuthUserDeleteResponse),
    #[prost(message, tag = "25")]
    UserChangePassword(AuthUserChangePasswordResponse),
    #[prost(message, tag = "26")]
    UserGrantRole(AuthUserGrantRoleResponse),
    #[prost(message, tag = "27")]
    UserRevokeRole(AuthUserRevokeRoleResponse),
    #[prost(message, tag = "28")]
    RoleAdd(AuthRoleAddResponse),
    #[prost(message, tag = "29")]
    RoleDelete(AuthRoleDeleteResponse),
    #[prost(message, tag = "30")]
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    #[prost(message, tag = "31")]
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

/// Expected refusals while applying: the entry changed nothing. Messages are etcd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Auth refusals and failed permission checks (codes 30-49: 30 + `AuthError::code`).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put naming a lease that does not exist; a revoke of one; a grant of id 0.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A grant of an id that is already a lease.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant above `lease::TTL_MAX_SECS`.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// The NOSPACE alarm is raised, or this write took the store past its quota (the write is
    /// then applied all the same, as etcd's `quotaApplierV3` does, so members stay identical).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
}

const AUTH_CODE_BASE: i32 = 30;
const _: () = assert!(crate::auth::AuthError::ALL.len() <= 20);

impl ApplyError {
    const ALL: [ApplyError; 7] = [
        ApplyError::KeyNotFound,
        ApplyError::LeaseNotFound,
        ApplyError::Compacted,
        ApplyError::FutureRevision,
        ApplyError::LeaseExists,
        ApplyError::LeaseTtlTooLarge,
        ApplyError::NoSpace,
    ];

    /// Stable wire code in `Outcome.error`.
    pub fn code(self) -> i32 {
        match self {
            ApplyError::KeyNotFound => 1,
            ApplyError::LeaseNotFound => 2,
            ApplyError::Compacted => 3,
            ApplyError::FutureRevision => 4,
            // 10-19: leases.
            ApplyError::LeaseExists => 10,
            ApplyError::LeaseTtlTooLarge => 11,
            // 20-29: alarms and quota.
            ApplyError::NoSpace => 20,
            // 30-49: auth.
            ApplyError::Auth(error) => AUTH_CODE_BASE + error.code(),
        }
    }

    pub fn from_code(code: i32) -> Option<ApplyError> {
        if (AUTH_CODE_BASE..AUTH_CODE_BASE + 20).contains(&code) {
            return crate::auth::AuthError::from_code(code - AUTH_CODE_BASE).map(ApplyError::Auth);
        }
        ApplyError::ALL.into_iter().find(|e| e.code() == code)
    }
}

impl Proposal {
    pub fn new(request: ProposalRequest) -> Proposal {
        Proposal {
            request: Some(request),
            auth: None,
        }
    }
}

impl Outcome {
    pub fn from_result(result: Result<OutcomeResult, ApplyError>) -> Outcome {
        Outcome {
            result: Some(result.unwrap_or_else(|error| OutcomeResult::Error(error.code()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn proposal_bytes_are_stable() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        };
        let bytes = Proposal::new(ProposalRequest::Put(put)).encode_to_vec();
        // field 1, length 6: PutRequest { key(1) = "k", value(2) = "v" }
        assert_eq!(bytes, [0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v']);
        let back = Proposal::decode(bytes.as_slice()).unwrap();
        assert!(matches!(back.request, Some(ProposalRequest::Put(_))));
        assert_eq!(Proposal::decode(&[][..]).unwrap().request, None);
    }

    #[test]
    fn error_codes_round_trip() {
        for error in ApplyError::ALL {
            assert_eq!(ApplyError::from_code(error.code()), Some(error));
        }
        for error in crate::auth::AuthError::ALL {
            let error = ApplyError::Auth(error);
            assert!((30..50).contains(&error.code()));
            assert_eq!(ApplyError::from_code(error.code()), Some(error));
        }
        assert_eq!(ApplyError::from_code(49), None);
        assert_eq!(ApplyError::from_code(0), None);
    }
}
