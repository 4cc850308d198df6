//! etcd's alarms (NOSPACE, CORRUPT): the replicated set of raised alarms, applied from
//! `Alarm` entries and kept in MVCC's aux table (`alarms`) in the same commit as the entry, so
//! they survive restarts and replay. Encoding of the aux value: `(member id u64 BE, alarm type
//! i32 BE)` per alarm, sorted by type then member (the order `alarm list` prints).
//!
//! Also the quota (`--quota-backend-bytes`), as etcd applies it: a request's cost is its puts'
//! bytes plus an overhead; while NOSPACE is raised a request with a cost is refused, and one
//! applied while the store is over quota is answered `NoSpace` (the API then raises NOSPACE).

use std::collections::BTreeSet;

use ringkv_proto::etcdserverpb::alarm_request::AlarmAction;
use ringkv_proto::etcdserverpb::{
    request_op, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, PutRequest, RequestOp,
    ResponseHeader, TxnRequest,
};

use crate::mvcc::{Mvcc, MvccBatch};

use super::entry::{ApplyError, Outcome, OutcomeResult, ProposalRequest};

/// The aux-table name of the alarm set.
pub const AUX_ALARMS: &[u8] = b"alarms";
const ENTRY_BYTES: usize = 12;

/// Raised alarms, ordered by (type, member).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmSet {
    raised: BTreeSet<(i32, u64)>,
}

