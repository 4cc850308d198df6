//! The sending side: one bounded queue and one sender task per peer. The raft loop queues with
//! a non-blocking `try_send` ([`PeerTransport`]); each task (on the tokio runtime) sends what has
//! queued as one `Send` call, one call in flight, and on failure reports the peer unreachable,
//! drops what queued meanwhile and reconnects after a capped exponential backoff.

use std::collections::HashMap;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::Message;
use ringkv_proto::ringkvpeerpb::raft_peer_client::RaftPeerClient;
use ringkv_proto::ringkvpeerpb::{Hello, MessageBatch};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::{PeerConfig, PeerContext};

/// The raft loop's side: a bounded queue per peer, and one for snapshots (`snapshot.rs`).
pub struct PeerTransport {
    queues: HashMap<u64, mpsc::Sender<Message>>,
    snapshots: mpsc::Sender<Message>,
}

impl crate::raft::Transport for PeerTransport {
    fn send(&mut self, msg: Message) -> bool {
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            return self.snapshots.try_send(msg).is_ok();
        }
        self.queues
            .get(&msg.to)
            .is_some_and(|queue| queue.try_send(msg).is_ok())
    }
}

/// The tasks' side, spawned once the raft handle exists ([`PeerSenders::spawn`]).
pub struct PeerSenders {
    peers: Vec<(u64, Vec<String>, mpsc::Receiver<Message>)>,
    snapshots: mpsc::Receiver<Message>,
    config: PeerConfig,
}

/// A transport to `peers` (id and advertised peer URLs; this member excluded).
pub fn transport(
    peers: Vec<(u64, Vec<String>)>,
    config: PeerConfig,
) -> (PeerTransport, PeerSenders) {
    let mut queues = HashMap::new();
    let mut senders = Vec::new();
    for (id, urls) in peers {
        let (tx, rx) = mpsc::channel(config.queue_messages_max);
        queues.insert(id, tx);
        senders.push((id, urls, rx));
    }
    let (snapshots, snapshot_queue) = mpsc::channel(super::snapshot::SNAPSHOT_QUEUE_MAX);
    (
        PeerTransport { queues, snapshots },
        PeerSenders {
            peers: senders,
            snapshots: snapshot_queue,
            config,
        },
    )
}

impl PeerSenders {
    /// Starts one sender task per peer on `runtime`. The tasks end when the raft loop drops
    /// the transport (its queues close).
    pub fn spawn(self, runtime: &tokio::runtime::Handle, ctx: &Arc<PeerContext>) {
        runtime.spawn(super::snapshot::run_senders(
            self.snapshots,
            ctx.clone(),
            self.config.clone(),
        ));
        for (id, urls, rx) in self.peers {
            let sender = Sender {
                peer_id: id,
                urls,
                rx,
                ctx: ctx.clone(),
                config: self.config.clone(),
                client: None,
                next_url: 0,
                reachable: true,
            };
            runtime.spawn(sender.run());
        }
    }
}

struct Sender {
    peer_id: u64,
    urls: Vec<String>,
    rx: mpsc::Receiver<Message>,
    ctx: Arc<PeerContext>,
    config: PeerConfig,
    client: Option<RaftPeerClient<Channel>>,
    /// The URL tried on the next connection (round robin over the peer's URLs).
    next_url: usize,
    /// Whether the last attempt succeeded; failures are logged on the change only.
    reachable: bool,
}

impl Sender {
    /// Connects (and greets) eagerly, so members learn each other's client URLs even when raft
    /// has nothing to say between them, then sends batches while the connection works.
    async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        loop {
            if self.client.is_none() {
                match self.connect().await {
                    Ok(client) => self.client = Some(client),
                    Err(error) => {
                        if !self.pause(error, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(first) = self.rx.recv().await else {
                return;
            };
            let batch = self.batch(&first);
            match self.deliver(batch).await {
                Ok(()) => {
                    if !self.reachable {
                        eprintln!("ringkv: info: peer {:016x} is reachable", self.peer_id);
                    }
                    self.reachable = true;
                    backoff = self.config.backoff_min;
                }
                Err(error) => {
                    self.client = None;
                    if !self.pause(error, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// After a failure: tells raft, waits out the backoff, and drops what queued meanwhile (raft
    /// retransmits; it is stale). Returns false once the raft loop has dropped the transport.
    async fn pause(&mut self, error: String, backoff: &mut std::time::Duration) -> bool {
        if self.reachable {
            eprintln!(
                "ringkv: warning: peer {:016x} unreachable: {error}",
                self.peer_id
            );
        }
        self.reachable = false;
        self.ctx.raft.report_unreachable(self.peer_id);
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(self.config.backoff_max);
        loop {
            match self.rx.try_recv() {
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// `first` and whatever else is queued, up to the batch limits.
    fn batch(&mut self, first: &Message) -> Vec<Vec<u8>> {
        let encode = |m: &Message| m.write_to_bytes().expect("raft messages encode");
        let mut batch = vec![encode(first)];
        let mut bytes = batch[0].len();
        while batch.len() < self.config.batch_messages_max && bytes < self.config.batch_bytes_max {
            let Ok(m) = self.rx.try_recv() else { break };
            let encoded = encode(&m);
            bytes += encoded.len();
            batch.push(encoded);
        }
        batch
    }

    async fn deliver(&mut self, messages: Vec<Vec<u8>>) -> Result<(), String> {
        let client = self.client.as_mut().expect("connected before sending");
        let request = MessageBatch {
            cluster_id: self.ctx.cluster_id,
            from: self.ctx.member_id,
            messages,
        };
        client
            .send(request)
            .await
            .map(|_| ())
            .map_err(|status| status.message().to_owned())
    }

    /// Connects to the next of the peer's URLs and greets it: both sides learn each other's
    /// name and client URLs, and a member of another cluster is found out before any message.
    async fn connect(&mut self) -> Result<RaftPeerClient<Channel>, String> {
        let url = self.urls[self.next_url % self.urls.len()].clone();
        self.next_url += 1;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.request_timeout)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let mut client = RaftPeerClient::new(channel)
            .max_decoding_message_size(self.config.message_bytes_max)
            .max_encoding_message_size(self.config.message_bytes_max);
        let local = self.ctx.members.local();
        let reply = client
            .greet(Hello {
                cluster_id: self.ctx.cluster_id,
                member_id: self.ctx.member_id,
                name: local.name,
                client_urls: local.client_urls,
            })
            .await
            .map_err(|status| format!("{url}: {}", status.message()))?
            .into_inner();
        if reply.cluster_id != self.ctx.cluster_id || reply.member_id != self.peer_id {
            return Err(format!(
                "{url}: member {:016x} of cluster {:016x} answered, expected member {:016x} of \
                 cluster {:016x}",
                reply.member_id, reply.cluster_id, self.peer_id, self.ctx.cluster_id
            ));
        }
        if let Err(e) = self
            .ctx
            .members
            .learn(self.peer_id, &reply.name, &reply.client_urls)
        {
            eprintln!("ringkv: warning: peer {:016x}: {e}", self.peer_id);
        }
        Ok(client)
    }
}
