//! The server's configuration: etcd's command-line flags, `ETCD_*` environment twins and YAML
//! config file, resolved into one typed [`Config`] that the server consumes, plus the tuning
//! profile (`tuning/*.toml`) that places components on cores and bounds batches and queues.
//!
//! Resolution, in order:
//! 1. clap parses the command line; each etcd flag falls back to its `ETCD_*` variable, then to
//!    etcd's default (`flags`).
//! 2. With `--config-file`, the YAML file replaces all of that: unset keys take etcd's defaults
//!    and other flags and variables are ignored with a notice (`file`), as etcd does.
//! 3. Values are checked with etcd's rules and etcd's messages — URL syntax (`url`), bind
//!    addresses, heartbeat/election bounds, compaction retention (`compaction`), and the
//!    bootstrap membership (`cluster`) — then typed: URLs parsed, durations as `Duration`,
//!    sizes as `u64`.
//!
//! Every error names where the bad value came from: `flag --x`, `ETCD_X`, or a config-file key.

pub mod auth_token;
pub mod cluster;
pub mod compaction;
pub mod file;
pub mod flags;
pub mod tuning;
pub mod url;
pub mod watch;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

pub use cluster::{ClusterState, InitialCluster};
pub use compaction::{AutoCompaction, CompactionMode};
pub use file::FileConfig;
pub use flags::{defaults, Flags};
pub use tuning::{CorePlacement, ProfileSource, TuningProfile};
pub use url::{Scheme, Url};

/// The etcd API version ringkv speaks, as `etcd --version` and `etcdctl version` report it.
pub const API_VERSION: &str = "3.5";

/// etcd's log levels (zap's).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Panic,
    Fatal,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub initial_cluster: InitialCluster,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// Applied entries between raft snapshots.
    pub snapshot_count: u64,
    pub heartbeat_interval: Duration,
    /// Invariant: at least 5 x `heartbeat_interval`, at most 50 s.
    pub election_timeout: Duration,
    /// Backend size that raises the NOSPACE alarm; never 0 (0 on input means 2 GiB).
    pub quota_backend_bytes: u64,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    /// `--auth-token`, checked: a `simple` spec.
    pub auth_token: String,
    /// Invariant: within `BCRYPT_COST_MIN..=BCRYPT_COST_MAX`.
    pub bcrypt_cost: u32,
    /// Invariant: not zero.
    pub auth_token_ttl: Duration,
    pub auto_compaction_mode: CompactionMode,
    pub auto_compaction: AutoCompaction,
    pub log_level: LogLevel,
    pub tuning: TuningProfile,
    pub tuning_source: ProfileSource,
    /// `--experimental-watch-progress-notify-interval`, adjusted as etcd does (`watch`).
    pub watch_progress_notify_interval: Duration,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    PrintVersion,
    Run {
        config: Box<Config>,
        /// `--print-config`: print the configuration and exit.
        print_config: bool,
        /// Things the operator should know that do not stop startup (ignored flags, unsupported
        /// config-file keys, an oversized quota).
        notices: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unknown flag, unparsable number, bad enum value, `--help`: clap formats and exits.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    /// etcd's flag-parsing shape: `invalid value "x" for flag -listen-client-urls: <reason>`.
    #[error("invalid value {value:?} for {origin}: {reason}")]
    Invalid {
        value: String,
        origin: String,
        reason: String,
    },
    /// A cross-flag rule, with etcd's message verbatim.
    #[error("{0}")]
    Verify(String),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Tuning(#[from] tuning::TuningError),
}

/// Where one setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    Flag,
    Env(String),
    File(PathBuf),
}

