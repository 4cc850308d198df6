//! etcd's Cluster service over the fixed membership recorded at bootstrap (`peer::Members`).
//!
//! `MemberList` reports every member with its id, name, peer URLs and client URLs (`etcdctl
//! member list`); a member whose client URLs are not known yet (it has not greeted this one) has
//! none, as etcd's unstarted members. Membership changes need raft conf changes (issue 5
//! phase 2); they answer what etcd answers wherever that answer does not need a change, in
//! etcd's order of checks (`etcdserver.EtcdServer.{Add,Remove,Update,Promote}Member` and the
//! apply-time `ValidateConfigurationChange`); what would need one is refused:
//!
//! | request | answer |
//! |---|---|
//! | add, a peer URL that does not parse (etcd's `types.NewURLs`) | InvalidArgument "etcdserver: given member URLs are invalid" |
//! | add, a peer URL a member has | FailedPrecondition "etcdserver: Peer URLs already exists" |
//! | add, otherwise (voter or learner) | Unimplemented, ringkv's [`ApiError::MembershipUnsupported`] |
//! | remove / update / promote, an unknown id | NotFound "etcdserver: member not found" |
//! | remove, a member of a larger cluster | Unimplemented (a conf change) |
//! | remove the only member | FailedPrecondition "etcdserver: re-configuration failed due to not enough started members" (etcd's strict reconfig check: the cluster would have no started member) |
//! | update a member, same peer URLs | success, as etcd (a no-op change) |
//! | update a member, other peer URLs (etcd does not check them) | Unimplemented: the change would have to be replicated and persisted as a raft conf change |
//! | promote a member (there are no learners) | FailedPrecondition "etcdserver: can only promote a learner member" |
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
use crate::peer::{MemberInfo, Members};

use super::{ApiError, Context};

/// Peer URLs accepted in one request; etcd has no bound, but a member has a handful.
const PEER_URLS_MAX: usize = 64;

fn to_proto(member: MemberInfo) -> Member {
    Member {
        id: member.id,
        name: member.name,
        peer_ur_ls: member.peer_urls,
        client_ur_ls: member.client_urls,
        is_learner: false,
    }
}

pub struct ClusterService {
    ctx: Arc<Context>,
    members: Arc<Members>,
}

impl ClusterService {
    pub fn new(ctx: Arc<Context>, members: Arc<Members>) -> ClusterService {
        assert_eq!(
            ctx.member_id,
            members.local_id(),
            "the local member is this server"
        );
        ClusterService { ctx, members }
    }

    fn header(&self) -> Option<ResponseHeader> {
        let mut header = None;
        self.ctx.fill(&mut header);
        header
    }

    fn members(&self) -> Vec<Member> {
        self.members.list().into_iter().map(to_proto).collect()
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

    fn check_known(&self, id: u64) -> Result<MemberInfo, ApiError> {
        self.members.get(id).ok_or(ApiError::MemberNotFound)
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
        let taken = self
            .members
            .list()
            .into_iter()
            .flat_map(|m| m.peer_urls)
            .any(|url| urls.contains(&url));
        if taken {
            return Err(ApiError::PeerUrlExists.into());
        }
        Err(ApiError::MembershipUnsupported("member add").into())
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_known(request.into_inner().id)?;
        if self.members.ids().len() > 1 {
            return Err(ApiError::MembershipUnsupported("member remove").into());
        }
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
        let mut known = self.check_known(req.id)?.peer_urls;
        known.sort();
        let mut urls = req.peer_ur_ls;
        urls.sort();
        if urls != known {
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
