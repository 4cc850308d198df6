//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): etcd 3.4's
//! `v3compactor`, proposing compactions through raft exactly as a client's `Compact` does.
//!
//! # Schedules (etcd 3.4's, step for step)
//!
//! Periodic, retention `P` (a Go duration, or a bare number of hours):
//! - every `R = min(P, 1h) / 10` the current revision is recorded (a window of the last
//!   `P / R + 1` samples, so the oldest is the revision of about `P` ago);
//! - nothing is compacted until `P` has passed since the start; then, and every `min(P, 1h)`
//!   after the last success, the oldest sample is compacted. A failure is retried after `R`.
//!
//! Revision, retention `N`: every 5 minutes, compact to `current - N` unless that is `<= 0` or
//! the revision compacted last time.
//!
//! Only the leader proposes (etcd pauses the compactor on followers); a proposal that finds the
//! revision compacted already counts as a success, as in etcd. Log lines are etcd's (capnslog,
//! `compactor:` package), under ringkv's `ringkv: info:` prefix.
//!
//! `RINGKV_TEST_REVISION_COMPACTION_INTERVAL_MS` (test-only, undocumented for users) replaces
//! revision mode's 5 minutes so integration tests finish; periodic mode needs no such hook, since
//! etcd itself accepts a sub-second retention.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::CompactionRequest;

use crate::api::{ApiError, Context};
use crate::apply::entry::{ApplyError, ProposalRequest};
use crate::config::compaction::AutoCompaction;

/// etcd's `revInterval`: how often revision mode compacts.
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Periodic mode's compaction interval never exceeds an hour (etcd's cap).
const PERIOD_CAP: Duration = Duration::from_secs(3600);
/// etcd's `retryDivisor`: periodic mode samples revisions ten times per compaction interval.
const RETRY_DIVISOR: u32 = 10;
/// Test-only override of `REVISION_INTERVAL`, in milliseconds.
const REVISION_INTERVAL_ENV: &str = "RINGKV_TEST_REVISION_COMPACTION_INTERVAL_MS";

/// Periodic mode's state: the sampled revisions and when the last compaction succeeded.
#[derive(Debug)]
pub struct Periodic {
    period: Duration,
    /// Revisions sampled every `retry_interval`, oldest first; at most `retentions` of them.
    revs: VecDeque<i64>,
    last_success: Instant,
    /// `period` until the first compaction, then `compact_interval`.
    base_interval: Duration,
}

impl Periodic {
    pub fn new(period: Duration, now: Instant) -> Periodic {
        assert!(!period.is_zero(), "a zero period disables auto-compaction");
        Periodic {
            period,
            revs: VecDeque::new(),
            last_success: now,
            base_interval: period,
        }
    }

    pub fn retry_interval(&self) -> Duration {
        // A period under 10 ns would sample in a busy loop; etcd divides to 0 there too, but
        // a bounded loop needs a positive sleep.
        (self.period.min(PERIOD_CAP) / RETRY_DIVISOR).max(Duration::from_millis(1))
    }

    fn compact_interval(&self) -> Duration {
        self.period.min(PERIOD_CAP)
    }

    fn retentions(&self) -> usize {
        let ratio = self.period.as_nanos() / self.retry_interval().as_nanos().max(1);
        usize::try_from(ratio)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    }

    /// Records the current revision; called once per `retry_interval`, before the wait.
    pub fn sample(&mut self, rev: i64) {
        self.revs.push_back(rev);
        if self.revs.len() > self.retentions() {
            self.revs.pop_front();
        }
    }

    /// After the wait: the revision to compact now, if it is time.
    pub fn due(&mut self, now: Instant) -> Option<i64> {
        if now.duration_since(self.last_success) < self.base_interval {
            return None;
        }
        if self.base_interval == self.period {
            self.base_interval = self.compact_interval();
        }
        self.revs.front().copied()
    }

    pub fn succeeded(&mut self, now: Instant) {
        self.last_success = now;
    }
}

/// Revision mode's state: the revision compacted last.
#[derive(Debug)]
pub struct Revision {
    retention: i64,
    prev: i64,
}

impl Revision {
    pub fn new(retention: u64) -> Revision {
        Revision {
            retention: i64::try_from(retention).unwrap_or(i64::MAX),
            prev: 0,
        }
    }

    /// At each interval: the revision to compact, if any.
    pub fn due(&self, current: i64) -> Option<i64> {
        let rev = current.saturating_sub(self.retention);
        (rev > 0 && rev != self.prev).then_some(rev)
    }

    pub fn succeeded(&mut self, rev: i64) {
        self.prev = rev;
    }
}

/// Runs the policy until the runtime is dropped; returns at once when it is disabled.
pub async fn run(ctx: Arc<Context>, policy: AutoCompaction) {
    match policy {
        AutoCompaction::Disabled => {}
        AutoCompaction::Periodic(period) => run_periodic(ctx, period).await,
        AutoCompaction::Revision(retention) => run_revision(ctx, retention).await,
    }
}

