//! The request/reply engine (put, range, txn-put, txn-mixed, lease-keepalive, check-perf):
//! `clients` tokio tasks spread round-robin over `conns` gRPC channels, each claiming request
//! numbers from one shared counter until `total` is reached or the deadline passes. Closed loop
//! (`rate == 0`): a client sends its next request when the previous reply arrives. Open loop
//! (`rate > 0`): request `i` is due at `start + i / rate`, and its latency is measured from that
//! due time, so a server that falls behind is charged for the queueing it causes (no coordinated
//! omission); check-perf alone measures from the send, as etcdctl does.
//!
//! A server that answers `Unimplemented` stops the run: every client stops at its next request
//! and the run returns `BenchError::Unsupported`, so a comparison can report it per server.

use crate::check;
use crate::progress::Progress;
use crate::summary::{Recorder, Summary};
use crate::workload::{RangeSpec, Workload};
use crate::BenchError;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::request_op::Request;
use ringkv_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// The TTL each lease-keepalive client grants (etcd's benchmark uses 100 s).
const LEASE_TTL_S: i64 = 100;
/// Most clients and connections one run may open.
pub const CLIENTS_MAX: usize = 100_000;

#[derive(Debug, Clone, serde::Serialize)]
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
        if self.conns > CLIENTS_MAX || self.clients > CLIENTS_MAX {
            return fail("--conns and --clients must be at most 100000");
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

/// The error for a failed setup call: `Unsupported` for Unimplemented, else `Server`.
pub fn setup_error(endpoint: &str, what: &str, status: &Status) -> BenchError {
    if status.code() == Code::Unimplemented {
        BenchError::Unsupported {
            endpoint: endpoint.to_owned(),
            message: format!("{what}: Unimplemented {:?}", status.message()),
        }
    } else {
        BenchError::Server {
            server: endpoint.to_owned(),
            reason: format!("{what} failed: {}: {}", status.code(), status.message()),
        }
    }
}

async fn kv_client(endpoint: &str) -> Result<KvClient<Channel>, BenchError> {
    Ok(KvClient::new(
        connect(&[endpoint.to_owned()], 1).await?.remove(0),
    ))
}

/// Puts `key` = `value` once; `compare` preloads the key a range workload reads.
pub async fn put_once(endpoint: &str, key: &[u8], value: &[u8]) -> Result<(), BenchError> {
    kv_client(endpoint)
        .await?
        .put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|status| setup_error(endpoint, "preload put", &status))?;
    Ok(())
}

/// etcd's range end for "every key with this prefix".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether any key starts with `prefix` (check-perf refuses to write into a used prefix).
pub async fn prefix_has_keys(endpoint: &str, prefix: &[u8]) -> Result<bool, BenchError> {
    let reply = kv_client(endpoint)
        .await?
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(|status| setup_error(endpoint, "range over the prefix", &status))?;
    Ok(!reply.into_inner().kvs.is_empty())
}

/// Deletes every key under `prefix` (check-perf's cleanup).
pub async fn delete_prefix(endpoint: &str, prefix: &[u8]) -> Result<(), BenchError> {
    kv_client(endpoint)
        .await?
        .delete_range(DeleteRangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        })
        .await
        .map_err(|status| setup_error(endpoint, "delete the prefix", &status))?;
    Ok(())
}

/// Shared by every client of one run.
struct Plan {
    next_request: AtomicU64,
    total: u64,
    start: Instant,
    deadline: Option<Instant>,
    rate: f64,
    from_due_time: bool,
    config: LoadConfig,
    workload: Workload,
    value: Vec<u8>,
    /// Set by the first Unimplemented reply; every client stops.
    stop: AtomicBool,
    unsupported: Mutex<Option<String>>,
    done: Arc<AtomicU64>,
}

/// One client's connection and, for lease-keepalive, its lease and keep-alive stream.
struct Client {
    kv: KvClient<Channel>,
    lease: Option<KeepAlive>,
    rng: SplitMix64,
}

struct KeepAlive {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    replies: Streaming<LeaseKeepAliveResponse>,
}

/// Which recorder a request's outcome goes to besides the run's own (txn-mixed's reads, writes).
type Part = Option<usize>;

