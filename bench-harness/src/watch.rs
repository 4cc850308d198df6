//! The watch workloads, on etcd's Watch API (bidirectional streams).
//!
//! `watch-latency`: `streams` streams (round-robin over `conns` connections) each create
//! `watchers_per_stream` watchers on one key; a separate connection puts that key at `put_rate`
//! (open loop, `total` puts). Every put's value starts with its sequence number (8 bytes,
//! big-endian), so a stream reader knows which put an event belongs to; the latency recorded is
//! from the put's send to the event's arrival, once per watcher and event. The put latencies are
//! the part `watch-latency-put`.
//!
//! `watch-get`: `events` puts to one key, then `watchers` watchers (over `streams` streams)
//! from the first of those revisions, so they start unsynced and catch up, while one client on
//! its own connection times serializable gets until every watcher has all its events.
//!
//! A server that answers Unimplemented for Watch gives `BenchError::Unsupported`.

use crate::load::{self, LoadConfig};
use crate::progress::Progress;
use crate::summary::{Recorder, Summary};
use crate::workload::{WatchGetSpec, WatchLatencySpec};
use crate::BenchError;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::watch_client::WatchClient;
use ringkv_proto::etcdserverpb::watch_request::RequestUnion;
use ringkv_proto::etcdserverpb::{
    PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// Bytes of the put sequence number at the start of every watch-latency value.
pub const SEQUENCE_BYTES: usize = 8;
/// Most watchers one run creates.
pub const WATCHERS_MAX: usize = 1_000_000;
/// Most events each watch-get watcher catches up on.
pub const EVENTS_MAX: usize = 100_000;
/// Most puts one watch-latency run makes (each has a send-time slot).
const PUTS_MAX: u64 = 10_000_000;
/// How long creating the watchers may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long events may trail the last put before the missing ones count as errors.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);
/// watch-get runs at most this long when no --duration is given.
const WATCH_GET_DEFAULT_LIMIT: Duration = Duration::from_secs(300);

/// One open watch stream: its request sender (dropping it closes the stream) and its replies.
struct Stream {
    _requests: mpsc::Sender<WatchRequest>,
    replies: Streaming<WatchResponse>,
    /// Events that arrived while the watchers were still being created (a server that catches
    /// watchers up at once sends them before the last `created` reply).
    early_events: u64,
}

/// Opens a stream on `channel` and creates `watchers` watchers on `key` from `start_revision`
/// (0: from now), waiting for every `created` reply.
async fn open_stream(
    channel: Channel,
    endpoint: &str,
    key: &[u8],
    start_revision: i64,
    prev_kv: bool,
    watchers: usize,
) -> Result<Stream, BenchError> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            start_revision,
            prev_kv,
            ..Default::default()
        })),
    };
    // etcd (grpc-go) sends a stream's response headers with its first message, and the call
    // resolves only on those headers: the first create must be queued before awaiting it.
    let (requests, receiver) = mpsc::channel(watchers.clamp(1, 1024));
    requests.try_send(create.clone()).expect("empty channel");
    let mut replies = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
        .map_err(|status| load::setup_error(endpoint, "Watch", &status))?
        .into_inner();
    let created = async {
        let mut created = 0;
        let mut early_events = 0;
        let mut sent = 1;
        // Send while reading: the server's reply buffer is bounded, so sending everything first
        // could deadlock with a server that waits for us to read.
        while created < watchers {
            if sent < watchers {
                if let Ok(permit) = requests.try_reserve() {
                    permit.send(create.clone());
                    sent += 1;
                    continue;
                }
            }
            let reply = tokio::select! {
                reply = replies.message() => reply,
                permit = requests.reserve(), if sent < watchers => {
                    permit.map_err(|_| watch_closed(endpoint))?.send(create.clone());
                    sent += 1;
                    continue;
                }
            };
            match reply {
                Ok(Some(reply)) if reply.created => {
                    if reply.canceled {
                        return Err(BenchError::Server {
                            server: endpoint.to_owned(),
                            reason: format!("watch create refused: {}", reply.cancel_reason),
                        });
                    }
                    created += 1;
                }
                // Events for early watchers may arrive before the last is created (only
                // watch-get creates from an old revision): they count for the stream.
                Ok(Some(reply)) => early_events += reply.events.len() as u64,
                Ok(None) => return Err(watch_closed(endpoint)),
                Err(status) => return Err(load::setup_error(endpoint, "Watch", &status)),
            }
        }
        Ok(early_events)
    };
    let early_events = tokio::time::timeout(CREATE_TIMEOUT, created)
        .await
        .map_err(|_| BenchError::Server {
            server: endpoint.to_owned(),
            reason: format!("{watchers} watchers not created within {CREATE_TIMEOUT:?}"),
        })??;
    Ok(Stream {
        _requests: requests,
        replies,
        early_events,
    })
}

