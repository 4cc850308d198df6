//! LeaseGrant and LeaseRevoke entries: etcd's `lessor.Grant` / `lessor.Revoke` as the applier
//! runs them. Both only record `LeaseEffect`s (and a revoke's deletes in its MVCC scope); the
//! applier writes the lease table and updates the lessor once the entry is kept.

use ringkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
};

use super::entry::ApplyError;
use super::exec::{header, ExecResult, KvRead, WriteAt};
use crate::lease::{LeaseEffect, TTL_MAX_SECS};

/// etcd's checks in its order: id 0, TTL too large, id taken. The TTL was raised to the
/// minimum by the API; an entry with a TTL below one second still gets one.
pub fn grant(w: &mut WriteAt<'_, '_>, req: &LeaseGrantRequest) -> ExecResult<LeaseGrantResponse> {
    if req.id == 0 {
        return Err(ApplyError::LeaseNotFound.into());
    }
    if req.ttl > TTL_MAX_SECS {
        return Err(ApplyError::LeaseTtlTooLarge.into());
    }
    if w.has_lease(req.id) {
        return Err(ApplyError::LeaseExists.into());
    }
    let ttl_secs = req.ttl.max(1);
    w.leases.push(LeaseEffect::Grant {
        id: req.id,
        ttl_secs,
    });
    Ok(LeaseGrantResponse {
        header: Some(header(w.txn.revision())),
        id: req.id,
        ttl: ttl_secs,
        error: String::new(),
    })
}

/// Deletes every key attached to the lease in this entry's one revision, in ascending key order
/// (consecutive sub-revisions; etcd sorts them the same way so members agree), then the lease.
pub fn revoke(
    w: &mut WriteAt<'_, '_>,
    req: &LeaseRevokeRequest,
) -> ExecResult<LeaseRevokeResponse> {
    let keys = w.lessor.keys(req.id).ok_or(ApplyError::LeaseNotFound)?;
    for key in keys {
        let deleted = w.txn.delete_range(&key, &[])?;
        assert!(
            deleted.len() == 1 && deleted[0].lease == req.id,
            "key {key:x?} attached to lease {:x} is not alive with it: {deleted:?}",
            req.id
        );
        w.leases.push(LeaseEffect::Detach { id: req.id, key });
    }
    w.leases.push(LeaseEffect::Revoke { id: req.id });
    Ok(LeaseRevokeResponse {
        header: Some(header(w.txn.revision())),
    })
}