/// Settings before checking, from either the command line or the config file, keyed the same.
#[derive(Debug)]
struct Raw {
    name: String,
    data_dir: Option<String>,
    listen_client_urls: String,
    advertise_client_urls: String,
    listen_peer_urls: String,
    initial_advertise_peer_urls: String,
    initial_cluster: String,
    initial_cluster_state: ClusterState,
    initial_cluster_token: String,
    snapshot_count: u64,
    heartbeat_interval_ms: u64,
    election_timeout_ms: u64,
    quota_backend_bytes: i64,
    max_request_bytes: u64,
    max_txn_ops: u64,
    auth_token: String,
    bcrypt_cost: u32,
    auth_token_ttl: u64,
    auto_compaction_mode: CompactionMode,
    auto_compaction_retention: String,
    log_level: LogLevel,
    tuning_profile: Option<String>,
    /// A Go duration.
    experimental_watch_progress_notify_interval: String,
    /// The settings came from `--config-file` rather than flags and environment.
    from_file: bool,
    /// By etcd key (`listen-client-urls`); absent means `Origin::Default`.
    origins: BTreeMap<String, Origin>,
}

impl Raw {
    fn origin(&self, key: &str) -> String {
        match self.origins.get(key).unwrap_or(&Origin::Default) {
            Origin::Default => format!("flag --{key} (default)"),
            Origin::Flag => format!("flag --{key}"),
            Origin::Env(var) => var.clone(),
            Origin::File(path) => format!("{key} in config file {}", path.display()),
        }
    }

    fn is_set(&self, key: &str) -> bool {
        self.origins
            .get(key)
            .is_some_and(|origin| *origin != Origin::Default)
    }

    fn urls(&self, key: &str, value: &str) -> Result<Vec<Url>, ConfigError> {
        url::parse_list(value).map_err(|error| self.invalid(key, value, error.to_string()))
    }

    fn invalid(&self, key: &str, value: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            value: value.to_owned(),
            origin: self.origin(key),
            reason,
        }
    }
}

/// Parses `args` (including the program name) and the process environment. `cores` is the
/// machine's core count, used to pick and check the tuning profile.
pub fn parse_args<I, T>(args: I, cores: usize) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = Flags::command();
    let args = single_dash_to_double(&command, args.into_iter().map(Into::into));
    let matches = command.try_get_matches_from(args)?;
    let flags = Flags::from_arg_matches(&matches)?;
    if flags.version {
        return Ok(Invocation::PrintVersion);
    }
    let print_config = flags.print_config;
    let mut notices = Vec::new();
    let raw = if let Some(path) = flags.config_file.clone() {
        let ignored = explicitly_set(&matches);
        if !ignored.is_empty() {
            notices.push(format!(
                "--config-file {} is set, so these are ignored: {}",
                path.display(),
                ignored.join(", ")
            ));
        }
        let file = FileConfig::read(&path)?;
        for key in file.unsupported.keys() {
            notices.push(format!(
                "config file key {key:?} is not supported by ringkv and is ignored"
            ));
        }
        Raw::from_file(file, &path)
    } else {
        check_env_shadowing(&matches)?;
        notices.extend(unrecognized_env());
        Raw::from_flags(flags, &matches)
    };
    if !(defaults::BCRYPT_COST_MIN..=defaults::BCRYPT_COST_MAX).contains(&raw.bcrypt_cost) {
        notices.push(format!(
            "use default bcrypt-cost {} instead of the invalid value {}",
            defaults::BCRYPT_COST,
            raw.bcrypt_cost
        ));
    }
    let config = resolve(raw, cores)?;
    if config.quota_backend_bytes > defaults::QUOTA_BACKEND_BYTES_RECOMMENDED_MAX {
        notices.push(format!(
            "--quota-backend-bytes {} exceeds the recommended maximum of {} bytes",
            config.quota_backend_bytes,
            defaults::QUOTA_BACKEND_BYTES_RECOMMENDED_MAX
        ));
    }
    Ok(Invocation::Run {
        config: Box::new(config),
        print_config,
        notices,
    })
}

/// Go's flag package, and so etcd, accepts `-name` as well as `--name`; clap reads `-name` as
/// short flags. Rewrites a single-dash long flag name to double-dash, up to a `--` terminator.
fn single_dash_to_double(
    command: &clap::Command,
    args: impl Iterator<Item = OsString>,
) -> Vec<OsString> {
    let mut terminated = false;
    args.map(|arg| {
        let Some(text) = arg.to_str() else { return arg };
        terminated |= text == "--";
        let Some(flag) = text.strip_prefix('-').filter(|rest| !rest.starts_with('-')) else {
            return arg;
        };
        let name = flag.split_once('=').map_or(flag, |(name, _)| name);
        let is_long = command.get_arguments().any(|a| a.get_long() == Some(name));
        if terminated || !is_long {
            return arg;
        }
        OsString::from(format!("-{text}"))
    })
    .collect()
}

