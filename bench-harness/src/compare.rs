//! Side-by-side runs: for each round, each server (ringkv, then etcd; one member or a
//! `--members N` cluster, see `cluster`) on fresh data dirs and free loopback ports, the same
//! workload; then, in the output dir, `report.md` (medians over
//! rounds and the ringkv/etcd ratio), `results.json` (every round's raw figures),
//! `histograms/` (HdrHistogram percentile text per round), `latency-cdf.svg` and
//! `throughput.svg`, and `logs/` (server output).
//!
//! A server that does not serve the workload (it answers Unimplemented) is reported as such and
//! skipped in later rounds; a workload that fails on a server is recorded for that round. Only
//! a server that cannot start, or an unwritable output dir, stops the comparison.

use crate::chart;
use crate::cluster::{self, Cluster};
use crate::disk;
use crate::load::LoadConfig;
use crate::server;
use crate::summary::{self, Summary};
use crate::workload::{self, Workload};
use crate::BenchError;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the fdatasync probe runs.
const FDATASYNC_PROBE: Duration = Duration::from_secs(2);

/// One server under comparison.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    pub binary: PathBuf,
    /// Flags after the standard single-member ones.
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The workload's options; `endpoints` is filled in per server.
    pub load: LoadConfig,
    pub workload: Workload,
    /// In run order; the first is the numerator of the ratio column.
    pub servers: Vec<ServerSpec>,
    pub rounds: u32,
    /// Cluster size: 1, or a static loopback cluster whose clients' connections go leader first,
    /// then round-robin over every member.
    pub members: u32,
    pub out: PathBuf,
    pub data_root: PathBuf,
}

/// One server in one round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundResult {
    pub round: u32,
    pub server: String,
    /// The figures, unless the workload did not run.
    pub summary: Option<Summary>,
    /// The server does not serve this workload (it answered Unimplemented).
    pub unsupported: Option<String>,
    /// The workload failed on this server (setup or stream errors).
    pub failed: Option<String>,
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
    load_average_before: String,
}

#[derive(Debug, Serialize)]
struct Results {
    commit: String,
    workload: String,
    /// Members per server (a static loopback cluster when more than 1).
    members: u32,
    definition: Workload,
    options: LoadConfig,
    machine: Machine,
    servers: Vec<ServerInfo>,
    rounds: Vec<RoundResult>,
}

/// What a suite needs from one comparison: per server, medians or why there are none.
#[derive(Debug, Clone, Serialize)]
pub struct ServerOutcome {
    pub name: String,
    pub throughput_rps: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub errors: Option<f64>,
    /// check-perf: rounds that passed etcdctl's rules, of rounds run.
    pub check_passed: Option<(u32, u32)>,
    /// "unsupported: ..." or "failed: ..." when no round produced figures.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareOutcome {
    pub workload: String,
    pub servers: Vec<ServerOutcome>,
}

/// The standard servers: ringkv then reference etcd.
pub fn standard_servers(
    ringkv: &Path,
    ringkv_args: &[String],
    etcd: &Path,
    etcd_args: &[String],
) -> Vec<ServerSpec> {
    vec![
        ServerSpec {
            name: "ringkv".into(),
            binary: ringkv.to_owned(),
            args: ringkv_args.to_vec(),
        },
        ServerSpec {
            name: "etcd".into(),
            binary: etcd.to_owned(),
            args: etcd_args.to_vec(),
        },
    ]
}

/// Today's date (UTC) as YYYY-MM-DD, for default report directory names.
pub fn utc_date() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Fails unless the comparison can run as asked.
pub fn check_config(config: &CompareConfig) -> Result<(), BenchError> {
    if config.rounds == 0 {
        return Err(BenchError::Config("--rounds must be at least 1".into()));
    }
    if config.members == 0 || config.members > cluster::MAX_MEMBERS {
        return Err(BenchError::Config(format!(
            "--members must be 1..={}, not {}",
            cluster::MAX_MEMBERS,
            config.members
        )));
    }
    if config.servers.is_empty() {
        return Err(BenchError::Config("no server to run".into()));
    }
    let mut load = config.load.clone();
    load.endpoints = vec!["http://127.0.0.1:1".into()];
    config.workload.validate(&load)
}

