//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact. Reads are permission checked
//! here, writes by the applier (see `api::auth`).

use std::sync::Arc;

use ringkv_proto::etcdserverpb::kv_server::Kv;
use ringkv_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use crate::apply::entry::{OutcomeResult, ProposalRequest};
use crate::apply::exec::{self, ExecError, ReadAt};

use super::auth::Caller;
use super::{validate, ApiError, Context};

pub struct KvService {
    ctx: Arc<Context>,
}

impl KvService {
    pub fn new(ctx: Arc<Context>) -> KvService {
        KvService { ctx }
    }

    /// Proposes `request` for `caller` and waits for its outcome; refusals come back as errors.
    async fn propose(
        &self,
        caller: &Caller,
        request: ProposalRequest,
    ) -> Result<OutcomeResult, ApiError> {
        self.ctx.propose_as(caller, request).await
    }

    /// etcd's `doSerialize`: checks, reads, and reads again if the auth state moved meanwhile
    /// (the check may no longer hold); bounded, then the last check stands.
    fn serialize<T>(
        &self,
        caller: &Caller,
        check: impl Fn() -> Result<(), ApiError>,
        read: impl Fn() -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        const ATTEMPTS_MAX: usize = 3;
        let mut attempt = 0;
        loop {
            check()?;
            let result = read()?;
            attempt += 1;
            if caller.is_current(&self.ctx) || attempt == ATTEMPTS_MAX {
                return Ok(result);
            }
        }
    }

    async fn linearize(&self, serializable: bool) -> Result<(), ApiError> {
        if !serializable {
            self.ctx.consensus.read_index().await?;
        }
        Ok(())
    }
}

fn exec_error(error: ExecError) -> ApiError {
    match error {
        ExecError::Refused(error) => ApiError::Apply(error),
        ExecError::Store(error) => ApiError::Internal(error.to_string()),
    }
}

fn unexpected(what: &str) -> Status {
    ApiError::Internal(format!(
        "apply answered a {what} with another kind of response"
    ))
    .into()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = self.ctx.caller(request.metadata())?;
        let req = request.into_inner();
        validate::check_range(&req)?;
        self.linearize(req.serializable).await?;
        let mut resp = self.serialize(
            &caller,
            || self.ctx.check_range(&caller, &req.key, &req.range_end),
            || exec::range(&ReadAt::current(&self.ctx.mvcc), &req).map_err(exec_error),
        )?;
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.ctx.caller(request.metadata())?;
        let req = request.into_inner();
        validate::check_put(&req)?;
        super::quota::check(&self.ctx, crate::apply::alarm::cost_put(&req)).await?;
        let OutcomeResult::Put(mut resp) = self.propose(&caller, ProposalRequest::Put(req)).await?
        else {
            return Err(unexpected("put"));
        };
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.ctx.caller(request.metadata())?;
        let req = request.into_inner();
        validate::check_delete(&req)?;
        let OutcomeResult::DeleteRange(mut resp) = self
            .propose(&caller, ProposalRequest::DeleteRange(req))
            .await?
        else {
            return Err(unexpected("delete"));
        };
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.ctx.caller(request.metadata())?;
        let req = request.into_inner();
        validate::check_txn(&req, self.ctx.limits.max_txn_ops)?;
        // After the op count check, so a huge txn cannot make this quadratic.
        validate::check_intervals(&req.success)?;
        validate::check_intervals(&req.failure)?;
        let mut resp = if exec::is_txn_read_only(&req) {
            self.linearize(exec::is_txn_serializable(&req)).await?;
            self.serialize(
                &caller,
                || self.ctx.check_txn(&caller, &req),
                || exec::txn_read_only(&ReadAt::current(&self.ctx.mvcc), &req).map_err(exec_error),
            )?
        } else {
            super::quota::check(&self.ctx, crate::apply::alarm::cost_txn(&req)).await?;
            let OutcomeResult::Txn(resp) = self.propose(&caller, ProposalRequest::Txn(req)).await?
            else {
                return Err(unexpected("txn"));
            };
            resp
        };
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let caller = self.ctx.caller(request.metadata())?;
        let req = request.into_inner();
        let physical = req.physical;
        let OutcomeResult::Compaction(mut resp) = self
            .propose(&caller, ProposalRequest::Compaction(req))
            .await?
        else {
            return Err(unexpected("compaction"));
        };
        if physical {
            // The compactor thread may be running the same batches; each takes MVCC's writer
            // lock, so helping is safe, and returning means none is left.
            let mvcc = self.ctx.mvcc.clone();
            tokio::task::spawn_blocking(move || crate::apply::finish_compaction(&mvcc))
                .await
                .map_err(|error| ApiError::Internal(error.to_string()))?
                .map_err(|error| ApiError::Internal(error.to_string()))?;
        }
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
