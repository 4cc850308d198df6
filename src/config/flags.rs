//! The command line: etcd's flag names, defaults and `ETCD_*` environment twins (flag name
//! upper-cased, dashes to underscores, `ETCD_` prefix), plus ringkv's own flags, which use the
//! `RINGKV_` prefix so they cannot collide with a future etcd flag.

use std::path::PathBuf;

use clap::Parser;

use super::cluster::ClusterState;
use super::compaction::CompactionMode;
use super::LogLevel;

/// etcd's defaults, shared by the flags and the config-file path.
pub mod defaults {
    pub const NAME: &str = "default";
    pub const LISTEN_CLIENT_URLS: &str = "http://localhost:2379";
    pub const ADVERTISE_CLIENT_URLS: &str = "http://localhost:2379";
    pub const LISTEN_PEER_URLS: &str = "http://localhost:2380";
    pub const INITIAL_ADVERTISE_PEER_URLS: &str = "http://localhost:2380";
    /// `NAME` at `INITIAL_ADVERTISE_PEER_URLS`; replaced by `<name>=<advertised peer urls>` when
    /// only the name is changed, as etcd does.
    pub const INITIAL_CLUSTER: &str = "default=http://localhost:2380";
    pub const INITIAL_CLUSTER_TOKEN: &str = "etcd-cluster";
    /// etcd 3.5's `DefaultSnapshotCount`.
    pub const SNAPSHOT_COUNT: u64 = 100_000;
    pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
    pub const ELECTION_TIMEOUT_MS: u64 = 1000;
    /// `--quota-backend-bytes 0` means this (etcd's `DefaultQuotaBytes`, 2 GiB).
    pub const QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
    /// Above this etcd warns that the quota exceeds what it recommends (8 GiB).
    pub const QUOTA_BACKEND_BYTES_RECOMMENDED_MAX: u64 = 8 * 1024 * 1024 * 1024;
    /// 1.5 MiB, etcd's `DefaultMaxRequestBytes`.
    pub const MAX_REQUEST_BYTES: u64 = 1_572_864;
    pub const MAX_TXN_OPS: u64 = 128;
    pub const AUTO_COMPACTION_RETENTION: &str = "0";
    /// etcd's `--auth-token` default: simple tokens.
    pub const AUTH_TOKEN: &str = "simple";
    /// etcd's `--bcrypt-cost` default, and its valid range (Go's bcrypt.MinCost..MaxCost).
    pub const BCRYPT_COST: u32 = 10;
    pub const BCRYPT_COST_MIN: u32 = 4;
    pub const BCRYPT_COST_MAX: u32 = 31;
    /// etcd's `--auth-token-ttl` default, in seconds.
    pub const AUTH_TOKEN_TTL_SECS: u64 = 300;
    /// etcd's `maxElectionMs`.
    pub const ELECTION_TIMEOUT_MAX_MS: u64 = 50_000;

    const _: () = assert!(QUOTA_BACKEND_BYTES < QUOTA_BACKEND_BYTES_RECOMMENDED_MAX);
    const _: () = assert!(ELECTION_TIMEOUT_MS >= 5 * HEARTBEAT_INTERVAL_MS);
    const _: () = assert!(ELECTION_TIMEOUT_MS <= ELECTION_TIMEOUT_MAX_MS);
}

/// `ringkv`'s command line. Each etcd flag reads its `ETCD_*` twin when not given; a flag on
/// the command line wins over the environment. With `--config-file`, the file is the whole
/// configuration and the other flags and variables are ignored (etcd's rule).
#[derive(Debug, Parser)]
#[command(
    name = "ringkv",
    about = "An etcd-v3-compatible key-value server (thread-per-core, io_uring, raft).",
    disable_version_flag = true,
    max_term_width = 100
)]
pub struct Flags {
    /// This member's name; must appear in --initial-cluster.
    #[arg(long, env = "ETCD_NAME", default_value = defaults::NAME, value_name = "NAME")]
    pub name: String,

    /// Directory for the WAL, snapshots and page store [default: ${name}.etcd].
    #[arg(long, env = "ETCD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<String>,

