//! `defrag`: how a steady write load fares while the server defragments a large store.
//!
//! 1. Fill: `fill_clients` closed-loop clients put `fill_bytes` of `fill_val_size`-byte values
//!    under keys `defrag-fill/NNNNNNNN`, each key once.
//! 2. Make garbage: one DeleteRange removes the first half of those keys (the oldest writes, so
//!    the dead data is contiguous in write order, as expiring old data is), then a physical
//!    Compaction at the current revision frees their history. Status gives the db size after
//!    the fill and before the defrag (a server that reclaims space online, as ringkv's cleaner
//!    does after a compaction, is smaller by then).
//! 3. Load: `LoadConfig::clients` clients on `LoadConfig::conns` channels put
//!    `LoadConfig::val_size`-byte values over `key_space_size` keys open loop at
//!    `LoadConfig::rate` (latency counted from each put's due time, as in `load`).
//! 4. After `baseline_s` of load, Maintenance.Defragment is called on a connection of its own;
//!    the load goes on until every put due up to `after_s` after it returned has been sent
//!    (a server that stalled has a backlog to answer first; at most `CATCH_UP_MAX` more), then
//!    Status gives the db size after.
//!
//! A put belongs to the window its [due, reply] interval falls in: `before` ends before the
//! defrag starts, `after` is due once it has returned, anything that overlaps it is `during`. The
//! summary's parts are the three windows plus `defrag-call` (one request: the call's duration);
//! its figures carry the db sizes and the defrag window in seconds of the load, which the
//! throughput chart marks.

use crate::load::{self, key_bytes, pseudo_random_bytes, setup_error};
use crate::summary::{Recorder, Summary};
use crate::BenchError;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ringkv_proto::etcdserverpb::{
    CompactionRequest, DefragmentRequest, DeleteRangeRequest, PutRequest, StatusRequest,
    StatusResponse,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Prefix of the fill keys; the load's keys are `key_bytes` numbers, which never start with it.
pub const FILL_PREFIX: &str = "defrag-fill/";
/// Most fill keys (bounds the fill's request count whatever the sizes).
pub const FILL_KEYS_MAX: u64 = 1_000_000;
/// Largest fill value: under etcd's default 1.5 MiB request limit.
pub const FILL_VAL_SIZE_MAX: usize = 1024 * 1024;
/// After `after_s`, how long a load that fell behind may take to send its backlog.
const CATCH_UP_MAX: Duration = Duration::from_secs(300);
/// A Defragment (or the fill's compaction) slower than this fails the run.
const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(1800);
/// The figures that mark the defrag window on the throughput chart.
pub const WINDOW_START: &str = "defrag start (s of load)";
pub const WINDOW_END: &str = "defrag end (s of load)";
/// Windows of the load, in report order.
pub const WINDOWS: [&str; 3] = ["put-before-defrag", "put-during-defrag", "put-after-defrag"];

#[derive(Debug, Clone, Serialize)]
pub struct DefragSpec {
    /// Bytes of values the fill writes (before half is deleted).
    pub fill_bytes: u64,
    pub fill_val_size: usize,
    pub fill_clients: usize,
    /// Seconds of load before Defragment is called.
    pub baseline_s: f64,
    /// Seconds of load after Defragment returns.
    pub after_s: f64,
}

impl DefragSpec {
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |reason: String| Err(BenchError::Config(reason));
        if self.fill_val_size == 0 || self.fill_val_size > FILL_VAL_SIZE_MAX {
            return fail(format!(
                "--fill-val-size must be in [1, {FILL_VAL_SIZE_MAX}]"
            ));
        }
        let keys = self.fill_bytes / self.fill_val_size as u64;
        if !(2..=FILL_KEYS_MAX).contains(&keys) {
            return fail(format!(
                "--fill-bytes / --fill-val-size must be between 2 and {FILL_KEYS_MAX} keys, got {keys}"
            ));
        }
        if self.fill_clients == 0 || self.fill_clients > load::CLIENTS_MAX {
            return fail("--fill-clients must be in [1, 100000]".into());
        }
        for (name, seconds) in [("--baseline", self.baseline_s), ("--after", self.after_s)] {
            if !(0.0..=3600.0).contains(&seconds) {
                return fail(format!("{name} must be in [0, 3600] seconds"));
            }
        }
        Ok(())
    }

    fn fill_keys(&self) -> u64 {
        self.fill_bytes / self.fill_val_size as u64
    }
}

