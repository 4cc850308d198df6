//! Wiring of a multi-member cluster: the membership recorded at bootstrap (or read back on a
//! restart, ignoring `--initial-*`), the peer transport handed to the raft engine, and the peer
//! listeners on `--listen-peer-urls`.

use std::path::Path;
use std::sync::Arc;

use ringkv_proto::ringkvpeerpb::raft_peer_server::RaftPeerServer;
use tokio::net::TcpListener;

use super::{ids, no_delay, ServerError};
use crate::config::{Config, Url};
use crate::peer::{MemberInfo, Members, PeerConfig, PeerContext, RaftPeerService};

/// The membership of this member's cluster: what the data dir recorded, or the
/// `--initial-cluster` members recorded now (this member with its advertised client URLs).
/// This member's name and client URLs are refreshed from the flags on every start, as etcd
/// publishes them on every start.
pub fn members(config: &Config, ids: ids::Ids, member_dir: &Path) -> Result<Members, ServerError> {
    let strings = |urls: &[Url]| urls.iter().map(ToString::to_string).collect::<Vec<_>>();
    let client_urls = strings(&config.advertise_client_urls);
    let bootstrap = config
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
            }
        })
        .collect();
    let members = Members::load_or_record(member_dir, ids.member_id, bootstrap)?;
    members.learn(ids.member_id, &config.name, &client_urls)?;
    Ok(members)
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
