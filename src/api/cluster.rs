//! etcd's Cluster service for a single-member cluster without a peer transport.
//!
//! `MemberList` reports this member (`etcdctl member list`). The membership changes answer what
//! etcd answers for the same request wherever that answer does not need a second member, in
//! etcd's order of checks (`etcdserver.EtcdServer.{Add,Remove,Update,Promote}Member` and the
//! apply-time `ValidateConfigurationChange`); what would need one is refused:
//!
//! | request | answer |
//! |---|---|
//! | add, a peer URL that does not parse (etcd's `types.NewURLs`) | InvalidArgument "etcdserver: given member URLs are invalid" |
//! | add, a peer URL this member has | FailedPrecondition "etcdserver: Peer URLs already exists" |
//! | add, otherwise (voter or learner) | Unimplemented, ringkv's [`ApiError::MembershipUnsupported`] |
//! | remove / update / promote, an unknown id | NotFound "etcdserver: member not found" |
//! | remove this member | FailedPrecondition "etcdserver: re-configuration failed due to not enough started members" (etcd's strict reconfig check: the cluster would have no started member) |
//! | update this member, same peer URLs | success, as etcd (a no-op change) |
//! | update this member, other peer URLs (etcd does not check them) | Unimplemented: the change would have to be replicated and persisted as a raft conf change |
//! | promote this member | FailedPrecondition "etcdserver: can only promote a learner member" |
//!
//! etcd answers "etcdserver: ID removed" only for ids it has removed; ringkv removes none.

use std::sync::Arc;

use ringkv_proto::etcdserverpb::cluster_server::Cluster;
use ringkv_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use tonic::{Request, Response, Status};

use crate::config::Url;

use super::{ApiError, Context};

/// Peer URLs accepted in one request; etcd has no bound, but a member has a handful.
const PEER_URLS_MAX: usize = 64;

/// This member as the Cluster service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMember {
    pub id: u64,
    pub name: String,
    /// As etcd prints them: `scheme://host:port`, in the order configured.
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl LocalMember {
    fn to_proto(&self) -> Member {
        Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: false,
        }
    }
}

pub struct ClusterService {
    ctx: Arc<Context>,
    member: LocalMember,
}

impl ClusterService {
    pub fn new(ctx: Arc<Context>, member: LocalMember) -> ClusterService {
        assert_eq!(ctx.member_id, member.id, "the local member is this server");
        ClusterService { ctx, member }
    }

    fn header(&self) -> Option<ResponseHeader> {
        let mut header = None;
        self.ctx.fill(&mut header);
        header
    }

    fn members(&self) -> Vec<Member> {
        vec![self.member.to_proto()]
    }

    /// etcd's `types.NewURLs` check, then its sorted, normalised form for comparisons.
    fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, ApiError> {
        if urls.len() > PEER_URLS_MAX {
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

    fn own_peer_urls_sorted(&self) -> Vec<String> {
        let mut own = self.member.peer_urls.clone();
        own.sort();
        own
    }

    fn check_known(&self, id: u64) -> Result<(), ApiError> {
        if id == self.member.id {
            Ok(())
        } else {
            Err(ApiError::MemberNotFound)
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        let urls = Self::parse_peer_urls(&req.peer_ur_ls)?;
        let own = self.own_peer_urls_sorted();
        if urls.iter().any(|url| own.contains(url)) {
            return Err(ApiError::PeerUrlExists.into());
        }
        Err(ApiError::MembershipUnsupported("member add").into())
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_known(request.into_inner().id)?;
        // Removing the only voting member leaves no started member: etcd's strict
        // reconfiguration check refuses it before proposing anything.
        Err(ApiError::MemberNotEnoughStarted.into())
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        // etcd does not check the URLs of an update (its MemberUpdate stores what it is given).
        self.check_known(req.id)?;
        let mut urls = req.peer_ur_ls;
        urls.sort();
        if urls != self.own_peer_urls_sorted() {
            return Err(ApiError::MembershipUnsupported("changing a member's peer URLs").into());
        }
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
        self.check_known(request.into_inner().id)?;
        Err(ApiError::MemberNotLearner.into())
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
        let many = vec!["http://a:1".to_owned(); PEER_URLS_MAX + 1];
        assert_eq!(
            ClusterService::parse_peer_urls(&many),
            Err(ApiError::MemberBadUrls)
        );
    }
}
