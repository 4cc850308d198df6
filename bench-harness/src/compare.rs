//! Side-by-side runs: for each round, ringkv then etcd, each on a fresh data dir and free
//! loopback ports, the same workload, then `report.md` (medians over rounds and the
//! ringkv/etcd ratio) and `results.json` (every round's raw figures) in the output dir.

use crate::disk;
use crate::load::{self, LoadConfig, Operation};
use crate::server::{self, ServerProcess};
use crate::summary::Summary;
use crate::BenchError;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the fdatasync probe runs.
const FDATASYNC_PROBE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The workload; `endpoints` is filled in per server.
    pub load: LoadConfig,
    pub operation: Operation,
    pub ringkv: PathBuf,
    pub etcd: PathBuf,
    pub rounds: u32,
    pub out: PathBuf,
    pub data_root: PathBuf,
    pub ringkv_args: Vec<String>,
    pub etcd_args: Vec<String>,
}

/// One server in one round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundResult {
    pub round: u32,
    pub server: String,
    pub summary: Summary,
    /// VmHWM just before SIGTERM: the peak over startup, preload and workload.
    pub peak_rss_kib: u64,
    /// Server CPU (user + system) spent during the workload only.
    pub cpu_workload_s: f64,
    pub cpu_per_request_us: f64,
    /// How the server ended after SIGTERM.
    pub exit_status: String,
}

#[derive(Debug, Serialize)]
struct ServerInfo {
    name: String,
    binary: String,
    version: String,
    /// Flags of the first round (ports and data dir differ per round).
    args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    cpu_model: String,
    kernel: String,
    data_root: String,
    fdatasync: Summary,
}

#[derive(Debug, Serialize)]
struct Results {
    commit: String,
    workload: String,
    options: String,
    machine: Machine,
    servers: Vec<ServerInfo>,
    rounds: Vec<RoundResult>,
}

pub async fn run(config: CompareConfig) -> Result<(), BenchError> {
    if config.rounds == 0 {
        return Err(BenchError::Config("--rounds must be at least 1".into()));
    }
    let logs = config.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(BenchError::io(format!("create {}", logs.display())))?;
    std::fs::create_dir_all(&config.data_root).map_err(BenchError::io("create --data-root"))?;

    let data_root = config.data_root.clone();
    let fdatasync =
        tokio::task::spawn_blocking(move || disk::fdatasync_probe(&data_root, FDATASYNC_PROBE))
            .await
            .expect("probe thread")?;
    println!(
        "fdatasync (256 B, {}): p50 {} us, p99 {} us",
        config.data_root.display(),
        fdatasync.latency_us.p50,
        fdatasync.latency_us.p99
    );

    let servers = [
        ("ringkv", &config.ringkv, &config.ringkv_args),
        ("etcd", &config.etcd, &config.etcd_args),
    ];
    let mut infos: Vec<ServerInfo> = servers
        .iter()
        .map(|(name, binary, _)| ServerInfo {
            name: (*name).to_owned(),
            binary: binary.display().to_string(),
            version: server::version(binary),
            args: Vec::new(),
        })
        .collect();
    let mut rounds = Vec::new();
    for round in 1..=config.rounds {
        for (index, (name, binary, extra_args)) in servers.iter().enumerate() {
            let (result, args) = run_one(&config, round, name, binary, extra_args, &logs).await?;
            println!(
                "round {round} {name:<6}: {:.1} req/s, p50 {} us, p99 {} us, errors {}, rss {} MiB, cpu {:.2} s",
                result.summary.throughput_rps,
                result.summary.latency_us.p50,
                result.summary.latency_us.p99,
                result.summary.errors,
                result.peak_rss_kib / 1024,
                result.cpu_workload_s
            );
            if infos[index].args.is_empty() {
                infos[index].args = args;
            }
            rounds.push(result);
        }
    }

    let results = Results {
        commit: git_commit(),
        workload: config.operation.name().to_owned(),
        options: format!("{:?}", config.load),
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpu_model(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |kernel| kernel.trim().to_owned()),
            data_root: config.data_root.display().to_string(),
            fdatasync,
        },
        servers: infos,
        rounds,
    };
    let json = serde_json::to_string_pretty(&results).expect("results serialize");
    write(&config.out.join("results.json"), &json)?;
    let report = report_markdown(&results);
    write(&config.out.join("report.md"), &report)?;
    print!("{report}");
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(BenchError::io(format!("write {}", path.display())))
}

