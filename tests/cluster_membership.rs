//! Membership changes on a running three-member cluster (issue 5, phase 2), driven with the real
//! `etcdctl` against separate `ringkv` processes on loopback ports, with etcd's exact outputs:
//! a learner added, started with `--initial-cluster-state existing`, caught up and promoted; a
//! voter added and started; a follower removed (it exits as etcd's does, and is refused when it
//! comes back); peer URLs updated; and the refusals etcd answers. `RINGKV_TEST_SERVER=
//! /usr/bin/etcd` runs the same tests on reference etcd.

mod cluster_support;
mod server_support;

use std::time::{Duration, Instant};

use cluster_support::Cluster;
use server_support::{etcdctl, fails, ok};

/// One cluster at a time: each test runs four to six processes on a shared 2-core machine, and
/// fewer processes opening connections at once make it less likely that a port `free_port`
/// picked is taken as an ephemeral port before its member binds it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long a transient refusal ("unhealthy cluster" while peers connect, a learner not yet in
/// sync) may last before the test gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(40);

/// Runs etcdctl until it succeeds or fails with something other than one of `transient`
/// (bounded by `SETTLE_LIMIT`); returns the last output's stdout, or its `Error:` line.
fn settle(endpoint: &str, args: &[&str], transient: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let out = etcdctl(endpoint, args, None);
        if out.status.success() {
            return Ok(String::from_utf8(out.stdout).unwrap());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_owned();
        if !transient.iter().any(|t| last.contains(t)) || Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
const NOT_IN_SYNC: &str = "can only promote a learner member which is in sync with leader";

/// `member add` until the cluster is healthy; checks etcdctl's whole output and returns the
/// new member's id (hex) and the `ETCD_INITIAL_CLUSTER` to start it with.
/// `unstarted` members added before and not started show as `=<peer URL>`, as etcd prints them.
fn member_add(
    cluster: &Cluster,
    name: &str,
    peer_url: &str,
    learner: bool,
    unstarted: &[String],
) -> (String, String) {
    let endpoint = cluster.members[0].endpoint();
    let mut args = vec!["member", "add", name, "--peer-urls", peer_url];
    if learner {
        args.push("--learner");
    }
    let out = settle(&endpoint, &args, &[UNHEALTHY])
        .unwrap_or_else(|e| panic!("member add: {e}\n{}", cluster.logs()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    // etcdctl prints the ids with `%16x`: space-padded.
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        (words[0], words[2], words[3], words[4]),
        ("Member", "added", "to", "cluster"),
        "{out}"
    );
    let id = words[1].to_owned();
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], format!("ETCD_NAME=\"{name}\""));
    let initial = lines[3]
        .strip_prefix("ETCD_INITIAL_CLUSTER=\"")
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let mut entries: Vec<&str> = initial.split(',').collect();
    entries.sort_unstable();
    let mut expected: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .chain([format!("{name}={peer_url}")])
        .chain(unstarted.iter().map(|url| format!("={url}")))
        .collect();
    expected.sort();
    assert_eq!(entries, expected, "{out}");
    assert_eq!(
        lines[4],
        format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer_url}\"")
    );
    assert_eq!(lines[5], "ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
    (id, initial)
}

