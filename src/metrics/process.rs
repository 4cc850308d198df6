//! The standard `process_*` metrics of Prometheus clients (memory, CPU, file descriptors, start
//! time), read from `/proc/self` at scrape time. A figure that cannot be read is left out.

use super::Exposition;

/// Writes what `/proc` tells about this process.
pub fn render(out: &mut Exposition) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    // SAFETY: sysconf only reads configuration values.
    let (ticks_per_second, page_bytes) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let Some(fields) = &fields {
        if ticks_per_second > 0 {
            let ticks = fields.user_ticks + fields.system_ticks;
            out.counter_f64(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                ticks as f64 / ticks_per_second as f64,
            );
        }
        if page_bytes > 0 {
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                (fields.rss_pages * page_bytes as u64) as f64,
            );
        }
        out.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            fields.virtual_bytes as f64,
        );
        if let (Some(boot), true) = (boot_time_seconds(), ticks_per_second > 0) {
            out.gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + fields.start_ticks as f64 / ticks_per_second as f64,
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        out.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            entries.count() as f64,
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    user_ticks: u64,
    system_ticks: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    rss_pages: u64,
}

/// `/proc/<pid>/stat` (proc(5)): fields after the parenthesised command name, which may itself
/// hold spaces and parentheses, so parsing starts after its last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        user_ticks: field(14)?,
        system_ticks: field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

fn boot_time_seconds() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 12345 \
                    1048576 256 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            stat_fields(stat),
            Some(StatFields {
                user_ticks: 7,
                system_ticks: 3,
                start_ticks: 12345,
                virtual_bytes: 1_048_576,
                rss_pages: 256,
            })
        );
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let mut out = Exposition::new();
        render(&mut out);
        let text = out.into_text();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
