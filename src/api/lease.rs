//! etcd's Lease service (LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases)
//! and the leader's expiry loop, which proposes the revokes of expired leases.
//!
//! Grant and revoke go through raft (`apply::lease`). KeepAlive and TimeToLive are answered by
//! the leader's lessor, which alone keeps deadlines: a follower forwards them to the leader
//! (`lease_forward`) and answers with its own header, as etcd does. Leases is answered from
//! this member's lessor (every member applies grants and revokes). The leader's lessor is
//! promoted for its term by whichever of this service and the expiry loop notices the
//! leadership first (`Lessor::promote` is idempotent per term).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use ringkv_proto::etcdserverpb::lease_server::Lease;
use ringkv_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};
use tonic::{Request, Response, Status, Streaming};

use crate::apply::entry::{ApplyError, OutcomeResult, ProposalRequest};
use crate::lease::{LeaseConfig, LeaseError};

use super::lease_forward::{Attempt, LeaseForwarder, FORWARDED_HEADER};
use super::{ApiError, Context};

pub struct LeaseService {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<Context>,
    config: LeaseConfig,
    ids: IdGenerator,
    /// Where a follower sends KeepAlive and TimeToLive; `None`: answer "not leader".
    forwarder: Option<Arc<LeaseForwarder>>,
}

impl LeaseService {
    pub fn new(ctx: Arc<Context>, config: LeaseConfig) -> LeaseService {
        LeaseService::with_forwarder(ctx, config, None)
    }

    /// A service whose follower forwards KeepAlive and TimeToLive through `forwarder`.
    pub fn with_forwarder(
        ctx: Arc<Context>,
        config: LeaseConfig,
        forwarder: Option<Arc<LeaseForwarder>>,
    ) -> LeaseService {
        let ids = IdGenerator::new(ctx.member_id);
        LeaseService {
            inner: Arc::new(Inner {
                ctx,
                config,
                ids,
                forwarder,
            }),
        }
    }
}

/// Whether a request may be forwarded: not one forwarded to us already (one hop at most).
fn may_forward<T>(request: &Request<T>) -> bool {
    !request.metadata().contains_key(FORWARDED_HEADER)
}

impl Inner {
    /// This member must lead; its lessor is then promoted for the current term.
    fn primary(&self) -> Result<(), ApiError> {
        let status = self.ctx.consensus.status();
        if status.leader_id == 0 {
            return Err(ApiError::NoLeader);
        }
        if status.leader_id != self.ctx.member_id {
            return Err(ApiError::NotLeader);
        }
        self.ctx
            .lessor
            .promote(status.term, self.config.promote_extend);
        Ok(())
    }

    /// The forwarder, if this member has one, may use it, and does not lead.
    fn forwarder_for(&self, may_forward: bool) -> Option<&LeaseForwarder> {
        let forwarder = self.forwarder.as_deref().filter(|_| may_forward)?;
        (self.ctx.consensus.status().leader_id != self.ctx.member_id).then_some(forwarder)
    }

    /// A header with this member's ids, term and current revision.
    fn header(&self) -> Option<ResponseHeader> {
        let mut header = Some(ResponseHeader {
            revision: self.ctx.mvcc.current_revision(),
            ..ResponseHeader::default()
        });
        self.ctx.fill(&mut header);
        header
    }

    /// etcd's `LeaseRenew` on the leader: wait until everything committed is applied (so a
    /// revoke acknowledged elsewhere is seen), then renew. An unknown or expired lease answers
    /// TTL 0, which clients take as "expired or revoked".
    async fn keep_alive(
        &self,
        req: LeaseKeepAliveRequest,
        may_forward: bool,
    ) -> Result<LeaseKeepAliveResponse, ApiError> {
        // Before the renewal, as etcd does: the revision is never newer than the renewal.
        let header = self.header();
        if let Some(forwarder) = self.forwarder_for(may_forward) {
            let leader = || self.ctx.consensus.status().leader_id;
            if let Attempt::Done(result) = forwarder.keep_alive(leader, req.id).await {
                return result.map(|resp| LeaseKeepAliveResponse {
                    header,
                    id: req.id,
                    ttl: resp.ttl,
                });
            }
        }
        self.ctx.consensus.read_index().await?;
        self.primary()?;
        let ttl = match self.ctx.lessor.renew(req.id) {
            Ok(ttl) => ttl,
            Err(LeaseError::NotFound) => 0,
            Err(LeaseError::NotPrimary) => return Err(ApiError::NotLeader),
            Err(error) => return Err(ApiError::Internal(error.to_string())),
        };
        Ok(LeaseKeepAliveResponse {
            header,
            id: req.id,
            ttl,
        })
    }
}

/// etcd's `idutil.Generator`: the member id's low 16 bits, then the start time in milliseconds
/// (40 bits) and a counter (8 bits) that carries into it. Unique across restarts of a member
/// while its clock does not step back past the previous run; a collision is skipped, and a
/// lost race with a client-chosen id is answered "lease already exists", as in etcd. The wall
/// clock only seeds ids; it has no say in expiry.
struct IdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

impl IdGenerator {
    const SUFFIX_BITS: u32 = 48;
    const COUNTER_BITS: u32 = 8;