/// etcd refuses to start when a setting is given both as a flag and as its ETCD_* variable,
/// rather than silently preferring one.
fn check_env_shadowing(matches: &clap::ArgMatches) -> Result<(), ConfigError> {
    let command = Flags::command();
    for id in flags::SETTING_IDS.iter().copied().chain(["config_file"]) {
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let var = env_name(&command, id);
        if std::env::var_os(&var).is_some_and(|value| !value.is_empty()) {
            return Err(ConfigError::Verify(format!(
                "conflicting environment variable {var:?} is shadowed by corresponding \
                 command-line flag (either unset environment variable or disable flag)"
            )));
        }
    }
    Ok(())
}

/// ETCD_* variables that match no ringkv setting (etcd warns about these too). Only names are
/// reported: values may hold secrets.
fn unrecognized_env() -> Vec<String> {
    let command = Flags::command();
    let known: Vec<OsString> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(ToOwned::to_owned))
        .collect();
    std::env::vars_os()
        .filter(|(name, _)| name.to_str().is_some_and(|name| name.starts_with("ETCD_")))
        .filter(|(name, _)| !known.contains(name))
        .map(|(name, _)| {
            format!(
                "environment variable {} is not a ringkv setting and is ignored",
                name.to_string_lossy()
            )
        })
        .collect()
}

/// Settings given on the command line or in the environment, named as the operator gave them.
fn explicitly_set(matches: &clap::ArgMatches) -> Vec<String> {
    let command = Flags::command();
    let mut set = Vec::new();
    for id in flags::SETTING_IDS {
        let name = id.replace('_', "-");
        match matches.value_source(id) {
            Some(ValueSource::CommandLine) => set.push(format!("--{name}")),
            Some(ValueSource::EnvVariable) => set.push(env_name(&command, id)),
            _ => {}
        }
    }
    set
}

fn env_name(command: &clap::Command, id: &str) -> String {
    command
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .and_then(clap::Arg::get_env)
        .map_or_else(String::new, |env| env.to_string_lossy().into_owned())
}

