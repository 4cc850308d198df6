//! etcd's Maintenance service through the real `etcdctl` (3.4) against the real `ringkv`
//! binary: endpoint status / hashkv / health, move-leader, snapshot save + status + restore
//! (ringkv's tool and etcd's, both ways), defragment under a write load, and the NOSPACE alarm.
//! Expected outputs were taken from etcd 3.4 (`RINGKV_TEST_SERVER=/usr/bin/etcd` runs the same
//! scenarios against it). Endpoints are `host:port`: see README "known differences".

mod server_support;

use std::ffi::OsStr;
use std::process::Command;

use server_support::{etcdctl, fails, free_port, is_reference, json, ok, Server};

fn endpoint(server: &Server) -> String {
    format!("127.0.0.1:{}", server.client_port)
}

fn member_id(ep: &str) -> u64 {
    let status = json(ep, &["endpoint", "status"]);
    status[0]["Status"]["header"]["member_id"].as_u64().unwrap()
}

fn revision(ep: &str) -> i64 {
    let status = json(ep, &["endpoint", "status"]);
    status[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

fn ringkv_tool(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .output()
        .unwrap()
}

/// The history whose HashKV etcd 3.4 answers with 1967179850 (checked against etcd).
fn etcd_reference_history(ep: &str) {
    ok(ep, &["put", "foo", "bar"]);
    ok(ep, &["put", "foo", "baz"]);
    assert_eq!(ok(ep, &["del", "foo"]), "1\n");
    ok(ep, &["put", "a", "1"]);
}

#[test]
fn status_hashkv_health_and_move_leader_answer_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let ep = endpoint(&server);
    etcd_reference_history(&ep);

    let status = json(&ep, &["endpoint", "status"]);
    let s = &status[0]["Status"];
    let id = s["header"]["member_id"].as_u64().unwrap();
    assert_eq!(s["leader"].as_u64(), Some(id));
    assert_eq!(s["header"]["revision"].as_i64(), Some(5));
    assert!(s["dbSize"].as_i64().unwrap() >= s["dbSizeInUse"].as_i64().unwrap());
    assert!(s["dbSizeInUse"].as_i64().unwrap() > 0);
    assert!(s["raftIndex"].as_u64().unwrap() >= s["raftAppliedIndex"].as_u64().unwrap());
    assert!(s["raftAppliedIndex"].as_u64().unwrap() >= 4, "{s}");
    assert!(s.get("errors").is_none(), "no alarms, a leader: {s}");
    assert!(s["version"].as_str().unwrap().starts_with("3."));

    // Same history, same hash as etcd's.
    assert_eq!(
        ok(&ep, &["endpoint", "hashkv"]),
        format!("{ep}, 1967179850\n")
    );
    let hashkv = json(&ep, &["endpoint", "hashkv"]);
    assert_eq!(hashkv[0]["HashKV"]["hash"].as_u64(), Some(1_967_179_850));
    assert_eq!(hashkv[0]["HashKV"]["compact_revision"].as_i64(), Some(-1));
    // After a compaction etcd hashes only what it keeps below the compacted revision (the
    // tombstone at 4 and the versions it shadows are gone): etcd 3.4 answers 2007788419.
    ok(&ep, &["compaction", "4", "--physical"]);
    assert_eq!(
        ok(&ep, &["endpoint", "hashkv"]),
        format!("{ep}, 2007788419\n")
    );
    assert_eq!(
        fails(&ep, &["endpoint", "hashkv", "--rev=3"], None),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        fails(&ep, &["endpoint", "hashkv", "--rev=99"], None),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );

    // etcdctl 3.4 prints the health line on stderr.
    let health = etcdctl(&ep, &["endpoint", "health"], None);
    assert!(health.status.success());
    assert!(String::from_utf8_lossy(&health.stderr)
        .starts_with(&format!("{ep} is healthy: successfully committed proposal")));
    let health = json(&ep, &["endpoint", "health"]);
    assert_eq!(health[0]["health"], serde_json::json!(true));

    let hex = format!("{id:x}");
    assert_eq!(
        ok(&ep, &["move-leader", &hex]),
        format!("Leadership transferred from {hex} to {hex}\n")
    );
    assert_eq!(
        fails(&ep, &["move-leader", "1234"], None),
        "Error: etcdserver: bad leader transferee"
    );
}

#[test]
fn snapshot_save_status_and_restore_round_trip_with_etcd_tools() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let ep = endpoint(&server);
    for i in 0..120 {
        ok(&ep, &["put", &format!("key-{i:03}"), &format!("value-{i}")]);
    }
    // A value larger than a bbolt page, a delete, and a compaction in the history.
    let big = "x".repeat(10_000);
    ok(&ep, &["put", "big", &big]);
    ok(&ep, &["del", "key-000", "key-010"]);
    ok(&ep, &["compaction", "60", "--physical"]);
    ok(&ep, &["put", "key-001", "again"]);
    let rev = revision(&ep);

    let file = dir.path().join("snap.db");
    let file_s = file.to_str().unwrap();
    let saved = ok(&ep, &["snapshot", "save", file_s]);
    assert_eq!(saved, format!("Snapshot saved at {file_s}\n"));
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(size % 512, 32, "a sha256 trailer after whole pages");

    // etcdctl opens the file as bbolt (with its integrity check) and agrees with ringkv's tool.
    let status = json(&ep, &["snapshot", "status", file_s]);
    assert_eq!(status["revision"].as_i64(), Some(rev));
    assert_eq!(status["totalSize"].as_u64(), Some(size - 32));
    for format in ["simple", "table", "json"] {
        let theirs = ok(&ep, &["snapshot", "status", file_s, "-w", format]);
        let ours = ringkv_tool(&["snapshot", "status", file_s, "-w", format]);
        assert!(ours.status.success(), "{ours:?}");
        assert_eq!(
            String::from_utf8(ours.stdout).unwrap(),
            theirs,
            "-w {format}"
        );
    }

    let everything = |ep: &str| {
        let mut v = json(ep, &["get", "", "--prefix"]);
        v["header"] = serde_json::Value::Null;
        v
    };
    let at_61 = |ep: &str| {
        let mut v = json(ep, &["get", "key-0", "--prefix", "--rev=61"]);
        v["header"] = serde_json::Value::Null;
        v
    };
    let expected = (everything(&ep), at_61(&ep));
    // 120 keys and "big", less the 10 deleted, plus key-001 put again.
    assert_eq!(expected.0["count"].as_i64(), Some(112));

    // ringkv's restore, served by ringkv.
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let restored = dir.path().join("restored");
    let out = ringkv_tool(&[
        "snapshot",
        "restore",
        file_s,
        "--data-dir",
        restored.to_str().unwrap(),
        "--name",
        "default",
        "--initial-cluster",
        &format!("default={peer_url}"),
        "--initial-cluster-token",
        "etcd-cluster",
        "--initial-advertise-peer-urls",
        &peer_url,
    ]);
    assert!(out.status.success(), "{out:?}");
    let copy = Server::start_at(
        OsStr::new(env!("CARGO_BIN_EXE_ringkv")),
        &restored,
        free_port(),
        peer,
        &[],
    );
    let copy_ep = endpoint(&copy);
    assert_eq!(revision(&copy_ep), rev);
    assert_eq!((everything(&copy_ep), at_61(&copy_ep)), expected);
    assert_eq!(
        fails(&copy_ep, &["get", "a", "--rev=59"], None),
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        ok(&copy_ep, &["endpoint", "hashkv"]).split(", ").nth(1),
        ok(&ep, &["endpoint", "hashkv"]).split(", ").nth(1)
    );
    // Restoring into a data dir in use is refused, as etcd refuses it.
    let again = ringkv_tool(&[
        "snapshot",
        "restore",
        file_s,
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim(),
        format!(
            "Error: data-dir {:?} not empty or could not be read",
            restored.to_str().unwrap()
        )
    );

    // etcd's own restore of the same file, served by etcd 3.4: the strongest check that the
    // image is what etcd expects.
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd_dir = dir.path().join("etcd-restored");
    ok(
        &ep,
        &[
            "snapshot",
            "restore",
            file_s,
            "--data-dir",
            etcd_dir.to_str().unwrap(),
            "--name",
            "default",
            "--initial-cluster",
            &format!("default={peer_url}"),
            "--initial-advertise-peer-urls",
            &peer_url,
        ],
    );
    let etcd = Server::start_at(
        OsStr::new("/usr/bin/etcd"),
        &etcd_dir,
        free_port(),
        peer,
        &[],
    );
    let etcd_ep = endpoint(&etcd);
    assert_eq!(revision(&etcd_ep), rev);
    assert_eq!((everything(&etcd_ep), at_61(&etcd_ep)), expected);
}

#[test]
fn restore_of_an_etcd_snapshot_serves_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Server::start_at(
        OsStr::new("/usr/bin/etcd"),
        &dir.path().join("etcd"),
        free_port(),
        free_port(),
        &[],
    );
    let ep = endpoint(&etcd);
    etcd_reference_history(&ep);
    ok(&ep, &["put", "b", "2"]);
    let file = dir.path().join("etcd.db");
    let file_s = file.to_str().unwrap();
    ok(&ep, &["snapshot", "save", file_s]);
    let expected = ok(&ep, &["get", "", "--prefix", "-w", "json"]);
    for format in ["simple", "table", "json"] {
        let theirs = ok(&ep, &["snapshot", "status", file_s, "-w", format]);
        let ours = ringkv_tool(&["snapshot", "status", file_s, "-w", format]);
        assert_eq!(
            String::from_utf8(ours.stdout).unwrap(),
            theirs,
            "-w {format}"
        );
    }

    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let restored = dir.path().join("restored");
    let out = ringkv_tool(&[
        "snapshot",
        "restore",
        file_s,
        "--data-dir",
        restored.to_str().unwrap(),
        "--initial-cluster",
        &format!("default={peer_url}"),
        "--initial-advertise-peer-urls",
        &peer_url,
    ]);
    assert!(out.status.success(), "{out:?}");
    let copy = Server::start_at(
        OsStr::new(env!("CARGO_BIN_EXE_ringkv")),
        &restored,
        free_port(),
        peer,
        &[],
    );
    let copy_ep = endpoint(&copy);
    let strip = |text: &str| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["header"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        strip(&ok(&copy_ep, &["get", "", "--prefix", "-w", "json"])),
        strip(&expected)
    );
    assert_eq!(
        ok(&copy_ep, &["get", "foo", "--rev=3", "--print-value-only"]),
        "baz\n"
    );
    assert_eq!(
        ok(&copy_ep, &["endpoint", "hashkv"]).split(", ").nth(1),
        ok(&ep, &["endpoint", "hashkv"]).split(", ").nth(1)
    );

    // Garbage is refused with an error, not a crash.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not a database".repeat(1000)).unwrap();
    let out = ringkv_tool(&["snapshot", "status", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Error: invalid snapshot"));
}

/// Puts a value of `bytes` bytes (through stdin: too long for an argument).
fn put_big(ep: &str, key: &str, bytes: usize) -> std::process::Output {
    etcdctl(ep, &["put", key], Some(&"v".repeat(bytes)))
}

fn db_size_in_use(ep: &str) -> i64 {
    json(ep, &["endpoint", "status"])[0]["Status"]["dbSizeInUse"]
        .as_i64()
        .unwrap()
}

fn db_size(ep: &str) -> i64 {
    json(ep, &["endpoint", "status"])[0]["Status"]["dbSize"]
        .as_i64()
        .unwrap()
}

#[test]
fn defragment_runs_online_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let ep = endpoint(&server);
    // ~100 MiB of superseded versions, and in every segment a few leaves of small live keys
    // that nothing rewrites later (keys appended in order; ~1 KB values fill a leaf in a few
    // puts): segments end up mostly dead but not empty (an empty one is deleted without
    // cleaning), and more of them than the cleaner steps that end a compaction reclaim.
    let filler = "v".repeat(1000);
    for i in 0..100 {
        assert!(put_big(&ep, "big", 1 << 20).status.success());
        for j in 0..6 {
            ok(&ep, &["put", &format!("live-{i:03}-{j}"), &filler]);
        }
    }
    ok(
        &ep,
        &["compaction", &revision(&ep).to_string(), "--physical"],
    );
    let before = db_size(&ep);

    let writer = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            (0..20)
                .map(|i| etcdctl(&ep, &["put", &format!("w{i}"), "v"], None))
                .filter(|out| !out.status.success())
                .count()
        })
    };
    let defrag = ok(&ep, &["defrag"]);
    assert_eq!(
        defrag,
        format!("Finished defragmenting etcd member[{ep}]\n")
    );
    assert_eq!(
        writer.join().unwrap(),
        0,
        "every write during defrag succeeded"
    );
    for i in 0..20 {
        assert_eq!(
            ok(&ep, &["get", &format!("w{i}"), "--print-value-only"]),
            "v\n"
        );
    }
    let after = db_size(&ep);
    if !is_reference() {
        // The checkpointer also cleans in the background once the store is mostly garbage, so
        // defrag may find part of the work done: what it must leave is a store no bigger than
        // before, within twice its live bytes plus three segments of slack (the two open log
        // tails, leaves and branches, and the spare, all preallocated and counted in dbSize).
        let in_use = db_size_in_use(&ep);
        assert!(
            after <= before,
            "defrag grew the store: {before} -> {after}"
        );
        assert!(
            after <= 2 * in_use + 3 * 8 * 1024 * 1024 + 8192,
            "defrag left {after} bytes for {in_use} live"
        );
    }
    assert_eq!(
        ok(&ep, &["get", "big", "--print-value-only"]).len(),
        (1 << 20) + 1
    );
}

