//! `Members`: the cluster's membership as this member knows it (ids, names, peer and client
//! URLs), recorded in `<data-dir>/member/members` at bootstrap so that a restart ignores the
//! `--initial-*` flags, as etcd does.
//!
//! # File format
//!
//! One line per member, sorted by id, fields separated by a tab:
//! ```text
//! <member id: 16 hex digits> \t <name> \t <peer URLs, comma-separated> \t <client URLs, comma-separated, may be empty> \n
//! ```
//! Names may not contain a tab or a newline (an empty name is allowed: etcd shows one for an
//! unstarted member); URLs may not contain a comma. The file is replaced whole (temporary file, fsync,
//! rename, fsync of the directory) whenever a member's client URLs are learned.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

/// Most members a file may list (the raft engine's `VOTERS_MAX`).
pub const MEMBERS_MAX: usize = crate::raft::VOTERS_MAX;

/// Most URLs of one kind a member may have; a member has a handful.
pub const URLS_MAX: usize = 64;

/// One member as `member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    /// As etcd prints them: `scheme://host:port`, in the order configured.
    pub peer_urls: Vec<String>,
    /// Empty until the member has told us (at bootstrap, only our own are known).
    pub client_urls: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: line {line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("member name {0:?} cannot be recorded (it contains a tab or a newline)")]
    BadName(String),
    #[error("this member {0:016x} is not in the recorded membership")]
    LocalMissing(u64),
    #[error("a cluster has 1 to {MEMBERS_MAX} members, not {0}")]
    Count(usize),
}

/// The membership, shared by the Cluster service and the peer transport.
#[derive(Debug)]
pub struct Members {
    path: PathBuf,
    local_id: u64,
    /// Sorted by id. Invariant: ids are unique and non-zero, `local_id` is one of them.
    list: RwLock<Vec<MemberInfo>>,
}

impl Members {
    /// The recorded membership of `member_dir`, or `bootstrap` recorded now if it has none.
    pub fn load_or_record(
        member_dir: &Path,
        local_id: u64,
        bootstrap: Vec<MemberInfo>,
    ) -> Result<Members, MembersError> {
        let path = member_dir.join("members");
        let io = |source| MembersError::Io {
            path: path.clone(),
            source,
        };
        let list = match fs::read_to_string(&path) {
            Ok(text) => parse(&path, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut list = bootstrap;
                list.sort_by_key(|m| m.id);
                check(&list, local_id)?;
                write(&path, &list).map_err(io)?;
                list
            }
            Err(e) => return Err(io(e)),
        };
        check(&list, local_id)?;
        Ok(Members {
            path,
            local_id,
            list: RwLock::new(list),
        })
    }

    pub fn local_id(&self) -> u64 {
        self.local_id
    }

    pub fn list(&self) -> Vec<MemberInfo> {
        self.list.read().clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.list.read().iter().map(|m| m.id).collect()
    }

    pub fn get(&self, id: u64) -> Option<MemberInfo> {
        self.list.read().iter().find(|m| m.id == id).cloned()
    }

    pub fn local(&self) -> MemberInfo {
        self.get(self.local_id).expect("the local member is listed")
    }

    /// Replaces the whole membership (a raft snapshot's member list) and records it. Refused,
    /// with nothing changed, if the list leaves this member out or breaks the file's limits.
    pub fn replace(&self, mut list: Vec<MemberInfo>) -> Result<(), MembersError> {
        list.sort_by_key(|m| m.id);
        list.dedup_by_key(|m| m.id);
        check(&list, self.local_id)?;
        let mut current = self.list.write();
        if *current == list {
            return Ok(());
        }
        write(&self.path, &list).map_err(|source| MembersError::Io {
            path: self.path.clone(),
            source,
        })?;
        *current = list;
        Ok(())
    }

