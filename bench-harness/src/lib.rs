//! ringkv-bench: drives any etcd v3 endpoint with etcd `benchmark`-style workloads and reports
//! latency and throughput; `compare` runs ringkv and reference etcd side by side.
//!
//! Layers, lowest first: `summary` (histograms, per-second throughput, errors), `progress` (the
//! bar), `check` (etcdctl's check-perf loads and pass rules), `load` (request/reply workloads)
//! and `watch` (watch workloads) and `defrag` (a put load across a
//! Defragment) under `workload` (the workload definitions and dispatch),
//! `server` (one server process on loopback), `cluster` (N of them as one static cluster),
//! `failover` (leader-crash trials on clusters), `disk` (the raw fdatasync probe), `chart` (SVG
//! charts), `compare` (rounds, medians, the report), `suite` (the standard set of comparisons)
//! and `smoke` (every workload briefly, for CI). The binary (`main.rs`) only parses flags.

pub mod chart;
pub mod check;
pub mod cluster;
pub mod compare;
pub mod defrag;
pub mod disk;
pub mod failover;
pub mod load;
pub mod progress;
pub mod server;
pub mod smoke;
pub mod suite;
pub mod summary;
pub mod watch;
pub mod workload;

/// Everything that stops a benchmark run. Failed requests are not errors here: they are counted
/// in the summary.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("server {server}: {reason}")]
    Server { server: String, reason: String },
    #[error("invalid option: {0}")]
    Config(String),
    /// The server answered Unimplemented: it does not serve this workload's RPCs (yet).
    #[error("{endpoint} does not support this workload: {message}")]
    Unsupported { endpoint: String, message: String },
    #[error("{0}")]
    Cluster(String),
    #[error("chart {0}")]
    Chart(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