/// Start, preload, run, measure, stop, clean up.
async fn run_one(
    config: &CompareConfig,
    round: u32,
    name: &str,
    binary: &Path,
    extra_args: &[String],
    logs: &Path,
) -> Result<(RoundResult, Vec<String>), BenchError> {
    let data_dir = config.data_root.join(format!(
        "ringkv-bench-{}-r{round}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    let log_path = logs.join(format!("round{round}-{name}.log"));
    let mut server = ServerProcess::start(name, binary, &data_dir, extra_args, &log_path).await?;
    if let Operation::Range { key, .. } = &config.operation {
        let value = load::pseudo_random_bytes(config.load.val_size, 1);
        load::put_once(&server.endpoint(), key, &value).await?;
    }
    let mut load = config.load.clone();
    load.endpoints = vec![server.endpoint()];
    let cpu_before = server.cpu_seconds()?;
    let summary = load::run(&load, &config.operation).await?;
    let cpu_workload_s = server.cpu_seconds()? - cpu_before;
    let peak_rss_kib = server.peak_rss_kib()?;
    let exit_status = server.stop().await?;
    let _ = std::fs::remove_dir_all(&data_dir);
    let cpu_per_request_us = if summary.requests > 0 {
        cpu_workload_s * 1e6 / summary.requests as f64
    } else {
        0.0
    };
    let result = RoundResult {
        round,
        server: name.to_owned(),
        summary,
        peak_rss_kib,
        cpu_workload_s,
        cpu_per_request_us,
        exit_status,
    };
    Ok((result, server.args.clone()))
}

fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(commit) = run(&["rev-parse", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    if dirty {
        format!("{commit} (uncommitted changes)")
    } else {
        commit
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.is_empty() {
        0.0
    } else if values.len() % 2 == 1 {
        values[middle]
    } else {
        f64::midpoint(values[middle - 1], values[middle])
    }
}

/// (figure, which way is better, how to read it from one round).
type Figure = (&'static str, &'static str, fn(&RoundResult) -> f64);

const FIGURES: &[Figure] = &[
    ("throughput (req/s)", "higher", |r| r.summary.throughput_rps),
    ("p50 (us)", "lower", |r| r.summary.latency_us.p50 as f64),
    ("p90 (us)", "lower", |r| r.summary.latency_us.p90 as f64),
    ("p99 (us)", "lower", |r| r.summary.latency_us.p99 as f64),
    ("p99.9 (us)", "lower", |r| r.summary.latency_us.p999 as f64),
    ("max (us)", "lower", |r| r.summary.latency_us.max as f64),
    ("mean (us)", "lower", |r| r.summary.latency_us.mean),
    ("stddev (us)", "lower", |r| r.summary.latency_us.stddev),
    ("requests", "-", |r| r.summary.requests as f64),
    ("errors", "lower", |r| r.summary.errors as f64),
    ("peak RSS (MiB)", "lower", |r| {
        r.peak_rss_kib as f64 / 1024.0
    }),
    ("server CPU in workload (s)", "lower", |r| r.cpu_workload_s),
    ("server CPU per request (us)", "lower", |r| {
        r.cpu_per_request_us
    }),
];

fn report_markdown(results: &Results) -> String {
    let mut out = String::new();
    let machine = &results.machine;
    let rounds = results
        .rounds
        .iter()
        .map(|r| r.round)
        .max()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "# ringkv vs etcd: {} ({rounds} rounds)\n",
        results.workload
    );
    let _ = writeln!(out, "Medians over rounds; rounds alternate ringkv, etcd.\n");
    let _ = writeln!(out, "| figure | ringkv | etcd | ringkv/etcd | better |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    for (figure, better, read) in FIGURES {
        let of = |server: &str| {
            median(
                results
                    .rounds
                    .iter()
                    .filter(|r| r.server == server)
                    .map(read)
                    .collect(),
            )
        };
        let (ringkv, etcd) = (of("ringkv"), of("etcd"));
        let ratio = if etcd == 0.0 {
            "-".to_owned()
        } else {
            format!("{:.2}", ringkv / etcd)
        };
        let _ = writeln!(
            out,
            "| {figure} | {ringkv:.1} | {etcd:.1} | {ratio} | {better} |"
        );
    }
    let _ = writeln!(out, "\n## Run\n");
    let _ = writeln!(out, "- commit: {}", results.commit);
    let _ = writeln!(out, "- workload options: `{}`", results.options);
    let _ = writeln!(
        out,
        "- machine: {} cores, {}, kernel {}",
        machine.cores, machine.cpu_model, machine.kernel
    );
    let _ = writeln!(
        out,
        "- disk ({}): 256 B pwrite+fdatasync p50 {} us, p99 {} us, mean {:.1} us over {} writes",
        machine.data_root,
        machine.fdatasync.latency_us.p50,
        machine.fdatasync.latency_us.p99,
        machine.fdatasync.latency_us.mean,
        machine.fdatasync.requests
    );
    for server in &results.servers {
        let _ = writeln!(
            out,
            "- {}: `{}` ({}), flags `{}`",
            server.name,
            server.binary,
            server.version,
            server.args.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "\nThe load generator runs on the same machine as the server; raw per-round figures and \
         histograms are in results.json."
    );
    out
}
