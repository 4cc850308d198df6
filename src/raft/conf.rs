//! Configuration changes (see the module doc of `raft`, "Membership changes"): the
//! application's [`Membership`], applying a committed conf-change entry, and the leader's view
//! of a learner's progress (etcd's promote check).

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfState, Entry, EntryType};
use raft::{RawNode, StateRole};

use super::storage::LogStore;
use super::RaftError;

/// The application's membership record, which raft's `ConfState` follows.
pub trait Membership: Send + 'static {
    /// Voters and learners as recorded; raft starts from it.
    fn conf_state(&self) -> ConfState;
    /// The index of the last conf change the record reflects; changes at or below it are
    /// passed over when raft hands them back after a restart.
    fn conf_index(&self) -> u64;
    /// Applies the committed change at `index` to the record, durably, before returning
    /// `Ok(reply)`; or refuses it, changing nothing, with `Err(reply)`. The decision must depend
    /// only on the record (every member decides alike). The reply goes to the proposer.
    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange) -> Result<Vec<u8>, Vec<u8>>;
    /// The record as bytes, for a raft snapshot (taken at an index at or above `conf_index`;
    /// the bytes carry `conf_index`).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the record with one a raft snapshot carried, durably before returning, and
    /// returns the configuration raft must take from that snapshot. Refuses bytes it cannot
    /// read or a record older than its own.
    fn restore(&mut self, snapshot: &[u8]) -> Result<ConfState, String>;
}

/// How far a learner's log is, on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnerProgress {
    /// `None`: raft tracks no such member.
    pub learner_match: Option<u64>,
    pub leader_match: u64,
}

/// Applies a committed conf-change entry to the membership and then to raft; returns the
/// proposer's reply. `None` if the entry was already reflected by the record (a replay).
pub(super) fn apply_entry(
    raw: &mut RawNode<LogStore>,
    membership: &mut dyn Membership,
    e: &Entry,
) -> Option<Vec<u8>> {
    assert_eq!(
        e.get_entry_type(),
        EntryType::EntryConfChange,
        "only v1 conf changes are proposed"
    );
    if e.index <= membership.conf_index() {
        return None;
    }
    let Ok(cc) = ConfChange::parse_from_bytes(&e.data) else {
        // Not ours and not readable: refusing keeps raft and the record as they are.
        return Some(vec![u8::MAX]);
    };
    let reply = match membership.apply_conf_change(e.index, &cc) {
        Ok(reply) => reply,
        Err(refused) => return Some(refused),
    };
    let conf_state = raw
        .apply_conf_change(&cc)
        .unwrap_or_else(|err| panic!("the record accepted {cc:?}, raft refused it: {err}"));
    let recorded = membership.conf_state();
    assert!(
        same_members(&conf_state, &recorded),
        "raft's configuration {conf_state:?} differs from the recorded {recorded:?}"
    );
    raw.mut_store().set_conf_state(conf_state);
    Some(reply)
}

/// Whether `a` and `b` have the same voters and the same learners (in any order).
pub(super) fn same_members(a: &ConfState, b: &ConfState) -> bool {
    let sorted = |ids: &[u64]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids
    };
    sorted(&a.voters) == sorted(&b.voters) && sorted(&a.learners) == sorted(&b.learners)
}

/// Restores the membership from a raft snapshot's header bytes (`Membership::restore`); the
/// configuration raft takes from the snapshot. Without a membership (fixed voters) the header
/// is empty and raft takes the snapshot's metadata as it is: `None`.
pub(super) fn restore(
    membership: Option<&mut (dyn Membership + 'static)>,
    header: &[u8],
) -> Result<Option<ConfState>, String> {
    match membership {
        Some(m) => m.restore(header).map(Some),
        None if header.is_empty() => Ok(None),
        None => Err("the snapshot carries a membership and this member's is fixed".to_owned()),
    }
}

/// The leader's progress of `id`; `NotLeader` elsewhere.
pub(super) fn learner_progress(
    raw: &RawNode<LogStore>,
    id: u64,
) -> Result<LearnerProgress, RaftError> {
    let raft = &raw.raft;
    if raft.state != StateRole::Leader {
        return Err(RaftError::NotLeader {
            leader_id: raft.leader_id,
        });
    }
    let prs = raft.prs();
    Ok(LearnerProgress {
        learner_match: prs.get(id).map(|p| p.matched),
        leader_match: prs.get(raft.id).map_or(0, |p| p.matched),
    })
}
