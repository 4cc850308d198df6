//! Auth on the real `ringkv` binary, driven by the real `etcdctl` (3.4) and a Rust gRPC client:
//! users, roles, permissions, enabling, tokens, and what each user may do, with outputs and
//! errors asserted exactly as reference etcd 3.4 prints them (`RINGKV_TEST_SERVER=/usr/bin/etcd`
//! runs the same tests against it).

mod server_support;

use ringkv_proto::etcdserverpb::auth_client::AuthClient;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{
    AuthStatusRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use server_support::{etcdctl, is_reference, ok, Server};
use tonic::transport::Channel;
use tonic::Code;

fn with_token<T>(token: &str, req: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(req);
    request
        .metadata_mut()
        .insert("token", token.parse().unwrap());
    request
}

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    (dir, server)
}

type Step<'a> = (&'a [&'a str], Option<&'a str>, Result<&'a str, &'a str>);

/// Runs each etcdctl step: `Ok(stdout)` must succeed with exactly that output, `Err(line)`
/// must fail with exactly that last stderr line.
fn run(e: &str, steps: &[Step<'_>]) {
    for (i, (args, stdin, expected)) in steps.iter().enumerate() {
        let out = etcdctl(e, args, *stdin);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        match expected {
            Ok(text) => assert!(
                out.status.success() && stdout == *text,
                "step {i} {args:?}: expected {text:?}, got {stdout:?} / {stderr}"
            ),
            Err(line) => assert!(
                !out.status.success() && last == *line,
                "step {i} {args:?}: expected failure {line:?}, got {stdout:?} / {last:?}"
            ),
        }
    }
}

/// The whole life of auth through etcdctl: users and roles before enabling (enable refused
/// without root), permissions on a key, a prefix, a range and everything from a key, what a
/// user may and may not read and write, admin-only commands, revocations taking effect at
/// once, a password change invalidating the old password, and disabling.
#[test]
fn etcdctl_auth_lifecycle_matches_etcd() {
    let (_dir, s) = server();
    let e = &s.endpoint();
    let steps: &[Step<'_>] = &[
        (&["auth", "enable"], None, Err("Error: etcdserver: root user does not exist")),
        (&["user", "add", "root", "--interactive=false"], Some("rootpw\n"), Ok("User root created\n")),
        (&["user", "add", "alice", "--new-user-password=apw"], None, Ok("User alice created\n")),
        (&["user", "add", "alice", "--new-user-password=apw"], None, Err("Error: etcdserver: user name already exists")),
        (&["user", "add", "--interactive=false", ""], Some("x\n"), Err("Error: etcdserver: user name is empty")),
        (&["role", "add", "r1"], None, Ok("Role r1 created\n")),
        (&["role", "add", "r1"], None, Err("Error: etcdserver: role name already exists")),
        (&["role", "grant-permission", "r1", "read", "foo"], None, Ok("Role r1 updated\n")),
        (&["role", "grant-permission", "r1", "readwrite", "--prefix=true", "pre/"], None, Ok("Role r1 updated\n")),
        (&["role", "grant-permission", "r1", "write", "a", "c"], None, Ok("Role r1 updated\n")),
        (&["role", "grant-permission", "r1", "read", "--from-key", "z"], None, Ok("Role r1 updated\n")),
        (&["role", "grant-permission", "nope", "read", "foo"], None, Err("Error: etcdserver: role name not found")),
        (&["role", "get", "r1"], None, Ok("Role r1\nKV Read:\n\tfoo\n\t[pre/, pre0) (prefix pre/)\n\t[z, <open ended>\nKV Write:\n\t[a, c)\n\t[pre/, pre0) (prefix pre/)\n")),
        (&["user", "grant-role", "alice", "r1"], None, Ok("Role r1 is granted to user alice\n")),
        (&["user", "grant-role", "alice", "nope"], None, Err("Error: etcdserver: role name not found")),
        (&["user", "grant-role", "nobody", "r1"], None, Err("Error: etcdserver: user name not found")),
        (&["user", "get", "alice"], None, Ok("User: alice\nRoles: r1\n")),
        (&["user", "get", "alice", "--detail"], None, Ok("User: alice\n\nRole r1\nKV Read:\n\tfoo\n\t[pre/, pre0) (prefix pre/)\n\t[z, <open ended>\nKV Write:\n\t[a, c)\n\t[pre/, pre0) (prefix pre/)\n")),
        (&["user", "list"], None, Ok("alice\nroot\n")),
        (&["role", "list"], None, Ok("r1\n")),
        (&["auth", "enable"], None, Ok("Authentication Enabled\n")),
        (&["auth", "enable"], None, Err("Error: etcdserver: user name is empty")),
        (&["role", "get", "root"], None, Err("Error: etcdserver: user name is empty")),
        (&["user", "get", "root"], None, Err("Error: etcdserver: user name is empty")),
        (&["get", "foo"], None, Err("Error: etcdserver: user name is empty")),
        (&["--user=root:wrong", "get", "foo"], None, Err("Error: etcdserver: authentication failed, invalid user ID or password")),
        (&["--user=nobody:x", "get", "foo"], None, Err("Error: etcdserver: authentication failed, invalid user ID or password")),
        (&["--user=root:rootpw", "put", "foo", "v0"], None, Ok("OK\n")),
        (&["--user=alice:apw", "put", "foo", "bar"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "get", "foo"], None, Ok("foo\nv0\n")),
        (&["--user=alice:apw", "put", "pre/x", "1"], None, Ok("OK\n")),
        (&["--user=alice:apw", "get", "pre/", "--prefix"], None, Ok("pre/x\n1\n")),
        (&["--user=alice:apw", "put", "b", "1"], None, Ok("OK\n")),
        (&["--user=alice:apw", "put", "--prev-kv", "b", "2"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "get", "b"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "del", "b"], None, Ok("1\n")),
        (&["--user=alice:apw", "del", "pre/", "--prefix"], None, Ok("1\n")),
        (&["--user=alice:apw", "put", "zz", "1"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "get", "zz"], None, Ok("")),
        (&["--user=alice:apw", "get", "z", "--from-key"], None, Ok("")),
        (&["--user=alice:apw", "get", "a", "--from-key"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "user", "list"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "user", "get", "alice"], None, Ok("User: alice\nRoles: r1\n")),
        (&["--user=alice:apw", "user", "get", "root"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "role", "get", "r1"], None, Ok("Role r1\nKV Read:\n\tfoo\n\t[pre/, pre0) (prefix pre/)\n\t[z, <open ended>\nKV Write:\n\t[a, c)\n\t[pre/, pre0) (prefix pre/)\n")),
        (&["--user=alice:apw", "role", "get", "root"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=alice:apw", "compact", "1"], None, Ok("compacted revision 1\n")),
        (&["--user=alice:apw", "auth", "disable"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=root:rootpw", "role", "revoke-permission", "r1", "foo"], None, Ok("Permission of key foo is revoked from role r1\n")),
        (&["--user=root:rootpw", "role", "revoke-permission", "r1", "foo"], None, Err("Error: etcdserver: permission is not granted to the role")),
        (&["--user=root:rootpw", "role", "revoke-permission", "r1", "a", "c"], None, Ok("Permission of range [a, c) is revoked from role r1\n")),
        (&["--user=root:rootpw", "role", "get", "r1"], None, Ok("Role r1\nKV Read:\n\t[pre/, pre0) (prefix pre/)\n\t[z, <open ended>\nKV Write:\n\t[pre/, pre0) (prefix pre/)\n")),
        (&["--user=alice:apw", "get", "foo"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=root:rootpw", "user", "revoke-role", "alice", "r1"], None, Ok("Role r1 is revoked from user alice\n")),
        (&["--user=root:rootpw", "user", "revoke-role", "alice", "r1"], None, Err("Error: etcdserver: role is not granted to the user")),
        (&["--user=root:rootpw", "user", "revoke-role", "root", "root"], None, Err("Error: etcdserver: invalid auth management")),
        (&["--user=root:rootpw", "user", "delete", "nobody"], None, Err("Error: etcdserver: user name not found")),
        (&["--user=root:rootpw", "user", "delete", "root"], None, Err("Error: etcdserver: invalid auth management")),
        (&["--user=root:rootpw", "role", "delete", "root"], None, Err("Error: etcdserver: invalid auth management")),
        (&["--user=root:rootpw", "user", "passwd", "alice", "--interactive=false"], Some("newpw\n"), Ok("Password updated\n")),
        (&["--user=alice:apw", "get", "foo"], None, Err("Error: etcdserver: authentication failed, invalid user ID or password")),
        (&["--user=alice:newpw", "get", "foo"], None, Err("Error: etcdserver: permission denied")),
        (&["--user=root:rootpw", "user", "delete", "alice"], None, Ok("User alice deleted\n")),
        (&["--user=root:rootpw", "role", "delete", "r1"], None, Ok("Role r1 deleted\n")),
        (&["--user=root:rootpw", "role", "delete", "r1"], None, Err("Error: etcdserver: role name not found")),
        (&["--user=root:rootpw", "user", "list"], None, Ok("root\n")),
        (&["--user=root:rootpw", "auth", "disable"], None, Ok("Authentication Disabled\n")),
        (&["auth", "disable"], None, Ok("Authentication Disabled\n")),
        (&["user", "list"], None, Ok("root\n")),
        (&["role", "list"], None, Ok("root\n")),
        (&["--user=root:rootpw", "get", "foo"], None, Ok("foo\nv0\n")),
    ];
    run(e, steps);
}

/// Sets up root (password rootpw) and alice (apw, read-write on [a, c)) and enables auth.
fn setup(e: &str) {
    let steps: &[Step<'_>] = &[
        (
            &["user", "add", "root", "--new-user-password=rootpw"],
            None,
            Ok("User root created\n"),
        ),
        (
            &["user", "add", "alice", "--new-user-password=apw"],
            None,
            Ok("User alice created\n"),
        ),
        (&["role", "add", "w"], None, Ok("Role w created\n")),
        (
            &["role", "grant-permission", "w", "readwrite", "a", "c"],
            None,
            Ok("Role w updated\n"),
        ),
        (
            &["user", "grant-role", "alice", "w"],
            None,
            Ok("Role w is granted to user alice\n"),
        ),
        (&["auth", "enable"], None, Ok("Authentication Enabled\n")),
    ];
    run(e, steps);
}

/// A lease holding a key a user may not write cannot be revoked or extended by that user;
/// admin-only Maintenance calls answer etcd's untranslated auth error; txns are checked on
/// both branches and every compare.
#[test]
fn leases_maintenance_and_txns_are_checked() {
    let (dir, s) = server();
    // Without the scheme: etcdctl 3.4's hashkv and snapshot dial the endpoint as given, and
    // grpc-go then sends an :authority that tonic's HTTP/2 server refuses.
    let e = s.endpoint();
    let e = e.trim_start_matches("http://");
    setup(e);
    let root = "--user=root:rootpw";
    let alice = "--user=alice:apw";
    let granted = ok(e, &[root, "lease", "grant", "100"]);
    let id = granted.split(' ').nth(1).unwrap().to_owned();
    let lease = format!("--lease={id}");
    assert_eq!(ok(e, &[root, "put", "x", "v", &lease]), "OK\n");
    assert_eq!(ok(e, &[root, "put", "b", "v", &lease]), "OK\n");
    let snap = dir.path().join("snap.db");
    let snap = snap.to_str().unwrap();
    let denied = "Error: rpc error: code = Unknown desc = auth: permission denied";
    let hashkv_denied = format!(
        "Failed to get the hash of endpoint {e} (rpc error: code = Unknown desc = auth: permission denied)\n"
    );
    let steps: &[Step<'_>] = &[
        (
            &[alice, "lease", "revoke", &id],
            None,
            Err("Error: failed to revoke lease (etcdserver: permission denied)"),
        ),
        (
            &[alice, "put", "a", "1", &lease],
            None,
            Err("Error: etcdserver: permission denied"),
        ),
        // etcd 3.4 checks no permission on Compact.
        (&[alice, "compact", "2"], None, Ok("compacted revision 2\n")),
        (&[alice, "endpoint", "hashkv"], None, Err(denied)),
        (&[alice, "snapshot", "save", snap], None, Err(denied)),
        (&[alice, "alarm", "list"], None, Ok("")),
        (
            &[alice, "txn"],
            Some("value(\"a\") = \"1\"\n\nput b 2\n\nput a 3\n\n"),
            Ok("FAILURE\n\nOK\n"),
        ),
        (
            &[alice, "txn"],
            Some("value(\"x\") = \"1\"\n\nput b 2\n\nput a 3\n\n"),
            Err("Error: etcdserver: permission denied"),
        ),
        (
            &[alice, "txn"],
            Some("\nput b 2\n\nput z 1\n\n"),
            Err("Error: etcdserver: permission denied"),
        ),
        (&[alice, "get", "a", "--print-value-only"], None, Ok("3\n")),
        (
            &[root, "lease", "revoke", &id],
            None,
            Ok(format!("lease {id} revoked\n").leak()),
        ),
        (
            &[root, "get", "", "--prefix", "--keys-only"],
            None,
            Ok("a\n\n"),
        ),
    ];
    run(e, steps);
    let out = etcdctl(e, &[alice, "endpoint", "hashkv"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|line| line == hashkv_denied.trim_end()),
        "{stderr}"
    );
}

/// Users, roles, permissions and the enabled flag are replicated state: they survive a
/// SIGKILL and restart (tokens do not, and etcdctl authenticates again).
#[test]
fn auth_survives_sigkill_and_restart() {
    let (_dir, mut s) = server();
    let e = &s.endpoint();
    setup(e);
    assert_eq!(ok(e, &["--user=alice:apw", "put", "b", "1"]), "OK\n");
    s.kill();
    s.restart();
    let e = &s.endpoint();
    let steps: &[Step<'_>] = &[
        (
            &["get", "b"],
            None,
            Err("Error: etcdserver: user name is empty"),
        ),
        (
            &["--user=alice:apw", "get", "b", "--print-value-only"],
            None,
            Ok("1\n"),
        ),
        (
            &["--user=alice:apw", "put", "c", "1"],
            None,
            Err("Error: etcdserver: permission denied"),
        ),
        (
            &["--user=alice:bad", "get", "b"],
            None,
            Err("Error: etcdserver: authentication failed, invalid user ID or password"),
        ),
        (
            &["--user=root:rootpw", "user", "list"],
            None,
            Ok("alice\nroot\n"),
        ),
        (
            &["--user=root:rootpw", "role", "get", "w"],
            None,
            Ok("Role w\nKV Read:\n\t[a, c)\nKV Write:\n\t[a, c)\n"),
        ),
        (
            &["--user=root:rootpw", "auth", "disable"],
            None,
            Ok("Authentication Disabled\n"),
        ),
    ];
    run(e, steps);
    s.kill();
    s.restart();
    let e = &s.endpoint();
    assert_eq!(ok(e, &["put", "z", "1"]), "OK\n");
    assert_eq!(ok(e, &["user", "get", "alice"]), "User: alice\nRoles: w\n");
}

/// The token travels in gRPC metadata `token`: a bad one is refused before anything else,
/// a good one identifies the user; AuthStatus (etcd 3.5's RPC) reports the auth revision.
#[test]
fn tokens_in_grpc_metadata() {
    let (_dir, s) = server();
    let e = &s.endpoint();
    setup(e);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = Channel::from_shared(e.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut auth = AuthClient::new(channel.clone());
        let mut kv = KvClient::new(channel);
        let range = RangeRequest {
            key: b"a".to_vec(),
            ..RangeRequest::default()
        };
        let bad = kv
            .range(with_token("nonsense.1", range.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            (bad.code(), bad.message()),
            (Code::Unauthenticated, "etcdserver: invalid auth token")
        );
        let none = kv.range(range.clone()).await.unwrap_err();
        assert_eq!(
            (none.code(), none.message()),
            (Code::InvalidArgument, "etcdserver: user name is empty")
        );
        let wrong = auth
            .authenticate(AuthenticateRequest {
                name: "alice".into(),
                password: "x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (wrong.code(), wrong.message()),
            (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password"
            )
        );
        let token = auth
            .authenticate(AuthenticateRequest {
                name: "alice".into(),
                password: "apw".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        // etcd's simple token: 16 letters, a dot, the raft index of the Authenticate entry.
        let (prefix, index) = token.split_once('.').unwrap();
        assert_eq!(prefix.len(), 16, "{token}");
        assert!(index.parse::<u64>().is_ok(), "{token}");
        kv.range(with_token(&token, range)).await.unwrap();
        let put = PutRequest {
            key: b"z".to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        };
        let denied = kv.put(with_token(&token, put)).await.unwrap_err();
        assert_eq!(
            (denied.code(), denied.message()),
            (Code::PermissionDenied, "etcdserver: permission denied")
        );
        if !is_reference() {
            // etcd 3.4 has no AuthStatus; 3.5 answers it for admins.
            let denied = auth
                .auth_status(with_token(&token, AuthStatusRequest {}))
                .await
                .unwrap_err();
            assert_eq!(denied.code(), Code::PermissionDenied);
            let root = auth
                .authenticate(AuthenticateRequest {
                    name: "root".into(),
                    password: "rootpw".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .token;
            let status = auth
                .auth_status(with_token(&root, AuthStatusRequest {}))
                .await
                .unwrap()
                .into_inner();
            assert!(status.enabled);
            // Revision 1, then user add x2, role add, grant-permission, grant-role, and
            // etcdctl's auth enable adding the root role and granting it to root.
            assert_eq!(status.auth_revision, 8);
        }
    });
}

/// etcd's restore keeps auth: a snapshot of an auth-enabled member, restored by etcdctl's tool
/// and served by reference etcd, and restored by `ringkv snapshot restore` and served by
/// ringkv, still has auth enabled, its users, roles and permissions. (Run against etcd, the
/// snapshot is etcd's, so ringkv's restore reads etcd's auth buckets.)
#[test]
fn snapshots_keep_users_roles_and_the_enabled_flag() {
    let (dir, s) = server();
    let e = s.endpoint();
    let e = e.trim_start_matches("http://");
    setup(e);
    assert_eq!(ok(e, &["--user=root:rootpw", "put", "b", "1"]), "OK\n");
    let file = dir.path().join("auth.db");
    let file = file.to_str().unwrap();
    let saved = etcdctl(e, &["--user=root:rootpw", "snapshot", "save", file], None);
    assert!(saved.status.success(), "{saved:?}");

    let restorers: [(&std::ffi::OsStr, std::ffi::OsString); 2] = [
        ("etcdctl".as_ref(), "/usr/bin/etcd".into()),
        (
            env!("CARGO_BIN_EXE_ringkv").as_ref(),
            env!("CARGO_BIN_EXE_ringkv").into(),
        ),
    ];
    for (i, (tool, served_by)) in restorers.iter().enumerate() {
        let peer = server_support::free_port();
        let peer_url = format!("http://127.0.0.1:{peer}");
        let restored = dir.path().join(format!("restored-{i}"));
        let out = std::process::Command::new(tool)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", file, "--data-dir"])
            .arg(&restored)
            .args(["--name", "default", "--initial-cluster"])
            .arg(format!("default={peer_url}"))
            .args(["--initial-cluster-token", "etcd-cluster"])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool:?}: {out:?}");
        let copy = Server::start_at(served_by, &restored, server_support::free_port(), peer, &[]);
        let c = copy.endpoint();
        let c = c.trim_start_matches("http://");
        let steps: &[Step<'_>] = &[
            (
                &["get", "b"],
                None,
                Err("Error: etcdserver: user name is empty"),
            ),
            (
                &["--user=alice:apw", "get", "b", "--print-value-only"],
                None,
                Ok("1\n"),
            ),
            (
                &["--user=root:rootpw", "user", "list"],
                None,
                Ok("alice\nroot\n"),
            ),
            (
                &["--user=root:rootpw", "role", "get", "w"],
                None,
                Ok("Role w\nKV Read:\n\t[a, c)\nKV Write:\n\t[a, c)\n"),
            ),
        ];
        run(c, steps);
    }
}

/// Watch creates are checked against the stream's token as etcd's `isWatchPermitted` does: a
/// watch outside the user's permissions, or with no user while auth is on, is answered created
/// and canceled with the gRPC error's text (etcdctl prints it); a permitted one gets its events.
#[test]
fn watch_creates_are_checked() {
    let (_dir, server) = server();
    let e = server.endpoint();
    setup(&e);
    ok(&e, &["--user", "root:rootpw", "put", "b", "v"]);
    let refused = [
        (
            vec!["--user", "alice:apw", "watch", "z"],
            "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)",
        ),
        (
            vec!["watch", "b"],
            "watch was canceled (rpc error: code = InvalidArgument desc = etcdserver: user name is empty)",
        ),
    ];
    for (args, reason) in refused {
        let out = etcdctl(&e, &args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(lines.contains(&reason), "{args:?}: {stderr}");
        assert_eq!(
            lines.last().copied(),
            Some("Error: watch is canceled by the server"),
            "{args:?}: {stderr}"
        );
    }

    let mut child = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={e}"))
        .args(["--user", "alice:apw", "watch", "b", "--rev", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run etcdctl");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.len() < 3 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, ["PUT", "b", "v"]);
}