impl Raw {
    fn from_flags(flags: Flags, matches: &clap::ArgMatches) -> Raw {
        let command = Flags::command();
        let mut origins = BTreeMap::new();
        for id in flags::SETTING_IDS {
            let origin = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Origin::Flag,
                Some(ValueSource::EnvVariable) => Origin::Env(env_name(&command, id)),
                _ => continue,
            };
            origins.insert(id.replace('_', "-"), origin);
        }
        Raw {
            name: flags.name,
            data_dir: flags.data_dir,
            listen_client_urls: flags.listen_client_urls,
            advertise_client_urls: flags.advertise_client_urls,
            listen_peer_urls: flags.listen_peer_urls,
            initial_advertise_peer_urls: flags.initial_advertise_peer_urls,
            initial_cluster: flags.initial_cluster,
            initial_cluster_state: flags.initial_cluster_state,
            initial_cluster_token: flags.initial_cluster_token,
            snapshot_count: flags.snapshot_count,
            heartbeat_interval_ms: flags.heartbeat_interval,
            election_timeout_ms: flags.election_timeout,
            quota_backend_bytes: flags.quota_backend_bytes,
            max_request_bytes: flags.max_request_bytes,
            max_txn_ops: flags.max_txn_ops,
            auth_token: flags.auth_token,
            bcrypt_cost: flags.bcrypt_cost,
            auth_token_ttl: flags.auth_token_ttl,
            auto_compaction_mode: flags.auto_compaction_mode,
            auto_compaction_retention: flags.auto_compaction_retention,
            log_level: flags.log_level,
            tuning_profile: flags.tuning_profile,
            experimental_watch_progress_notify_interval: flags
                .experimental_watch_progress_notify_interval,
            from_file: false,
            origins,
        }
    }

    fn from_file(file: FileConfig, path: &Path) -> Raw {
        let keys = flags::SETTING_IDS.iter().map(|id| id.replace('_', "-"));
        let origins = keys
            .filter(|key| file.has(key))
            .map(|key| (key, Origin::File(path.to_owned())))
            .collect();
        Raw {
            name: file.name.unwrap_or_else(|| defaults::NAME.to_owned()),
            data_dir: file.data_dir,
            listen_client_urls: file
                .listen_client_urls
                .unwrap_or_else(|| defaults::LISTEN_CLIENT_URLS.to_owned()),
            advertise_client_urls: file
                .advertise_client_urls
                .unwrap_or_else(|| defaults::ADVERTISE_CLIENT_URLS.to_owned()),
            listen_peer_urls: file
                .listen_peer_urls
                .unwrap_or_else(|| defaults::LISTEN_PEER_URLS.to_owned()),
            initial_advertise_peer_urls: file
                .initial_advertise_peer_urls
                .unwrap_or_else(|| defaults::INITIAL_ADVERTISE_PEER_URLS.to_owned()),
            initial_cluster: file
                .initial_cluster
                .unwrap_or_else(|| defaults::INITIAL_CLUSTER.to_owned()),
            initial_cluster_state: file.initial_cluster_state.unwrap_or(ClusterState::New),
            initial_cluster_token: file
                .initial_cluster_token
                .unwrap_or_else(|| defaults::INITIAL_CLUSTER_TOKEN.to_owned()),
            snapshot_count: file.snapshot_count.unwrap_or(defaults::SNAPSHOT_COUNT),
            heartbeat_interval_ms: file
                .heartbeat_interval
                .unwrap_or(defaults::HEARTBEAT_INTERVAL_MS),
            election_timeout_ms: file
                .election_timeout
                .unwrap_or(defaults::ELECTION_TIMEOUT_MS),
            quota_backend_bytes: file.quota_backend_bytes.unwrap_or(0),
            max_request_bytes: file
                .max_request_bytes
                .unwrap_or(defaults::MAX_REQUEST_BYTES),
            max_txn_ops: file.max_txn_ops.unwrap_or(defaults::MAX_TXN_OPS),
            auth_token: file
                .auth_token
                .unwrap_or_else(|| defaults::AUTH_TOKEN.to_owned()),
            bcrypt_cost: file.bcrypt_cost.unwrap_or(defaults::BCRYPT_COST),
            auth_token_ttl: file.auth_token_ttl.unwrap_or(defaults::AUTH_TOKEN_TTL_SECS),
            auto_compaction_mode: file
                .auto_compaction_mode
                .unwrap_or(CompactionMode::Periodic),
            auto_compaction_retention: file
                .auto_compaction_retention
                .unwrap_or_else(|| defaults::AUTO_COMPACTION_RETENTION.to_owned()),
            log_level: file.log_level.unwrap_or(LogLevel::Info),
            tuning_profile: file.tuning_profile,
            experimental_watch_progress_notify_interval: file
                .experimental_watch_progress_notify_interval
                .map_or_else(|| watch::DEFAULT.to_owned(), watch::from_nanos),
            from_file: true,
            origins,
        }
    }
}

