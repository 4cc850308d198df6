//! `smoke`: proves every workload still works, not how fast it is. Each server is started once
//! and every workload runs against it for about `seconds` with tiny parameters; a workload
//! passes when it made successful requests and no errors (check-perf's verdict is ignored: a
//! second is too short for its rules). Then one one-round `compare put` writes a full report with
//! charts into `out`. A server may be allowed to answer Unimplemented (ringkv while Watch and
//! Lease are being built); anything else that goes wrong fails the smoke.

use crate::check;
use crate::compare::{self, CompareConfig, ServerSpec};
use crate::defrag::DefragSpec;
use crate::load::LoadConfig;
use crate::server::ServerProcess;
use crate::workload::{self, RangeSpec, WatchGetSpec, WatchLatencySpec, Workload};
use crate::BenchError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SmokeConfig {
    /// Each server with whether Unimplemented is tolerated on it.
    pub servers: Vec<(ServerSpec, bool)>,
    pub seconds: f64,
    pub out: PathBuf,
    pub data_root: PathBuf,
}

fn tiny(seconds: f64, clients: usize) -> LoadConfig {
    LoadConfig {
        endpoints: Vec::new(),
        conns: 2,
        clients,
        total: None,
        duration: Some(Duration::from_secs_f64(seconds)),
        key_size: 8,
        val_size: 64,
        key_space_size: 100,
        sequential_keys: false,
        rate: 0.0,
        request_timeout: Duration::from_secs(10),
    }
}

fn range(serializable: bool, all_keys: bool) -> RangeSpec {
    RangeSpec {
        key: if all_keys { vec![0] } else { b"foo".to_vec() },
        range_end: if all_keys { vec![0] } else { Vec::new() },
        serializable,
        limit: if all_keys { 10 } else { 0 },
        keys_only: all_keys,
        count_only: false,
        fill_keys: 0,
    }
}

/// Every workload, with parameters small enough for about `seconds` each.
pub fn workloads(seconds: f64) -> Vec<(LoadConfig, Workload)> {
    let mut out = vec![
        (tiny(seconds, 4), Workload::Put),
        (tiny(seconds, 4), Workload::Range(range(false, false))),
        (tiny(seconds, 4), Workload::Range(range(true, true))),
        (
            tiny(seconds, 4),
            Workload::Range(RangeSpec {
                fill_keys: 200,
                ..range(true, false)
            }),
        ),
        (tiny(seconds, 4), Workload::TxnPut { txn_ops: 4 }),
        (
            tiny(seconds, 4),
            Workload::TxnMixed {
                rw_ratio: 1.0,
                read: range(false, true),
            },
        ),
        (tiny(seconds, 2), Workload::LeaseKeepalive),
    ];
    let mut watch = tiny(seconds, 1);
    watch.total = Some((100.0 * seconds).ceil() as u64);
    out.push((
        watch,
        Workload::WatchLatency(WatchLatencySpec {
            streams: 2,
            watchers_per_stream: 3,
            prev_kv: true,
            put_rate: 100.0,
        }),
    ));
    out.push((
        tiny(seconds, 1),
        Workload::WatchGet(WatchGetSpec {
            watchers: 50,
            streams: 2,
            events: 8,
        }),
    ));
    // 4 MiB of fill: enough for a Defragment with work to do, small enough for CI.
    let mut defrag = tiny(seconds, 4);
    defrag.rate = 200.0;
    out.push((
        defrag,
        Workload::Defrag(DefragSpec {
            fill_bytes: 4 << 20,
            fill_val_size: 64 << 10,
            fill_clients: 4,
            baseline_s: seconds / 2.0,
            after_s: seconds / 2.0,
        }),
    ));
    let load = check::LOADS[0];
    out.push((
        workload::check_perf_config(Vec::new(), load, Some(seconds)),
        Workload::CheckPerf {
            load,
            prefix: check::DEFAULT_PREFIX.to_owned(),
        },
    ));
    out
}

/// Returns whether everything passed; prints one line per server and workload.
pub async fn run(config: &SmokeConfig) -> Result<bool, BenchError> {
    let logs = config.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(BenchError::io(format!("create {}", logs.display())))?;
    let mut all_passed = true;
    for (spec, allow_unsupported) in &config.servers {
        let data_dir = config.data_root.join(format!(
            "ringkv-bench-smoke-{}-{}",
            std::process::id(),
            spec.name
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let log = logs.join(format!("smoke-{}.log", spec.name));
        let mut server =
            ServerProcess::start(&spec.name, &spec.binary, &data_dir, &spec.args, &log).await?;
        for (mut load, workload) in workloads(config.seconds) {
            load.endpoints = vec![server.endpoint()];
            let name = workload.name();
            let outcome = match workload::prepare(&load, &workload).await {
                Ok(()) => workload::run(&load, &workload).await,
                Err(error) => Err(error),
            };
            let (passed, line) = match outcome {
                Ok(summary) if summary.requests > 0 && summary.errors == 0 => {
                    (true, format!("ok, {} requests", summary.requests))
                }
                Ok(summary) => (
                    false,
                    format!(
                        "FAILED: {} requests, {} errors ({})",
                        summary.requests,
                        summary.errors,
                        summary.first_error.unwrap_or_default()
                    ),
                ),
                Err(BenchError::Unsupported { message, .. }) if *allow_unsupported => (
                    true,
                    format!("unsupported by this server (allowed): {message}"),
                ),
                Err(error) => (false, format!("FAILED: {error}")),
            };
            println!("smoke {} {name}: {line}", spec.name);
            all_passed &= passed;
        }
        let stopped = server.stop().await?;
        let _ = std::fs::remove_dir_all(&data_dir);
        if stopped != "exit status: 0" && stopped != "signal: 15 (SIGTERM)" {
            println!("smoke {}: FAILED: stopped with {stopped}", spec.name);
            all_passed = false;
        }
    }

    let mut load = tiny(config.seconds, 4);
    load.key_space_size = 1000;
    let compare = CompareConfig {
        load,
        workload: Workload::Put,
        servers: config
            .servers
            .iter()
            .map(|(spec, _)| spec.clone())
            .collect(),
        rounds: 1,
        members: 1,
        out: config.out.join("compare-put"),
        data_root: config.data_root.clone(),
    };
    compare::run(&compare).await?;
    for file in [
        "report.md",
        "results.json",
        "latency-cdf.svg",
        "throughput.svg",
    ] {
        if !compare.out.join(file).is_file() {
            println!("smoke compare: FAILED: no {file}");
            all_passed = false;
        }
    }
    Ok(all_passed)
}
