//! The auth state machine on its own: etcd's rules for each change, the checks, and the rows
//! that make a reopened store identical.

use std::sync::Arc;

use ringkv_proto::authpb::{permission, Permission};
use ringkv_proto::etcdserverpb::{
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::*;
use crate::page_store::{PageStore, PageStoreConfig, SimDisk};

fn info(user: &str, state: &AuthState) -> AuthInfo {
    AuthInfo {
        username: user.to_owned(),
        revision: state.revision(),
    }
}

fn read_perm(key: &str, end: &str) -> Permission {
    Permission {
        perm_type: permission::Type::Read as i32,
        key: key.into(),
        range_end: end.into(),
    }
}

#[test]
fn enable_needs_a_root_user_with_the_root_role() {
    let mut s = AuthState::load(std::iter::empty()).unwrap();
    assert_eq!(s.revision(), 1);
    assert_eq!(s.enable(), Err(AuthError::RootUserNotExist));
    s.user_add("root", "h", false).unwrap();
    assert_eq!(s.enable(), Err(AuthError::RootRoleNotExist));
    // The root role need not exist as a role to be granted.
    s.user_grant_role("root", "root").unwrap();
    let before = s.revision();
    s.enable().unwrap();
    assert_eq!(
        s.revision(),
        before,
        "etcd does not bump the revision on enable"
    );
    s.enable().unwrap();
    assert_eq!(s.user_delete("root"), Err(AuthError::InvalidAuthMgmt));
    assert_eq!(
        s.user_revoke_role("root", "root"),
        Err(AuthError::InvalidAuthMgmt)
    );
    assert_eq!(s.role_delete("root"), Err(AuthError::InvalidAuthMgmt));
    assert!(s.disable());
    assert_eq!(s.revision(), before + 1);
    assert!(!s.disable());
}

#[test]
fn users_and_roles_follow_etcds_rules() {
    let mut s = AuthState::load(std::iter::empty()).unwrap();
    assert_eq!(s.user_add("", "h", false), Err(AuthError::UserEmpty));
    s.user_add("alice", "h", false).unwrap();
    assert_eq!(
        s.user_add("alice", "h", false),
        Err(AuthError::UserAlreadyExist)
    );
    assert_eq!(s.role_add(""), Err(AuthError::RoleEmpty));
    s.role_add("r1").unwrap();
    assert_eq!(s.role_add("r1"), Err(AuthError::RoleAlreadyExist));
    assert_eq!(
        s.user_grant_role("alice", "nope"),
        Err(AuthError::RoleNotFound)
    );
    assert_eq!(s.user_grant_role("bob", "r1"), Err(AuthError::UserNotFound));
    s.role_add("a0").unwrap();
    s.user_grant_role("alice", "r1").unwrap();
    s.user_grant_role("alice", "a0").unwrap();
    let rev = s.revision();
    s.user_grant_role("alice", "r1").unwrap();
    assert_eq!(s.revision(), rev, "granting a held role changes nothing");
    assert_eq!(s.user("alice").unwrap().roles, ["a0", "r1"], "kept sorted");
    assert_eq!(
        s.user_revoke_role("alice", "zz"),
        Err(AuthError::RoleNotGranted)
    );
    // Deleting a role takes it from its holders.
    s.role_delete("a0").unwrap();
    assert_eq!(s.user("alice").unwrap().roles, ["r1"]);
    assert_eq!(s.role_delete("a0"), Err(AuthError::RoleNotFound));

    assert_eq!(
        s.role_grant_permission("nope", read_perm("k", "")),
        Err(AuthError::RoleNotFound)
    );
    s.role_grant_permission("r1", read_perm("z", "")).unwrap();
    s.role_grant_permission("r1", read_perm("b", "d")).unwrap();
    let mut rw = read_perm("b", "d");
    rw.perm_type = permission::Type::Readwrite as i32;
    s.role_grant_permission("r1", rw).unwrap();
    let perms = &s.role("r1").unwrap().key_permission;
    assert_eq!(perms.len(), 2, "the same range is updated, not added");
    assert_eq!(perms[0].key, b"b", "sorted by key");
    assert_eq!(perms[0].perm_type, permission::Type::Readwrite as i32);
    assert_eq!(
        s.role_revoke_permission("r1", b"b", b"e"),
        Err(AuthError::PermissionNotGranted)
    );
    s.role_revoke_permission("r1", b"b", b"d").unwrap();
    assert_eq!(s.user_delete("bob"), Err(AuthError::UserNotFound));
}

#[test]
fn checks_follow_is_op_permitted() {
    let mut s = AuthState::load(std::iter::empty()).unwrap();
    s.user_add("root", "h", false).unwrap();
    s.user_grant_role("root", "root").unwrap();
    s.user_add("alice", "h", false).unwrap();
    s.role_add("r").unwrap();
    s.role_grant_permission("r", read_perm("a", "c")).unwrap();
    s.user_grant_role("alice", "r").unwrap();
    let alice = info("alice", &s);
    // Disabled: everything goes, even for nobody.
    assert_eq!(s.check_put(&AuthInfo::default(), b"x"), Ok(()));
    s.enable().unwrap();
    assert_eq!(
        s.check_range(&AuthInfo::default(), b"a", b""),
        Err(AuthError::UserEmpty)
    );
    assert_eq!(s.check_range(&alice, b"a", b"c"), Ok(()));
    assert_eq!(
        s.check_range(&alice, b"a", b"d"),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.check_put(&alice, b"a"), Err(AuthError::PermissionDenied));
    assert_eq!(s.check_admin(&alice), Err(AuthError::PermissionDenied));
    assert_eq!(s.check_admin(&info("root", &s)), Ok(()));
    assert_eq!(s.check_put(&info("root", &s), b"anything"), Ok(()));
    assert_eq!(
        s.check_admin(&info("ghost", &s)),
        Err(AuthError::UserNotFound)
    );
    assert_eq!(
        s.check_put(&info("ghost", &s), b"a"),
        Err(AuthError::PermissionDenied)
    );
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"b".to_vec(),
            ..Compare::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                ..RangeRequest::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"b".to_vec(),
                ..PutRequest::default()
            })),
        }],
    };
    // Both branches are checked, whichever would run.
    assert_eq!(s.check_txn(&alice, &txn), Err(AuthError::PermissionDenied));
    let mut read_only = txn.clone();
    read_only.failure.clear();
    assert_eq!(s.check_txn(&alice, &read_only), Ok(()));
    // A change moves the revision: a caller checked before it is stale, and the cache is
    // dropped so the new permission counts at once.
    s.role_grant_permission("r", read_perm("c", "d")).unwrap();
    assert_eq!(
        s.check_range(&alice, b"a", b"d"),
        Err(AuthError::AuthOldRevision)
    );
    assert_eq!(s.check_range(&info("alice", &s), b"a", b"d"), Ok(()));
}

