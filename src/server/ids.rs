//! Member and cluster ids, derived as etcd derives them (`membership.NewMember`, `genID`), and
//! kept in the data dir so they survive restarts with different flags.
//!
//! - member id: the first 8 bytes, big-endian, of SHA-1 over the member's peer URLs (sorted,
//!   concatenated) followed by the cluster token;
//! - cluster id: the first 8 bytes, big-endian, of SHA-1 over the sorted member ids, each as
//!   8 big-endian bytes.
//!
//! File `<data-dir>/member/ids`: one line, `<member id hex> <cluster id hex>\n`, written once at
//! bootstrap (temporary file, fsync, rename, fsync of the directory).

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::config::InitialCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub member_id: u64,
    pub cluster_id: u64,
}

fn leading_u64(digest: &[u8; 20]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = sha1_smol::Sha1::new();
    for url in &urls {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    leading_u64(&hasher.digest().bytes())
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = sha1_smol::Sha1::new();
    for id in ids {
        hasher.update(&id.to_be_bytes());
    }
    leading_u64(&hasher.digest().bytes())
}

/// The ids of member `name` in a new cluster bootstrapped from `cluster` and `token`.
pub fn derive(cluster: &InitialCluster, name: &str, token: &str) -> Ids {
    let id_of = |urls: &[crate::config::Url]| {
        let urls: Vec<String> = urls.iter().map(ToString::to_string).collect();
        member_id(&urls, token)
    };
    let members: Vec<u64> = cluster.members.values().map(|urls| id_of(urls)).collect();
    let ours = cluster
        .members
        .get(name)
        .expect("config verified that the local member is in the initial cluster");
    Ids {
        member_id: id_of(ours),
        cluster_id: cluster_id(&members),
    }
}

/// The ids a member that has started before recorded.
pub fn load(member_dir: &Path) -> std::io::Result<Ids> {
    let path = member_dir.join("ids");
    let text = fs::read_to_string(&path)?;
    parse(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is malformed: {text:?}", path.display()),
        )
    })
}

/// The recorded ids, or `derived` recorded now if the data dir has none yet.
pub fn load_or_record(member_dir: &Path, derived: Ids) -> std::io::Result<Ids> {
    let path = member_dir.join("ids");
    match load(member_dir) {
        Ok(ids) => Ok(ids),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let tmp = member_dir.join("ids.tmp");
            let mut file = fs::File::create(&tmp)?;
            writeln!(
                file,
                "{:016x} {:016x}",
                derived.member_id, derived.cluster_id
            )?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(member_dir)?.sync_all()?;
            Ok(derived)
        }
        Err(error) => Err(error),
    }
}

fn parse(text: &str) -> Option<Ids> {
    let (member, cluster) = text.trim().split_once(' ')?;
    Some(Ids {
        member_id: u64::from_str_radix(member, 16).ok()?,
        cluster_id: u64::from_str_radix(cluster, 16).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's well-known ids for a default single member (`etcd` with no flags).
    #[test]
    fn default_member_matches_etcd() {
        let cluster = InitialCluster::parse("default=http://localhost:2380").unwrap();
        let ids = derive(&cluster, "default", "etcd-cluster");
        assert_eq!(ids.member_id, 0x8e9e_05c5_2164_694d);
        assert_eq!(ids.cluster_id, 0xcdf8_1819_4e3a_8c32);
    }

    #[test]
    fn ids_are_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ids {
            member_id: 1,
            cluster_id: 0xabc,
        };
        assert_eq!(load_or_record(dir.path(), first).unwrap(), first);
        let other = Ids {
            member_id: 2,
            cluster_id: 3,
        };
        assert_eq!(load_or_record(dir.path(), other).unwrap(), first);
    }
}
