//! Leases on the real `ringkv` binary, driven by the real `etcdctl` (3.4) and a Rust gRPC client:
//! outputs and errors asserted exactly as reference etcd 3.4 prints them
//! (`RINGKV_TEST_SERVER=/usr/bin/etcd` runs the same tests against it). Waits for expiry are
//! polls with a deadline; no assertion depends on how fast the machine is, only TTL upper
//! bounds that a test would need minutes to break.

mod server_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::{
    request_op, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use server_support::{b64, fails, is_reference, json, ok, Server};
use tonic::transport::Channel;
use tonic::Code;

/// Longest wait for an expired lease's keys to go: TTL + election-timeout extension + checks,
/// with a wide margin for a loaded machine.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(60);

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    (dir, server)
}

/// `lease grant` -> the id in hex, checking the exact line.
fn grant(e: &str, ttl: &str, granted_secs: i64) -> String {
    let out = ok(e, &["lease", "grant", ttl]);
    let id = out
        .strip_prefix("lease ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected grant output {out:?}"))
        .to_owned();
    assert_eq!(id.len(), 16, "{out:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{out:?}");
    assert_eq!(
        out,
        format!("lease {id} granted with TTL({granted_secs}s)\n")
    );
    id
}

fn decimal(hex: &str) -> i64 {
    i64::from_str_radix(hex, 16).unwrap()
}

/// `lease timetolive [--keys]` -> the remaining seconds, checking everything else exactly.
fn remaining(e: &str, id: &str, granted_secs: i64, keys: Option<&str>) -> i64 {
    let mut args = vec!["lease", "timetolive", id];
    if keys.is_some() {
        args.push("--keys");
    }
    let out = ok(e, &args);
    let prefix = format!("lease {id} granted with TTL({granted_secs}s), remaining(");
    let rest = out
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{out:?} does not start with {prefix:?}"));
    let (secs, tail) = rest.split_once("s)").unwrap();
    match keys {
        // ringkv lists keys in order; etcd in its map's order.
        Some(keys) => {
            let listed = tail
                .strip_prefix(", attached keys([")
                .and_then(|t| t.strip_suffix("])\n"))
                .unwrap_or_else(|| panic!("{out:?}"));
            let mut listed: Vec<&str> = listed.split(' ').filter(|k| !k.is_empty()).collect();
            if is_reference() {
                listed.sort_unstable();
            }
            assert_eq!(listed.join(" "), keys, "{out:?}");
        }
        None => assert_eq!(tail, "\n", "{out:?}"),
    }
    secs.parse().unwrap()
}

fn revision(e: &str) -> i64 {
    json(e, &["get", "anything"])["header"]["revision"]
        .as_i64()
        .unwrap()
}

