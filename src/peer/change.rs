//! Membership changes as raft `ConfChange`s, and [`ClusterMembership`], the raft engine's
//! [`Membership`]: it applies a committed change to the record (`Members`) and to the
//! transport's peer set.
//!
//! # Encoding in a `ConfChange`
//!
//! | change | `change_type` | `node_id` | `context` |
//! |---|---|---|---|
//! | add a voter | `AddNode` | new id | `add\t` + the member's line of the members file |
//! | add a learner | `AddLearnerNode` | new id | the same (its line ends in `\tlearner`) |
//! | remove | `RemoveNode` | id | `remove` |
//! | promote a learner | `AddNode` | id | `promote` |
//! | update peer URLs | `AddNode` or `AddLearnerNode` (what the member is: raft sees no change) | id | `update\t` + peer URLs, comma-separated |
//!
//! The reply a proposer gets back is empty when the change applied, or one byte, the
//! [`ChangeRefused`] code, when the membership refused it at apply time.

use std::sync::Arc;

use raft::eraftpb::{ConfChange, ConfChangeType, ConfState};

use super::members::{MemberInfo, Members, MembershipImage};
use super::transport::PeerSet;
use crate::raft::Membership;

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(MemberInfo),
    Remove(u64),
    Promote(u64),
    Update { id: u64, peer_urls: Vec<String> },
}

/// Why the membership refuses a change (etcd's `membership` errors; the API maps them to etcd's
/// messages in `api::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum ChangeRefused {
    #[error("member ID already exist")]
    IdExists = 1,
    #[error("ID removed")]
    IdRemoved = 2,
    #[error("member not found")]
    NotFound = 3,
    #[error("Peer URLs already exists")]
    PeerUrlExists = 4,
    #[error("too many learner members in cluster")]
    TooManyLearners = 5,
    #[error("can only promote a learner member")]
    NotLearner = 6,
    #[error("too many members")]
    TooManyMembers = 7,
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStarted = 8,
    #[error("undecodable membership change")]
    Undecodable = 9,
}

impl ChangeRefused {
    const ALL: [ChangeRefused; 9] = [
        ChangeRefused::IdExists,
        ChangeRefused::IdRemoved,
        ChangeRefused::NotFound,
        ChangeRefused::PeerUrlExists,
        ChangeRefused::TooManyLearners,
        ChangeRefused::NotLearner,
        ChangeRefused::TooManyMembers,
        ChangeRefused::NotEnoughStarted,
        ChangeRefused::Undecodable,
    ];

    /// The refusal a reply carries, if any (see the module doc).
    pub fn from_reply(reply: &[u8]) -> Result<(), ChangeRefused> {
        match reply {
            [] => Ok(()),
            [code] => Err(Self::ALL
                .into_iter()
                .find(|r| *r as u8 == *code)
                .unwrap_or(ChangeRefused::Undecodable)),
            _ => Err(ChangeRefused::Undecodable),
        }
    }
}

impl Change {
    pub fn id(&self) -> u64 {
        match self {
            Change::Add(m) => m.id,
            Change::Remove(id) | Change::Promote(id) | Change::Update { id, .. } => *id,
        }
    }

    /// The raft change; `is_learner` says what the member of an `Update` is now.
    pub fn to_conf_change(&self, is_learner: bool) -> ConfChange {
        let mut cc = ConfChange {
            node_id: self.id(),
            ..ConfChange::default()
        };
        let (change_type, context) = match self {
            Change::Add(m) => {
                let line = MembershipImage {
                    conf_index: 0,
                    members: vec![m.clone()],
                    removed: Vec::new(),
                }
                .encode();
                // The image's second line is the member's.
                let text = String::from_utf8(line).expect("the image is text");
                let member_line = text.lines().nth(1).expect("one member").to_owned();
                let kind = if m.is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                (kind, format!("add\t{member_line}"))
            }
            Change::Remove(_) => (ConfChangeType::RemoveNode, "remove".to_owned()),
            Change::Promote(_) => (ConfChangeType::AddNode, "promote".to_owned()),
            Change::Update { peer_urls, .. } => {
                let kind = if is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                (kind, format!("update\t{}", peer_urls.join(",")))
            }
        };
        cc.set_change_type(change_type);
        cc.context = context.into_bytes().into();
        cc
    }