#[test]
fn rows_reopen_to_the_same_state_and_tokens_do_not_survive() {
    let disk = Arc::new(SimDisk::new());
    let open = || {
        Mvcc::open(PageStore::open_on(disk.clone(), PageStoreConfig::default()).unwrap()).unwrap()
    };
    let mvcc = open();
    let store = AuthStore::new(AuthConfig::default());
    let mut batch = mvcc.batch();
    let token = store
        .apply(&mut batch, |s, tokens| {
            s.user_add("root", "$2a$04$hash", false).unwrap();
            s.user_grant_role("root", "root").unwrap();
            s.role_add("r").unwrap();
            s.role_add("gone").unwrap();
            s.role_grant_permission("r", read_perm("k", "\0")).unwrap();
            s.role_delete("gone").unwrap();
            s.enable().unwrap();
            tokens.assign("abc", 5, "root", Instant::now())
        })
        .unwrap();
    batch.finish(5).unwrap();
    assert_eq!(store.info_from_token(&token).unwrap().username, "root");
    let revision = store.read().revision();
    drop(mvcc);

    let reopened = AuthStore::open(&open(), AuthConfig::default()).unwrap();
    let (a, b) = (store.read(), reopened.read());
    assert!(b.is_enabled());
    assert_eq!(b.revision(), revision);
    assert_eq!(a.users().collect::<Vec<_>>(), b.users().collect::<Vec<_>>());
    assert_eq!(a.roles().collect::<Vec<_>>(), b.roles().collect::<Vec<_>>());
    assert!(b.role("gone").is_none());
    assert_eq!(
        reopened.info_from_token(&token),
        Err(AuthError::InvalidAuthToken)
    );
}

#[test]
fn passwords_are_bcrypt_and_checked_only_when_enabled() {
    let store = AuthStore::new(AuthConfig {
        bcrypt_cost: 4,
        ..AuthConfig::default()
    });
    let hash = store.hash_password("pw").unwrap();
    assert!(hash.starts_with("$2a$04$"), "{hash}");
    let disk = Arc::new(SimDisk::new());
    let mvcc = Mvcc::open(PageStore::open_on(disk, PageStoreConfig::default()).unwrap()).unwrap();
    let mut batch = mvcc.batch();
    store
        .apply(&mut batch, |s, _| {
            s.user_add("root", &hash, false).unwrap();
            s.user_add("nopw", "", true).unwrap();
            s.user_grant_role("root", "root").unwrap();
        })
        .unwrap();
    assert_eq!(
        store.check_password("root", "pw"),
        Err(AuthError::AuthNotEnabled)
    );
    store.apply(&mut batch, |s, _| s.enable().unwrap()).unwrap();
    batch.finish(1).unwrap();
    assert_eq!(
        store.check_password("root", "pw"),
        Ok(store.read().revision())
    );
    assert_eq!(
        store.check_password("root", "px"),
        Err(AuthError::AuthFailed)
    );
    assert_eq!(
        store.check_password("ghost", "pw"),
        Err(AuthError::AuthFailed)
    );
    assert_eq!(store.check_password("nopw", ""), Err(AuthError::AuthFailed));
}

#[test]
fn snapshot_buckets_round_trip_and_a_fresh_store_has_revision_one() {
    let fresh = AuthBuckets::from_rows(Vec::new()).unwrap();
    assert_eq!(
        fresh.auth,
        [(b"authRevision".to_vec(), 1u64.to_be_bytes().to_vec())]
    );
    let mut s = AuthState::load(std::iter::empty()).unwrap();
    s.user_add("root", "h", false).unwrap();
    s.user_grant_role("root", "root").unwrap();
    s.role_add("r").unwrap();
    s.enable().unwrap();
    let rows: Vec<_> = s
        .take_rows()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap()))
        .collect();
    let buckets = AuthBuckets::from_rows(rows.clone()).unwrap();
    assert_eq!(buckets.auth[0], (b"authEnabled".to_vec(), vec![1]));
    assert_eq!(buckets.users.len(), 1);
    assert_eq!(buckets.roles[0].0, b"r");
    assert_eq!(buckets.into_rows().unwrap(), rows);
    let bad = AuthBuckets {
        users: vec![(b"x".to_vec(), b"\xff".to_vec())],
        ..AuthBuckets::default()
    };
    assert!(bad.into_rows().is_err());
}
