//! etcd's KV request semantics on MVCC: Range (filters, sort, limit), Put (prev_kv,
//! ignore_value, ignore_lease), DeleteRange (prev_kv), Txn (compares with range_end, nested
//! txns, etcd's check-then-apply order). Mirrors etcd's `applierV3backend`.
//!
//! A txn is decided before it runs: every compare, the nested ones included, is evaluated on
//! the state before the txn's first write (etcd's `compareToPath`), giving a *path*: one bool per
//! txn taken, in pre-order (this txn, then the nested txns of the branch taken, depth first).
//! Then the ops of that path are checked (a put needing a previous kv, a lease, a range revision)
//! against the same state, and only then applied: a refused txn writes nothing.
//!
//! Leases: a put names a lease that must exist in the lessor; every put, overwrite and delete
//! records how it changes the keys' attachments (`WriteAt::leases`), applied to the lessor only
//! if the entry is kept.

use ringkv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ringkv_proto::etcdserverpb::{
    range_request, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use ringkv_proto::mvccpb;

use crate::mvcc::{
    self, BatchTxn, KeyValue, Mvcc, MvccBatch, MvccError, RangeOptions, RangeResult, SortOrder,
    SortTarget,
};

use super::entry::ApplyError;
use crate::lease::{LeaseEffect, Lessor};

/// Why a request produced no response: an expected refusal, or a storage failure that is not an
/// answer at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Refused(#[from] ApplyError),
    #[error(transparent)]
    Store(MvccError),
}

impl From<MvccError> for ExecError {
    fn from(error: MvccError) -> ExecError {
        match error {
            MvccError::Compacted => ExecError::Refused(ApplyError::Compacted),
            MvccError::FutureRevision => ExecError::Refused(ApplyError::FutureRevision),
            store @ (MvccError::Store(_) | MvccError::Layout { .. }) => ExecError::Store(store),
        }
    }
}

pub type ExecResult<T> = Result<T, ExecError>;

/// A consistent read view: etcd's `mvcc.ReadView`.
pub trait KvRead {
    /// Ranges with `opts.rev <= 0` read at `rev()`; the result's `rev` is `rev()`.
    fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions)
        -> mvcc::Result<RangeResult>;
    /// The revision a read at revision 0 sees.
    fn rev(&self) -> i64;
    /// The compacted revision: reads below it fail.
    fn first_rev(&self) -> i64;
    /// Whether lease `id` exists (a put naming it may run).
    fn has_lease(&self, id: i64) -> bool;
}

/// A read-only view of the committed store at one revision (plain ranges, read-only txns).
pub struct ReadAt<'a> {
    mvcc: &'a Mvcc,
    rev: i64,
    compacted: i64,
}

impl<'a> ReadAt<'a> {
    pub fn current(mvcc: &'a Mvcc) -> ReadAt<'a> {
        ReadAt {
            mvcc,
            rev: mvcc.current_revision(),
            compacted: mvcc.compacted_revision(),
        }
    }
}

impl KvRead for ReadAt<'_> {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> mvcc::Result<RangeResult> {
        if opts.rev > self.rev {
            return Err(MvccError::FutureRevision);
        }
        let mut opts = opts.clone();
        if opts.rev <= 0 {
            opts.rev = self.rev;
        }
        let mut result = self.mvcc.range(key, range_end, &opts)?;
        result.rev = self.rev;
        Ok(result)
    }

    fn rev(&self) -> i64 {
        self.rev
    }

    fn first_rev(&self) -> i64 {
        self.compacted
    }

    /// A read view checks no puts (read-only txns hold only ranges), so it knows no leases.
    fn has_lease(&self, _id: i64) -> bool {
        false
    }
}

/// One write transaction of the applier's batch, with the compacted revision it runs above
/// (stable: the batch holds MVCC's writer lock), the lessor its puts check, and the lease
/// changes it made so far.
pub struct WriteAt<'b, 'a> {
    pub txn: BatchTxn<'b, 'a>,
    compacted: i64,
    pub lessor: &'b Lessor,
    /// In the order made; for `Lessor::apply` once the entry is kept.
    pub leases: Vec<LeaseEffect>,
}

impl<'b, 'a> WriteAt<'b, 'a> {
    pub fn begin(batch: &'b mut MvccBatch<'a>, lessor: &'b Lessor) -> WriteAt<'b, 'a> {
        let compacted = batch.compacted_revision();
        WriteAt {
            txn: batch.txn(),
            compacted,
            lessor,
            leases: Vec::new(),
        }
    }

    /// Keeps the transaction's changes (`BatchTxn::end`); returns its lease effects.
    pub fn end(self) -> Vec<LeaseEffect> {
        self.txn.end();
        self.leases
    }

    /// Records that `key` moved from lease `old` to lease `new` (0: none).
    fn note_lease(&mut self, key: &[u8], old: i64, new: i64) {
        if old == new {
            return;
        }
        if old != 0 {
            self.leases.push(LeaseEffect::Detach {
                id: old,
                key: key.to_vec(),
            });
        }
        if new != 0 {
            self.leases.push(LeaseEffect::Attach {
                id: new,
                key: key.to_vec(),
            });
        }
    }
}

