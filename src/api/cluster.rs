//! etcd's Cluster service: `MemberList` over the membership record (`peer::Members`), and
//! membership changes through raft conf changes ([`MembershipControl`], wired in
//! `server::cluster`), with etcd 3.4's checks in etcd's order (`v3rpc/member.go`, then
//! `EtcdServer.{Add,Remove,Update,Promote}Member` with its strict reconfiguration checks, then
//! the apply-time `ValidateConfigurationChange`, which the record repeats when the change
//! commits: `peer::members::MembershipImage::check`).
//!
//! | request | check | answer when it fails |
//! |---|---|---|
//! | add | peer URLs parse (etcd's `types.NewURLs`) | InvalidArgument "etcdserver: given member URLs are invalid" |
//! | add a voter | the started voters stay a quorum with the new one (`IsReadyToAddVotingMember`) | FailedPrecondition "etcdserver: re-configuration failed due to not enough started members" |
//! | add | every other voter connected to this member for 5 s (`isConnectedFullySince`) | Unavailable "etcdserver: unhealthy cluster" |
//! | add | id (from peer URLs and the time, in seconds) not taken / URLs not taken / at most one learner | "etcdserver: member ID already exist" / "etcdserver: Peer URLs already exists" / "etcdserver: too many learner members in cluster" (FailedPrecondition) |
//! | remove a voter | the started voters without it are a quorum (`IsReadyToRemoveVotingMember`) | "...not enough started members" |
//! | remove a voter that is connected | the voters connected for 5 s without it are a quorum (`mayRemoveMember`) | "etcdserver: unhealthy cluster" |
//! | remove / update / promote | a member (a removed id too: etcd maps `ErrIDRemoved` to it) | NotFound "etcdserver: member not found" |
//! | promote | on the leader (asked over the peer protocol from a follower), the learner's log at 90% of the leader's | FailedPrecondition "etcdserver: can only promote a learner member which is in sync with leader" |
//! | promote | a learner; the started voters with it a quorum | "etcdserver: can only promote a learner member" / "...not enough started members" |
//! | update | peer URLs parse (ringkv's check: etcd stores what it is given); not another member's | "...given member URLs are invalid" / "...Peer URLs already exists" |
//!
//! A change answers once it has applied on this member, with the membership after it. A
//! member started alone has a fixed membership (no peer transport): changes other than the
//! refusals above answer Unimplemented.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::cluster_server::Cluster;
use ringkv_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use tonic::{Request, Response, Status};

use crate::config::Url;
use crate::peer::{Change, MemberInfo, Members};

use super::{ApiError, Context};

/// Peer URLs accepted in one request; etcd has no bound, but a member has a handful.
const PEER_URLS_MAX: usize = 64;

/// etcd's `HealthInterval`: how long every voter must have been connected before a member add.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The membership changes behind the API (raft and the peer transport).
#[tonic::async_trait]
pub trait MembershipControl: Send + Sync + 'static {
    /// The id of a member added now at `peer_urls` (etcd's `NewMember` with the time).
    fn new_member_id(&self, peer_urls: &[String]) -> u64;
    /// Proposes `change` and waits until it has applied on this member; `is_learner` says what
    /// the member of an update is.
    async fn change(&self, change: Change, is_learner: bool) -> Result<(), ApiError>;
    /// Asks the leader whether learner `id` is in sync enough to be promoted.
    async fn learner_ready(&self, id: u64) -> Result<(), ApiError>;
    /// Since when this member has been connected to peer `id`; `None` if it is not now.
    fn active_since(&self, id: u64) -> Option<Instant>;
}

fn to_proto(member: MemberInfo) -> Member {
    Member {
        id: member.id,
        name: member.name,
        peer_ur_ls: member.peer_urls,
        client_ur_ls: member.client_urls,
        is_learner: member.is_learner,
    }
}

pub struct ClusterService {
    ctx: Arc<Context>,
    members: Arc<Members>,
    /// `None`: a member started alone, whose membership is fixed.
    control: Option<Arc<dyn MembershipControl>>,
}

