//! Snapshots keep leases, as etcd 3.4's do: `etcdctl snapshot save` of a server with leases
//! carries them in the `lease` bucket, and a restore (ringkv's tool or etcdctl's, into ringkv
//! or etcd) brings back every lease with its granted TTL and the keys attached to it, so that
//! revoking it still deletes them. Their countdown restarts at the granted TTL, as in etcd.
//! The bug this guards against: ringkv wrote an empty `lease` bucket, so a restore lost every
//! lease and left keys that named leases which no longer existed.

mod server_support;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use server_support::{free_port, ok, Server};

fn endpoint(server: &Server) -> String {
    format!("127.0.0.1:{}", server.client_port)
}

fn ringkv_tool(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .output()
        .unwrap()
}

/// `etcdctl lease grant`'s id.
fn grant(ep: &str, ttl: u32) -> String {
    let out = ok(ep, &["lease", "grant", &ttl.to_string()]);
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(out, format!("lease {id} granted with TTL({ttl}s)\n"));
    id
}

/// Two leases (one holding two keys), a key without a lease, a key moved off a lease.
fn leased_history(ep: &str) -> (String, String) {
    let holder = grant(ep, 600);
    let empty = grant(ep, 300);
    ok(ep, &["put", "a", "1", &format!("--lease={holder}")]);
    ok(ep, &["put", "b", "2", &format!("--lease={holder}")]);
    ok(ep, &["put", "c", "3"]);
    ok(ep, &["put", "d", "4", &format!("--lease={empty}")]);
    ok(ep, &["put", "d", "5"]);
    (holder, empty)
}

fn sorted_lease_list(ep: &str) -> Vec<String> {
    let out = ok(ep, &["lease", "list"]);
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// `lease timetolive --keys` with the remaining seconds checked and cut out (a restored lease
/// starts over at about its granted TTL, far from expiry) and the keys sorted (etcd lists them
/// in no particular order).
fn time_to_live(ep: &str, id: &str, ttl: i64) -> String {
    let out = ok(ep, &["lease", "timetolive", id, "--keys"]);
    let (head, rest) = out.split_once("remaining(").unwrap();
    let (remaining, tail) = rest.split_once("s)").unwrap();
    let remaining: i64 = remaining.parse().unwrap();
    assert!(
        remaining > ttl / 2 && remaining <= ttl + 2,
        "lease {id}: remaining {remaining} of {ttl}: {out}"
    );
    let (before_keys, keys) = tail.split_once("keys([").unwrap();
    let mut keys: Vec<&str> = keys.trim_end_matches("])\n").split_whitespace().collect();
    keys.sort_unstable();
    format!(
        "{head}remaining(-){before_keys}keys([{}])\n",
        keys.join(" ")
    )
}

fn restore_with_ringkv(snapshot: &Path, dir: &Path, peer: u16) {
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = ringkv_tool(&[
        "snapshot",
        "restore",
        snapshot.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--initial-cluster",
        &format!("default={peer_url}"),
        "--initial-advertise-peer-urls",
        &peer_url,
    ]);
    assert!(out.status.success(), "{out:?}");
}

fn restore_with_etcdctl(ep: &str, snapshot: &Path, dir: &Path, peer: u16) {
    let peer_url = format!("http://127.0.0.1:{peer}");
    ok(
        ep,
        &[
            "snapshot",
            "restore",
            snapshot.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--name",
            "default",
            "--initial-cluster",
            &format!("default={peer_url}"),
            "--initial-advertise-peer-urls",
            &peer_url,
        ],
    );
}

/// What a restored member must serve: the same leases, TTLs and attachments, and a revoke
/// that deletes the attached keys only.
fn check_restored(ep: &str, holder: &str, empty: &str, leases: &[String]) {
    assert_eq!(sorted_lease_list(ep), leases);
    assert_eq!(
        time_to_live(ep, holder, 600),
        format!("lease {holder} granted with TTL(600s), remaining(-), attached keys([a b])\n")
    );
    assert_eq!(
        time_to_live(ep, empty, 300),
        format!("lease {empty} granted with TTL(300s), remaining(-), attached keys([])\n")
    );
    ok(ep, &["lease", "revoke", holder]);
    assert_eq!(
        ok(ep, &["get", "", "--prefix", "--keys-only"]),
        "c\n\nd\n\n"
    );
    assert_eq!(
        ok(ep, &["lease", "list"]),
        format!("found 1 leases\n{empty}\n")
    );
}

#[test]
fn a_snapshot_keeps_leases_and_their_keys_through_either_restore() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let ep = endpoint(&server);
    let (holder, empty) = leased_history(&ep);
    let leases = sorted_lease_list(&ep);
    assert_eq!(leases.len(), 3, "{leases:?}");

    let file = dir.path().join("snap.db");
    let file_s = file.to_str().unwrap();
    ok(&ep, &["snapshot", "save", file_s]);
    // Two lease entries beside the key bucket's versions: etcdctl and ringkv's tool agree.
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
    let restored = dir.path().join("ringkv-restored");
    restore_with_ringkv(&file, &restored, peer);
    let copy = Server::start_at(
        OsStr::new(env!("CARGO_BIN_EXE_ringkv")),
        &restored,
        free_port(),
        peer,
        &[],
    );
    check_restored(&endpoint(&copy), &holder, &empty, &leases);

    // etcd 3.4's restore of the same file, served by etcd: the lease bucket is what it expects.
    let peer = free_port();
    let etcd_dir = dir.path().join("etcd-restored");
    restore_with_etcdctl(&ep, &file, &etcd_dir, peer);
    let etcd = Server::start_at(
        OsStr::new("/usr/bin/etcd"),
        &etcd_dir,
        free_port(),
        peer,
        &[],
    );
    check_restored(&endpoint(&etcd), &holder, &empty, &leases);
}

#[test]
fn ringkv_restores_the_leases_of_an_etcd_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Server::start_at(
        OsStr::new("/usr/bin/etcd"),
        &dir.path().join("etcd"),
        free_port(),
        free_port(),
        &[],
    );
    let ep = endpoint(&etcd);
    let (holder, empty) = leased_history(&ep);
    let leases = sorted_lease_list(&ep);
    let file = dir.path().join("etcd.db");
    ok(&ep, &["snapshot", "save", file.to_str().unwrap()]);

    let peer = free_port();
    let restored = dir.path().join("restored");
    restore_with_ringkv(&file, &restored, peer);
    let copy = Server::start_at(
        OsStr::new(env!("CARGO_BIN_EXE_ringkv")),
        &restored,
        free_port(),
        peer,
        &[],
    );
    check_restored(&endpoint(&copy), &holder, &empty, &leases);
}