fn watch_closed(endpoint: &str) -> BenchError {
    BenchError::Server {
        server: endpoint.to_owned(),
        reason: "watch stream closed while creating watchers".into(),
    }
}

pub async fn run_latency(
    config: &LoadConfig,
    spec: &WatchLatencySpec,
) -> Result<Summary, BenchError> {
    let endpoint = config.endpoints[0].clone();
    let key = load::key_bytes(0x5741_5443, config.key_size);
    let puts = config
        .total
        .unwrap_or_else(|| {
            let seconds = config.duration.map_or(0.0, |d| d.as_secs_f64());
            (spec.put_rate * seconds).ceil() as u64
        })
        .min(PUTS_MAX);
    let channels = load::connect(&config.endpoints, config.conns).await?;
    let mut streams = Vec::with_capacity(spec.streams);
    for index in 0..spec.streams {
        let channel = channels[index % channels.len()].clone();
        let stream = open_stream(
            channel,
            &endpoint,
            &key,
            0,
            spec.prev_kv,
            spec.watchers_per_stream,
        )
        .await?;
        streams.push(stream);
    }
    let mut kv = KvClient::new(load::connect(&config.endpoints, 1).await?.remove(0));

    let progress = Progress::start("watch-latency", Some(puts));
    let start = Instant::now();
    // Nanoseconds from `start` to each put's send; written before the put goes out.
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..puts).map(|_| AtomicU64::new(0)).collect());
    let target = Arc::new(AtomicU64::new(spec.watchers_per_stream as u64 * puts));
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let (sent_at, target) = (Arc::clone(&sent_at), Arc::clone(&target));
            tokio::spawn(read_latency(stream, sent_at, start, target))
        })
        .collect();

    let mut put_recorder = Recorder::default();
    let deadline = config.duration.map(|duration| start + duration);
    let mut value = load::pseudo_random_bytes(config.val_size, 0x5eed);
    for sequence in 0..puts {
        let due = start + Duration::from_secs_f64(sequence as f64 / spec.put_rate);
        if deadline.is_some_and(|deadline| due >= deadline) {
            break;
        }
        tokio::time::sleep_until(due).await;
        value[..SEQUENCE_BYTES].copy_from_slice(&sequence.to_be_bytes());
        let sent = Instant::now();
        sent_at[sequence as usize].store((sent - start).as_nanos() as u64, Ordering::Release);
        let put = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        match tokio::time::timeout(config.request_timeout, kv.put(put)).await {
            Ok(Ok(_)) => put_recorder.ok(due.elapsed(), start.elapsed()),
            Ok(Err(status)) => {
                put_recorder.error(format!("{}: {}", status.code(), status.message()));
            }
            Err(_) => put_recorder.error(format!("timed out after {:?}", config.request_timeout)),
        }
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
    let puts_done = start.elapsed();

    // Events for puts that failed never come; the rest have DELIVERY_GRACE to arrive.
    let expected = put_recorder.successes() * spec.watchers_per_stream as u64;
    target.store(expected, Ordering::Release);
    let mut events = Recorder::default();
    for reader in readers {
        events.merge(reader.await.expect("reader task panicked"));
    }
    let received_total = events.successes();
    let wanted = expected * spec.streams as u64;
    if received_total < wanted {
        for _ in 0..(wanted - received_total).min(1_000_000) {
            events.error(format!(
                "event not delivered within {DELIVERY_GRACE:?} of the last put"
            ));
        }
    }
    progress.finish();
    let elapsed = start.elapsed();
    let mut summary = events.summary("watch-latency", elapsed);
    summary.parts = vec![put_recorder.summary("watch-latency-put", puts_done)];
    Ok(summary)
}

/// Reads one stream until it has `target` events (lowered when the puts end early or fail), or
/// until DELIVERY_GRACE passes without a reply; records each event's latency from its put's send.
async fn read_latency(
    mut stream: Stream,
    sent_at: Arc<Vec<AtomicU64>>,
    start: Instant,
    target: Arc<AtomicU64>,
) -> Recorder {
    const POLL: Duration = Duration::from_millis(100);
    let mut recorder = Recorder::default();
    let mut received = 0;
    let mut last_reply = Instant::now();
    while received < target.load(Ordering::Acquire) {
        let reply = match tokio::time::timeout(POLL, stream.replies.message()).await {
            Ok(Ok(Some(reply))) => reply,
            Ok(Err(status)) => {
                recorder.error(format!("{}: {}", status.code(), status.message()));
                break;
            }
            Err(_) if last_reply.elapsed() < DELIVERY_GRACE => continue,
            // The stream ended, or the grace passed in silence.
            Ok(Ok(None)) | Err(_) => break,
        };
        last_reply = Instant::now();
        let now = start.elapsed();
        for event in reply.events {
            let Some(kv) = event.kv else { continue };
            let Some(sequence) = kv
                .value
                .get(..SEQUENCE_BYTES)
                .map(|bytes| u64::from_be_bytes(bytes.try_into().expect("8 bytes")))
            else {
                continue;
            };
            let Some(slot) = sent_at.get(sequence as usize) else {
                continue;
            };
            let sent = Duration::from_nanos(slot.load(Ordering::Acquire));
            recorder.ok(now.saturating_sub(sent), now);
            received += 1;
        }
    }
    recorder
}

