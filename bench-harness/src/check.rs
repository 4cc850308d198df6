//! `check-perf`: etcdctl's `check perf` loads and pass rules. Each load is a number of clients
//! (each on its own connection, as etcdctl makes one client per worker), a put rate limit and a
//! duration; every put writes `prefix` + 256 bytes (a varint of a random number, zero padded)
//! with 1024 zero bytes. The run passes when there are no errors, throughput is over 90% of the
//! limit, the slowest request took at most 0.5 s and the standard deviation is at most 0.1 s.
//! The verdict's lines are etcdctl's, word for word.

use crate::summary::Summary;
use serde::{Deserialize, Serialize};

/// etcdctl's default `--prefix`.
pub const DEFAULT_PREFIX: &str = "/etcdctl-check-perf/";
pub const KEY_SUFFIX_BYTES: usize = 256;
pub const VALUE_BYTES: usize = 1024;
const SLOWEST_MAX_S: f64 = 0.5;
const STDDEV_MAX_S: f64 = 0.1;
const THROUGHPUT_MIN_FRACTION: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckLoad {
    /// `s`, `m`, `l` or `xl`.
    pub name: &'static str,
    /// Puts per second the limiter allows.
    pub limit: u32,
    pub clients: u32,
    pub duration_s: u32,
}

/// etcdctl's `checkPerfCfgMap`.
pub const LOADS: [CheckLoad; 4] = [
    CheckLoad {
        name: "s",
        limit: 150,
        clients: 50,
        duration_s: 60,
    },
    CheckLoad {
        name: "m",
        limit: 1000,
        clients: 200,
        duration_s: 60,
    },
    CheckLoad {
        name: "l",
        limit: 8000,
        clients: 500,
        duration_s: 60,
    },
    CheckLoad {
        name: "xl",
        limit: 15000,
        clients: 1000,
        duration_s: 60,
    },
];

/// Resolves `--load` with etcdctl's aliases; the error is etcdctl's message.
pub fn load(name: &str) -> Result<CheckLoad, String> {
    let short = match name {
        "s" | "small" => "s",
        "m" | "medium" => "m",
        "l" | "large" => "l",
        "xl" | "xLarge" => "xl",
        _ => return Err(format!("unknown load option {name}")),
    };
    Ok(*LOADS
        .iter()
        .find(|load| load.name == short)
        .expect("every alias names a load"))
}

/// etcdctl's refusal when the prefix already holds keys.
pub fn prefix_has_keys_message(prefix: &str) -> String {
    format!("prefix {prefix:?} has keys. Delete with etcdctl del --prefix {prefix} first")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    /// What etcdctl prints, one line each, ending with `PASS` or `FAIL`.
    pub lines: Vec<String>,
}

/// Applies etcdctl's rules to the run's summary (latencies in the summary are microseconds,
/// etcdctl's in seconds).
pub fn verdict(summary: &Summary, limit: u32) -> Verdict {
    let mut lines = Vec::new();
    let mut pass = true;
    if summary.errors > 0 {
        lines.push("FAIL: too many errors".to_owned());
        for (message, count) in &summary.error_counts {
            lines.push(format!("FAIL: ERROR({message}) -> {count}"));
        }
        pass = false;
    }
    // etcdctl prints int(RPS)+1.
    let writes_per_s = summary.throughput_rps as u64 + 1;
    if summary.throughput_rps / f64::from(limit) <= THROUGHPUT_MIN_FRACTION {
        lines.push(format!("FAIL: Throughput too low: {writes_per_s} writes/s"));
        pass = false;
    } else {
        lines.push(format!("PASS: Throughput is {writes_per_s} writes/s"));
    }
    let slowest_s = summary.latency_us.max as f64 / 1e6;
    if slowest_s > SLOWEST_MAX_S {
        lines.push(format!("Slowest request took too long: {slowest_s:.6}s"));
        pass = false;
    } else {
        lines.push(format!("PASS: Slowest request took {slowest_s:.6}s"));
    }
    let stddev_s = summary.latency_us.stddev / 1e6;
    if stddev_s > STDDEV_MAX_S {
        lines.push(format!("Stddev too high: {stddev_s:.6}s"));
        pass = false;
    } else {
        lines.push(format!("PASS: Stddev is {stddev_s:.6}s"));
    }
    lines.push(if pass { "PASS" } else { "FAIL" }.to_owned());
    Verdict { pass, lines }
}

