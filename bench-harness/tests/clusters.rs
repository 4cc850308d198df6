//! `compare --members 3` and `compare failover` against real three-member ringkv clusters (and
//! etcd ones when /usr/bin/etcd is installed): the report says what ran, every member's logs are
//! kept, the figures exist, and no member or data dir outlives the run.

mod bench_support;

use bench_support::{bench, etcd_binary, ringkv_binary};

/// The flags that put the report, logs and data dirs under `dir`, and pick the servers.
fn common_args(dir: &std::path::Path, out: &str) -> Vec<String> {
    let mut args = vec![
        "--rounds".to_owned(),
        "1".to_owned(),
        "--members".to_owned(),
        "3".to_owned(),
        "--ringkv".to_owned(),
        ringkv_binary().display().to_string(),
        "--out".to_owned(),
        dir.join(out).display().to_string(),
        "--data-root".to_owned(),
        dir.join("data").display().to_string(),
    ];
    if etcd_binary().is_none() {
        args.extend(["--only".to_owned(), "ringkv".to_owned()]);
    }
    args
}

fn servers() -> Vec<&'static str> {
    if etcd_binary().is_some() {
        vec!["ringkv", "etcd"]
    } else {
        vec!["ringkv"]
    }
}

/// Data dirs left under data/ (the fdatasync probe's file is removed too).
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("data"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compare_put_on_three_members_spreads_clients_over_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = ["compare", "put", "--total", "300", "--clients", "6"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    args.extend(["--conns".to_owned(), "3".to_owned()]);
    args.extend(common_args(dir.path(), "out"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = bench(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out = dir.path().join("out");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Each server is a 3-member cluster on loopback"),
        "{report}"
    );
    assert!(
        report.contains("--initial-cluster m1=http://127.0.0.1:"),
        "{report}"
    );
    assert!(
        report.contains("--initial-cluster-state new --initial-cluster-token ringkv-bench"),
        "{report}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["members"], 3);
    let rounds = results["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), servers().len());
    for round in rounds {
        assert_eq!(round["summary"]["requests"], 300, "{round}");
        assert_eq!(round["summary"]["errors"], 0, "{round}");
    }
    for server in servers() {
        for member in ["m1", "m2", "m3"] {
            let log = out.join(format!("logs/round1-{server}-{member}.log"));
            assert!(log.is_file(), "no {}", log.display());
        }
    }
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

#[test]
fn failover_times_a_new_leader_and_the_first_write_after_the_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = ["compare", "failover", "--trials", "1"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    args.extend(common_args(dir.path(), "out"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = bench(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out = dir.path().join("out");
    let trials: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let trials = trials.as_array().unwrap();
    assert_eq!(trials.len(), servers().len());
    for trial in trials {
        let elected = trial["leader_elected_ms"].as_f64().unwrap();
        let resumed = trial["writes_resumed_ms"].as_f64().unwrap();
        // A new leader needs an election timeout (1000 ms, randomised upwards, counted in
        // 100 ms ticks from the last heartbeat, which may be up to 100 ms before the kill) without
        // heartbeats: at least about 800 ms. A successful put needs a leader.
        assert!(elected >= 700.0, "{trial}");
        assert!(resumed >= 700.0, "{trial}");
        assert!(trial["puts_ok"].as_u64().unwrap() > 0, "{trial}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| leader elected, median |"), "{report}");
    assert!(
        report.contains("--heartbeat-interval 100 --election-timeout 1000"),
        "{report}"
    );
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );

    let (code, _, stderr) = bench(&[
        "compare",
        "failover",
        "--members",
        "1",
        "--ringkv",
        "/bin/true",
    ]);
    assert_eq!(
        (code, stderr.trim()),
        (
            1,
            "ringkv-bench: invalid option: failover needs a cluster that survives its leader: \
             --members 3..=7, not 1"
        )
    );
    let (code, _, stderr) = bench(&["failover", "--endpoints", "http://127.0.0.1:1"]);
    assert_eq!(code, 1, "{stderr}");
}
