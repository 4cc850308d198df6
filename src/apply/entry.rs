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
//!                            AlarmRequest alarm = 10; } }
//! Outcome  { oneof result  { PutResponse put = 1; DeleteRangeResponse delete_range = 2;
//!                            TxnResponse txn = 3; CompactionResponse compaction = 4;
//!                            int32 error = 5; /* ApplyError::code */
//!                            LeaseGrantResponse lease_grant = 6;
//!                            LeaseRevokeResponse lease_revoke = 7;
//!                            AlarmResponse alarm = 10; } }
//! ```
//!
//! Tags 8 and 9 are reserved for leases (checkpoints) in both messages. A `lease_grant` entry
//! carries a non-zero id (the API picks one when the client asks for 0) and the TTL already
//! raised to the minimum (`lease::LeaseConfig::ttl_min_secs`), so applying it needs no
//! configuration.
//!
//! An entry with empty data (raft's own no-op after an election) or with no request set is
//! applied as nothing and answered with an empty outcome.

use ringkv_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

/// A write request as it travels through raft.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Proposal {
    #[prost(oneof = "ProposalRequest", tags = "1, 2, 3, 4, 6, 7, 10")]
    pub request: Option<ProposalRequest>,
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
}

/// What applying one entry produced, returned to the proposer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Outcome {
    #[prost(oneof = "OutcomeResult", tags = "1, 2, 3, 4, 5, 6, 7, 10")]
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
}

/// Expected refusals while applying: the entry changed nothing. Messages are etcd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
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
        }
    }

    pub fn from_code(code: i32) -> Option<ApplyError> {
        ApplyError::ALL.into_iter().find(|e| e.code() == code)
    }
}

impl Proposal {
    pub fn new(request: ProposalRequest) -> Proposal {
        Proposal {
            request: Some(request),
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
        assert_eq!(ApplyError::from_code(0), None);
    }
}
