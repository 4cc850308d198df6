//! The figures of one workload run: counts, throughput and latency percentiles from an HDR
//! histogram in microseconds, printed as a table or written as JSON.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// Highest latency the histograms track; slower requests are clamped to it (and still counted).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Three significant digits: 0.1% relative error on every percentile.
const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGNIFICANT_DIGITS).expect("valid bounds")
}

/// Records `latency`, clamped to the histogram's range [1 µs, LATENCY_MAX_US].
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let latency_us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
    histogram.record(latency_us).expect("clamped into range");
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
    /// `put`, `range-l` or `range-s`.
    pub workload: String,
    /// Requests that succeeded; only these are in the latency figures.
    pub requests: u64,
    /// Requests that failed (gRPC error or the per-request timeout).
    pub errors: u64,
    /// The first failure's message, to tell what went wrong.
    pub first_error: Option<String>,
    /// From the first request's start to the last reply.
    pub elapsed_s: f64,
    /// Successful requests per second of `elapsed_s`.
    pub throughput_rps: f64,
    pub latency_us: LatencyUs,
    /// The raw histogram: (highest equivalent value in µs, count) for every recorded bucket.
    pub histogram_us: Vec<(u64, u64)>,
}

impl Summary {
    pub fn new(
        workload: &str,
        histogram: &Histogram<u64>,
        errors: u64,
        first_error: Option<String>,
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
            errors,
            first_error,
            elapsed_s,
            throughput_rps: if elapsed_s > 0.0 {
                requests as f64 / elapsed_s
            } else {
                0.0
            },
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
        }
    }

    /// The end-of-run table.
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
        if let Some(error) = &self.first_error {
            rows.push(("first error", error.clone()));
        }
        let mut table = String::new();
        for (name, value) in rows {
            let _ = writeln!(table, "{name:<12} {value}");
        }
        table
    }
}
