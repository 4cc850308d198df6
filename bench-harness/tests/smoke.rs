//! The CI proof that the harness works: start the real `ringkv` binary on loopback ports, run
//! `ringkv-bench put` and `range` for about a second each with tiny parameters, and require
//! successful requests and no errors.
//!
//! The server binary is `RINGKV_BIN` if set, else the workspace's `target/release/ringkv`, which
//! this test builds (`cargo build --release --bin ringkv`) when it is missing. The other
//! workloads, compare and check-perf are tested in `workloads.rs`.

mod bench_support;

use bench_support::ringkv_binary;
use ringkv_bench::server::ServerProcess;
use std::process::Command;

fn bench(args: &[&str], json: &std::path::Path) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv-bench"))
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .expect("run ringkv-bench");
    assert!(
        output.status.success(),
        "ringkv-bench {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("throughput"), "no table:\n{table}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn put_and_range_against_ringkv() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        "ringkv",
        &ringkv_binary(),
        &dir.path().join("data"),
        &[],
        &dir.path().join("ringkv.log"),
    )
    .await
    .expect("start ringkv");
    let endpoint = server.endpoint();
    let common = [
        "--endpoints",
        &endpoint,
        "--conns",
        "2",
        "--clients",
        "4",
        "--duration",
        "1",
        "--total",
        "5000",
    ];

    let put_json = dir.path().join("put.json");
    let put_args: Vec<&str> = ["put", "--val-size", "64", "--key-space-size", "100"]
        .into_iter()
        .chain(common)
        .collect();
    let put = bench(&put_args, &put_json);
    assert_eq!(put["errors"], 0, "{put}");
    assert!(put["requests"].as_u64().unwrap() > 0, "{put}");

    for consistency in ["l", "s"] {
        let range_json = dir.path().join(format!("range-{consistency}.json"));
        let range_args: Vec<&str> = ["range", "--key", "foo", "--consistency", consistency]
            .into_iter()
            .chain(common)
            .collect();
        let range = bench(&range_args, &range_json);
        assert_eq!(range["errors"], 0, "{range}");
        assert!(range["requests"].as_u64().unwrap() > 0, "{range}");
    }
    assert_eq!(server.stop().await.unwrap(), "exit status: 0");
}
