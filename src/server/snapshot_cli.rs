//! `ringkv snapshot status|restore`: the offline snapshot tool (etcdutl's role, with the flags
//! and output formats of etcd 3.4's `etcdctl snapshot`).
//!
//! ```text
//! ringkv snapshot status FILE [-w simple|table|json]
//! ringkv snapshot restore FILE [--data-dir DIR] [--name NAME] [--initial-cluster C]
//!        [--initial-cluster-token T] [--initial-advertise-peer-urls URLS] [--skip-hash-check]
//! ```
//! Defaults are etcdctl's: name `default`, data dir `<name>.etcd`, cluster
//! `default=http://localhost:2380`, token `etcd-cluster`, peer URL `http://localhost:2380`.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{url, ClusterState, InitialCluster};
use crate::snapshot::{self, FileStatus, RestoreConfig};

use super::ids;

const USAGE: &str = "usage: ringkv snapshot status FILE [-w simple|table|json]\n       \
ringkv snapshot restore FILE [--data-dir DIR] [--name NAME] [--initial-cluster CLUSTER] \
[--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URLS] [--skip-hash-check]";

/// Runs `ringkv snapshot ARGS...` (`args` after the word `snapshot`); prints and exits like
/// etcdctl (`Error: ...` on stderr, exit 1; usage errors exit 2... etcdctl uses 1 for both).
pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Positional arguments, and flags as (name, value).
type Parsed = (Vec<String>, Vec<(String, String)>);

/// Flags `--name value` or `--name=value`; returns positional arguments and the flags.
fn split(args: &[String], valued: &[&str], switches: &[&str]) -> Result<Parsed, String> {
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            if flag.is_empty() {
                return Err(format!("bad flag {arg:?}\n{USAGE}"));
            }
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            if switches.contains(&name) {
                flags.push((name.to_owned(), inline.unwrap_or_else(|| "true".into())));
            } else if valued.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("flag needs an argument: {arg}"))?,
                };
                flags.push((name.to_owned(), value));
            } else {
                return Err(format!("unknown flag: {arg}\n{USAGE}"));
            }
        } else {
            positional.push(arg.clone());
        }
    }
    Ok((positional, flags))
}

fn flag<'a>(flags: &'a [(String, String)], names: &[&str], default: &'a str) -> &'a str {
    flags
        .iter()
        .rev()
        .find(|(n, _)| names.contains(&n.as_str()))
        .map_or(default, |(_, v)| v.as_str())
}

fn one_file(positional: &[String], command: &str) -> Result<PathBuf, String> {
    match positional {
        [file] => Ok(PathBuf::from(file)),
        _ => Err(format!(
            "snapshot {command} requires exactly one argument\n{USAGE}"
        )),
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("status") => {
            let (positional, flags) = split(&args[1..], &["w", "write-out"], &[])?;
            let file = one_file(&positional, "status")?;
            let format = flag(&flags, &["w", "write-out"], "simple");
            let status = snapshot::file_status(&file).map_err(|e| e.to_string())?;
            print!("{}", format_status(&status, format)?);
            Ok(())
        }
        Some("restore") => restore(&args[1..]),
        _ => Err(USAGE.to_owned()),
    }
}

fn restore(args: &[String]) -> Result<(), String> {
    let valued = [
        "data-dir",
        "name",
        "initial-cluster",
        "initial-cluster-token",
        "initial-advertise-peer-urls",
        "wal-dir",
    ];
    let (positional, flags) = split(args, &valued, &["skip-hash-check"])?;
    let file = one_file(&positional, "restore")?;
    if flags.iter().any(|(n, _)| n == "wal-dir") {
        return Err("--wal-dir is not supported: ringkv keeps the WAL in the data dir".into());
    }
    let name = flag(&flags, &["name"], "default");
    let data_dir = PathBuf::from(flag(&flags, &["data-dir"], &format!("{name}.etcd")).to_owned());
    let cluster = InitialCluster::parse(flag(
        &flags,
        &["initial-cluster"],
        "default=http://localhost:2380",
    ))
    .map_err(|e| e.to_string())?;
    let token = flag(&flags, &["initial-cluster-token"], "etcd-cluster");
    let peers = url::parse_list(flag(
        &flags,
        &["initial-advertise-peer-urls"],
        "http://localhost:2380",
    ))
    .map_err(|e| e.to_string())?;
    cluster
        .verify(name, &peers, ClusterState::New)
        .map_err(|e| e.to_string())?;
    let skip_hash_check = flag(&flags, &["skip-hash-check"], "false") == "true";
    let restored = snapshot::restore(&RestoreConfig {
        snapshot: file.clone(),
        data_dir: data_dir.clone(),
        skip_hash_check,
    })
    .map_err(|e| e.to_string())?;
    let member_dir = data_dir.join("member");
    let ids = ids::load_or_record(&member_dir, ids::derive(&cluster, name, token))
        .map_err(|e| format!("{}: {e}", member_dir.display()))?;
    eprintln!(
        "ringkv: info: restored snapshot {} into {} (member {:016x}, cluster {:016x}, revision {}, compacted {}, {} versions)",
        file.display(),
        data_dir.display(),
        ids.member_id,
        ids.cluster_id,
        restored.revision,
        restored.compacted,
        restored.versions
    );
    Ok(())
}

/// etcdctl's `humanize.Bytes`: SI units, one decimal below 10.
pub fn human_bytes(n: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = (n as f64).log(1000.0).floor();
    let val = (n as f64 / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    let suffix = SIZES[e as usize];
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

/// etcdctl 3.4's `snapshot status` output in `format`.
pub fn format_status(s: &FileStatus, format: &str) -> Result<String, String> {
    let cells = [
        format!("{:x}", s.hash),
        s.revision.to_string(),
        s.total_key.to_string(),
        human_bytes(s.total_size),
    ];
    match format {
        "simple" => Ok(format!("{}\n", cells.join(", "))),
        "json" => Ok(format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_key, s.total_size
        )),
        "table" => Ok(table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            &cells,
        )),
        other => Err(format!("unknown output format {other:?}")),
    }
}

/// One-row table as etcdctl's tablewriter draws it: headers centred, cells right-aligned.
fn table(headers: &[&str], cells: &[String]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(cells)
        .map(|(h, c)| h.len().max(c.len()))
        .collect();
    let mut rule = String::new();
    for w in &widths {
        rule.push('+');
        rule.push_str(&"-".repeat(w + 2));
    }
    rule.push_str("+\n");
    let mut out = rule.clone();
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - h.len();
        let left = gap / 2;
        let _ = write!(
            out,
            "| {}{}{} ",
            " ".repeat(left),
            h,
            " ".repeat(gap - left)
        );
    }
    out += "|\n";
    out += &rule;
    for (c, w) in cells.iter().zip(&widths) {
        let _ = write!(out, "| {c:>w$} ");
    }
    out += "|\n";
    out += &rule;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tables_look_like_etcdctl() {
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(8192), "8.2 kB");
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(2_500_000), "2.5 MB");
        let status = FileStatus {
            hash: 0xd857_c01f,
            revision: 13,
            total_key: 22,
            total_size: 20480,
        };
        assert_eq!(
            format_status(&status, "table").unwrap(),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | d857c01f |       13 |         22 |      20 kB |\n\
             +----------+----------+------------+------------+\n"
        );
        assert_eq!(
            format_status(&status, "simple").unwrap(),
            "d857c01f, 13, 22, 20 kB\n"
        );
    }
}
