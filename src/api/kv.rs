//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use ringkv_proto::etcdserverpb::kv_server::Kv;
use ringkv_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use crate::apply::entry::{OutcomeResult, ProposalRequest};
use crate::apply::exec::{self, ExecError, ReadAt};

use super::{validate, ApiError, Context};

pub struct KvService {
    ctx: Arc<Context>,
}

impl KvService {
    pub fn new(ctx: Arc<Context>) -> KvService {
        KvService { ctx }
    }

    /// Proposes `request` and waits for its outcome; refusals come back as errors.
    async fn propose(&self, request: ProposalRequest) -> Result<OutcomeResult, ApiError> {
        self.ctx.propose(request).await
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
        let req = request.into_inner();
        validate::check_range(&req)?;
        self.linearize(req.serializable).await?;
        let mut resp = exec::range(&ReadAt::current(&self.ctx.mvcc), &req).map_err(exec_error)?;
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::check_put(&req)?;
        super::quota::check(&self.ctx, crate::apply::alarm::cost_put(&req)).await?;
        let OutcomeResult::Put(mut resp) = self.propose(ProposalRequest::Put(req)).await? else {
            return Err(unexpected("put"));
        };
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_delete(&req)?;
        let OutcomeResult::DeleteRange(mut resp) =
            self.propose(ProposalRequest::DeleteRange(req)).await?
        else {
            return Err(unexpected("delete"));
        };
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::check_txn(&req, self.ctx.limits.max_txn_ops)?;
        // After the op count check, so a huge txn cannot make this quadratic.
        validate::check_intervals(&req.success)?;
        validate::check_intervals(&req.failure)?;
        let mut resp = if exec::is_txn_read_only(&req) {
            self.linearize(exec::is_txn_serializable(&req)).await?;
            exec::txn_read_only(&ReadAt::current(&self.ctx.mvcc), &req).map_err(exec_error)?
        } else {
            super::quota::check(&self.ctx, crate::apply::alarm::cost_txn(&req)).await?;
            let OutcomeResult::Txn(resp) = self.propose(ProposalRequest::Txn(req)).await? else {
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
        let req = request.into_inner();
        let physical = req.physical;
        let OutcomeResult::Compaction(mut resp) =
            self.propose(ProposalRequest::Compaction(req)).await?
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