/// Checks `raw` with etcd's rules, in etcd's order, and types it.
fn resolve(raw: Raw, cores: usize) -> Result<Config, ConfigError> {
    let listen_client_urls = raw.urls("listen-client-urls", &raw.listen_client_urls)?;
    let advertise_client_urls = raw.urls("advertise-client-urls", &raw.advertise_client_urls)?;
    let listen_peer_urls = raw.urls("listen-peer-urls", &raw.listen_peer_urls)?;
    let initial_advertise_peer_urls = raw.urls(
        "initial-advertise-peer-urls",
        &raw.initial_advertise_peer_urls,
    )?;

    // etcd's embed.Config.Validate.
    for urls in [&listen_peer_urls, &listen_client_urls] {
        if let Some(url) = urls.iter().find(|url| !url.is_bindable()) {
            return Err(ConfigError::Verify(format!(
                "expected IP in URL for binding ({url})"
            )));
        }
    }
    for (flag, urls) in [
        (
            "--initial-advertise-peer-urls",
            &initial_advertise_peer_urls,
        ),
        ("--advertise-client-urls", &advertise_client_urls),
    ] {
        if let Some(url) = urls
            .iter()
            .find(|url| url.host.is_empty() && url.path.is_empty())
        {
            return Err(ConfigError::Verify(format!(
                "{flag} {:?} must be \"host:port\" (expected host in {:?})",
                url::join(urls),
                url.to_string()
            )));
        }
    }
    let (tick_ms, election_ms) = (raw.heartbeat_interval_ms, raw.election_timeout_ms);
    if tick_ms == 0 {
        return Err(ConfigError::Verify(format!(
            "--heartbeat-interval must be >0 (set to {tick_ms}ms)"
        )));
    }
    if election_ms == 0 {
        return Err(ConfigError::Verify(format!(
            "--election-timeout must be >0 (set to {election_ms}ms)"
        )));
    }
    if tick_ms.saturating_mul(5) > election_ms {
        return Err(ConfigError::Verify(format!(
            "--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{tick_ms}ms]"
        )));
    }
    if election_ms > defaults::ELECTION_TIMEOUT_MAX_MS {
        return Err(ConfigError::Verify(format!(
            "--election-timeout[{election_ms}ms] is too long, and should be set less than {}ms",
            defaults::ELECTION_TIMEOUT_MAX_MS
        )));
    }
    // etcd drops the default advertise URLs when only the listen URLs are given on the command
    // line, so that a member never advertises an address it does not listen on.
    if !raw.from_file && raw.is_set("listen-client-urls") && !raw.is_set("advertise-client-urls") {
        return Err(ConfigError::Verify(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .to_owned(),
        ));
    }

    let auto_compaction =
        AutoCompaction::parse(raw.auto_compaction_mode, &raw.auto_compaction_retention).map_err(
            |reason| {
                raw.invalid(
                    "auto-compaction-retention",
                    &raw.auto_compaction_retention,
                    reason,
                )
            },
        )?;
    let quota_backend_bytes = match u64::try_from(raw.quota_backend_bytes) {
        Ok(0) => defaults::QUOTA_BACKEND_BYTES,
        Ok(bytes) => bytes,
        // etcd reads a negative quota as "no quota"; ringkv keeps every limit bounded.
        Err(_) => {
            let value = raw.quota_backend_bytes.to_string();
            return Err(raw.invalid(
                "quota-backend-bytes",
                &value,
                "must not be negative".to_owned(),
            ));
        }
    };
    for (key, value) in [
        ("max-request-bytes", raw.max_request_bytes),
        ("max-txn-ops", raw.max_txn_ops),
    ] {
        if value == 0 {
            return Err(raw.invalid(key, "0", "must be greater than 0".to_owned()));
        }
    }
    if raw.name.is_empty() {
        return Err(raw.invalid("name", "", "must not be empty".to_owned()));
    }
    auth_token::parse_spec(&raw.auth_token)
        .map_err(|error| raw.invalid("auth-token", &raw.auth_token, error.to_string()))?;
    if raw.auth_token_ttl == 0 {
        return Err(raw.invalid("auth-token-ttl", "0", "must be greater than 0".to_owned()));
    }
    // etcd falls back to the default cost rather than refusing to start (`parse_args` warns).
    let bcrypt_cost =
        if (defaults::BCRYPT_COST_MIN..=defaults::BCRYPT_COST_MAX).contains(&raw.bcrypt_cost) {
            raw.bcrypt_cost
        } else {
            defaults::BCRYPT_COST
        };

    // etcd's UpdateDefaultClusterFromName: a member given only a name bootstraps alone.
    let initial_cluster =
        if raw.initial_cluster == defaults::INITIAL_CLUSTER && raw.name != defaults::NAME {
            InitialCluster::from_name(&raw.name, &initial_advertise_peer_urls)
        } else {
            InitialCluster::parse(&raw.initial_cluster).map_err(|error| {
                raw.invalid("initial-cluster", &raw.initial_cluster, error.to_string())
            })?
        };
    let data_dir = match raw.data_dir.as_deref() {
        None | Some("") => PathBuf::from(format!("{}.etcd", raw.name)),
        Some(dir) => PathBuf::from(dir),
    };
    // etcd checks the bootstrap flags only for a member that has never started
    // (`isMemberInitialized`); a restart ignores `--initial-*`, even an `--initial-cluster`
    // without this member (a joined member restarted with the cluster's first flags).
    if !member_initialized(&data_dir) {
        initial_cluster.verify(
            &raw.name,
            &initial_advertise_peer_urls,
            raw.initial_cluster_state,
        )?;
    }

    let watch_progress_notify_interval =
        watch::parse(&raw.experimental_watch_progress_notify_interval).map_err(|reason| {
            raw.invalid(
                "experimental-watch-progress-notify-interval",
                &raw.experimental_watch_progress_notify_interval,
                reason,
            )
        })?;

    let (tuning, tuning_source) = TuningProfile::load(raw.tuning_profile.as_deref(), cores)?;
    tuning.check_cores(&tuning_source, cores)?;

    Ok(Config {
        name: raw.name,
        data_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state: raw.initial_cluster_state,
        initial_cluster_token: raw.initial_cluster_token,
        snapshot_count: raw.snapshot_count,
        heartbeat_interval: Duration::from_millis(tick_ms),
        election_timeout: Duration::from_millis(election_ms),
        quota_backend_bytes,
        max_request_bytes: raw.max_request_bytes,
        max_txn_ops: raw.max_txn_ops,
        auth_token: raw.auth_token,
        bcrypt_cost,
        auth_token_ttl: Duration::from_secs(raw.auth_token_ttl),
        auto_compaction_mode: raw.auto_compaction_mode,
        auto_compaction,
        log_level: raw.log_level,
        tuning,
        tuning_source,
        watch_progress_notify_interval,
    })
}