    /// The change a committed `ConfChange` carries; `None` if it is not one of ours.
    pub fn from_conf_change(cc: &ConfChange) -> Option<Change> {
        let context = std::str::from_utf8(&cc.context).ok()?;
        let (op, rest) = context.split_once('\t').unwrap_or((context, ""));
        let change = match (op, cc.get_change_type()) {
            ("add", ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) => {
                let text = format!("conf\t0\n{rest}\n");
                let image =
                    MembershipImage::decode(std::path::Path::new("conf change"), text.as_bytes())
                        .ok()?;
                let [member] = &image.members[..] else {
                    return None;
                };
                let learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
                if member.id != cc.node_id || member.is_learner != learner {
                    return None;
                }
                Change::Add(member.clone())
            }
            ("remove", ConfChangeType::RemoveNode) => Change::Remove(cc.node_id),
            ("promote", ConfChangeType::AddNode) => Change::Promote(cc.node_id),
            ("update", ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) => {
                Change::Update {
                    id: cc.node_id,
                    peer_urls: rest
                        .split(',')
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned)
                        .collect(),
                }
            }
            _ => return None,
        };
        Some(change)
    }
}

/// etcd's `readyPercent`: a learner may be promoted once its log matches 90% of the leader's.
pub const LEARNER_READY_PERCENT: u64 = 90;

/// Whether a learner is close enough to the leader to be promoted (etcd's `isLearnerReady`: a
/// member raft does not track passes, as in etcd).
pub fn learner_ready(progress: crate::raft::LearnerProgress) -> bool {
    progress.learner_match.is_none_or(|learner| {
        u128::from(learner) * 100
            >= u128::from(progress.leader_match) * u128::from(LEARNER_READY_PERCENT)
    })
}

/// The raft engine's view of the membership: the record and the transport's peers.
pub struct ClusterMembership {
    members: Arc<Members>,
    peers: Arc<PeerSet>,
}

impl ClusterMembership {
    pub fn new(members: Arc<Members>, peers: Arc<PeerSet>) -> ClusterMembership {
        ClusterMembership { members, peers }
    }
}

impl Membership for ClusterMembership {
    fn conf_state(&self) -> ConfState {
        self.members.conf_state()
    }

    fn conf_index(&self) -> u64 {
        self.members.conf_index()
    }

    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange) -> Result<Vec<u8>, Vec<u8>> {
        let refuse = |r: ChangeRefused| Err(vec![r as u8]);
        let Some(change) = Change::from_conf_change(cc) else {
            return refuse(ChangeRefused::Undecodable);
        };
        // A learner updated with AddNode would be promoted by raft: refuse what raft would
        // read differently from the record.
        if let Change::Update { id, .. } = &change {
            let learner = self.members.get(*id).is_some_and(|m| m.is_learner);
            if learner != (cc.get_change_type() == ConfChangeType::AddLearnerNode) {
                return refuse(ChangeRefused::Undecodable);
            }
        }
        match self.members.apply(index, &change) {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => return refuse(refused),
            // The record is the truth a restart starts from: going on without it would let raft
            // and the record disagree. Stop here; the change is replayed at the next start.
            Err(e) => panic!("cannot record membership change at index {index}: {e}"),
        }
        let local = self.members.local_id();
        match &change {
            Change::Add(m) if m.id != local => self.peers.set_peer(m.id, m.peer_urls.clone()),
            Change::Update { id, peer_urls } if *id != local => {
                self.peers.set_peer(*id, peer_urls.clone());
            }
            Change::Remove(id) => self.peers.remove_peer(*id),
            _ => {}
        }
        eprintln!(
            "ringkv: info: applied membership change at index {index}: {}",
            describe(&change)
        );
        Ok(Vec::new())
    }

    fn snapshot(&self) -> Vec<u8> {
        self.members.image().encode()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<ConfState, String> {
        let image = MembershipImage::decode(std::path::Path::new("raft snapshot"), snapshot)
            .map_err(|e| e.to_string())?;
        if image.conf_index < self.members.conf_index() {
            return Err(format!(
                "the snapshot's membership (as of index {}) is older than the record's ({})",
                image.conf_index,
                self.members.conf_index()
            ));
        }
        let local = self.members.local_id();
        let conf_state = image.conf_state();
        let peers = image
            .members
            .iter()
            .filter(|m| m.id != local)
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect();
        if image.removed.binary_search(&local).is_ok() {
            // Removed in the meantime: keep the record (a restart refuses it) and stop.
            self.members.mark_removed();
            return Ok(conf_state);
        }
        self.members.replace(image).map_err(|e| e.to_string())?;
        self.peers.replace_all(peers);
        Ok(conf_state)
    }
}