impl AlarmSet {
    /// Decodes the aux value; `None` for a malformed one.
    pub fn decode(bytes: &[u8]) -> Option<AlarmSet> {
        if bytes.len() % ENTRY_BYTES != 0 {
            return None;
        }
        let raised = bytes
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                let member = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
                let alarm = i32::from_be_bytes(e[8..].try_into().expect("4 bytes"));
                (alarm, member)
            })
            .collect();
        Some(AlarmSet { raised })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raised.len() * ENTRY_BYTES);
        for (alarm, member) in &self.raised {
            out.extend_from_slice(&member.to_be_bytes());
            out.extend_from_slice(&alarm.to_be_bytes());
        }
        out
    }

    /// Raises `alarm` for `member`; returns whether it was new.
    pub fn activate(&mut self, member: u64, alarm: i32) -> bool {
        self.raised.insert((alarm, member))
    }

    /// Clears it; returns whether it was raised.
    pub fn deactivate(&mut self, member: u64, alarm: i32) -> bool {
        self.raised.remove(&(alarm, member))
    }

    /// The alarms of type `alarm`, or all of them for `NONE` (etcd's `alarmStore.Get`).
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.raised
            .iter()
            .filter(|(a, _)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn has(&self, alarm: AlarmType) -> bool {
        self.raised.iter().any(|(a, _)| *a == alarm as i32)
    }

    pub fn is_empty(&self) -> bool {
        self.raised.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;
    use ringkv_proto::etcdserverpb::DeleteRangeRequest;

    use super::*;
    use crate::apply::entry::Proposal;
    use crate::apply::Applier;
    use crate::page_store::{PageStore, PageStoreConfig, SimDisk};

    #[test]
    fn round_trips_and_filters() {
        let mut set = AlarmSet::default();
        assert!(set.activate(7, AlarmType::Nospace as i32));
        assert!(!set.activate(7, AlarmType::Nospace as i32));
        assert!(set.activate(3, AlarmType::Corrupt as i32));
        let back = AlarmSet::decode(&set.encode()).unwrap();
        assert_eq!(back, set);
        assert_eq!(set.get(AlarmType::None as i32).len(), 2);
        assert_eq!(set.get(AlarmType::Corrupt as i32)[0].member_id, 3);
        assert!(set.has(AlarmType::Nospace));
        assert!(set.deactivate(7, AlarmType::Nospace as i32));
        assert!(!set.has(AlarmType::Nospace));
        assert_eq!(AlarmSet::decode(&[1, 2, 3]), None);
    }

    /// Applies `request` as entry `index`; the outcome's result.
    fn apply(applier: &mut Applier, index: u64, request: ProposalRequest) -> OutcomeResult {
        let bytes = Proposal::new(request).encode_to_vec();
        Outcome::decode(applier.apply_entry(index, &bytes).as_slice())
            .unwrap()
            .result
            .unwrap()
    }

    fn put(key: &str) -> ProposalRequest {
        ProposalRequest::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })
    }

    fn alarm(action: AlarmAction, alarm: AlarmType) -> ProposalRequest {
        ProposalRequest::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 7,
            alarm: alarm as i32,
        })
    }

    const NO_SPACE: OutcomeResult = OutcomeResult::Error(20);

    #[test]
    fn nospace_caps_writes_survives_reopen_and_disarms() {
        let disk = Arc::new(SimDisk::new());
        let open = || {
            Mvcc::open(PageStore::open_on(disk.clone(), PageStoreConfig::default()).unwrap())
                .unwrap()
        };
        let mvcc = open();
        let mut applier = Applier::new(mvcc.clone());
        assert!(matches!(
            apply(&mut applier, 1, put("a")),
            OutcomeResult::Put(_)
        ));
        let OutcomeResult::Alarm(raised) = apply(
            &mut applier,
            2,
            alarm(AlarmAction::Activate, AlarmType::Nospace),
        ) else {
            panic!("not an alarm response")
        };
        assert_eq!(raised.alarms.len(), 1);
        assert_eq!(apply(&mut applier, 3, put("b")), NO_SPACE);
        // Deletes and compaction still apply.
        let delete = ProposalRequest::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..DeleteRangeRequest::default()
        });
        assert!(matches!(
            apply(&mut applier, 4, delete),
            OutcomeResult::DeleteRange(_)
        ));
        drop(applier);
        drop(mvcc);

        // Replicated state: a reopened store still refuses, and GET lists the alarm.
        let mvcc = open();
        let mut applier = Applier::new(mvcc.clone());
        assert_eq!(apply(&mut applier, 5, put("b")), NO_SPACE);
        let OutcomeResult::Alarm(listed) =
            apply(&mut applier, 6, alarm(AlarmAction::Get, AlarmType::None))
        else {
            panic!("not an alarm response")
        };
        assert_eq!(listed.alarms, raised.alarms);
        let OutcomeResult::Alarm(cleared) = apply(
            &mut applier,
            7,
            alarm(AlarmAction::Deactivate, AlarmType::Nospace),
        ) else {
            panic!("not an alarm response")
        };
        assert_eq!(cleared.alarms, raised.alarms);
        assert!(matches!(
            apply(&mut applier, 8, put("b")),
            OutcomeResult::Put(_)
        ));
        assert_eq!(mvcc.current_revision(), 4, "put a, delete a, put b");

        // Over quota, a write is applied (members stay identical) but answered NoSpace.
        applier.set_quota_backend_bytes(1);
        assert_eq!(apply(&mut applier, 9, put("c")), NO_SPACE);
        assert_eq!(mvcc.current_revision(), 5);
    }
}

/// etcd's per-key overhead in its quota cost (`kvOverhead`).
const KV_OVERHEAD_BYTES: u64 = 256;

/// etcd's quota cost of a lease grant (`leaseOverhead`): grants are refused under NOSPACE too.
const LEASE_OVERHEAD_BYTES: u64 = 64;

/// etcd's quota cost of a put: `kvOverhead + len(key) + len(value)`.
pub fn cost_put(put: &PutRequest) -> u64 {
    KV_OVERHEAD_BYTES + put.key.len() as u64 + put.value.len() as u64
}

