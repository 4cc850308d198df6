//! Lease entries on the applier: etcd's grant checks, puts and txn puts that name leases, the
//! attachments that follow puts, overwrites and deletes, and a revoke that deletes every
//! attached key in one revision.

use std::sync::Arc;

use prost::Message;
use ringkv_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RequestOp,
    TxnRequest,
};

use super::entry::{ApplyError, Outcome, OutcomeResult, Proposal, ProposalRequest};
use super::harness::Harness;
use crate::lease::{Lessor, SimClock, TTL_MAX_SECS};
use crate::mvcc::{EventKind, RangeOptions};

impl Harness {
    fn grant(&mut self, id: i64, ttl: i64) -> Result<(i64, i64), ApplyError> {
        match self.apply(grant(id, ttl))? {
            OutcomeResult::LeaseGrant(resp) => Ok((resp.id, resp.ttl)),
            _ => panic!("not a grant response"),
        }
    }

    fn revoke(&mut self, id: i64) -> Result<i64, ApplyError> {
        match self.apply(revoke(id))? {
            OutcomeResult::LeaseRevoke(resp) => Ok(resp.header.unwrap().revision),
            _ => panic!("not a revoke response"),
        }
    }

    fn lease_of(&self, key: &str) -> Option<i64> {
        let result = self
            .mvcc
            .range(key.as_bytes(), b"", &RangeOptions::default())
            .unwrap();
        result.kvs.first().map(|kv| kv.lease)
    }

    fn keys(&self, id: i64) -> Option<Vec<String>> {
        self.lessor().keys(id).map(|keys| {
            keys.into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect()
        })
    }
}

fn grant(id: i64, ttl: i64) -> ProposalRequest {
    ProposalRequest::LeaseGrant(LeaseGrantRequest { ttl, id })
}

fn revoke(id: i64) -> ProposalRequest {
    ProposalRequest::LeaseRevoke(LeaseRevokeRequest { id })
}

fn put(key: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..PutRequest::default()
    }
}

fn txn_of_puts(puts: Vec<PutRequest>) -> ProposalRequest {
    ProposalRequest::Txn(TxnRequest {
        success: puts
            .into_iter()
            .map(|p| RequestOp {
                request: Some(request_op::Request::RequestPut(p)),
            })
            .collect(),
        ..TxnRequest::default()
    })
}

#[test]
fn grant_checks_in_etcds_order() {
    let mut h = Harness::new();
    assert_eq!(h.grant(0, 10), Err(ApplyError::LeaseNotFound));
    assert_eq!(
        h.grant(5, TTL_MAX_SECS + 1),
        Err(ApplyError::LeaseTtlTooLarge)
    );
    assert_eq!(h.grant(5, TTL_MAX_SECS), Ok((5, TTL_MAX_SECS)));
    assert_eq!(h.grant(5, 10), Err(ApplyError::LeaseExists));
    // The too-large check comes before the exists check.
    assert_eq!(
        h.grant(5, TTL_MAX_SECS + 1),
        Err(ApplyError::LeaseTtlTooLarge)
    );
    // Negative ids are leases like any other; a TTL below one second gets one.
    assert_eq!(h.grant(-9, 0), Ok((-9, 1)));
    assert_eq!(h.lessor().len(), 2);
    // Grants take no revision.
    assert_eq!(h.mvcc.current_revision(), 1);
}

#[test]
fn puts_need_an_existing_lease() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply(ProposalRequest::Put(put("a", 7))),
        Err(ApplyError::LeaseNotFound)
    );
    assert_eq!(
        h.apply(txn_of_puts(vec![put("a", 0), put("b", 7)])),
        Err(ApplyError::LeaseNotFound)
    );
    // The refused txn wrote nothing.
    assert_eq!((h.lease_of("a"), h.mvcc.current_revision()), (None, 1));

    // Granted and used in the same batch: each entry sees the ones before it.
    let out = h.apply_all(vec![
        grant(7, 10),
        ProposalRequest::Put(put("a", 7)),
        txn_of_puts(vec![put("b", 7), put("c", 0)]),
    ]);
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(h.lease_of("a"), Some(7));
    assert_eq!(h.keys(7).unwrap(), ["a", "b"]);
}

