//! Placement from the tuning profile, on the real binary: `tuning/small-split.toml` puts the
//! WAL writer on a core other than the raft loop's, so the writer runs on an executor thread of
//! its own (`raft::WalExecutor::Own`). The threads must be pinned where the profile says (read
//! back from the kernel, /proc/<pid>/task/*/status), puts must be served, and acknowledged
//! writes must survive SIGKILL exactly as with the writer on the raft executor. Needs cores 0
//! and 1.

mod server_support;

use std::path::PathBuf;
use std::time::Duration;

use server_support::acked::{assert_all_readable, writer};
use server_support::{ok, Server};

const KILL_CYCLES: usize = 4;
const CLIENTS: usize = 3;
/// Puts one client makes per cycle at most; the kill usually comes first.
const PUTS_PER_CYCLE_MAX: u64 = 5_000;

fn split_profile() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tuning/small-split.toml")
}

/// Every thread of `pid` as (name, the kernel's `Cpus_allowed_list`).
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/<pid>/task");
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status"));
        // A thread that exited between the listing and the read.
        let Ok(status) = status else { continue };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map_or_else(|| panic!("no {name} in {status}"), |v| v.trim().to_owned())
        };
        out.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    out
}

/// The `Cpus_allowed_list` of every thread whose name starts with `prefix` (Linux keeps 15
/// bytes of a thread name: `page-store-checkpoint` reads back as `page-store-chec`).
fn affinity_of(all: &[(String, String)], prefix: &str) -> Vec<String> {
    all.iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, cpus)| cpus.clone())
        .collect()
}

/// Asserts that threads named `prefix`* exist and that the kernel lets every one of them run
/// on `cpus` only (glommio starts a helper thread under the executor's name, so there are two
/// per executor).
fn assert_all_on(all: &[(String, String)], prefix: &str, cpus: &str) {
    let found = affinity_of(all, prefix);
    assert!(!found.is_empty(), "no {prefix}* thread in {all:?}");
    assert!(
        found.iter().all(|c| c == cpus),
        "{prefix}* threads not all on {cpus}: {all:?}"
    );
}

fn assert_split_placement(server: &Server) {
    let all = threads(server.pid());
    assert_all_on(&all, "wal-writer", "1");
    assert_all_on(&all, "raft-", "0");
    assert_all_on(&all, "page-store-chec", "1");
    assert_all_on(&all, "ringkv-grpc", "1");
}

#[test]
fn same_core_keeps_the_writer_on_the_raft_executor() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--tuning-profile", "small"]);
    let all = threads(server.pid());
    assert!(affinity_of(&all, "wal-writer").is_empty(), "{all:?}");
    assert_all_on(&all, "raft-", "0");
    // `small` pins the page store's checkpointer to core 1.
    assert_all_on(&all, "page-store-chec", "1");
    assert_eq!(
        ok(&server.endpoint(), &["put", "k", "v"]).trim(),
        "OK",
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_on_its_own_core_serves_puts_and_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let profile = split_profile();
    let args = ["--tuning-profile", profile.to_str().unwrap()];
    let mut server = Server::start(&dir.path().join("data"), &args);
    let endpoint = server.endpoint();
    assert_split_placement(&server);

    // etcdctl's puts, acknowledged one by one, then killed: all must be there after restart.
    for i in 0..20 {
        let out = ok(
            &endpoint,
            &["put", &format!("ctl-{i:02}"), &format!("v{i}")],
        );
        assert_eq!(out.trim(), "OK");
    }
    server.kill();
    server.restart();
    assert_split_placement(&server);
    let listed = ok(
        &endpoint,
        &["get", "ctl-", "--prefix", "--print-value-only"],
    );
    let expected: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    assert_eq!(listed.lines().collect::<Vec<_>>(), expected);

    // Concurrent writers killed mid-flight: every acknowledged put must be readable at its
    // revision with its value.
    let mut acks = Vec::new();
    for cycle in 0..KILL_CYCLES {
        let writers: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(writer(
                    endpoint.clone(),
                    client,
                    cycle,
                    16,
                    PUTS_PER_CYCLE_MAX,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + 100 * cycle as u64)).await;
        server.kill();
        for writer in writers {
            acks.extend(writer.await.unwrap());
        }
        server.restart();
    }
    assert!(
        acks.len() > KILL_CYCLES,
        "the load made no progress: {}",
        server.log()
    );
    eprintln!(
        "{KILL_CYCLES} kill cycles, {} acknowledged puts",
        acks.len()
    );
    assert_split_placement(&server);
    assert_all_readable(endpoint.clone(), &acks, "split placement").await;

    // A clean stop with the writer on its own thread: the exit is clean and a restart finds
    // everything.
    assert_eq!(server.stop_with(libc::SIGTERM), Some(0), "{}", server.log());
    server.restart();
    let out = ok(&endpoint, &["get", "ctl-19", "--print-value-only"]);
    assert_eq!(out.trim(), "v19");
}