/// etcd's quota cost of a txn: the costlier branch's puts (nested txns are not counted).
pub fn cost_txn(txn: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .filter_map(|op| match &op.request {
                Some(request_op::Request::RequestPut(put)) => Some(cost_put(put)),
                _ => None,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// The quota cost of a proposal: 0 for requests that cannot grow the store.
pub fn cost(request: &ProposalRequest) -> u64 {
    match request {
        ProposalRequest::Put(put) => cost_put(put),
        ProposalRequest::Txn(txn) => cost_txn(txn),
        ProposalRequest::LeaseGrant(_) => LEASE_OVERHEAD_BYTES,
        _ => 0,
    }
}

/// etcd's `backendQuota.Available`: whether a request of `cost` bytes fits under the quota.
pub fn available(db_size_bytes: u64, cost: u64, quota_bytes: u64) -> bool {
    cost == 0 || db_size_bytes.saturating_add(cost) < quota_bytes
}

/// The applier's view of alarms and quota: the replicated alarm set (loaded at start, changed
/// only by `Alarm` entries) and this member's `--quota-backend-bytes`.
#[derive(Debug)]
pub struct Guard {
    alarms: AlarmSet,
    quota_bytes: u64,
}

impl Guard {
    /// Loads the alarm set the store holds; no quota until `set_quota_bytes`.
    pub fn load(mvcc: &Mvcc) -> Guard {
        let alarms = match mvcc.aux(AUX_ALARMS) {
            Ok(Some(bytes)) => AlarmSet::decode(&bytes)
                .unwrap_or_else(|| panic!("malformed alarm set in the store: {bytes:x?}")),
            Ok(None) => AlarmSet::default(),
            Err(error) => panic!("cannot read the alarm set: {error}"),
        };
        Guard {
            alarms,
            quota_bytes: u64::MAX,
        }
    }

    /// Reloads the alarm set from the store (after a raft snapshot was installed); the quota
    /// stays this member's.
    pub fn reload(&mut self, mvcc: &Mvcc) {
        self.alarms = Guard::load(mvcc).alarms;
    }

    pub fn set_quota_bytes(&mut self, quota_bytes: u64) {
        self.quota_bytes = quota_bytes;
    }

    /// Runs `execute` on `request` as etcd's capped and quota appliers would: refused with
    /// `NoSpace` while the NOSPACE alarm is raised and the request would grow the store;
    /// otherwise applied, and answered `NoSpace` if the store was over quota for it.
    pub fn gate(
        &self,
        mvcc: &Mvcc,
        request: Option<ProposalRequest>,
        execute: impl FnOnce(Option<ProposalRequest>) -> Outcome,
    ) -> Outcome {
        let cost = request.as_ref().map_or(0, cost);
        if cost > 0 && self.alarms.has(AlarmType::Nospace) {
            return Outcome::from_result(Err(ApplyError::NoSpace));
        }
        let fits = available(mvcc.page_store().space().file_bytes, cost, self.quota_bytes);
        let outcome = execute(request);
        match outcome.result {
            Some(OutcomeResult::Error(_)) | None => outcome,
            Some(_) if !fits => Outcome::from_result(Err(ApplyError::NoSpace)),
            Some(_) => outcome,
        }
    }

    /// Applies an `Alarm` entry in `batch` (etcd's `applierV3backend.Alarm`).
    pub fn apply(
        &mut self,
        batch: &mut MvccBatch<'_>,
        req: &AlarmRequest,
    ) -> crate::mvcc::Result<AlarmResponse> {
        let mut resp = AlarmResponse {
            header: Some(ResponseHeader {
                revision: batch.revision(),
                ..ResponseHeader::default()
            }),
            ..AlarmResponse::default()
        };
        let action = AlarmAction::try_from(req.action).unwrap_or(AlarmAction::Get);
        let changed = match action {
            AlarmAction::Get => {
                resp.alarms = self.alarms.get(req.alarm);
                false
            }
            AlarmAction::Activate => {
                // etcd answers with the alarm whether or not it was already raised; an unknown
                // type is stored as given (etcd does too).
                resp.alarms.push(AlarmMember {
                    member_id: req.member_id,
                    alarm: req.alarm,
                });
                req.alarm != AlarmType::None as i32
                    && self.alarms.activate(req.member_id, req.alarm)
            }
            AlarmAction::Deactivate => {
                let removed = self.alarms.deactivate(req.member_id, req.alarm);
                if removed {
                    resp.alarms.push(AlarmMember {
                        member_id: req.member_id,
                        alarm: req.alarm,
                    });
                }
                removed
            }
        };
        if changed {
            if self.alarms.is_empty() {
                batch.delete_aux(AUX_ALARMS)?;
            } else {
                batch.put_aux(AUX_ALARMS, &self.alarms.encode())?;
            }
        }
        Ok(resp)
    }
}