pub async fn run(config: &LoadConfig, workload: &Workload) -> Result<Summary, BenchError> {
    workload.validate(config)?;
    let channels = connect(&config.endpoints, config.conns).await?;
    let mut clients = Vec::with_capacity(config.clients);
    for index in 0..config.clients {
        let channel = channels[index % channels.len()].clone();
        let lease = match workload {
            Workload::LeaseKeepalive => {
                let endpoint = &config.endpoints[index % channels.len() % config.endpoints.len()];
                Some(open_keep_alive(channel.clone(), endpoint).await?)
            }
            _ => None,
        };
        clients.push(Client {
            kv: KvClient::new(channel),
            lease,
            rng: SplitMix64((index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xbe7c),
        });
    }
    let progress = Progress::start(&workload.name(), config.total);
    let start = Instant::now();
    let plan = Arc::new(Plan {
        next_request: AtomicU64::new(0),
        total: config.total.unwrap_or(u64::MAX),
        start,
        deadline: config.duration.map(|duration| start + duration),
        rate: config.rate,
        from_due_time: workload.latency_from_due_time(),
        config: config.clone(),
        workload: workload.clone(),
        value: match workload {
            Workload::CheckPerf { .. } => vec![0; check::VALUE_BYTES],
            _ => pseudo_random_bytes(config.val_size, 0x5eed),
        },
        stop: AtomicBool::new(false),
        unsupported: Mutex::new(None),
        done: Arc::clone(&progress.done),
    });
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(run_client(client, Arc::clone(&plan))))
        .collect();
    let part_names = part_names(workload);
    let mut all = Recorder::default();
    let mut parts: Vec<Recorder> = part_names.iter().map(|_| Recorder::default()).collect();
    for task in tasks {
        let (client_all, client_parts) = task.await.expect("client task panicked");
        all.merge(client_all);
        for (part, client_part) in parts.iter_mut().zip(client_parts) {
            part.merge(client_part);
        }
    }
    let elapsed = start.elapsed();
    progress.finish();
    if let Some(message) = plan.unsupported.lock().expect("not poisoned").take() {
        return Err(BenchError::Unsupported {
            endpoint: config.endpoints.join(","),
            message,
        });
    }
    let mut summary = all.summary(&workload.name(), elapsed);
    summary.parts = part_names
        .iter()
        .zip(&parts)
        .map(|(name, part)| part.summary(name, elapsed))
        .collect();
    Ok(summary)
}

fn part_names(workload: &Workload) -> Vec<&'static str> {
    match workload {
        Workload::TxnMixed { .. } => vec!["txn-mixed-read", "txn-mixed-write"],
        _ => Vec::new(),
    }
}

async fn open_keep_alive(channel: Channel, endpoint: &str) -> Result<KeepAlive, BenchError> {
    let mut lease = LeaseClient::new(channel);
    let grant = lease
        .lease_grant(LeaseGrantRequest {
            ttl: LEASE_TTL_S,
            id: 0,
        })
        .await
        .map_err(|status| setup_error(endpoint, "LeaseGrant", &status))?
        .into_inner();
    if !grant.error.is_empty() {
        return Err(BenchError::Server {
            server: endpoint.to_owned(),
            reason: format!("LeaseGrant failed: {}", grant.error),
        });
    }
    // etcd (grpc-go) sends a stream's response headers with its first message, and the call
    // resolves only on those headers: the first keep-alive must be queued before awaiting it.
    let (requests, receiver) = mpsc::channel(1);
    requests
        .try_send(LeaseKeepAliveRequest { id: grant.id })
        .expect("empty channel");
    let replies = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .map_err(|status| setup_error(endpoint, "LeaseKeepAlive", &status))?
        .into_inner();
    let mut keep_alive = KeepAlive {
        id: grant.id,
        requests,
        replies,
    };
    receive_keep_alive(&mut keep_alive)
        .await
        .map_err(|status| setup_error(endpoint, "LeaseKeepAlive", &status))?;
    Ok(keep_alive)
}

async fn run_client(mut client: Client, plan: Arc<Plan>) -> (Recorder, Vec<Recorder>) {
    let mut all = Recorder::default();
    let mut parts: Vec<Recorder> = part_names(&plan.workload)
        .iter()
        .map(|_| Recorder::default())
        .collect();
    loop {
        if plan.stop.load(Ordering::Relaxed) {
            break;
        }
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
        let sent = Instant::now();
        let result = tokio::time::timeout(
            plan.config.request_timeout,
            send(&mut client, &plan, request),
        )
        .await;
        let (failure, part) = match result {
            Ok(Ok(part)) => (None, part),
            Ok(Err((status, part))) => {
                if status.code() == Code::Unimplemented {
                    plan.stop.store(true, Ordering::Relaxed);
                    plan.unsupported
                        .lock()
                        .expect("not poisoned")
                        .get_or_insert_with(|| {
                            let name = plan.workload.name();
                            format!("{name} request: Unimplemented {:?}", status.message())
                        });
                }
                (
                    Some(format!("{}: {}", status.code(), status.message())),
                    part,
                )
            }
            Err(_) => (
                Some(format!("timed out after {:?}", plan.config.request_timeout)),
                None,
            ),
        };
        let since = if plan.from_due_time { due } else { sent };
        let recorders = std::iter::once(&mut all).chain(part.and_then(|p| parts.get_mut(p)));
        for recorder in recorders {
            match &failure {
                None => recorder.ok(since.elapsed(), plan.start.elapsed()),
                Some(message) => recorder.error(message.clone()),
            }
        }
        plan.done.fetch_add(1, Ordering::Relaxed);
    }
    (all, parts)
}

