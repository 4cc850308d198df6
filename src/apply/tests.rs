//! The applier on MVCC over an in-memory page store: etcd's answers for puts, deletes, txns
//! (compares, nested txns, check-before-write) and compaction, and replay idempotence.

use std::sync::Arc;

use prost::Message;
use ringkv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ringkv_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, TxnResponse,
};

use super::entry::{ApplyError, Outcome, OutcomeResult, Proposal, ProposalRequest};
use super::exec::{self, ReadAt};
use super::harness::Harness;
use super::Applier;
use crate::mvcc::Mvcc;
use crate::page_store::{PageStore, PageStoreConfig, SimDisk};

impl Harness {
    fn put(&mut self, key: &str, value: &str) -> i64 {
        let Ok(OutcomeResult::Put(resp)) = self.apply(ProposalRequest::Put(put_req(key, value)))
        else {
            panic!("put failed")
        };
        resp.header.unwrap().revision
    }

    fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, ApplyError> {
        self.apply(ProposalRequest::Txn(req)).map(|r| match r {
            OutcomeResult::Txn(t) => t,
            _ => panic!("not a txn response"),
        })
    }

    fn get(&self, key: &str) -> Option<(String, i64)> {
        let req = RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        };
        let resp = exec::range(&ReadAt::current(&self.mvcc), &req).unwrap();
        resp.kvs.first().map(|kv| {
            (
                String::from_utf8(kv.value.clone()).unwrap(),
                kv.mod_revision,
            )
        })
    }
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put_req(key, value))),
    }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        })),
    }
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

#[test]
fn put_flags_answer_like_etcd() {
    let mut h = Harness::new();
    assert_eq!(h.put("a", "1"), 2);
    let req = PutRequest {
        prev_kv: true,
        ..put_req("a", "2")
    };
    let Ok(OutcomeResult::Put(resp)) = h.apply(ProposalRequest::Put(req)) else {
        panic!()
    };
    let prev = resp.prev_kv.unwrap();
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision, prev.version),
        (&b"1"[..], 2, 1)
    );
    assert_eq!(resp.header.unwrap().revision, 3);

    let ignore = PutRequest {
        ignore_value: true,
        ..put_req("missing", "")
    };
    assert_eq!(
        h.apply(ProposalRequest::Put(ignore)),
        Err(ApplyError::KeyNotFound)
    );
    let ignore = PutRequest {
        ignore_value: true,
        ..put_req("a", "")
    };
    h.apply(ProposalRequest::Put(ignore)).unwrap();
    assert_eq!(h.get("a"), Some(("2".into(), 4)));
    let leased = PutRequest {
        lease: 7,
        ..put_req("b", "x")
    };
    assert_eq!(
        h.apply(ProposalRequest::Put(leased)),
        Err(ApplyError::LeaseNotFound)
    );
    assert_eq!(
        h.mvcc.current_revision(),
        4,
        "refused puts take no revision"
    );
}

#[test]
fn delete_range_returns_prev_kvs() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("b", "2");
    h.put("c", "3");
    let req = DeleteRangeRequest {
        key: "a".into(),
        range_end: "c".into(),
        prev_kv: true,
    };
    let Ok(OutcomeResult::DeleteRange(resp)) = h.apply(ProposalRequest::DeleteRange(req)) else {
        panic!()
    };
    assert_eq!(resp.deleted, 2);
    assert_eq!(resp.prev_kvs.len(), 2);
    assert_eq!(resp.header.unwrap().revision, 5);
    let none = DeleteRangeRequest {
        key: "zz".into(),
        ..DeleteRangeRequest::default()
    };
    let Ok(OutcomeResult::DeleteRange(resp)) = h.apply(ProposalRequest::DeleteRange(none)) else {
        panic!()
    };
    assert_eq!((resp.deleted, resp.header.unwrap().revision), (0, 5));
}

