//! The `ringkv` binary: parses and checks the configuration (etcd's flags, `ETCD_*` variables,
//! `--config-file`, `--tuning-profile`), then runs the server until SIGTERM or SIGINT.
//! `ringkv snapshot status|restore ...` is the offline snapshot tool instead.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use ringkv::config::{self, ConfigError, Invocation, LogLevel, API_VERSION};

/// Turns transparent huge pages off for this process, as mimalloc's `allow_thp=0` would. mimalloc
/// asks for huge pages on its arenas, so every fresh 2 MiB of heap is zeroed whole on its first
/// touch, and again after mimalloc purges it: `clear_page_erms` was 9% of a leader's samples
/// under 256 concurrent puts on three members, and gone without huge pages (put throughput
/// +13%, median of 4 alternating runs; perf-reports/2026-11-21-no-thp). The flag is checked at
/// fault time, so setting it after the allocator's start still covers every later fault.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        // Only a cost, never a fault: say so and go on with huge pages.
        eprintln!(
            "ringkv: could not turn transparent huge pages off ({}); continuing with them",
            std::io::Error::last_os_error()
        );
    }
}

/// See the `mimalloc` entry in Cargo.toml for why the binary does not use the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    if std::env::args_os().nth(1).is_some_and(|a| a == "snapshot") {
        let args: Vec<String> = std::env::args_os()
            .skip(2)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return ringkv::server::snapshot_cli::main(&args);
    }
    ignore_empty_etcd_env();
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    match config::parse_args(std::env::args_os(), cores) {
        Ok(Invocation::PrintVersion) => {
            print_version();
            ExitCode::SUCCESS
        }
        Ok(Invocation::Run {
            config,
            print_config,
            notices,
        }) => {
            for notice in &notices {
                eprintln!("ringkv: warning: {notice}");
            }
            if print_config {
                print!("{config}");
                return ExitCode::SUCCESS;
            }
            if config.log_level <= LogLevel::Debug {
                eprintln!("ringkv: debug: resolved configuration:\n{config}");
                eprintln!(
                    "ringkv: debug: tuning profile {}: {:#?}",
                    config.tuning_source, config.tuning
                );
            }
            match ringkv::server::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("ringkv: error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        // clap prints usage errors itself (exit 2) and --help (exit 0).
        Err(ConfigError::Cli(error)) => error.exit(),
        Err(error) => {
            eprintln!("ringkv: failed to verify flags: {error}");
            ExitCode::FAILURE
        }
    }
}

/// etcd skips `ETCD_*` variables whose value is empty; clap would read them as an empty value
/// and reject it. Runs first in `main`, before any other thread exists.
fn ignore_empty_etcd_env() {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(name, value)| {
            value.is_empty() && name.to_str().is_some_and(|name| name.starts_with("ETCD_"))
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        std::env::remove_var(name);
    }
}

/// Laid out like `etcd --version`.
fn print_version() {
    println!("ringkv Version: {}", env!("CARGO_PKG_VERSION"));
    println!("API Version: {API_VERSION}");
    println!(
        "OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
}
