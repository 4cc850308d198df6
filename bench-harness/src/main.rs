//! `ringkv-bench`: flags (etcd `benchmark` and etcdctl `check perf` naming) and dispatch; the
//! work is in the library.

use clap::{Args, Parser, Subcommand};
use ringkv_bench::check;
use ringkv_bench::compare::{self, CompareConfig};
use ringkv_bench::defrag::DefragSpec;
use ringkv_bench::failover::{self, FailoverConfig};
use ringkv_bench::load::LoadConfig;
use ringkv_bench::smoke::{self, SmokeConfig};
use ringkv_bench::suite::{self, SuiteConfig};
use ringkv_bench::workload::{self, RangeSpec, WatchGetSpec, WatchLatencySpec, Workload};
use ringkv_bench::BenchError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ringkv-bench", about = "Load generator for etcd v3 endpoints")]
struct Cli {
    /// Comma-separated gRPC endpoints; channels are spread over them round-robin.
    #[arg(long, global = true, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// Write the summary (with the raw histogram) as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Workload(WorkloadCommand),
    /// Run a workload (or the standard suite) against ringkv and reference etcd in rounds.
    Compare(CompareCommand),
    /// Run every workload for about a second against ringkv (and etcd): a CI check that the
    /// harness still works, not a measurement.
    Smoke(SmokeArgs),
}

