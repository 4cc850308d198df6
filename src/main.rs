//! The `ringkv` binary: parses and checks the configuration (etcd's flags, `ETCD_*` variables,
//! `--config-file`, `--tuning-profile`), then runs the server until SIGTERM or SIGINT.
//! `ringkv snapshot status|restore ...` is the offline snapshot tool instead.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use ringkv::config::{self, ConfigError, Invocation, LogLevel, API_VERSION};

/// See the `mimalloc` entry in Cargo.toml for why the binary does not use the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