/// Polls `get key` until it is gone; panics after `EXPIRY_DEADLINE`.
fn wait_until_gone(e: &str, key: &str) {
    let deadline = Instant::now() + EXPIRY_DEADLINE;
    while !ok(e, &["get", key]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{key} still there after {EXPIRY_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn grant_attach_inspect_and_revoke() {
    let (_dir, s) = server();
    let e = &s.endpoint();
    let id = grant(e, "100", 100);
    assert_eq!(
        fails(e, &["lease", "grant", "9000000001"], None),
        "Error: failed to grant lease (etcdserver: too large lease TTL)"
    );
    let other = grant(e, "9000000000", 9_000_000_000);
    let lease = format!("--lease={id}");
    assert_eq!(ok(e, &["put", "b", "2", &lease]), "OK\n");
    assert_eq!(ok(e, &["put", "a", "1", &lease]), "OK\n");
    assert_eq!(ok(e, &["put", "c", "3"]), "OK\n");
    let kv = &json(e, &["get", "a"])["kvs"][0];
    assert_eq!(kv["lease"].as_i64(), Some(decimal(&id)));

    let left = remaining(e, &id, 100, None);
    assert!((1..=100).contains(&left), "{left}");
    let left = remaining(e, &id, 100, Some("a b"));
    assert!((1..=100).contains(&left), "{left}");
    let ttl = json(e, &["lease", "timetolive", &id, "--keys"]);
    assert_eq!(ttl["id"].as_i64(), Some(decimal(&id)));
    assert_eq!(ttl["granted-ttl"].as_i64(), Some(100));
    let mut keys: Vec<String> = ttl["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    if is_reference() {
        keys.sort_unstable();
    }
    assert_eq!(keys, [b64("a"), b64("b")]);

    let listed = ok(e, &["lease", "list"]);
    // Soonest expiry first.
    assert_eq!(listed, format!("found 2 leases\n{id}\n{other}\n"));

    assert_eq!(
        ok(e, &["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(100)\n")
    );

    // A txn put names a lease like a put does.
    let txn = format!("\nput t1 v --lease={id}\nput t2 v\n\n\n");
    assert_eq!(ok_stdin(e, &["txn"], &txn), "SUCCESS\n\nOK\n\nOK\n");
    assert_eq!(
        fails(e, &["txn"], Some("\nput t3 v --lease=1234\n\n\n")),
        "Error: etcdserver: requested lease not found"
    );
    remaining(e, &id, 100, Some("a b t1"));

    // Revoke: every attached key goes, in one revision.
    let before = revision(e);
    assert_eq!(
        ok(e, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(revision(e), before + 1);
    assert_eq!(ok(e, &["get", "", "--prefix"]), "c\n3\nt2\nv\n");
    assert_eq!(
        fails(e, &["lease", "revoke", &id], None),
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    );
    assert_eq!(
        ok(e, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        ok(e, &["lease", "list"]),
        format!("found 1 leases\n{other}\n")
    );
}

#[test]
fn unknown_leases_answer_like_etcd() {
    let (_dir, s) = server();
    let e = &s.endpoint();
    assert_eq!(
        fails(e, &["put", "k", "v", "--lease=1234"], None),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(
        ok(e, &["lease", "timetolive", "1234"]),
        "lease 0000000000001234 already expired\n"
    );
    let ttl = json(e, &["lease", "timetolive", "1234"]);
    assert_eq!(
        (ttl["ttl"].as_i64(), ttl["granted-ttl"].as_i64()),
        (Some(-1), Some(0))
    );
    assert_eq!(
        fails(e, &["lease", "keep-alive", "--once", "1234"], None),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(
        ok(e, &["lease", "keep-alive", "1234"]),
        "lease 0000000000001234 expired or revoked.\n"
    );
    assert_eq!(
        fails(e, &["lease", "revoke", "1234"], None),
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    );
    assert_eq!(ok(e, &["lease", "list"]), "found 0 leases\n");
}

fn ok_stdin(e: &str, args: &[&str], stdin: &str) -> String {
    let out = server_support::etcdctl(e, args, Some(stdin));
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `etcdctl lease keep-alive` in the background until it has printed `lines` renewals (or a
/// deadline passes), then killed.
fn keep_alive_lines(e: &str, id: &str, lines: usize) -> String {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={e}"))
        .args(["lease", "keep-alive", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 256];
        while text.lines().count() < lines {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    let deadline = Instant::now() + EXPIRY_DEADLINE;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap()
}

#[test]
fn keep_alive_renews_and_expiry_revokes() {
    let (_dir, s) = server();
    let e = &s.endpoint();

    // A renewal restarts the TTL: wait until some of it has passed, renew, look again.
    let long = grant(e, "30", 30);
    let deadline = Instant::now() + EXPIRY_DEADLINE;
    while remaining(e, &long, 30, None) > 27 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(e, &["lease", "keep-alive", "--once", &long]);
    assert!(remaining(e, &long, 30, None) >= 28);

    // etcd's minimum TTL (3/2 of the election timeout, rounded up to seconds) applies.
    let short = grant(e, "1", 2);
    let lease = format!("--lease={short}");
    assert_eq!(ok(e, &["put", "k1", "v", &lease]), "OK\n");
    assert_eq!(ok(e, &["put", "k2", "v", &lease]), "OK\n");
    assert_eq!(ok(e, &["put", "kept", "v"]), "OK\n");
    let line = format!("lease {short} keepalived with TTL(2)\n");
    assert_eq!(keep_alive_lines(e, &short, 3), line.repeat(3));

    // Left alone, it expires: the leader revokes it through raft, keys and all, in one
    // revision.
    let before = revision(e);
    wait_until_gone(e, "k1");
    assert_eq!(ok(e, &["get", "k", "--prefix"]), "kept\nv\n");
    assert_eq!(revision(e), before + 1);
    assert_eq!(
        ok(e, &["lease", "timetolive", &short]),
        format!("lease {short} already expired\n")
    );
    assert_eq!(
        ok(e, &["lease", "list"]),
        format!("found 1 leases\n{long}\n")
    );
}

#[test]
fn leases_survive_sigkill_and_restart() {
    let (_dir, mut s) = server();
    let e = &s.endpoint();
    let a = grant(e, "300", 300);
    let b = grant(e, "200", 200);
    let short = grant(e, "2", 2);
    for (key, id) in [("x", &a), ("y", &a), ("z", &b), ("s", &short)] {
        assert_eq!(ok(e, &["put", key, "v", &format!("--lease={id}")]), "OK\n");
    }
    s.kill();
    s.restart();
    let e = &s.endpoint();

    // Remaining TTLs are refreshed at the new leadership (TTL + election timeout, as etcd).
    let left = remaining(e, &a, 300, Some("x y"));
    assert!((1..=301).contains(&left), "{left}");
    remaining(e, &b, 200, Some("z"));
    assert_eq!(
        ok(e, &["lease", "keep-alive", "--once", &b]),
        format!("lease {b} keepalived with TTL(200)\n")
    );
    // The short lease still expires after the restart.
    wait_until_gone(e, "s");
    assert_eq!(
        ok(e, &["lease", "list"]),
        format!("found 2 leases\n{b}\n{a}\n")
    );

    assert_eq!(
        ok(e, &["lease", "revoke", &a]),
        format!("lease {a} revoked\n")
    );
    assert_eq!(ok(e, &["get", "", "--prefix", "--keys-only"]), "z\n\n");

    // And after a clean stop as well.
    let code = s.stop_with(libc::SIGTERM);
    // etcd re-raises the signal; ringkv exits 0.
    assert!(code == Some(0) || is_reference(), "{code:?}");
    s.restart();
    let e = &s.endpoint();
    remaining(e, &b, 200, Some("z"));
    assert_eq!(ok(e, &["lease", "list"]), format!("found 1 leases\n{b}\n"));
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// What etcdctl 3.4 cannot send: a chosen id, duplicate ids, TTLs at the edges, keep-alive
/// streams of several leases, and the lease fields of puts.
#[tokio::test]
async fn grpc_lease_requests() {
    let (_dir, s) = server();
    let channel = channel(&s).await;
    let mut leases = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel);

    let grant = |id: i64, ttl: i64| LeaseGrantRequest { ttl, id };
    let resp = leases
        .lease_grant(grant(77, 60))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.id, resp.ttl, resp.error.as_str()), (77, 60, ""));
    assert!(resp.header.unwrap().member_id != 0);
    let status = leases.lease_grant(grant(77, 10)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let status = leases
        .lease_grant(grant(78, 9_000_000_001))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    // Negative and zero TTLs get the minimum; id 0 gets a positive id chosen by the server.
    let resp = leases.lease_grant(grant(0, -5)).await.unwrap().into_inner();
    assert!(resp.id > 0 && resp.id != 77);
    assert_eq!(resp.ttl, 2);

    // Keep-alive: one response per request, in order; an unknown lease answers TTL 0.
    let requests = futures::stream::iter([77, 999, 77].map(|id| LeaseKeepAliveRequest { id }));
    let mut stream = leases
        .lease_keep_alive(requests)
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(resp) = stream.message().await.unwrap() {
        assert!(resp.header.unwrap().revision >= 1);
        answers.push((resp.id, resp.ttl));
    }
    assert_eq!(answers, [(77, 60), (999, 0), (77, 60)]);

    // Puts: a lease attaches, ignore_lease keeps it, an unknown lease is refused, in a txn too.
    let put = |key: &str, lease: i64| PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..PutRequest::default()
    };
    kv.put(put("p", 77)).await.unwrap();
    kv.put(PutRequest {
        ignore_lease: true,
        ..put("p", 0)
    })
    .await
    .unwrap();
    let got = kv
        .range(RangeRequest {
            key: b"p".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].lease, 77);
    let status = kv.put(put("q", 5)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("q", 5))),
        }],
        ..TxnRequest::default()
    };
    let status = kv.txn(txn).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest { id: 77, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ttl.id, ttl.granted_ttl, ttl.keys),
        (77, 60, vec![b"p".to_vec()])
    );
    assert!((1..=60).contains(&ttl.ttl));
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest { id: 5, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ttl.id, ttl.ttl, ttl.granted_ttl), (5, -1, 0));

    let listed = leases
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [77, resp.id]);

    let status = leases
        .lease_revoke(LeaseRevokeRequest { id: 0 })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let revoked = leases
        .lease_revoke(LeaseRevokeRequest { id: 77 })
        .await
        .unwrap()
        .into_inner();
    // The revoke deleted "p": its header has the revision of that delete.
    let got = kv
        .range(RangeRequest {
            key: b"p".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.count, 0);
    assert_eq!(
        revoked.header.unwrap().revision,
        got.header.unwrap().revision
    );
}