#[derive(Subcommand, Clone)]
enum WorkloadCommand {
    /// compare only, with --members 3: SIGKILL the leader under a light put load and time the
    /// new leader and the first successful put.
    Failover {
        /// Trials per server (a fresh cluster each).
        #[arg(long, default_value_t = 5)]
        trials: u32,
        /// Both servers' --heartbeat-interval, ms (etcd's default).
        #[arg(long, default_value_t = 100)]
        heartbeat_interval: u64,
        /// Both servers' --election-timeout, ms (etcd's default).
        #[arg(long, default_value_t = 1000)]
        election_timeout: u64,
        /// Puts per second sent to the followers around the kill.
        #[arg(long, default_value_t = 100.0)]
        write_rate: f64,
    },
    /// Put keys from the key space.
    Put {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Range over a key (or [key, end)).
    Range {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Txns of --txn-ops unconditional puts on distinct keys.
    TxnPut {
        #[command(flatten)]
        load: LoadArgs,
        /// Puts per txn.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Txns that either range over every key (with --limit) or put one key.
    TxnMixed {
        #[command(flatten)]
        load: LoadArgs,
        /// Reads per write.
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
        /// Read operation range result limit.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// l: linearizable reads, s: serializable.
        #[arg(long, default_value = "l", value_parser = ["l", "s"])]
        consistency: String,
    },
    /// Grant a lease per client, then renew it over a keep-alive stream.
    LeaseKeepalive {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Latency from a put to each watcher's event.
    WatchLatency(WatchLatencyArgs),
    /// Serializable gets while many unsynced watchers catch up.
    WatchGet(WatchGetArgs),
    /// etcdctl check perf: a put load with pass rules.
    CheckPerf(CheckPerfArgs),
    /// Fill the store, delete half, then an open-loop put load across a Defragment.
    Defrag(DefragArgs),
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// gRPC channels (HTTP/2 connections).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients (tokio tasks), spread round-robin over the channels.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Requests to send [default: 10000, or unlimited when --duration is given].
    #[arg(long)]
    total: Option<u64>,
    /// Stop after this many seconds (whichever of --total and --duration comes first).
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Keys are drawn from [0, N).
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Put keys in order (i mod N) instead of at random.
    #[arg(long)]
    sequential_keys: bool,
    /// Requests per second over all clients (open loop); 0 is closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// A request slower than this many seconds counts as an error.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
}

#[derive(Args, Clone)]
struct RangeArgs {
    /// The key to read.
    #[arg(long, default_value = "foo")]
    key: String,
    /// Range end (exclusive); "\0" (give --from-key) for every key from --key on.
    #[arg(long)]
    end: Option<String>,
    /// Every key from --key on (etcd's range end "\0").
    #[arg(long, conflicts_with = "end")]
    from_key: bool,
    /// l: linearizable, s: serializable.
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    consistency: String,
    /// Most keys per reply (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit: i64,
    #[arg(long)]
    keys_only: bool,
    #[arg(long)]
    count_only: bool,
    /// Put this many keys (0..N at --key-size and --val-size) first, then read one of them per
    /// request, at random (or in order with --sequential-keys); 0 reads --key.
    #[arg(long, default_value_t = 0)]
    fill_keys: u64,
}

#[derive(Args, Clone)]
struct WatchLatencyArgs {
    /// Watch streams, spread over --conns connections.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
    /// Ask for the previous key-value with each event.
    #[arg(long)]
    prevkv: bool,
    /// Total number of puts.
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Puts per second.
    #[arg(long, default_value_t = 100.0)]
    put_rate: f64,
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// At least 8: each value starts with its put's sequence number.
    #[arg(long, default_value_t = 32)]
    val_size: usize,
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Stop putting after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Args, Clone)]
struct WatchGetArgs {
    /// Total number of watchers.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Total number of watch streams.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Events each watcher catches up on.
    #[arg(long, default_value_t = 8)]
    events: usize,
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Give up on watchers that have not caught up after this many seconds [default: 300].
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Args, Clone)]
struct CheckPerfArgs {
    /// s(small), m(medium), l(large), xl(xLarge).
    #[arg(long, default_value = "s")]
    load: String,
    /// The prefix for the check's keys; it must be empty, and is deleted afterwards.
    #[arg(long, default_value = check::DEFAULT_PREFIX)]
    prefix: String,
    /// Override the load's 60 s (the pass rules still apply).
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Args, Clone)]
struct DefragArgs {
    /// Bytes of values the fill writes; half is deleted and compacted before the defrag.
    #[arg(long, default_value_t = 1 << 30)]
    fill_bytes: u64,
    #[arg(long, default_value_t = 128 * 1024)]
    fill_val_size: usize,
    /// Concurrent fill clients (closed loop).
    #[arg(long, default_value_t = 8)]
    fill_clients: usize,
    /// Seconds of put load before Defragment is called.
    #[arg(long, default_value_t = 10.0)]
    baseline: f64,
    /// Seconds of put load after Defragment returns.
    #[arg(long, default_value_t = 10.0)]
    after: f64,
    /// gRPC channels of the put load.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Puts per second of the load (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// The load's keys are drawn from [0, N).
    #[arg(long, default_value_t = 10_000)]
    key_space_size: u64,
    /// A put slower than this many seconds counts as an error.
    #[arg(long, default_value_t = 60.0)]
    request_timeout: f64,
}

#[derive(Args)]
struct CompareCommand {
    #[command(subcommand)]
    workload: Option<WorkloadCommand>,
    /// Run a named set of comparisons instead of one workload: `standard`.
    #[arg(long, value_parser = ["standard"])]
    suite: Option<String>,
    /// The ringkv binary.
    #[arg(long, global = true)]
    ringkv: Option<PathBuf>,
    /// The reference etcd binary.
    #[arg(long, global = true, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Run only this server (for sweeps of ringkv's own settings).
    #[arg(long, global = true, value_parser = ["ringkv", "etcd"])]
    only: Option<String>,
    #[arg(long, global = true, default_value_t = 3)]
    rounds: u32,
    /// Cluster members per server (3: a static cluster on loopback, clients leader first).
    #[arg(long, global = true, default_value_t = 1)]
    members: u32,
    /// Where the report goes [default: perf-reports/<date>-<workload or suite-standard>].
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Parent of the fresh data dirs (and of the fdatasync probe's file).
    #[arg(long, global = true, default_value_os_t = std::env::temp_dir())]
    data_root: PathBuf,
    /// An extra ringkv flag (repeatable), e.g. --ringkv-arg=--tuning-profile=dedicated.
    #[arg(long, global = true, allow_hyphen_values = true)]
    ringkv_arg: Vec<String>,
    /// An extra etcd flag (repeatable).
    #[arg(long, global = true, allow_hyphen_values = true)]
    etcd_arg: Vec<String>,
    /// --suite only: cap every workload at this many seconds.
    #[arg(long)]
    workload_seconds: Option<f64>,
}

#[derive(Args)]
struct SmokeArgs {
    #[arg(long)]
    ringkv: PathBuf,
    /// Also smoke reference etcd, if this binary exists.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Seconds per workload.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Fail when ringkv answers Unimplemented too (once it serves Watch and Lease).
    #[arg(long)]
    strict: bool,
    /// Where logs and the sample compare report go [default: a temporary directory].
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    data_root: PathBuf,
}

impl LoadArgs {
    fn config(&self, endpoints: Vec<String>) -> LoadConfig {
        LoadConfig {
            endpoints,
            conns: self.conns,
            clients: self.clients,
            total: self.total.or(if self.duration.is_some() {
                None
            } else {
                Some(10_000)
            }),
            duration: self.duration.map(Duration::from_secs_f64),
            key_size: self.key_size,
            val_size: self.val_size,
            key_space_size: self.key_space_size,
            sequential_keys: self.sequential_keys,
            rate: self.rate,
            request_timeout: Duration::from_secs_f64(self.request_timeout),
        }
    }
}

impl RangeArgs {
    fn spec(&self) -> RangeSpec {
        RangeSpec {
            key: self.key.as_bytes().to_vec(),
            range_end: if self.from_key {
                vec![0]
            } else {
                self.end.clone().unwrap_or_default().into_bytes()
            },
            serializable: self.consistency == "s",
            limit: self.limit,
            keys_only: self.keys_only,
            count_only: self.count_only,
            fill_keys: self.fill_keys,
        }
    }
}

/// A LoadConfig for the workloads with their own flags (no --clients, --total, ...).
fn stream_config(
    endpoints: Vec<String>,
    conns: usize,
    total: Option<u64>,
    duration: Option<f64>,
    key_size: usize,
    val_size: usize,
) -> LoadConfig {
    LoadConfig {
        endpoints,
        conns,
        clients: 1,
        total,
        duration: duration.map(Duration::from_secs_f64),
        key_size,
        val_size,
        key_space_size: 1,
        sequential_keys: false,
        rate: 0.0,
        request_timeout: Duration::from_secs(10),
    }
}

impl WorkloadCommand {
    fn build(&self, endpoints: Vec<String>) -> Result<(LoadConfig, Workload), BenchError> {
        Ok(match self {
            WorkloadCommand::Failover { .. } => {
                return Err(BenchError::Config(
                    "failover starts its own cluster: run it as compare failover --members 3"
                        .into(),
                ))
            }
            WorkloadCommand::Put { load } => (load.config(endpoints), Workload::Put),
            WorkloadCommand::Range { load, range } => {
                (load.config(endpoints), Workload::Range(range.spec()))
            }
            WorkloadCommand::TxnPut { load, txn_ops } => (
                load.config(endpoints),
                Workload::TxnPut { txn_ops: *txn_ops },
            ),
            WorkloadCommand::TxnMixed {
                load,
                rw_ratio,
                limit,
                consistency,
            } => {
                // etcd's benchmark reads every key: key "\0", range end "\0".
                let read = RangeSpec {
                    key: vec![0],
                    range_end: vec![0],
                    serializable: consistency == "s",
                    limit: *limit,
                    keys_only: false,
                    count_only: false,
                    fill_keys: 0,
                };
                (
                    load.config(endpoints),
                    Workload::TxnMixed {
                        rw_ratio: *rw_ratio,
                        read,
                    },
                )
            }
            WorkloadCommand::LeaseKeepalive { load } => {
                (load.config(endpoints), Workload::LeaseKeepalive)
            }
            WorkloadCommand::WatchLatency(args) => (
                stream_config(
                    endpoints,
                    args.conns,
                    Some(args.put_total),
                    args.duration,
                    args.key_size,
                    args.val_size,
                ),
                Workload::WatchLatency(WatchLatencySpec {
                    streams: args.streams,
                    watchers_per_stream: args.watchers_per_stream,
                    prev_kv: args.prevkv,
                    put_rate: args.put_rate,
                }),
            ),
            WorkloadCommand::WatchGet(args) => (
                stream_config(endpoints, args.conns, None, args.duration, 8, 8),
                Workload::WatchGet(WatchGetSpec {
                    watchers: args.watchers,
                    streams: args.streams,
                    events: args.events,
                }),
            ),
            WorkloadCommand::Defrag(args) => (
                LoadConfig {
                    endpoints,
                    conns: args.conns,
                    clients: args.clients,
                    total: None,
                    // A nominal length: the defrag workload stops its load itself.
                    duration: Some(
                        Duration::try_from_secs_f64(args.baseline + args.after)
                            .unwrap_or(Duration::ZERO),
                    ),
                    key_size: args.key_size,
                    val_size: args.val_size,
                    key_space_size: args.key_space_size,
                    sequential_keys: false,
                    rate: args.rate,
                    request_timeout: Duration::try_from_secs_f64(args.request_timeout).map_err(
                        |_| BenchError::Config("--request-timeout must be positive".into()),
                    )?,
                },
                Workload::Defrag(DefragSpec {
                    fill_bytes: args.fill_bytes,
                    fill_val_size: args.fill_val_size,
                    fill_clients: args.fill_clients,
                    baseline_s: args.baseline,
                    after_s: args.after,
                }),
            ),
            WorkloadCommand::CheckPerf(args) => {
                let load = check::load(&args.load).map_err(BenchError::Config)?;
                (
                    workload::check_perf_config(endpoints, load, args.duration),
                    Workload::CheckPerf {
                        load,
                        prefix: args.prefix.clone(),
                    },
                )
            }
        })
    }
}

/// Runs one workload against --endpoints; returns the exit code (check-perf FAIL is 1).
async fn run_workload(
    command: &WorkloadCommand,
    endpoints: Option<Vec<String>>,
    json: Option<PathBuf>,
) -> Result<i32, BenchError> {
    let endpoints = endpoints.unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]);
    let (load, workload) = command.build(endpoints)?;
    if matches!(&workload, Workload::Range(range) if range.fill_keys > 0) {
        workload::prepare(&load, &workload).await?;
    }
    let summary = workload::run(&load, &workload).await?;
    print!("{}", summary.table());
    if let Some(path) = json {
        let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
        std::fs::write(&path, json).map_err(BenchError::io(format!("write {}", path.display())))?;
    }
    Ok(i32::from(summary.check.is_some_and(|check| !check.pass)))
}

