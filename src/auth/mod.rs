//! etcd's auth store: users, roles, their key permissions, the enabled flag and the auth
//! revision, as replicated state; plus this member's simple tokens.
//!
//! # Model (etcd's `auth/store.go`)
//! A user has a bcrypt password hash (`--bcrypt-cost`, default 10; etcd stores the same hashes)
//! and a sorted list of role names. A role has a list of permissions sorted by key, each READ,
//! WRITE or READWRITE on a key, a range `[key, range_end)` or everything from a key
//! (`range_end = "\0"`); see `perm`. The `root` user must exist and hold the `root` role before
//! auth can be enabled; a holder of the `root` role may do anything (admin). The auth revision
//! starts at 1 and goes up by one with every change of users, roles or permissions and with
//! AuthDisable (not AuthEnable: etcd does not bump it there).
//!
//! # Replication
//! Every change is a raft entry (`apply::auth`) applied on every member in log order, so the
//! state is the same everywhere. A request's caller (user name and the auth revision at which
//! its token was checked) travels in the entry's `AuthHeader`; the applier checks the entry's
//! permissions against the state as of that entry (`check_*` below) and refuses it with
//! `AuthOldRevision` when the auth state changed since the caller was identified, as etcd's
//! `isOpPermitted` does. Reads are checked in the API layer against the current state and
//! retried when the auth revision moved during the read.
//!
//! # Persistence
//! In the page store's foreign table `0x06`, written in the same commit as the entry (so WAL
//! replay is idempotent):
//!
//! ```text
//! 0x06 0x00 "enabled"    -> 0x00 | 0x01
//! 0x06 0x00 "revision"   -> u64 BE
//! 0x06 0x01 ‖ user name  -> authpb.User (protobuf, as in etcd's authUsers bucket)
//! 0x06 0x02 ‖ role name  -> authpb.Role (protobuf, as in etcd's authRoles bucket)
//! ```
//!
//! # Tokens
//! Simple tokens (`token`) live in memory only. The password is checked by the API before the
//! `Authenticate` entry is proposed (bcrypt is slow; the apply loop must not wait for it); the
//! entry carries the token's random part and the token is issued when it is applied.
//!
//! # Permission cache
//! A user's merged permissions are computed once and cached; the cache is cleared by every
//! change of the auth state (each one also moves the revision).

pub mod perm;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prost::Message;
use ringkv_proto::authpb::{Permission, Role, User};
use ringkv_proto::etcdserverpb::{request_op, TxnRequest};

use crate::mvcc::{self, Mvcc, MvccBatch, MvccError};

pub use perm::{Access, UserPerms};
use token::SimpleTokens;

/// The page store table of the auth state.
pub const TABLE_AUTH: u8 = 0x06;
const SUB_META: u8 = 0x00;
const SUB_USER: u8 = 0x01;
const SUB_ROLE: u8 = 0x02;
const META_ENABLED: &[u8] = b"enabled";
const META_REVISION: &[u8] = b"revision";

const _: () = assert!(TABLE_AUTH >= mvcc::FOREIGN_TABLE_MIN);

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// Refusals of auth and of permission checks. Messages are etcd's (`rpctypes/error.go`);
/// `code` is the stable number an `Outcome` carries across raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}

impl AuthError {
    pub const ALL: [AuthError; 16] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::AuthFailed,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::AuthNotEnabled,
        AuthError::InvalidAuthToken,
        AuthError::InvalidAuthMgmt,
        AuthError::AuthOldRevision,
    ];

    /// 0..16, stable (the position in `ALL`).
    pub fn code(self) -> i32 {
        AuthError::ALL
            .iter()
            .position(|e| *e == self)
            .expect("every error is in ALL") as i32
    }

    pub fn from_code(code: i32) -> Option<AuthError> {
        AuthError::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// Failures of the auth layer below the API: a stored row that does not decode is corruption.
#[derive(Debug, thiserror::Error)]
pub enum AuthStoreError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("corrupt auth row {key:x?}")]
    Corrupt { key: Vec<u8> },
}

/// Who sent a request: etcd's `AuthInfo`. `revision == 0` means no user (no token was given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// This member's auth settings (`--auth-token-ttl`, `--bcrypt-cost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthConfig {
    pub token_ttl: Duration,
    pub bcrypt_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            token_ttl: Duration::from_secs(300),
            bcrypt_cost: bcrypt::DEFAULT_COST,
        }
    }
}

