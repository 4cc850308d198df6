//! The workload: `clients` tokio tasks spread round-robin over `conns` gRPC channels, each
//! claiming request numbers from one shared counter until `total` is reached or the deadline
//! passes. Closed loop (`rate == 0`): a client sends its next request when the previous reply
//! arrives. Open loop (`rate > 0`): request `i` is due at `start + i / rate`, and its latency is
//! measured from that due time, so a server that falls behind is charged for the queueing it
//! causes (no coordinated omission).

use crate::summary::{self, Summary};
use crate::BenchError;
use hdrhistogram::Histogram;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{PutRequest, RangeRequest};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// What each request does.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Put a key drawn from the key space with a fixed value of `val_size` bytes.
    Put,
    /// Range over one key; `serializable` reads the local store, otherwise linearizable.
    Range { key: Vec<u8>, serializable: bool },
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Range {
                serializable: false,
                ..
            } => "range-l",
            Operation::Range {
                serializable: true, ..
            } => "range-s",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    /// Requests to send; `None` means until the deadline.
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: u64,
    pub sequential_keys: bool,
    /// Requests per second over all clients; 0 is closed loop.
    pub rate: f64,
    /// A request slower than this counts as an error.
    pub request_timeout: Duration,
}

impl LoadConfig {
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |reason: &str| Err(BenchError::Config(reason.to_owned()));
        if self.endpoints.is_empty() {
            return fail("--endpoints is empty");
        }
        if self.conns == 0 || self.clients == 0 {
            return fail("--conns and --clients must be at least 1");
        }
        if self.total.is_none() && self.duration.is_none() {
            return fail("give --total or --duration");
        }
        if self.key_space_size == 0 || self.key_size == 0 {
            return fail("--key-size and --key-space-size must be at least 1");
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return fail("--rate must be a non-negative number");
        }
        Ok(())
    }
}

/// Opens `conns` channels, round-robin over the endpoints, before any request is timed.
pub async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Channel>, BenchError> {
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|error| BenchError::Endpoint {
                endpoint: endpoint.clone(),
                reason: error.to_string(),
            })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|source| BenchError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Puts `key` = `value` once; `compare` preloads the key a range workload reads.
pub async fn put_once(endpoint: &str, key: &[u8], value: &[u8]) -> Result<(), BenchError> {
    let channel = connect(&[endpoint.to_owned()], 1).await?.remove(0);
    KvClient::new(channel)
        .put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|status| BenchError::Server {
            server: endpoint.to_owned(),
            reason: format!("preload put failed: {status}"),
        })?;
    Ok(())
}

/// Shared by every client of one run.
struct Plan {
    next_request: AtomicU64,
    total: u64,
    start: Instant,
    deadline: Option<Instant>,
    rate: f64,
    config: LoadConfig,
    operation: Operation,
    value: Vec<u8>,
}

#[derive(Default)]
struct ClientOutcome {
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(config: &LoadConfig, operation: &Operation) -> Result<Summary, BenchError> {
    config.validate()?;
    let channels = connect(&config.endpoints, config.conns).await?;
    let start = Instant::now();
    let plan = Arc::new(Plan {
        next_request: AtomicU64::new(0),
        total: config.total.unwrap_or(u64::MAX),
        start,
        deadline: config.duration.map(|duration| start + duration),
        rate: config.rate,
        config: config.clone(),
        operation: operation.clone(),
        value: pseudo_random_bytes(config.val_size, 0x5eed),
    });
    let tasks: Vec<_> = (0..config.clients)
        .map(|client| {
            let kv = KvClient::new(channels[client % channels.len()].clone());
            tokio::spawn(run_client(kv, Arc::clone(&plan), client as u64))
        })
        .collect();
    let mut histogram = summary::new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (client_histogram, outcome) = task.await.expect("client task panicked");
        histogram.add(&client_histogram).expect("same bounds");
        errors += outcome.errors;
        first_error = first_error.or(outcome.first_error);
    }
    Ok(Summary::new(
        operation.name(),
        &histogram,
        errors,
        first_error,
        start.elapsed(),
    ))
}

async fn run_client(
    mut kv: KvClient<Channel>,
    plan: Arc<Plan>,
    client: u64,
) -> (Histogram<u64>, ClientOutcome) {
    let mut histogram = summary::new_histogram();
    let mut outcome = ClientOutcome::default();
    let mut rng = SplitMix64(client.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xbe7c);
    loop {
        let request = plan.next_request.fetch_add(1, Ordering::Relaxed);
        if request >= plan.total {
            break;
        }
        let due = if plan.rate > 0.0 {
            plan.start + Duration::from_secs_f64(request as f64 / plan.rate)
        } else {
            Instant::now()
        };
        if plan.deadline.is_some_and(|deadline| due >= deadline) {
            break;
        }
        tokio::time::sleep_until(due).await;
        let result = tokio::time::timeout(
            plan.config.request_timeout,
            send(&mut kv, &plan, request, &mut rng),
        )
        .await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(status)) => Some(format!("{}: {}", status.code(), status.message())),
            Err(_) => Some(format!("timed out after {:?}", plan.config.request_timeout)),
        };
        match failure {
            None => summary::record(&mut histogram, due.elapsed()),
            Some(message) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(message);
            }
        }
    }
    (histogram, outcome)
}

async fn send(
    kv: &mut KvClient<Channel>,
    plan: &Plan,
    request: u64,
    rng: &mut SplitMix64,
) -> Result<(), tonic::Status> {
    match &plan.operation {
        Operation::Put => {
            let config = &plan.config;
            let key_number = if config.sequential_keys {
                request % config.key_space_size
            } else {
                rng.next() % config.key_space_size
            };
            kv.put(PutRequest {
                key: key_bytes(key_number, config.key_size),
                value: plan.value.clone(),
                ..Default::default()
            })
            .await?;
        }
        Operation::Range { key, serializable } => {
            kv.range(RangeRequest {
                key: key.clone(),
                serializable: *serializable,
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}

/// `key_size` bytes: zeros, then the key number big-endian in the last (up to) 8 bytes, so
/// sequential keys sort in order.
pub fn key_bytes(key_number: u64, key_size: usize) -> Vec<u8> {
    let mut key = vec![0; key_size];
    let number = key_number.to_be_bytes();
    let tail = key_size.min(number.len());
    key[key_size - tail..].copy_from_slice(&number[number.len() - tail..]);
    key
}

/// Incompressible filler for values.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// Key choice needs speed and spread, not cryptographic quality.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
