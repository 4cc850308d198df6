//! etcd's Election service (v3election: Campaign, Proclaim, Leader, Observe, Resign) on etcd's
//! `clientv3/concurrency.Election` recipe, run in the server for the caller (see `api::recipe`).
//!
//! A candidate's key is `<name>/<lease hex>`; its value is the candidate's proposal. The leader
//! is the live key under `<name>/` with the lowest create revision. A `LeaderKey` names a
//! leadership: `{name, key, rev: the key's create revision, lease}`; Proclaim and Resign act
//! only while `key` still has create revision `rev` (it was not deleted and re-created since).
//!
//! - **Campaign**: put the key if absent (else, if its value differs, proclaim the new one, and
//!   on failure resign and fail), then wait for every key created before it to go. Answers with
//!   the header of the first txn, as etcd does. A client that goes away mid-wait resigns.
//! - **Proclaim**: `if create_revision(key) == rev then put(key, value, lease)`; else
//!   "election: not leader".
//! - **Resign**: `if create_revision(key) == rev then delete(key)`; succeeds either way.
//! - **Leader**: the first-created key, or "election: no leader".
//! - **Observe**: the current leader's key (waiting for a first put if there is none), then
//!   every later put to that key, then on its deletion the next leader; a read or watch
//!   failure ends the stream without an error, as in etcd. At most `OBSERVE_QUEUE_DEPTH`
//!   responses wait for a slow client; the observer then waits for it.
//!
//! Proclaim and Resign use the session of `leader.lease`, so lease 0 there grants a new
//! session lease (and Proclaim puts under it), exactly as etcd's server does.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use ringkv_proto::etcdserverpb::{ResponseHeader, TxnRequest};
use ringkv_proto::mvccpb::KeyValue;
use ringkv_proto::v3electionpb::election_server::Election;
use ringkv_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::apply::entry::ProposalRequest;
use crate::apply::exec;
use crate::mvcc::{prefix_end, EventKind};
use crate::watch::{Hub, KeyRange};

use super::error::recipe_status;
use super::recipe::{self, CleanupOnDrop, Recipe, RecipeError};
use super::{ApiError, Context};

/// Observe responses queued for a client that has not read them yet.
const OBSERVE_QUEUE_DEPTH: usize = 16;

pub struct ElectionService {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
}

impl ElectionService {
    pub fn new(ctx: Arc<Context>, hub: Arc<Hub>) -> ElectionService {
        ElectionService { ctx, hub }
    }