/// The replicated auth state.
#[derive(Debug, Default)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Merged permissions by user; cleared by every change (see the module doc).
    cache: Mutex<HashMap<String, Arc<UserPerms>>>,
    /// Rows changed since the last `take_rows`: key -> new value (None: deleted).
    dirty: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

fn meta_key(name: &[u8]) -> Vec<u8> {
    [&[TABLE_AUTH, SUB_META][..], name].concat()
}

fn user_key(name: &str) -> Vec<u8> {
    [&[TABLE_AUTH, SUB_USER][..], name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [&[TABLE_AUTH, SUB_ROLE][..], name.as_bytes()].concat()
}

impl AuthState {
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    fn has_root_role(user: &User) -> bool {
        user.roles.iter().any(|r| r == ROOT_ROLE)
    }

    /// Whether `user` holds `role` (etcd's `HasRole`).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    fn perms_of(&self, user: &User) -> Arc<UserPerms> {
        let name = String::from_utf8_lossy(&user.name).into_owned();
        let mut cache = self.cache.lock();
        cache
            .entry(name)
            .or_insert_with(|| {
                Arc::new(UserPerms::merge(
                    user.roles
                        .iter()
                        .filter_map(|r| self.roles.get(r))
                        .flat_map(|r| r.key_permission.iter()),
                ))
            })
            .clone()
    }

    /// etcd's `isOpPermitted`.
    pub fn check_op(
        &self,
        info: &AuthInfo,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if info.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if info.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = self
            .users
            .get(&info.username)
            .ok_or(AuthError::PermissionDenied)?;
        if Self::has_root_role(user) || self.perms_of(user).permits(access, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    pub fn check_range(&self, info: &AuthInfo, key: &[u8], end: &[u8]) -> Result<(), AuthError> {
        self.check_op(info, Access::Read, key, end)
    }

    pub fn check_put(&self, info: &AuthInfo, key: &[u8]) -> Result<(), AuthError> {
        self.check_op(info, Access::Write, key, &[])
    }

    pub fn check_delete(&self, info: &AuthInfo, key: &[u8], end: &[u8]) -> Result<(), AuthError> {
        self.check_op(info, Access::Write, key, end)
    }

    /// etcd's `IsAdminPermitted`: the caller holds the root role.
    pub fn check_admin(&self, info: &AuthInfo) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if info.username.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = self
            .users
            .get(&info.username)
            .ok_or(AuthError::UserNotFound)?;
        if Self::has_root_role(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's `checkTxnAuth`: read on every compare's range, and each op of both branches as
    /// if sent alone (a delete with `prev_kv` needs read too; nested txns likewise).
    pub fn check_txn(&self, info: &AuthInfo, txn: &TxnRequest) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        for compare in &txn.compare {
            self.check_range(info, &compare.key, &compare.range_end)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.check_range(info, &r.key, &r.range_end)?;
                }
                Some(request_op::Request::RequestPut(p)) => self.check_put(info, &p.key)?,
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.check_range(info, &d.key, &d.range_end)?;
                    }
                    self.check_delete(info, &d.key, &d.range_end)?;
                }
                Some(request_op::Request::RequestTxn(nested)) => self.check_txn(info, nested)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Records a change: the revision moves, the cache is dropped.
    fn commit_revision(&mut self) {
        self.revision += 1;
        self.dirty.insert(
            meta_key(META_REVISION),
            Some(self.revision.to_be_bytes().to_vec()),
        );
        self.cache.get_mut().clear();
    }

    fn put_user(&mut self, user: User) {
        let name = String::from_utf8_lossy(&user.name).into_owned();
        self.dirty
            .insert(user_key(&name), Some(user.encode_to_vec()));
        self.users.insert(name, user);
    }

    fn put_role(&mut self, role: Role) {
        let name = String::from_utf8_lossy(&role.name).into_owned();
        self.dirty
            .insert(role_key(&name), Some(role.encode_to_vec()));
        self.roles.insert(name, role);
    }

    /// AuthEnable. Enabling an enabled store is a no-op, as in etcd.
    pub fn enable(&mut self) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self
            .users
            .get(ROOT_USER)
            .ok_or(AuthError::RootUserNotExist)?;
        if !Self::has_root_role(root) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        self.dirty.insert(meta_key(META_ENABLED), Some(vec![1]));
        self.cache.get_mut().clear();
        Ok(())
    }

    /// AuthDisable; returns whether it changed anything (tokens must then be dropped).
    pub fn disable(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        self.enabled = false;
        self.dirty.insert(meta_key(META_ENABLED), Some(vec![0]));
        self.commit_revision();
        true
    }

    /// The user an `Authenticate` entry may issue a token for.
    pub fn authenticate(&self, name: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.options.is_some_and(|o| o.no_password) {
            return Err(AuthError::AuthFailed);
        }
        Ok(())
    }

    /// UserAdd with the password already hashed (empty with `no_password`).
    pub fn user_add(
        &mut self,
        name: &str,
        hashed_password: &str,
        no_password: bool,
    ) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        self.put_user(User {
            name: name.as_bytes().to_vec(),
            password: hashed_password.as_bytes().to_vec(),
            roles: Vec::new(),
            options: Some(ringkv_proto::authpb::UserAddOptions { no_password }),
        });
        self.commit_revision();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_USER {
            return Err(AuthError::InvalidAuthMgmt);
        }
        if self.users.remove(name).is_none() {
            return Err(AuthError::UserNotFound);
        }
        self.dirty.insert(user_key(name), None);
        self.commit_revision();
        Ok(())
    }

    pub fn user_change_password(&mut self, name: &str, hashed: &str) -> Result<(), AuthError> {
        let mut user = self.users.get(name).ok_or(AuthError::UserNotFound)?.clone();
        user.password = hashed.as_bytes().to_vec();
        self.put_user(user);
        self.commit_revision();
        Ok(())
    }

    /// Grants `role` to `user`; granting a held role changes nothing. The root role need not
    /// exist as a role to be granted (etcd's rule).
    pub fn user_grant_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        let mut u = self.users.get(user).ok_or(AuthError::UserNotFound)?.clone();
        if role != ROOT_ROLE && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let Err(at) = u.roles.binary_search_by(|r| r.as_str().cmp(role)) else {
            return Ok(());
        };
        u.roles.insert(at, role.to_owned());
        self.put_user(u);
        self.commit_revision();
        Ok(())
    }

    pub fn user_revoke_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let mut u = self.users.get(user).ok_or(AuthError::UserNotFound)?.clone();
        let before = u.roles.len();
        u.roles.retain(|r| r != role);
        if u.roles.len() == before {
            return Err(AuthError::RoleNotGranted);
        }
        self.put_user(u);
        self.commit_revision();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.put_role(Role {
            name: name.as_bytes().to_vec(),
            key_permission: Vec::new(),
        });
        self.commit_revision();
        Ok(())
    }

    /// Deletes a role and takes it from every user holding it.
    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        if self.roles.remove(name).is_none() {
            return Err(AuthError::RoleNotFound);
        }
        self.dirty.insert(role_key(name), None);
        let holders: Vec<User> = self
            .users
            .values()
            .filter(|u| u.roles.iter().any(|r| r == name))
            .cloned()
            .collect();
        for mut user in holders {
            user.roles.retain(|r| r != name);
            self.put_user(user);
        }
        self.commit_revision();
        Ok(())
    }

    /// Adds `perm` to `role`, or changes the type of the permission on the same range.
    pub fn role_grant_permission(&mut self, role: &str, perm: Permission) -> Result<(), AuthError> {
        let mut r = self.roles.get(role).ok_or(AuthError::RoleNotFound)?.clone();
        if let Some(same) = r
            .key_permission
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            same.perm_type = perm.perm_type;
        } else {
            let at = r.key_permission.partition_point(|p| p.key <= perm.key);
            r.key_permission.insert(at, perm);
        }
        self.put_role(r);
        self.commit_revision();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let mut r = self.roles.get(role).ok_or(AuthError::RoleNotFound)?.clone();
        let before = r.key_permission.len();
        r.key_permission
            .retain(|p| !(p.key == key && p.range_end == range_end));
        if r.key_permission.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.put_role(r);
        self.commit_revision();
        Ok(())
    }

    /// The rows changed since the last call, to be written in the entry's commit.
    pub fn take_rows(&mut self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        std::mem::take(&mut self.dirty)
    }

    /// Loads the state from the rows of table `0x06`.
    fn load(rows: impl Iterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<AuthState, AuthStoreError> {
        let mut state = AuthState {
            revision: 1,
            ..AuthState::default()
        };
        for (key, value) in rows {
            let corrupt = || AuthStoreError::Corrupt { key: key.clone() };
            match (key.get(1), key.get(2..)) {
                (Some(&SUB_META), Some(META_ENABLED)) => {
                    state.enabled = match value.as_slice() {
                        [0] => false,
                        [1] => true,
                        _ => return Err(corrupt()),
                    }
                }
                (Some(&SUB_META), Some(META_REVISION)) => {
                    state.revision =
                        u64::from_be_bytes(value.as_slice().try_into().map_err(|_| corrupt())?);
                }
                (Some(&SUB_USER), Some(name)) => {
                    let user = User::decode(value.as_slice()).map_err(|_| corrupt())?;
                    if user.name != name {
                        return Err(corrupt());
                    }
                    let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt())?;
                    state.users.insert(name, user);
                }
                (Some(&SUB_ROLE), Some(name)) => {
                    let role = Role::decode(value.as_slice()).map_err(|_| corrupt())?;
                    if role.name != name {
                        return Err(corrupt());
                    }
                    let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt())?;
                    state.roles.insert(name, role);
                }
                _ => return Err(corrupt()),
            }
        }
        Ok(state)
    }
}

