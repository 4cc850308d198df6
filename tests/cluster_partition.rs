//! Partitions of a three-member cluster, made with SIGSTOP (a stopped member keeps its sockets
//! but answers nothing, as a partitioned one looks to its peers and clients): a stopped
//! follower does not stop the majority, which acknowledges every write of a bounded load, and
//! catches up once continued (HashKV equal at the same revision); a leader cut off from both
//! followers stops taking writes and linearizable reads (etcdctl: "context deadline exceeded")
//! while serializable reads still answer, a write that no leader took before its client gave
//! up is never applied, and everything converges once the partition heals.
//! `RINGKV_TEST_SERVER=/usr/bin/etcd` runs the same tests on reference etcd.

mod cluster_support;
mod server_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_support::{kv_client, read_all, runtime, wait_no_leader, Cluster};
use ringkv_proto::etcdserverpb::PutRequest;
use server_support::{fails, ok};

/// Writes of the load, and how long one may take (far above an election and etcd's request
/// timeout, so only a refused write fails).
const LOAD_WRITES: usize = 300;
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Writes acknowledged before the follower is stopped, so that it stops under load.
const WRITES_BEFORE_PAUSE: usize = 50;

/// `LOAD_WRITES` puts of `load/<n>`, round robin over `endpoints`; after `WRITES_BEFORE_PAUSE`
/// of them, `pause` runs once. Every put must be acknowledged. Returns what was written.
fn load(endpoints: &[String], mut pause: impl FnMut()) -> BTreeMap<String, String> {
    runtime().block_on(async {
        let mut clients = Vec::new();
        for e in endpoints {
            clients.push(kv_client(e, WRITE_TIMEOUT).await);
        }
        let mut written = BTreeMap::new();
        for n in 0..LOAD_WRITES {
            if n == WRITES_BEFORE_PAUSE {
                pause();
            }
            let (key, value) = (format!("load/{n:05}"), format!("v{n}"));
            let i = n % clients.len();
            clients[i]
                .put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..PutRequest::default()
                })
                .await
                .unwrap_or_else(|status| panic!("put {key} on {}: {status}", endpoints[i]));
            written.insert(key, value);
        }
        written
    })
}

#[test]
fn a_stopped_follower_does_not_stop_the_majority_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let (stopped, live) = ((leader + 1) % 3, (leader + 2) % 3);
    let endpoints = [
        cluster.members[leader].endpoint(),
        cluster.members[live].endpoint(),
    ];
    let written = load(&endpoints, || cluster.members[stopped].pause());
    // The majority kept its leader: check-quorum saw a quorum all along.
    assert_eq!(cluster.wait_leader(Duration::from_secs(30)), leader);

    cluster.members[stopped].resume();
    cluster.wait_leader(Duration::from_secs(30));
    cluster.wait_hashkv_equal(Duration::from_secs(60));
    for m in &cluster.members {
        assert_eq!(read_all(&m.endpoint(), "load/"), written, "{}", m.name);
    }
}

#[test]
fn an_isolated_leader_refuses_writes_and_linearizable_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let isolated = cluster.members[leader].endpoint();
    assert_eq!(ok(&isolated, &["put", "k", "v0"]), "OK\n");
    // Every member has applied the put before the partition, so the serializable read below
    // sees it wherever it is served.
    cluster.wait_hashkv_equal(Duration::from_secs(60));

    let followers = [(leader + 1) % 3, (leader + 2) % 3];
    for &f in &followers {
        cluster.members[f].pause();
    }
    // Check-quorum: the leader steps down once it has not heard from a quorum.
    wait_no_leader(&cluster.members[leader], Duration::from_secs(30));
    let short = "--command-timeout=3s";
    assert_eq!(
        ok(&isolated, &[short, "get", "k", "--consistency=s"]),
        "k\nv0\n"
    );
    assert_eq!(
        fails(&isolated, &[short, "get", "k"], None),
        "Error: context deadline exceeded"
    );
    // Last, and healed at once: the server's own timeout (6 s) has not passed when a leader
    // is back, so only the client's having given up keeps this write out.
    assert_eq!(
        fails(&isolated, &[short, "put", "k", "lost"], None),
        "Error: context deadline exceeded"
    );

    for &f in &followers {
        cluster.members[f].resume();
    }
    cluster.wait_leader(Duration::from_secs(30));
    assert_eq!(ok(&isolated, &["put", "k2", "v"]), "OK\n");
    cluster.wait_hashkv_equal(Duration::from_secs(60));
    for m in &cluster.members {
        // The put whose client gave up while no leader could take it was never applied.
        assert_eq!(
            ok(&m.endpoint(), &["get", "k", "--print-value-only"]),
            "v0\n",
            "{}",
            m.name
        );
        assert_eq!(
            ok(&m.endpoint(), &["get", "k2", "--print-value-only"]),
            "v\n"
        );
    }
}