/// `member list` lines, sorted (etcd sorts by id; so does ringkv).
fn member_list(endpoint: &str) -> Vec<String> {
    ok(endpoint, &["member", "list"])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn started_line(id: &str, m: &cluster_support::Member, learner: bool) -> String {
    format!(
        "{id}, started, {}, {}, {}, {learner}",
        m.name,
        m.peer_url(),
        m.endpoint()
    )
}

/// The id (hex) of member `i`, from `endpoint status`.
fn id_of(cluster: &Cluster, i: usize) -> String {
    let (id, _, _) = Cluster::status(&cluster.members[i]).expect("status");
    format!("{id:x}")
}

/// Polls a serializable get on `endpoint` until it shows `key` = `value`.
fn wait_value(cluster: &Cluster, endpoint: &str, key: &str, value: &str) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let expected = format!("{key}\n{value}\n");
    loop {
        let out = etcdctl(endpoint, &["get", key, "--consistency=s"], None);
        if String::from_utf8_lossy(&out.stdout) == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} never showed {key}={value}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A learner is added (listed unstarted, no name, no client URLs, learner), refused promotion
/// before it runs, started with `--initial-cluster-state existing`, catches up on the data
/// written before (a serializable get on it), is listed started, then promoted once in sync;
/// writes through it then apply everywhere.
#[test]
fn a_learner_joins_catches_up_and_is_promoted() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let e0 = cluster.members[0].endpoint();
    for i in 0..20 {
        ok(&e0, &["put", &format!("before/{i:02}"), &format!("v{i}")]);
    }
    let m4 = cluster.new_member("m4");
    let peer = cluster.members[m4].peer_url();
    let (id, initial) = member_add(&cluster, "m4", &peer, true, &[]);
    let list = member_list(&e0);
    assert_eq!(list.len(), 4, "{list:?}");
    assert!(
        list.contains(&format!("{id}, unstarted, , {peer}, , true")),
        "{list:?}"
    );
    assert_eq!(
        fails(&e0, &["member", "promote", &id], None),
        format!("Error: etcdserver: {NOT_IN_SYNC}")
    );

    cluster.start_joining(m4, &initial);
    let e4 = cluster.members[m4].endpoint();
    wait_value(&cluster, &e4, "before/19", "v19");
    let list = member_list(&e0);
    assert!(
        list.contains(&started_line(&id, &cluster.members[m4], true)),
        "{list:?}"
    );
    // A learner serves serializable reads and status only.
    for args in [
        &["put", "x", "y"][..],
        &["get", "before/00"][..],
        &["member", "list"][..],
    ] {
        assert_eq!(
            fails(&e4, args, None),
            "Error: etcdserver: rpc not supported for learner",
            "{args:?}"
        );
    }
    ok(&e4, &["endpoint", "status"]);

    let promoted = settle(&e0, &["member", "promote", &id], &[NOT_IN_SYNC])
        .unwrap_or_else(|e| panic!("promote: {e}\n{}", cluster.logs()));
    let cluster_id = format!(
        "{:x}",
        server_support::json(&e0, &["endpoint", "status"])[0]["Status"]["header"]["cluster_id"]
            .as_u64()
            .unwrap()
    );
    assert_eq!(
        promoted,
        // etcdctl prints both ids with `%16x`, space-padded.
        format!("Member {id:>16} promoted in cluster {cluster_id:>16}\n")
    );
    let list = member_list(&e4);
    assert!(
        list.contains(&started_line(&id, &cluster.members[m4], false)),
        "{list:?}"
    );
    assert_eq!(
        fails(&e0, &["member", "promote", &id], None),
        "Error: etcdserver: can only promote a learner member"
    );
    ok(&e4, &["put", "after", "promoted"]);
    for m in cluster.running() {
        wait_value(&cluster, &m.endpoint(), "after", "promoted");
    }
    cluster.wait_hashkv_equal(SETTLE_LIMIT);
}