/// The key suffix etcdctl writes: Go's `binary.PutVarint` (zig-zag) of `n` into 256 zero bytes.
pub fn key_suffix(n: i64) -> [u8; KEY_SUFFIX_BYTES] {
    let mut suffix = [0; KEY_SUFFIX_BYTES];
    let mut zigzag = ((n << 1) ^ (n >> 63)) as u64;
    let mut i = 0;
    while zigzag >= 0x80 {
        suffix[i] = (zigzag as u8) | 0x80;
        zigzag >>= 7;
        i += 1;
    }
    suffix[i] = zigzag as u8;
    suffix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Recorder;
    use std::time::Duration;

    fn run(latencies_ms: &[u64], errors: &[&str], elapsed_s: u64) -> Summary {
        let mut recorder = Recorder::default();
        for &ms in latencies_ms {
            recorder.ok(Duration::from_millis(ms), Duration::ZERO);
        }
        for message in errors {
            recorder.error((*message).to_owned());
        }
        recorder.summary("check-perf-s", Duration::from_secs(elapsed_s))
    }

    #[test]
    fn loads_and_aliases_are_etcdctls() {
        assert_eq!(load("small").unwrap(), LOADS[0]);
        assert_eq!(load("xLarge").unwrap().limit, 15000);
        assert_eq!(load("l").unwrap().clients, 500);
        assert_eq!(load("huge").unwrap_err(), "unknown load option huge");
        assert_eq!(
            prefix_has_keys_message(DEFAULT_PREFIX),
            "prefix \"/etcdctl-check-perf/\" has keys. Delete with etcdctl del --prefix \
             /etcdctl-check-perf/ first"
        );
    }

    #[test]
    fn passing_run_prints_etcdctls_pass_lines() {
        // 140 requests of 10 ms in 1 s: 140 writes/s is over 90% of 150.
        let summary = run(&[10; 140], &[], 1);
        let verdict = verdict(&summary, 150);
        assert!(verdict.pass);
        assert_eq!(
            verdict.lines,
            [
                "PASS: Throughput is 141 writes/s",
                "PASS: Slowest request took 0.010007s",
                "PASS: Stddev is 0.000000s",
                "PASS",
            ]
        );
    }

    #[test]
    fn every_rule_can_fail() {
        // 135 writes/s is exactly 90% of 150: etcdctl fails at <= 0.9.
        let mut latencies = vec![1; 134];
        latencies.push(900);
        let summary = run(&latencies, &["Unavailable: no leader"], 1);
        let verdict = verdict(&summary, 150);
        assert!(!verdict.pass);
        assert_eq!(verdict.lines[0], "FAIL: too many errors");
        assert_eq!(verdict.lines[1], "FAIL: ERROR(Unavailable: no leader) -> 1");
        assert_eq!(verdict.lines[2], "FAIL: Throughput too low: 136 writes/s");
        assert!(
            verdict.lines[3].starts_with("Slowest request took too long: 0.90"),
            "{:?}",
            verdict.lines
        );
        assert!(
            verdict.lines[4].starts_with("PASS: Stddev is 0.07"),
            "{:?}",
            verdict.lines
        );
        assert_eq!(verdict.lines.last().unwrap(), "FAIL");

        let wide = run(&[1, 400, 1, 400], &[], 0);
        assert!(verdict_line(&wide, "Stddev too high: 0.19"));
    }

    fn verdict_line(summary: &Summary, prefix: &str) -> bool {
        verdict(summary, 1)
            .lines
            .iter()
            .any(|line| line.starts_with(prefix))
    }

    #[test]
    fn key_suffix_is_gos_put_varint() {
        assert_eq!(key_suffix(0)[..2], [0, 0]);
        assert_eq!(key_suffix(1)[..2], [2, 0]);
        assert_eq!(key_suffix(-1)[..2], [1, 0]);
        assert_eq!(key_suffix(64)[..3], [0x80, 0x01, 0]);
        assert_eq!(
            key_suffix(i64::MAX)[..10],
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }
}
