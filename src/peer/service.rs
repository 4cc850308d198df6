//! The receiving side: the `RaftPeer` gRPC service on `--listen-peer-urls`. Batches from members
//! of this cluster are decoded here, on the tokio thread, and handed to the raft loop one
//! message at a time through its bounded request queue (dropped when full: raft retransmits).

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::Message;
use ringkv_proto::ringkvpeerpb::raft_peer_server::RaftPeer;
use ringkv_proto::ringkvpeerpb::{
    BatchAck, Hello, LearnerReadyReply, LearnerReadyRequest, MembersReply, MembersRequest,
    MessageBatch, SnapshotAck, SnapshotChunk,
};
use tonic::{Request, Response, Status};

use super::{PeerContext, PeerError};

pub struct RaftPeerService {
    ctx: Arc<PeerContext>,
}

impl RaftPeerService {
    pub fn new(ctx: Arc<PeerContext>) -> RaftPeerService {
        RaftPeerService { ctx }
    }

    /// The caller must be another member of this cluster.
    fn check_sender(&self, cluster_id: u64, from: u64) -> Result<(), PeerError> {
        if cluster_id != self.ctx.cluster_id {
            return Err(PeerError::ClusterIdMismatch);
        }
        if self.ctx.members.is_removed(from) {
            return Err(PeerError::Removed);
        }
        if from == self.ctx.member_id || self.ctx.members.get(from).is_none() {
            return Err(PeerError::UnknownMember(from));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn send(&self, request: Request<MessageBatch>) -> Result<Response<BatchAck>, Status> {
        let batch = request.into_inner();
        self.check_sender(batch.cluster_id, batch.from)?;
        for bytes in &batch.messages {
            let msg = Message::parse_from_bytes(bytes).map_err(|_| PeerError::Undecodable)?;
            if msg.from != batch.from || msg.to != self.ctx.member_id {
                return Err(PeerError::Misaddressed {
                    from: msg.from,
                    to: msg.to,
                }
                .into());
            }
            match self.ctx.raft.step(msg) {
                Ok(()) | Err(crate::raft::RaftError::Overloaded { .. }) => {}
                Err(_) => return Err(PeerError::Stopped.into()),
            }
        }
        Ok(Response::new(BatchAck {}))
    }

    async fn send_snapshot(
        &self,
        request: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let ack = super::snapshot::receive(&self.ctx, request.into_inner(), |cluster, from| {
            self.check_sender(cluster, from)
        })
        .await?;
        Ok(Response::new(ack))
    }

    async fn greet(&self, request: Request<Hello>) -> Result<Response<Hello>, Status> {
        let hello = request.into_inner();
        self.check_sender(hello.cluster_id, hello.member_id)?;
        if let Err(e) = self
            .ctx
            .members
            .learn(hello.member_id, &hello.name, &hello.client_urls)
        {
            eprintln!("ringkv: warning: peer {:016x}: {e}", hello.member_id);
        }
        let local = self.ctx.members.local();
        Ok(Response::new(Hello {
            cluster_id: self.ctx.cluster_id,
            member_id: self.ctx.member_id,
            name: local.name,
            client_urls: local.client_urls,
        }))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersReply>, Status> {
        Ok(Response::new(MembersReply {
            cluster_id: self.ctx.cluster_id,
            image: self.ctx.members.image().encode(),
        }))
    }

    async fn learner_ready(
        &self,
        request: Request<LearnerReadyRequest>,
    ) -> Result<Response<LearnerReadyReply>, Status> {
        let req = request.into_inner();
        self.check_sender(req.cluster_id, req.from)?;
        let progress = self
            .ctx
            .raft
            .learner_progress(req.learner_id)
            .await
            .map_err(|e| match e {
                crate::raft::RaftError::NotLeader { .. } => PeerError::NotLeader,
                _ => PeerError::Stopped,
            })?;
        if !super::change::learner_ready(progress) {
            return Err(PeerError::LearnerNotReady(format!(
                "learner {:016x} has {:?} of the leader's {}",
                req.learner_id, progress.learner_match, progress.leader_match
            ))
            .into());
        }
        Ok(Response::new(LearnerReadyReply {}))
    }
}
