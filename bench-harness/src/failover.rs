//! `compare failover --members 3`: how long a cluster is without a leader, and without writes,
//! after its leader crashes. Each trial, for each server in turn: a fresh cluster (the same
//! `--heartbeat-interval` and `--election-timeout` for both servers), a light open-loop put load
//! (`--write-rate` puts/s, each sent to a follower in turn, which forwards it; a put times out
//! after `PUT_TIMEOUT`) for `PRE_KILL`, then SIGKILL of the leader. From the kill:
//!
//! - `leader elected`: the first poll (Maintenance.Status on every survivor, every
//!   `POLL_INTERVAL`) in which a survivor names a leader other than the killed one;
//! - `writes resumed`: the first successful reply to a put sent after the kill.
//!
//! A trial that sees neither within `TRIAL_LIMIT` is recorded as such. The report has the
//! median and max over trials, and every trial.

use crate::cluster::{self, Cluster};
use crate::compare::{self, write, ServerSpec};
use crate::load;
use crate::BenchError;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::PutRequest;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the survivors' Status is polled after the kill.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long the put load runs before the kill.
const PRE_KILL: Duration = Duration::from_secs(1);
/// Longest wait for a put's reply (etcd's own request timeout is 5 s + 2 election timeouts).
const PUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait, from the kill, for a new leader and a successful put.
const TRIAL_LIMIT: Duration = Duration::from_secs(30);
/// Upper bounds on the options, so a typo cannot run for hours.
const MAX_TRIALS: u32 = 100;
const MAX_WRITE_RATE: f64 = 10_000.0;

#[derive(Debug, Clone)]
pub struct FailoverConfig {
    pub servers: Vec<ServerSpec>,
    pub members: u32,
    pub trials: u32,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// Puts per second of the background load.
    pub write_rate: f64,
    pub out: PathBuf,
    pub data_root: PathBuf,
}

/// One server in one trial; times in milliseconds from the SIGKILL.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub trial: u32,
    pub server: String,
    /// The killed leader's member name (`m1`..).
    pub killed: String,
    pub leader_elected_ms: Option<f64>,
    pub writes_resumed_ms: Option<f64>,
    /// Puts of the whole trial that succeeded, and that failed or timed out.
    pub puts_ok: u64,
    pub puts_failed: u64,
    /// Why puts failed: the gRPC status (code and message) or "timeout", with counts.
    pub put_errors: BTreeMap<String, u64>,
}

pub fn check_config(config: &FailoverConfig) -> Result<(), BenchError> {
    if config.members < 3 || config.members > cluster::MAX_MEMBERS {
        return Err(BenchError::Config(format!(
            "failover needs a cluster that survives its leader: --members 3..={}, not {}",
            cluster::MAX_MEMBERS,
            config.members
        )));
    }
    if config.trials == 0 || config.trials > MAX_TRIALS {
        return Err(BenchError::Config(format!(
            "--trials must be 1..={MAX_TRIALS}, not {}",
            config.trials
        )));
    }
    if !(config.write_rate > 0.0 && config.write_rate <= MAX_WRITE_RATE) {
        return Err(BenchError::Config(format!(
            "--write-rate must be in (0, {MAX_WRITE_RATE}], not {}",
            config.write_rate
        )));
    }
    if config.heartbeat_ms == 0 || config.election_ms < 5 * config.heartbeat_ms {
        return Err(BenchError::Config(format!(
            "--election-timeout ({}) must be at least 5 x --heartbeat-interval ({})",
            config.election_ms, config.heartbeat_ms
        )));
    }
    if config.servers.is_empty() {
        return Err(BenchError::Config("no server to run".into()));
    }
    Ok(())
}

/// The timing flags both servers get.
pub fn timing_args(config: &FailoverConfig) -> Vec<String> {
    vec![
        "--heartbeat-interval".into(),
        config.heartbeat_ms.to_string(),
        "--election-timeout".into(),
        config.election_ms.to_string(),
    ]
}

pub async fn run(config: &FailoverConfig) -> Result<Vec<Trial>, BenchError> {
    check_config(config)?;
    let logs = config.out.join("logs");
    compare::create_dir(&logs)?;
    compare::create_dir(&config.data_root)?;
    let load_average = compare::load_average();
    let mut trials = Vec::new();
    for trial in 1..=config.trials {
        for spec in &config.servers {
            let result = run_trial(config, trial, spec, &logs).await?;
            println!(
                "trial {trial} {:<6}: killed {}, leader elected {}, writes resumed {}",
                result.server,
                result.killed,
                show_ms(result.leader_elected_ms),
                show_ms(result.writes_resumed_ms)
            );
            trials.push(result);
        }
    }
    let json = serde_json::to_string_pretty(&trials).expect("trials serialize");
    write(&config.out.join("results.json"), &json)?;
    let report = report_markdown(config, &trials, load_average.trim());
    write(&config.out.join("report.md"), &report)?;
    print!("{report}");
    Ok(trials)
}