#[test]
fn txn_compares_every_target() {
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{Create, Lease, Mod, Value, Version};

    let mut h = Harness::new();
    h.put("k", "v"); // rev 2, version 1
    h.put("k", "w"); // rev 3, version 2
    let holds = |h: &mut Harness, c: Compare| {
        h.txn(TxnRequest {
            compare: vec![c],
            success: vec![],
            failure: vec![],
        })
        .unwrap()
        .succeeded
    };
    assert!(holds(
        &mut h,
        cmp("k", Value, Equal, TargetUnion::Value("w".into()))
    ));
    assert!(holds(
        &mut h,
        cmp("k", Value, Greater, TargetUnion::Value("v".into()))
    ));
    assert!(holds(
        &mut h,
        cmp("k", Version, Equal, TargetUnion::Version(2))
    ));
    assert!(holds(
        &mut h,
        cmp("k", Create, Equal, TargetUnion::CreateRevision(2))
    ));
    assert!(holds(
        &mut h,
        cmp("k", Mod, Less, TargetUnion::ModRevision(4))
    ));
    assert!(holds(&mut h, cmp("k", Lease, Equal, TargetUnion::Lease(0))));
    assert!(holds(
        &mut h,
        cmp("k", Version, NotEqual, TargetUnion::Version(1))
    ));
    // A missing key has version 0, and a value compare on it always fails.
    assert!(holds(
        &mut h,
        cmp("nope", Version, Equal, TargetUnion::Version(0))
    ));
    assert!(!holds(
        &mut h,
        cmp("nope", Value, NotEqual, TargetUnion::Value("x".into()))
    ));
    // range_end: the compare must hold for every key in the range.
    h.put("k2", "v");
    let mut ranged = cmp("k", Value, Equal, TargetUnion::Value("w".into()));
    ranged.range_end = "l".into();
    assert!(!holds(&mut h, ranged.clone()));
    ranged.target_union = Some(TargetUnion::Value("a".into()));
    ranged.result = Greater as i32;
    assert!(holds(&mut h, ranged));
}

#[test]
fn nested_txn_decides_on_the_state_before_any_write() {
    let mut h = Harness::new();
    h.put("a", "1"); // rev 2
    let nested = TxnRequest {
        // Sees a = "1" even though the outer success puts a = "2" first.
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("1".into()),
        )],
        success: vec![op_put("b", "then"), op_get("a")],
        failure: vec![op_put("b", "else")],
    };
    let outer = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(1),
        )],
        success: vec![
            op_put("a", "2"),
            RequestOp {
                request: Some(request_op::Request::RequestTxn(nested)),
            },
        ],
        failure: vec![],
    };
    let resp = h.txn(outer).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    let Some(response_op::Response::ResponseTxn(inner)) = &resp.responses[1].response else {
        panic!()
    };
    assert!(inner.succeeded);
    assert_eq!(inner.header.as_ref().map(|h| h.revision), Some(0));
    let Some(response_op::Response::ResponseRange(read)) = &inner.responses[1].response else {
        panic!()
    };
    // The range inside the txn sees the txn's own write.
    assert_eq!(read.kvs[0].value, b"2");
    assert_eq!(read.header.as_ref().unwrap().revision, 3);
    assert_eq!(h.get("b"), Some(("then".into(), 3)));
}

#[test]
fn refused_txn_writes_nothing() {
    let mut h = Harness::new();
    h.put("a", "1");
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("x", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put_req("missing", "")
                })),
            },
        ],
        failure: vec![],
    };
    assert_eq!(h.txn(req), Err(ApplyError::KeyNotFound));
    let future = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("x", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "a".into(),
                    revision: 99,
                    ..RangeRequest::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert_eq!(h.txn(future), Err(ApplyError::FutureRevision));
    assert_eq!(h.get("x"), None);
    assert_eq!(h.mvcc.current_revision(), 2);
}

#[test]
fn compaction_and_replay() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("a", "2");
    h.put("a", "3");
    let compact = |h: &mut Harness, revision| {
        h.apply(ProposalRequest::Compaction(CompactionRequest {
            revision,
            physical: false,
        }))
    };
    assert_eq!(compact(&mut h, 9), Err(ApplyError::FutureRevision));
    let Ok(OutcomeResult::Compaction(resp)) = compact(&mut h, 3) else {
        panic!()
    };
    assert_eq!(resp.header.unwrap().revision, 4);
    assert_eq!(compact(&mut h, 3), Err(ApplyError::Compacted));
    let old = RangeRequest {
        key: "a".into(),
        revision: 2,
        ..RangeRequest::default()
    };
    assert!(matches!(
        exec::range(&ReadAt::current(&h.mvcc), &old),
        Err(exec::ExecError::Refused(ApplyError::Compacted))
    ));
    super::finish_compaction(&h.mvcc).unwrap();

    // Replaying an applied entry changes nothing.
    let applied = h.applier.applied_index();
    let bytes = Proposal::new(ProposalRequest::Put(put_req("a", "again"))).encode_to_vec();
    let out = h.applier.apply_entry(applied, &bytes);
    assert_eq!(Outcome::decode(out.as_slice()).unwrap().result, None);
    assert_eq!(h.get("a"), Some(("3".into(), 4)));
    // Raft's empty entries are no-ops.
    let out = h.applier.apply_entry(applied + 1, &[]);
    assert_eq!(Outcome::decode(out.as_slice()).unwrap().result, None);
    assert_eq!(h.applier.applied_index(), applied + 1);
}

