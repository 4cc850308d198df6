//! The building blocks of etcd's concurrency recipes (`clientv3/concurrency`: sessions, gets,
//! txns, `waitDelete`, `waitDeletes`) run inside the server for the Lock and Election services.
//!
//! etcd serves v3lock and v3election by running its client recipes against an in-process
//! client that carries the caller's credentials. ringkv runs the same steps directly:
//! - **Reads** are etcd's default client reads: linearizable (a ReadIndex first), permission
//!   checked for the caller, answered from MVCC.
//! - **Writes** are Txn / DeleteRange proposals made `propose_as` the caller, so the applier
//!   checks them against the auth state of their entry, as for a KV request.
//! - **Waits** are watchers on the in-process watch hub (one hub stream per wait), read-checked
//!   for the caller at creation as a Watch is.
//!
//! # Sessions
//! etcd's `NewSession(WithLease(id))` uses the caller's lease as is; lease 0 makes it grant a
//! new lease with the default session TTL (60 s). The server orphans the session at once, so
//! nothing keeps that lease alive: keys made under it vanish 60 s later unless the client
//! keeps the lease alive itself. `session_lease` does the same.
//!
//! # Keys
//! A participant's key is `<name>/<lease id in lower-case hex>` (Go's `%x` of a signed id, so a
//! negative id prints as `-` and the hex of its magnitude). The holder of a lock, or the leader
//! of an election, is the live key under `<name>/` with the lowest create revision; a waiter
//! waits for the key created just before its own to go, then looks again (`wait_deletes`).
//!
//! # Cancellation
//! A waiter whose client goes away (tonic drops the handler future) leaves its key behind
//! unless something removes it: etcd's recipes then delete it (Lock) or resign (Campaign).
//! [`CleanupOnDrop`] proposes that removal from a new task when the wait is dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use ringkv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ringkv_proto::etcdserverpb::{
    range_request, request_op, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use tokio::sync::Notify;

use crate::apply::entry::{ApplyError, OutcomeResult, ProposalRequest};
use crate::apply::exec::{self, ExecError, ReadAt};
use crate::mvcc::{prefix_end, EventKind};
use crate::watch::{CatchUp, Delivery, Hub, KeyRange, StreamHandle, WatchSpec};

use super::auth::Caller;
use super::{validate, ApiError, Context};

/// etcd's `defaultSessionTTL`: the TTL of the lease a session grants when given lease 0.
pub const SESSION_TTL_SECS: i64 = 60;

/// Lease ids tried when a granted session lease collides with an existing one.
const GRANT_ATTEMPTS_MAX: usize = 8;

/// Times a read re-checks permissions when the auth state moved under it (etcd's `doSerialize`).
const READ_ATTEMPTS_MAX: usize = 3;

/// The recipes' own failures; messages are etcd's (`clientv3/concurrency`, `v3election`), and
/// etcd returns them as plain errors, so clients see gRPC code Unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    /// Proclaim (or a Campaign that had to update its value) by a key that no longer leads.
    #[error("election: not leader")]
    NotLeader,
    /// Leader of an election nobody campaigns in.
    #[error("election: no leader")]
    NoLeader,
    /// A waiter's own key vanished (its lease expired or was revoked) while it waited.
    #[error("mutex: session is expired")]
    SessionExpired,
    /// Proclaim or Resign without a `leader`.
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// A wait ended because the history it needed was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read answered with a shape the recipe cannot use (a bug, reported rather than fatal).
    #[error("ringkv: unexpected response in {0}")]
    Unexpected(&'static str),
}

/// The recipes' view of the server, acting for one caller.
#[derive(Clone)]
pub struct Recipe {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
    caller: Caller,
}

impl Recipe {
    pub fn new(ctx: Arc<Context>, hub: Arc<Hub>, caller: Caller) -> Recipe {
        Recipe { ctx, hub, caller }
    }

    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// The lease a session for `lease` uses: `lease` itself, or for 0 a new lease of
    /// `SESSION_TTL_SECS` granted for the caller.
    pub async fn session_lease(&self, lease: i64) -> Result<i64, ApiError> {
        if lease != 0 {
            return Ok(lease);
        }
        for _ in 0..GRANT_ATTEMPTS_MAX {
            let id = random_lease_id();
            if self.ctx.lessor.contains(id) {
                continue;
            }
            let grant = ProposalRequest::LeaseGrant(LeaseGrantRequest {
                ttl: SESSION_TTL_SECS,
                id,
            });
            match self.ctx.propose_as(&self.caller, grant).await {
                Ok(OutcomeResult::LeaseGrant(resp)) => return Ok(resp.id),
                Ok(_) => return Err(RecipeError::Unexpected("session lease grant").into()),
                Err(ApiError::Apply(ApplyError::LeaseExists)) => {}
                Err(error) => return Err(error),
            }
        }
        Err(ApiError::Apply(ApplyError::LeaseExists))
    }

