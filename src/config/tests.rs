//! Resolution rules, checked through `parse_args` the way the binary calls it.

use std::io::Write;

use super::*;

const CORES: usize = 2;

/// clap reads the real process environment; an ETCD_* variable from the developer's shell
/// would change every expectation here, so say so instead of failing obscurely.
fn run(args: &[&str]) -> Result<(Config, Vec<String>), ConfigError> {
    let leaked: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("ETCD_"))
        .collect();
    assert!(
        leaked.is_empty(),
        "unset {leaked:?} to run the config tests"
    );
    let argv = std::iter::once("ringkv").chain(args.iter().copied());
    match parse_args(argv, CORES)? {
        Invocation::Run {
            config, notices, ..
        } => Ok((*config, notices)),
        Invocation::PrintVersion => panic!("unexpected --version"),
    }
}

fn config(args: &[&str]) -> Config {
    run(args)
        .unwrap_or_else(|error| panic!("{args:?}: {error}"))
        .0
}

fn error(args: &[&str]) -> String {
    run(args).expect_err("should be rejected").to_string()
}

fn yaml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn etcd_defaults() {
    let config = config(&[]);
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(
        url::join(&config.listen_client_urls),
        "http://localhost:2379"
    );
    assert_eq!(
        url::join(&config.advertise_client_urls),
        "http://localhost:2379"
    );
    assert_eq!(url::join(&config.listen_peer_urls), "http://localhost:2380");
    assert_eq!(
        url::join(&config.initial_advertise_peer_urls),
        "http://localhost:2380"
    );
    assert_eq!(
        config.initial_cluster.to_string(),
        "default=http://localhost:2380"
    );
    assert_eq!(config.initial_cluster_state, ClusterState::New);
    assert_eq!(config.initial_cluster_token, "etcd-cluster");
    assert_eq!(config.snapshot_count, 100_000);
    assert_eq!(config.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(config.election_timeout, Duration::from_secs(1));
    assert_eq!(config.quota_backend_bytes, 2 * 1024 * 1024 * 1024);
    assert_eq!(config.max_request_bytes, 1_572_864);
    assert_eq!(config.max_txn_ops, 128);
    assert_eq!(config.auto_compaction_mode, CompactionMode::Periodic);
    assert_eq!(config.auto_compaction, AutoCompaction::Disabled);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.tuning_source, ProfileSource::BuiltIn("small"));
}

#[test]
fn name_alone_sets_data_dir_and_initial_cluster() {
    let config = config(&[
        "--name",
        "infra1",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:12380",
    ]);
    assert_eq!(config.data_dir, PathBuf::from("infra1.etcd"));
    assert_eq!(
        config.initial_cluster.to_string(),
        "infra1=http://127.0.0.1:12380"
    );
}

#[test]
fn three_member_cluster() {
    let config = config(&[
        "--name=b",
        "--listen-peer-urls=http://127.0.0.1:22380",
        "--initial-advertise-peer-urls=http://127.0.0.1:22380",
        "--listen-client-urls=http://127.0.0.1:22379",
        "--advertise-client-urls=http://127.0.0.1:22379",
        "--initial-cluster=a=http://127.0.0.1:12380,b=http://127.0.0.1:22380,c=http://127.0.0.1:32380",
        "--initial-cluster-state=existing",
        "--data-dir=/tmp/b",
        "--auto-compaction-retention=1h",
        "--quota-backend-bytes=1048576",
    ]);
    assert_eq!(config.initial_cluster.members.len(), 3);
    assert_eq!(config.initial_cluster_state, ClusterState::Existing);
    assert_eq!(config.data_dir, PathBuf::from("/tmp/b"));
    assert_eq!(
        config.auto_compaction,
        AutoCompaction::Periodic(Duration::from_secs(3600))
    );
    assert_eq!(config.quota_backend_bytes, 1_048_576);
}

#[test]
fn election_timeout_rules_use_etcd_messages() {
    assert_eq!(
        error(&["--heartbeat-interval=250", "--election-timeout=1000"]),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[250ms]"
    );
    assert_eq!(
        error(&["--election-timeout=60000", "--heartbeat-interval=10000"]),
        "--election-timeout[60000ms] is too long, and should be set less than 50000ms"
    );
    assert_eq!(
        error(&["--heartbeat-interval=0"]),
        "--heartbeat-interval must be >0 (set to 0ms)"
    );
    assert_eq!(
        error(&["--election-timeout=0"]),
        "--election-timeout must be >0 (set to 0ms)"
    );
    config(&["--heartbeat-interval=200", "--election-timeout=1000"]);
}

#[test]
fn malformed_url_names_the_flag() {
    assert_eq!(
        error(&["--listen-peer-urls=http://127.0.0.1"]),
        "invalid value \"http://127.0.0.1\" for flag --listen-peer-urls: \
         URL address does not have the form \"host:port\": http://127.0.0.1"
    );
    assert_eq!(
        error(&["--initial-advertise-peer-urls=tcp://a:1"]),
        "invalid value \"tcp://a:1\" for flag --initial-advertise-peer-urls: \
         URL scheme must be http, https, unix, or unixs: tcp://a:1"
    );
}

#[test]
fn listen_urls_must_be_ip_or_localhost() {
    assert_eq!(
        error(&["--listen-peer-urls=http://example.com:2380"]),
        "expected IP in URL for binding (http://example.com:2380)"
    );
}

