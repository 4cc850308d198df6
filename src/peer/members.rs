//! `Members`: the cluster's membership as this member knows it (ids, names, peer and client
//! URLs, learner or voter), the ids removed from it, and the index of the last raft
//! configuration change it reflects; recorded in `<data-dir>/member/members` at bootstrap (so
//! that a restart ignores the `--initial-*` flags, as etcd does) and after every change applied
//! (see `src/raft/mod.rs`, "Membership changes", for why the index makes the record consistent
//! with the WAL).
//!
//! # File format (also the [`MembershipImage`] a raft snapshot carries)
//!
//! Lines separated by `\n`, fields by a tab:
//! ```text
//! conf \t <index of the last conf change reflected, decimal>            (first; absent = 0)
//! <member id: 16 hex digits> \t <name> \t <peer URLs, comma-separated> \t <client URLs, comma-separated, may be empty> [\t learner]
//! removed \t <member id: 16 hex digits>                                 (after the members)
//! ```
//! Members are sorted by id, removed ids too. Names may not contain a tab or a newline (an empty
//! name is allowed: etcd shows one for an unstarted member); URLs may not contain a comma. A
//! file of phase 1 (no `conf` line, 4 fields, no learners) reads as conf index 0. The file is
//! replaced whole (temporary file, fsync, rename, fsync of the directory) on every change.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use raft::eraftpb::ConfState;

use super::change::{Change, ChangeRefused};

/// Most members a file may list (the raft engine's `VOTERS_MAX`).
pub const MEMBERS_MAX: usize = crate::raft::VOTERS_MAX;

/// Most learners at once: etcd 3.4's `maxLearners`.
pub const LEARNERS_MAX: usize = 1;

/// Most removed ids recorded; beyond it the oldest (lowest) are forgotten. etcd keeps them all;
/// ids are random, so a forgotten one is never reused in practice.
pub const REMOVED_MAX: usize = 1024;

/// Most URLs of one kind a member may have; a member has a handful.
pub const URLS_MAX: usize = 64;

/// One member as `member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has started and told us (etcd's "unstarted").
    pub name: String,
    /// As etcd prints them: `scheme://host:port`, in the order configured.
    pub peer_urls: Vec<String>,
    /// Empty until the member has told us (at bootstrap, only our own are known).
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The whole record: what a raft snapshot carries and a joining member receives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipImage {
    /// The index of the last configuration change the record reflects (0: none since bootstrap).
    pub conf_index: u64,
    /// Sorted by id; ids unique and non-zero.
    pub members: Vec<MemberInfo>,
    /// Sorted; never also a member.
    pub removed: Vec<u64>,
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
    /// etcd's message; the server adds "the data-dir used by this member must be removed."
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    #[error("a cluster has 1 to {MEMBERS_MAX} members, not {0}")]
    Count(usize),
}

