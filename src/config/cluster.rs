//! `--initial-cluster`: the bootstrap membership, `name=peer-url` pairs, and the consistency
//! checks etcd runs on it before a member starts (with etcd's messages).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::url::{Url, UrlError};

/// Member name to its advertised peer URLs, ordered by name (etcd's `types.URLsMap`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitialCluster {
    pub members: BTreeMap<String, Vec<Url>>,
}

/// Whether this member bootstraps a new cluster or joins one that already runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Url(#[from] UrlError),
    #[error("member entry {0:?} is not of the form name=url")]
    Entry(String),
    #[error("couldn't find local name {0:?} in the initial cluster configuration")]
    LocalMemberMissing(String),
    #[error("--initial-cluster must include {expected} given --initial-advertise-peer-urls={advertised}")]
    AdvertiseMismatch {
        expected: String,
        advertised: String,
    },
    #[error("initial cluster {0} has duplicate url")]
    DuplicateUrl(String),
}

impl InitialCluster {
    /// Parses `name1=url1,name1=url2,name2=url3`; a name may repeat to list several URLs.
    pub fn parse(input: &str) -> Result<InitialCluster, ClusterError> {
        let mut members: BTreeMap<String, Vec<Url>> = BTreeMap::new();
        for entry in input
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| ClusterError::Entry(entry.to_owned()))?;
            members
                .entry(name.to_owned())
                .or_default()
                .push(Url::parse(url)?);
        }
        if members.is_empty() {
            return Err(UrlError::Empty.into());
        }
        Ok(InitialCluster { members })
    }

    /// etcd's default membership for a member that was only given a name: itself at its
    /// advertised peer URLs.
    pub fn from_name(name: &str, advertise_peer_urls: &[Url]) -> InitialCluster {
        let members = BTreeMap::from([(name.to_owned(), advertise_peer_urls.to_vec())]);
        InitialCluster { members }
    }

    /// The bootstrap checks of etcd's `ServerConfig.VerifyBootstrap` (new cluster) and
    /// `VerifyJoinExisting` (existing cluster), in etcd's order.
    pub fn verify(
        &self,
        name: &str,
        advertise_peer_urls: &[Url],
        state: ClusterState,
    ) -> Result<(), ClusterError> {
        let ours = self
            .members
            .get(name)
            .ok_or_else(|| ClusterError::LocalMemberMissing(name.to_owned()))?;
        if state == ClusterState::New {
            let listed: BTreeSet<&Url> = ours.iter().collect();
            let advertised: BTreeSet<&Url> = advertise_peer_urls.iter().collect();
            if listed != advertised {
                let mine = InitialCluster::from_name(name, advertise_peer_urls);
                return Err(ClusterError::AdvertiseMismatch {
                    expected: mine.to_string(),
                    advertised: super::url::join(advertise_peer_urls),
                });
            }
        }
        let mut seen = BTreeSet::new();
        if self.members.values().flatten().any(|url| !seen.insert(url)) {
            return Err(ClusterError::DuplicateUrl(self.to_string()));
        }
        Ok(())
    }
}

impl fmt::Display for InitialCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, urls) in &self.members {
            for url in urls {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{name}={url}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &str) -> Vec<Url> {
        super::super::url::parse_list(list).unwrap()
    }

    #[test]
    fn parses_and_prints_sorted_by_name() {
        let cluster =
            InitialCluster::parse("b=http://b:2380,a=http://a:2380,a=http://a2:2380").unwrap();
        assert_eq!(cluster.members["a"].len(), 2);
        assert_eq!(
            cluster.to_string(),
            "a=http://a:2380,a=http://a2:2380,b=http://b:2380"
        );
    }

    #[test]
    fn rejects_malformed_entries() {
        assert!(matches!(
            InitialCluster::parse("nourl"),
            Err(ClusterError::Entry(_))
        ));
        assert!(matches!(
            InitialCluster::parse("a=ftp://x:1"),
            Err(ClusterError::Url(_))
        ));
        assert!(matches!(
            InitialCluster::parse(""),
            Err(ClusterError::Url(UrlError::Empty))
        ));
    }

    #[test]
    fn local_member_must_be_listed() {
        let cluster = InitialCluster::parse("a=http://a:2380").unwrap();
        let err = cluster
            .verify("b", &urls("http://b:2380"), ClusterState::New)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find local name \"b\" in the initial cluster configuration"
        );
    }

    #[test]
    fn new_cluster_must_list_our_advertised_urls() {
        let cluster = InitialCluster::parse("a=http://a:2380").unwrap();
        let err = cluster
            .verify("a", &urls("http://a:9999"), ClusterState::New)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--initial-cluster must include a=http://a:9999 given \
             --initial-advertise-peer-urls=http://a:9999"
        );
        // Joining an existing cluster takes the membership from the cluster, not from the flag.
        cluster
            .verify("a", &urls("http://a:9999"), ClusterState::Existing)
            .unwrap();
    }

    #[test]
    fn duplicate_urls_are_rejected() {
        let cluster = InitialCluster::parse("a=http://x:2380,b=http://x:2380").unwrap();
        let err = cluster
            .verify("a", &urls("http://x:2380"), ClusterState::New)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "initial cluster a=http://x:2380,b=http://x:2380 has duplicate url"
        );
    }
}
