//! Pins the wire encoding of a few etcd messages against bytes computed by hand from etcd's field
//! numbers, so a wrong field number or type in the `.proto` files fails here rather than as a
//! silently garbled request from `etcdctl`.

use prost::Message;
use ringkv_proto::etcdserverpb::{
    compare, range_request, Compare, LeaseGrantRequest, MemberAddRequest, PutRequest, RangeRequest,
    StatusResponse, WatchResponse,
};
use ringkv_proto::mvccpb::{event, Event, KeyValue};

/// Encoding must give exactly `wire`, and decoding `wire` must give the message back.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M, wire: &[u8]) {
    assert_eq!(message.encode_to_vec(), wire, "encoding of {message:?}");
    assert_eq!(&M::decode(wire).expect("decodes"), message);
}

#[test]
fn range_request_fields() {
    let request = RangeRequest {
        key: b"foo".to_vec(),
        range_end: b"fop".to_vec(),
        limit: 10,
        revision: 5,
        sort_order: range_request::SortOrder::Descend.into(),
        sort_target: range_request::SortTarget::Mod.into(),
        serializable: true,
        keys_only: true,
        count_only: false,
        min_mod_revision: 7,
        max_create_revision: 300,
        ..RangeRequest::default()
    };
    #[rustfmt::skip]
    let wire = [
        0x0a, 3, b'f', b'o', b'o', // 1: key
        0x12, 3, b'f', b'o', b'p', // 2: range_end
        0x18, 10,                  // 3: limit
        0x20, 5,                   // 4: revision
        0x28, 2,                   // 5: sort_order = DESCEND
        0x30, 3,                   // 6: sort_target = MOD
        0x38, 1,                   // 7: serializable
        0x40, 1,                   // 8: keys_only
        0x50, 7,                   // 10: min_mod_revision
        0x68, 0xac, 0x02,          // 13: max_create_revision = 300
    ];
    assert_wire(&request, &wire);
}

#[test]
fn put_request_fields() {
    let request = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 0x1234,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: true,
    };
    #[rustfmt::skip]
    let wire = [
        0x0a, 1, b'k',     // 1: key
        0x12, 1, b'v',     // 2: value
        0x18, 0xb4, 0x24,  // 3: lease = 0x1234
        0x20, 1,           // 4: prev_kv
        0x30, 1,           // 6: ignore_lease
    ];
    assert_wire(&request, &wire);
}

/// `range_end` sits at field 64, past the room etcd reserved for the target union.
#[test]
fn compare_oneof_and_far_field() {
    let compare = Compare {
        result: compare::CompareResult::NotEqual.into(),
        target: compare::CompareTarget::Mod.into(),
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(9)),
    };
    #[rustfmt::skip]
    let wire = [
        0x08, 3,               // 1: result = NOT_EQUAL
        0x10, 2,               // 2: target = MOD
        0x1a, 1, b'a',         // 3: key
        0x30, 9,               // 6: mod_revision (oneof target_union)
        0x82, 0x04, 1, b'b',   // 64: range_end
    ];
    assert_wire(&compare, &wire);
}

#[test]
fn lease_and_member_fields_with_etcd_capitalisation() {
    let grant = LeaseGrantRequest { ttl: 60, id: 0 };
    assert_wire(&grant, &[0x08, 60]);

    let add = MemberAddRequest {
        peer_ur_ls: vec!["http://a:2380".to_owned()],
        is_learner: true,
    };
    let mut wire = vec![0x0a, 13];
    wire.extend_from_slice(b"http://a:2380");
    wire.extend_from_slice(&[0x10, 1]);
    assert_wire(&add, &wire);
}

/// Watch events live at field 11, not 8: etcd left 8..10 unused.
#[test]
fn watch_response_events() {
    let response = WatchResponse {
        watch_id: 1,
        events: vec![Event {
            r#type: event::EventType::Delete.into(),
            kv: Some(KeyValue {
                key: b"x".to_vec(),
                mod_revision: 4,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }],
        ..WatchResponse::default()
    };
    #[rustfmt::skip]
    let wire = [
        0x10, 1,                // 2: watch_id
        0x5a, 9,                // 11: events[0]
          0x08, 1,              //   1: type = DELETE
          0x12, 5,              //   2: kv
            0x0a, 1, b'x',      //     1: key
            0x18, 4,            //     3: mod_revision
    ];
    assert_wire(&response, &wire);
}

#[test]
fn status_response_newer_fields() {
    let status = StatusResponse {
        db_size_in_use: 5,
        is_learner: true,
        db_size_quota: 8,
        ..StatusResponse::default()
    };
    assert_wire(&status, &[0x48, 5, 0x50, 1, 0x60, 8]);
}

/// The gRPC service names are what clients put in the request path; they must be etcd's.
#[test]
fn service_names_match_etcd() {
    use tonic::server::NamedService;

    type Kv = ringkv_proto::etcdserverpb::kv_server::KvServer<()>;
    assert_eq!(<Kv as NamedService>::NAME, "etcdserverpb.KV");
    assert_eq!(
        ringkv_proto::etcdserverpb::kv_server::SERVICE_NAME,
        "etcdserverpb.KV"
    );
    assert_eq!(
        ringkv_proto::etcdserverpb::watch_server::SERVICE_NAME,
        "etcdserverpb.Watch"
    );
    assert_eq!(
        ringkv_proto::etcdserverpb::lease_server::SERVICE_NAME,
        "etcdserverpb.Lease"
    );
    assert_eq!(
        ringkv_proto::etcdserverpb::cluster_server::SERVICE_NAME,
        "etcdserverpb.Cluster"
    );
    assert_eq!(
        ringkv_proto::etcdserverpb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(
        ringkv_proto::etcdserverpb::auth_server::SERVICE_NAME,
        "etcdserverpb.Auth"
    );
    assert_eq!(
        ringkv_proto::v3lockpb::lock_server::SERVICE_NAME,
        "v3lockpb.Lock"
    );
    assert_eq!(
        ringkv_proto::v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
}

/// Method paths as generated: a renamed RPC would break every stock client.
#[test]
fn method_paths_match_etcd() {
    let etcdserverpb = include_str!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    let v3lockpb = include_str!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    let v3electionpb = include_str!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    for path in [
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Lease/LeaseLeases",
        "/etcdserverpb.Cluster/MemberPromote",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Maintenance/Downgrade",
        "/etcdserverpb.Auth/UserChangePassword",
        "/etcdserverpb.Auth/RoleRevokePermission",
    ] {
        assert!(
            etcdserverpb.contains(&format!("\"{path}\"")),
            "{path} missing"
        );
    }
    assert!(v3lockpb.contains("\"/v3lockpb.Lock/Unlock\""));
    assert!(v3electionpb.contains("\"/v3electionpb.Election/Observe\""));
}
