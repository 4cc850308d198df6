//! Wiring of a multi-member cluster: this member's identity and the membership, recorded at
//! bootstrap (`--initial-cluster-state new`: derived from `--initial-cluster`; `existing`:
//! fetched from the cluster's members) or read back on a restart, ignoring `--initial-*`; the
//! peer listeners on `--listen-peer-urls`; and what a removed member says before it exits.
//!
//! Joining (etcd's `GetClusterFromRemotePeers` and `ValidateClusterAndAssignIDs`): ask each
//! peer URL of `--initial-cluster` but ours for the membership (`RaftPeer.Members`) until one
//! answers; the cluster's members and ours must be as many and match one to one by peer URLs
//! (which gives this member its id); the cluster id is the peer's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ringkv_proto::ringkvpeerpb::raft_peer_client::RaftPeerClient;
use ringkv_proto::ringkvpeerpb::raft_peer_server::RaftPeerServer;
use ringkv_proto::ringkvpeerpb::{LearnerReadyRequest, MembersRequest};
use tokio::net::TcpListener;

use super::{ids, no_delay, ServerError};
use crate::api::cluster::MembershipControl;
use crate::api::ApiError;
use crate::config::{ClusterState, Config, Url};
use crate::peer::change::learner_ready;
use crate::peer::{
    Change, ChangeRefused, MemberInfo, Members, MembershipImage, PeerConfig, PeerContext,
    RaftPeerService,
};
use crate::raft::RaftError;

/// How long one peer may take to answer a joining member's `Members` call.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(2);

fn strings(urls: &[Url]) -> Vec<String> {
    urls.iter().map(ToString::to_string).collect()
}

/// This member's ids, and the membership to record if the data dir has none yet: recorded ids
/// win (a restart); otherwise derived from `--initial-cluster` (new) or taken from a running
/// member (existing), and recorded now.
pub fn identity(
    config: &Config,
    member_dir: &Path,
) -> Result<(ids::Ids, MembershipImage), ServerError> {
    if crate::config::member_initialized(member_dir.parent().unwrap_or(member_dir)) {
        // A restart: the recorded ids, whatever `--initial-*` say (they were not checked);
        // the recorded membership makes the bootstrap image unused.
        let ids = ids::load(member_dir).map_err(|source| ServerError::DataDir {
            path: member_dir.to_owned(),
            source,
        })?;
        return Ok((ids, MembershipImage::default()));
    }
    let recorded = member_dir.join("ids").exists();
    let (derived, image) = if recorded || config.initial_cluster_state == ClusterState::New {
        let derived = ids::derive(
            &config.initial_cluster,
            &config.name,
            &config.initial_cluster_token,
        );
        (derived, bootstrap(config, derived))
    } else {
        let (joined, image) = join(config)?;
        // The record first: a crash before the ids are recorded then joins again and finds it,
        // while ids without a record would make the restart take the bootstrap path.
        Members::load_or_record(member_dir, joined.member_id, image.clone())?;
        (joined, image)
    };
    let ids = ids::load_or_record(member_dir, derived).map_err(|source| ServerError::DataDir {
        path: member_dir.to_owned(),
        source,
    })?;
    Ok((ids, image))
}

/// The `--initial-cluster` members of a new cluster, every one a voter.
fn bootstrap(config: &Config, ids: ids::Ids) -> MembershipImage {
    let client_urls = strings(&config.advertise_client_urls);
    let members = config
        .initial_cluster
        .members
        .iter()
        .map(|(name, urls)| {
            let peer_urls = strings(urls);
            let id = ids::member_id(&peer_urls, &config.initial_cluster_token);
            MemberInfo {
                id,
                name: name.clone(),
                peer_urls,
                client_urls: if id == ids.member_id {
                    client_urls.clone()
                } else {
                    Vec::new()
                },
                is_learner: false,
            }
        })
        .collect();
    MembershipImage {
        conf_index: 0,
        members,
        removed: Vec::new(),
    }
}

/// The membership of the running cluster this member joins, and its ids in it.
fn join(config: &Config) -> Result<(ids::Ids, MembershipImage), ServerError> {
    let ours: Vec<String> = config.initial_cluster.members[&config.name]
        .iter()
        .map(ToString::to_string)
        .collect();
    let urls: Vec<String> = config
        .initial_cluster
        .members
        .values()
        .flatten()
        .map(ToString::to_string)
        .filter(|url| !ours.contains(url))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let (cluster_id, image) = runtime.block_on(fetch_membership(&urls)).ok_or_else(|| {
        ServerError::Join(
            "cannot fetch cluster info from peer urls: could not retrieve cluster \
                 information from the given URLs"
                .to_owned(),
        )
    })?;
    let member_id = match_members(config, &image)?;
    let mut image = image;
    // Ours as this member advertises them; the others are learned when they greet.
    for m in &mut image.members {
        if m.id == member_id {
            m.client_urls = strings(&config.advertise_client_urls);
        }
    }
    eprintln!(
        "ringkv: info: joining cluster {cluster_id:016x} as member {member_id:016x} ({} members, \
         membership as of index {})",
        image.members.len(),
        image.conf_index
    );
    Ok((
        ids::Ids {
            member_id,
            cluster_id,
        },
        image,
    ))
}