    /// A linearizable Range for the caller (etcd's default `client.Get`).
    pub async fn get(&self, req: RangeRequest) -> Result<RangeResponse, ApiError> {
        validate::check_range(&req)?;
        self.ctx.consensus.read_index().await?;
        let mut attempt = 0;
        let mut resp = loop {
            self.ctx
                .check_range(&self.caller, &req.key, &req.range_end)?;
            let resp = exec::range(&ReadAt::current(&self.ctx.mvcc), &req).map_err(exec_error)?;
            attempt += 1;
            if self.caller.is_current(&self.ctx) || attempt == READ_ATTEMPTS_MAX {
                break resp;
            }
        };
        self.ctx.fill(&mut resp.header);
        Ok(resp)
    }

    /// The live key under `prefix` created first (etcd's `Get(pfx, WithFirstCreate())`).
    pub async fn first_created(&self, prefix: &[u8]) -> Result<RangeResponse, ApiError> {
        self.get(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: range_request::SortOrder::Ascend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            ..RangeRequest::default()
        })
        .await
    }

    /// A Txn proposed for the caller, with the checks a KV Txn gets.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ApiError> {
        validate::check_txn(&req, self.ctx.limits.max_txn_ops)?;
        super::quota::check(&self.ctx, crate::apply::alarm::cost_txn(&req)).await?;
        let OutcomeResult::Txn(mut resp) = self
            .ctx
            .propose_as(&self.caller, ProposalRequest::Txn(req))
            .await?
        else {
            return Err(RecipeError::Unexpected("txn").into());
        };
        self.ctx.fill(&mut resp.header);
        Ok(resp)
    }

    /// Deletes `key` for the caller (etcd's `client.Delete(key)`).
    pub async fn delete(&self, key: Vec<u8>) -> Result<DeleteRangeResponse, ApiError> {
        let req = DeleteRangeRequest {
            key,
            ..DeleteRangeRequest::default()
        };
        validate::check_delete(&req)?;
        let OutcomeResult::DeleteRange(mut resp) = self
            .ctx
            .propose_as(&self.caller, ProposalRequest::DeleteRange(req))
            .await?
        else {
            return Err(RecipeError::Unexpected("delete").into());
        };
        self.ctx.fill(&mut resp.header);
        Ok(resp)
    }

    /// A watcher on `range` from `start_revision`, read-checked for the caller.
    pub fn watch(&self, range: KeyRange, start_revision: i64) -> Result<KeyWatch, ApiError> {
        let (key, end) = match &range {
            KeyRange::Single(key) => (key.clone(), Vec::new()),
            KeyRange::From(from) => (from.clone(), vec![0]),
            KeyRange::Between(from, end) => (from.clone(), end.clone()),
        };
        self.ctx.check_range(&self.caller, &key, &end)?;
        let stream = self.hub.open_stream();
        stream
            .create(WatchSpec {
                watch_id: 0,
                range,
                start_revision,
                no_put: false,
                no_delete: false,
            })
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        Ok(KeyWatch {
            wake: stream.wake(),
            stream,
            pending: VecDeque::new(),
        })
    }

    /// etcd's `waitDelete`: returns once `key` is deleted at or after `rev`.
    pub async fn wait_delete(&self, key: &[u8], rev: i64) -> Result<(), ApiError> {
        let mut watch = self.watch(KeyRange::Single(key.to_vec()), rev)?;
        loop {
            let delivery = watch.next().await?;
            if delivery.events.iter().any(|e| e.kind == EventKind::Delete) {
                return Ok(());
            }
        }
    }

    /// etcd's `waitDeletes`: returns, with the header of its last read, once no live key under
    /// `prefix` has a create revision at or below `max_create_rev`.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_rev: i64,
    ) -> Result<Option<ResponseHeader>, ApiError> {
        // Keys at or below `max_create_rev` can only go, never come (a new key gets a newer
        // revision), so the newest of them never gets newer: each round waits out one key.
        let mut newest = i64::MAX;
        loop {
            let resp = self
                .get(RangeRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    limit: 1,
                    sort_order: range_request::SortOrder::Descend as i32,
                    sort_target: range_request::SortTarget::Create as i32,
                    max_create_revision: max_create_rev,
                    ..RangeRequest::default()
                })
                .await?;
            let Some(last) = resp.kvs.first() else {
                return Ok(resp.header);
            };
            assert!(
                last.create_revision <= newest && last.create_revision <= max_create_rev,
                "waitDeletes: key {:?} created at {} reappeared above {newest}",
                last.key,
                last.create_revision
            );
            newest = last.create_revision;
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            self.wait_delete(&last.key, rev).await?;
        }
    }
}

/// A participant's key: `<name>/<lease in Go's %x>`.
pub fn session_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    key
}

