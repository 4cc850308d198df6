//! Every workload against reference etcd (which serves them all) and against ringkv (which must
//! either run them cleanly or be reported as not supporting them), check-perf's output and
//! refusal against etcdctl's, and compare's report files. Skips the etcd parts when
//! /usr/bin/etcd is not installed.

mod bench_support;

use bench_support::{bench, etcd_binary, etcdctl_binary, ringkv_binary, start};
use ringkv_bench::smoke;
use ringkv_bench::workload::{self, Workload};
use ringkv_bench::BenchError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_cleanly_against_etcd() {
    let Some(etcd) = etcd_binary() else {
        eprintln!("skipped: no reference etcd");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = start("etcd", &etcd, dir.path()).await;
    for (mut load, workload) in smoke::workloads(1.0) {
        load.endpoints = vec![server.endpoint()];
        let summary = workload::run(&load, &workload)
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", workload.name()));
        assert!(summary.requests > 0, "{}", summary.table());
        assert_eq!(summary.errors, 0, "{}", summary.table());
        match &workload {
            Workload::TxnMixed { .. } => {
                let parts: Vec<&str> = summary.parts.iter().map(|p| p.workload.as_str()).collect();
                assert_eq!(parts, ["txn-mixed-read", "txn-mixed-write"]);
                assert_eq!(
                    summary.parts[0].requests + summary.parts[1].requests,
                    summary.requests
                );
                assert!(
                    summary.parts.iter().all(|p| p.requests > 0),
                    "{}",
                    summary.table()
                );
            }
            Workload::WatchLatency(spec) => {
                // Every watcher saw every successful put exactly once.
                let puts = summary.parts[0].requests;
                assert_eq!(summary.parts[0].errors, 0);
                assert_eq!(
                    summary.requests,
                    puts * (spec.streams * spec.watchers_per_stream) as u64,
                    "{}",
                    summary.table()
                );
            }
            Workload::CheckPerf { .. } => {
                let check = summary.check.as_ref().expect("check-perf has a verdict");
                let last = check.lines.last().unwrap();
                assert_eq!(last, if check.pass { "PASS" } else { "FAIL" });
                assert!(check
                    .lines
                    .iter()
                    .any(|l| l.starts_with("PASS: Slowest request took ")
                        || l.starts_with("Slowest request took too long: ")));
            }
            _ => {}
        }
        // The per-second throughput adds up to the successes.
        assert_eq!(summary.timeline_per_s.iter().sum::<u64>(), summary.requests);
    }
    assert_eq!(server.stop().await.unwrap(), "signal: 15 (SIGTERM)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_or_is_reported_unsupported_on_ringkv() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start("ringkv", &ringkv_binary(), dir.path()).await;
    for (mut load, workload) in smoke::workloads(1.0) {
        load.endpoints = vec![server.endpoint()];
        match workload::run(&load, &workload).await {
            Ok(summary) => {
                assert!(summary.requests > 0, "{}", summary.table());
                assert_eq!(summary.errors, 0, "{}", summary.table());
            }
            // Watch and Lease are being built; until then the harness must say so plainly.
            Err(error @ BenchError::Unsupported { .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("does not support this workload")
                        && message.contains("Unimplemented"),
                    "{message}"
                );
                assert!(
                    matches!(
                        workload,
                        Workload::WatchLatency(_)
                            | Workload::WatchGet(_)
                            | Workload::LeaseKeepalive
                    ),
                    "ringkv serves KV, yet {}: {message}",
                    workload.name()
                );
            }
            Err(error) => panic!("{}: {error}", workload.name()),
        }
    }
    assert_eq!(server.stop().await.unwrap(), "exit status: 0");
}

/// check-perf's refusal of a used prefix is etcdctl's message, word for word, and its verdict
/// lines are etcdctl's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_perf_speaks_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start("ringkv", &ringkv_binary(), dir.path()).await;
    let endpoint = server.endpoint();

    let (code, stdout, stderr) = bench(&[
        "check-perf",
        "--load",
        "s",
        "--duration",
        "1",
        "--endpoints",
        &endpoint,
    ]);
    let verdict: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.starts_with("PASS: Throughput") && !line.starts_with("FAIL"))
        .collect();
    assert!(!verdict.is_empty(), "{stdout}{stderr}");
    assert_eq!(
        code,
        i32::from(*verdict.last().unwrap() == "FAIL"),
        "{stdout}{stderr}"
    );
    assert!(
        stdout.contains("PASS: Slowest request took ")
            || stdout.contains("Slowest request took too long: "),
        "{stdout}"
    );
    // The check cleaned up after itself: a second run is not refused.
    let (_, stdout, stderr) = bench(&[
        "check-perf",
        "--load",
        "small",
        "--duration",
        "0.5",
        "--endpoints",
        &endpoint,
    ]);
    assert!(!stderr.contains("has keys"), "{stdout}{stderr}");

    ringkv_bench::load::put_once(&endpoint, b"/etcdctl-check-perf/x", b"1")
        .await
        .unwrap();
    let (code, _, stderr) = bench(&["check-perf", "--endpoints", &endpoint]);
    assert_eq!(code, 1);
    let ours = stderr
        .trim()
        .strip_prefix("ringkv-bench: invalid option: ")
        .unwrap_or(&stderr);
    assert_eq!(
        ours,
        "prefix \"/etcdctl-check-perf/\" has keys. Delete with etcdctl del --prefix \
         /etcdctl-check-perf/ first"
    );
    if let Some(etcdctl) = etcdctl_binary() {
        // etcdctl refuses before it starts the load, so this is quick.
        let output = std::process::Command::new(etcdctl)
            .args(["--endpoints", &endpoint, "check", "perf"])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        let theirs = String::from_utf8_lossy(&output.stderr);
        assert_eq!(theirs.trim(), format!("Error: {ours}"));
    }

    let (code, _, stderr) = bench(&["check-perf", "--load", "huge", "--endpoints", &endpoint]);
    assert_eq!(
        (code, stderr.trim()),
        (1, "ringkv-bench: invalid option: unknown load option huge")
    );
    assert_eq!(server.stop().await.unwrap(), "exit status: 0");
}