async fn fetch_membership(urls: &[String]) -> Option<(u64, MembershipImage)> {
    for url in urls {
        let call = async {
            let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).ok()?;
            let channel = endpoint.connect().await.ok()?;
            let reply = RaftPeerClient::new(channel)
                .members(MembersRequest {})
                .await
                .ok()?
                .into_inner();
            let image = MembershipImage::decode(Path::new(url), &reply.image).ok()?;
            Some((reply.cluster_id, image))
        };
        match tokio::time::timeout(JOIN_CALL_TIMEOUT, call).await {
            Ok(Some(found)) => return Some(found),
            _ => eprintln!("ringkv: warning: could not get cluster membership from {url}"),
        }
    }
    None
}

/// etcd's `ValidateClusterAndAssignIDs`: every member of the cluster matches one of
/// `--initial-cluster` by peer URLs; returns the id of ours.
fn match_members(config: &Config, image: &MembershipImage) -> Result<u64, ServerError> {
    let invalid = |reason: String| {
        ServerError::Join(format!(
            "error validating peerURLs {image_text}: {reason}",
            image_text = describe(image)
        ))
    };
    if image.members.len() != config.initial_cluster.members.len() {
        return Err(invalid("member count is unequal".to_owned()));
    }
    let sorted = |urls: &[String]| {
        let mut urls = urls.to_vec();
        urls.sort();
        urls
    };
    let mut our_id = None;
    for m in &image.members {
        let theirs = sorted(&m.peer_urls);
        let local = config
            .initial_cluster
            .members
            .iter()
            .find(|(_, urls)| sorted(&strings(urls)) == theirs);
        let Some((name, _)) = local else {
            return Err(invalid(format!(
                "PeerURLs: no match found for existing member ({:x}, [{}])",
                m.id,
                m.peer_urls.join(" ")
            )));
        };
        if *name == config.name {
            our_id = Some(m.id);
        }
    }
    our_id.ok_or_else(|| invalid(format!("no member matches {}", config.name)))
}

fn describe(image: &MembershipImage) -> String {
    let members: Vec<String> = image
        .members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_urls.join(",")))
        .collect();
    members.join(",")
}

/// The membership of this member: what the data dir recorded, or `bootstrap` recorded now.
/// This member's name and client URLs are refreshed from the flags on every start, as etcd
/// publishes them on every start.
pub fn members(
    config: &Config,
    ids: ids::Ids,
    member_dir: &Path,
    bootstrap: MembershipImage,
) -> Result<Members, ServerError> {
    let members = Members::load_or_record(member_dir, ids.member_id, bootstrap)?;
    members.learn(
        ids.member_id,
        &config.name,
        &strings(&config.advertise_client_urls),
    )?;
    Ok(members)
}

/// What etcd logs when a removed member stops (it then exits 0).
pub fn report_removed() {
    eprintln!(
        "ringkv: error: etcdserver: the member has been permanently removed from the cluster"
    );
    eprintln!("ringkv: info: etcdserver: the data-dir used by this member must be removed.");
}

/// The peer service on one listener, until `stop` turns true.
pub async fn serve_peer(
    listener: TcpListener,
    ctx: Arc<PeerContext>,
    peer_config: &PeerConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let service = RaftPeerServer::new(RaftPeerService::new(ctx))
        .max_decoding_message_size(peer_config.message_bytes_max)
        .max_encoding_message_size(peer_config.message_bytes_max);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(no_delay(listener), async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
}

/// The API's [`MembershipControl`] over the raft engine and the peer transport.
pub struct Control {
    pub ctx: Arc<PeerContext>,
    pub peer_config: PeerConfig,
}

#[tonic::async_trait]
impl MembershipControl for Control {
    fn new_member_id(&self, peer_urls: &[String]) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // etcd's `NewMember("", urls, "", &now)`: the URLs, no cluster name, the Unix time.
        ids::member_id(peer_urls, &now.to_string())
    }

    async fn change(&self, change: Change, is_learner: bool) -> Result<(), ApiError> {
        let reply = self
            .ctx
            .raft
            .propose_conf_change(change.to_conf_change(is_learner))
            .await
            .map_err(|e| ApiError::from(super::raft_log::consensus_error(e)))?;
        ChangeRefused::from_reply(&reply).map_err(ApiError::from)
    }

    async fn learner_ready(&self, id: u64) -> Result<(), ApiError> {
        let leader_id = match self.ctx.raft.learner_progress(id).await {
            Ok(progress) if learner_ready(progress) => return Ok(()),
            Ok(_) => return Err(ApiError::LearnerNotReady),
            Err(RaftError::NotLeader { leader_id }) if leader_id != 0 => leader_id,
            Err(e) => return Err(ApiError::from(super::raft_log::consensus_error(e))),
        };
        // etcd forwards the promote to the leader; only the readiness check needs it here.
        let urls = self
            .ctx
            .members
            .get(leader_id)
            .map(|m| m.peer_urls)
            .unwrap_or_default();
        for url in urls {
            let call = async {
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .ok()?
                    .connect_timeout(self.peer_config.connect_timeout)
                    .timeout(self.peer_config.request_timeout)
                    .connect()
                    .await
                    .ok()?;
                Some(
                    RaftPeerClient::new(channel)
                        .learner_ready(LearnerReadyRequest {
                            cluster_id: self.ctx.cluster_id,
                            from: self.ctx.member_id,
                            learner_id: id,
                        })
                        .await,
                )
            };
            match call.await {
                Some(Ok(_)) => return Ok(()),
                Some(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                    return Err(ApiError::LearnerNotReady)
                }
                Some(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    return Err(ApiError::NotLeader)
                }
                _ => {}
            }
        }
        Err(ApiError::Timeout)
    }

    fn active_since(&self, id: u64) -> Option<std::time::Instant> {
        self.ctx.peers.active_since(id)
    }
}