/// Rows of table `0x06`, or entries of a bucket: (key, value) in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// etcd's backend buckets of the auth state (a snapshot image's `auth`, `authUsers` and
/// `authRoles`), each sorted by key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AuthBuckets {
    /// `authEnabled` -> 0x00 | 0x01 (once auth was enabled or disabled); `authRevision` ->
    /// u64 BE (always: etcd writes revision 1 when it creates the store).
    pub auth: Rows,
    /// User name -> authpb.User.
    pub users: Rows,
    /// Role name -> authpb.Role.
    pub roles: Rows,
}

const BUCKET_ENABLED_KEY: &[u8] = b"authEnabled";
const BUCKET_REVISION_KEY: &[u8] = b"authRevision";

impl AuthBuckets {
    /// The buckets of table `0x06`'s `rows` (in key order, as the page store lists them).
    pub fn from_rows(rows: Rows) -> Result<AuthBuckets, AuthStoreError> {
        // Decoding first checks every row.
        AuthState::load(rows.iter().cloned())?;
        let mut out = AuthBuckets::default();
        let mut revision = None;
        for (key, value) in rows {
            match (key[1], &key[2..]) {
                (SUB_META, META_ENABLED) => out.auth.push((BUCKET_ENABLED_KEY.to_vec(), value)),
                (SUB_META, _) => revision = Some(value),
                (SUB_USER, name) => out.users.push((name.to_vec(), value)),
                (_, name) => out.roles.push((name.to_vec(), value)),
            }
        }
        let revision = revision.unwrap_or_else(|| 1u64.to_be_bytes().to_vec());
        out.auth.push((BUCKET_REVISION_KEY.to_vec(), revision));
        Ok(out)
    }

