//! The Cluster service through the real `etcdctl`, the HTTP endpoints on the client port
//! (`/health`, `/version`, `/metrics`) through a minimal HTTP/1.1 client on `std::net`, and the
//! `endpoint` commands with URL-shaped endpoints, which need h2 to accept grpc-go's `:authority`.
//! Expected outputs were checked against reference etcd (`RINGKV_TEST_SERVER=/usr/bin/etcd`;
//! where etcd 3.4 differs from the 3.5 that ringkv claims to be, or where etcd carries out a
//! change ringkv refuses, the test says so and checks only the common part there).

// Metric samples compared here are whole numbers, exactly representable: exact is intended.
#![allow(clippy::float_cmp)]

mod server_support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use server_support::{etcdctl, fails, is_reference, json, ok, Server};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    (dir, server)
}

/// This member's id as `member list` prints it, from the response header.
fn member_id_hex(e: &str) -> String {
    let list = json(e, &["member", "list"]);
    format!("{:x}", list["header"]["member_id"].as_u64().unwrap())
}

#[test]
fn member_list_prints_this_member_as_etcd_does() {
    let (_dir, s) = server();
    let e = &s.endpoint();
    let peer = s.peer_url();
    let list = json(e, &["member", "list"]);
    let header = &list["header"];
    let id = header["member_id"].as_u64().unwrap();
    assert!(header["cluster_id"].as_u64().unwrap() != 0);
    assert!(header["raft_term"].as_u64().unwrap() >= 1);
    // etcd leaves a member list's header revision out (0).
    assert!(header.get("revision").is_none(), "{list}");
    assert_eq!(
        list["members"],
        serde_json::json!([{
            "ID": id,
            "name": "default",
            "peerURLs": [peer],
            "clientURLs": [e],
        }])
    );

    let hex = format!("{id:x}");
    assert_eq!(
        ok(e, &["member", "list"]),
        format!("{hex}, started, default, {peer}, {e}, false\n")
    );
    let table = ok(e, &["member", "list", "-w", "table"]);
    // Loopback URLs on ephemeral ports are all 22 characters; an id with a leading zero nibble
    // prints shorter and narrows the ID column, which only the row check below then covers.
    assert_eq!((peer.len(), e.len()), (22, 22));
    if hex.len() == 16 {
        let rule = "+------------------+---------+---------+------------------------+\
                    ------------------------+------------+\n";
        assert_eq!(
            table,
            format!(
                "{rule}|        ID        | STATUS  |  NAME   |       PEER ADDRS       \
                 |      CLIENT ADDRS      | IS LEARNER |\n\
                 {rule}| {hex} | started | default | {peer} | {e} |      false |\n{rule}"
            )
        );
    }
    assert!(
        table.contains(&format!(
            " {hex} | started | default | {peer} | {e} |      false |"
        )),
        "{table}"
    );
    // A linearizable list goes through ReadIndex first (etcdctl 3.4 cannot ask for one; the
    // Rust client below can).
    let linearizable = member_list_grpc(s.client_port, true);
    assert_eq!(linearizable.members.len(), 1);
    assert_eq!(linearizable.members[0].id, id);
}

fn member_list_grpc(
    port: u16,
    linearizable: bool,
) -> ringkv_proto::etcdserverpb::MemberListResponse {
    use ringkv_proto::etcdserverpb::MemberListRequest;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = cluster_client(&format!("http://127.0.0.1:{port}")).await;
        client
            .member_list(MemberListRequest { linearizable })
            .await
            .unwrap()
            .into_inner()
    })
}

async fn cluster_client(
    endpoint: &str,
) -> ringkv_proto::etcdserverpb::cluster_client::ClusterClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ringkv_proto::etcdserverpb::cluster_client::ClusterClient::new(channel)
}