fn describe(change: &Change) -> String {
    match change {
        Change::Add(m) => format!(
            "added {} {:016x} with peer URLs {}",
            if m.is_learner { "learner" } else { "member" },
            m.id,
            m.peer_urls.join(",")
        ),
        Change::Remove(id) => format!("removed member {id:016x}"),
        Change::Promote(id) => format!("promoted learner {id:016x}"),
        Change::Update { id, peer_urls } => {
            format!(
                "updated member {id:016x} to peer URLs {}",
                peer_urls.join(",")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_conf_changes() {
        let member = MemberInfo {
            id: 0xabc,
            name: String::new(),
            peer_urls: vec![
                "http://127.0.0.1:1".to_owned(),
                "http://127.0.0.1:2".to_owned(),
            ],
            client_urls: Vec::new(),
            is_learner: true,
        };
        for (change, learner) in [
            (Change::Add(member.clone()), true),
            (
                Change::Add(MemberInfo {
                    is_learner: false,
                    ..member
                }),
                false,
            ),
            (Change::Remove(7), false),
            (Change::Promote(7), false),
            (
                Change::Update {
                    id: 7,
                    peer_urls: vec!["http://x:1".to_owned()],
                },
                true,
            ),
        ] {
            let cc = change.to_conf_change(learner);
            assert_eq!(Change::from_conf_change(&cc), Some(change));
        }
        let mut foreign = ConfChange {
            context: b"promote".to_vec().into(),
            ..ConfChange::default()
        };
        foreign.set_change_type(ConfChangeType::RemoveNode);
        assert_eq!(Change::from_conf_change(&foreign), None);
    }

    /// What a raft snapshot carries restores the record (durably) and raft's configuration on
    /// another member; an older record than the member's own is refused.
    #[test]
    fn a_snapshot_restores_the_record_and_the_peers() {
        let member = |id: u64| MemberInfo {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: Vec::new(),
            is_learner: false,
        };
        let bootstrap = MembershipImage {
            conf_index: 0,
            members: vec![member(1), member(2), member(3)],
            removed: Vec::new(),
        };
        let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let config = super::super::PeerConfig::new(1 << 20);
        let leader = Arc::new(Members::load_or_record(dir1.path(), 1, bootstrap.clone()).unwrap());
        let leader = ClusterMembership::new(leader, PeerSet::new(Vec::new(), config.clone()));
        let learner = MemberInfo {
            is_learner: true,
            ..member(20)
        };
        let mut applied = leader;
        applied
            .apply_conf_change(5, &Change::Add(learner).to_conf_change(true))
            .unwrap();
        applied
            .apply_conf_change(6, &Change::Remove(3).to_conf_change(false))
            .unwrap();
        let bytes = applied.snapshot();

        let members = Arc::new(Members::load_or_record(dir2.path(), 2, bootstrap).unwrap());
        let peers = PeerSet::new(vec![(1, vec!["x".into()]), (3, vec!["y".into()])], config);
        let mut other = ClusterMembership::new(members.clone(), peers.clone());
        let conf_state = other.restore(&bytes).unwrap();
        assert_eq!(
            (conf_state.voters, conf_state.learners),
            (vec![1, 2], vec![20])
        );
        assert_eq!(members.conf_index(), 6);
        assert!(members.is_removed(3));
        let reloaded = Members::load_or_record(dir2.path(), 2, MembershipImage::default()).unwrap();
        assert_eq!(reloaded.image(), members.image());
        assert!(
            other.restore(b"conf\t1\n").is_err(),
            "older than the record"
        );
        assert!(other.restore(b"garbage").is_err());
    }

    #[test]
    fn refusals_round_trip_through_replies() {
        assert_eq!(ChangeRefused::from_reply(&[]), Ok(()));
        for r in ChangeRefused::ALL {
            assert_eq!(ChangeRefused::from_reply(&[r as u8]), Err(r));
        }
        assert_eq!(
            ChangeRefused::from_reply(&[0, 1]),
            Err(ChangeRefused::Undecodable)
        );
    }
}
