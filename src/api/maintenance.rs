//! etcd's Maintenance service: only `Status` (for `etcdctl endpoint status`); every other method
//! answers Unimplemented.

use std::sync::Arc;

use ringkv_proto::etcdserverpb::maintenance_server::Maintenance;
use ringkv_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use super::Context;

/// The server version `Status` reports: etcd's API version, as etcd reports `3.5.x`.
const SERVER_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    ctx: Arc<Context>,
}

impl MaintenanceService {
    pub fn new(ctx: Arc<Context>) -> MaintenanceService {
        MaintenanceService { ctx }
    }
}

fn unimplemented<T>(method: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "ringkv does not implement Maintenance.{method} yet"
    )))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = tokio_stream::Empty<Result<SnapshotResponse, Status>>;

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let raft = self.ctx.consensus.status();
        let space = self.ctx.mvcc.page_store().space();
        let mut header = Some(ringkv_proto::etcdserverpb::ResponseHeader {
            revision: self.ctx.mvcc.current_revision(),
            ..Default::default()
        });
        self.ctx.fill(&mut header);
        Ok(Response::new(StatusResponse {
            header,
            version: SERVER_VERSION.to_owned(),
            db_size: space.file_bytes as i64,
            leader: raft.leader_id,
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            db_size_in_use: space.live_bytes as i64,
            ..StatusResponse::default()
        }))
    }

    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        unimplemented("Alarm")
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        unimplemented("Defragment")
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        unimplemented("Hash")
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        unimplemented("HashKV")
    }

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        unimplemented("Snapshot")
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        unimplemented("MoveLeader")
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        unimplemented("Downgrade")
    }
}
