//! Auth entries: the permission check every entry passes before it is applied (etcd's
//! `authApplierV3`), and applying the entries that change the auth state (`crate::auth`).

use ringkv_proto::authpb::Permission;
use ringkv_proto::etcdserverpb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGrantPermissionResponse, AuthRoleRevokePermissionResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGrantRoleResponse,
    AuthUserRevokeRoleResponse, AuthenticateResponse, ResponseHeader,
};

use crate::auth::{AuthError, AuthInfo, AuthState, AuthStore};
use crate::lease::Lessor;
use crate::mvcc::{self, MvccBatch};

use super::entry::{AuthHeader, OutcomeResult, ProposalRequest};

/// Whether the caller named by `header` may have `request` applied, judged on the auth state
/// as of this entry. Internal requests (lease expiry) are not checked.
pub fn check(
    store: &AuthStore,
    lessor: &Lessor,
    header: Option<&AuthHeader>,
    request: &ProposalRequest,
) -> Result<(), AuthError> {
    if header.is_some_and(|h| h.internal) {
        return Ok(());
    }
    let state = store.read();
    if !state.is_enabled() {
        return Ok(());
    }
    let info = header.map_or_else(AuthInfo::default, |h| AuthInfo {
        username: h.username.clone(),
        revision: h.revision,
    });
    match request {
        ProposalRequest::Put(put) => {
            state.check_put(&info, &put.key)?;
            check_lease_puts(&state, &info, lessor, put.lease)?;
            if put.prev_kv {
                state.check_range(&info, &put.key, &[])?;
            }
        }
        ProposalRequest::DeleteRange(del) => {
            state.check_delete(&info, &del.key, &del.range_end)?;
            if del.prev_kv {
                state.check_range(&info, &del.key, &del.range_end)?;
            }
        }
        ProposalRequest::Txn(txn) => state.check_txn(&info, txn)?,
        ProposalRequest::LeaseRevoke(revoke) => {
            check_lease_puts(&state, &info, lessor, revoke.id)?;
        }
        // etcd 3.4 checks none of these at apply (Compact is open to every user there).
        ProposalRequest::Compaction(_)
        | ProposalRequest::LeaseGrant(_)
        | ProposalRequest::Alarm(_)
        | ProposalRequest::Authenticate(_) => {}
        // The rest manage users, roles or the switch (`is_auth_management`): root only. A new
        // request kind also lands here until it is placed above, so it fails closed.
        _ => {
            debug_assert!(is_auth_management(request), "unplaced request kind");
            state.check_admin(&info)?;
        }
    }
    Ok(())
}

/// etcd's `checkLeasePuts`: a lease's keys must all be writable by whoever revokes the lease
/// or attaches another key to it (else they could delete keys they may not write).
fn check_lease_puts(
    state: &AuthState,
    info: &AuthInfo,
    lessor: &Lessor,
    lease: i64,
) -> Result<(), AuthError> {
    if lease == 0 || state.check_admin(info).is_ok() {
        return Ok(());
    }
    for key in lessor.keys(lease).unwrap_or_default() {
        state.check_put(info, &key)?;
    }
    Ok(())
}

fn header(batch: &MvccBatch<'_>) -> ResponseHeader {
    ResponseHeader {
        revision: batch.revision(),
        ..ResponseHeader::default()
    }
}

/// Whether `request` is an auth entry (applied by `apply`): a management request, or
/// Authenticate.
pub fn is_auth(request: &ProposalRequest) -> bool {
    matches!(request, ProposalRequest::Authenticate(_)) || is_auth_management(request)
}

/// Whether `request` changes users, roles or the auth switch: only root may, at apply as at the
/// API. The one list of them, so a new auth RPC cannot be admitted in one place and missed in
/// the other.
fn is_auth_management(request: &ProposalRequest) -> bool {
    matches!(
        request,
        ProposalRequest::AuthEnable(_)
            | ProposalRequest::AuthDisable(_)
            | ProposalRequest::UserAdd(_)
            | ProposalRequest::UserDelete(_)
            | ProposalRequest::UserChangePassword(_)
            | ProposalRequest::UserGrantRole(_)
            | ProposalRequest::UserRevokeRole(_)
            | ProposalRequest::RoleAdd(_)
            | ProposalRequest::RoleDelete(_)
            | ProposalRequest::RoleGrantPermission(_)
            | ProposalRequest::RoleRevokePermission(_)
    )
}

/// Applies an auth entry (`is_auth`) at `index`: its rows go into `batch`. The outer error is
/// a storage failure; the inner one a refusal, which changed nothing.
pub fn apply(
    store: &AuthStore,
    batch: &mut MvccBatch<'_>,
    index: u64,
    request: ProposalRequest,
) -> mvcc::Result<Result<OutcomeResult, AuthError>> {
    let header = Some(header(batch));
    store.apply(batch, |state, tokens| {
        Ok(match request {
            ProposalRequest::AuthEnable(_) => {
                state.enable()?;
                OutcomeResult::AuthEnable(AuthEnableResponse { header })
            }
            ProposalRequest::AuthDisable(_) => {
                if state.disable() {
                    tokens.clear();
                }
                OutcomeResult::AuthDisable(AuthDisableResponse { header })
            }
            ProposalRequest::Authenticate(req) => {
                state.authenticate(&req.name)?;
                let token = tokens.assign(
                    &req.token_prefix,
                    index,
                    &req.name,
                    std::time::Instant::now(),
                );
                OutcomeResult::Authenticate(AuthenticateResponse { header, token })
            }
            ProposalRequest::UserAdd(req) => {
                let no_password = req.options.is_some_and(|o| o.no_password);
                state.user_add(&req.name, &req.hashed_password, no_password)?;
                OutcomeResult::UserAdd(AuthUserAddResponse { header })
            }
            ProposalRequest::UserDelete(req) => {
                state.user_delete(&req.name)?;
                tokens.invalidate_user(&req.name);
                OutcomeResult::UserDelete(AuthUserDeleteResponse { header })
            }
            ProposalRequest::UserChangePassword(req) => {
                state.user_change_password(&req.name, &req.hashed_password)?;
                tokens.invalidate_user(&req.name);
                OutcomeResult::UserChangePassword(AuthUserChangePasswordResponse { header })
            }
            ProposalRequest::UserGrantRole(req) => {
                state.user_grant_role(&req.user, &req.role)?;
                OutcomeResult::UserGrantRole(AuthUserGrantRoleResponse { header })
            }
            ProposalRequest::UserRevokeRole(req) => {
                state.user_revoke_role(&req.name, &req.role)?;
                OutcomeResult::UserRevokeRole(AuthUserRevokeRoleResponse { header })
            }
            ProposalRequest::RoleAdd(req) => {
                state.role_add(&req.name)?;
                OutcomeResult::RoleAdd(AuthRoleAddResponse { header })
            }
            ProposalRequest::RoleDelete(req) => {
                state.role_delete(&req.role)?;
                OutcomeResult::RoleDelete(AuthRoleDeleteResponse { header })
            }
            ProposalRequest::RoleGrantPermission(req) => {
                let perm: Permission = req.perm.unwrap_or_default();
                state.role_grant_permission(&req.name, perm)?;
                OutcomeResult::RoleGrantPermission(AuthRoleGrantPermissionResponse { header })
            }
            ProposalRequest::RoleRevokePermission(req) => {
                state.role_revoke_permission(&req.role, &req.key, &req.range_end)?;
                OutcomeResult::RoleRevokePermission(AuthRoleRevokePermissionResponse { header })
            }
            other => unreachable!("not an auth entry: {other:?}"),
        })
    })
}