    /// Comma-separated URLs to accept client (gRPC) connections on.
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = defaults::LISTEN_CLIENT_URLS, value_name = "URLS")]
    pub listen_client_urls: String,

    /// Comma-separated client URLs this member tells clients and peers to use.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = defaults::ADVERTISE_CLIENT_URLS, value_name = "URLS")]
    pub advertise_client_urls: String,

    /// Comma-separated URLs to accept raft traffic from other members on.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = defaults::LISTEN_PEER_URLS, value_name = "URLS")]
    pub listen_peer_urls: String,

    /// Comma-separated peer URLs this member tells the other members to use.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = defaults::INITIAL_ADVERTISE_PEER_URLS, value_name = "URLS")]
    pub initial_advertise_peer_urls: String,

    /// Bootstrap membership as name=peer-url pairs (a name may repeat for several URLs).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER", default_value = defaults::INITIAL_CLUSTER, value_name = "NAME=URL,...")]
    pub initial_cluster: String,

    /// new: bootstrap a cluster; existing: join one that is already running.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "new",
        value_name = "STATE"
    )]
    pub initial_cluster_state: ClusterState,

    /// Token that keeps separately bootstrapped clusters from mistaking each other's members.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = defaults::INITIAL_CLUSTER_TOKEN, value_name = "TOKEN")]
    pub initial_cluster_token: String,

    /// Applied entries between raft snapshots.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = defaults::SNAPSHOT_COUNT, value_name = "N")]
    pub snapshot_count: u64,

    /// Leader heartbeat period, in milliseconds.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = defaults::HEARTBEAT_INTERVAL_MS, value_name = "MS")]
    pub heartbeat_interval: u64,

    /// Milliseconds without a heartbeat before a follower starts an election (>= 5 heartbeats).
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = defaults::ELECTION_TIMEOUT_MS, value_name = "MS")]
    pub election_timeout: u64,

    /// Backend size in bytes at which the NOSPACE alarm stops writes (0 means 2 GiB).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// Largest client request accepted, in bytes.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = defaults::MAX_REQUEST_BYTES, value_name = "BYTES")]
    pub max_request_bytes: u64,

    /// Largest number of operations in one Txn.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = defaults::MAX_TXN_OPS, value_name = "N")]
    pub max_txn_ops: u64,

    /// Auth token type and options, etcd's syntax: 'simple' (jwt is not supported).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = defaults::AUTH_TOKEN, value_name = "SPEC")]
    pub auth_token: String,

    /// Cost of the bcrypt hashes of auth passwords (4 to 31; others mean 10, as in etcd).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = defaults::BCRYPT_COST, value_name = "N")]
    pub bcrypt_cost: u32,

    /// Seconds an auth token stays valid after its last use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = defaults::AUTH_TOKEN_TTL_SECS, value_name = "SECONDS")]
    pub auth_token_ttl: u64,

    /// periodic: retention is hours or a duration (30m); revision: retention is a revision count.
    #[arg(
        long,
        env = "ETCD_AUTO_COMPACTION_MODE",
        value_enum,
        default_value = "periodic",
        value_name = "MODE"
    )]
    pub auto_compaction_mode: CompactionMode,

    /// History kept before automatic compaction; 0 turns automatic compaction off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = defaults::AUTO_COMPACTION_RETENTION, value_name = "RETENTION")]
    pub auto_compaction_retention: String,

    /// Logging threshold.
    #[arg(
        long,
        env = "ETCD_LOG_LEVEL",
        value_enum,
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: LogLevel,

    /// YAML file with etcd's keys (name, data-dir, ...); when given, it is the whole
    /// configuration and other flags and ETCD_* variables are ignored.
    #[arg(long, env = "ETCD_CONFIG_FILE", value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// Period of progress notifications to idle watchers that asked for them (a Go duration;
    /// not positive keeps 10m, below 100ms means 100ms).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = super::watch::DEFAULT, value_name = "DURATION")]
    pub experimental_watch_progress_notify_interval: String,

    /// ringkv: tuning profile, a built-in name (small, dedicated) or a TOML file path
    /// [default: small below 8 cores, else dedicated].
    #[arg(long, env = "RINGKV_TUNING_PROFILE", value_name = "NAME|PATH")]
    pub tuning_profile: Option<String>,

    /// ringkv: print the resolved configuration as config-file YAML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
}

/// Flag ids (clap's field names) in the order they are listed, for provenance lookups.
pub const SETTING_IDS: &[&str] = &[
    "name",
    "data_dir",
    "listen_client_urls",
    "advertise_client_urls",
    "listen_peer_urls",
    "initial_advertise_peer_urls",
    "initial_cluster",
    "initial_cluster_state",
    "initial_cluster_token",
    "snapshot_count",
    "heartbeat_interval",
    "election_timeout",
    "quota_backend_bytes",
    "max_request_bytes",
    "max_txn_ops",
    "auth_token",
    "bcrypt_cost",
    "auth_token_ttl",
    "auto_compaction_mode",
    "auto_compaction_retention",
    "log_level",
    "tuning_profile",
    "experimental_watch_progress_notify_interval",
];