/// A voter is added and started from an empty data dir; a follower is then removed: it leaves
/// the member list, exits by itself (status 0) saying etcd's two lines, the cluster keeps
/// accepting writes, and the removed member started again on its data dir is refused and exits.
#[test]
fn a_voter_joins_and_a_removed_follower_exits_and_stays_out() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let e0 = cluster.members[0].endpoint();
    ok(&e0, &["put", "k", "v1"]);
    let m4 = cluster.new_member("m4");
    let peer = cluster.members[m4].peer_url();
    let (id4, initial) = member_add(&cluster, "m4", &peer, false, &[]);
    assert!(member_list(&e0).contains(&format!("{id4}, unstarted, , {peer}, , false")));
    cluster.start_joining(m4, &initial);
    let e4 = cluster.members[m4].endpoint();
    wait_value(&cluster, &e4, "k", "v1");
    ok(&e4, &["put", "k", "v2"]);
    wait_value(&cluster, &e0, "k", "v2");

    let leader = cluster.wait_leader(SETTLE_LIMIT);
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = id_of(&cluster, victim);
    let asker = cluster.members[leader].endpoint();
    let removed = settle(&asker, &["member", "remove", &victim_id], &[])
        .unwrap_or_else(|e| panic!("remove: {e}\n{}", cluster.logs()));
    assert!(
        // etcdctl prints this id with `%16x`, space-padded.
        removed.starts_with(&format!("Member {victim_id:>16} removed from cluster ")),
        "{removed}"
    );
    let list = member_list(&asker);
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(!list.iter().any(|l| l.starts_with(&victim_id)), "{list:?}");
    let status = cluster.members[victim].wait_exit(SETTLE_LIMIT);
    assert!(status.success(), "{status}");
    let log = cluster.members[victim].log();
    assert!(
        log.contains("the member has been permanently removed from the cluster")
            && log.contains("the data-dir used by this member must be removed."),
        "{log}"
    );
    assert_eq!(
        fails(&asker, &["member", "remove", &victim_id], None),
        "Error: etcdserver: member not found"
    );
    ok(&asker, &["put", "k", "v3"]);
    for m in cluster.running() {
        wait_value(&cluster, &m.endpoint(), "k", "v3");
    }

    cluster.launch_again(victim);
    let status = cluster.members[victim].wait_exit(SETTLE_LIMIT);
    assert!(status.success(), "{status}");
    assert!(cluster.members[victim]
        .log()
        .contains("the member has been permanently removed from the cluster"));

    // The joined member restarts from its own record after a SIGKILL (the flags are ignored)
    // with the membership as changed since it joined.
    cluster.members[m4].kill();
    cluster.start_joining(m4, &initial);
    cluster.wait_leader(SETTLE_LIMIT);
    let list = member_list(&e4);
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(!list.iter().any(|l| l.starts_with(&victim_id)), "{list:?}");
    ok(&e4, &["put", "k", "v4"]);
    for m in cluster.running() {
        wait_value(&cluster, &m.endpoint(), "k", "v4");
    }
    cluster.wait_hashkv_equal(SETTLE_LIMIT);
}

/// A member removed while it is down misses its own removal: when it comes back, its peers
/// refuse it, and it exits as etcd's does.
#[test]
fn a_member_removed_while_down_is_refused_by_its_peers() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let leader = cluster.wait_leader(SETTLE_LIMIT);
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let victim_id = id_of(&cluster, victim);
    cluster.members[victim].kill();
    let asker = cluster.members[leader].endpoint();
    // A member that is down is not part of the active quorum: etcd allows its removal.
    // Until the leader sees it down (a send fails) it counts as connected, and the connected
    // voters must have been so for 5 s: "unhealthy cluster" meanwhile, on etcd too.
    let removed = settle(&asker, &["member", "remove", &victim_id], &[UNHEALTHY])
        .unwrap_or_else(|e| panic!("remove: {e}\n{}", cluster.logs()));
    assert!(
        removed.starts_with(&format!("Member {victim_id:>16} removed from cluster ")),
        "{removed}"
    );
    ok(&asker, &["put", "after", "removal"]);
    cluster.launch_again(victim);
    let status = cluster.members[victim].wait_exit(SETTLE_LIMIT);
    assert!(status.success(), "{status}");
    let log = cluster.members[victim].log();
    assert!(
        log.contains("the member has been permanently removed from the cluster")
            && log.contains("the data-dir used by this member must be removed."),
        "{log}"
    );
    assert_eq!(member_list(&asker).len(), 2);
}