impl Config {
    /// The configuration as a config file that resolves back to it.
    pub fn to_file_config(&self) -> FileConfig {
        FileConfig {
            name: Some(self.name.clone()),
            data_dir: Some(self.data_dir.display().to_string()),
            listen_client_urls: Some(url::join(&self.listen_client_urls)),
            advertise_client_urls: Some(url::join(&self.advertise_client_urls)),
            listen_peer_urls: Some(url::join(&self.listen_peer_urls)),
            initial_advertise_peer_urls: Some(url::join(&self.initial_advertise_peer_urls)),
            initial_cluster: Some(self.initial_cluster.to_string()),
            initial_cluster_state: Some(self.initial_cluster_state),
            initial_cluster_token: Some(self.initial_cluster_token.clone()),
            snapshot_count: Some(self.snapshot_count),
            heartbeat_interval: Some(self.heartbeat_interval.as_millis() as u64),
            election_timeout: Some(self.election_timeout.as_millis() as u64),
            quota_backend_bytes: Some(self.quota_backend_bytes as i64),
            max_request_bytes: Some(self.max_request_bytes),
            max_txn_ops: Some(self.max_txn_ops),
            auth_token: Some(self.auth_token.clone()),
            bcrypt_cost: Some(self.bcrypt_cost),
            auth_token_ttl: Some(self.auth_token_ttl.as_secs()),
            auto_compaction_mode: Some(self.auto_compaction_mode),
            auto_compaction_retention: Some(self.auto_compaction.retention_string()),
            log_level: Some(self.log_level),
            tuning_profile: Some(self.tuning_source.to_string()),
            experimental_watch_progress_notify_interval: Some(
                i64::try_from(self.watch_progress_notify_interval.as_nanos()).unwrap_or(i64::MAX),
            ),
            unsupported: BTreeMap::new(),
        }
    }
}

impl fmt::Display for Config {
    /// YAML in etcd's config-file keys; `--config-file` accepts it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yaml = serde_norway::to_string(&self.to_file_config()).map_err(|_| fmt::Error)?;
        f.write_str(&yaml)
    }
}

#[cfg(test)]
mod tests;

/// Whether `data_dir` holds a member that has started before: its ids and membership are
/// recorded (`member/ids`, `member/members`), so its identity comes from them, not the flags.
pub fn member_initialized(data_dir: &Path) -> bool {
    let member = data_dir.join("member");
    member.join("ids").is_file() && member.join("members").is_file()
}
