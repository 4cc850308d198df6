//! Leadership in a three-member cluster (issue 5 phase 2): `etcdctl move-leader` hands the
//! leadership to a voter and refuses a non-member or a follower endpoint with etcd's errors;
//! a put made while a member knows no leader waits for one (as etcd's raft node holds
//! proposals) and succeeds once a leader is elected, or fails with etcd's "request timed out"
//! if none is. `RINGKV_TEST_SERVER=/usr/bin/etcd` runs the same tests on reference etcd.

mod cluster_support;
mod server_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a test's KV request may wait (a put waits out an election).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

use cluster_support::{kv_client, runtime, wait_no_leader, Cluster, Member};
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ringkv_proto::etcdserverpb::{MoveLeaderRequest, PutRequest, RangeRequest};
use server_support::{etcdctl, fails, ok};

fn all_endpoints(cluster: &Cluster) -> String {
    cluster
        .members
        .iter()
        .map(Member::endpoint)
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn move_leader_hands_the_leadership_to_a_voter() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let target = (leader + 1) % 3;
    let (leader_id, target_id) = (cluster.members[leader].id(), cluster.members[target].id());
    let all = all_endpoints(&cluster);

    // etcdctl finds the leader among its endpoints and asks it.
    assert_eq!(
        ok(&all, &["move-leader", &format!("{target_id:x}")]),
        format!("Leadership transferred from {leader_id:x} to {target_id:x}\n")
    );
    assert_eq!(cluster.wait_leader(Duration::from_secs(30)), target);
    // Writes go on under the new leader, through every member.
    for m in &cluster.members {
        assert_eq!(ok(&m.endpoint(), &["put", "moved", &m.name]), "OK\n");
    }

    // Back to the old leader, then to the leader itself (a no-op in etcd).
    assert_eq!(
        ok(&all, &["move-leader", &format!("{leader_id:x}")]),
        format!("Leadership transferred from {target_id:x} to {leader_id:x}\n")
    );
    assert_eq!(cluster.wait_leader(Duration::from_secs(30)), leader);
    assert_eq!(
        ok(&all, &["move-leader", &format!("{leader_id:x}")]),
        format!("Leadership transferred from {leader_id:x} to {leader_id:x}\n")
    );

    assert_eq!(
        fails(&all, &["move-leader", "abcdef"], None),
        "Error: etcdserver: bad leader transferee"
    );
    let follower = &cluster.members[target];
    assert_eq!(
        fails(
            &follower.endpoint(),
            &["move-leader", &format!("{leader_id:x}")],
            None
        ),
        format!(
            "Error: no leader endpoint given at [{}]",
            follower.endpoint()
        )
    );
    assert_eq!(
        fails(&all, &["move-leader", "not-hex"], None),
        "Error: strconv.ParseUint: parsing \"not-hex\": invalid syntax"
    );

    // A follower asked directly refuses with etcd's error.
    let status = runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(follower.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = MaintenanceClient::new(channel);
        client
            .move_leader(MoveLeaderRequest { target_id })
            .await
            .unwrap_err()
    });
    assert_eq!(status.message(), "etcdserver: not leader");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(cluster.wait_leader(Duration::from_secs(30)), leader);
}

#[test]
fn a_put_without_a_leader_waits_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let (survivor, other) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.members[leader].pause();
    cluster.members[other].pause();
    wait_no_leader(&cluster.members[survivor], Duration::from_secs(30));

    // No leader: the put waits (it would fail at once with "no leader" if it were not held)
    // and succeeds once `other` is back and the two elect a leader.
    let endpoint = cluster.members[survivor].endpoint();
    let put = std::thread::spawn(move || etcdctl(&endpoint, &["put", "held", "v1"], None));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!put.is_finished(), "the put did not wait for a leader");
    cluster.members[other].resume();
    let out = put.join().unwrap();
    assert!(
        out.status.success(),
        "put: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let endpoint = cluster.members[survivor].endpoint();
    assert_eq!(
        ok(&endpoint, &["get", "held", "--print-value-only"]),
        "v1\n"
    );

    // No leader for longer than the request timeout (5 s + 2 election timeouts): etcd's
    // `Propose` returns its context's error as is, which reaches the client as code Unknown.
    cluster.members[other].pause();
    wait_no_leader(&cluster.members[survivor], Duration::from_secs(30));
    assert_eq!(
        fails(&endpoint, &["put", "held", "v2"], None),
        "Error: rpc error: code = Unknown desc = context deadline exceeded"
    );

    cluster.members[other].resume();
    cluster.members[leader].resume();
    cluster.wait_leader(Duration::from_secs(30));
    cluster.wait_hashkv_equal(Duration::from_secs(60));
    for m in &cluster.members {
        // The timed-out put was never proposed: no leader took it.
        assert_eq!(
            ok(&m.endpoint(), &["get", "held", "--print-value-only"]),
            "v1\n"
        );
    }
}

