//! `compare --suite standard`: etcd's op-guide benchmarks (put and range, linearizable and
//! serializable, at 1 client on 1 connection and 1000 clients on 100 connections, 8-byte keys
//! and 256-byte values) and etcdctl check perf s, m, l and xl, each compared in its own
//! subdirectory, with one combined report whose headline table has a row per workload.

use crate::check;
use crate::compare::{self, CompareConfig, CompareOutcome, ServerSpec};
use crate::load::LoadConfig;
use crate::workload::{self, RangeSpec, Workload};
use crate::BenchError;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub servers: Vec<ServerSpec>,
    pub rounds: u32,
    pub members: u32,
    pub out: PathBuf,
    pub data_root: PathBuf,
    /// Caps every workload's duration (the op-guide counts and 60 s check-perf runs otherwise).
    pub workload_seconds: Option<f64>,
}

/// One entry: a directory name, the options and the workload.
pub struct Entry {
    pub name: String,
    pub load: LoadConfig,
    pub workload: Workload,
}

fn op_guide_load(conns: usize, clients: usize, total: u64, seconds: Option<f64>) -> LoadConfig {
    LoadConfig {
        endpoints: Vec::new(),
        conns,
        clients,
        total: Some(total),
        duration: seconds.map(Duration::from_secs_f64),
        key_size: 8,
        val_size: 256,
        // The op-guide runs `benchmark put --sequential-keys` with the default key space (1).
        key_space_size: 1,
        sequential_keys: true,
        rate: 0.0,
        request_timeout: Duration::from_secs(10),
    }
}

pub fn standard(seconds: Option<f64>) -> Vec<Entry> {
    let shapes = [
        (1, 1, 10_000, "1conn-1client"),
        (100, 1000, 100_000, "100conns-1000clients"),
    ];
    let mut entries = Vec::new();
    for (conns, clients, total, shape) in shapes {
        entries.push(Entry {
            name: format!("put-{shape}"),
            load: op_guide_load(conns, clients, total, seconds),
            workload: Workload::Put,
        });
    }
    for serializable in [false, true] {
        for (conns, clients, total, shape) in shapes {
            let range = RangeSpec {
                key: b"foo".to_vec(),
                range_end: Vec::new(),
                serializable,
                limit: 0,
                keys_only: false,
                count_only: false,
                fill_keys: 0,
            };
            let consistency = if serializable { "s" } else { "l" };
            entries.push(Entry {
                name: format!("range-{consistency}-{shape}"),
                load: op_guide_load(conns, clients, total, seconds),
                workload: Workload::Range(range),
            });
        }
    }
    for load in check::LOADS {
        entries.push(Entry {
            name: format!("check-perf-{}", load.name),
            load: workload::check_perf_config(Vec::new(), load, seconds),
            workload: Workload::CheckPerf {
                load,
                prefix: check::DEFAULT_PREFIX.to_owned(),
            },
        });
    }
    entries
}

pub async fn run(config: &SuiteConfig) -> Result<(), BenchError> {
    let entries = standard(config.workload_seconds);
    // Check every entry before the first one runs for minutes.
    for entry in &entries {
        compare::check_config(&compare_config(config, entry))?;
    }
    let mut outcomes = Vec::new();
    for entry in &entries {
        println!("== {}", entry.name);
        outcomes.push((
            entry.name.clone(),
            compare::run(&compare_config(config, entry)).await?,
        ));
    }
    let report = headline(config, &outcomes);
    let path = config.out.join("report.md");
    std::fs::write(&path, &report).map_err(BenchError::io(format!("write {}", path.display())))?;
    let json = serde_json::to_string_pretty(&outcomes).expect("outcomes serialize");
    let path = config.out.join("suite.json");
    std::fs::write(&path, json).map_err(BenchError::io(format!("write {}", path.display())))?;
    print!("{report}");
    Ok(())
}

fn compare_config(config: &SuiteConfig, entry: &Entry) -> CompareConfig {
    CompareConfig {
        load: entry.load.clone(),
        workload: entry.workload.clone(),
        servers: config.servers.clone(),
        rounds: config.rounds,
        members: config.members,
        out: config.out.join(&entry.name),
        data_root: config.data_root.clone(),
    }
}

fn cell(value: Option<f64>, scale: f64, note: Option<&String>) -> String {
    match (value, note) {
        (Some(value), _) => format!("{:.1}", value / scale),
        (None, Some(note)) if note.starts_with("unsupported") => "unsupported".into(),
        (None, Some(_)) => "failed".into(),
        (None, None) => "-".into(),
    }
}

fn headline(config: &SuiteConfig, outcomes: &[(String, CompareOutcome)]) -> String {
    let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    let mut out = String::new();
    let _ = writeln!(out, "# Standard suite: {}\n", names.join(" vs "));
    let _ = writeln!(
        out,
        "Medians over {} rounds per workload; each workload's report, charts and raw figures are \
         in its directory. Workloads: etcd's op-guide put and range (8-byte keys, 256-byte \
         values) and etcdctl check perf.{}\n",
        config.rounds,
        config.workload_seconds.map_or(String::new(), |s| format!(
            " Every workload capped at {s} s."
        ))
    );
    let _ = write!(out, "| workload |");
    for name in &names {
        let _ = write!(out, " {name} req/s |");
    }
    if names.len() == 2 {
        let _ = write!(out, " {}/{} req/s |", names[0], names[1]);
    }
    for name in &names {
        let _ = write!(out, " {name} p99 ms |");
    }
    let _ = writeln!(out, " check perf |");
    let columns = names.len() * 2 + usize::from(names.len() == 2) + 1;
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns));
    for (name, outcome) in outcomes {
        let _ = write!(out, "| [{name}]({name}/report.md) |");
        for server in &outcome.servers {
            let _ = write!(
                out,
                " {} |",
                cell(server.throughput_rps, 1.0, server.note.as_ref())
            );
        }
        if let [a, b] = outcome.servers.as_slice() {
            let ratio = match (a.throughput_rps, b.throughput_rps) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let _ = write!(out, " {ratio} |");
        }
        for server in &outcome.servers {
            let _ = write!(
                out,
                " {} |",
                cell(server.p99_us, 1000.0, server.note.as_ref())
            );
        }
        let checks: Vec<String> = outcome
            .servers
            .iter()
            .filter_map(|s| {
                s.check_passed
                    .map(|(passed, of)| format!("{}: {passed}/{of} PASS", s.name))
            })
            .collect();
        let checks = if checks.is_empty() {
            "-".to_owned()
        } else {
            checks.join(", ")
        };
        let _ = writeln!(out, " {checks} |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_suite_is_the_op_guide_and_check_perf() {
        let entries = standard(None);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "put-1conn-1client",
                "put-100conns-1000clients",
                "range-l-1conn-1client",
                "range-l-100conns-1000clients",
                "range-s-1conn-1client",
                "range-s-100conns-1000clients",
                "check-perf-s",
                "check-perf-m",
                "check-perf-l",
                "check-perf-xl",
            ]
        );
        let big_put = &entries[1].load;
        assert_eq!(
            (big_put.conns, big_put.clients, big_put.total),
            (100, 1000, Some(100_000))
        );
        assert_eq!((big_put.key_size, big_put.val_size), (8, 256));
        let xl = &entries[9].load;
        assert_eq!((xl.conns, xl.clients, xl.rate), (1000, 1000, 15000.0));
        assert_eq!(xl.duration, Some(Duration::from_secs(60)));
        assert_eq!(
            standard(Some(2.0))[9].load.duration,
            Some(Duration::from_secs(2))
        );
    }
}