    fn recipe(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Recipe, ApiError> {
        let caller = self.ctx.caller(metadata)?;
        Ok(Recipe::new(self.ctx.clone(), self.hub.clone(), caller))
    }
}

/// `if create_revision(key) == rev then put(key, value, lease)`: false when `key` no longer
/// leads with that revision.
async fn proclaim(
    recipe: &Recipe,
    leader: &LeaderKey,
    value: &[u8],
) -> Result<Option<ResponseHeader>, ApiError> {
    let resp = recipe
        .txn(TxnRequest {
            compare: vec![recipe::created_at(&leader.key, leader.rev)],
            success: vec![recipe::op_put(&leader.key, value, leader.lease)],
            failure: Vec::new(),
        })
        .await?;
    if !resp.succeeded {
        return Err(RecipeError::NotLeader.into());
    }
    Ok(resp.header)
}

fn resign_request(leader: &LeaderKey) -> ProposalRequest {
    ProposalRequest::Txn(TxnRequest {
        compare: vec![recipe::created_at(&leader.key, leader.rev)],
        success: vec![recipe::op_delete(&leader.key)],
        failure: Vec::new(),
    })
}

async fn resign(recipe: &Recipe, leader: &LeaderKey) -> Result<Option<ResponseHeader>, ApiError> {
    let ProposalRequest::Txn(txn) = resign_request(leader) else {
        unreachable!("resign is a txn");
    };
    Ok(recipe.txn(txn).await?.header)
}

/// etcd's `Election.Campaign` with `lease`: the leadership won and the header to answer with.
async fn campaign(
    recipe: &Recipe,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(LeaderKey, Option<ResponseHeader>), ApiError> {
    let prefix = recipe::participants(name);
    let key = recipe::session_key(name, lease);
    let resp = recipe
        .txn(TxnRequest {
            compare: vec![recipe::created_at(&key, 0)],
            success: vec![recipe::op_put(&key, value, lease)],
            failure: vec![recipe::op_get_key(&key)],
        })
        .await?;
    let mut leader = LeaderKey {
        name: name.to_vec(),
        key,
        rev: resp.header.as_ref().map_or(0, |h| h.revision),
        lease,
    };
    if !resp.succeeded {
        let kv = recipe::range_kvs(&resp, 0)?
            .first()
            .ok_or(RecipeError::Unexpected("campaign txn"))?;
        leader.rev = kv.create_revision;
        if kv.value != value {
            if let Err(error) = proclaim(recipe, &leader, value).await {
                let _ = resign(recipe, &leader).await;
                return Err(error);
            }
        }
    }
    let mut cleanup = CleanupOnDrop::new(recipe, resign_request(&leader));
    let waited = recipe.wait_deletes(&prefix, leader.rev - 1).await;
    // etcd resigns only when its caller went away (the drop above); another failure leaves
    // the key in place.
    cleanup.disarm();
    waited?;
    Ok((leader, resp.header))
}

/// etcd's `Election.observe`: sends leader responses until the client goes or a step fails.
async fn observe(
    recipe: &Recipe,
    name: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), ApiError> {
    let prefix = recipe::participants(name);
    loop {
        let resp = recipe.first_created(&prefix).await?;
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let (header, kv) = if let Some(kv) = resp.kvs.into_iter().next() {
            (resp.header, kv)
        } else {
            first_put(recipe, &prefix, rev).await?
        };
        let watch_from = header.as_ref().map_or(0, |h| h.revision) + 1;
        let key = kv.key.clone();
        send(tx, header, kv).await?;
        let mut watch = recipe.watch(KeyRange::Single(key), watch_from)?;
        'leader: loop {
            let delivery = watch.next().await?;
            for event in delivery.events {
                if event.kind == EventKind::Delete {
                    break 'leader;
                }
                let header = recipe.ctx().header(delivery.header_revision);
                send(tx, header, exec::to_pb(event.kv)).await?;
            }
        }
    }
}

/// The first put under `prefix` from `rev` on, with a header at its revision.
async fn first_put(
    recipe: &Recipe,
    prefix: &[u8],
    rev: i64,
) -> Result<(Option<ResponseHeader>, KeyValue), ApiError> {
    let range = KeyRange::Between(prefix.to_vec(), prefix_end(prefix));
    let mut watch = recipe.watch(range, rev)?;
    loop {
        let delivery = watch.next().await?;
        // Only puts: a delete would make the observer spin (etcd's comment).
        if let Some(event) = delivery
            .events
            .into_iter()
            .find(|e| e.kind == EventKind::Put)
        {
            let header = recipe.ctx().header(event.kv.mod_revision);
            return Ok((header, exec::to_pb(event.kv)));
        }
    }
}

async fn send(
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
    header: Option<ResponseHeader>,
    kv: KeyValue,
) -> Result<(), ApiError> {
    tx.send(Ok(LeaderResponse {
        header,
        kv: Some(kv),
    }))
    .await
    .map_err(|_| ApiError::Stopped)
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

impl ElectionService {
    async fn serve_campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<CampaignResponse, ApiError> {
        let recipe = self.recipe(request.metadata())?;
        let req = request.into_inner();
        let lease = recipe.session_lease(req.lease).await?;
        let (leader, header) = campaign(&recipe, &req.name, lease, &req.value).await?;
        Ok(CampaignResponse {
            header,
            leader: Some(leader),
        })
    }

    async fn serve_proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<ProclaimResponse, ApiError> {
        let req = request.get_ref();
        let mut leader = req.leader.clone().ok_or(RecipeError::MissingLeaderKey)?;
        let recipe = self.recipe(request.metadata())?;
        leader.lease = recipe.session_lease(leader.lease).await?;
        let header = proclaim(&recipe, &leader, &req.value).await?;
        Ok(ProclaimResponse { header })
    }

    async fn serve_leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<LeaderResponse, ApiError> {
        let recipe = self.recipe(request.metadata())?;
        let prefix = recipe::participants(&request.get_ref().name);
        let resp = recipe.first_created(&prefix).await?;
        let kv = resp.kvs.into_iter().next().ok_or(RecipeError::NoLeader)?;
        Ok(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        })
    }

    async fn serve_resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<ResignResponse, ApiError> {
        let mut leader = request
            .get_ref()
            .leader
            .clone()
            .ok_or(RecipeError::MissingLeaderKey)?;
        let recipe = self.recipe(request.metadata())?;
        leader.lease = recipe.session_lease(leader.lease).await?;
        let header = resign(&recipe, &leader).await?;
        Ok(ResignResponse { header })
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.serve_campaign(request)
            .await
            .map(Response::new)
            .map_err(|error| recipe_status(&error))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        self.serve_proclaim(request)
            .await
            .map(Response::new)
            .map_err(|error| recipe_status(&error))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.serve_leader(request)
            .await
            .map(Response::new)
            .map_err(|error| recipe_status(&error))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE_DEPTH);
        // Even a bad token only ends the stream: etcd meets it in the observer's first read.
        if let Ok(recipe) = self.recipe(request.metadata()) {
            let name = request.into_inner().name;
            tokio::spawn(async move {
                tokio::select! {
                    () = tx.closed() => {}
                    // A failed step ends the stream quietly, as etcd's closed channel does.
                    _ = observe(&recipe, &name, &tx) => {}
                }
            });
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        self.serve_resign(request)
            .await
            .map(Response::new)
            .map_err(|error| recipe_status(&error))
    }
}