/// The lease id etcdctl prints in `lease <id> granted with TTL(..)`.
fn granted_id(out: &str) -> String {
    out.split_whitespace().nth(1).expect("lease id").to_owned()
}

#[test]
fn lease_keep_alive_and_time_to_live_work_through_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = cluster.members[(leader + 1) % 3].endpoint();

    let granted = ok(&follower, &["lease", "grant", "4"]);
    let id = granted_id(&granted);
    assert_eq!(granted, format!("lease {id} granted with TTL(4s)\n"));
    assert_eq!(
        ok(&follower, &["put", "leased", "v", "--lease", &id]),
        "OK\n"
    );

    // Kept alive only through the follower for three TTLs: the leader's lessor must hear of
    // every renewal, or it revokes the lease and its key.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        assert_eq!(
            ok(&follower, &["lease", "keep-alive", "--once", &id]),
            format!("lease {id} keepalived with TTL(4)\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ttl = ok(&follower, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(4s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with(", attached keys([leased])\n"), "{ttl}");
    for m in &cluster.members {
        assert_eq!(
            ok(&m.endpoint(), &["get", "leased", "--print-value-only"]),
            "v\n"
        );
    }

    // Unknown leases, asked through the follower, answer as on the leader.
    assert_eq!(
        ok(&follower, &["lease", "timetolive", "123456"]),
        "lease 0000000000123456 already expired\n"
    );
    // TTL 0 from the leader; etcdctl's client turns it into this error.
    assert_eq!(
        fails(
            &follower,
            &["lease", "keep-alive", "--once", "123456"],
            None
        ),
        "Error: etcdserver: requested lease not found"
    );

    // Revoked: the follower's keep-alive learns it from the leader.
    assert_eq!(
        ok(&follower, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        ok(&follower, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
}

/// Puts of the load through the followers, and the acknowledged ones before the kill.
const LOAD_WRITES: usize = 200;
const ACKED_BEFORE_KILL: usize = 30;

/// The leader is SIGKILLed under a load of puts sent only to the followers. In phase 1 every
/// put made during the election failed at once with "no leader"; now they wait for the new
/// leader. The only failure allowed is etcd's "request timed out, possibly due to previous
/// leader failure" for a put the follower had already forwarded to the dead leader (lost with
/// it; etcd loses those too). Every
/// acknowledged put is on both followers.
#[test]
fn puts_through_followers_wait_out_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let followers: Vec<String> = [(leader + 1) % 3, (leader + 2) % 3]
        .iter()
        .map(|&i| cluster.members[i].endpoint())
        .collect();
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<usize>();
    let endpoints = followers.clone();
    let load = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut clients = Vec::new();
            for e in &endpoints {
                clients.push(kv_client(e, CLIENT_TIMEOUT).await);
            }
            let mut acked = BTreeMap::new();
            let mut errors = Vec::new();
            for n in 0..LOAD_WRITES {
                let (key, value) = (format!("load/{n:05}"), format!("v{n}"));
                let i = n % clients.len();
                let put = clients[i].put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..PutRequest::default()
                });
                match put.await {
                    Ok(_) => {
                        acked.insert(key, value);
                        let _ = acked_tx.send(acked.len());
                    }
                    Err(status) => errors.push(status.message().to_owned()),
                }
            }
            (acked, errors)
        })
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("load stalled")
        < ACKED_BEFORE_KILL
    {
        assert!(Instant::now() < deadline, "the load made no progress");
    }
    cluster.members[leader].kill();
    let (acked, errors) = load.join().unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e == "etcdserver: request timed out, possibly due to previous leader failure"),
        "{errors:?}\n{}",
        cluster.logs()
    );
    assert!(
        errors.len() <= 3,
        "more puts failed than were in flight at the kill: {errors:?}"
    );
    assert_eq!(acked.len() + errors.len(), LOAD_WRITES);
    runtime().block_on(async {
        for endpoint in &followers {
            let resp = kv_client(endpoint, CLIENT_TIMEOUT)
                .await
                .range(RangeRequest {
                    key: b"load/".to_vec(),
                    range_end: b"load0".to_vec(),
                    ..RangeRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            let held: BTreeMap<String, String> = resp
                .kvs
                .into_iter()
                .map(|kv| {
                    (
                        String::from_utf8(kv.key).unwrap(),
                        String::from_utf8(kv.value).unwrap(),
                    )
                })
                .collect();
            for (key, value) in &acked {
                assert_eq!(held.get(key), Some(value), "{endpoint} lost {key}");
            }
        }
    });
}
