//! `--auto-compaction-mode` and `--auto-compaction-retention`: how much MVCC history the server
//! keeps before compacting it away on its own. Parsed with etcd's rules: in periodic mode a bare
//! integer is hours and anything else is a Go duration ("30m", "1h30m"); in revision mode the
//! retention is a count of revisions. "0" disables auto-compaction in both modes.

use std::time::Duration;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CompactionMode {
    Periodic,
    Revision,
}

impl CompactionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompactionMode::Periodic => "periodic",
            CompactionMode::Revision => "revision",
        }
    }
}

/// The resolved policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Disabled,
    /// Keep roughly this much wall-clock history.
    Periodic(Duration),
    /// Keep this many revisions behind the current one.
    Revision(u64),
}

const HOUR: Duration = Duration::from_secs(3600);

impl AutoCompaction {
    /// Errors carry etcd's text ("error parsing CompactionRetention: ...").
    pub fn parse(mode: CompactionMode, retention: &str) -> Result<AutoCompaction, String> {
        let retention = retention.trim();
        let policy = if let Ok(count) = retention.parse::<u64>() {
            match mode {
                CompactionMode::Periodic => AutoCompaction::Periodic(
                    HOUR.checked_mul(u32::try_from(count).map_err(|_| invalid(retention))?)
                        .ok_or_else(|| invalid(retention))?,
                ),
                CompactionMode::Revision => AutoCompaction::Revision(count),
            }
        } else {
            match mode {
                CompactionMode::Periodic => {
                    AutoCompaction::Periodic(parse_go_duration(retention).ok_or_else(|| invalid(retention))?)
                }
                // etcd would read a duration here as a revision count in nanoseconds; refuse it.
                CompactionMode::Revision => {
                    return Err(format!(
                        "error parsing CompactionRetention: revision mode needs a revision count, not {retention:?}"
                    ))
                }
            }
        };
        Ok(match policy {
            AutoCompaction::Periodic(Duration::ZERO) | AutoCompaction::Revision(0) => {
                AutoCompaction::Disabled
            }
            other => other,
        })
    }

    /// The retention in the form `parse` accepts, for printing a config back out.
    pub fn retention_string(self) -> String {
        match self {
            AutoCompaction::Disabled => "0".to_owned(),
            AutoCompaction::Revision(count) => count.to_string(),
            AutoCompaction::Periodic(period) if period.subsec_nanos() == 0 => {
                format!("{}s", period.as_secs())
            }
            AutoCompaction::Periodic(period) => format!("{}ns", period.as_nanos()),
        }
    }
}

fn invalid(retention: &str) -> String {
    format!("error parsing CompactionRetention: time: invalid duration {retention:?}")
}

/// Go's `time.ParseDuration` for non-negative values: one or more `<decimal><unit>` terms with
/// units ns, us (or µs), ms, s, m, h. Returns None on any syntax error or overflow.
pub fn parse_go_duration(input: &str) -> Option<Duration> {
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut term = whole.checked_mul(unit_ns)?;
        let mut scale = unit_ns;
        for digit in fraction.bytes() {
            scale /= 10;
            term = term.checked_add(u128::from(digit - b'0') * scale)?;
        }
        total_ns = total_ns.checked_add(term)?;
        rest = after;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total_ns % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_integer_is_hours_and_zero_disables() {
        let parse = |r| AutoCompaction::parse(CompactionMode::Periodic, r).unwrap();
        assert_eq!(parse("0"), AutoCompaction::Disabled);
        assert_eq!(parse("1"), AutoCompaction::Periodic(HOUR));
        assert_eq!(
            parse("30m"),
            AutoCompaction::Periodic(Duration::from_secs(1800))
        );
        assert_eq!(
            parse("1h30m"),
            AutoCompaction::Periodic(Duration::from_secs(5400))
        );
        assert_eq!(
            parse("1.5h"),
            AutoCompaction::Periodic(Duration::from_secs(5400))
        );
        assert_eq!(parse("0s"), AutoCompaction::Disabled);
    }

    #[test]
    fn revision_mode_counts_revisions() {
        let parse = |r| AutoCompaction::parse(CompactionMode::Revision, r);
        assert_eq!(parse("1000").unwrap(), AutoCompaction::Revision(1000));
        assert_eq!(parse("0").unwrap(), AutoCompaction::Disabled);
        assert!(parse("5m").is_err());
    }

    #[test]
    fn bad_retention_uses_etcd_message() {
        let err = AutoCompaction::parse(CompactionMode::Periodic, "soon").unwrap_err();
        assert_eq!(
            err,
            "error parsing CompactionRetention: time: invalid duration \"soon\""
        );
        assert!(AutoCompaction::parse(CompactionMode::Periodic, "5").is_ok());
        assert!(AutoCompaction::parse(CompactionMode::Periodic, "5x").is_err());
        assert!(AutoCompaction::parse(CompactionMode::Periodic, "-5m").is_err());
        assert!(AutoCompaction::parse(CompactionMode::Periodic, "").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("3us"), Some(Duration::from_micros(3)));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("."), None);
        assert_eq!(parse_go_duration("1d"), None);
    }

    #[test]
    fn retention_round_trips() {
        for policy in [
            AutoCompaction::Disabled,
            AutoCompaction::Periodic(Duration::from_secs(5400)),
            AutoCompaction::Periodic(Duration::from_millis(1500)),
        ] {
            let text = policy.retention_string();
            assert_eq!(
                AutoCompaction::parse(CompactionMode::Periodic, &text).unwrap(),
                policy
            );
        }
        let revision = AutoCompaction::Revision(7);
        assert_eq!(
            AutoCompaction::parse(CompactionMode::Revision, &revision.retention_string()).unwrap(),
            revision
        );
    }
}