impl ClusterService {
    pub fn new(
        ctx: Arc<Context>,
        members: Arc<Members>,
        control: Option<Arc<dyn MembershipControl>>,
    ) -> ClusterService {
        assert_eq!(
            ctx.member_id,
            members.local_id(),
            "the local member is this server"
        );
        ClusterService {
            ctx,
            members,
            control,
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        let mut header = None;
        self.ctx.fill(&mut header);
        header
    }

    fn members(&self) -> Vec<Member> {
        self.members.list().into_iter().map(to_proto).collect()
    }

    /// etcd's `types.NewURLs` check, then its sorted, normalised form.
    fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, ApiError> {
        if urls.is_empty() || urls.len() > PEER_URLS_MAX {
            return Err(ApiError::MemberBadUrls);
        }
        let mut parsed = urls
            .iter()
            .map(|url| Url::parse(url).map(|url| url.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ApiError::MemberBadUrls)?;
        parsed.sort();
        Ok(parsed)
    }

    fn control(&self, what: &'static str) -> Result<&Arc<dyn MembershipControl>, ApiError> {
        self.control
            .as_ref()
            .ok_or(ApiError::MembershipUnsupported(what))
    }

    fn voters(&self) -> Vec<MemberInfo> {
        self.members
            .list()
            .into_iter()
            .filter(|m| !m.is_learner)
            .collect()
    }

    /// etcd's `isConnectedFullySince`: every voter but this member connected since `since`.
    fn connected_fully(&self, control: &dyn MembershipControl, since: Instant) -> bool {
        self.voters()
            .iter()
            .filter(|m| m.id != self.ctx.member_id)
            .all(|m| control.active_since(m.id).is_some_and(|t| t <= since))
    }

    /// etcd's `mayAddMember`.
    fn may_add(&self, control: &dyn MembershipControl, is_learner: bool) -> Result<(), ApiError> {
        if !is_learner {
            let voters = self.voters();
            let started = voters.iter().filter(|m| !m.name.is_empty()).count();
            if started < quorum(voters.len() + 1) {
                return Err(ApiError::MemberNotEnoughStarted);
            }
        }
        let since = Instant::now().checked_sub(HEALTH_INTERVAL);
        if !since.is_some_and(|since| self.connected_fully(control, since)) {
            return Err(ApiError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `mayRemoveMember` (without a control: only the started-voters rule).
    fn may_remove(&self, control: Option<&dyn MembershipControl>, id: u64) -> Result<(), ApiError> {
        if self.members.get(id).is_some_and(|m| m.is_learner) {
            return Ok(());
        }
        let voters = self.voters();
        let others: Vec<&MemberInfo> = voters.iter().filter(|m| m.id != id).collect();
        let started = others.iter().filter(|m| !m.name.is_empty()).count();
        if started < quorum(others.len()) {
            return Err(ApiError::MemberNotEnoughStarted);
        }
        let Some(control) = control else {
            return Ok(());
        };
        // A member that is down is not part of the active quorum: safe to remove.
        if id != self.ctx.member_id && control.active_since(id).is_none() {
            return Ok(());
        }
        let since = Instant::now().checked_sub(HEALTH_INTERVAL);
        let active = voters
            .iter()
            .filter(|m| {
                m.id == self.ctx.member_id
                    || control
                        .active_since(m.id)
                        .is_some_and(|t| since.is_some_and(|since| t <= since))
            })
            .count();
        // etcd: `(active - 1) < 1 + (len(voters) - 1) / 2` breaks the active quorum.
        if active < voters.len().saturating_sub(1) / 2 + 2 {
            return Err(ApiError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `IsReadyToPromoteMember`.
    fn may_promote(&self, id: u64) -> Result<(), ApiError> {
        let voters = self.voters();
        let mut started = voters.iter().filter(|m| !m.name.is_empty()).count();
        if self
            .members
            .get(id)
            .is_some_and(|m| m.is_learner && !m.name.is_empty())
        {
            started += 1;
        }
        if started < quorum(voters.len() + 1) {
            return Err(ApiError::MemberNotEnoughStarted);
        }
        Ok(())
    }
}

/// A majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        let urls = Self::parse_peer_urls(&req.peer_ur_ls)?;
        let Some(control) = self.control.as_ref() else {
            // What etcd would refuse anyway, before saying it cannot be done here.
            let taken = self
                .members
                .list()
                .into_iter()
                .flat_map(|m| m.peer_urls)
                .any(|url| urls.contains(&url));
            if taken {
                return Err(ApiError::PeerUrlExists.into());
            }
            return Err(ApiError::MembershipUnsupported("member add").into());
        };
        self.may_add(control.as_ref(), req.is_learner)?;
        let member = MemberInfo {
            id: control.new_member_id(&urls),
            name: String::new(),
            peer_urls: urls,
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let change = Change::Add(member.clone());
        self.members.check(&change).map_err(ApiError::from)?;
        control.change(change, req.is_learner).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(to_proto(member)),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let control = self.control.as_deref();
        if self.members.get(id).is_none() {
            return Err(ApiError::MemberNotFound.into());
        }
        self.may_remove(control, id)?;
        let control = self.control("member remove")?;
        let change = Change::Remove(id);
        self.members.check(&change).map_err(ApiError::from)?;
        control.change(change, false).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        let Some(member) = self.members.get(req.id) else {
            return Err(ApiError::MemberNotFound.into());
        };
        let urls = Self::parse_peer_urls(&req.peer_ur_ls)?;
        let mut known = member.peer_urls.clone();
        known.sort();
        let control = match self.control("changing a member's peer URLs") {
            Ok(control) => control,
            // The same URLs change nothing: etcd answers success.
            Err(_) if urls == known => {
                return Ok(Response::new(MemberUpdateResponse {
                    header: self.header(),
                    members: self.members(),
                }))
            }
            Err(e) => return Err(e.into()),
        };
        let change = Change::Update {
            id: req.id,
            peer_urls: urls,
        };
        self.members.check(&change).map_err(ApiError::from)?;
        control.change(change, member.is_learner).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.ctx
                .consensus
                .read_index()
                .await
                .map_err(ApiError::from)?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let Some(member) = self.members.get(id) else {
            return Err(ApiError::MemberNotFound.into());
        };
        let Some(control) = self.control.as_ref() else {
            return Err(ApiError::MemberNotLearner.into());
        };
        if member.is_learner {
            control.learner_ready(id).await?;
        }
        let change = Change::Promote(id);
        self.members.check(&change).map_err(ApiError::from)?;
        self.may_promote(id)?;
        control.change(change, false).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_and_normalised_as_etcd_does() {
        let urls = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            ClusterService::parse_peer_urls(&urls(&["http://b:2", "http://a:1"])),
            Ok(urls(&["http://a:1", "http://b:2"]))
        );
        for bad in ["foo", "http://nohostport", "http://a:1/path", "ftp://a:1"] {
            assert_eq!(
                ClusterService::parse_peer_urls(&urls(&[bad])),
                Err(ApiError::MemberBadUrls),
                "{bad}"
            );
        }
        assert_eq!(
            ClusterService::parse_peer_urls(&[]),
            Err(ApiError::MemberBadUrls)
        );
        let many = vec!["http://a:1".to_owned(); PEER_URLS_MAX + 1];
        assert_eq!(
            ClusterService::parse_peer_urls(&many),
            Err(ApiError::MemberBadUrls)
        );
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
    }
}