pub async fn run(config: &CompareConfig) -> Result<CompareOutcome, BenchError> {
    check_config(config)?;
    let logs = config.out.join("logs");
    create_dir(&logs)?;
    create_dir(&config.out.join("histograms"))?;
    create_dir(&config.data_root)?;
    let load_average_before = load_average();

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

    let mut infos: Vec<ServerInfo> = config
        .servers
        .iter()
        .map(|spec| ServerInfo {
            name: spec.name.clone(),
            binary: spec.binary.display().to_string(),
            version: server::version(&spec.binary),
            args: Vec::new(),
        })
        .collect();
    let mut rounds: Vec<RoundResult> = Vec::new();
    for round in 1..=config.rounds {
        for (index, spec) in config.servers.iter().enumerate() {
            let unsupported_before = rounds
                .iter()
                .any(|r| r.server == spec.name && r.unsupported.is_some());
            if unsupported_before {
                continue;
            }
            let (result, args) = run_one(config, round, spec, &logs).await?;
            print_round(&result);
            if infos[index].args.is_empty() {
                infos[index].args = args;
            }
            rounds.push(result);
        }
    }

    let workload_name = config.workload.name();
    let results = Results {
        commit: git_commit(&config.servers[0].binary),
        workload: workload_name.clone(),
        members: config.members,
        definition: config.workload.clone(),
        options: config.load.clone(),
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpu_model(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |kernel| kernel.trim().to_owned()),
            data_root: config.data_root.display().to_string(),
            fdatasync,
            load_average_before,
        },
        servers: infos,
        rounds,
    };
    let json = serde_json::to_string_pretty(&results).expect("results serialize");
    write(&config.out.join("results.json"), &json)?;
    write_histograms(&config.out.join("histograms"), &results.rounds)?;
    write_charts(&config.out, &workload_name, &results)?;
    let report = report_markdown(&results);
    write(&config.out.join("report.md"), &report)?;
    print!("{report}");
    Ok(outcome(&results))
}

pub(crate) fn create_dir(path: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(path).map_err(BenchError::io(format!("create {}", path.display())))
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(BenchError::io(format!("write {}", path.display())))
}

fn print_round(result: &RoundResult) {
    let (round, name) = (result.round, &result.server);
    match (&result.summary, &result.unsupported, &result.failed) {
        (Some(summary), _, _) => println!(
            "round {round} {name:<6}: {:.1} req/s, p50 {} us, p99 {} us, errors {}, rss {} MiB, cpu {:.2} s",
            summary.throughput_rps,
            summary.latency_us.p50,
            summary.latency_us.p99,
            summary.errors,
            result.peak_rss_kib / 1024,
            result.cpu_workload_s
        ),
        (None, Some(message), _) => println!("round {round} {name:<6}: unsupported: {message}"),
        (None, None, failed) => println!(
            "round {round} {name:<6}: failed: {}",
            failed.as_deref().unwrap_or("no figures")
        ),
    }
}

