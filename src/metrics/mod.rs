//! Process-wide metrics: counters, gauges and fixed-bucket histograms on atomics, and their
//! Prometheus text exposition (format 0.0.4), served on the client port at `/metrics`.
//!
//! The instruments live in one static, [`METRICS`], so that an instrumentation point in a lower
//! layer (WAL, raft, page store) is one line and needs no handle threaded through it. This module
//! depends on nothing else in the crate; every layer may use it.
//!
//! Names, types, help texts and bucket bounds are etcd's wherever ringkv measures the same thing,
//! so dashboards and alerts written for etcd work unchanged; what only ringkv has is named
//! `ringkv_*`. Figures that are state rather than events (leader, indexes, sizes) are not kept
//! here: the scrape reads them from their owners (`api::http`).
//!
//! Why hand-rolled rather than the `prometheus` crate: ringkv needs a fixed set of unlabelled
//! instruments, recorded on hot paths (every WAL fdatasync, every commit); a static of atomics
//! costs one relaxed add per record, needs no registration or `lazy_static`, and the text format
//! is a page of code. The crate would add a dependency tree (and protobuf) for nothing used here.

pub mod grpc;
pub mod process;

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds one now and subtracts it when the guard drops (also when a future holding it is
    /// dropped unfinished), so the gauge counts what is in flight.
    pub fn track(&'static self) -> InFlight {
        self.add(1);
        InFlight(self)
    }
}

