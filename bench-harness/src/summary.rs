//! The figures of one workload run: counts, throughput (overall and per second), latency
//! percentiles from an HDR histogram in microseconds, and the errors by message; printed as a
//! table or written as JSON. A `Recorder` collects them on one client task; recorders merge.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Highest latency the histograms track; slower requests are clamped to it (and still counted).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Three significant digits: 0.1% relative error on every percentile.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Distinct error messages kept per run; further ones are counted under `OTHER_ERRORS`.
pub const ERROR_MESSAGES_MAX: usize = 16;
pub const OTHER_ERRORS: &str = "(other errors)";
/// Per-second buckets kept; a run longer than this adds its tail to the last bucket.
pub const TIMELINE_SECONDS_MAX: usize = 24 * 3600;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGNIFICANT_DIGITS).expect("valid bounds")
}

/// Records `latency`, clamped to the histogram's range [1 µs, LATENCY_MAX_US].
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let latency_us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
    histogram.record(latency_us).expect("clamped into range");
}

/// Rebuilds a histogram from `Summary::histogram_us`, to merge rounds or draw charts.
pub fn histogram_from_buckets(buckets: &[(u64, u64)]) -> Histogram<u64> {
    let mut histogram = new_histogram();
    for &(value, count) in buckets {
        histogram
            .record_n(value.clamp(1, LATENCY_MAX_US), count)
            .expect("clamped into range");
    }
    histogram
}

/// What one task saw: successes (latency and completion second), failures by message.
#[derive(Debug)]
pub struct Recorder {
    histogram: Histogram<u64>,
    /// Successes completed in second i of the run.
    timeline: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            histogram: new_histogram(),
            timeline: Vec::new(),
            errors: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// A success that took `latency` and completed `since_start` after the run began.
    pub fn ok(&mut self, latency: Duration, since_start: Duration) {
        record(&mut self.histogram, latency);
        let second = (since_start.as_secs() as usize).min(TIMELINE_SECONDS_MAX - 1);
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, 0);
        }
        self.timeline[second] += 1;
    }

    pub fn error(&mut self, message: String) {
        self.error_n(message, 1);
    }

    fn error_n(&mut self, message: String, count: u64) {
        let key = if self.errors.len() < ERROR_MESSAGES_MAX || self.errors.contains_key(&message) {
            message
        } else {
            OTHER_ERRORS.to_owned()
        };
        *self.errors.entry(key).or_default() += count;
    }

    pub fn merge(&mut self, other: Recorder) {
        self.histogram.add(&other.histogram).expect("same bounds");
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            *mine += theirs;
        }
        for (message, count) in other.errors {
            self.error_n(message, count);
        }
    }

    pub fn successes(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self, workload: &str, elapsed: Duration) -> Summary {
        Summary::new(
            workload,
            &self.histogram,
            &self.errors,
            &self.timeline,
            elapsed,
        )
    }
}

/// Latency of the successful requests, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub stddev: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The workload (or part of one, e.g. `txn-mixed-read`).
    pub workload: String,
    /// Requests that succeeded; only these are in the latency figures.
    pub requests: u64,
    /// Requests that failed (gRPC error or the per-request timeout).
    pub errors: u64,
    /// Failures by message (at most `ERROR_MESSAGES_MAX` messages, then `OTHER_ERRORS`).
    #[serde(default)]
    pub error_counts: BTreeMap<String, u64>,
    /// The first failure's message in sort order, to tell what went wrong at a glance.
    pub first_error: Option<String>,
    /// From the first request's start to the last reply.
    pub elapsed_s: f64,
    /// Successful requests per second of `elapsed_s`.
    pub throughput_rps: f64,
    /// Successes completed in each second of the run.
    #[serde(default)]
    pub timeline_per_s: Vec<u64>,
    pub latency_us: LatencyUs,
    /// The raw histogram: (highest equivalent value in µs, count) for every recorded bucket.
    pub histogram_us: Vec<(u64, u64)>,
    /// Sub-measurements of the same run (reads and writes of txn-mixed, puts of watch-latency).
    #[serde(default)]
    pub parts: Vec<Summary>,
    /// check-perf's verdict under etcdctl's pass rules.
    #[serde(default)]
    pub check: Option<crate::check::Verdict>,
    /// Workload-specific figures by name with the unit in it (defrag: db sizes, its duration).
    #[serde(default)]
    pub figures: BTreeMap<String, f64>,
}