fn show_ms(ms: Option<f64>) -> String {
    ms.map_or_else(
        || format!("not within {TRIAL_LIMIT:?}"),
        |ms| format!("{ms:.0} ms"),
    )
}

/// One put's outcome: when it was sent, when it ended, and why it failed (None: it succeeded).
type PutRecord = (Instant, Instant, Option<String>);

async fn run_trial(
    config: &FailoverConfig,
    trial: u32,
    spec: &ServerSpec,
    logs: &Path,
) -> Result<Trial, BenchError> {
    let name = &spec.name;
    let data_dir = config.data_root.join(format!(
        "ringkv-bench-{}-failover{trial}-{name}",
        std::process::id()
    ));
    let mut args = timing_args(config);
    args.extend(spec.args.iter().cloned());
    let log_prefix = logs.join(format!("trial{trial}-{name}"));
    let mut servers = Cluster::start(
        name,
        &spec.binary,
        config.members,
        &data_dir,
        &args,
        &log_prefix,
    )
    .await?;
    let (leader, leader_id) = servers.leader(Duration::from_secs(30)).await?;
    let survivors: Vec<String> = servers
        .members
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, member)| member.endpoint())
        .collect();
    let channels = load::connect(&survivors, survivors.len()).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<PutRecord>();
    let writer = tokio::spawn(write_load(
        channels,
        config.write_rate,
        Arc::clone(&stop),
        sender,
    ));
    tokio::time::sleep(PRE_KILL).await;

    let killed_at = Instant::now();
    servers.members[leader].kill();
    let mut elected = None;
    let mut resumed = None;
    let mut records = Vec::new();
    while killed_at.elapsed() < TRIAL_LIMIT && (elected.is_none() || resumed.is_none()) {
        if elected.is_none() {
            for endpoint in &survivors {
                let reply = cluster::status(endpoint, POLL_INTERVAL * 20).await;
                if let Some((_, known)) = reply {
                    if known != 0 && known != leader_id {
                        elected = Some(killed_at.elapsed());
                        break;
                    }
                }
            }
        }
        while let Ok(record) = receiver.try_recv() {
            records.push(record);
        }
        if resumed.is_none() {
            resumed = records
                .iter()
                .filter(|(sent, _, error)| error.is_none() && *sent >= killed_at)
                .map(|(_, done, _)| done.duration_since(killed_at))
                .min();
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    stop.store(true, Ordering::Relaxed);
    // In-flight puts end within PUT_TIMEOUT; their records are not needed for the figures.
    writer.abort();
    while let Ok(record) = receiver.try_recv() {
        records.push(record);
    }
    let _ = servers.stop().await?;
    let _ = std::fs::remove_dir_all(&data_dir);
    let puts_ok = records
        .iter()
        .filter(|(_, _, error)| error.is_none())
        .count() as u64;
    let mut put_errors = BTreeMap::new();
    for error in records.iter().filter_map(|(_, _, error)| error.clone()) {
        *put_errors.entry(error).or_insert(0) += 1;
    }
    Ok(Trial {
        trial,
        server: name.clone(),
        killed: cluster::member_name(leader),
        leader_elected_ms: elected.map(|d| d.as_secs_f64() * 1e3),
        writes_resumed_ms: resumed.map(|d| d.as_secs_f64() * 1e3),
        puts_ok,
        puts_failed: records.len() as u64 - puts_ok,
        put_errors,
    })
}

/// Open loop: put i is sent at start + i/rate on channel i mod n, each in its own task.
async fn write_load(
    channels: Vec<tonic::transport::Channel>,
    rate: f64,
    stop: Arc<AtomicBool>,
    sender: tokio::sync::mpsc::UnboundedSender<PutRecord>,
) {
    let start = tokio::time::Instant::now();
    let value = load::pseudo_random_bytes(256, 7);
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let mut client = KvClient::new(channels[i as usize % channels.len()].clone());
        let request = PutRequest {
            key: format!("failover-{:08}", i % 1000).into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        let sender = sender.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let reply = tokio::time::timeout(PUT_TIMEOUT, client.put(request)).await;
            let error = match reply {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(format!("{:?}: {}", status.code(), status.message())),
                Err(_) => Some(format!("no reply within {PUT_TIMEOUT:?}")),
            };
            let _ = sender.send((sent, Instant::now(), error));
        });
        i += 1;
    }
}

/// Reads one figure of a trial, None when the trial did not see it.
type TrialFigure = fn(&Trial) -> Option<f64>;

fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().max_by(f64::total_cmp)
}