/// See [`Gauge::track`].
#[derive(Debug)]
pub struct InFlight(&'static Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// A histogram with `N` fixed upper bounds (and the implicit `+Inf`), as Prometheus exposes it.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Observations per bucket, not cumulative: `buckets[i]` counts values in
    /// `(bounds[i-1], bounds[i]]`; values above the last bound count only in `count`.
    buckets: [AtomicU64; N],
    count: AtomicU64,
    /// The sum of observations, as `f64` bits (updated by compare-and-swap).
    sum_bits: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// `bounds` must be strictly increasing (checked by `tests::bounds_increase` for the
    /// histograms in [`METRICS`], and by `observe` in debug builds).
    pub const fn new(bounds: [f64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        debug_assert!(self.bounds.windows(2).all(|w| w[0] < w[1]));
        if let Some(i) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// Observes the time from now until the returned guard drops.
    pub fn start_timer(&'static self) -> Timer<N> {
        Timer {
            histogram: self,
            start: Instant::now(),
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }
}

/// See [`Histogram::start_timer`].
#[derive(Debug)]
pub struct Timer<const N: usize> {
    histogram: &'static Histogram<N>,
    start: Instant,
}

impl<const N: usize> Drop for Timer<N> {
    fn drop(&mut self) {
        self.histogram.observe_duration(self.start.elapsed());
    }
}

/// etcd's disk latency buckets: `prometheus.ExponentialBuckets(0.001, 2, 14)`, 1 ms to 8.192 s
/// (`etcd_disk_wal_fsync_duration_seconds`, `etcd_disk_backend_commit_duration_seconds`).
pub const DISK_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Records per WAL batch (group commit): powers of two, 1 to 4096.
pub const BATCH_RECORDS_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// What the page-store cleaner has done since the process started.
#[derive(Debug, Default)]
pub struct CleanerMetrics {
    pub runs: Counter,
    pub segments_cleaned: Counter,
    pub pages_moved: Counter,
    pub bytes_freed: Counter,
}

impl CleanerMetrics {
    /// One cleaner step's report.
    pub fn record(&self, segments_cleaned: u64, pages_moved: u64, bytes_freed: u64) {
        self.runs.inc();
        self.segments_cleaned.add(segments_cleaned);
        self.pages_moved.add(pages_moved);
        self.bytes_freed.add(bytes_freed);
    }
}

/// Every event-driven instrument of the process.
#[derive(Debug)]
pub struct Metrics {
    pub wal_fsync_seconds: Histogram<14>,
    pub wal_write_bytes: Counter,
    pub wal_batch_records: Histogram<13>,
    pub backend_commit_seconds: Histogram<14>,
    pub leader_changes: Counter,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub grpc_received_bytes: Counter,
    pub grpc_sent_bytes: Counter,
    pub health_success: Counter,
    pub health_failures: Counter,
    pub cleaner: CleanerMetrics,
    pub grpc: grpc::GrpcMetrics,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            wal_fsync_seconds: Histogram::new(DISK_SECONDS_BUCKETS),
            wal_write_bytes: Counter::new(),
            wal_batch_records: Histogram::new(BATCH_RECORDS_BUCKETS),
            backend_commit_seconds: Histogram::new(DISK_SECONDS_BUCKETS),
            leader_changes: Counter::new(),
            proposals_pending: Gauge::new(),
            proposals_failed: Counter::new(),
            grpc_received_bytes: Counter::new(),
            grpc_sent_bytes: Counter::new(),
            health_success: Counter::new(),
            health_failures: Counter::new(),
            cleaner: CleanerMetrics {
                runs: Counter::new(),
                segments_cleaned: Counter::new(),
                pages_moved: Counter::new(),
                bytes_freed: Counter::new(),
            },
            grpc: grpc::GrpcMetrics::new(),
        }
    }

    /// Writes every instrument; help texts and types are etcd's for etcd's names.
    pub fn render(&self, out: &mut Exposition) {
        out.histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &self.wal_fsync_seconds,
        );
        // etcd declares this one a gauge.
        out.gauge(
            "etcd_disk_wal_write_bytes_total",
            "Total number of bytes written in WAL.",
            self.wal_write_bytes.get() as f64,
        );
        out.histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.backend_commit_seconds,
        );
        out.counter(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.leader_changes.get(),
        );
        out.gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.proposals_pending.get() as f64,
        );
        out.counter(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            self.proposals_failed.get(),
        );
        out.counter(
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            self.grpc_received_bytes.get(),
        );
        out.counter(
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            self.grpc_sent_bytes.get(),
        );
        out.counter(
            "etcd_server_health_success",
            "The total number of successful health checks",
            self.health_success.get(),
        );
        out.counter(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            self.health_failures.get(),
        );
        out.histogram(
            "ringkv_wal_batch_records",
            "Records per WAL batch: how many submissions shared one write and one fdatasync.",
            &self.wal_batch_records,
        );
        let cleaner = &self.cleaner;
        out.counter(
            "ringkv_page_store_cleaner_runs_total",
            "Page-store cleaner steps run.",
            cleaner.runs.get(),
        );
        out.counter(
            "ringkv_page_store_cleaner_segments_cleaned_total",
            "Segments the page-store cleaner emptied of live pages.",
            cleaner.segments_cleaned.get(),
        );
        out.counter(
            "ringkv_page_store_cleaner_pages_moved_total",
            "Live pages the page-store cleaner copied forward.",
            cleaner.pages_moved.get(),
        );
        out.counter(
            "ringkv_page_store_cleaner_bytes_freed_total",
            "Bytes of segment files deleted after cleaner commits.",
            cleaner.bytes_freed.get(),
        );
        self.grpc.render(out);
    }
}

/// The process's instruments.
pub static METRICS: Metrics = Metrics::new();

