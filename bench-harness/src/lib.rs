//! ringkv-bench: drives any etcd v3 endpoint with etcd `benchmark`-style workloads and reports
//! latency and throughput; `compare` runs ringkv and reference etcd side by side.
//!
//! Layers, lowest first: `summary` (histograms and their figures), `load` (the gRPC workload),
//! `server` (one server process on loopback), `disk` (the raw fdatasync probe), `compare`
//! (rounds, medians and the report). The binary (`main.rs`) only parses flags.

pub mod compare;
pub mod disk;
pub mod load;
pub mod server;
pub mod summary;

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
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
