//! A Rust gRPC client (tonic, on the proto crate) against the real `ringkv` binary: every etcd
//! error code and message, the RangeRequest fields etcdctl 3.4 cannot send, and nested txns.

mod server_support;

use ringkv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{
    range_request, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use server_support::Server;
use tonic::transport::Channel;
use tonic::Code;

async fn client(server: &Server) -> KvClient<Channel> {
    let channel = Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(channel).max_encoding_message_size(usize::MAX)
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..RangeRequest::default()
    }
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn op_put(key: &str, value: &str) -> RequestOp {
    op(request_op::Request::RequestPut(put(key, value)))
}

fn compare(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

const EMPTY: &str = "etcdserver: key is not provided";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("request should fail");
    assert_eq!((status.code(), status.message()), (code, message));
}

fn server(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), extra);
    (dir, server)
}

#[tokio::test]
async fn errors_have_etcds_codes_and_messages() {
    let (_dir, s) = server(&["--max-txn-ops", "3", "--max-request-bytes", "2048"]);
    let mut kv = client(&s).await;
    assert_status(kv.range(range("", "")).await, Code::InvalidArgument, EMPTY);
    assert_status(kv.put(put("", "v")).await, Code::InvalidArgument, EMPTY);
    assert_status(
        kv.delete_range(DeleteRangeRequest::default()).await,
        Code::InvalidArgument,
        EMPTY,
    );
    let empty_compare = TxnRequest {
        compare: vec![Compare::default()],
        ..TxnRequest::default()
    };
    assert_status(kv.txn(empty_compare).await, Code::InvalidArgument, EMPTY);
    assert_status(
        kv.put(PutRequest {
            ignore_value: true,
            ..put("k", "v")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        kv.put(PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put("k", "v")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_status(
        kv.put(PutRequest {
            lease: 5,
            ..put("k", "v")
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_status(
        kv.put(PutRequest {
            ignore_lease: true,
            ..put("absent", "v")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        kv.put(put("big", &"x".repeat(4096))).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let too_many = TxnRequest {
        success: vec![
            op_put("a", "1"),
            op_put("b", "1"),
            op_put("c", "1"),
            op_put("d", "1"),
        ],
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(too_many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let duplicate = TxnRequest {
        failure: vec![op_put("a", "1"), op_put("a", "2")],
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(duplicate).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let nested_duplicate = TxnRequest {
        success: vec![
            op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: "a".into(),
                    range_end: "c".into(),
                    prev_kv: false,
                },
            )),
            op(request_op::Request::RequestTxn(TxnRequest {
                success: vec![op_put("b", "1")],
                ..TxnRequest::default()
            })),
        ],
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(nested_duplicate).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let empty_op = TxnRequest {
        success: vec![RequestOp { request: None }],
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(empty_op).await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );

    kv.put(put("k", "1")).await.unwrap(); // 2
    kv.put(put("k", "2")).await.unwrap(); // 3
    kv.put(put("k", "3")).await.unwrap(); // 4
    kv.compact(CompactionRequest {
        revision: 3,
        physical: true,
    })
    .await
    .unwrap();
    let at = |revision| RangeRequest {
        revision,
        ..range("k", "")
    };
    assert_status(kv.range(at(2)).await, Code::OutOfRange, COMPACTED);
    assert_status(kv.range(at(5)).await, Code::OutOfRange, FUTURE);
    let compact = |revision| CompactionRequest {
        revision,
        physical: false,
    };
    assert_status(kv.compact(compact(3)).await, Code::OutOfRange, COMPACTED);
    assert_status(kv.compact(compact(9)).await, Code::OutOfRange, FUTURE);
    // The same checks inside a txn (read-only and read-write), before anything is written.
    for extra in [vec![], vec![op_put("z", "1")]] {
        let mut success = vec![op(request_op::Request::RequestRange(at(2)))];
        success.extend(extra.clone());
        let txn = TxnRequest {
            success,
            ..TxnRequest::default()
        };
        assert_status(kv.txn(txn).await, Code::OutOfRange, COMPACTED);
        let mut success = vec![op(request_op::Request::RequestRange(at(9)))];
        success.extend(extra);
        let txn = TxnRequest {
            success,
            ..TxnRequest::default()
        };
        assert_status(kv.txn(txn).await, Code::OutOfRange, FUTURE);
    }
    // etcd 3.5 refuses an unknown sort order; 3.4 ignored it.
    let bad_sort = RangeRequest {
        sort_order: 7,
        ..range("k", "")
    };
    let answer = kv.range(bad_sort).await;
    if !server_support::is_reference() {
        assert_status(
            answer,
            Code::InvalidArgument,
            "etcdserver: invalid sort option",
        );
    }
    // Still serving, nothing half-applied.
    let resp = kv.range(range("k", "")).await.unwrap().into_inner();
    assert_eq!(resp.kvs[0].value, b"3");
    assert_eq!(resp.header.unwrap().revision, 4);
}

#[tokio::test]
async fn range_fields() {
    let (_dir, s) = server(&[]);
    let mut kv = client(&s).await;
    kv.put(put("a", "3")).await.unwrap(); // 2
    kv.put(put("b", "1")).await.unwrap(); // 3
    kv.put(put("c", "2")).await.unwrap(); // 4
    kv.put(put("a", "4")).await.unwrap(); // 5
    let all = || range("a", "\0");

    let count = kv
        .range(RangeRequest {
            count_only: true,
            ..all()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((count.count, count.kvs.len(), count.more), (3, 0, false));

    let keys = kv
        .range(RangeRequest {
            keys_only: true,
            ..all()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(keys.kvs[0].mod_revision, 5);

    let by_value = kv
        .range(RangeRequest {
            sort_target: range_request::SortTarget::Value as i32,
            sort_order: range_request::SortOrder::Descend as i32,
            limit: 2,
            ..all()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = by_value.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [b"a".to_vec(), b"c".to_vec()]);
    assert!(by_value.more);
    assert_eq!(by_value.count, 3);

    let filtered = kv
        .range(RangeRequest {
            min_mod_revision: 3,
            max_mod_revision: 4,
            ..all()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = filtered.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(filtered.count, 3, "etcd counts before the revision filters");

    let created = kv
        .range(RangeRequest {
            max_create_revision: 2,
            ..all()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.kvs.len(), 1);
    assert_eq!(created.kvs[0].key, b"a");
    let created = kv
        .range(RangeRequest {
            min_create_revision: 3,
            ..all()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.kvs.len(), 2);

    let old = kv
        .range(RangeRequest {
            revision: 3,
            serializable: true,
            ..all()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.kvs.len(), 2);
    assert_eq!(old.kvs[0].value, b"3");
    assert_eq!(
        old.header.unwrap().revision,
        5,
        "header carries the current revision"
    );
}

#[tokio::test]
async fn txn_with_nested_txn() {
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{Create, Lease, Mod, Value, Version};

    let (_dir, s) = server(&[]);
    let mut kv = client(&s).await;
    kv.put(put("a", "1")).await.unwrap(); // 2
    kv.put(put("a2", "1")).await.unwrap(); // 3

    // Nested compares see the state before the outer txn writes: a = "1" although the outer
    // success branch has just put a = "2".
    let nested = TxnRequest {
        compare: vec![compare("a", Value, Equal, TargetUnion::Value("1".into()))],
        success: vec![
            op_put("n", "then"),
            op(request_op::Request::RequestRange(range("a", ""))),
        ],
        failure: vec![op_put("n", "else")],
    };
    let mut prefix = compare("a", Value, Equal, TargetUnion::Value("1".into()));
    prefix.range_end = "b".into();
    let outer = TxnRequest {
        compare: vec![
            prefix,
            compare("a", Version, Equal, TargetUnion::Version(1)),
            compare("a", Create, Equal, TargetUnion::CreateRevision(2)),
            compare("a", Mod, Less, TargetUnion::ModRevision(3)),
            compare("a", Lease, Equal, TargetUnion::Lease(0)),
            compare("zz", Version, Equal, TargetUnion::Version(0)),
            compare("a2", Value, NotEqual, TargetUnion::Value("2".into())),
            compare("a2", Mod, Greater, TargetUnion::ModRevision(2)),
        ],
        success: vec![
            op_put("a", "2"),
            op(request_op::Request::RequestTxn(nested)),
            op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: "a2".into(),
                    range_end: Vec::new(),
                    prev_kv: true,
                },
            )),
        ],
        failure: vec![],
    };
    let resp = kv.txn(outer).await.unwrap().into_inner();
    assert!(resp.succeeded);
    let header = resp.header.unwrap();
    assert_eq!(header.revision, 4);
    assert!(header.cluster_id != 0 && header.member_id != 0 && header.raft_term >= 1);
    let Some(response_op::Response::ResponsePut(put_resp)) = &resp.responses[0].response else {
        panic!("{:?}", resp.responses[0])
    };
    assert_eq!(put_resp.header.as_ref().unwrap().revision, 4);
    let Some(response_op::Response::ResponseTxn(inner)) = &resp.responses[1].response else {
        panic!("{:?}", resp.responses[1])
    };
    assert!(inner.succeeded);
    let Some(response_op::Response::ResponseRange(read)) = &inner.responses[1].response else {
        panic!("{:?}", inner.responses[1])
    };
    assert_eq!(
        read.kvs[0].value, b"2",
        "a range in a txn sees the txn's writes"
    );
    let Some(response_op::Response::ResponseDeleteRange(del)) = &resp.responses[2].response else {
        panic!("{:?}", resp.responses[2])
    };
    assert_eq!((del.deleted, del.prev_kvs.len()), (1, 1));

    let n = kv.range(range("n", "")).await.unwrap().into_inner();
    assert_eq!(n.kvs[0].value, b"then");
    assert_eq!(n.kvs[0].mod_revision, 4, "one revision for the whole txn");

    // A failing compare runs the failure branch; a read-only txn is answered without a write.
    let read_only = TxnRequest {
        compare: vec![compare(
            "a",
            Value,
            Equal,
            TargetUnion::Value("nope".into()),
        )],
        success: vec![],
        failure: vec![op(request_op::Request::RequestRange(RangeRequest {
            serializable: true,
            ..range("a", "b")
        }))],
    };
    let resp = kv.txn(read_only).await.unwrap().into_inner();
    assert!(!resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 4);
    let Some(response_op::Response::ResponseRange(read)) = &resp.responses[0].response else {
        panic!()
    };
    assert_eq!(read.kvs.len(), 1);
}

#[tokio::test]
async fn maintenance_status() {
    use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use ringkv_proto::etcdserverpb::StatusRequest;
    let (_dir, s) = server(&[]);
    let mut kv = client(&s).await;
    kv.put(put("a", "1")).await.unwrap();
    let channel = Channel::from_shared(s.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let header = status.header.unwrap();
    assert_eq!(header.revision, 2);
    assert_eq!(status.leader, header.member_id);
    assert!(status.raft_applied_index >= 1 && status.raft_index >= status.raft_applied_index);
    assert!(status.raft_term >= 1);
}