async fn run_compare(command: CompareCommand) -> Result<i32, BenchError> {
    let Some(ringkv) = &command.ringkv else {
        return Err(BenchError::Config("compare needs --ringkv PATH".into()));
    };
    let mut servers = compare::standard_servers(
        ringkv,
        &command.ringkv_arg,
        &command.etcd,
        &command.etcd_arg,
    );
    if let Some(only) = &command.only {
        servers.retain(|server| &server.name == only);
    }
    let default_out =
        |name: &str| PathBuf::from(format!("perf-reports/{}-{name}", compare::utc_date()));
    match (&command.suite, &command.workload) {
        (Some(_), Some(_)) => Err(BenchError::Config(
            "give either --suite or a workload, not both".into(),
        )),
        (None, None) => Err(BenchError::Config(
            "give a workload (put, range, txn-put, ...) or --suite standard".into(),
        )),
        (Some(suite), None) => {
            let config = SuiteConfig {
                servers,
                rounds: command.rounds,
                members: command.members,
                out: command
                    .out
                    .clone()
                    .unwrap_or_else(|| default_out(&format!("suite-{suite}"))),
                data_root: command.data_root.clone(),
                workload_seconds: command.workload_seconds,
            };
            suite::run(&config).await.map(|()| 0)
        }
        (
            None,
            Some(WorkloadCommand::Failover {
                trials,
                heartbeat_interval,
                election_timeout,
                write_rate,
            }),
        ) => {
            let config = FailoverConfig {
                servers,
                members: command.members,
                trials: *trials,
                heartbeat_ms: *heartbeat_interval,
                election_ms: *election_timeout,
                write_rate: *write_rate,
                out: command
                    .out
                    .clone()
                    .unwrap_or_else(|| default_out("failover")),
                data_root: command.data_root.clone(),
            };
            failover::run(&config).await.map(|_| 0)
        }
        (None, Some(workload_command)) => {
            if command.workload_seconds.is_some() {
                return Err(BenchError::Config(
                    "--workload-seconds is for --suite; give the workload --duration".into(),
                ));
            }
            let (load, workload) = workload_command.build(Vec::new())?;
            let config = CompareConfig {
                out: command
                    .out
                    .clone()
                    .unwrap_or_else(|| default_out(&workload.name())),
                load,
                workload,
                servers,
                rounds: command.rounds,
                members: command.members,
                data_root: command.data_root.clone(),
            };
            compare::run(&config).await.map(|_| 0)
        }
    }
}

