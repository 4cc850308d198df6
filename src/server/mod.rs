//! Wiring: opens the page store and MVCC in the data dir, starts the log with the applier as
//! its state machine, serves etcd's gRPC services with tonic on every `--listen-client-urls`
//! URL (with etcd's HTTP endpoints, `/health`, `/version`, `/metrics`, on the same listeners),
//! and shuts down cleanly on SIGTERM or SIGINT.
//!
//! Data dir layout (etcd's `member/` directory):
//! ```text
//! <data-dir>/member/ids     member and cluster ids (`ids`)
//! <data-dir>/member/members the membership recorded at bootstrap (`peer::members`)
//! <data-dir>/member/wal/    the raft log
//! <data-dir>/member/snap/   the page store (MVCC's key space)
//! ```

mod cluster;
pub mod ids;
pub mod raft_log;
pub mod snapshot_cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringkv_proto::etcdserverpb::auth_server::AuthServer;
use ringkv_proto::etcdserverpb::cluster_server::ClusterServer;
use ringkv_proto::etcdserverpb::kv_server::KvServer;
use ringkv_proto::etcdserverpb::lease_server::LeaseServer;
use ringkv_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use ringkv_proto::etcdserverpb::watch_server::WatchServer;
use ringkv_proto::v3electionpb::election_server::ElectionServer;
use ringkv_proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{self, Context, Limits};
use crate::apply::Applier;
use crate::auth::{AuthConfig, AuthStore, AuthStoreError};
use crate::config::{Config, CorePlacement, Scheme, Url};
use crate::lease::{LeaseConfig, LeaseError, Lessor, MonotonicClock};
use crate::mvcc::{Mvcc, MvccError};
use crate::page_store::{PageStore, PageStoreConfig, PageStoreError};
use crate::raft::{self, RaftConfig, RaftError};
use crate::watch::{Hub, WatchConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("client URL {0}: only http client URLs are supported so far")]
    UnsupportedScheme(String),
    #[error("membership: {0}")]
    Members(#[from] crate::peer::MembersError),
    /// Joining an existing cluster failed (etcd's messages).
    #[error("{0}")]
    Join(String),
    #[error("cannot resolve client URL {url}: {source}")]
    Resolve { url: String, source: std::io::Error },
    #[error("cannot listen on {url}: {source}")]
    Listen { url: String, source: std::io::Error },
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the page store: {0}")]
    PageStore(#[from] PageStoreError),
    #[error("cannot open MVCC: {0}")]
    Mvcc(#[from] MvccError),
    #[error("cannot load the leases: {0}")]
    Lease(#[from] LeaseError),
    #[error("cannot load the auth state: {0}")]
    Auth(#[from] AuthStoreError),
    #[error("cannot start raft: {0}")]
    Raft(#[from] RaftError),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(config: &Config) -> Result<(), ServerError> {
    for url in &config.listen_client_urls {
        if url.scheme != Scheme::Http {
            return Err(ServerError::UnsupportedScheme(url.to_string()));
        }
    }
    // Absolute, so log lines and errors name the real place of a relative data dir
    // (the default, `default.etcd`, is relative).
    let data_dir =
        std::path::absolute(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let member_dir = data_dir.join("member");
    let snap_dir = member_dir.join("snap");
    let wal_dir = member_dir.join("wal");
    for dir in [&snap_dir, &wal_dir] {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    let (ids, bootstrap) = cluster::identity(config, &member_dir)?;
    let members = match cluster::members(config, ids, &member_dir, bootstrap) {
        Ok(members) => Arc::new(members),
        // etcd exits 0 after saying so.
        Err(ServerError::Members(crate::peer::MembersError::Removed)) => {
            cluster::report_removed();
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let peer_config = crate::peer::PeerConfig::new(
        usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX),
    );

    let store = PageStore::open(&snap_dir, page_store_config(config))?;
    let mvcc = Mvcc::open(store)?;
    eprintln!(
        "ringkv: info: opened {} at revision {} (compacted {}), applied index {}",
        snap_dir.display(),
        mvcc.current_revision(),
        mvcc.compacted_revision(),
        mvcc.page_store().consistent_index()
    );
    let lessor = Arc::new(Lessor::open(&mvcc, Arc::new(MonotonicClock))?);
    eprintln!("ringkv: info: loaded {} leases", lessor.len());
    let auth = Arc::new(AuthStore::open(
        &mvcc,
        AuthConfig {
            token_ttl: config.auth_token_ttl,
            bcrypt_cost: config.bcrypt_cost,
        },
    )?);
    // Before the applier, so the hub has dispatched exactly what MVCC holds when it starts.
    let hub = Hub::new(
        mvcc.clone(),
        WatchConfig {
            progress_notify_interval: config.watch_progress_notify_interval,
            ..WatchConfig::default()
        },
    );
    let hook_hub = hub.clone();
    let mut applier = Applier::with_lessor(mvcc.clone(), lessor.clone())
        .with_auth(auth.clone())
        .with_commit_hook(Box::new(move |rev| hook_hub.committed(rev)));
    applier.set_quota_backend_bytes(config.quota_backend_bytes);
    let mut raft_cfg = raft_config(config, &wal_dir, ids);
    raft_cfg.voters = members.ids();
    let peers: Vec<(u64, Vec<String>)> = members
        .list()
        .into_iter()
        .filter(|m| m.id != ids.member_id)
        .map(|m| (m.id, m.peer_urls))
        .collect();
    // A member started alone keeps a fixed membership and no network; any other follows
    // membership changes (`cluster.rs`), also once it is the last one left.
    let clustered = !peers.is_empty() || members.conf_index() > 0;
    let staging_dir = member_dir.join("raft-snap");
    let sm = Box::new(raft_log::ApplierSm::new(
        applier,
        mvcc.clone(),
        staging_dir.clone(),
    ));
    // A single member returns once the WAL is replayed into MVCC and it leads; with peers the
    // engine starts as a follower and the transport's tasks start with the runtime below.
    let (handle, peer_set) = if clustered {
        let peer_set = crate::peer::PeerSet::new(peers, peer_config.clone());
        let membership = crate::peer::ClusterMembership::new(members.clone(), peer_set.clone());
        let transport = Box::new(peer_set.transport());
        let handle = raft::start_with_membership(raft_cfg, sm, transport, Box::new(membership))?;
        (handle, Some(peer_set))
    } else {
        (raft::start(raft_cfg, sm)?, None)
    };
    let log = Arc::new(raft_log::RaftLog { handle });
    let ctx = Arc::new(Context {
        mvcc,
        consensus: log.clone(),
        cluster_id: ids.cluster_id,
        member_id: ids.member_id,
        limits: Limits {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            quota_backend_bytes: config.quota_backend_bytes,
        },
        lessor,
        auth,
    });

    let grpc_core = config.tuning.placement.grpc;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let CorePlacement::Core(_) = grpc_core {
        // One pinned core: one worker.
        runtime.worker_threads(1);
    }
    let runtime = runtime
        .thread_name("ringkv-grpc")
        .on_thread_start(move || {
            crate::affinity::pin_current_thread(grpc_core.core(), "a gRPC worker");
        })
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let lease_config = LeaseConfig::for_raft(config.heartbeat_interval, config.election_timeout);
    // Dropped with the runtime; a revoke it has in flight then fails with "stopped".
    runtime.spawn(api::lease::run_expiry(ctx.clone(), lease_config.clone()));
    runtime.spawn(crate::compactor::run(ctx.clone(), config.auto_compaction));
    let peering = peer_set.map(|peer_set| {
        let peer_ctx = Arc::new(crate::peer::PeerContext {
            cluster_id: ids.cluster_id,
            member_id: ids.member_id,
            members: members.clone(),
            peers: peer_set.clone(),
            raft: log.handle.clone(),
            staging: crate::peer::snapshot::Staging::new(staging_dir),
        });
        peer_set.spawn(runtime.handle(), &peer_ctx);
        (peer_ctx, peer_config)
    });
    let served = runtime.block_on(serve(
        config,
        ctx,
        hub,
        ids,
        &lease_config,
        members,
        peering,
    ));
    // Everything acknowledged is already durable; this stops the loop and the WAL writer.
    log.handle.shutdown();
    served?;
    eprintln!("ringkv: info: stopped");
    Ok(())
}

/// etcd's flags and the tuning profile in the raft engine's terms.
fn raft_config(config: &Config, wal_dir: &Path, ids: ids::Ids) -> RaftConfig {
    let tuning = &config.tuning;
    let mut cfg = RaftConfig::new(wal_dir, ids.member_id, ids.cluster_id);
    cfg.heartbeat = config.heartbeat_interval;
    cfg.election_timeout = config.election_timeout;
    cfg.raft_cpu = tuning.placement.raft.core();
    // The same place as raft (a core, or both unpinned) keeps the writer on the raft executor.
    if tuning.placement.wal != tuning.placement.raft {
        cfg.wal_executor = raft::WalExecutor::Own;
        cfg.wal.writer_cpu = tuning.placement.wal.core();
    }
    cfg.proposal_queue_depth = tuning.queues.proposal_queue_depth;
    cfg.max_batch_entries = tuning.wal.batch_records_max as usize;
    cfg.wal.batch_bytes_max = tuning.wal.batch_bytes_max as usize;
    cfg.wal.batch_records_max = tuning.wal.batch_records_max as usize;
    cfg.wal.batch_delay_us = tuning.wal.batch_delay_us;
    // The API refuses larger proposals first, with etcd's error.
    cfg.proposal_bytes_max = usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX);
    cfg.snapshot_entries = config.snapshot_count.max(1);
    // etcd's `ReqTimeout`: how long a proposal may wait, also for a leader.
    cfg.request_timeout = std::time::Duration::from_secs(5) + 2 * config.election_timeout;
    cfg
}

/// The tuning profile's page-store settings over the store's defaults.
fn page_store_config(config: &Config) -> PageStoreConfig {
    let tuning = &config.tuning.page_store;
    let size = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
    PageStoreConfig {
        cache_bytes: size(tuning.cache_bytes),
        checkpoint_interval: std::time::Duration::from_millis(tuning.checkpoint_interval_ms),
        dirty_bytes_max: size(tuning.dirty_bytes_max),
        background_clean_segments: size(tuning.background_clean_segments),
        clean_garbage_percent: tuning.clean_garbage_percent,
        clean_live_percent_max: tuning.clean_live_percent_max,
        checkpoint_cpu: config.tuning.placement.page_store.core(),
        ..PageStoreConfig::default()
    }
}

async fn serve(
    config: &Config,
    ctx: Arc<Context>,
    hub: Arc<Hub>,
    ids: ids::Ids,
    lease_config: &LeaseConfig,
    members: Arc<crate::peer::Members>,
    peering: Option<(Arc<crate::peer::PeerContext>, crate::peer::PeerConfig)>,
) -> Result<(), ServerError> {
    // Only a member with peers listens on its peer URLs: a lone member needs no port there.
    let peer_listeners = match &peering {
        Some(_) => bind(&config.listen_peer_urls).await?,
        None => Vec::new(),
    };
    let listeners = bind(&config.listen_client_urls).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let max_decoding = api::max_decoding_message_bytes(config.max_request_bytes);
    let http = api::http::HttpEndpoints::new(
        ctx.clone(),
        api::http::HttpConfig {
            quota_backend_bytes: config.quota_backend_bytes,
            // etcd's request timeout (`ReqTimeout`).
            health_timeout: std::time::Duration::from_secs(5) + 2 * config.election_timeout,
        },
    );
    // etcd's request timeout bounds a forwarded renewal.
    let lease_forwarder = Arc::new(api::lease_forward::LeaseForwarder::new(
        members.clone(),
        std::time::Duration::from_secs(5) + 2 * config.election_timeout,
    ));
    let mut servers = tokio::task::JoinSet::new();
    let learner_gate = api::learner::LearnerGateLayer::new(members.clone(), max_decoding);
    for (url, listener) in listeners {
        let kv = KvServer::new(api::kv::KvService::new(ctx.clone()))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(usize::MAX);
        let maintenance = MaintenanceServer::new(api::maintenance::MaintenanceService::new(
            ctx.clone(),
            members.clone(),
        ))
        .max_decoding_message_size(max_decoding);
        let watch = WatchServer::new(api::watch::WatchService::new(ctx.clone(), hub.clone()))
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(usize::MAX);
        let lease = LeaseServer::new(api::lease::LeaseService::with_forwarder(
            ctx.clone(),
            lease_config.clone(),
            Some(lease_forwarder.clone()),
        ))
        .max_decoding_message_size(max_decoding);
        let auth = AuthServer::new(api::auth::AuthService::new(ctx.clone()))
            .max_decoding_message_size(max_decoding);
        let control = peering.as_ref().map(|(peer_ctx, peer_config)| {
            Arc::new(cluster::Control {
                ctx: peer_ctx.clone(),
                peer_config: peer_config.clone(),
            }) as Arc<dyn api::cluster::MembershipControl>
        });
        let cluster = ClusterServer::new(api::cluster::ClusterService::new(
            ctx.clone(),
            members.clone(),
            control,
        ))
        .max_decoding_message_size(max_decoding);
        let lock = LockServer::new(api::lock::LockService::new(ctx.clone(), hub.clone()))
            .max_decoding_message_size(max_decoding);
        let election = ElectionServer::new(api::election::ElectionService::new(
            ctx.clone(),
            hub.clone(),
        ))
        .max_decoding_message_size(max_decoding);
        let mut routes = tonic::service::Routes::builder();
        routes
            .add_service(api::limit::GrpcGoLimitStatus(kv))
            .add_service(api::limit::GrpcGoLimitStatus(maintenance))
            .add_service(api::limit::GrpcGoLimitStatus(lease))
            .add_service(api::limit::GrpcGoLimitStatus(watch))
            .add_service(api::limit::GrpcGoLimitStatus(cluster))
            .add_service(api::limit::GrpcGoLimitStatus(auth))
            .add_service(api::limit::GrpcGoLimitStatus(lock))
            .add_service(api::limit::GrpcGoLimitStatus(election));
        // Paths no gRPC service claims go to the HTTP endpoints; HTTP/1.1 is accepted for them.
        let routes = api::http::with_fallback(routes.routes(), http.clone());
        let mut stop = stop_rx.clone();
        let local = listener.local_addr().ok();
        let gate = learner_gate.clone();
        servers.spawn(async move {
            let result = tonic::transport::Server::builder()
                .accept_http1(true)
                .layer(api::traffic::GrpcTrafficLayer)
                .layer(gate)
                .add_routes(routes)
                .serve_with_incoming_shutdown(no_delay(listener), async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
            (url, local, result)
        });
    }
    if let Some((peer_ctx, peer_config)) = &peering {
        for (url, listener) in peer_listeners {
            let (peer_ctx, peer_config, stop) =
                (peer_ctx.clone(), peer_config.clone(), stop_rx.clone());
            let local = listener.local_addr().ok();
            servers.spawn(async move {
                let result = cluster::serve_peer(listener, peer_ctx, &peer_config, stop).await;
                (url, local, result)
            });
        }
        eprintln!(
            "ringkv: info: serving peer traffic on {} ({} members)",
            crate::config::url::join(&config.listen_peer_urls),
            members.ids().len()
        );
    }
    eprintln!(
        "ringkv: info: ready to serve client requests (member {:016x}, cluster {:016x}, listening on {})",
        ids.member_id,
        ids.cluster_id,
        crate::config::url::join(&config.listen_client_urls)
    );
    let mut removed = members.removed_signal();
    tokio::select! {
        signal = wait_for_signal() => eprintln!("ringkv: info: received {signal}, shutting down"),
        _ = removed.wait_for(|removed| *removed) => cluster::report_removed(),
    }
    let _ = stop_tx.send(true);
    hub.stop();
    let mut first_error = None;
    // Graceful shutdown waits for every connection to finish; a client that never does (a
    // half-sent HTTP/1.1 request, an HTTP/2 peer ignoring GOAWAY) must not keep the server up.
    // Everything acknowledged is durable, so cutting connections after the drain limit is safe.
    let drain_deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    loop {
        let joined = match tokio::time::timeout_at(drain_deadline, servers.join_next()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "ringkv: warning: client connections still open after {SHUTDOWN_DRAIN:?}; closing them"
                );
                servers.abort_all();
                break;
            }
        };
        match joined {
            Ok((_, _, Ok(()))) => {}
            Ok((url, local, Err(error))) => {
                eprintln!("ringkv: error: serving {url} ({local:?}): {error}");
                first_error.get_or_insert(ServerError::Serve(error));
            }
            Err(error) => eprintln!("ringkv: error: server task: {error}"),
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Accepted connections with Nagle's algorithm off. gRPC writes a response as several small
/// frames (headers, data, trailers); with Nagle on, the last of them waits for the client's
/// delayed ACK, which put a ~40 ms floor under every request of a lone client. tonic's
/// `tcp_nodelay` applies only to listeners it binds itself, not to an incoming stream.
fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        // Only latency depends on it; a socket that refuses is still served.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    })
}

/// How long a shutdown waits for client connections to finish their requests.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds every address of every URL in `urls` (peer or client), so a taken port fails the start
/// with the URL named.
async fn bind(urls: &[Url]) -> Result<Vec<(Url, TcpListener)>, ServerError> {
    let mut listeners = Vec::new();
    for url in urls {
        for addr in resolve(url).await? {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen {
                    url: url.to_string(),
                    source,
                })?;
            listeners.push((url.clone(), listener));
        }
    }
    Ok(listeners)
}

async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, ServerError> {
    let port = url.port.unwrap_or(0);
    let host = if url.host.is_empty() {
        "0.0.0.0"
    } else {
        url.host.as_str()
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ServerError::Resolve {
            url: url.to_string(),
            source,
        })?
        .collect();
    // `localhost` may resolve to both 127.0.0.1 and ::1; etcd (Go's resolver) binds one
    // address, preferring IPv4, and so do we.
    let first = addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied();
    Ok(first.into_iter().collect())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
