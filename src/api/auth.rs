//! etcd's Auth service, and the one auth check every other service calls.
//!
//! # For every service (the contract)
//! - `ctx.caller(request.metadata())?` first: the client named by the `token` metadata (etcd's
//!   `AuthInfoFromCtx`); an unknown or expired token is `InvalidAuthToken`, no token is an
//!   anonymous caller (refused with `UserEmpty` by any check while auth is enabled).
//! - Reads served from MVCC (Range, read-only Txn, Watch create): `ctx.check_range(&caller,
//!   key, range_end)?` / `ctx.check_txn(&caller, &txn)?` before reading. A read should then
//!   confirm `caller.is_current(&ctx)` after reading and check again if not (the auth state
//!   moved meanwhile; etcd's `doSerialize` loop).
//! - Writes: `ctx.propose_as(&caller, request)` instead of `ctx.propose(request)`: the applier
//!   checks the entry's permissions against the auth state as of that entry (etcd's
//!   `authApplierV3`). Requests the server makes on its own use `ctx.propose_internal`.
//! - Admin-only RPCs (Maintenance's Defragment, Snapshot, Hash, HashKV, MoveLeader; the
//!   Auth service's user and role management): `ctx.check_admin(&caller)?`.
//!
//! Authenticate checks the password here (bcrypt, on a blocking thread) and proposes an entry
//! carrying the token's random part; the token is issued when it applies. If the auth state
//! moved between the check and the apply, the password is checked again (etcd does the same).

use std::sync::Arc;

use ringkv_proto::etcdserverpb::auth_server::Auth;
use ringkv_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader,
    TxnRequest,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::apply::entry::{
    AuthHeader, AuthenticateEntry, OutcomeResult, Proposal, ProposalRequest,
};
use crate::auth::{token, AuthError, AuthInfo};

use super::{ApiError, Context};

/// Metadata keys a client's token may come in (etcd's `TokenFieldNameGRPC`, and the gateway's).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// Times Authenticate checks the password again when the auth state moved under it.
const AUTHENTICATE_ATTEMPTS_MAX: usize = 3;

/// The client behind a request: `None` when it sent no token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller(Option<AuthInfo>);

impl Caller {
    /// A caller that sent no token.
    pub fn anonymous() -> Caller {
        Caller(None)
    }

    fn info(&self) -> AuthInfo {
        self.0.clone().unwrap_or_default()
    }

    fn header(&self) -> Option<AuthHeader> {
        self.0.as_ref().map(|info| AuthHeader {
            username: info.username.clone(),
            revision: info.revision,
            internal: false,
        })
    }

    /// Whether the auth state is still the one this caller was checked against (always true
    /// for an anonymous caller, whose checks do not depend on it).
    pub fn is_current(&self, ctx: &Context) -> bool {
        self.0
            .as_ref()
            .is_none_or(|info| info.revision == ctx.auth.read().revision())
    }
}

impl Context {
    /// etcd's `AuthInfoFromCtx`: the client named by the request's token.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Caller, ApiError> {
        let Some(token) = TOKEN_KEYS.iter().find_map(|key| metadata.get(*key)) else {
            return Ok(Caller(None));
        };
        let token = token.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
        Ok(Caller(Some(self.auth.info_from_token(token)?)))
    }

    /// May `caller` read `[key, range_end)` (etcd's range end conventions)?
    pub fn check_range(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), ApiError> {
        Ok(self
            .auth
            .read()
            .check_range(&caller.info(), key, range_end)?)
    }

    /// May `caller` run this txn (every compare and op of both branches)?
    pub fn check_txn(&self, caller: &Caller, txn: &TxnRequest) -> Result<(), ApiError> {
        Ok(self.auth.read().check_txn(&caller.info(), txn)?)
    }

    /// Is `caller` an admin (holds the root role), or auth disabled?
    pub fn check_admin(&self, caller: &Caller) -> Result<(), ApiError> {
        Ok(self.auth.read().check_admin(&caller.info())?)
    }

    /// Proposes `request` on behalf of `caller`; the applier checks its permissions.
    pub async fn propose_as(
        &self,
        caller: &Caller,
        request: ProposalRequest,
    ) -> Result<OutcomeResult, ApiError> {
        let mut proposal = Proposal::new(request);
        proposal.auth = caller.header();
        self.submit(proposal).await
    }

    /// Proposes a request the server makes itself (lease expiry): not permission checked.
    pub async fn propose_internal(
        &self,
        request: ProposalRequest,
    ) -> Result<OutcomeResult, ApiError> {
        let mut proposal = Proposal::new(request);
        proposal.auth = Some(AuthHeader {
            internal: true,
            ..AuthHeader::default()
        });
        self.submit(proposal).await
    }

    fn auth_header(&self) -> Option<ResponseHeader> {
        let mut header = Some(ResponseHeader {
            revision: self.mvcc.current_revision(),
            ..ResponseHeader::default()
        });
        self.fill(&mut header);
        header
    }
}

pub struct AuthService {
    ctx: Arc<Context>,
}

impl AuthService {
    pub fn new(ctx: Arc<Context>) -> AuthService {
        AuthService { ctx }
    }

    /// Proposes an auth change on behalf of the request's caller and returns its outcome.
    async fn change(
        &self,
        metadata: &MetadataMap,
        request: ProposalRequest,
    ) -> Result<OutcomeResult, Status> {
        let caller = self.ctx.caller(metadata)?;
        Ok(self.ctx.propose_as(&caller, request).await?)
    }

