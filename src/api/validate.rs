//! Request checks made before a request reaches raft, with etcd's rules and order
//! (`api/v3rpc/key.go`): empty keys, contradictory put flags, txn op counts, and the duplicate
//! key rule of `checkIntervals` (a txn may not put a key twice, nor put a key it deletes, along
//! any path of branches that can run together).

use std::collections::HashSet;

use ringkv_proto::etcdserverpb::{
    range_request, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::error::ApiError;

/// The page store's longest key (`MAX_KEY_BYTES`), which MVCC's version key of a user key
/// (`mvcc::version_key_len`) must fit.
const STORE_KEY_BYTES_MAX: usize = 3072;
/// The page store's largest value less MVCC's record header, with room to spare.
pub const VALUE_BYTES_MAX: usize = (16 << 20) - 64;

pub fn check_range(req: &RangeRequest) -> Result<(), ApiError> {
    if req.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if range_request::SortOrder::try_from(req.sort_order).is_err()
        || range_request::SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(ApiError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(req: &PutRequest) -> Result<(), ApiError> {
    if req.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    if crate::mvcc::version_key_len(&req.key) > STORE_KEY_BYTES_MAX {
        return Err(ApiError::KeyTooLarge);
    }
    if req.value.len() > VALUE_BYTES_MAX {
        return Err(ApiError::RequestTooLarge);
    }
    Ok(())
}

pub fn check_delete(req: &DeleteRangeRequest) -> Result<(), ApiError> {
    if req.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: the largest of compares/success/failure counts against
/// `max_txn_ops`, and nested txns against what is left of it.
pub fn check_txn(req: &TxnRequest, max_txn_ops: u64) -> Result<(), ApiError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len()) as u64;
    if ops > max_txn_ops {
        return Err(ApiError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ApiError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_op(op, max_txn_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: u64) -> Result<(), ApiError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(p)) => check_put(p),
        Some(request_op::Request::RequestDeleteRange(d)) => check_delete(d),
        Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_txn_ops),
        // etcd answers an empty op with "key not found".
        None => Err(crate::apply::entry::ApplyError::KeyNotFound.into()),
    }
}

/// A deleted interval `[begin, end)` in etcd's `adt` terms: an empty `end` is +infinity, and
/// a delete of one key is the point `[key, key\0)`.
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// The puts and deletes one list of ops can make.
#[derive(Default)]
struct Writes {
    puts: HashSet<Vec<u8>>,
    dels: Vec<Interval>,
}

impl Writes {
    fn deletes(&self, key: &[u8]) -> bool {
        self.dels.iter().any(|iv| iv.contains(key))
    }
}

/// etcd's `checkIntervals` for one branch (`success` or `failure`) of a txn.
pub fn check_intervals(ops: &[RequestOp]) -> Result<(), ApiError> {
    intervals(ops).map(|_| ())
}

fn intervals(ops: &[RequestOp]) -> Result<Writes, ApiError> {
    let mut writes = Writes::default();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(del)) = &op.request {
            let end = if del.range_end.is_empty() {
                let mut point = del.key.clone();
                point.push(0);
                point
            } else {
                del.range_end.clone()
            };
            writes.dels.push(Interval {
                begin: del.key.clone(),
                end,
            });
        }
    }
    // Nested txns: their own branches are exclusive, so a key both may put is fine; a key one
    // of them puts must not collide with what this level or an earlier sibling writes.
    for op in ops {
        let Some(request_op::Request::RequestTxn(txn)) = &op.request else {
            continue;
        };
        let then = intervals(&txn.success)?;
        let otherwise = intervals(&txn.failure)?;
        for key in &then.puts {
            if writes.puts.contains(key) || writes.deletes(key) {
                return Err(ApiError::DuplicateKey);
            }
            writes.puts.insert(key.clone());
        }
        for key in &otherwise.puts {
            if (writes.puts.contains(key) && !then.puts.contains(key)) || writes.deletes(key) {
                return Err(ApiError::DuplicateKey);
            }
            writes.puts.insert(key.clone());
        }
        writes.dels.extend(then.dels);
        writes.dels.extend(otherwise.dels);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if writes.puts.contains(&put.key) || writes.deletes(&put.key) {
            return Err(ApiError::DuplicateKey);
        }
        writes.puts.insert(put.key.clone());
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::etcdserverpb::Compare;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..PutRequest::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.into(),
                    range_end: end.into(),
                    ..DeleteRangeRequest::default()
                },
            )),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    #[test]
    fn duplicate_key_rule_matches_etcd() {
        assert_eq!(
            check_intervals(&[put("a"), put("a")]),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_intervals(&[del("a", ""), put("a")]),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_intervals(&[del("a", "c"), put("b")]),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(check_intervals(&[del("a", "c"), put("c")]), Ok(()));
        // etcd's interval for range_end "\0" is empty, so it never collides.
        assert_eq!(check_intervals(&[del("a", "\0"), put("b")]), Ok(()));
        // Exclusive branches of a nested txn may put the same key ...
        assert_eq!(
            check_intervals(&[txn(vec![put("a")], vec![put("a")])]),
            Ok(())
        );
        // ... but not a key this level also puts or deletes.
        assert_eq!(
            check_intervals(&[txn(vec![put("a")], vec![]), put("a")]),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_intervals(&[del("a", ""), txn(vec![], vec![put("a")])]),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_intervals(&[txn(vec![del("a", "z")], vec![]), put("b")]),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(check_intervals(&[del("a", ""), del("a", "")]), Ok(()));
    }

    #[test]
    fn txn_op_count_and_keys() {
        let req = TxnRequest {
            compare: vec![],
            success: vec![put("a"), put("b"), put("c")],
            failure: vec![],
        };
        assert_eq!(check_txn(&req, 2), Err(ApiError::TooManyOps));
        assert_eq!(check_txn(&req, 3), Ok(()));
        let req = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![],
            failure: vec![],
        };
        assert_eq!(check_txn(&req, 3), Err(ApiError::EmptyKey));
        let req = TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: None }],
            failure: vec![],
        };
        assert_eq!(
            check_txn(&req, 3),
            Err(ApiError::Apply(
                crate::apply::entry::ApplyError::KeyNotFound
            ))
        );
    }
}