impl MembershipImage {
    /// Voters and learners, as raft's `ConfState`.
    pub fn conf_state(&self) -> ConfState {
        let ids = |learner: bool| {
            self.members
                .iter()
                .filter(|m| m.is_learner == learner)
                .map(|m| m.id)
                .collect::<Vec<_>>()
        };
        ConfState::from((ids(false), ids(true)))
    }

    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut text = String::new();
        let _ = writeln!(text, "conf\t{}", self.conf_index);
        for m in &self.members {
            let _ = write!(
                text,
                "{:016x}\t{}\t{}\t{}",
                m.id,
                m.name,
                m.peer_urls.join(","),
                m.client_urls.join(",")
            );
            text.push_str(if m.is_learner { "\tlearner\n" } else { "\n" });
        }
        for id in &self.removed {
            let _ = writeln!(text, "removed\t{id:016x}");
        }
        text.into_bytes()
    }

    /// Parses [`MembershipImage::encode`]'s text; `path` only names the source in errors.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<MembershipImage, MembersError> {
        let malformed = |line: usize, reason: &str| MembersError::Malformed {
            path: path.to_owned(),
            line,
            reason: reason.to_owned(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| malformed(0, "not UTF-8"))?;
        let urls = |field: &str| -> Vec<String> {
            field
                .split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let hex = |i: usize, field: &str| {
            u64::from_str_radix(field, 16).map_err(|_| malformed(i + 1, "bad member id"))
        };
        let mut image = MembershipImage::default();
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields[..] {
                ["conf", index] if i == 0 => {
                    image.conf_index = index
                        .parse()
                        .map_err(|_| malformed(i + 1, "bad conf index"))?;
                }
                ["removed", id] => {
                    let id = hex(i, id)?;
                    if image.removed.last().is_some_and(|&last| last >= id) {
                        return Err(malformed(i + 1, "removed ids must be ascending"));
                    }
                    image.removed.push(id);
                }
                [id, name, peer, client, ref rest @ ..] if image.removed.is_empty() => {
                    let is_learner = match rest {
                        [] => false,
                        ["learner"] => true,
                        _ => return Err(malformed(i + 1, "expected 4 or 5 fields")),
                    };
                    let id = hex(i, id)?;
                    if id == 0 || image.members.last().is_some_and(|m| m.id >= id) {
                        return Err(malformed(
                            i + 1,
                            "member ids must be non-zero and ascending",
                        ));
                    }
                    image.members.push(MemberInfo {
                        id,
                        name: name.to_owned(),
                        peer_urls: urls(peer),
                        client_urls: urls(client),
                        is_learner,
                    });
                    if image.members.len() > MEMBERS_MAX {
                        return Err(MembersError::Count(image.members.len()));
                    }
                }
                _ => return Err(malformed(i + 1, "unrecognised line")),
            }
        }
        if image
            .removed
            .iter()
            .any(|id| image.members.iter().any(|m| m.id == *id))
        {
            return Err(malformed(0, "an id is both a member and removed"));
        }
        Ok(image)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut MemberInfo> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// Whether `change` applies to this membership, and etcd's reason if not (its
    /// `ValidateConfigurationChange`, plus the learner limit of `AddMember`).
    pub fn check(&self, change: &Change) -> Result<(), ChangeRefused> {
        let exists = |id: u64| self.members.iter().any(|m| m.id == id);
        let removed = |id: u64| self.removed.binary_search(&id).is_ok();
        let taken_by_other = |id: u64, urls: &[String]| {
            self.members
                .iter()
                .filter(|m| m.id != id)
                .flat_map(|m| &m.peer_urls)
                .any(|u| urls.contains(u))
        };
        match change {
            Change::Add(m) => {
                if removed(m.id) {
                    return Err(ChangeRefused::IdRemoved);
                }
                if exists(m.id) {
                    return Err(ChangeRefused::IdExists);
                }
                if taken_by_other(m.id, &m.peer_urls) {
                    return Err(ChangeRefused::PeerUrlExists);
                }
                if m.is_learner
                    && self.members.iter().filter(|m| m.is_learner).count() >= LEARNERS_MAX
                {
                    return Err(ChangeRefused::TooManyLearners);
                }
                if self.members.len() >= MEMBERS_MAX {
                    return Err(ChangeRefused::TooManyMembers);
                }
            }
            Change::Remove(id) | Change::Promote(id) | Change::Update { id, .. } => {
                if removed(*id) {
                    return Err(ChangeRefused::IdRemoved);
                }
                let Some(member) = self.members.iter().find(|m| m.id == *id) else {
                    return Err(ChangeRefused::NotFound);
                };
                match change {
                    Change::Remove(_) if self.members.len() == 1 => {
                        return Err(ChangeRefused::NotEnoughStarted)
                    }
                    Change::Promote(_) if !member.is_learner => {
                        return Err(ChangeRefused::NotLearner)
                    }
                    Change::Update { peer_urls, .. } if taken_by_other(*id, peer_urls) => {
                        return Err(ChangeRefused::PeerUrlExists)
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Applies a checked change (`check` passed) and records `index` as the conf index.
    fn apply(&mut self, index: u64, change: &Change) {
        assert!(
            index > self.conf_index,
            "conf changes apply once, in log order"
        );
        match change {
            Change::Add(m) => {
                let at = self.members.partition_point(|x| x.id < m.id);
                self.members.insert(at, m.clone());
            }
            Change::Remove(id) => {
                self.members.retain(|m| m.id != *id);
                if let Err(at) = self.removed.binary_search(id) {
                    self.removed.insert(at, *id);
                }
                if self.removed.len() > REMOVED_MAX {
                    self.removed.remove(0);
                }
            }
            Change::Promote(id) => {
                self.get_mut(*id).expect("checked").is_learner = false;
            }
            Change::Update { id, peer_urls } => {
                peer_urls.clone_into(&mut self.get_mut(*id).expect("checked").peer_urls);
            }
        }
        self.conf_index = index;
    }

    fn validate(&self, path: &Path, local_id: u64) -> Result<(), MembersError> {
        if self.removed.binary_search(&local_id).is_ok() {
            return Err(MembersError::Removed);
        }
        if self.members.is_empty() || self.members.len() > MEMBERS_MAX {
            return Err(MembersError::Count(self.members.len()));
        }
        for m in &self.members {
            if m.name.contains(['\t', '\n']) {
                return Err(MembersError::BadName(m.name.clone()));
            }
            if m.peer_urls.is_empty() {
                return Err(MembersError::Malformed {
                    path: path.to_owned(),
                    line: 0,
                    reason: format!("member {:016x} has no peer URL", m.id),
                });
            }
        }
        assert!(
            self.members.windows(2).all(|w| w[0].id < w[1].id) && self.members[0].id != 0,
            "member ids are unique and non-zero"
        );
        if !self.members.iter().any(|m| m.id == local_id) {
            return Err(MembersError::LocalMissing(local_id));
        }
        Ok(())
    }
}

/// The membership, shared by the Cluster service, the peer transport and the raft loop (which
/// applies changes through `peer::ClusterMembership`).
#[derive(Debug)]
pub struct Members {
    path: PathBuf,
    local_id: u64,
    /// Invariant: `MembershipImage::validate` holds, except that after this member's own removal
    /// it is no longer listed (and `removed` says so).
    image: RwLock<MembershipImage>,
    /// Turns true when this member learns it was removed: the server then stops.
    removed: tokio::sync::watch::Sender<bool>,
}

impl Members {
    /// The recorded membership of `member_dir`, or `bootstrap` recorded now if it has none. A
    /// member whose record says it was removed is refused (`Removed`), as etcd refuses it.
    pub fn load_or_record(
        member_dir: &Path,
        local_id: u64,
        bootstrap: MembershipImage,
    ) -> Result<Members, MembersError> {
        let path = member_dir.join("members");
        let io = |source| MembersError::Io {
            path: path.clone(),
            source,
        };
        let image = match fs::read(&path) {
            Ok(bytes) => MembershipImage::decode(&path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut image = bootstrap;
                image.members.sort_by_key(|m| m.id);
                image.removed.sort_unstable();
                image.validate(&path, local_id)?;
                write(&path, &image).map_err(io)?;
                image
            }
            Err(e) => return Err(io(e)),
        };
        image.validate(&path, local_id)?;
        Ok(Members {
            path,
            local_id,
            image: RwLock::new(image),
            removed: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn local_id(&self) -> u64 {
        self.local_id
    }

    pub fn list(&self) -> Vec<MemberInfo> {
        self.image.read().members.clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.image.read().members.iter().map(|m| m.id).collect()
    }

    pub fn get(&self, id: u64) -> Option<MemberInfo> {
        self.image
            .read()
            .members
            .iter()
            .find(|m| m.id == id)
            .cloned()
    }

    /// This member's record; after its own removal, the last one it had.
    pub fn local(&self) -> MemberInfo {
        self.get(self.local_id).unwrap_or_else(|| MemberInfo {
            id: self.local_id,
            name: String::new(),
            peer_urls: Vec::new(),
            client_urls: Vec::new(),
            is_learner: false,
        })
    }

    /// Whether `id` is a learner; cheap (no copy), as the API asks on every call.
    pub fn is_learner(&self, id: u64) -> bool {
        self.image
            .read()
            .members
            .iter()
            .any(|m| m.id == id && m.is_learner)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.image.read().removed.binary_search(&id).is_ok()
    }

    /// The whole record, for a raft snapshot or a joining member.
    pub fn image(&self) -> MembershipImage {
        self.image.read().clone()
    }

    /// Replaces the record with one from a raft snapshot (durably, before returning). The
    /// snapshot's conf index must not go back.
    pub fn replace(&self, image: MembershipImage) -> Result<(), MembersError> {
        image.validate(&self.path, self.local_id)?;
        let mut current = self.image.write();
        assert!(
            image.conf_index >= current.conf_index,
            "a snapshot never takes the membership back"
        );
        write(&self.path, &image).map_err(|source| MembersError::Io {
            path: self.path.clone(),
            source,
        })?;
        *current = image;
        Ok(())
    }

    pub fn conf_state(&self) -> ConfState {
        self.image.read().conf_state()
    }

    pub fn conf_index(&self) -> u64 {
        self.image.read().conf_index
    }

    /// Whether `change` would apply now (the API's check before proposing it).
    pub fn check(&self, change: &Change) -> Result<(), ChangeRefused> {
        self.image.read().check(change)
    }

    /// Applies a committed change at `index` and records it durably before returning. A change
    /// that does not apply is refused and changes nothing. An I/O error is returned as such: the
    /// caller cannot go on with a record it could not write.
    pub fn apply(
        &self,
        index: u64,
        change: &Change,
    ) -> Result<Result<(), ChangeRefused>, io::Error> {
        let mut image = self.image.write();
        if let Err(refused) = image.check(change) {
            return Ok(Err(refused));
        }
        let mut next = image.clone();
        next.apply(index, change);
        write(&self.path, &next)?;
        *image = next;
        if matches!(change, Change::Remove(id) if *id == self.local_id) {
            self.removed.send_replace(true);
        }
        Ok(Ok(()))
    }

    /// A peer said this member was removed (it missed its own removal).
    pub fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    /// Turns true once this member knows it was removed.
    pub fn removed_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// Records what member `id` says about itself (its name and client URLs), if it changed.
    /// Unknown ids are ignored (the caller has checked membership). Bad names are refused.
    pub fn learn(&self, id: u64, name: &str, client_urls: &[String]) -> Result<(), MembersError> {
        if name.contains(['\t', '\n']) || client_urls.iter().any(|u| u.contains(['\t', '\n', ',']))
        {
            return Err(MembersError::BadName(name.to_owned()));
        }
        let client_urls = &client_urls[..client_urls.len().min(URLS_MAX)];
        let mut image = self.image.write();
        let Some(member) = image.get_mut(id) else {
            return Ok(());
        };
        if member.name == name && member.client_urls == client_urls {
            return Ok(());
        }
        name.clone_into(&mut member.name);
        member.client_urls = client_urls.to_vec();
        // Under the lock, so concurrent learners write the file in the order they changed it.
        write(&self.path, &image).map_err(|source| MembersError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn write(path: &Path, image: &MembershipImage) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&image.encode())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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
            is_learner: false,
        }
    }

    fn image(members: Vec<MemberInfo>) -> MembershipImage {
        MembershipImage {
            members,
            ..MembershipImage::default()
        }
    }

    #[test]
    fn records_once_and_ignores_later_bootstraps() {
        let dir = tempfile::tempdir().unwrap();
        let first = image(vec![member(9, "b", &[]), member(3, "a", &["http://a:1"])]);
        let members = Members::load_or_record(dir.path(), 3, first).unwrap();
        assert_eq!(members.ids(), vec![3, 9]);
        let other = image(vec![member(3, "x", &[])]);
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
            image(vec![member(3, "a", &[]), member(9, "b", &[])]),
        )
        .unwrap();
        members
            .learn(9, "b", &["http://b:2379".to_owned()])
            .unwrap();
        members.learn(77, "ghost", &[]).unwrap();
        let again = Members::load_or_record(dir.path(), 3, MembershipImage::default()).unwrap();
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
            Members::load_or_record(dir.path(), 5, image(vec![member(3, "a", &[])])),
            Err(MembersError::LocalMissing(5))
        ));
        fs::write(dir.path().join("members"), "zz\ta\t\t\n").unwrap();
        assert!(matches!(
            Members::load_or_record(dir.path(), 3, MembershipImage::default()),
            Err(MembersError::Malformed { line: 1, .. })
        ));
    }

    /// A phase-1 file (no conf line, 4 fields) still reads, as conf index 0, all voters.
    #[test]
    fn reads_a_phase_one_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("members"),
            "0000000000000003\ta\thttp://a:1\thttp://a:2\n0000000000000009\tb\thttp://b:1\t\n",
        )
        .unwrap();
        let members = Members::load_or_record(dir.path(), 3, MembershipImage::default()).unwrap();
        assert_eq!(members.conf_index(), 0);
        assert_eq!(members.conf_state().voters, vec![3, 9]);
        assert!(members.conf_state().learners.is_empty());
    }

    /// Every change applies once, is recorded with its index, and survives a reload; refused
    /// changes change nothing; a removed member is refused at its next start.
    #[test]
    fn changes_apply_in_order_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let members = Members::load_or_record(
            dir.path(),
            3,
            image(vec![member(3, "a", &[]), member(9, "b", &[])]),
        )
        .unwrap();
        let mut learner = member(20, "", &[]);
        learner.is_learner = true;
        let add = Change::Add(learner.clone());
        members.apply(5, &add).unwrap().unwrap();
        assert_eq!(
            members.apply(6, &add).unwrap(),
            Err(ChangeRefused::IdExists)
        );
        let mut second = member(21, "", &[]);
        second.is_learner = true;
        assert_eq!(
            members.check(&Change::Add(second)),
            Err(ChangeRefused::TooManyLearners)
        );
        let mut taken = member(22, "", &[]);
        taken.peer_urls = vec!["http://127.0.0.1:9".to_owned()];
        assert_eq!(
            members.check(&Change::Add(taken)),
            Err(ChangeRefused::PeerUrlExists)
        );
        assert_eq!(
            members.check(&Change::Promote(9)),
            Err(ChangeRefused::NotLearner)
        );
        assert_eq!(members.conf_state().learners, vec![20]);
        members.apply(7, &Change::Promote(20)).unwrap().unwrap();
        members
            .apply(
                8,
                &Change::Update {
                    id: 20,
                    peer_urls: vec!["http://x:1".to_owned()],
                },
            )
            .unwrap()
            .unwrap();
        members.apply(9, &Change::Remove(9)).unwrap().unwrap();
        assert_eq!(
            members.check(&Change::Remove(9)),
            Err(ChangeRefused::IdRemoved)
        );
        assert_eq!(
            members.check(&Change::Remove(77)),
            Err(ChangeRefused::NotFound)
        );
        let again = Members::load_or_record(dir.path(), 3, MembershipImage::default()).unwrap();
        assert_eq!(again.image(), members.image());
        assert_eq!(again.conf_index(), 9);
        assert_eq!(again.conf_state().voters, vec![3, 20]);
        assert_eq!(
            again.get(20).unwrap().peer_urls,
            vec!["http://x:1".to_owned()]
        );
        assert!(again.is_removed(9));

        let signal = again.removed_signal();
        again.apply(10, &Change::Remove(3)).unwrap().unwrap();
        assert!(*signal.borrow());
        assert!(matches!(
            Members::load_or_record(dir.path(), 3, MembershipImage::default()),
            Err(MembersError::Removed)
        ));
    }

    #[test]
    fn the_image_round_trips() {
        let mut learner = member(20, "", &[]);
        learner.is_learner = true;
        let image = MembershipImage {
            conf_index: 42,
            members: vec![member(3, "a", &["http://a:2", "http://a:3"]), learner],
            removed: vec![4, 5],
        };
        let path = Path::new("image");
        assert_eq!(
            MembershipImage::decode(path, &image.encode()).unwrap(),
            image
        );
        assert!(MembershipImage::decode(path, b"removed\t4\n0000000000000003\ta\tu\t\n").is_err());
        assert!(MembershipImage::decode(path, b"x\n").is_err());
    }
}
