//! The real `etcdctl` (3.4) against the real `ringkv` binary: outputs asserted exactly as
//! reference etcd 3.4 prints them (simple form), or field by field (`-w json`; header ids vary,
//! revisions do not).

mod server_support;

use server_support::{b64, etcdctl, fails, is_reference, json, ok, Server};

fn server(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), extra);
    (dir, server)
}

#[test]
fn put_get_and_ranges() {
    let (_dir, s) = server(&[]);
    let e = &s.endpoint();
    for (k, v) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("k1", "v1"),
        ("k2", "v2"),
        ("k3", "v3"),
    ] {
        assert_eq!(ok(e, &["put", k, v]), "OK\n");
    }
    assert_eq!(ok(e, &["put", "k2", "v2b"]), "OK\n"); // rev 8
    assert_eq!(ok(e, &["get", "a"]), "a\n1\n");
    assert_eq!(ok(e, &["get", "missing"]), "");
    assert_eq!(ok(e, &["get", "a", "c"]), "a\n1\nb\n2\n");
    assert_eq!(ok(e, &["get", "--from-key", "k2"]), "k2\nv2b\nk3\nv3\n");
    assert_eq!(
        ok(e, &["get", "--prefix", "k"]),
        "k1\nv1\nk2\nv2b\nk3\nv3\n"
    );
    assert_eq!(
        ok(e, &["get", "--prefix", "k", "--keys-only"]),
        "k1\n\nk2\n\nk3\n\n"
    );
    assert_eq!(
        ok(e, &["get", "--prefix", "k", "--print-value-only"]),
        "v1\nv2b\nv3\n"
    );
    assert_eq!(
        ok(
            e,
            &[
                "get",
                "--prefix",
                "k",
                "--limit",
                "2",
                "--sort-by=MODIFY",
                "--order=DESCEND"
            ]
        ),
        "k2\nv2b\nk3\nv3\n"
    );
    assert_eq!(
        ok(
            e,
            &["get", "--prefix", "", "--sort-by=VALUE", "--limit", "2"]
        ),
        "a\n1\nb\n2\n"
    );
    assert_eq!(
        ok(e, &["get", "--prefix", "k", "--order=DESCEND"]),
        "k3\nv3\nk2\nv2b\nk1\nv1\n"
    );
    assert_eq!(
        ok(e, &["get", "--prefix", "k", "--consistency=s"]),
        "k1\nv1\nk2\nv2b\nk3\nv3\n"
    );

    let one = json(e, &["get", "a"]);
    let header = &one["header"];
    assert_eq!(header["revision"], 8);
    assert!(header["cluster_id"].as_u64().unwrap() != 0);
    assert!(header["member_id"].as_u64().unwrap() != 0);
    assert!(header["raft_term"].as_u64().unwrap() >= 1);
    let kv = &one["kvs"][0];
    assert_eq!(kv["key"], b64("a"));
    assert_eq!(kv["value"], b64("1"));
    assert_eq!(
        (&kv["create_revision"], &kv["mod_revision"], &kv["version"]),
        (&2.into(), &2.into(), &1.into())
    );
    assert_eq!(one["count"], 1);

    let k2 = json(e, &["get", "k2"]);
    let kv = &k2["kvs"][0];
    assert_eq!(
        (&kv["create_revision"], &kv["mod_revision"], &kv["version"]),
        (&6.into(), &8.into(), &2.into())
    );

    let limited = json(e, &["get", "--prefix", "k", "--limit", "1"]);
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], 3);
    assert_eq!(limited["kvs"].as_array().unwrap().len(), 1);
    assert_eq!(limited["kvs"][0]["key"], b64("k1"));

    let keys_only = json(e, &["get", "--prefix", "k", "--keys-only"]);
    assert!(keys_only["kvs"][0].get("value").is_none(), "{keys_only}");

    let none = json(e, &["get", "missing"]);
    assert!(
        none.get("kvs").is_none() && none.get("count").is_none(),
        "{none}"
    );
    assert_eq!(none["header"]["revision"], 8);
}

