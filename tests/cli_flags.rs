//! Runs the built `ringkv` binary and checks its command-line surface: version, help, the
//! etcd flag names and ETCD_* twins, and that bad input is a clear error and never a panic.

use std::process::{Command, Output};

/// The binary with an empty environment, so the caller's ETCD_* variables cannot leak in.
fn ringkv(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("ringkv runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!text.contains("panicked"), "ringkv panicked: {text}");
    text
}

#[test]
fn version_reports_ringkv_and_api_version() {
    let output = ringkv(&["--version"], &[]);
    assert!(output.status.success());
    let text = stdout(&output);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(concat!("ringkv Version: ", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(lines.next(), Some("API Version: 3.5"));
    assert!(lines.next().unwrap().starts_with("OS/Arch: "));
}

#[test]
fn help_lists_every_flag_with_its_env_twin() {
    let output = ringkv(&["--help"], &[]);
    assert!(output.status.success());
    let help = stdout(&output);
    let etcd_flags = [
        "name",
        "data-dir",
        "listen-client-urls",
        "advertise-client-urls",
        "listen-peer-urls",
        "initial-advertise-peer-urls",
        "initial-cluster",
        "initial-cluster-state",
        "initial-cluster-token",
        "snapshot-count",
        "heartbeat-interval",
        "election-timeout",
        "quota-backend-bytes",
        "max-request-bytes",
        "max-txn-ops",
        "auto-compaction-mode",
        "auto-compaction-retention",
        "log-level",
        "config-file",
    ];
    for flag in etcd_flags {
        assert!(
            help.contains(&format!("--{flag} ")),
            "--{flag} missing from help"
        );
        let env = format!("ETCD_{}", flag.to_uppercase().replace('-', "_"));
        assert!(
            help.contains(&format!("[env: {env}=")),
            "{env} missing from help"
        );
    }
    for flag in ["--tuning-profile", "--print-config", "--version"] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
    assert!(help.contains("[default: http://localhost:2379]"));
    assert!(help.contains("[default: 100000]"));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let output = ringkv(&["--listen-client-url", "http://127.0.0.1:2379"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("unexpected argument '--listen-client-url'"),
        "{err}"
    );
    assert!(
        err.contains("--listen-client-urls"),
        "should suggest the right flag: {err}"
    );
}

#[test]
fn malformed_url_names_the_flag() {
    let output = ringkv(&["--listen-peer-urls", "http://127.0.0.1"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim_end(),
        "ringkv: failed to verify flags: invalid value \"http://127.0.0.1\" for flag --listen-peer-urls: \
         URL address does not have the form \"host:port\": http://127.0.0.1"
    );
}

#[test]
fn malformed_url_from_the_environment_names_the_variable() {
    let output = ringkv(
        &[],
        &[("ETCD_INITIAL_ADVERTISE_PEER_URLS", "ftp://10.0.0.1:2380")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(
            "invalid value \"ftp://10.0.0.1:2380\" for ETCD_INITIAL_ADVERTISE_PEER_URLS: \
             URL scheme must be http, https, unix, or unixs"
        ),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_enum_value_lists_the_choices() {
    let output = ringkv(&["--initial-cluster-state", "sideways"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("invalid value 'sideways' for '--initial-cluster-state"),
        "{err}"
    );
    assert!(err.contains("new") && err.contains("existing"), "{err}");
}

#[test]
fn election_timeout_rule_matches_etcd() {
    let output = ringkv(
        &["--heartbeat-interval", "250", "--election-timeout", "1000"],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains(
        "failed to verify flags: --election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[250ms]"
    ));
}

#[test]
fn inconsistent_initial_cluster_is_rejected() {
    let output = ringkv(
        &[
            "--name",
            "x",
            "--initial-cluster",
            "a=http://127.0.0.1:2380",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output)
        .contains("couldn't find local name \"x\" in the initial cluster configuration"));

    let duplicate = "default=http://localhost:2380,b=http://localhost:2380";
    let output = ringkv(&["--initial-cluster", duplicate], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("has duplicate url"));
}

#[test]
fn etcd_name_env_twin_sets_name_and_data_dir() {
    let output = ringkv(&["--print-config"], &[("ETCD_NAME", "infra7")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let config = stdout(&output);
    assert!(config.contains("name: infra7\n"), "{config}");
    assert!(config.contains("data-dir: infra7.etcd\n"), "{config}");
    assert!(
        config.contains("initial-cluster: infra7=http://localhost:2380\n"),
        "{config}"
    );
}

/// etcd refuses a setting given twice (flag and variable) instead of picking one silently.
#[test]
fn flag_and_env_twin_together_are_refused() {
    let output = ringkv(&["--snapshot-count", "5"], &[("ETCD_SNAPSHOT_COUNT", "7")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains(
        "conflicting environment variable \"ETCD_SNAPSHOT_COUNT\" is shadowed by corresponding \
         command-line flag (either unset environment variable or disable flag)"
    ));
}

#[test]
fn empty_and_unknown_env_variables() {
    // etcd ignores empty variables.
    let output = ringkv(
        &["--print-config"],
        &[("ETCD_NAME", ""), ("ETCD_WAL_DIR", "/wal")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("name: default\n"));
    assert!(stderr(&output).contains("ETCD_WAL_DIR is not a ringkv setting and is ignored"));
}

/// Go's flag package accepts `-name`; etcd's older docs use it.
#[test]
fn single_dash_long_flags_work_like_etcd() {
    let output = ringkv(
        &["-print-config", "-name", "infra0", "-snapshot-count=9"],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let config = stdout(&output);
    assert!(
        config.contains("name: infra0\n") && config.contains("snapshot-count: 9\n"),
        "{config}"
    );
}

/// The binary now runs the server; an https client URL is refused before anything is created
/// (TLS is not wired yet), after the debug log has shown the resolved configuration.
#[test]
fn debug_log_shows_config_and_https_is_refused() {
    let debug = ringkv(
        &[
            "--log-level",
            "debug",
            "--listen-client-urls",
            "https://127.0.0.1:0",
            "--advertise-client-urls",
            "https://127.0.0.1:0",
            "--data-dir",
            "/nonexistent/ringkv-never-created",
        ],
        &[],
    );
    assert_eq!(debug.status.code(), Some(1));
    let err = stderr(&debug);
    assert!(
        err.contains("resolved configuration:")
            && err.contains("listen-client-urls: https://127.0.0.1:0")
            && err.contains("only http client URLs are supported so far"),
        "{err}"
    );
}

/// `queues.apply_queue_depth` was removed from the profile schema; a user's profile that still
/// has it must stop the binary with the key named, not start with the line ignored.
#[test]
fn profile_with_removed_apply_queue_depth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let small = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/small.toml"),
    )
    .unwrap();
    let old = dir.path().join("old.toml");
    std::fs::write(&old, format!("{small}apply_queue_depth = 1024\n")).unwrap();
    let output = ringkv(
        &["--tuning-profile", old.to_str().unwrap(), "--print-config"],
        &[],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown field `apply_queue_depth`"), "{err}");
    assert!(
        err.contains("queues.apply_queue_depth was removed"),
        "{err}"
    );
}
