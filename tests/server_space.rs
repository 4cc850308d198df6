//! Space management through the real binary: auto-compaction in both of etcd's modes (checked
//! with etcdctl's compacted-revision error) and the NOSPACE alarm raised once under concurrent
//! writers.

mod server_support;

use std::time::Duration;

use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::PutRequest;
use server_support::{etcdctl, is_reference, ok, Server};
use tonic::transport::Channel;

const COMPACTED: &str = "Error: etcdserver: mvcc: required revision has been compacted";

/// Polls `etcdctl get k --rev=<rev>` (at most 150 times, 100 ms apart) until it fails as
/// compacted; returns whether it did.
fn wait_compacted(ep: &str, rev: i64) -> bool {
    for _ in 0..150 {
        let out = etcdctl(ep, &["get", "k", &format!("--rev={rev}")], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.lines().last() == Some(COMPACTED) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `--auto-compaction-retention` was parsed but nothing compacted: history grew forever.
/// etcd 3.4 in periodic mode samples the revision every retention/10 and, once a retention has
/// passed, compacts to the revision of one retention ago; a sub-second Go duration is accepted.
#[test]
fn periodic_auto_compaction_compacts_what_is_older_than_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1s",
        ],
    );
    let ep = server.endpoint();
    for i in 1..=5 {
        ok(&ep, &["put", "k", &format!("v{i}")]);
    }
    assert!(
        wait_compacted(&ep, 2),
        "revision 2 still readable after 15 s:\n{}",
        server.log()
    );
    // Compaction keeps the newest version of every key.
    assert_eq!(ok(&ep, &["get", "k", "--print-value-only"]), "v5\n");
    if !is_reference() {
        let log = server.log();
        assert!(
            log.contains("ringkv: info: compactor: Starting auto-compaction at revision ")
                && log.contains(" (retention: 1s)")
                && log.contains("ringkv: info: compactor: Finished auto-compaction at revision ")
                && log.contains("ringkv: info: mvcc: finished scheduled compaction at "),
            "{log}"
        );
    }
}

/// Revision mode compacts to `current - retention` every 5 minutes (etcd's `revInterval`); the
/// test shortens that with the binary's test-only hook, so it runs against ringkv only.
#[test]
fn revision_auto_compaction_keeps_the_last_retention_revisions() {
    if is_reference() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "3",
        ],
        &[("RINGKV_TEST_REVISION_COMPACTION_INTERVAL_MS", "100")],
    );
    let ep = server.endpoint();
    // Revisions 2..=11 hold v1..=v10.
    for i in 1..=10 {
        ok(&ep, &["put", "k", &format!("v{i}")]);
    }
    assert!(
        wait_compacted(&ep, 7),
        "revision 7 still readable:\n{}",
        server.log()
    );
    // 11 - 3 = 8 is the compacted revision: still readable, and nothing newer is compacted.
    assert_eq!(
        ok(&ep, &["get", "k", "--rev=8", "--print-value-only"]),
        "v7\n"
    );
    let log = server.log();
    assert!(
        log.contains(
            "ringkv: info: compactor: Starting auto-compaction at revision 8 (retention: 3 \
             revisions)"
        ) && log.contains("ringkv: info: compactor: Finished auto-compaction at revision 8"),
        "{log}"
    );
}

/// Every write refused while the NOSPACE alarm's proposal was in flight proposed the alarm
/// again (the stored alarm set shows it only once applied), so a 500-client load logged
/// "NOSPACE alarm raised" hundreds of times. One proposal at a time now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refused_writes_raise_nospace_once() {
    const WRITERS: usize = 32;
    if is_reference() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--quota-backend-bytes", "20000000"],
    );
    let channel = Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = KvClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            // Each writer stops at its first refusal; 40 x 256 KiB x 32 writers is far over
            // the 20 MB quota.
            for i in 0..40 {
                let put = PutRequest {
                    key: format!("w{w}/{i}").into_bytes(),
                    value: vec![b'v'; 256 << 10],
                    ..PutRequest::default()
                };
                if let Err(status) = client.put(put).await {
                    return Some(status.message().to_owned());
                }
            }
            None
        }));
    }
    let mut refused = 0;
    for task in tasks {
        if let Some(message) = task.await.unwrap() {
            assert_eq!(message, "etcdserver: mvcc: database space exceeded");
            refused += 1;
        }
    }
    assert_eq!(refused, WRITERS, "every writer reaches the quota");
    let log = server.log();
    assert_eq!(
        log.matches("database space exceeded: NOSPACE alarm raised")
            .count(),
        1,
        "{log}"
    );
    let alarms = ok(&server.endpoint(), &["alarm", "list"]);
    assert!(alarms.ends_with("alarm:NOSPACE \n"), "{alarms}");
}