    fn new(member_id: u64) -> IdGenerator {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let low = |x: u64, bits: u32| x & ((1u64 << bits) - 1);
        IdGenerator {
            prefix: (member_id & 0xffff) << Self::SUFFIX_BITS,
            suffix: AtomicU64::new(
                low(millis, Self::SUFFIX_BITS - Self::COUNTER_BITS) << Self::COUNTER_BITS,
            ),
        }
    }

    /// A positive id (etcd clears the top bit).
    fn next(&self) -> i64 {
        let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        let id = self.prefix | (suffix & ((1u64 << Self::SUFFIX_BITS) - 1));
        (id & (i64::MAX as u64)) as i64
    }
}

/// Bounds the search for an unused id; the generator repeats only after 2^48 ids.
const ID_ATTEMPTS_MAX: usize = 1024;

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    /// etcd: an id of 0 is chosen by the server; a TTL below the minimum is raised to it. The
    /// too-large and already-exists checks are made when the entry applies.
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.inner.ctx.caller(request.metadata())?;
        let mut req = request.into_inner();
        let inner = &self.inner;
        req.ttl = req.ttl.max(inner.config.ttl_min_secs);
        if req.id == 0 {
            req.id = (0..ID_ATTEMPTS_MAX)
                .map(|_| inner.ids.next())
                .find(|&id| id != 0 && !inner.ctx.lessor.contains(id))
                .ok_or(ApiError::Apply(ApplyError::LeaseExists))?;
        }
        let OutcomeResult::LeaseGrant(mut resp) = inner
            .ctx
            .propose_as(&caller, ProposalRequest::LeaseGrant(req))
            .await?
        else {
            return Err(unexpected("lease grant"));
        };
        inner.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.inner.ctx.caller(request.metadata())?;
        let req = request.into_inner();
        let OutcomeResult::LeaseRevoke(mut resp) = self
            .inner
            .ctx
            .propose_as(&caller, ProposalRequest::LeaseRevoke(req))
            .await?
        else {
            return Err(unexpected("lease revoke"));
        };
        self.inner.ctx.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// One response per request, in order; the stream ends when the client's does, or after
    /// the first error (etcd ends the stream with it too).
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forward = may_forward(&request);
        let requests = request.into_inner();
        let inner = self.inner.clone();
        let responses = futures::stream::unfold(Some(requests), move |requests| {
            let inner = inner.clone();
            async move {
                let mut requests = requests?;
                let req = match requests.next().await? {
                    Ok(req) => req,
                    Err(status) => return Some((Err(status), None)),
                };
                match inner.keep_alive(req, forward).await {
                    Ok(resp) => Some((Ok(resp), Some(requests))),
                    Err(error) => Some((Err(error.into()), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    /// An unknown lease is not an error: TTL -1 (etcdctl prints "already expired").
    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let forward = may_forward(&request);
        let req = request.into_inner();
        let inner = &self.inner;
        if let Some(forwarder) = inner.forwarder_for(forward) {
            let leader = || inner.ctx.consensus.status().leader_id;
            if let Attempt::Done(result) = forwarder.time_to_live(leader, req).await {
                let mut resp = result?;
                // etcd answers with this member's header, whatever the leader's was.
                resp.header = inner.header();
                return Ok(Response::new(resp));
            }
        }
        inner
            .ctx
            .consensus
            .read_index()
            .await
            .map_err(ApiError::from)?;
        inner.primary()?;
        let resp = match inner.ctx.lessor.time_to_live(req.id, req.keys) {
            Some(ttl) => LeaseTimeToLiveResponse {
                header: inner.header(),
                id: req.id,
                ttl: ttl.remaining_secs,
                granted_ttl: ttl.granted_ttl_secs,
                keys: ttl.keys,
            },
            None => LeaseTimeToLiveResponse {
                header: inner.header(),
                id: req.id,
                ttl: -1,
                ..LeaseTimeToLiveResponse::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.inner.ctx.lessor.leases();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.inner.header(),
            leases: leases.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}

fn unexpected(what: &str) -> Status {
    ApiError::Internal(format!(
        "apply answered a {what} with another kind of response"
    ))
    .into()
}

/// The leader's expiry loop: every `expiry_check_interval`, follow the leadership (promote the
/// lessor for a new term, demote it on losing the lead), then propose the revokes of at most
/// `revokes_per_round` expired leases and wait for them. Runs until the task is dropped.
pub async fn run_expiry(ctx: Arc<Context>, config: LeaseConfig) {
    let mut ticks = tokio::time::interval(config.expiry_check_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let status = ctx.consensus.status();
        if status.leader_id != ctx.member_id {
            ctx.lessor.demote();
            continue;
        }
        ctx.lessor.promote(status.term, config.promote_extend);
        let expired = ctx
            .lessor
            .take_expired(config.revokes_per_round, config.expired_retry);
        let revokes = expired.into_iter().map(|id| {
            ctx.propose_internal(ProposalRequest::LeaseRevoke(LeaseRevokeRequest { id }))
        });
        let mut failed = 0usize;
        let mut first_error = None;
        for result in futures::future::join_all(revokes).await {
            match result {
                // Revoked meanwhile by a client: nothing left to do.
                Ok(_) | Err(ApiError::Apply(ApplyError::LeaseNotFound)) => {}
                Err(error) => {
                    failed += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            // They are proposed again after `expired_retry`.
            eprintln!("ringkv: warning: {failed} expired lease revokes failed: {error}");
        }
    }
}