#[test]
fn listen_client_urls_need_advertise_client_urls() {
    assert_eq!(
        error(&["--listen-client-urls=http://127.0.0.1:2379"]),
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    );
}

#[test]
fn inconsistent_initial_cluster() {
    assert_eq!(
        error(&["--name=x", "--initial-cluster=a=http://127.0.0.1:2380"]),
        "couldn't find local name \"x\" in the initial cluster configuration"
    );
    assert_eq!(
        error(&["--initial-cluster=default=http://localhost:2380,other=http://localhost:2380"]),
        "initial cluster default=http://localhost:2380,other=http://localhost:2380 has duplicate url"
    );
    assert!(error(&["--initial-cluster=default"])
        .starts_with("invalid value \"default\" for flag --initial-cluster"));
}

#[test]
fn bounded_sizes() {
    assert_eq!(
        error(&["--quota-backend-bytes=-1"]),
        "invalid value \"-1\" for flag --quota-backend-bytes: must not be negative"
    );
    assert!(error(&["--max-txn-ops=0"]).contains("must be greater than 0"));
    let (_, notices) = run(&["--quota-backend-bytes=17179869184"]).unwrap();
    assert!(
        notices[0].contains("exceeds the recommended maximum"),
        "{notices:?}"
    );
}

#[test]
fn clap_rejects_unknown_flags_and_bad_values() {
    let unknown = run(&["--no-such-flag"]).unwrap_err();
    assert!(
        matches!(&unknown, ConfigError::Cli(e) if e.kind() == clap::error::ErrorKind::UnknownArgument)
    );
    let state = run(&["--initial-cluster-state=sideways"]).unwrap_err();
    assert!(
        matches!(&state, ConfigError::Cli(e) if e.kind() == clap::error::ErrorKind::InvalidValue)
    );
    let number = run(&["--snapshot-count=many"]).unwrap_err();
    assert!(
        matches!(&number, ConfigError::Cli(e) if e.kind() == clap::error::ErrorKind::ValueValidation)
    );
}

#[test]
fn version_short_circuits() {
    let invocation = parse_args(["ringkv", "--version"], CORES).unwrap();
    assert!(matches!(invocation, Invocation::PrintVersion));
}

#[test]
fn config_file_is_the_source_of_truth() {
    let file = yaml_file(
        "name: infra2\n\
         listen-peer-urls: http://127.0.0.1:2380\n\
         initial-advertise-peer-urls: http://127.0.0.1:2380\n\
         election-timeout: 2500\n\
         auto-compaction-mode: revision\n\
         auto-compaction-retention: \"1000\"\n\
         wal-dir: /elsewhere\n",
    );
    let path = file.path().to_str().unwrap();
    let (config, notices) = run(&["--config-file", path, "--name", "ignored"]).unwrap();
    assert_eq!(config.name, "infra2");
    assert_eq!(config.data_dir, PathBuf::from("infra2.etcd"));
    assert_eq!(
        config.initial_cluster.to_string(),
        "infra2=http://127.0.0.1:2380"
    );
    assert_eq!(config.election_timeout, Duration::from_millis(2500));
    assert_eq!(config.auto_compaction, AutoCompaction::Revision(1000));
    assert!(
        notices
            .iter()
            .any(|n| n.contains("these are ignored: --name")),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n.contains("\"wal-dir\" is not supported")),
        "{notices:?}"
    );
}

#[test]
fn config_file_errors_name_the_key() {
    let file = yaml_file(
        "listen-client-urls: localhost:2379\nadvertise-client-urls: http://localhost:2379\n",
    );
    let path = file.path().to_str().unwrap();
    let message = error(&["--config-file", path]);
    assert!(
        message.starts_with(&format!(
            "invalid value \"localhost:2379\" for listen-client-urls in config file {path}"
        )),
        "{message}"
    );
    let garbage = yaml_file("heartbeat-interval: [1, 2]\n");
    let message = error(&["--config-file", garbage.path().to_str().unwrap()]);
    assert!(message.contains("is not valid"), "{message}");
    assert!(error(&["--config-file", "/nonexistent/ringkv.yaml"])
        .starts_with("cannot read config file"));
}

/// `--print-config` output must load back to the same configuration.
#[test]
fn printed_config_round_trips() {
    let original = config(&[
        "--name=n1",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--auto-compaction-retention=90m",
        "--log-level=debug",
    ]);
    let file = yaml_file(&original.to_string());
    let reloaded = config(&["--config-file", file.path().to_str().unwrap()]);
    assert_eq!(reloaded, original);
}

#[test]
fn tuning_profile_by_name_and_path() {
    assert_eq!(
        config(&["--tuning-profile=small"]).tuning_source,
        ProfileSource::BuiltIn("small")
    );
    assert!(error(&["--tuning-profile=dedicated"]).contains("but this machine has 2 cores"));
    let profile = yaml_file(include_str!("../../tuning/small.toml"));
    let path = profile.path().to_str().unwrap();
    let config = config(&["--tuning-profile", path]);
    assert_eq!(
        config.tuning_source,
        ProfileSource::File(PathBuf::from(path))
    );
}

#[test]
fn single_dash_long_flags_are_accepted() {
    let config = config(&[
        "-name",
        "infra0",
        "-snapshot-count=3",
        "--quota-backend-bytes",
        "-0",
    ]);
    assert_eq!((config.name.as_str(), config.snapshot_count), ("infra0", 3));
    // Values that merely start with a dash are left alone.
    assert!(error(&["--quota-backend-bytes", "-5"]).contains("must not be negative"));
}