/// Start, preload, run, measure, stop, clean up.
async fn run_one(
    config: &CompareConfig,
    round: u32,
    spec: &ServerSpec,
    logs: &Path,
) -> Result<(RoundResult, Vec<String>), BenchError> {
    let name = &spec.name;
    let data_dir = config.data_root.join(format!(
        "ringkv-bench-{}-r{round}-{name}",
        std::process::id()
    ));
    let log_prefix = logs.join(format!("round{round}-{name}"));
    let mut servers = Cluster::start(
        name,
        &spec.binary,
        config.members,
        &data_dir,
        &spec.args,
        &log_prefix,
    )
    .await?;
    let mut load = config.load.clone();
    load.endpoints = servers.endpoints_leader_first().await?;
    // The setup (a range's keys) is not part of the workload's CPU time.
    let prepared = workload::prepare(&load, &config.workload).await;
    let cpu_before = servers.cpu_seconds()?;
    let outcome = match prepared {
        Ok(()) => workload::run(&load, &config.workload).await,
        Err(error) => Err(error),
    };
    let cpu_workload_s = servers.cpu_seconds()? - cpu_before;
    let peak_rss_kib = servers.peak_rss_kib()?;
    let exit_status = servers.stop().await?;
    let _ = std::fs::remove_dir_all(&data_dir);
    // Member 1's flags: its --initial-cluster names the others'.
    let args = servers.members[0].args.clone();
    let (summary, unsupported, failed) = match outcome {
        Ok(summary) => (Some(summary), None, None),
        Err(BenchError::Unsupported { message, .. }) => (None, Some(message), None),
        Err(error) => (None, None, Some(error.to_string())),
    };
    let requests = summary.as_ref().map_or(0, |s| s.requests);
    let result = RoundResult {
        round,
        server: name.clone(),
        summary,
        unsupported,
        failed,
        peak_rss_kib,
        cpu_workload_s,
        cpu_per_request_us: if requests > 0 {
            cpu_workload_s * 1e6 / requests as f64
        } else {
            0.0
        },
        exit_status,
    };
    Ok((result, args))
}

/// HdrHistogram's percentile-distribution text, one file per round and server (and part).
fn write_histograms(dir: &Path, rounds: &[RoundResult]) -> Result<(), BenchError> {
    for result in rounds {
        let Some(summary) = &result.summary else {
            continue;
        };
        for part in std::iter::once(summary).chain(&summary.parts) {
            let file = format!(
                "round{}-{}-{}.hgrm",
                result.round, result.server, part.workload
            );
            write(
                &dir.join(file),
                &percentile_distribution(&part.histogram_us),
            )?;
        }
    }
    Ok(())
}

/// The `.hgrm` layout HdrHistogram's plotters read; values in microseconds.
pub fn percentile_distribution(buckets: &[(u64, u64)]) -> String {
    let histogram = summary::histogram_from_buckets(buckets);
    let mut out = String::from("# latency in microseconds\n");
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if histogram.is_empty() {
        return out;
    }
    let mut seen = 0;
    for step in histogram.iter_quantiles(5) {
        seen += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - quantile))
        } else {
            format!("{:>14}", "inf")
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {inverse}",
            histogram.highest_equivalent(step.value_iterated_to()) as f64,
            quantile,
            seen
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean(),
        histogram.stdev()
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64,
        histogram.len()
    );
    out
}

fn write_charts(out: &Path, workload: &str, results: &Results) -> Result<(), BenchError> {
    let mut cdf = Vec::new();
    for info in &results.servers {
        let mut merged = summary::new_histogram();
        for summary in results
            .rounds
            .iter()
            .filter(|r| r.server == info.name)
            .filter_map(|r| r.summary.as_ref())
        {
            merged
                .add(summary::histogram_from_buckets(&summary.histogram_us))
                .expect("same bounds");
        }
        let buckets = Summary::new(
            "",
            &merged,
            &std::collections::BTreeMap::new(),
            &[],
            Duration::ZERO,
        )
        .histogram_us;
        cdf.push((format!("{} (all rounds)", info.name), buckets));
    }
    chart::latency_cdf(
        &out.join("latency-cdf.svg"),
        &format!("{workload}: latency CDF"),
        &cdf,
    )?;
    let timelines: Vec<(String, Vec<u64>)> = results
        .rounds
        .iter()
        .filter_map(|r| {
            r.summary.as_ref().map(|s| {
                (
                    format!("{} r{}", r.server, r.round),
                    s.timeline_per_s.clone(),
                )
            })
        })
        .collect();
    // The defrag workload marks where each round's Defragment ran.
    let windows: Vec<(String, f64, f64)> = results
        .rounds
        .iter()
        .filter_map(|r| {
            let figures = &r.summary.as_ref()?.figures;
            Some((
                format!("{} r{} defrag", r.server, r.round),
                *figures.get(crate::defrag::WINDOW_START)?,
                *figures.get(crate::defrag::WINDOW_END)?,
            ))
        })
        .collect();
    chart::throughput_with_windows(
        &out.join("throughput.svg"),
        &format!("{workload}: successful requests per second"),
        &timelines,
        &windows,
    )
}

