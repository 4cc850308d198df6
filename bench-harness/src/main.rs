//! `ringkv-bench`: flags (etcd `benchmark` naming) and dispatch; the work is in the library.

use clap::{Args, Parser, Subcommand};
use ringkv_bench::compare::{self, CompareConfig};
use ringkv_bench::load::{self, LoadConfig, Operation};
use ringkv_bench::BenchError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ringkv-bench", about = "Load generator for etcd v3 endpoints")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Put keys from the key space.
    Put {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Range over one key.
    Range {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Run a workload against ringkv and reference etcd in alternating rounds.
    Compare {
        #[command(subcommand)]
        workload: CompareWorkload,
    },
}

#[derive(Subcommand)]
enum CompareWorkload {
    Put {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        compare: CompareArgs,
    },
    Range {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        range: RangeArgs,
        #[command(flatten)]
        compare: CompareArgs,
    },
}

#[derive(Args)]
struct Target {
    /// Comma-separated gRPC endpoints; channels are spread over them round-robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Write the summary (with the raw histogram) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
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
    /// Put keys are drawn from [0, N).
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

#[derive(Args)]
struct RangeArgs {
    /// The key to read.
    #[arg(long, default_value = "foo")]
    key: String,
    /// l: linearizable, s: serializable.
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    consistency: String,
}

#[derive(Args)]
struct CompareArgs {
    /// The ringkv binary.
    #[arg(long)]
    ringkv: PathBuf,
    /// The reference etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Where report.md, results.json and the server logs go.
    #[arg(long)]
    out: PathBuf,
    /// Parent of the fresh data dirs (and of the fdatasync probe's file).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    data_root: PathBuf,
    /// An extra ringkv flag (repeatable), e.g. --ringkv-arg=--tuning-profile=dedicated.
    #[arg(long, allow_hyphen_values = true)]
    ringkv_arg: Vec<String>,
    /// An extra etcd flag (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    etcd_arg: Vec<String>,
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
    fn operation(&self) -> Operation {
        Operation::Range {
            key: self.key.as_bytes().to_vec(),
            serializable: self.consistency == "s",
        }
    }
}

impl CompareArgs {
    fn config(self, load: LoadConfig, operation: Operation) -> CompareConfig {
        CompareConfig {
            load,
            operation,
            ringkv: self.ringkv,
            etcd: self.etcd,
            rounds: self.rounds,
            out: self.out,
            data_root: self.data_root,
            ringkv_args: self.ringkv_arg,
            etcd_args: self.etcd_arg,
        }
    }
}

async fn run_load(
    target: Target,
    load: &LoadArgs,
    operation: &Operation,
) -> Result<(), BenchError> {
    let summary = load::run(&load.config(target.endpoints), operation).await?;
    print!("{}", summary.table());
    if let Some(path) = target.json {
        let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
        std::fs::write(&path, json).map_err(BenchError::io(format!("write {}", path.display())))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let result = match Cli::parse().command {
        Command::Put { target, load } => run_load(target, &load, &Operation::Put).await,
        Command::Range {
            target,
            load,
            range,
        } => run_load(target, &load, &range.operation()).await,
        Command::Compare { workload } => {
            let config = match workload {
                CompareWorkload::Put { load, compare } => {
                    compare.config(load.config(Vec::new()), Operation::Put)
                }
                CompareWorkload::Range {
                    load,
                    range,
                    compare,
                } => compare.config(load.config(Vec::new()), range.operation()),
            };
            compare::run(config).await
        }
    };
    if let Err(error) = result {
        eprintln!("ringkv-bench: {error}");
        std::process::exit(1);
    }
}