    /// Records what member `id` says about itself (its name and client URLs), if it changed.
    /// Unknown ids are ignored (the caller has checked membership). Bad names are refused.
    pub fn learn(&self, id: u64, name: &str, client_urls: &[String]) -> Result<(), MembersError> {
        if name.contains(['\t', '\n']) || client_urls.iter().any(|u| u.contains(['\t', '\n', ',']))
        {
            return Err(MembersError::BadName(name.to_owned()));
        }
        let client_urls = &client_urls[..client_urls.len().min(URLS_MAX)];
        let mut list = self.list.write();
        let Some(member) = list.iter_mut().find(|m| m.id == id) else {
            return Ok(());
        };
        if member.name == name && member.client_urls == client_urls {
            return Ok(());
        }
        name.clone_into(&mut member.name);
        member.client_urls = client_urls.to_vec();
        // Under the lock, so concurrent learners write the file in the order they changed it.
        write(&self.path, &list).map_err(|source| MembersError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn check(list: &[MemberInfo], local_id: u64) -> Result<(), MembersError> {
    if list.is_empty() || list.len() > MEMBERS_MAX {
        return Err(MembersError::Count(list.len()));
    }
    for m in list {
        if m.name.contains(['\t', '\n']) {
            return Err(MembersError::BadName(m.name.clone()));
        }
    }
    assert!(
        list.windows(2).all(|w| w[0].id < w[1].id) && list[0].id != 0,
        "member ids are unique and non-zero"
    );
    if !list.iter().any(|m| m.id == local_id) {
        return Err(MembersError::LocalMissing(local_id));
    }
    Ok(())
}

fn write(path: &Path, list: &[MemberInfo]) -> io::Result<()> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for m in list {
        let _ = writeln!(
            text,
            "{:016x}\t{}\t{}\t{}",
            m.id,
            m.name,
            m.peer_urls.join(","),
            m.client_urls.join(",")
        );
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn parse(path: &Path, text: &str) -> Result<Vec<MemberInfo>, MembersError> {
    let malformed = |line: usize, reason: &str| MembersError::Malformed {
        path: path.to_owned(),
        line,
        reason: reason.to_owned(),
    };
    let urls = |field: &str| -> Vec<String> {
        field
            .split(',')
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [id, name, peer, client] = fields[..] else {
            return Err(malformed(i + 1, "expected 4 tab-separated fields"));
        };
        let id = u64::from_str_radix(id, 16).map_err(|_| malformed(i + 1, "bad member id"))?;
        if id == 0 || list.last().is_some_and(|m: &MemberInfo| m.id >= id) {
            return Err(malformed(
                i + 1,
                "member ids must be non-zero and ascending",
            ));
        }
        list.push(MemberInfo {
            id,
            name: name.to_owned(),
            peer_urls: urls(peer),
            client_urls: urls(client),
        });
        if list.len() > MEMBERS_MAX {
            return Err(MembersError::Count(list.len()));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, client: &[&str]) -> MemberInfo {
        MemberInfo {
            id,
            name: name.to_owned(),
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: client.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn records_once_and_ignores_later_bootstraps() {
        let dir = tempfile::tempdir().unwrap();
        let first = vec![member(9, "b", &[]), member(3, "a", &["http://a:1"])];
        let members = Members::load_or_record(dir.path(), 3, first).unwrap();
        assert_eq!(members.ids(), vec![3, 9]);
        let other = vec![member(3, "x", &[])];
        let again = Members::load_or_record(dir.path(), 3, other).unwrap();
        assert_eq!(again.list(), members.list());
        assert_eq!(again.local().client_urls, vec!["http://a:1".to_owned()]);
    }

    #[test]
    fn learned_client_urls_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let members = Members::load_or_record(
            dir.path(),
            3,
            vec![member(3, "a", &[]), member(9, "b", &[])],
        )
        .unwrap();
        members
            .learn(9, "b", &["http://b:2379".to_owned()])
            .unwrap();
        members.learn(77, "ghost", &[]).unwrap();
        let again = Members::load_or_record(dir.path(), 3, Vec::new()).unwrap();
        assert_eq!(
            again.get(9).unwrap().client_urls,
            vec!["http://b:2379".to_owned()]
        );
        assert!(again.get(77).is_none());
        assert!(members.learn(9, "tab\tname", &[]).is_err());
    }

    #[test]
    fn refuses_a_membership_without_this_member_or_a_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Members::load_or_record(dir.path(), 5, vec![member(3, "a", &[])]),
            Err(MembersError::LocalMissing(5))
        ));
        fs::write(dir.path().join("members"), "zz\ta\t\t\n").unwrap();
        assert!(matches!(
            Members::load_or_record(dir.path(), 3, Vec::new()),
            Err(MembersError::Malformed { line: 1, .. })
        ));
    }
}
