//! etcd's Maintenance service: Status, Alarm (through raft), Defragment (the page store's
//! cleaner run to completion in bounded steps, online), Hash and HashKV (etcd's CRC-32C over
//! its bucket contents), Snapshot (a bbolt image streamed from a pinned view, see `snapshot`),
//! MoveLeader (raft's leader transfer, to a voter; see `move_leader`). Downgrade is etcd 3.5's and answers
//! Unimplemented.
//!
//! Work that reads the whole store (snapshot, hashes, defragment) runs off the gRPC threads:
//! on a blocking thread, or for a snapshot on a thread of its own that hands chunks to the
//! stream through a small bounded channel, so a slow receiver holds at most a few chunks.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use ringkv_proto::etcdserverpb::maintenance_server::Maintenance;
use ringkv_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use crate::apply::entry::{ApplyError, Outcome, OutcomeResult, Proposal, ProposalRequest};
use crate::mvcc::MvccError;
use crate::peer::Members;
use crate::snapshot::{self, SnapshotError};

use super::{quota, ApiError, Context};

/// The server version `Status` reports: etcd's API version, as etcd reports `3.5.x`.
const SERVER_VERSION: &str = "3.5.0";
/// Chunks a snapshot stream may hold between the image writer and the client.
const SNAPSHOT_QUEUE_CHUNKS: usize = 4;
/// Cleaner steps one Defragment may take; each moves at most `DEFRAG_SEGMENTS_PER_STEP`
/// segments, so this bounds the call while leaving room for any realistic store.
const DEFRAG_STEPS_MAX: usize = 100_000;
const DEFRAG_SEGMENTS_PER_STEP: usize = 4;
/// How long MoveLeader waits for the transferee to lead: etcdctl's default command timeout.
/// raft gives up a transfer after an election timeout, so a longer wait only waits for an
/// answer that is already "no".
const MOVE_LEADER_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// How often MoveLeader looks at the leader while it waits.
const MOVE_LEADER_POLL: std::time::Duration = std::time::Duration::from_millis(10);

pub struct MaintenanceService {
    ctx: Arc<Context>,
    members: Arc<Members>,
}

impl MaintenanceService {
    /// `members` answers Status's `isLearner` for this member.
    pub fn new(ctx: Arc<Context>, members: Arc<Members>) -> MaintenanceService {
        MaintenanceService { ctx, members }
    }

    /// etcd's `authMaintenanceServer`: these RPCs are for admins (the root role) only.
    fn admin<T>(&self, request: &Request<T>) -> Result<(), ApiError> {
        let untranslated = |error| match error {
            ApiError::Auth(error) => ApiError::MaintenanceAuth(error),
            other => other,
        };
        let caller = self.ctx.caller(request.metadata()).map_err(untranslated)?;
        self.ctx.check_admin(&caller).map_err(untranslated)
    }
}

fn snapshot_error(error: SnapshotError) -> ApiError {
    match error {
        SnapshotError::Mvcc(MvccError::Compacted) => ApiError::Apply(ApplyError::Compacted),
        SnapshotError::Mvcc(MvccError::FutureRevision) => {
            ApiError::Apply(ApplyError::FutureRevision)
        }
        other => ApiError::Internal(other.to_string()),
    }
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?
}

