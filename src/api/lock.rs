//! etcd's Lock service (v3lock: Lock, Unlock): a distributed mutex on etcd's
//! `clientv3/concurrency.Mutex` recipe, run in the server for the caller (see `api::recipe`).
//!
//! # Lock(name, lease)
//! 1. One txn: if `<name>/<lease hex>` was never created, put it (empty value, the caller's
//!    lease) and read the first-created key under `<name>/`; else read the key itself and the
//!    first-created key. `my_rev` is the txn's revision, or the existing key's create revision
//!    (the same lease locking again re-enters the same wait).
//! 2. If no key precedes ours (the first-created is ours), the lock is held: answer with the
//!    txn's header.
//! 3. Else wait until every key under `<name>/` created before `my_rev` is gone
//!    (`wait_deletes`), then read our key again: if it is gone too, our lease expired or was
//!    revoked while we waited, and the answer is etcd's "mutex: session is expired". Otherwise
//!    the lock is held, and the header is that read's.
//!
//! A failed wait (or final read) deletes our key before answering, as does a client that goes away mid-wait
//! (etcd's `Unlock` on a cancelled `Lock`). Holding the lock means nothing more than owning the
//! oldest key: it ends when the key is deleted (Unlock, lease expiry or revoke, any Delete).
//!
//! # Unlock(key)
//! Deletes `key` (a plain DeleteRange of one key for the caller), whoever holds it.

use std::sync::Arc;

use ringkv_proto::etcdserverpb::{ResponseHeader, TxnRequest};
use ringkv_proto::v3lockpb::lock_server::Lock;
use ringkv_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use crate::apply::entry::ProposalRequest;
use crate::watch::Hub;

use super::error::recipe_status;
use super::recipe::{self, CleanupOnDrop, Recipe, RecipeError};
use super::{ApiError, Context};

pub struct LockService {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
}

impl LockService {
    pub fn new(ctx: Arc<Context>, hub: Arc<Hub>) -> LockService {
        LockService { ctx, hub }
    }

    fn recipe(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Recipe, ApiError> {
        let caller = self.ctx.caller(metadata)?;
        Ok(Recipe::new(self.ctx.clone(), self.hub.clone(), caller))
    }
}

/// etcd's `Mutex.Lock` for `lease`: the key held and the header to answer with.
pub async fn lock(
    recipe: &Recipe,
    name: &[u8],
    lease: i64,
) -> Result<(Vec<u8>, Option<ResponseHeader>), ApiError> {
    let prefix = recipe::participants(name);
    let key = recipe::session_key(name, lease);
    let resp = recipe
        .txn(TxnRequest {
            compare: vec![recipe::created_at(&key, 0)],
            success: vec![
                recipe::op_put(&key, b"", lease),
                recipe::op_get_first_created(&prefix),
            ],
            failure: vec![
                recipe::op_get_key(&key),
                recipe::op_get_first_created(&prefix),
            ],
        })
        .await?;
    let my_rev = if resp.succeeded {
        resp.header.as_ref().map_or(0, |h| h.revision)
    } else {
        recipe::range_kvs(&resp, 0)?
            .first()
            .ok_or(RecipeError::Unexpected("lock txn"))?
            .create_revision
    };
    let owner = recipe::range_kvs(&resp, 1)?;
    if owner.first().is_none_or(|kv| kv.create_revision == my_rev) {
        return Ok((key, resp.header));
    }
    let mut cleanup = CleanupOnDrop::new(recipe, delete_request(&key));
    let mine = match recipe.wait_deletes(&prefix, my_rev - 1).await {
        Ok(_) => recipe.get(get_request(&key)).await,
        Err(error) => Err(error),
    };
    let mine = match mine {
        Ok(mine) => mine,
        Err(error) => {
            cleanup.run().await;
            return Err(error);
        }
    };
    cleanup.disarm();
    if mine.kvs.is_empty() {
        return Err(RecipeError::SessionExpired.into());
    }
    Ok((key, mine.header))
}

fn delete_request(key: &[u8]) -> ProposalRequest {
    ProposalRequest::DeleteRange(ringkv_proto::etcdserverpb::DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

fn get_request(key: &[u8]) -> ringkv_proto::etcdserverpb::RangeRequest {
    ringkv_proto::etcdserverpb::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

impl LockService {
    async fn serve_lock(&self, request: Request<LockRequest>) -> Result<LockResponse, ApiError> {
        let recipe = self.recipe(request.metadata())?;
        let req = request.into_inner();
        let lease = recipe.session_lease(req.lease).await?;
        let (key, header) = lock(&recipe, &req.name, lease).await?;
        Ok(LockResponse { header, key })
    }

    async fn serve_unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<UnlockResponse, ApiError> {
        let recipe = self.recipe(request.metadata())?;
        let req = request.into_inner();
        let resp = recipe.delete(req.key).await?;
        Ok(UnlockResponse {
            header: resp.header,
        })
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.serve_lock(request)
            .await
            .map(Response::new)
            .map_err(|error| recipe_status(&error))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.serve_unlock(request)
            .await
            .map(Response::new)
            .map_err(|error| recipe_status(&error))
    }
}