#[test]
fn compare_writes_report_histograms_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ringkv = ringkv_binary();
    let data_root = dir.path().join("data");
    let mut args = vec![
        "compare",
        "put",
        "--duration",
        "1",
        "--clients",
        "4",
        "--key-space-size",
        "100",
        "--rounds",
        "1",
        "--ringkv",
        ringkv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--data-root",
        data_root.to_str().unwrap(),
    ];
    let etcd = etcd_binary();
    if etcd.is_none() {
        args.extend(["--only", "ringkv"]);
    }
    let (code, stdout, stderr) = bench(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for file in [
        "report.md",
        "results.json",
        "latency-cdf.svg",
        "throughput.svg",
    ] {
        assert!(out.join(file).is_file(), "no {file}");
    }
    assert!(out.join("histograms/round1-ringkv-put.hgrm").is_file());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| throughput (req/s) |"), "{report}");
    assert!(
        report.contains("![latency CDF](latency-cdf.svg)"),
        "{report}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rounds = results["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), if etcd.is_some() { 2 } else { 1 });
    for round in rounds {
        assert!(
            round["summary"]["requests"].as_u64().unwrap() > 0,
            "{round}"
        );
    }
    let svg = std::fs::read_to_string(out.join("latency-cdf.svg")).unwrap();
    assert!(svg.contains("ringkv (all rounds)"));
}

#[test]
fn compare_reports_an_unsupported_server_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ringkv = ringkv_binary();
    let (code, stdout, stderr) = bench(&[
        "compare",
        "lease-keepalive",
        "--duration",
        "0.5",
        "--rounds",
        "2",
        "--only",
        "ringkv",
        "--ringkv",
        ringkv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rounds = results["rounds"].as_array().unwrap();
    if rounds[0]["unsupported"].is_string() {
        // Not served: said once, not retried in round 2, and the table says why.
        assert_eq!(rounds.len(), 1, "{results}");
        assert!(
            stdout.contains("round 1 ringkv: unsupported: LeaseGrant: Unimplemented"),
            "{stdout}"
        );
        assert!(
            report.contains("| throughput (req/s) | unsupported |"),
            "{report}"
        );
        assert!(report.contains("## Not measured"), "{report}");
    } else {
        assert_eq!(rounds.len(), 2, "{results}");
        assert!(rounds[0]["summary"]["requests"].as_u64().unwrap() > 0);
    }
}

#[test]
fn cluster_sizes_and_bad_combinations_are_clear_errors() {
    let (code, _, stderr) = bench(&["compare", "put", "--members", "8", "--ringkv", "/bin/true"]);
    assert_eq!(
        (code, stderr.trim()),
        (
            1,
            "ringkv-bench: invalid option: --members must be 1..=7, not 8"
        )
    );
    let (code, _, stderr) = bench(&["compare", "--ringkv", "/bin/true"]);
    assert_eq!(
        (code, stderr.trim()),
        (1, "ringkv-bench: invalid option: give a workload (put, range, txn-put, ...) or --suite standard")
    );
    let (code, _, stderr) = bench(&[
        "txn-put",
        "--txn-ops",
        "3",
        "--endpoints",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(
        (code, stderr.trim()),
        (
            1,
            "ringkv-bench: invalid option: expected --txn-ops no larger than --key-space-size, got txn-ops(3) key-space-size(1)"
        )
    );
}