/// The commit of the checkout the (first) server binary was built in, e.g. `target/release/`.
pub(crate) fn git_commit(binary: &Path) -> String {
    let dir = binary
        .canonicalize()
        .ok()
        .and_then(|path| path.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
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

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.is_empty() {
        None
    } else if values.len() % 2 == 1 {
        Some(values[middle])
    } else {
        Some(f64::midpoint(values[middle - 1], values[middle]))
    }
}

/// (figure, which way is better, how to read it from one round with figures).
type Figure = (
    &'static str,
    &'static str,
    fn(&RoundResult, &Summary) -> f64,
);

const FIGURES: &[Figure] = &[
    ("throughput (req/s)", "higher", |_, s| s.throughput_rps),
    ("p50 (us)", "lower", |_, s| s.latency_us.p50 as f64),
    ("p90 (us)", "lower", |_, s| s.latency_us.p90 as f64),
    ("p99 (us)", "lower", |_, s| s.latency_us.p99 as f64),
    ("p99.9 (us)", "lower", |_, s| s.latency_us.p999 as f64),
    ("max (us)", "lower", |_, s| s.latency_us.max as f64),
    ("mean (us)", "lower", |_, s| s.latency_us.mean),
    ("stddev (us)", "lower", |_, s| s.latency_us.stddev),
    ("requests", "-", |_, s| s.requests as f64),
    ("errors", "lower", |_, s| s.errors as f64),
    ("peak RSS (MiB)", "lower", |r, _| {
        r.peak_rss_kib as f64 / 1024.0
    }),
    ("server CPU in workload (s)", "lower", |r, _| {
        r.cpu_workload_s
    }),
    ("server CPU per request (us)", "lower", |r, _| {
        r.cpu_per_request_us
    }),
];

/// Median of `read` over the rounds of `server` that have figures (for part `part`, if given).
fn median_of(
    rounds: &[RoundResult],
    server: &str,
    part: Option<&str>,
    read: fn(&RoundResult, &Summary) -> f64,
) -> Option<f64> {
    median(
        rounds
            .iter()
            .filter(|r| r.server == server)
            .filter_map(|r| {
                let summary = r.summary.as_ref()?;
                let summary = match part {
                    None => summary,
                    Some(name) => summary.parts.iter().find(|p| p.workload == name)?,
                };
                Some(read(r, summary))
            })
            .collect(),
    )
}

/// Why a server has no figures, for the table cells and notes.
fn server_note(rounds: &[RoundResult], server: &str) -> Option<String> {
    let mine: Vec<&RoundResult> = rounds.iter().filter(|r| r.server == server).collect();
    if mine.iter().any(|r| r.summary.is_some()) {
        return None;
    }
    mine.iter().find_map(|r| {
        r.unsupported
            .as_ref()
            .map(|m| format!("unsupported: {m}"))
            .or_else(|| r.failed.as_ref().map(|m| format!("failed: {m}")))
    })
}

fn outcome(results: &Results) -> CompareOutcome {
    let servers = results
        .servers
        .iter()
        .map(|info| {
            let name = info.name.as_str();
            let rounds = &results.rounds;
            let checks: Vec<bool> = rounds
                .iter()
                .filter(|r| r.server == name)
                .filter_map(|r| r.summary.as_ref()?.check.as_ref().map(|c| c.pass))
                .collect();
            ServerOutcome {
                name: name.to_owned(),
                throughput_rps: median_of(rounds, name, None, |_, s| s.throughput_rps),
                p50_us: median_of(rounds, name, None, |_, s| s.latency_us.p50 as f64),
                p99_us: median_of(rounds, name, None, |_, s| s.latency_us.p99 as f64),
                errors: median_of(rounds, name, None, |_, s| s.errors as f64),
                check_passed: (!checks.is_empty()).then(|| {
                    (
                        checks.iter().filter(|pass| **pass).count() as u32,
                        checks.len() as u32,
                    )
                }),
                note: server_note(rounds, name),
            }
        })
        .collect();
    CompareOutcome {
        workload: results.workload.clone(),
        servers,
    }
}

fn figure_table(out: &mut String, results: &Results, part: Option<&str>) {
    let names: Vec<&str> = results.servers.iter().map(|s| s.name.as_str()).collect();
    let _ = write!(out, "| figure |");
    for name in &names {
        let _ = write!(out, " {name} |");
    }
    let ratio_header = if names.len() == 2 {
        format!(" {}/{} |", names[0], names[1])
    } else {
        String::new()
    };
    let _ = writeln!(out, "{ratio_header} better |");
    let _ = writeln!(
        out,
        "|---|{}{}---|",
        "---:|".repeat(names.len()),
        if names.len() == 2 { "---:|" } else { "" }
    );
    for (figure, better, read) in FIGURES {
        // Process figures belong to the whole run, not to a part.
        if part.is_some() && figure.contains("RSS") || part.is_some() && figure.contains("CPU") {
            continue;
        }
        let values: Vec<Option<f64>> = names
            .iter()
            .map(|name| median_of(&results.rounds, name, part, *read))
            .collect();
        let _ = write!(out, "| {figure} |");
        for (name, value) in names.iter().zip(&values) {
            if let Some(value) = value {
                let _ = write!(out, " {value:.1} |");
            } else {
                let why = server_note(&results.rounds, name).map_or("-", |note| {
                    if note.starts_with("unsupported") {
                        "unsupported"
                    } else {
                        "failed"
                    }
                });
                let _ = write!(out, " {why} |");
            }
        }
        if names.len() == 2 {
            let ratio = match (values[0], values[1]) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "-".to_owned(),
            };
            let _ = write!(out, " {ratio} |");
        }
        let _ = writeln!(out, " {better} |");
    }
}