fn range_request(range: &RangeSpec) -> RangeRequest {
    RangeRequest {
        key: range.key.clone(),
        range_end: range.range_end.clone(),
        limit: range.limit,
        serializable: range.serializable,
        keys_only: range.keys_only,
        count_only: range.count_only,
        ..Default::default()
    }
}

fn put_op(key: Vec<u8>, value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key,
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

/// Sends request number `request`; says which part it belongs to, also on failure.
async fn send(client: &mut Client, plan: &Plan, request: u64) -> Result<Part, (Status, Part)> {
    let config = &plan.config;
    match &plan.workload {
        Workload::Put => {
            let key_number = if config.sequential_keys {
                request % config.key_space_size
            } else {
                client.rng.next_u64() % config.key_space_size
            };
            let put = PutRequest {
                key: key_bytes(key_number, config.key_size),
                value: plan.value.clone(),
                ..Default::default()
            };
            client.kv.put(put).await.map_err(|s| (s, None))?;
            Ok(None)
        }
        Workload::Range(range) => {
            let mut read = range_request(range);
            if range.fill_keys > 0 {
                let key_number = if config.sequential_keys {
                    request % range.fill_keys
                } else {
                    client.rng.next_u64() % range.fill_keys
                };
                read.key = key_bytes(key_number, config.key_size);
            }
            client.kv.range(read).await.map_err(|s| (s, None))?;
            Ok(None)
        }
        Workload::TxnPut { txn_ops } => {
            let ops = *txn_ops as u64;
            let success = (0..ops)
                .map(|j| {
                    let key_number = (request * ops + j) % config.key_space_size;
                    put_op(key_bytes(key_number, config.key_size), &plan.value)
                })
                .collect();
            let txn = TxnRequest {
                success,
                ..Default::default()
            };
            client.kv.txn(txn).await.map_err(|s| (s, None))?;
            Ok(None)
        }
        Workload::TxnMixed { rw_ratio, read } => {
            let read_probability = rw_ratio / (1.0 + rw_ratio);
            let unit = (client.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let is_read = unit < read_probability;
            let (op, part) = if is_read {
                let op = RequestOp {
                    request: Some(Request::RequestRange(range_request(read))),
                };
                (op, 0)
            } else {
                let key = key_bytes(request % config.key_space_size, config.key_size);
                (put_op(key, &plan.value), 1)
            };
            let txn = TxnRequest {
                success: vec![op],
                ..Default::default()
            };
            client.kv.txn(txn).await.map_err(|s| (s, Some(part)))?;
            Ok(Some(part))
        }
        Workload::LeaseKeepalive => {
            let keep_alive = client.lease.as_mut().expect("opened before the run");
            keep_alive_once(keep_alive).await.map_err(|s| (s, None))?;
            Ok(None)
        }
        Workload::CheckPerf { prefix, .. } => {
            let random = (client.rng.next_u64() >> 1) as i64;
            let mut key = prefix.as_bytes().to_vec();
            key.extend_from_slice(&check::key_suffix(random));
            let put = PutRequest {
                key,
                value: plan.value.clone(),
                ..Default::default()
            };
            client.kv.put(put).await.map_err(|s| (s, None))?;
            Ok(None)
        }
        Workload::WatchLatency(_) | Workload::WatchGet(_) | Workload::Defrag(_) => {
            unreachable!("watch and defrag workloads run in their own modules")
        }
    }
}

async fn keep_alive_once(keep_alive: &mut KeepAlive) -> Result<(), Status> {
    let request = LeaseKeepAliveRequest { id: keep_alive.id };
    if keep_alive.requests.send(request).await.is_err() {
        return Err(Status::unavailable("keep-alive stream closed"));
    }
    receive_keep_alive(keep_alive).await
}

async fn receive_keep_alive(keep_alive: &mut KeepAlive) -> Result<(), Status> {
    match keep_alive.replies.message().await? {
        Some(reply) if reply.ttl > 0 => Ok(()),
        Some(_) => Err(Status::not_found("lease expired or revoked (TTL 0)")),
        None => Err(Status::unavailable("keep-alive stream ended")),
    }
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
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Key choice needs speed and spread, not cryptographic quality.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_number_and_prefix_end_is_etcds() {
        assert_eq!(key_bytes(258, 4), [0, 0, 1, 2]);
        assert_eq!(key_bytes(258, 1), [2]);
        assert!(key_bytes(9, 8) < key_bytes(10, 8));
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
        assert_eq!(prefix_end(&[0xff]), [0]);
    }

    #[test]
    fn unimplemented_setup_is_unsupported() {
        let error = setup_error("http://x", "Watch", &Status::unimplemented("nope"));
        assert_eq!(
            error.to_string(),
            "http://x does not support this workload: Watch: Unimplemented \"nope\""
        );
        let error = setup_error("http://x", "Watch", &Status::unavailable("down"));
        assert!(matches!(error, BenchError::Server { .. }));
    }
}