impl KvRead for WriteAt<'_, '_> {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        opts: &RangeOptions,
    ) -> mvcc::Result<RangeResult> {
        self.txn.range(key, range_end, opts)
    }

    fn rev(&self) -> i64 {
        self.txn.revision()
    }

    fn first_rev(&self) -> i64 {
        self.compacted
    }

    fn has_lease(&self, id: i64) -> bool {
        self.lessor.contains(id)
    }
}

/// A response header as the applier fills it: the revision only (the API layer adds the ids
/// and term to the outermost one).
pub(super) fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}

pub fn to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// RangeRequest's options in MVCC's terms. Unknown enum values are refused by the API layer;
/// here they fall back to the defaults.
fn range_options(req: &RangeRequest) -> RangeOptions {
    let sort_order = match range_request::SortOrder::try_from(req.sort_order) {
        Ok(range_request::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(range_request::SortOrder::Descend) => SortOrder::Descend,
        _ => SortOrder::None,
    };
    let sort_target = match range_request::SortTarget::try_from(req.sort_target) {
        Ok(range_request::SortTarget::Version) => SortTarget::Version,
        Ok(range_request::SortTarget::Create) => SortTarget::Create,
        Ok(range_request::SortTarget::Mod) => SortTarget::Mod,
        Ok(range_request::SortTarget::Value) => SortTarget::Value,
        _ => SortTarget::Key,
    };
    RangeOptions {
        limit: req.limit,
        rev: req.revision,
        keys_only: req.keys_only,
        count_only: req.count_only,
        sort_order,
        sort_target,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    }
}

pub fn range(view: &impl KvRead, req: &RangeRequest) -> ExecResult<RangeResponse> {
    let result = view.range(&req.key, &req.range_end, &range_options(req))?;
    Ok(RangeResponse {
        header: Some(header(result.rev)),
        kvs: result.kvs.into_iter().map(to_pb).collect(),
        more: result.more,
        count: result.count,
    })
}

/// The newest kv of `key` as the view sees it.
fn get(view: &impl KvRead, key: &[u8]) -> ExecResult<Option<KeyValue>> {
    let result = view.range(key, &[], &RangeOptions::default())?;
    Ok(result.kvs.into_iter().next())
}

/// A put outside a txn: etcd looks the lease up first.
pub fn put(w: &mut WriteAt<'_, '_>, req: &PutRequest) -> ExecResult<PutResponse> {
    if req.lease != 0 && !w.has_lease(req.lease) {
        return Err(ApplyError::LeaseNotFound.into());
    }
    put_checked(w, req)
}

/// A put whose lease was already checked (`check_put`).
fn put_checked(w: &mut WriteAt<'_, '_>, req: &PutRequest) -> ExecResult<PutResponse> {
    let mut value = req.value.as_slice();
    let mut lease = req.lease;
    let existing;
    if req.ignore_value || req.ignore_lease {
        existing = get(w, &req.key)?.ok_or(ApplyError::KeyNotFound)?;
        if req.ignore_value {
            value = &existing.value;
        }
        if req.ignore_lease {
            lease = existing.lease;
        }
    }
    let prev = w.txn.put(&req.key, value, lease)?;
    w.note_lease(&req.key, prev.as_ref().map_or(0, |p| p.lease), lease);
    Ok(PutResponse {
        header: Some(header(w.txn.revision())),
        prev_kv: if req.prev_kv { prev.map(to_pb) } else { None },
    })
}

pub fn delete_range(
    w: &mut WriteAt<'_, '_>,
    req: &DeleteRangeRequest,
) -> ExecResult<DeleteRangeResponse> {
    let deleted = w
        .txn
        .delete_range_values(&req.key, &req.range_end, req.prev_kv)?;
    for kv in &deleted {
        w.note_lease(&kv.key, kv.lease, 0);
    }
    Ok(DeleteRangeResponse {
        header: Some(header(w.txn.revision())),
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv {
            deleted.into_iter().map(to_pb).collect()
        } else {
            Vec::new()
        },
    })
}

/// etcd's `isTxnReadonly`: every op of both branches is a Range (a nested txn counts as a write).
pub fn is_txn_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

/// etcd's `isTxnSerializable`: every range of both branches is serializable.
pub fn is_txn_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(range)) => range.serializable,
            _ => true,
        })
}

/// Runs a txn on the write transaction: decide, check, apply. Nothing is written on error.
pub fn txn(w: &mut WriteAt<'_, '_>, req: &TxnRequest) -> ExecResult<TxnResponse> {
    let path = decide(w, req)?;
    check(w, req, &path, Check::Puts)?;
    check(w, req, &path, Check::Ranges)?;
    let mut pos = 0;
    let mut resp = apply_ops(w, req, &path, &mut pos)?;
    debug_assert_eq!(pos, path.len());
    resp.header = Some(header(w.txn.revision()));
    Ok(resp)
}