/// Runs the page store's cleaner until a step finds nothing to clean.
fn defragment(mvcc: &crate::mvcc::Mvcc) -> Result<(), ApiError> {
    for _ in 0..DEFRAG_STEPS_MAX {
        let report = mvcc
            .page_store()
            .clean(DEFRAG_SEGMENTS_PER_STEP)
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        if report.segments_cleaned == 0 {
            return Ok(());
        }
    }
    Ok(())
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = SnapshotStream;

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let raft = self.ctx.consensus.status();
        let space = self.ctx.mvcc.page_store().space();
        let mut errors = Vec::new();
        if raft.leader_id == 0 {
            errors.push(ApiError::NoLeader.to_string());
        }
        for alarm in quota::alarms(&self.ctx).get(0) {
            errors.push(alarm_text(alarm.member_id, alarm.alarm));
        }
        Ok(Response::new(StatusResponse {
            header: self.ctx.header(self.ctx.mvcc.current_revision()),
            version: SERVER_VERSION.to_owned(),
            db_size: space.file_bytes as i64,
            leader: raft.leader_id,
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            db_size_in_use: space.live_bytes as i64,
            errors,
            is_learner: self.members.is_learner(self.members.local_id()),
            ..StatusResponse::default()
        }))
    }

    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let data = Proposal::new(ProposalRequest::Alarm(request.into_inner())).encode_to_vec();
        let output = self
            .ctx
            .consensus
            .propose(data)
            .await
            .map_err(ApiError::from)?;
        let outcome = Outcome::decode(output.as_slice())
            .map_err(|error| ApiError::Internal(format!("undecodable apply outcome: {error}")))?;
        let Some(OutcomeResult::Alarm(mut resp)) = outcome.result else {
            return Err(ApiError::Internal(
                "apply answered an alarm with another kind of response".into(),
            )
            .into());
        };
        self.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&request)?;
        let mvcc = self.ctx.mvcc.clone();
        blocking(move || defragment(&mvcc)).await?;
        Ok(Response::new(DefragmentResponse {
            header: self.ctx.header(self.ctx.mvcc.current_revision()),
        }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&request)?;
        let mvcc = self.ctx.mvcc.clone();
        let (hash, revision) = blocking(move || {
            let view = mvcc
                .export()
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let hash = snapshot::backend_hash(&view).map_err(snapshot_error)?;
            Ok((hash, view.current_revision()))
        })
        .await?;
        Ok(Response::new(HashResponse {
            header: self.ctx.header(revision),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&request)?;
        let rev = request.into_inner().revision;
        let mvcc = self.ctx.mvcc.clone();
        let hashed = blocking(move || {
            let view = mvcc
                .export()
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            snapshot::hash_kv(&view, rev).map_err(snapshot_error)
        })
        .await?;
        Ok(Response::new(HashKvResponse {
            header: self.ctx.header(hashed.current_revision),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.hash_revision,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&request)?;
        // Pinned here, so the stream is the state when the call arrived.
        let view = self
            .ctx
            .mvcc
            .export()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let header = self.ctx.header(view.current_revision());
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE_CHUNKS);
        std::thread::Builder::new()
            .name("ringkv-snapshot".into())
            .spawn(move || {
                let mut header = header;
                let result = snapshot::write_image(&view, &mut |blob, remaining_bytes| {
                    let resp = SnapshotResponse {
                        header: header.take(),
                        remaining_bytes,
                        blob,
                        ..SnapshotResponse::default()
                    };
                    tx.blocking_send(Ok(resp))
                        .map_err(|_| SnapshotError::Closed)
                });
                match result {
                    Ok(_) | Err(SnapshotError::Closed) => {}
                    Err(error) => {
                        eprintln!("ringkv: error: snapshot stream failed: {error}");
                        let _ = tx.blocking_send(Err(Status::from(snapshot_error(error))));
                    }
                }
            })
            .map_err(|error| ApiError::Internal(format!("cannot start a snapshot: {error}")))?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    /// etcd's MoveLeader: only the leader takes it ("not leader" elsewhere; etcdctl finds the
    /// leader among its endpoints), only to a voter ("bad leader transferee"); then waits until
    /// the transferee leads, polling the status, up to `MOVE_LEADER_WAIT_MAX` (etcd waits for
    /// the client's deadline, which tonic also enforces here).
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.admin(&request)?;
        let target = request.into_inner().target_id;
        if self.ctx.consensus.status().leader_id != self.ctx.member_id {
            return Err(ApiError::NotLeader.into());
        }
        self.ctx
            .consensus
            .transfer_leader(target)
            .await
            .map_err(ApiError::from)?;
        let deadline = tokio::time::Instant::now() + MOVE_LEADER_WAIT_MAX;
        while self.ctx.consensus.status().leader_id != target {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::LeaderTransferTimeout.into());
            }
            tokio::time::sleep(MOVE_LEADER_POLL).await;
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.ctx.header(self.ctx.mvcc.current_revision()),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "ringkv does not implement Maintenance.Downgrade (etcd 3.5's cluster downgrade)",
        ))
    }
}

/// An alarm as etcd's `Status.errors` and `alarm list` print it: the protobuf text format of
/// `AlarmMember`.
pub fn alarm_text(member_id: u64, alarm: i32) -> String {
    let name = ringkv_proto::etcdserverpb::AlarmType::try_from(alarm)
        .map_or_else(|_| alarm.to_string(), |a| a.as_str_name().to_owned());
    format!("memberID:{member_id} alarm:{name} ")
}