#[test]
fn membership_changes_answer_etcds_errors() {
    let (_dir, s) = server();
    let e = &s.endpoint();
    let peer = s.peer_url();
    let id = member_id_hex(e);
    let other = "http://127.0.0.1:1";
    for (args, error) in [
        (
            vec!["member", "remove", "1234"],
            "Error: etcdserver: member not found",
        ),
        (
            vec!["member", "remove", &id],
            "Error: etcdserver: re-configuration failed due to not enough started members",
        ),
        (
            vec!["member", "update", "1234", &format!("--peer-urls={other}")],
            "Error: etcdserver: member not found",
        ),
        (
            vec!["member", "promote", "1234"],
            "Error: etcdserver: member not found",
        ),
        (
            vec!["member", "promote", &id],
            "Error: etcdserver: can only promote a learner member",
        ),
        (
            vec!["member", "add", "x", &format!("--peer-urls={peer}")],
            "Error: etcdserver: Peer URLs already exists",
        ),
    ] {
        assert_eq!(fails(e, &args, None), error, "{args:?}");
    }
    // An update to the URLs the member has is a no-op change, and succeeds, as in etcd.
    let cluster = json(e, &["member", "list"])["header"]["cluster_id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        ok(
            e,
            &["member", "update", &id, &format!("--peer-urls={peer}")]
        ),
        // etcdctl prints both with %16x: space-padded when an id has leading zero nibbles.
        format!(
            "Member {id:>16} updated in cluster {:>16}\n",
            format!("{cluster:x}")
        )
    );
    if is_reference() {
        // etcd carries out the rest (and a 2-member cluster with one started member then loses
        // quorum); ringkv cannot without a peer transport.
        return;
    }
    for (args, error) in [
        (
            vec!["member", "add", "x", &format!("--peer-urls={other}")],
            "Error: rpc error: code = Unimplemented desc = etcdserver: member add is not supported yet: membership is fixed at bootstrap",
        ),
        (
            vec!["member", "add", "x", "--learner", &format!("--peer-urls={other}")],
            "Error: rpc error: code = Unimplemented desc = etcdserver: member add is not supported yet: membership is fixed at bootstrap",
        ),
        (
            vec!["member", "update", &id, &format!("--peer-urls={other}")],
            "Error: rpc error: code = Unimplemented desc = etcdserver: changing a member's peer URLs is not supported yet: membership is fixed at bootstrap",
        ),
    ] {
        assert_eq!(fails(e, &args, None), error, "{args:?}");
    }
    // Nothing changed.
    assert_eq!(
        ok(e, &["member", "list"]),
        format!("{id}, started, default, {peer}, {e}, false\n")
    );
}