/// `member update` changes a member's peer URLs in every member's list (here to another name of
/// the same socket, so the member keeps working), and the cluster keeps replicating to it.
#[test]
fn update_changes_peer_urls() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let e0 = cluster.members[0].endpoint();
    let id2 = id_of(&cluster, 2);
    let new_url = format!("http://localhost:{}", cluster.members[2].peer_port);
    let out = settle(
        &e0,
        &["member", "update", &id2, "--peer-urls", &new_url],
        &[],
    )
    .unwrap_or_else(|e| panic!("update: {e}"));
    assert!(
        out.starts_with(&format!("Member {id2:>16} updated in cluster ")),
        "{out}"
    );
    let m2 = &cluster.members[2];
    let expected = format!(
        "{id2}, started, {}, {new_url}, {}, false",
        m2.name,
        m2.endpoint()
    );
    for m in cluster.running() {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while !member_list(&m.endpoint()).contains(&expected) {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                member_list(&m.endpoint())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Another member's URLs are refused.
    assert_eq!(
        fails(
            &e0,
            &[
                "member",
                "update",
                &id2,
                "--peer-urls",
                &cluster.members[0].peer_url()
            ],
            None
        ),
        "Error: etcdserver: Peer URLs already exists"
    );
    ok(&e0, &["put", "u", "1"]);
    wait_value(&cluster, &m2.endpoint(), "u", "1");
}

/// The refusals, with etcd's exact messages.
#[test]
fn refusals_are_etcds() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let e0 = cluster.members[0].endpoint();
    for args in [
        &["member", "remove", "1234"][..],
        &[
            "member",
            "update",
            "1234",
            "--peer-urls",
            "http://127.0.0.1:1",
        ][..],
        &["member", "promote", "1234"][..],
    ] {
        assert_eq!(
            fails(&e0, args, None),
            "Error: etcdserver: member not found",
            "{args:?}"
        );
    }
    let id1 = id_of(&cluster, 1);
    assert_eq!(
        fails(&e0, &["member", "promote", &id1], None),
        "Error: etcdserver: can only promote a learner member"
    );
    // Once healthy, a taken URL is the refusal.
    let taken = cluster.members[1].peer_url();
    assert_eq!(
        settle(
            &e0,
            &["member", "add", "x", "--peer-urls", &taken],
            &[UNHEALTHY]
        ),
        Err("Error: etcdserver: Peer URLs already exists".to_owned())
    );
    let m4 = cluster.new_member("m4");
    let peer4 = cluster.members[m4].peer_url();
    member_add(&cluster, "m4", &peer4, true, &[]);
    let m5 = cluster.new_member("m5");
    let peer5 = cluster.members[m5].peer_url();
    assert_eq!(
        fails(
            &e0,
            &["member", "add", "m5", "--peer-urls", &peer5, "--learner"],
            None
        ),
        "Error: etcdserver: too many learner members in cluster"
    );
    // A learner is not a voter: the cluster is still healthy for a voter.
    member_add(&cluster, "m5", &peer5, false, std::slice::from_ref(&peer4));
    // A voter added but not started is not connected: the cluster is unhealthy for more.
    let m6 = cluster.new_member("m6");
    let peer6 = cluster.members[m6].peer_url();
    assert_eq!(
        fails(&e0, &["member", "add", "m6", "--peer-urls", &peer6], None),
        "Error: etcdserver: unhealthy cluster"
    );
    // With m3 down and m5 never up, removing m2 would break the active quorum. m1 sees
    // m3 down once a send to it fails, a few heartbeats after the kill.
    let id2 = id_of(&cluster, 1);
    cluster.members[2].kill();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fails(&e0, &["member", "remove", &id2], None),
        "Error: etcdserver: unhealthy cluster"
    );
}

/// A member started with `--initial-cluster-state existing` that was never added is refused
/// before it starts: the cluster's members and its `--initial-cluster` differ in number.
#[test]
fn joining_without_member_add_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let m4 = cluster.new_member("m4");
    let initial = format!(
        "{},m4={}",
        cluster.initial_cluster,
        cluster.members[m4].peer_url()
    );
    cluster.launch_joining(m4, &initial);
    let status = cluster.members[m4].wait_exit(SETTLE_LIMIT);
    assert!(!status.success(), "{status}");
    let log = cluster.members[m4].log();
    assert!(log.contains("member count is unequal"), "{log}");
    assert_eq!(member_list(&cluster.members[0].endpoint()).len(), 3);
}