fn fill_key(index: u64) -> Vec<u8> {
    format!("{FILL_PREFIX}{index:08}").into_bytes()
}

/// Runs the whole workload against `config.endpoints[0]`.
pub async fn run(config: &load::LoadConfig, spec: &DefragSpec) -> Result<Summary, BenchError> {
    config.validate()?;
    spec.validate()?;
    if config.rate <= 0.0 {
        return Err(BenchError::Config(
            "defrag needs an open-loop load: give --rate".into(),
        ));
    }
    let endpoint = config.endpoints[0].clone();
    let fill_started = Instant::now();
    fill(&endpoint, spec).await?;
    let mut maintenance = MaintenanceClient::new(
        load::connect(std::slice::from_ref(&endpoint), 1)
            .await?
            .remove(0),
    );
    let filled = status(&mut maintenance, &endpoint).await?;
    let garbage_revision = make_garbage(&endpoint, spec).await?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    let before = status(&mut maintenance, &endpoint).await?;
    println!(
        "defrag: filled {} keys of {} B in {fill_s:.1} s, deleted half, compacted at {garbage_revision}; db size {} B ({} B in use)",
        spec.fill_keys(),
        spec.fill_val_size,
        before.db_size,
        before.db_size_in_use
    );

    let channels = load::connect(&config.endpoints, config.conns).await?;
    let plan = Arc::new(Plan {
        next: AtomicU64::new(0),
        start: Instant::now(),
        rate: config.rate,
        stop: AtomicBool::new(false),
        last_due_us: AtomicU64::new(u64::MAX),
        config: config.clone(),
        value: pseudo_random_bytes(config.val_size, 0x00de_f7a9),
    });
    let clients: Vec<_> = (0..config.clients)
        .map(|index| {
            let kv = KvClient::new(channels[index % channels.len()].clone());
            tokio::spawn(run_client(kv, Arc::clone(&plan), index as u64))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs_f64(spec.baseline_s)).await;
    let defrag_start = plan.start.elapsed();
    let defrag = tokio::time::timeout(
        MAINTENANCE_TIMEOUT,
        maintenance.defragment(DefragmentRequest {}),
    )
    .await;
    let defrag_end = plan.start.elapsed();
    let defrag_took = defrag_end.saturating_sub(defrag_start);
    let defrag_error = match defrag {
        Ok(Ok(_)) => None,
        Ok(Err(status)) => Some(format!(
            "defragment: {}: {}",
            status.code(),
            status.message()
        )),
        Err(_) => Some(format!(
            "defragment: timed out after {MAINTENANCE_TIMEOUT:?}"
        )),
    };
    let last_due = defrag_end + Duration::from_secs_f64(spec.after_s);
    plan.last_due_us
        .store(last_due.as_micros() as u64, Ordering::Relaxed);
    let hard_stop = plan.start + last_due + CATCH_UP_MAX;
    let mut samples = Vec::new();
    for mut client in clients {
        let client_samples =
            if let Ok(joined) = tokio::time::timeout_at(hard_stop, &mut client).await {
                joined
            } else {
                plan.stop.store(true, Ordering::Relaxed);
                client.await
            };
        samples.extend(client_samples.expect("client task panicked"));
    }
    let elapsed = plan.start.elapsed();
    let after = status(&mut maintenance, &endpoint).await?;

    let mut summary = summarize(&samples, defrag_start, defrag_end, elapsed);
    let mut call = Recorder::default();
    match defrag_error {
        None => call.ok(defrag_took, defrag_end),
        Some(message) => call.error(message),
    }
    summary.parts.push(call.summary("defrag-call", defrag_took));
    summary.figures = BTreeMap::from([
        ("fill (s)".to_owned(), fill_s),
        ("defrag duration (s)".to_owned(), defrag_took.as_secs_f64()),
        (WINDOW_START.to_owned(), defrag_start.as_secs_f64()),
        (WINDOW_END.to_owned(), defrag_end.as_secs_f64()),
        ("db size after fill (MiB)".to_owned(), mib(filled.db_size)),
        ("db size before (MiB)".to_owned(), mib(before.db_size)),
        ("db size after (MiB)".to_owned(), mib(after.db_size)),
        (
            "db in use before (MiB)".to_owned(),
            mib(before.db_size_in_use),
        ),
        (
            "db in use after (MiB)".to_owned(),
            mib(after.db_size_in_use),
        ),
    ]);
    Ok(summary)
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One put of the load: when it was due, when its reply came, and how it ended.
struct Sample {
    due: Duration,
    done: Duration,
    error: Option<String>,
}

struct Plan {
    next: AtomicU64,
    start: Instant,
    rate: f64,
    /// Set when the load has run long enough (or too long).
    stop: AtomicBool,
    /// No put due after this (µs since `start`) is sent; `u64::MAX` until the defrag returned.
    last_due_us: AtomicU64,
    config: load::LoadConfig,
    value: Vec<u8>,
}

async fn run_client(mut kv: KvClient<Channel>, plan: Arc<Plan>, seed: u64) -> Vec<Sample> {
    let mut rng = load::SplitMix64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdef);
    let mut samples = Vec::new();
    // Bounded by `last_due_us`, or by the stop flag, which the controller sets after at most
    // baseline + MAINTENANCE_TIMEOUT + after + CATCH_UP_MAX.
    while !plan.stop.load(Ordering::Relaxed) {
        let request = plan.next.fetch_add(1, Ordering::Relaxed);
        let due = Duration::from_secs_f64(request as f64 / plan.rate);
        if due.as_micros() as u64 > plan.last_due_us.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep_until(plan.start + due).await;
        if plan.stop.load(Ordering::Relaxed) {
            break;
        }
        let key = key_bytes(
            rng.next_u64() % plan.config.key_space_size,
            plan.config.key_size,
        );
        let put = kv.put(PutRequest {
            key,
            value: plan.value.clone(),
            ..Default::default()
        });
        let error = match tokio::time::timeout(plan.config.request_timeout, put).await {
            Ok(Ok(_)) => None,
            Ok(Err(status)) => Some(format!("{}: {}", status.code(), status.message())),
            Err(_) => Some(format!("timed out after {:?}", plan.config.request_timeout)),
        };
        samples.push(Sample {
            due,
            done: plan.start.elapsed(),
            error,
        });
    }
    samples
}

/// The whole load's summary (its timeline drives the throughput chart) with one part per window.
fn summarize(
    samples: &[Sample],
    defrag_start: Duration,
    defrag_end: Duration,
    elapsed: Duration,
) -> Summary {
    let mut all = Recorder::default();
    let mut windows: [Recorder; 3] = Default::default();
    for sample in samples {
        let window = if sample.done < defrag_start {
            0
        } else if sample.due >= defrag_end {
            2
        } else {
            1
        };
        for recorder in [&mut all, &mut windows[window]] {
            match &sample.error {
                None => recorder.ok(sample.done.saturating_sub(sample.due), sample.done),
                Some(message) => recorder.error(message.clone()),
            }
        }
    }
    let spans = [
        defrag_start,
        defrag_end.saturating_sub(defrag_start),
        elapsed.saturating_sub(defrag_end),
    ];
    let mut summary = all.summary("defrag", elapsed);
    summary.parts = WINDOWS
        .iter()
        .zip(&windows)
        .zip(spans)
        .map(|((name, recorder), span)| recorder.summary(name, span))
        .collect();
    summary
}

async fn fill(endpoint: &str, spec: &DefragSpec) -> Result<(), BenchError> {
    let channels = load::connect(&[endpoint.to_owned()], spec.fill_clients.min(8)).await?;
    let next = Arc::new(AtomicU64::new(0));
    let value = Arc::new(pseudo_random_bytes(spec.fill_val_size, 0xf111));
    let keys = spec.fill_keys();
    let tasks: Vec<_> = (0..spec.fill_clients)
        .map(|index| {
            let mut kv = KvClient::new(channels[index % channels.len()].clone());
            let (next, value, endpoint) =
                (Arc::clone(&next), Arc::clone(&value), endpoint.to_owned());
            tokio::spawn(async move {
                loop {
                    let key = next.fetch_add(1, Ordering::Relaxed);
                    if key >= keys {
                        return Ok(());
                    }
                    kv.put(PutRequest {
                        key: fill_key(key),
                        value: value.as_ref().clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|status| setup_error(&endpoint, "fill put", &status))?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("fill task panicked")?;
    }
    Ok(())
}

/// Deletes the first half of the fill keys and compacts their history away; returns the
/// compaction revision.
async fn make_garbage(endpoint: &str, spec: &DefragSpec) -> Result<i64, BenchError> {
    let channel = load::connect(&[endpoint.to_owned()], 1).await?.remove(0);
    let mut kv = KvClient::new(channel);
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: fill_key(0),
            range_end: fill_key(spec.fill_keys() / 2),
            ..Default::default()
        })
        .await
        .map_err(|status| setup_error(endpoint, "delete half the fill", &status))?
        .into_inner();
    let revision = deleted.header.map_or(0, |header| header.revision);
    tokio::time::timeout(
        MAINTENANCE_TIMEOUT,
        kv.compact(CompactionRequest {
            revision,
            physical: true,
        }),
    )
    .await
    .map_err(|_| BenchError::Server {
        server: endpoint.to_owned(),
        reason: "compaction timed out".into(),
    })?
    .map_err(|status| setup_error(endpoint, "compact", &status))?;
    Ok(revision)
}

async fn status(
    maintenance: &mut MaintenanceClient<Channel>,
    endpoint: &str,
) -> Result<StatusResponse, BenchError> {
    Ok(maintenance
        .status(StatusRequest {})
        .await
        .map_err(|status| setup_error(endpoint, "Status", &status))?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(due_ms: u64, done_ms: u64, error: Option<&str>) -> Sample {
        Sample {
            due: Duration::from_millis(due_ms),
            done: Duration::from_millis(done_ms),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_put_that_overlaps_the_defrag_counts_as_during() {
        let samples = [
            sample(0, 5, None),
            // Due before the defrag, answered during it.
            sample(990, 1500, None),
            sample(1200, 1900, Some("Unavailable: x")),
            // Due during, answered after.
            sample(1999, 2100, None),
            sample(2000, 2001, None),
        ];
        let summary = summarize(
            &samples,
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3),
        );
        let counts: Vec<(u64, u64)> = summary
            .parts
            .iter()
            .map(|part| (part.requests, part.errors))
            .collect();
        assert_eq!(counts, [(1, 0), (2, 1), (1, 0)]);
        assert_eq!(summary.requests, 4);
        assert_eq!(summary.errors, 1);
        // Latency runs from the due time: 510 ms for the put that waited out the defrag.
        assert!(
            summary.parts[1].latency_us.max >= 510_000,
            "{:?}",
            summary.parts[1].latency_us
        );
        assert_eq!(summary.timeline_per_s, [1, 1, 2]);
    }

    #[test]
    fn bad_specs_are_refused() {
        let good = DefragSpec {
            fill_bytes: 1 << 20,
            fill_val_size: 64 << 10,
            fill_clients: 4,
            baseline_s: 1.0,
            after_s: 1.0,
        };
        assert!(good.validate().is_ok());
        for bad in [
            DefragSpec {
                fill_val_size: 0,
                ..good.clone()
            },
            DefragSpec {
                fill_val_size: 2 << 20,
                ..good.clone()
            },
            DefragSpec {
                fill_bytes: 64 << 10,
                ..good.clone()
            },
            DefragSpec {
                fill_clients: 0,
                ..good.clone()
            },
            DefragSpec {
                after_s: f64::NAN,
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(fill_key(7), b"defrag-fill/00000007");
    }
}