#[test]
fn member_urls_that_do_not_parse_are_refused_by_the_server() {
    use ringkv_proto::etcdserverpb::{MemberAddRequest, MemberUpdateRequest};
    // etcdctl checks URLs itself before sending; a client that does not reaches the server's
    // `types.NewURLs` check (on add only in etcd, which checks no URLs on update; ringkv checks
    // both).
    let (_dir, s) = server();
    let id = u64::from_str_radix(&member_id_hex(&s.endpoint()), 16).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = cluster_client(&s.endpoint()).await;
        for url in ["foo", "http://no-port", "http://127.0.0.1:1/path"] {
            let status = client
                .member_add(MemberAddRequest {
                    peer_ur_ls: vec![url.to_owned()],
                    is_learner: false,
                })
                .await
                .unwrap_err();
            assert_eq!(
                (status.code(), status.message()),
                (
                    tonic::Code::InvalidArgument,
                    "etcdserver: given member URLs are invalid"
                ),
                "{url}"
            );
            if is_reference() {
                // etcd stores an update's URLs unchecked (and then lists "foo" as a peer URL).
                continue;
            }
            let status = client
                .member_update(MemberUpdateRequest {
                    id,
                    peer_ur_ls: vec![url.to_owned()],
                })
                .await
                .unwrap_err();
            // ringkv checks them as on add: a URL the transport cannot dial is refused.
            assert_eq!(
                (status.code(), status.message()),
                (
                    tonic::Code::InvalidArgument,
                    "etcdserver: given member URLs are invalid"
                ),
                "{url}"
            );
        }
    });
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Names lowercased.
    headers: BTreeMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request on a new connection (`Connection: close`, so the answer ends at EOF).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        write!(request, "{name}: {value}\r\n").unwrap();
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(body)
    } else {
        let length: usize = headers["content-length"].parse().unwrap();
        assert_eq!(body.len(), length, "{raw}");
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

#[test]
fn health_and_version_answer_as_etcd() {
    let (_dir, s) = server();
    let port = s.client_port;
    let health = http(port, "GET", "/health", &[]);
    assert_eq!(health.status, 200);
    if is_reference() {
        // etcd 3.4 has no "reason" yet.
        assert_eq!(health.body, r#"{"health":"true"}"#);
    } else {
        assert_eq!(health.body, r#"{"health":"true","reason":""}"#);
    }
    assert_eq!(
        http(port, "GET", "/health?serializable=true", &[]).status,
        200
    );
    let version = http(port, "GET", "/version", &[]);
    assert_eq!(version.status, 200);
    assert_eq!(version.headers["content-type"], "application/json");
    let versions: serde_json::Value = serde_json::from_str(&version.body).unwrap();
    if !is_reference() {
        assert_eq!(
            version.body,
            r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#
        );
    }
    // The version Maintenance.Status reports (etcdctl endpoint status) is the same.
    let status = json(&s.endpoint(), &["endpoint", "status"]);
    assert_eq!(status[0]["Status"]["version"], versions["etcdserver"]);

    for path in ["/health", "/version"] {
        let refused = http(port, "POST", path, &[]);
        assert_eq!(refused.status, 405, "{path}");
        assert_eq!(refused.headers["allow"], "GET");
        assert_eq!(refused.body, "Method Not Allowed\n");
    }
    let missing = http(port, "GET", "/no-such-page", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, "404 page not found\n");
    assert_eq!(missing.headers["content-type"], "text/plain; charset=utf-8");
}

#[test]
fn a_grpc_request_for_an_unknown_service_is_unimplemented() {
    if is_reference() {
        return; // etcd's cmux sends HTTP/1.1 to its HTTP mux whatever the content type.
    }
    let (_dir, s) = server();
    let answer = http(
        s.client_port,
        "POST",
        "/no.Such/Method",
        &[("content-type", "application/grpc")],
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["grpc-status"], "12", "{answer:?}");
}

/// Sample lines of a Prometheus text exposition: `name{labels}` → value.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let answer = http(port, "GET", "/metrics", &[]);
    assert_eq!(answer.status, 200);
    assert!(answer.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    answer
        .body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_have_etcds_names_and_move_with_writes() {
    let (_dir, s) = server();
    let port = s.client_port;
    let id = member_id_hex(&s.endpoint());
    let before = scrape(port);
    let get = |metrics: &BTreeMap<String, f64>, name: &str| -> f64 {
        *metrics
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing: {metrics:#?}"))
    };
    assert_eq!(get(&before, "etcd_server_has_leader"), 1.0);
    assert_eq!(get(&before, "etcd_server_is_leader"), 1.0);
    assert_eq!(get(&before, "etcd_server_is_learner"), 0.0);
    assert_eq!(get(&before, "etcd_server_leader_changes_seen_total"), 1.0);
    assert_eq!(get(&before, "etcd_server_proposals_pending"), 0.0);
    assert_eq!(get(&before, "etcd_server_proposals_failed_total"), 0.0);
    assert_eq!(get(&before, "etcd_debugging_mvcc_keys_total"), 0.0);
    assert_eq!(
        get(&before, "etcd_server_quota_backend_bytes"),
        2_147_483_648.0
    );
    assert_eq!(
        get(&before, &format!("etcd_server_id{{server_id=\"{id}\"}}")),
        1.0
    );
    if !is_reference() {
        assert_eq!(
            get(&before, "etcd_server_version{server_version=\"3.5.0\"}"),
            1.0
        );
        assert_eq!(
            get(&before, "etcd_cluster_version{cluster_version=\"3.5\"}"),
            1.0
        );
    }
    for name in [
        "etcd_mvcc_db_total_size_in_bytes",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(get(&before, name) > 0.0, "{name}");
    }
    // etcd's buckets, 1 ms to 8.192 s, cumulative up to +Inf = count.
    for histogram in [
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
    ] {
        let count = get(&before, &format!("{histogram}_count"));
        assert_eq!(
            get(&before, &format!("{histogram}_bucket{{le=\"+Inf\"}}")),
            count
        );
        let mut last = 0.0;
        for i in 0..14 {
            let bound = format!("{}", 0.001 * f64::from(1u32 << i));
            let bucket = get(&before, &format!("{histogram}_bucket{{le=\"{bound}\"}}"));
            assert!(last <= bucket && bucket <= count, "{histogram} {bound}");
            last = bucket;
        }
    }

    let e = &s.endpoint();
    for i in 0..5 {
        assert_eq!(ok(e, &["put", &format!("key{i}"), "value"]), "OK\n");
    }
    assert_eq!(
        fails(e, &["get", "key0", "--rev=100"], None),
        "Error: etcdserver: mvcc: required revision is a future revision"
    );
    let after = scrape(port);
    let grew = |name: &str| get(&after, name) - get(&before, name);
    assert!(grew("etcd_server_proposals_committed_total") >= 5.0);
    assert!(grew("etcd_server_proposals_applied_total") >= 5.0);
    assert!(grew("etcd_disk_wal_fsync_duration_seconds_count") >= 5.0);
    assert!(grew("etcd_disk_wal_fsync_duration_seconds_sum") > 0.0);
    // The backend commit is the page store's checkpoint, which runs behind the writes (every
    // 100 ms): wait for one, boundedly, rather than racing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let backend_commits = |metrics: &BTreeMap<String, f64>| {
        get(metrics, "etcd_disk_backend_commit_duration_seconds_count")
            - get(&before, "etcd_disk_backend_commit_duration_seconds_count")
    };
    let mut latest = scrape(port);
    while backend_commits(&latest) < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        latest = scrape(port);
    }
    assert!(backend_commits(&latest) >= 1.0, "no checkpoint within 20 s");
    assert!(grew("etcd_disk_wal_write_bytes_total") > 0.0);
    // Five PutRequests {key: "keyN", value: "value"} of 13 encoded bytes each and one
    // RangeRequest {key: "key0", revision: 100} of 8: etcd counts protobuf message bytes,
    // without gRPC's 5-byte prefixes.
    assert_eq!(grew("etcd_network_client_grpc_received_bytes_total"), 73.0);
    assert!(grew("etcd_network_client_grpc_sent_bytes_total") > 0.0);
    assert_eq!(get(&after, "etcd_debugging_mvcc_keys_total"), 5.0);
    // ringkv's empty store has no live page yet; five keys need one.
    assert!(get(&after, "etcd_mvcc_db_total_size_in_use_in_bytes") > 0.0);
    assert_eq!(get(&after, "etcd_debugging_mvcc_current_revision"), 6.0);
    assert_eq!(get(&after, "etcd_server_proposals_pending"), 0.0);
    // go-grpc-prometheus's per-method counters, as etcd exports them.
    let kv = |metric: &str, code: Option<&str>, method: &str| {
        let code = code.map_or(String::new(), |code| format!("grpc_code=\"{code}\","));
        format!(
            "{metric}{{{code}grpc_method=\"{method}\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}}"
        )
    };
    let grew_or_new = |name: &str| get(&after, name) - before.get(name).copied().unwrap_or(0.0);
    assert_eq!(
        grew_or_new(&kv("grpc_server_started_total", None, "Put")),
        5.0
    );
    assert_eq!(
        grew_or_new(&kv("grpc_server_handled_total", Some("OK"), "Put")),
        5.0
    );
    assert_eq!(
        grew_or_new(&kv(
            "grpc_server_handled_total",
            Some("OutOfRange"),
            "Range"
        )),
        1.0
    );
    assert_eq!(get(&after, "etcd_server_proposals_failed_total"), 0.0);
    if !is_reference() {
        // Each sequential put was its own WAL batch of at least one record.
        assert!(grew("ringkv_wal_batch_records_count") >= 5.0);
        assert!(grew("ringkv_wal_batch_records_sum") >= 5.0);
        assert!(after.contains_key("ringkv_page_store_cleaner_runs_total"));
    }
    // /health counts its answers.
    assert_eq!(http(port, "GET", "/health", &[]).status, 200);
    assert_eq!(
        get(&scrape(port), "etcd_server_health_success")
            - get(&after, "etcd_server_health_success"),
        1.0
    );
}

/// etcdctl dials a single `http://` endpoint as `passthrough:///http://host:port`, and grpc-go
/// then sends the whole URL as `:authority`; stock h2 reset those streams (PROTOCOL_ERROR), so
/// these commands failed against ringkv while they worked against etcd. See
/// `vendor/h2/RINGKV-PATCH.md`.
#[test]
fn endpoint_commands_accept_url_endpoints() {
    let (_dir, s) = server();
    let e = &s.endpoint();
    assert!(e.starts_with("http://"));
    let id = member_id_hex(e);
    let status = ok(e, &["endpoint", "status"]);
    assert!(
        status.starts_with(&format!("{e}, {id}, ")),
        "endpoint status: {status}"
    );
    // etcdctl prints endpoint health to stderr.
    let health = etcdctl(e, &["endpoint", "health"], None);
    let stderr = String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{e} is healthy: successfully committed proposal")),
        "{stderr}"
    );
    // HashKV reaches the server (implemented or not), instead of dying in HTTP/2.
    let hashkv = etcdctl(e, &["endpoint", "hashkv"], None);
    let stderr = String::from_utf8_lossy(&hashkv.stderr);
    assert!(
        hashkv.status.success() || stderr.contains("code = Unimplemented"),
        "{stderr}"
    );
}

/// Graceful shutdown waited for every client connection to finish, so one client that never
/// completes its request (here half an HTTP/1.1 request line; an HTTP/2 peer that ignores GOAWAY
/// does the same) kept the server from stopping on SIGTERM. The drain is bounded now.
#[test]
fn sigterm_stops_the_server_despite_a_half_sent_request() {
    if is_reference() {
        return; // etcd re-raises the signal: no exit code to compare.
    }
    let (_dir, mut s) = server();
    let mut stalled = TcpStream::connect(("127.0.0.1", s.client_port)).unwrap();
    stalled.write_all(b"GET /hea").unwrap();
    // Connections are accepted in order: once a later one is answered, the stalled one is
    // being served (and graceful shutdown waits for it).
    assert_eq!(http(s.client_port, "GET", "/version", &[]).status, 200);
    assert_eq!(s.stop_with(libc::SIGTERM), Some(0));
    assert!(
        s.log()
            .contains("client connections still open after 5s; closing them"),
        "{}",
        s.log()
    );
    drop(stalled);
}