async fn run_periodic(ctx: Arc<Context>, period: Duration) {
    let mut schedule = Periodic::new(period, Instant::now());
    let retry = schedule.retry_interval();
    loop {
        schedule.sample(ctx.mvcc.current_revision());
        tokio::time::sleep(retry).await;
        if !is_leader(&ctx) {
            continue;
        }
        let Some(rev) = schedule.due(Instant::now()) else {
            continue;
        };
        eprintln!(
            "ringkv: info: compactor: Starting auto-compaction at revision {rev} (retention: {})",
            go_duration(period)
        );
        match compact(&ctx, rev).await {
            Ok(()) => {
                eprintln!("ringkv: info: compactor: Finished auto-compaction at revision {rev}");
                schedule.succeeded(Instant::now());
            }
            Err(error) => {
                eprintln!(
                    "ringkv: info: compactor: Failed auto-compaction at revision {rev} ({error})"
                );
                eprintln!(
                    "ringkv: info: compactor: Retry after {}",
                    go_duration(retry)
                );
            }
        }
    }
}

async fn run_revision(ctx: Arc<Context>, retention: u64) {
    let interval = revision_interval();
    let mut schedule = Revision::new(retention);
    loop {
        tokio::time::sleep(interval).await;
        if !is_leader(&ctx) {
            continue;
        }
        let Some(rev) = schedule.due(ctx.mvcc.current_revision()) else {
            continue;
        };
        eprintln!(
            "ringkv: info: compactor: Starting auto-compaction at revision {rev} (retention: \
             {retention} revisions)"
        );
        match compact(&ctx, rev).await {
            Ok(()) => {
                schedule.succeeded(rev);
                eprintln!("ringkv: info: compactor: Finished auto-compaction at revision {rev}");
            }
            Err(error) => {
                eprintln!(
                    "ringkv: info: compactor: Failed auto-compaction at revision {rev} ({error})"
                );
                eprintln!(
                    "ringkv: info: compactor: Retry after {}",
                    go_duration(interval)
                );
            }
        }
    }
}

fn revision_interval() -> Duration {
    std::env::var(REVISION_INTERVAL_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(REVISION_INTERVAL, Duration::from_millis)
}

fn is_leader(ctx: &Context) -> bool {
    ctx.consensus.status().leader_id == ctx.member_id
}

/// Proposes `Compact(rev)` as the server itself; already compacted counts as done (etcd).
async fn compact(ctx: &Context, rev: i64) -> Result<(), ApiError> {
    let request = ProposalRequest::Compaction(CompactionRequest {
        revision: rev,
        physical: false,
    });
    match ctx.propose_internal(request).await {
        Ok(_) | Err(ApiError::Apply(ApplyError::Compacted)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Go's `time.Duration.String()` for non-negative durations: "1h0m0s", "1.5s", "100ms".
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", decimal(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", decimal(nanos, 1_000_000));
    }
    let secs = d.as_secs();
    let seconds = decimal(
        u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    let (hours, minutes) = (secs / 3600, secs % 3600 / 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / unit` with its fraction, trailing zeros trimmed ("1.5", "2").
fn decimal(value: u128, unit: u128) -> String {
    let (whole, fraction) = (value / unit, value % unit);
    if fraction == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_waits_one_period_then_compacts_the_revision_of_a_period_ago() {
        let start = Instant::now();
        let period = Duration::from_secs(10);
        let mut p = Periodic::new(period, start);
        assert_eq!(p.retry_interval(), Duration::from_secs(1));
        // Samples every second at revisions 100, 110, 120, ...; the window keeps 11.
        let mut due = Vec::new();
        for tick in 1..=25u64 {
            p.sample(90 + 10 * tick as i64);
            let now = start + Duration::from_secs(tick);
            if let Some(rev) = p.due(now) {
                due.push((tick, rev));
                p.succeeded(now);
            }
        }
        // First at 10 s (the revision sampled at 0 s), then every 10 s (min(P, 1h)).
        assert_eq!(due, vec![(10, 100), (20, 190)]);
    }

    #[test]
    fn periodic_over_an_hour_compacts_hourly_and_retries_every_six_minutes() {
        let start = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(5 * 3600), start);
        assert_eq!(p.retry_interval(), Duration::from_secs(360));
        assert_eq!(p.retentions(), 51);
        p.sample(7);
        assert_eq!(p.due(start + Duration::from_secs(3600)), None);
        assert_eq!(p.due(start + Duration::from_secs(5 * 3600)), Some(7));
        p.succeeded(start + Duration::from_secs(5 * 3600));
        assert_eq!(p.due(start + Duration::from_secs(6 * 3600 - 1)), None);
        assert_eq!(p.due(start + Duration::from_secs(6 * 3600)), Some(7));
    }

    #[test]
    fn revision_keeps_retention_and_skips_repeats() {
        let mut r = Revision::new(10);
        assert_eq!(r.due(10), None);
        assert_eq!(r.due(11), Some(1));
        r.succeeded(1);
        assert_eq!(r.due(11), None);
        assert_eq!(r.due(25), Some(15));
    }

    #[test]
    fn go_duration_strings() {
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(5)), "5ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