#[test]
fn history_deletes_flags_and_compaction() {
    let (_dir, s) = server(&[]);
    let e = &s.endpoint();
    for v in ["1", "2", "3"] {
        ok(e, &["put", "h", v]); // revs 2, 3, 4
    }
    assert_eq!(ok(e, &["get", "h", "--rev=2"]), "h\n1\n");
    assert_eq!(ok(e, &["get", "h", "--rev=3"]), "h\n2\n");
    assert_eq!(ok(e, &["get", "h", "--rev=1"]), "");
    assert_eq!(ok(e, &["put", "h", "4", "--prev-kv"]), "OK\nh\n3\n"); // rev 5
    assert_eq!(ok(e, &["del", "h", "--prev-kv"]), "1\nh\n4\n"); // rev 6
    assert_eq!(ok(e, &["del", "h"]), "0\n");
    assert_eq!(
        fails(e, &["put", "h", "--ignore-value"], None),
        "Error: etcdserver: key not found"
    );
    ok(e, &["put", "h", "5"]); // rev 7
    assert_eq!(ok(e, &["put", "h", "--ignore-value"]), "OK\n"); // rev 8
    let h = json(e, &["get", "h"]);
    assert_eq!(h["kvs"][0]["value"], b64("5"));
    assert_eq!(h["kvs"][0]["version"], 2);
    assert_eq!(h["kvs"][0]["create_revision"], 7);
    assert_eq!(h["kvs"][0]["mod_revision"], 8);

    for k in ["p1", "p2", "p3"] {
        ok(e, &["put", k, "x"]); // revs 9, 10, 11
    }
    let del = json(e, &["del", "--prefix", "p", "--prev-kv"]);
    assert_eq!(del["deleted"], 3);
    assert_eq!(del["prev_kvs"].as_array().unwrap().len(), 3);
    assert_eq!(del["header"]["revision"], 12);
    let put = json(e, &["put", "h", "6", "--prev-kv"]);
    assert_eq!(put["prev_kv"]["value"], b64("5"));
    assert_eq!(put["header"]["revision"], 13);

    assert_eq!(ok(e, &["compaction", "4"]), "compacted revision 4\n");
    assert_eq!(ok(e, &["get", "h", "--rev=4"]), "h\n3\n");
    assert_eq!(
        fails(e, &["get", "h", "--rev=3"], None),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        fails(e, &["compaction", "4"], None),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        fails(e, &["get", "h", "--rev=99"], None),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(
        fails(e, &["compaction", "99"], None),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(
        ok(e, &["compaction", "--physical", "12"]),
        "compacted revision 12\n"
    );
    assert_eq!(ok(e, &["get", "h", "--rev=12"]), "h\n5\n");
    assert_eq!(ok(e, &["get", "h"]), "h\n6\n");
}

#[test]
fn interactive_txn() {
    let (_dir, s) = server(&["--max-txn-ops", "4"]);
    let e = &s.endpoint();
    ok(e, &["put", "a", "1"]); // 2
    ok(e, &["put", "b", "2"]); // 3
    ok(e, &["put", "c", "3"]); // 4

    let success = "value(\"b\") = \"2\"\n\nput b 22\nget b\ndel c\n\nput f 1\n\n";
    let out = etcdctl(e, &["txn"], Some(success));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "SUCCESS\n\nOK\n\nb\n22\n\n1\n"
    );
    assert_eq!(ok(e, &["get", "c"]), "");
    assert_eq!(ok(e, &["get", "f"]), "");

    let failure = "mod(\"b\") > \"100\"\nversion(\"a\") = \"1\"\n\nput b 23\n\nget b\nput g 1\n\n";
    let out = etcdctl(e, &["txn", "-w", "json"], Some(failure));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(resp.get("succeeded").is_none(), "{resp}");
    assert_eq!(resp["header"]["revision"], 6);
    let range = &resp["responses"][0]["Response"]["ResponseRange"];
    assert_eq!(range["header"]["revision"], 5);
    assert_eq!(range["kvs"][0]["value"], b64("22"));
    assert_eq!(range["kvs"][0]["mod_revision"], 5);
    assert_eq!(range["count"], 1);
    let put = &resp["responses"][1]["Response"]["ResponsePut"];
    assert_eq!(put["header"]["revision"], 6);
    assert_eq!(ok(e, &["get", "g"]), "g\n1\n");

    let compares = "version(\"b\") = \"2\"\ncreate(\"b\") > \"0\"\nmod(\"b\") < \"6\"\nvalue(\"a\") != \"x\"\n\nget b --prefix\n\n\n";
    let out = etcdctl(e, &["txn"], Some(compares));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "SUCCESS\n\nb\n22\n");

    assert_eq!(
        fails(e, &["txn"], Some("\nput x 1\nput x 2\n\n\n")),
        "Error: etcdserver: duplicate key given in txn request"
    );
    assert_eq!(
        fails(e, &["txn"], Some("\nput x 1\ndel a z\n\n\n")),
        "Error: etcdserver: duplicate key given in txn request"
    );
    assert_eq!(
        fails(
            e,
            &["txn"],
            Some("\nput v 1\nput w 2\nput x 3\nput y 4\nput z 5\n\n\n")
        ),
        "Error: etcdserver: too many operations in txn request"
    );
    assert_eq!(ok(e, &["get", "x"]), "");
}