/// Runs a read-only txn (`is_txn_read_only`) on a read view.
pub fn txn_read_only(view: &impl KvRead, req: &TxnRequest) -> ExecResult<TxnResponse> {
    debug_assert!(is_txn_read_only(req));
    let path = decide(view, req)?;
    check(view, req, &path, Check::Ranges)?;
    let ops = if path[0] { &req.success } else { &req.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(request_op::Request::RequestRange(range_req)) = &op.request else {
            unreachable!("read-only txn holds only ranges");
        };
        responses.push(ResponseOp {
            response: Some(response_op::Response::ResponseRange(range(
                view, range_req,
            )?)),
        });
    }
    Ok(TxnResponse {
        header: Some(header(view.rev())),
        succeeded: path[0],
        responses,
    })
}

/// etcd's `compareToPath`.
fn decide(view: &impl KvRead, req: &TxnRequest) -> ExecResult<Vec<bool>> {
    fn walk(view: &impl KvRead, req: &TxnRequest, path: &mut Vec<bool>) -> ExecResult<()> {
        let mut succeeded = true;
        for compare in &req.compare {
            if !holds(view, compare)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                walk(view, nested, path)?;
            }
        }
        Ok(())
    }
    let mut path = Vec::new();
    walk(view, req, &mut path)?;
    Ok(path)
}

/// etcd's `applyCompare`: the compare must hold for every key in the range; on no key, a VALUE
/// compare fails and the others compare against zero.
fn holds(view: &impl KvRead, compare: &Compare) -> ExecResult<bool> {
    let kvs = match view.range(&compare.key, &compare.range_end, &RangeOptions::default()) {
        Ok(result) => result.kvs,
        Err(MvccError::Store(error)) => return Err(ExecError::Store(MvccError::Store(error))),
        Err(_) => return Ok(false),
    };
    if kvs.is_empty() {
        if compare.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

/// etcd's `compareKV`: a target_union of the wrong kind compares as zero / empty, and an unknown
/// result holds.
fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let union = compare.target_union.as_ref();
    let number = |pick: fn(&TargetUnion) -> Option<i64>| union.and_then(pick).unwrap_or(0);
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let value = match union {
                Some(TargetUnion::Value(value)) => value.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(value)
        }
        Ok(CompareTarget::Version) => kv.version.cmp(&number(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&number(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&number(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&number(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        // etcd's switch leaves the result at 0 for an unknown target.
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Ranges,
}

/// etcd's `checkRequests` over the path: puts first (all of them), then ranges.
fn check(view: &impl KvRead, req: &TxnRequest, path: &[bool], what: Check) -> ExecResult<()> {
    fn walk(
        view: &impl KvRead,
        req: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
        what: Check,
    ) -> ExecResult<()> {
        let ops = if path[*pos] {
            &req.success
        } else {
            &req.failure
        };
        *pos += 1;
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestTxn(nested)) => {
                    walk(view, nested, path, pos, what)?;
                }
                Some(request_op::Request::RequestPut(put)) if what == Check::Puts => {
                    check_put(view, put)?;
                }
                Some(request_op::Request::RequestRange(range)) if what == Check::Ranges => {
                    check_range(view, range)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(view, req, path, &mut 0, what)
}

fn check_put(view: &impl KvRead, req: &PutRequest) -> ExecResult<()> {
    if (req.ignore_value || req.ignore_lease) && get(view, &req.key)?.is_none() {
        return Err(ApplyError::KeyNotFound.into());
    }
    if req.lease != 0 && !view.has_lease(req.lease) {
        return Err(ApplyError::LeaseNotFound.into());
    }
    Ok(())
}

fn check_range(view: &impl KvRead, req: &RangeRequest) -> ExecResult<()> {
    if req.revision == 0 {
        Ok(())
    } else if req.revision > view.rev() {
        Err(ApplyError::FutureRevision.into())
    } else if req.revision < view.first_rev() {
        Err(ApplyError::Compacted.into())
    } else {
        Ok(())
    }
}

/// etcd's `applyTxn`: the ops of the branch the path takes, nested txns recursively. A nested
/// txn's response header is empty, as in etcd.
fn apply_ops(
    w: &mut WriteAt<'_, '_>,
    req: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> ExecResult<TxnResponse> {
    let succeeded = path[*pos];
    *pos += 1;
    let ops: &[RequestOp] = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                Some(response_op::Response::ResponseRange(range(w, r)?))
            }
            Some(request_op::Request::RequestPut(p)) => {
                Some(response_op::Response::ResponsePut(put_checked(w, p)?))
            }
            Some(request_op::Request::RequestDeleteRange(d)) => Some(
                response_op::Response::ResponseDeleteRange(delete_range(w, d)?),
            ),
            Some(request_op::Request::RequestTxn(t)) => Some(response_op::Response::ResponseTxn(
                apply_ops(w, t, path, pos)?,
            )),
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}