/// The prefix every participant key of `name` has.
pub fn participants(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// `create_revision(key) == rev`.
pub fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

pub fn op_put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..PutRequest::default()
    }))
}

pub fn op_get(req: RangeRequest) -> RequestOp {
    op(request_op::Request::RequestRange(req))
}

pub fn op_get_key(key: &[u8]) -> RequestOp {
    op_get(RangeRequest {
        key: key.to_vec(),
        ..RangeRequest::default()
    })
}

/// `Get(prefix, WithFirstCreate())` as a txn op.
pub fn op_get_first_created(prefix: &[u8]) -> RequestOp {
    op_get(RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..RangeRequest::default()
    })
}

pub fn op_delete(key: &[u8]) -> RequestOp {
    op(request_op::Request::RequestDeleteRange(
        DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        },
    ))
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// The kvs of the `index`th response of a txn, which must be a range.
pub fn range_kvs(
    resp: &TxnResponse,
    index: usize,
) -> Result<&[ringkv_proto::mvccpb::KeyValue], RecipeError> {
    use ringkv_proto::etcdserverpb::response_op::Response;
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(range)) => Ok(&range.kvs),
        _ => Err(RecipeError::Unexpected("txn range")),
    }
}

/// One watcher on the hub, read delivery by delivery.
pub struct KeyWatch {
    stream: StreamHandle,
    wake: Arc<Notify>,
    pending: VecDeque<Delivery>,
}

impl KeyWatch {
    /// The next delivery (one or more events of one revision, or a catch-up batch), waiting as
    /// long as it takes; the server stopping or compaction ends the watch with an error.
    pub async fn next(&mut self) -> Result<Delivery, ApiError> {
        loop {
            if let Some(delivery) = self.pending.pop_front() {
                return Ok(delivery);
            }
            if self.stream.hub().is_stopped() {
                return Err(ApiError::Stopped);
            }
            self.pending.extend(self.stream.take_queued());
            if !self.pending.is_empty() {
                continue;
            }
            if self.stream.has_unsynced() {
                self.catch_up().await?;
                continue;
            }
            // A delivery queued since `take_queued` left a permit: this returns at once.
            self.wake.notified().await;
        }
    }

    async fn catch_up(&mut self) -> Result<(), ApiError> {
        let job = self.stream.catch_up_job();
        let steps = tokio::task::spawn_blocking(job)
            .await
            .map_err(|error| ApiError::Internal(format!("watch catch-up: {error}")))?
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        for step in steps {
            match step {
                CatchUp::Events(delivery) => self.pending.push_back(delivery),
                CatchUp::Compacted { .. } => return Err(RecipeError::Compacted.into()),
            }
        }
        Ok(())
    }
}

/// Proposes `request` for the caller from a new task if dropped while armed: the clean-up a
/// recipe owes when its client goes away mid-wait (see the module doc).
pub struct CleanupOnDrop {
    armed: Option<(Recipe, ProposalRequest)>,
}

impl CleanupOnDrop {
    pub fn new(recipe: &Recipe, request: ProposalRequest) -> CleanupOnDrop {
        CleanupOnDrop {
            armed: Some((recipe.clone(), request)),
        }
    }

    /// The wait ended on its own: nothing to clean up here.
    pub fn disarm(&mut self) {
        self.armed = None;
    }

    /// The wait failed: clean up now and wait for it, as etcd does before returning the error.
    pub async fn run(mut self) {
        if let Some((recipe, request)) = self.armed.take() {
            let _ = recipe.ctx.propose_as(&recipe.caller, request).await;
        }
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        let Some((recipe, request)) = self.armed.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = recipe.ctx.propose_as(&recipe.caller, request).await;
            });
        }
    }
}

fn exec_error(error: ExecError) -> ApiError {
    match error {
        ExecError::Refused(error) => ApiError::Apply(error),
        ExecError::Store(error) => ApiError::Internal(error.to_string()),
    }
}

/// A positive lease id for a session lease: random, so it cannot follow the Lease service's
/// sequence into a collision more than by chance (a collision is retried).
fn random_lease_id() -> i64 {
    let id = rand::random::<i64>() & i64::MAX;
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_print_the_lease_as_go_does() {
        assert_eq!(
            session_key(b"lk", 0x694d_7c2f_11aa),
            b"lk/694d7c2f11aa".to_vec()
        );
        assert_eq!(session_key(b"", 1), b"/1".to_vec());
        assert_eq!(session_key(b"n", -255), b"n/-ff".to_vec());
        assert_eq!(session_key(b"n", i64::MIN), b"n/-8000000000000000".to_vec());
    }

    #[test]
    fn participants_share_the_name_and_a_slash() {
        let prefix = participants(b"job");
        assert_eq!(prefix, b"job/".to_vec());
        assert!(session_key(b"job", 7).starts_with(&prefix));
        assert_eq!(prefix_end(&prefix), b"job0".to_vec());
    }
}
