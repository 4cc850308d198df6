//! `--config-file`: etcd's YAML server configuration, keyed by the flag names (`name`,
//! `data-dir`, `listen-client-urls`, ...). URL lists are comma-separated strings, as in etcd.
//! Keys etcd knows but ringkv does not implement are reported, not silently dropped.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::cluster::ClusterState;
use super::compaction::CompactionMode;
use super::{ConfigError, LogLevel};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_client_urls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_client_urls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_peer_urls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_advertise_peer_urls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_cluster_state: Option<ClusterState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_cluster_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_txn_ops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bcrypt_cost: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token_ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_mode: Option<CompactionMode>,
    /// A string in etcd; a bare YAML number is accepted too.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_compaction_retention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// ringkv's own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning_profile: Option<String>,
    /// Nanoseconds, as etcd's YAML reads a Go `time.Duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experimental_watch_progress_notify_interval: Option<i64>,
    /// Every other key: etcd settings ringkv does not implement, or typos.
    #[serde(flatten, skip_serializing)]
    pub unsupported: BTreeMap<String, serde_norway::Value>,
}

fn string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(u64),
    }
    Ok(
        Option::<Raw>::deserialize(deserializer)?.map(|raw| match raw {
            Raw::Text(text) => text,
            Raw::Number(number) => number.to_string(),
        }),
    )
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::ParseFile {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_norway::from_str(text).map_err(|error| error.to_string())
    }

    /// True when the file sets the key (etcd's spelling, e.g. `data-dir`).
    pub fn has(&self, key: &str) -> bool {
        match key {
            "name" => self.name.is_some(),
            "data-dir" => self.data_dir.is_some(),
            "listen-client-urls" => self.listen_client_urls.is_some(),
            "advertise-client-urls" => self.advertise_client_urls.is_some(),
            "listen-peer-urls" => self.listen_peer_urls.is_some(),
            "initial-advertise-peer-urls" => self.initial_advertise_peer_urls.is_some(),
            "initial-cluster" => self.initial_cluster.is_some(),
            "initial-cluster-state" => self.initial_cluster_state.is_some(),
            "initial-cluster-token" => self.initial_cluster_token.is_some(),
            "snapshot-count" => self.snapshot_count.is_some(),
            "heartbeat-interval" => self.heartbeat_interval.is_some(),
            "election-timeout" => self.election_timeout.is_some(),
            "quota-backend-bytes" => self.quota_backend_bytes.is_some(),
            "max-request-bytes" => self.max_request_bytes.is_some(),
            "max-txn-ops" => self.max_txn_ops.is_some(),
            "auth-token" => self.auth_token.is_some(),
            "bcrypt-cost" => self.bcrypt_cost.is_some(),
            "auth-token-ttl" => self.auth_token_ttl.is_some(),
            "auto-compaction-mode" => self.auto_compaction_mode.is_some(),
            "auto-compaction-retention" => self.auto_compaction_retention.is_some(),
            "log-level" => self.log_level.is_some(),
            "tuning-profile" => self.tuning_profile.is_some(),
            "experimental-watch-progress-notify-interval" => {
                self.experimental_watch_progress_notify_interval.is_some()
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_etcd_keys() {
        let file = FileConfig::parse(
            "name: infra1\n\
             data-dir: /var/lib/etcd\n\
             listen-client-urls: http://127.0.0.1:2379,http://10.0.0.1:2379\n\
             initial-cluster-state: existing\n\
             heartbeat-interval: 200\n\
             election-timeout: 2000\n\
             auto-compaction-mode: revision\n\
             auto-compaction-retention: 1000\n\
             log-level: debug\n",
        )
        .unwrap();
        assert_eq!(file.name.as_deref(), Some("infra1"));
        assert_eq!(file.data_dir.as_deref(), Some("/var/lib/etcd"));
        assert_eq!(file.initial_cluster_state, Some(ClusterState::Existing));
        assert_eq!(file.heartbeat_interval, Some(200));
        assert_eq!(file.auto_compaction_mode, Some(CompactionMode::Revision));
        assert_eq!(file.auto_compaction_retention.as_deref(), Some("1000"));
        assert_eq!(file.log_level, Some(LogLevel::Debug));
        assert!(file.has("data-dir") && !file.has("max-txn-ops"));
        assert!(file.unsupported.is_empty());
    }

    #[test]
    fn collects_unsupported_keys_and_rejects_bad_values() {
        let file = FileConfig::parse("name: a\nwal-dir: /wal\nenable-v2: false\n").unwrap();
        assert_eq!(
            file.unsupported.keys().collect::<Vec<_>>(),
            ["enable-v2", "wal-dir"]
        );
        assert!(FileConfig::parse("initial-cluster-state: sideways\n").is_err());
        assert!(FileConfig::parse("snapshot-count: lots\n").is_err());
        assert!(FileConfig::parse("").unwrap().name.is_none());
    }
}