fn report_markdown(config: &FailoverConfig, trials: &[Trial], load_average: &str) -> String {
    let mut out = String::new();
    let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(
        out,
        "# {}: leader failover, {} members ({} trials)\n",
        names.join(" vs "),
        config.members,
        config.trials
    );
    let _ = writeln!(
        out,
        "Each trial starts a fresh {}-member cluster per server (--heartbeat-interval {} \
         --election-timeout {}), runs {} puts/s (256 B values) against the followers for {:?}, \
         then SIGKILLs the leader. Times are from the kill: `leader elected` is the first \
         Status poll (every {:?}, on each survivor) naming a new leader; `writes resumed` is the \
         first successful reply to a put sent after the kill. Both are upper bounds: the poll \
         lags by up to one interval plus a Status call, so `writes resumed` can be the smaller; \
         puts still in flight when both are seen are not counted.\n",
        config.members,
        config.heartbeat_ms,
        config.election_ms,
        config.write_rate,
        PRE_KILL,
        POLL_INTERVAL
    );
    let _ = writeln!(
        out,
        "| figure (ms) | {} |{} better |",
        names.join(" | "),
        if names.len() == 2 {
            format!(" {}/{} |", names[0], names[1])
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "|---|{}{}---|",
        "---:|".repeat(names.len()),
        if names.len() == 2 { "---:|" } else { "" }
    );
    let figures: [(&str, TrialFigure, bool); 4] = [
        ("leader elected, median", |t| t.leader_elected_ms, false),
        ("leader elected, max", |t| t.leader_elected_ms, true),
        ("writes resumed, median", |t| t.writes_resumed_ms, false),
        ("writes resumed, max", |t| t.writes_resumed_ms, true),
    ];
    for (figure, read, is_max) in figures {
        let values: Vec<Option<f64>> = names
            .iter()
            .map(|name| {
                let mine: Vec<f64> = trials
                    .iter()
                    .filter(|t| t.server == *name)
                    .filter_map(read)
                    .collect();
                if is_max {
                    max(&mine)
                } else {
                    compare::median(mine)
                }
            })
            .collect();
        let _ = write!(out, "| {figure} |");
        for value in &values {
            match value {
                Some(value) => {
                    let _ = write!(out, " {value:.0} |");
                }
                None => {
                    let _ = write!(out, " - |");
                }
            }
        }
        if names.len() == 2 {
            let ratio = match (values[0], values[1]) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let _ = write!(out, " {ratio} |");
        }
        let _ = writeln!(out, " lower |");
    }
    let missing: Vec<String> = trials
        .iter()
        .filter(|t| t.leader_elected_ms.is_none() || t.writes_resumed_ms.is_none())
        .map(|t| format!("trial {} {}", t.trial, t.server))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "\nNot within {TRIAL_LIMIT:?} (left out of the medians): {}",
            missing.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n## Trials\n\n| trial | server | killed | leader elected (ms) | writes resumed (ms) | puts ok | puts failed | errors |\n|---:|---|---|---:|---:|---:|---:|---|"
    );
    for t in trials {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            t.trial,
            t.server,
            t.killed,
            t.leader_elected_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms:.0}")),
            t.writes_resumed_ms
                .map_or_else(|| "-".into(), |ms| format!("{ms:.0}")),
            t.puts_ok,
            t.puts_failed,
            t.put_errors
                .iter()
                .map(|(error, count)| format!("{count} x {error}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let _ = writeln!(out, "\n## Run\n");
    let commit = config
        .servers
        .first()
        .map_or_else(|| "unknown".into(), |s| compare::git_commit(&s.binary));
    let _ = writeln!(out, "- commit: {commit}");
    let _ = writeln!(
        out,
        "- machine: {} cores, {}, load average before {load_average}",
        std::thread::available_parallelism().map_or(0, usize::from),
        compare::cpu_model()
    );
    for spec in &config.servers {
        let _ = writeln!(
            out,
            "- {}: `{}` ({}), extra flags `{}`",
            spec.name,
            spec.binary.display(),
            crate::server::version(&spec.binary),
            timing_args(config)
                .into_iter()
                .chain(spec.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let _ = writeln!(
        out,
        "\nThe load generator and all members share the machine; logs/ has every member's output."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FailoverConfig {
        FailoverConfig {
            servers: compare::standard_servers(Path::new("r"), &[], Path::new("e"), &[]),
            members: 3,
            trials: 5,
            heartbeat_ms: 100,
            election_ms: 1000,
            write_rate: 100.0,
            out: PathBuf::from("/nonexistent"),
            data_root: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn options_are_checked() {
        assert!(check_config(&config()).is_ok());
        let error = |c: FailoverConfig| check_config(&c).unwrap_err().to_string();
        assert_eq!(
            error(FailoverConfig {
                members: 1,
                ..config()
            }),
            "invalid option: failover needs a cluster that survives its leader: --members \
             3..=7, not 1"
        );
        assert_eq!(
            error(FailoverConfig {
                election_ms: 400,
                ..config()
            }),
            "invalid option: --election-timeout (400) must be at least 5 x --heartbeat-interval \
             (100)"
        );
        assert_eq!(
            error(FailoverConfig {
                trials: 0,
                ..config()
            }),
            "invalid option: --trials must be 1..=100, not 0"
        );
        assert_eq!(
            timing_args(&config()).join(" "),
            "--heartbeat-interval 100 --election-timeout 1000"
        );
    }
}