pub async fn run_get(config: &LoadConfig, spec: &WatchGetSpec) -> Result<Summary, BenchError> {
    let endpoint = config.endpoints[0].clone();
    let key = b"watchkey".to_vec();
    let mut kv = KvClient::new(load::connect(&config.endpoints, 1).await?.remove(0));
    let mut first_revision = 0;
    for event in 0..spec.events {
        let put = PutRequest {
            key: key.clone(),
            value: event.to_string().into_bytes(),
            ..Default::default()
        };
        let reply = kv
            .put(put)
            .await
            .map_err(|status| load::setup_error(&endpoint, "setup put", &status))?
            .into_inner();
        if event == 0 {
            first_revision = reply.header.map_or(0, |header| header.revision);
        }
    }

    let channels = load::connect(&config.endpoints, config.conns).await?;
    let getter_channel = load::connect(&config.endpoints, 1).await?.remove(0);
    let total_events = (spec.watchers * spec.events) as u64;
    let progress = Progress::start("watch-get", Some(total_events));
    let start = Instant::now();
    let limit = config.duration.unwrap_or(WATCH_GET_DEFAULT_LIMIT);
    let caught_up = Arc::new(AtomicBool::new(false));
    let getter = tokio::spawn(run_getter(
        KvClient::new(getter_channel),
        Arc::clone(&caught_up),
        start,
        start + limit,
        config.total.unwrap_or(u64::MAX),
        config.request_timeout,
    ));

    let mut readers = Vec::with_capacity(spec.streams);
    let mut setup_error = None;
    for index in 0..spec.streams {
        // Watchers spread over the streams as etcd's benchmark does (watcher i on stream i % n).
        let watchers =
            spec.watchers / spec.streams + usize::from(index < spec.watchers % spec.streams);
        if watchers == 0 {
            continue;
        }
        let channel = channels[index % channels.len()].clone();
        match open_stream(channel, &endpoint, &key, first_revision, false, watchers).await {
            Ok(stream) => {
                let expected = (watchers * spec.events) as u64;
                let done = Arc::clone(&progress.done);
                readers.push(tokio::spawn(read_events(
                    stream,
                    expected,
                    done,
                    start + limit,
                )));
            }
            Err(error) => {
                setup_error = Some(error);
                break;
            }
        }
    }
    let mut received = 0;
    for reader in readers {
        received += reader.await.expect("reader task panicked");
    }
    caught_up.store(true, Ordering::Relaxed);
    let mut gets = getter.await.expect("getter task panicked");
    progress.finish();
    if let Some(error) = setup_error {
        return Err(error);
    }
    if received < total_events {
        gets.error(format!(
            "watchers received {received} of {total_events} events within {limit:?}"
        ));
    }
    Ok(gets.summary("watch-get", start.elapsed()))
}

/// Counts events on one stream until `expected` or the deadline.
async fn read_events(
    mut stream: Stream,
    expected: u64,
    done: Arc<AtomicU64>,
    deadline: Instant,
) -> u64 {
    let mut received = stream.early_events;
    done.fetch_add(received, Ordering::Relaxed);
    while received < expected {
        match tokio::time::timeout_at(deadline, stream.replies.message()).await {
            Ok(Ok(Some(reply))) => {
                let events = reply.events.len() as u64;
                received += events;
                done.fetch_add(events, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    received
}

async fn run_getter(
    mut kv: KvClient<Channel>,
    caught_up: Arc<AtomicBool>,
    start: Instant,
    deadline: Instant,
    total: u64,
    timeout: Duration,
) -> Recorder {
    let mut recorder = Recorder::default();
    let mut sent = 0;
    while !caught_up.load(Ordering::Relaxed) && Instant::now() < deadline && sent < total {
        let get = RangeRequest {
            key: b"abc".to_vec(),
            serializable: true,
            ..Default::default()
        };
        let begin = Instant::now();
        sent += 1;
        match tokio::time::timeout(timeout, kv.range(get)).await {
            Ok(Ok(_)) => recorder.ok(begin.elapsed(), start.elapsed()),
            Ok(Err(status)) => recorder.error(format!("{}: {}", status.code(), status.message())),
            Err(_) => recorder.error(format!("timed out after {timeout:?}")),
        }
    }
    recorder
}
