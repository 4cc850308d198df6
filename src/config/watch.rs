//! `--experimental-watch-progress-notify-interval`: how often a watcher created with
//! `progress_notify` that got no events hears the current revision. A Go duration on the
//! command line ("500ms", "10m"), nanoseconds in the config file (etcd's YAML reads a
//! `time.Duration` as an integer). etcd keeps its 10-minute default for a value that is not
//! positive, and raises a positive one below 100 ms to 100 ms.

use std::time::Duration;

use super::compaction::parse_go_duration;

/// etcd's default, as Go prints it.
pub const DEFAULT: &str = "10m0s";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
/// etcd's `minWatchProgressInterval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The interval the server uses for `value`; the error is Go's flag package's reason.
pub fn parse(value: &str) -> Result<Duration, String> {
    let (negative, magnitude) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let duration = parse_go_duration(magnitude).ok_or_else(|| "parse error".to_owned())?;
    Ok(interval(if negative { Duration::ZERO } else { duration }))
}

/// etcd's adjustment of a parsed interval.
pub fn interval(duration: Duration) -> Duration {
    if duration.is_zero() {
        DEFAULT_INTERVAL
    } else {
        duration.max(MIN_INTERVAL)
    }
}

/// The config-file value (nanoseconds) as a command-line value.
pub fn from_nanos(nanos: i64) -> String {
    format!("{nanos}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_with_etcds_floor_and_default() {
        assert_eq!(parse(DEFAULT), Ok(DEFAULT_INTERVAL));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10ms"), Ok(MIN_INTERVAL));
        assert_eq!(parse("0"), Ok(DEFAULT_INTERVAL));
        assert_eq!(parse("-5s"), Ok(DEFAULT_INTERVAL));
        assert_eq!(
            parse(&from_nanos(2_000_000_000)),
            Ok(Duration::from_secs(2))
        );
        for bad in ["", "5", "soon", "1d", "--1s"] {
            assert_eq!(parse(bad), Err("parse error".to_owned()), "{bad:?}");
        }
    }
}