#[test]
fn attachments_follow_overwrites_and_deletes() {
    let mut h = Harness::new();
    h.grant(1, 10).unwrap();
    h.grant(2, 10).unwrap();
    for key in ["a", "b", "c"] {
        h.apply(ProposalRequest::Put(put(key, 1))).unwrap();
    }
    // Moved to another lease, kept by ignore_lease, dropped by a lease-less put, deleted.
    h.apply(ProposalRequest::Put(put("a", 2))).unwrap();
    let keep = PutRequest {
        ignore_lease: true,
        ..put("b", 0)
    };
    h.apply(ProposalRequest::Put(keep)).unwrap();
    assert_eq!(h.lease_of("b"), Some(1));
    h.apply(ProposalRequest::Put(put("c", 0))).unwrap();
    assert_eq!(h.keys(1).unwrap(), ["b"]);
    h.apply(ProposalRequest::DeleteRange(DeleteRangeRequest {
        key: b"b".to_vec(),
        ..DeleteRangeRequest::default()
    }))
    .unwrap();
    assert_eq!(h.keys(1).unwrap(), Vec::<String>::new());
    assert_eq!(h.keys(2).unwrap(), ["a"]);

    // A fresh lessor rebuilt from the store agrees.
    let reopened = Lessor::open(&h.mvcc, Arc::new(SimClock::default())).unwrap();
    assert_eq!(reopened.leases().len(), 2);
    assert_eq!(reopened.keys(1).unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(reopened.keys(2).unwrap(), [b"a".to_vec()]);
}

#[test]
fn revoke_deletes_attached_keys_in_one_revision() {
    let mut h = Harness::new();
    h.grant(3, 10).unwrap();
    for key in ["z", "m", "a"] {
        h.apply(ProposalRequest::Put(put(key, 3))).unwrap();
    }
    h.apply(ProposalRequest::Put(put("other", 0))).unwrap();
    let before = h.mvcc.current_revision();
    let rev = h.revoke(3).unwrap();
    assert_eq!(rev, before + 1);
    let events = h.mvcc.changes(rev, rev).unwrap();
    let deleted: Vec<&[u8]> = events
        .iter()
        .inspect(|e| assert_eq!(e.kind, EventKind::Delete))
        .map(|e| e.kv.key.as_slice())
        .collect();
    assert_eq!(deleted, [&b"a"[..], b"m", b"z"]);
    assert!(!h.lessor().contains(3));
    assert_eq!(h.lease_of("other"), Some(0));
    assert_eq!(h.revoke(3), Err(ApplyError::LeaseNotFound));

    // A lease with no keys: gone, and no revision taken.
    h.grant(4, 10).unwrap();
    assert_eq!(h.revoke(4), Ok(rev));
    let reopened = Lessor::open(&h.mvcc, Arc::new(SimClock::default())).unwrap();
    assert!(reopened.is_empty());
}

#[test]
fn replayed_entries_change_nothing() {
    let mut h = Harness::new();
    h.grant(8, 10).unwrap();
    h.apply(ProposalRequest::Put(put("k", 8))).unwrap();
    // The same indexes again, as WAL replay after a crash would hand them over.
    let again = [
        (1, Proposal::new(grant(8, 10)).encode_to_vec()),
        (
            2,
            Proposal::new(ProposalRequest::Put(put("k", 8))).encode_to_vec(),
        ),
    ];
    let out = h
        .applier
        .apply_entries(again.iter().map(|(i, d)| (*i, d.as_slice())));
    assert!(out
        .iter()
        .all(|o| Outcome::decode(o.as_slice()).unwrap() == Outcome::default()));
    assert_eq!(h.keys(8).unwrap(), ["k"]);
    assert_eq!(h.mvcc.current_revision(), 2);
}