#[test]
fn request_errors_match_etcd() {
    let (_dir, s) = server(&["--max-request-bytes", "4096"]);
    let e = &s.endpoint();
    assert_eq!(
        fails(e, &["get", ""], None),
        "Error: etcdserver: key is not provided"
    );
    assert_eq!(
        fails(e, &["put", "k", "v", "--lease=123"], None),
        "Error: etcdserver: requested lease not found"
    );
    let big = "x".repeat(5000);
    assert_eq!(
        fails(e, &["put", "big", &big], None),
        "Error: etcdserver: request is too large"
    );
    // Beyond the gRPC receive limit (max-request-bytes + 512 KiB) the transport refuses it.
    // (etcdctl reads a value missing from the command line from stdin.)
    let huge = "x".repeat(600 * 1024);
    let out = etcdctl(e, &["put", "huge"], Some(&huge));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "Error: rpc error: code = ResourceExhausted desc = grpc: received message larger than max ("
        ) && last.ends_with(" vs. 528384)"),
        "{stderr}"
    );
    // The server survives all of it.
    assert_eq!(ok(e, &["put", "k", "v"]), "OK\n");
    assert_eq!(ok(e, &["get", "k"]), "k\nv\n");
    // Without the scheme: etcdctl 3.4 dials `endpoint status` with the whole URL as the HTTP/2
    // :authority ("http://127.0.0.1:N"), which grpc-go tolerates and hyper's h2 refuses as
    // malformed (RST_STREAM PROTOCOL_ERROR).
    let bare = format!("127.0.0.1:{}", s.client_port);
    let status = ok(&bare, &["endpoint", "status"]);
    assert!(status.starts_with(&format!("{bare}, ")), "{status}");
    assert!(
        status.contains(", true, false, "),
        "leader, not learner: {status}"
    );
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_restart_recovers() {
    let (_dir, mut s) = server(&[]);
    let e = s.endpoint();
    ok(&e, &["put", "durable", "1"]);
    ok(&e, &["put", "durable", "2"]);
    // etcd re-raises the signal after cleaning up (no exit code); ringkv exits 0.
    let code = s.stop_with(libc::SIGTERM);
    assert!(is_reference() || code == Some(0), "{code:?}: {}", s.log());
    assert!(
        is_reference() || s.log().contains("received SIGTERM"),
        "{}",
        s.log()
    );
    s.restart();
    assert_eq!(ok(&e, &["get", "durable"]), "durable\n2\n");
    assert_eq!(ok(&e, &["get", "durable", "--rev=2"]), "durable\n1\n");
    ok(&e, &["put", "durable", "3"]);
    let before = json(&e, &["get", "durable"]);
    let code = s.stop_with(libc::SIGINT);
    assert!(is_reference() || code == Some(0), "{code:?}: {}", s.log());
    // The ids were fixed at bootstrap: a restart with another cluster token keeps them.
    s.restart_with(&["--initial-cluster-token", "another-token"]);
    let after = json(&e, &["get", "durable"]);
    assert_eq!(after["kvs"], before["kvs"]);
    assert_eq!(after["header"]["member_id"], before["header"]["member_id"]);
    assert_eq!(
        after["header"]["cluster_id"],
        before["header"]["cluster_id"]
    );
}