    /// The table `0x06` rows of these buckets (from any etcd snapshot); every entry is checked.
    pub fn into_rows(self) -> Result<Rows, AuthStoreError> {
        let mut rows = Vec::new();
        for (key, value) in self.auth {
            match key.as_slice() {
                BUCKET_ENABLED_KEY => rows.push((meta_key(META_ENABLED), value)),
                BUCKET_REVISION_KEY => rows.push((meta_key(META_REVISION), value)),
                // Keys of later etcd versions (none in 3.4) carry nothing ringkv keeps.
                _ => {}
            }
        }
        for (name, value) in self.users {
            rows.push(([&[TABLE_AUTH, SUB_USER][..], &name].concat(), value));
        }
        for (name, value) in self.roles {
            rows.push(([&[TABLE_AUTH, SUB_ROLE][..], &name].concat(), value));
        }
        AuthState::load(rows.iter().cloned())?;
        Ok(rows)
    }
}

/// The auth state shared by the applier (which changes it) and the API (which reads it), and
/// this member's tokens.
#[derive(Debug)]
pub struct AuthStore {
    state: RwLock<AuthState>,
    tokens: Mutex<SimpleTokens>,
    config: AuthConfig,
}

impl AuthStore {
    /// An empty store (auth disabled, revision 1).
    pub fn new(config: AuthConfig) -> AuthStore {
        AuthStore::with_state(
            AuthState {
                revision: 1,
                ..AuthState::default()
            },
            config,
        )
    }