impl Summary {
    pub fn new(
        workload: &str,
        histogram: &Histogram<u64>,
        error_counts: &BTreeMap<String, u64>,
        timeline: &[u64],
        elapsed: Duration,
    ) -> Summary {
        let requests = histogram.len();
        let elapsed_s = elapsed.as_secs_f64();
        let latency_us = if requests == 0 {
            LatencyUs::default()
        } else {
            LatencyUs {
                p50: histogram.value_at_quantile(0.50),
                p90: histogram.value_at_quantile(0.90),
                p99: histogram.value_at_quantile(0.99),
                p999: histogram.value_at_quantile(0.999),
                max: histogram.max(),
                mean: histogram.mean(),
                stddev: histogram.stdev(),
            }
        };
        Summary {
            workload: workload.to_owned(),
            requests,
            errors: error_counts.values().sum(),
            error_counts: error_counts.clone(),
            first_error: error_counts.keys().next().cloned(),
            elapsed_s,
            throughput_rps: if elapsed_s > 0.0 {
                requests as f64 / elapsed_s
            } else {
                0.0
            },
            timeline_per_s: timeline.to_vec(),
            latency_us,
            histogram_us: histogram
                .iter_recorded()
                .map(|bucket| {
                    (
                        histogram.highest_equivalent(bucket.value_iterated_to()),
                        bucket.count_at_value(),
                    )
                })
                .collect(),
            parts: Vec::new(),
            check: None,
            figures: BTreeMap::new(),
        }
    }

    /// The end-of-run table, then one per part, then the check verdict.
    pub fn table(&self) -> String {
        let l = &self.latency_us;
        let mut rows = vec![
            ("workload", self.workload.clone()),
            ("requests", self.requests.to_string()),
            ("errors", self.errors.to_string()),
            ("elapsed", format!("{:.3} s", self.elapsed_s)),
            ("throughput", format!("{:.1} req/s", self.throughput_rps)),
            ("p50", format!("{} us", l.p50)),
            ("p90", format!("{} us", l.p90)),
            ("p99", format!("{} us", l.p99)),
            ("p99.9", format!("{} us", l.p999)),
            ("max", format!("{} us", l.max)),
            ("mean", format!("{:.1} us", l.mean)),
            ("stddev", format!("{:.1} us", l.stddev)),
        ];
        let per_second: Vec<String> = self
            .timeline_per_s
            .iter()
            .take(60)
            .map(u64::to_string)
            .collect();
        if !per_second.is_empty() {
            let more = if self.timeline_per_s.len() > 60 {
                " ..."
            } else {
                ""
            };
            rows.push(("per second", format!("{}{more}", per_second.join(" "))));
        }
        for (message, count) in &self.error_counts {
            rows.push(("error", format!("{count} x {message}")));
        }
        let mut table = String::new();
        for (name, value) in rows {
            let _ = writeln!(table, "{name:<12} {value}");
        }
        for part in &self.parts {
            table.push('\n');
            table.push_str(&part.table());
        }
        if let Some(check) = &self.check {
            table.push('\n');
            for line in &check.lines {
                let _ = writeln!(table, "{line}");
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_merges_timelines_and_errors() {
        let mut a = Recorder::default();
        a.ok(Duration::from_micros(100), Duration::from_millis(10));
        a.ok(Duration::from_micros(300), Duration::from_millis(2500));
        a.error("boom".into());
        let mut b = Recorder::default();
        b.ok(Duration::from_micros(200), Duration::from_millis(1500));
        b.error("boom".into());
        b.error("bang".into());
        a.merge(b);
        let summary = a.summary("put", Duration::from_secs(3));
        assert_eq!(summary.requests, 3);
        assert_eq!(summary.errors, 3);
        assert_eq!(summary.timeline_per_s, vec![1, 1, 1]);
        assert_eq!(summary.error_counts["boom"], 2);
        assert_eq!(summary.first_error.as_deref(), Some("bang"));
        assert_eq!(summary.latency_us.max, 300);
        let rebuilt = histogram_from_buckets(&summary.histogram_us);
        assert_eq!(rebuilt.len(), 3);
        assert_eq!(rebuilt.max(), 300);
    }

    #[test]
    fn error_messages_are_bounded() {
        let mut recorder = Recorder::default();
        for i in 0..ERROR_MESSAGES_MAX + 5 {
            recorder.error(format!("e{i:03}"));
        }
        recorder.error("e000".into());
        let summary = recorder.summary("put", Duration::from_secs(1));
        assert_eq!(summary.error_counts.len(), ERROR_MESSAGES_MAX + 1);
        assert_eq!(summary.error_counts[OTHER_ERRORS], 5);
        assert_eq!(summary.error_counts["e000"], 2);
    }
}