/// Prometheus text exposition format 0.0.4, written into a string.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// The `Content-Type` of [`Exposition`] text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    pub fn into_text(self) -> String {
        self.text
    }

    /// The `# HELP` and `# TYPE` lines of a family whose samples follow (see [`Self::sample`]).
    pub fn family_header(&mut self, name: &str, help: &str, kind: &str) {
        debug_assert!(is_metric_name(name), "{name}");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample with labels, after its family's [`Self::family_header`].
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.text, "{name}{{");
        for (i, (key, text)) in labels.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            let _ = write!(self.text, "{comma}{key}=\"{}\"", escape_label(text));
        }
        let _ = writeln!(self.text, "}} {}", number(value));
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family_header(name, help, "counter");
        let _ = writeln!(self.text, "{name} {value}");
    }

    /// A counter whose value is not a whole number (CPU seconds).
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        self.family_header(name, help, "counter");
        let _ = writeln!(self.text, "{name} {}", number(value));
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family_header(name, help, "gauge");
        let _ = writeln!(self.text, "{name} {}", number(value));
    }

    /// A gauge with one label, such as `etcd_server_version{server_version="3.5.0"} 1`.
    pub fn labeled_gauge(&mut self, name: &str, help: &str, label: (&str, &str), value: f64) {
        self.family_header(name, help, "gauge");
        let (key, text) = label;
        let _ = writeln!(
            self.text,
            "{name}{{{key}=\"{}\"}} {}",
            escape_label(text),
            number(value)
        );
    }

    pub fn histogram<const N: usize>(&mut self, name: &str, help: &str, h: &Histogram<N>) {
        self.family_header(name, help, "histogram");
        // Buckets and count are read without a common lock while observations go on: a bucket
        // can be ahead of the count read first, so cumulative figures are clamped to it (a
        // bucket above `+Inf` would break Prometheus's quantile estimates).
        let count = h.count();
        let mut cumulative = 0;
        for (bound, bucket) in h.bounds.iter().zip(&h.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                self.text,
                "{name}_bucket{{le=\"{}\"}} {}",
                number(*bound),
                cumulative.min(count)
            );
        }
        let _ = writeln!(self.text, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(self.text, "{name}_sum {}", number(h.sum()));
        let _ = writeln!(self.text, "{name}_count {count}");
    }
}

/// A sample value: integers without a fraction, others as Rust prints them (both are valid).
fn number(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_increase() {
        for bounds in [&DISK_SECONDS_BUCKETS[..], &BATCH_RECORDS_BUCKETS[..]] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
        // etcd's ExponentialBuckets(0.001, 2, 14), exactly.
        for (i, bound) in DISK_SECONDS_BUCKETS.iter().enumerate() {
            assert!((bound - 0.001 * f64::from(1u32 << i)).abs() < 1e-12);
        }
    }

    #[test]
    fn histogram_exposition_is_cumulative() {
        static H: Histogram<3> = Histogram::new([1.0, 2.0, 4.0]);
        for value in [0.5, 1.0, 1.5, 3.0, 9.0] {
            H.observe(value);
        }
        let mut out = Exposition::new();
        out.histogram("x_seconds", "Help.", &H);
        assert_eq!(
            out.into_text(),
            "# HELP x_seconds Help.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"1\"} 2\nx_seconds_bucket{le=\"2\"} 3\n\
             x_seconds_bucket{le=\"4\"} 4\nx_seconds_bucket{le=\"+Inf\"} 5\n\
             x_seconds_sum 15\nx_seconds_count 5\n"
        );
    }

    #[test]
    fn samples_and_labels() {
        let mut out = Exposition::new();
        out.gauge("g", "G.", 0.25);
        out.labeled_gauge("v", "V.", ("server_version", "3.5.\"0\""), 1.0);
        out.counter("c_total", "C.", 7);
        assert_eq!(
            out.into_text(),
            "# HELP g G.\n# TYPE g gauge\ng 0.25\n\
             # HELP v V.\n# TYPE v gauge\nv{server_version=\"3.5.\\\"0\\\"\"} 1\n\
             # HELP c_total C.\n# TYPE c_total counter\nc_total 7\n"
        );
        assert_eq!(number(2_147_483_648.0), "2147483648");
        assert!(is_metric_name("etcd_server_has_leader"));
        assert!(!is_metric_name("9lives"));
    }

    #[test]
    fn in_flight_gauge_drops_back() {
        static G: Gauge = Gauge::new();
        let a = G.track();
        let b = G.track();
        assert_eq!(G.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(G.get(), 0);
    }
}