#[test]
fn nospace_alarm_refuses_writes_until_disarmed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--quota-backend-bytes", "20000000"]);
    let ep = endpoint(&server);
    let id = member_id(&ep);
    assert_eq!(ok(&ep, &["alarm", "list"]), "");

    let mut refused = None;
    for _ in 0..60 {
        let out = put_big(&ep, "k", 1 << 20);
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refused = refused.expect("the quota refuses a write within 60 MiB");
    assert!(
        refused
            .trim_end()
            .ends_with("Error: etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    let alarm = format!("memberID:{id} alarm:NOSPACE \n");
    assert_eq!(ok(&ep, &["alarm", "list"]), alarm);
    let health = http_get(server.client_port, "/health");
    assert!(health.contains(r#""health":"false""#), "{health}");
    if !is_reference() {
        // etcd 3.5's answer (3.4 gives no reason and knows no `exclude`).
        assert_eq!(
            health,
            "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n"
        );
        let excluded = http_get(server.client_port, "/health?exclude=NOSPACE");
        assert_eq!(excluded, r#"{"health":"true","reason":""}"#);
    }
    let status = json(&ep, &["endpoint", "status"]);
    assert_eq!(
        status[0]["Status"]["errors"],
        serde_json::json!([alarm.trim_end_matches('\n')])
    );
    assert_eq!(
        fails(&ep, &["put", "small", "1"], None),
        "Error: etcdserver: mvcc: database space exceeded"
    );

    // The alarm is replicated state: it survives a restart.
    let code = server.stop_with(libc::SIGTERM);
    if !is_reference() {
        // etcd re-raises SIGTERM, so it has no exit code.
        assert_eq!(code, Some(0));
    }
    server.restart();
    assert_eq!(ok(&ep, &["alarm", "list"]), alarm);

    // Reads, deletes and compaction still work; then defrag makes room and disarm clears it.
    assert_eq!(
        ok(&ep, &["get", "k", "--print-value-only"]).len(),
        (1 << 20) + 1
    );
    assert_eq!(ok(&ep, &["del", "k"]), "1\n");
    let rev = revision(&ep);
    assert_eq!(
        ok(&ep, &["compaction", &rev.to_string(), "--physical"]),
        format!("compacted revision {rev}\n")
    );
    ok(&ep, &["defrag"]);
    assert!(db_size(&ep) < 20_000_000);
    assert_eq!(
        fails(&ep, &["put", "small", "1"], None),
        "Error: etcdserver: mvcc: database space exceeded",
        "still refused until disarmed"
    );
    assert_eq!(ok(&ep, &["alarm", "disarm"]), alarm);
    assert_eq!(ok(&ep, &["alarm", "list"]), "");
    assert_eq!(ok(&ep, &["put", "small", "1"]), "OK\n");
    let health = http_get(server.client_port, "/health");
    assert!(health.contains(r#""health":"true""#), "{health}");
}

/// The body of an HTTP/1.0 GET on the client port.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").expect("an HTTP response");
    body.to_owned()
}