/// Several entries in one `apply_entries` call are one page-store commit but keep one revision
/// per entry. The txn here deletes `k` and then puts it with `ignore_value`: the check before
/// the write passes, the put finds no key and is refused after the delete was written, so the
/// delete must be rolled back out of the shared batch (no revision, `k` intact) while the
/// entries around it commit. A compaction in the middle ends the batch and sees the revisions
/// before it.
#[test]
fn entries_of_one_apply_share_a_commit_but_not_a_revision() {
    let mut h = Harness::new();
    h.put("k", "v");
    let refused = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: "k".into(),
                        ..DeleteRangeRequest::default()
                    },
                )),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put_req("k", "")
                })),
            },
        ],
        failure: vec![],
    };
    let requests = [
        ProposalRequest::Put(put_req("a", "1")),
        ProposalRequest::Txn(refused),
        ProposalRequest::Put(put_req("a", "2")),
        ProposalRequest::Compaction(CompactionRequest {
            revision: 4,
            physical: false,
        }),
        ProposalRequest::Put(put_req("b", "1")),
    ];
    let first = h.index + 1;
    let data: Vec<Vec<u8>> = requests
        .into_iter()
        .map(|r| Proposal::new(r).encode_to_vec())
        .collect();
    let entries = data
        .iter()
        .enumerate()
        .map(|(i, d)| (first + i as u64, d.as_slice()));
    let outcomes: Vec<_> = h
        .applier
        .apply_entries(entries)
        .iter()
        .map(|o| Outcome::decode(o.as_slice()).unwrap().result.unwrap())
        .collect();
    let revision = |o: &OutcomeResult| match o {
        OutcomeResult::Put(p) => p.header.as_ref().unwrap().revision,
        OutcomeResult::Compaction(c) => c.header.as_ref().unwrap().revision,
        other => panic!("unexpected outcome {other:?}"),
    };
    assert_eq!(revision(&outcomes[0]), 3);
    assert_eq!(
        outcomes[1],
        OutcomeResult::Error(ApplyError::KeyNotFound.code())
    );
    assert_eq!(revision(&outcomes[2]), 4);
    assert_eq!(revision(&outcomes[3]), 4);
    assert_eq!(revision(&outcomes[4]), 5);
    assert_eq!(h.get("k"), Some(("v".into(), 2)));
    assert_eq!(h.get("a"), Some(("2".into(), 4)));
    assert_eq!(h.mvcc.compacted_revision(), 4);
    let last = first + 4;
    assert_eq!(h.applier.applied_index(), last);
    assert_eq!(h.mvcc.page_store().consistent_index(), last);
    h.mvcc.check_integrity().unwrap();
}

/// Applying publishes without waiting for a page-store fdatasync: the applied index is visible
/// at once, the durable index (the only one the raft log may be compacted to) follows at the
/// next checkpoint, and a crash before it recovers the durable index, from which the same
/// entries re-apply to the same revisions.
#[test]
fn applied_is_visible_at_once_and_durable_at_the_checkpoint() {
    let disk = SimDisk::new();
    let config = PageStoreConfig {
        // Long enough that the background checkpointer does not run during the test.
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..PageStoreConfig::default()
    };
    let open = |disk: &SimDisk| {
        let store = PageStore::open_on(Arc::new(disk.clone()), config.clone()).unwrap();
        let mvcc = Mvcc::open(store).unwrap();
        (mvcc.clone(), Applier::new(mvcc))
    };
    let entry = |key: &str| Proposal::new(ProposalRequest::Put(put_req(key, "v"))).encode_to_vec();
    let (mvcc, mut applier) = open(&disk);
    applier.apply_entries([(1, entry("a").as_slice()), (2, entry("b").as_slice())]);
    mvcc.page_store().checkpoint().unwrap();
    assert_eq!(applier.durable_index(), 2);
    applier.apply_entries([(3, entry("c").as_slice()), (4, entry("d").as_slice())]);
    assert_eq!(applier.applied_index(), 4);
    assert_eq!(applier.durable_index(), 2, "no checkpoint ran");
    assert_eq!(mvcc.current_revision(), 5, "published entries are visible");

    // Power loss: only the checkpoint survives; the entries above it apply again.
    let image = disk.crash_image(1);
    drop(applier);
    let (mvcc, mut applier) = open(&image);
    assert_eq!(applier.applied_index(), 2);
    assert_eq!(mvcc.current_revision(), 3);
    applier.apply_entries([(3, entry("c").as_slice()), (4, entry("d").as_slice())]);
    assert_eq!(mvcc.current_revision(), 5);
    drop(applier);
    assert_eq!(
        mvcc.page_store().durable_consistent_index(),
        4,
        "dropping the applier checkpoints"
    );
}