    fn with_state(state: AuthState, config: AuthConfig) -> AuthStore {
        AuthStore {
            state: RwLock::new(state),
            tokens: Mutex::new(SimpleTokens::new(config.token_ttl)),
            config,
        }
    }

    /// Loads the auth state `mvcc`'s page store holds.
    pub fn open(mvcc: &Mvcc, config: AuthConfig) -> Result<AuthStore, AuthStoreError> {
        let snap = mvcc.page_store().snapshot();
        let mut rows = Vec::new();
        for row in snap.range(&[TABLE_AUTH], Some(&[TABLE_AUTH + 1])) {
            rows.push(row.map_err(MvccError::from)?);
        }
        Ok(AuthStore::with_state(
            AuthState::load(rows.into_iter())?,
            config,
        ))
    }

    /// Replaces the state with the one `mvcc`'s page store now holds (after a raft snapshot
    /// was installed). Tokens stay; each names the auth revision it was issued at.
    pub fn reload(&self, mvcc: &Mvcc) -> Result<(), AuthStoreError> {
        let fresh = AuthStore::open(mvcc, self.config)?;
        *self.state.write() = fresh.state.into_inner();
        Ok(())
    }

    pub fn config(&self) -> AuthConfig {
        self.config
    }

    /// The state, for reading (permission checks, user and role lists).
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, AuthState> {
        self.state.read()
    }

    /// Changes the state with `change` and writes the rows it changed into `batch`. Only the
    /// applier calls this. A storage failure is returned (the caller treats it as fatal).
    pub fn apply<T>(
        &self,
        batch: &mut MvccBatch<'_>,
        change: impl FnOnce(&mut AuthState, &mut SimpleTokens) -> T,
    ) -> mvcc::Result<T> {
        let mut state = self.state.write();
        let mut tokens = self.tokens.lock();
        let result = change(&mut state, &mut tokens);
        for (key, value) in state.take_rows() {
            match value {
                Some(value) => batch.put_foreign(&key, &value)?,
                None => {
                    batch.delete_foreign(&key)?;
                }
            }
        }
        Ok(result)
    }

    /// The caller a token names, at the current auth revision (etcd's `AuthInfoFromCtx` for a
    /// simple token); an unknown or expired token is `InvalidAuthToken`.
    pub fn info_from_token(&self, token: &str) -> Result<AuthInfo, AuthError> {
        let state = self.state.read();
        let username = self
            .tokens
            .lock()
            .user(token, Instant::now())
            .ok_or(AuthError::InvalidAuthToken)?;
        Ok(AuthInfo {
            username,
            revision: state.revision,
        })
    }

    /// etcd's `CheckPassword`: returns the auth revision the password was checked at. Runs
    /// bcrypt (tens of milliseconds at cost 10): call it off the async threads.
    pub fn check_password(&self, name: &str, password: &str) -> Result<u64, AuthError> {
        let (hash, revision) = {
            let state = self.state.read();
            state.authenticate(name)?;
            let user = state.user(name).ok_or(AuthError::AuthFailed)?;
            (user.password.clone(), state.revision)
        };
        let hash = String::from_utf8(hash).map_err(|_| AuthError::AuthFailed)?;
        match bcrypt::verify(password, &hash) {
            Ok(true) => Ok(revision),
            _ => Err(AuthError::AuthFailed),
        }
    }

    /// A bcrypt hash of `password` at this member's cost, in the `$2a$` form etcd writes.
    pub fn hash_password(&self, password: &str) -> Result<String, bcrypt::BcryptError> {
        Ok(bcrypt::hash_with_result(password, self.config.bcrypt_cost)?
            .format_for_version(bcrypt::Version::TwoA))
    }
}

#[cfg(test)]
mod tests;