async fn run_smoke(args: SmokeArgs) -> Result<i32, BenchError> {
    let out = args.out.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ringkv-bench-smoke-{}", std::process::id()))
    });
    let mut servers = compare::standard_servers(&args.ringkv, &[], &args.etcd, &[]);
    if !args.etcd.exists() {
        println!(
            "smoke: {} not found, smoking ringkv only",
            args.etcd.display()
        );
        servers.truncate(1);
    }
    let config = SmokeConfig {
        servers: servers
            .into_iter()
            .map(|server| {
                let allow_unsupported = server.name == "ringkv" && !args.strict;
                (server, allow_unsupported)
            })
            .collect(),
        seconds: args.seconds,
        out,
        data_root: args.data_root,
    };
    let passed = smoke::run(&config).await?;
    println!("smoke: {}", if passed { "PASS" } else { "FAIL" });
    Ok(i32::from(!passed))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Workload(command) => run_workload(&command, cli.endpoints, cli.json).await,
        Command::Compare(command) => {
            if cli.endpoints.is_some() {
                Err(BenchError::Config(
                    "compare starts its own servers; --endpoints is for single runs".into(),
                ))
            } else {
                run_compare(command).await
            }
        }
        Command::Smoke(args) => run_smoke(args).await,
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("ringkv-bench: {error}");
            std::process::exit(1);
        }
    }
}
