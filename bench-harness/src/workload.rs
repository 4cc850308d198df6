//! The workloads, named as etcd's `benchmark` tool names them (plus etcdctl's `check perf`):
//! what each one sends, and `run`, which dispatches to the request/reply engine (`load`) or the
//! watch engine (`watch`) and wraps check-perf's setup, cleanup and verdict.

use crate::check::{self, CheckLoad};
use crate::defrag::{self, DefragSpec};
use crate::load::{self, LoadConfig};
use crate::summary::Summary;
use crate::watch;
use crate::BenchError;
use serde::Serialize;

/// Range options shared by `range` and (the read half of) `txn-mixed`.
#[derive(Debug, Clone, Serialize)]
pub struct RangeSpec {
    pub key: Vec<u8>,
    /// Empty: the single key; `[0]`: every key from `key` on (etcd's convention).
    pub range_end: Vec<u8>,
    pub serializable: bool,
    /// 0 is no limit.
    pub limit: i64,
    pub keys_only: bool,
    pub count_only: bool,
    /// 0: read `key` (and `range_end`). N > 0: before the run, put N keys (`load::key_bytes`
    /// of 0..N at the load's key and value sizes), then read one of them per request, at random
    /// (or in order with `sequential_keys`): a data set larger than a server's cache.
    pub fill_keys: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchLatencySpec {
    /// Watch streams (gRPC bidi streams), spread round-robin over the connections.
    pub streams: usize,
    pub watchers_per_stream: usize,
    /// Ask for the previous key-value with every event.
    pub prev_kv: bool,
    /// Puts per second on the watched key (open loop); `LoadConfig::total` is the put count.
    pub put_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchGetSpec {
    pub watchers: usize,
    pub streams: usize,
    /// Events every (unsynced) watcher has to catch up on.
    pub events: usize,
}

#[derive(Debug, Clone, Serialize)]
pub enum Workload {
    /// Put keys from the key space (`LoadConfig` key and value sizes).
    Put,
    Range(RangeSpec),
    /// One Txn of `txn_ops` unconditional puts on distinct keys.
    TxnPut {
        txn_ops: usize,
    },
    /// Txns that read (a range) or write (a put), `rw_ratio` reads per write.
    TxnMixed {
        rw_ratio: f64,
        read: RangeSpec,
    },
    /// Each client grants a lease, then renews it over a keep-alive stream, one at a time.
    LeaseKeepalive,
    /// etcdctl `check perf --load`.
    CheckPerf {
        load: CheckLoad,
        prefix: String,
    },
    /// Time from a put to each watcher receiving its event.
    WatchLatency(WatchLatencySpec),
    /// Serializable gets while many watchers catch up from an old revision.
    WatchGet(WatchGetSpec),
    /// An open-loop put load across a Maintenance.Defragment of a filled store.
    Defrag(DefragSpec),
}

impl Workload {
    /// The name in reports and file names (`range-l`, `check-perf-s`, ...).
    pub fn name(&self) -> String {
        match self {
            Workload::Put => "put".into(),
            Workload::Range(range) => format!(
                "range-{}{}",
                if range.serializable { "s" } else { "l" },
                if range.fill_keys > 0 { "-filled" } else { "" }
            ),
            Workload::TxnPut { .. } => "txn-put".into(),
            Workload::TxnMixed { .. } => "txn-mixed".into(),
            Workload::LeaseKeepalive => "lease-keepalive".into(),
            Workload::CheckPerf { load, .. } => format!("check-perf-{}", load.name),
            Workload::WatchLatency(_) => "watch-latency".into(),
            Workload::WatchGet(_) => "watch-get".into(),
            Workload::Defrag(_) => "defrag".into(),
        }
    }

    /// Whether an open-loop request's latency counts from its due time (queueing charged to the
    /// server). check-perf counts from the send, as etcdctl does, so its pass rules mean the same.
    pub fn latency_from_due_time(&self) -> bool {
        !matches!(self, Workload::CheckPerf { .. })
    }

    pub fn validate(&self, config: &LoadConfig) -> Result<(), BenchError> {
        let fail = |reason: String| Err(BenchError::Config(reason));
        config.validate()?;
        match self {
            Workload::TxnPut { txn_ops } => {
                if *txn_ops == 0 {
                    return fail(format!("expected positive --txn-ops, got ({txn_ops})"));
                }
                // A txn may not put one key twice (etcd: "duplicate key given in txn request").
                if *txn_ops as u64 > config.key_space_size {
                    return fail(format!(
                        "expected --txn-ops no larger than --key-space-size, got txn-ops({txn_ops}) key-space-size({})",
                        config.key_space_size
                    ));
                }
            }
            Workload::TxnMixed { rw_ratio, .. } => {
                if !(rw_ratio.is_finite() && *rw_ratio >= 0.0) {
                    return fail("--rw-ratio must be a non-negative number".into());
                }
            }
            Workload::WatchLatency(spec) => {
                if spec.streams == 0 || spec.watchers_per_stream == 0 {
                    return fail("--streams and --watchers-per-stream must be at least 1".into());
                }
                if spec.streams * spec.watchers_per_stream > watch::WATCHERS_MAX {
                    return fail(format!("at most {} watchers", watch::WATCHERS_MAX));
                }
                if !(spec.put_rate > 0.0 && spec.put_rate.is_finite()) {
                    return fail("--put-rate must be a positive number".into());
                }
                if config.val_size < watch::SEQUENCE_BYTES {
                    return fail(format!(
                        "watch-latency needs --val-size of at least {} (the put's sequence number)",
                        watch::SEQUENCE_BYTES
                    ));
                }
            }
            Workload::WatchGet(spec) => {
                if spec.streams == 0 || spec.watchers == 0 || spec.events == 0 {
                    return fail("--streams, --watchers and --events must be at least 1".into());
                }
                if spec.watchers > watch::WATCHERS_MAX || spec.events > watch::EVENTS_MAX {
                    return fail(format!(
                        "at most {} watchers and {} events",
                        watch::WATCHERS_MAX,
                        watch::EVENTS_MAX
                    ));
                }
            }
            Workload::Defrag(spec) => {
                spec.validate()?;
                if config.rate <= 0.0 {
                    return fail("defrag needs an open-loop load: give --rate".into());
                }
            }
            Workload::Range(range) => {
                if range.fill_keys > FILL_KEYS_MAX {
                    return fail(format!("--fill-keys must be at most {FILL_KEYS_MAX}"));
                }
                if range.fill_keys > 0 && !range.range_end.is_empty() {
                    return fail("--fill-keys reads single keys: drop --end/--from-key".into());
                }
            }
            Workload::Put | Workload::LeaseKeepalive | Workload::CheckPerf { .. } => {}
        }
        Ok(())
    }
}

/// The `LoadConfig` etcdctl's check-perf uses for `load`: one connection per client, the rate
/// limit, the load's duration unless `duration_s` overrides it, and no request count.
pub fn check_perf_config(
    endpoints: Vec<String>,
    load: CheckLoad,
    duration_s: Option<f64>,
) -> LoadConfig {
    LoadConfig {
        endpoints,
        conns: load.clients as usize,
        clients: load.clients as usize,
        total: None,
        duration: Some(std::time::Duration::from_secs_f64(
            duration_s.unwrap_or(f64::from(load.duration_s)),
        )),
        key_size: check::KEY_SUFFIX_BYTES,
        val_size: check::VALUE_BYTES,
        key_space_size: 1,
        sequential_keys: false,
        rate: f64::from(load.limit),
        request_timeout: std::time::Duration::from_secs(60),
    }
}

/// Most keys a range's fill may put (10 M keys of 1 KiB is 10 GB).
pub const FILL_KEYS_MAX: u64 = 10_000_000;
/// Clients (on as many connections) that put a range's fill keys.
const FILL_CLIENTS: usize = 64;

/// The untimed setup a workload needs on a fresh server: a range's key (or its fill keys).
/// `compare` calls it before it starts counting the servers' CPU time.
pub async fn prepare(config: &LoadConfig, workload: &Workload) -> Result<(), BenchError> {
    let Workload::Range(range) = workload else {
        return Ok(());
    };
    if range.fill_keys == 0 {
        // A range reads one existing key, as etcd's op-guide figures do after a put.
        let value = load::pseudo_random_bytes(config.val_size, 1);
        return load::put_once(&config.endpoints[0], &range.key, &value).await;
    }
    let fill = LoadConfig {
        conns: FILL_CLIENTS,
        clients: FILL_CLIENTS,
        total: Some(range.fill_keys),
        duration: None,
        key_space_size: range.fill_keys,
        sequential_keys: true,
        rate: 0.0,
        ..config.clone()
    };
    let summary = load::run(&fill, &Workload::Put).await?;
    if summary.errors > 0 {
        return Err(BenchError::Server {
            server: config.endpoints[0].clone(),
            reason: format!(
                "{} of the {} fill puts failed",
                summary.errors, range.fill_keys
            ),
        });
    }
    Ok(())
}

/// Runs `workload` against `config.endpoints` and returns its figures. A server that answers
/// Unimplemented for the workload's RPCs gives `BenchError::Unsupported`.
pub async fn run(config: &LoadConfig, workload: &Workload) -> Result<Summary, BenchError> {
    workload.validate(config)?;
    match workload {
        Workload::WatchLatency(spec) => watch::run_latency(config, spec).await,
        Workload::WatchGet(spec) => watch::run_get(config, spec).await,
        Workload::Defrag(spec) => defrag::run(config, spec).await,
        Workload::CheckPerf { load, prefix } => {
            let endpoint = &config.endpoints[0];
            if load::prefix_has_keys(endpoint, prefix.as_bytes()).await? {
                return Err(BenchError::Config(check::prefix_has_keys_message(prefix)));
            }
            let mut summary = load::run(config, workload).await?;
            load::delete_prefix(endpoint, prefix.as_bytes()).await?;
            summary.check = Some(check::verdict(&summary, load.limit));
            Ok(summary)
        }
        _ => load::run(config, workload).await,
    }
}