    /// Waits for a linearizable read point, then identifies the caller.
    async fn read_caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.ctx
            .consensus
            .read_index()
            .await
            .map_err(ApiError::from)?;
        Ok(self.ctx.caller(metadata)?)
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        let auth = self.ctx.auth.clone();
        tokio::task::spawn_blocking(move || auth.hash_password(&password))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))?
            .map_err(|error| ApiError::Internal(format!("bcrypt: {error}")).into())
    }
}

fn unexpected(what: &str) -> Status {
    ApiError::Internal(format!(
        "apply answered {what} with another kind of response"
    ))
    .into()
}

/// Unwraps the expected outcome variant and fills its header.
macro_rules! outcome {
    ($self:ident, $result:expr, $variant:ident, $what:literal) => {{
        let OutcomeResult::$variant(mut resp) = $result else {
            return Err(unexpected($what));
        };
        $self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::AuthEnable(*request.get_ref()),
            )
            .await?;
        outcome!(self, result, AuthEnable, "auth enable")
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::AuthDisable(*request.get_ref()),
            )
            .await?;
        outcome!(self, result, AuthDisable, "auth disable")
    }

    /// etcd 3.5's AuthStatus (admin only, like the other auth reads).
    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let caller = self.read_caller(request.metadata()).await?;
        self.ctx.check_admin(&caller)?;
        let state = self.ctx.auth.read();
        Ok(Response::new(AuthStatusResponse {
            header: self.ctx.auth_header(),
            enabled: state.is_enabled(),
            auth_revision: state.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        self.ctx
            .consensus
            .read_index()
            .await
            .map_err(ApiError::from)?;
        for _ in 0..AUTHENTICATE_ATTEMPTS_MAX {
            let auth = self.ctx.auth.clone();
            let (name, password) = (req.name.clone(), req.password.clone());
            let checked =
                tokio::task::spawn_blocking(move || auth.check_password(&name, &password))
                    .await
                    .map_err(|error| ApiError::Internal(error.to_string()))?
                    .map_err(ApiError::from)?;
            let entry = AuthenticateEntry {
                name: req.name.clone(),
                token_prefix: token::random_prefix(),
            };
            let result = self
                .ctx
                .propose_as(&Caller::anonymous(), ProposalRequest::Authenticate(entry))
                .await?;
            if checked == self.ctx.auth.read().revision() {
                return outcome!(self, result, Authenticate, "authenticate");
            }
        }
        Err(ApiError::Auth(AuthError::AuthOldRevision).into())
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let (metadata, _, mut req) = request.into_parts();
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password = std::mem::take(&mut req.password);
        req.hashed_password = if no_password {
            String::new()
        } else {
            self.hash(password).await?
        };
        let result = self
            .change(&metadata, ProposalRequest::UserAdd(req))
            .await?;
        outcome!(self, result, UserAdd, "user add")
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.read_caller(request.metadata()).await?;
        let name = &request.get_ref().name;
        let state = self.ctx.auth.read();
        // etcd lets a user read itself.
        if let Err(error) = state.check_admin(&caller.info()) {
            if *name != caller.info().username {
                return Err(ApiError::from(error).into());
            }
        }
        let user = state
            .user(name)
            .ok_or(ApiError::Auth(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.ctx.auth_header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let caller = self.read_caller(request.metadata()).await?;
        let state = self.ctx.auth.read();
        state.check_admin(&caller.info()).map_err(ApiError::from)?;
        Ok(Response::new(AuthUserListResponse {
            header: self.ctx.auth_header(),
            users: state
                .users()
                .map(|u| String::from_utf8_lossy(&u.name).into_owned())
                .collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::UserDelete(request.get_ref().clone()),
            )
            .await?;
        outcome!(self, result, UserDelete, "user delete")
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (metadata, _, mut req) = request.into_parts();
        let password = std::mem::take(&mut req.password);
        req.hashed_password = self.hash(password).await?;
        let result = self
            .change(&metadata, ProposalRequest::UserChangePassword(req))
            .await?;
        outcome!(self, result, UserChangePassword, "user change password")
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::UserGrantRole(request.get_ref().clone()),
            )
            .await?;
        outcome!(self, result, UserGrantRole, "user grant role")
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::UserRevokeRole(request.get_ref().clone()),
            )
            .await?;
        outcome!(self, result, UserRevokeRole, "user revoke role")
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::RoleAdd(request.get_ref().clone()),
            )
            .await?;
        outcome!(self, result, RoleAdd, "role add")
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.read_caller(request.metadata()).await?;
        let name = &request.get_ref().role;
        let state = self.ctx.auth.read();
        // etcd lets a user read the roles it holds.
        if let Err(error) = state.check_admin(&caller.info()) {
            if !state.has_role(&caller.info().username, name) {
                return Err(ApiError::from(error).into());
            }
        }
        let role = state
            .role(name)
            .ok_or(ApiError::Auth(AuthError::RoleNotFound))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.ctx.auth_header(),
            perm: role.key_permission.clone(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let caller = self.read_caller(request.metadata()).await?;
        let state = self.ctx.auth.read();
        state.check_admin(&caller.info()).map_err(ApiError::from)?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.ctx.auth_header(),
            roles: state
                .roles()
                .map(|r| String::from_utf8_lossy(&r.name).into_owned())
                .collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::RoleDelete(request.get_ref().clone()),
            )
            .await?;
        outcome!(self, result, RoleDelete, "role delete")
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        if request.get_ref().perm.is_none() {
            return Err(ApiError::PermissionNotGiven.into());
        }
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::RoleGrantPermission(request.get_ref().clone()),
            )
            .await?;
        outcome!(self, result, RoleGrantPermission, "role grant permission")
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let result = self
            .change(
                request.metadata(),
                ProposalRequest::RoleRevokePermission(request.get_ref().clone()),
            )
            .await?;
        outcome!(self, result, RoleRevokePermission, "role revoke permission")
    }
}