/// The workload's own figures (`Summary::figures`), median over rounds, one row each.
fn workload_figures(out: &mut String, results: &Results) {
    let mut figure_names: Vec<&String> = results
        .rounds
        .iter()
        .filter_map(|r| r.summary.as_ref())
        .flat_map(|s| s.figures.keys())
        .collect();
    figure_names.sort();
    figure_names.dedup();
    if figure_names.is_empty() {
        return;
    }
    let names: Vec<&str> = results.servers.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(out, "\n### {} figures\n", results.workload);
    let _ = writeln!(out, "| figure | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(names.len()));
    for figure in figure_names {
        let _ = write!(out, "| {figure} |");
        for name in &names {
            let value = median(
                results
                    .rounds
                    .iter()
                    .filter(|r| r.server == *name)
                    .filter_map(|r| r.summary.as_ref()?.figures.get(figure).copied())
                    .collect(),
            );
            match value {
                Some(value) => {
                    let _ = write!(out, " {value:.1} |");
                }
                None => {
                    let _ = write!(out, " - |");
                }
            }
        }
        let _ = writeln!(out);
    }
}

fn report_markdown(results: &Results) -> String {
    let mut out = String::new();
    let machine = &results.machine;
    let rounds = results
        .rounds
        .iter()
        .map(|r| r.round)
        .max()
        .unwrap_or_default();
    let names: Vec<&str> = results.servers.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(
        out,
        "# {}: {} ({rounds} rounds)\n",
        names.join(" vs "),
        results.workload
    );
    let _ = writeln!(
        out,
        "Medians over rounds; each round runs {} in turn on a fresh data dir.\n",
        names.join(", ")
    );
    if results.members > 1 {
        let _ = writeln!(
            out,
            "Each server is a {}-member cluster on loopback (static bootstrap, fresh data dirs). \
             The load's connections go to the leader first, then round-robin over every \
             member (one connection: the leader only). Peak RSS and CPU are sums over the \
             members.\n",
            results.members
        );
    }
    figure_table(&mut out, results, None);
    let part_names: Vec<String> = results
        .rounds
        .iter()
        .filter_map(|r| r.summary.as_ref())
        .flat_map(|s| s.parts.iter().map(|p| p.workload.clone()))
        .fold(Vec::new(), |mut names, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        });
    for part in &part_names {
        let _ = writeln!(out, "\n### {part}\n");
        figure_table(&mut out, results, Some(part));
    }
    workload_figures(&mut out, results);
    let notes: Vec<String> = names
        .iter()
        .filter_map(|name| {
            server_note(&results.rounds, name).map(|note| format!("- {name}: {note}"))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Not measured\n\n{}", notes.join("\n"));
    }
    let checks: Vec<&RoundResult> = results
        .rounds
        .iter()
        .filter(|r| r.summary.as_ref().is_some_and(|s| s.check.is_some()))
        .collect();
    if !checks.is_empty() {
        let _ = writeln!(out, "\n## etcdctl check perf verdicts\n");
        for result in checks {
            let check = result
                .summary
                .as_ref()
                .and_then(|s| s.check.as_ref())
                .expect("filtered");
            let _ = writeln!(
                out,
                "- round {} {}: {}",
                result.round,
                result.server,
                check.lines.join("; ")
            );
        }
    }
    let errors: Vec<String> = results
        .rounds
        .iter()
        .filter_map(|r| {
            let summary = r.summary.as_ref()?;
            (summary.errors > 0).then(|| {
                let messages: Vec<String> = summary
                    .error_counts
                    .iter()
                    .map(|(message, count)| format!("{count} x {message}"))
                    .collect();
                format!("- round {} {}: {}", r.round, r.server, messages.join("; "))
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n## Errors\n\n{}", errors.join("\n"));
    }
    let _ = writeln!(
        out,
        "\n![latency CDF](latency-cdf.svg)\n\n![throughput over time](throughput.svg)\n"
    );
    let _ = writeln!(out, "## Run\n");
    let _ = writeln!(out, "- commit: {}", results.commit);
    let _ = writeln!(out, "- workload: `{:?}`", results.definition);
    let options = &results.options;
    let _ = writeln!(
        out,
        "- options: conns {}, clients {}, total {:?}, duration {:?}, key size {}, value size {}, \
         key space {}, sequential {}, rate {}",
        options.conns,
        options.clients,
        options.total,
        options.duration,
        options.key_size,
        options.val_size,
        options.key_space_size,
        options.sequential_keys,
        options.rate
    );
    let _ = writeln!(
        out,
        "- machine: {} cores, {}, kernel {}, load average before {}",
        machine.cores, machine.cpu_model, machine.kernel, machine.load_average_before
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
        "\nThe load generator runs on the same machine as the server; raw per-round figures are \
         in results.json, histograms in histograms/ (HdrHistogram percentile text, µs)."
    );
    out
}

/// The machine's 1, 5 and 15 minute load averages as `/proc/loadavg` gives them ("" where it
/// cannot be read), for a report's account of how busy the machine was.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_medians() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn percentile_text_ends_at_the_max() {
        let text = percentile_distribution(&[(100, 9), (5000, 1)]);
        assert!(text.contains("Percentile"), "{text}");
        assert!(
            text.contains("#[Max     =     5003.000, Total count    =           10]"),
            "{text}"
        );
        assert!(percentile_distribution(&[]).lines().count() == 3);
    }

    #[test]
    fn member_counts_are_checked() {
        let config = CompareConfig {
            load: LoadConfig {
                endpoints: Vec::new(),
                conns: 1,
                clients: 1,
                total: Some(1),
                duration: None,
                key_size: 8,
                val_size: 8,
                key_space_size: 1,
                sequential_keys: false,
                rate: 0.0,
                request_timeout: Duration::from_secs(1),
            },
            workload: Workload::Put,
            servers: standard_servers(Path::new("ringkv"), &[], Path::new("etcd"), &[]),
            rounds: 1,
            members: 3,
            out: PathBuf::from("/nonexistent"),
            data_root: PathBuf::from("/nonexistent"),
        };
        assert!(check_config(&config).is_ok());
        let error = check_config(&CompareConfig {
            members: 0,
            ..config.clone()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(error, "invalid option: --members must be 1..=7, not 0");
        let error = check_config(&CompareConfig {
            members: 8,
            ..config
        })
        .unwrap_err()
        .to_string();
        assert_eq!(error, "invalid option: --members must be 1..=7, not 8");
    }
}
