//! The sending side: one bounded queue and one sender task per peer, in a [`PeerSet`] that
//! follows the membership (a peer added, re-addressed or removed by a conf change gets a new
//! task, or its task ends). The raft loop queues with a non-blocking `try_send`
//! ([`PeerTransport`]); each task (on the tokio runtime) sends what has queued as one `Send`
//! call, one call in flight, and on failure reports the peer unreachable, drops what queued
//! meanwhile and reconnects after a capped exponential backoff. A peer that answers that this
//! member was removed stops the member (`Members::mark_removed`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::Message;
use ringkv_proto::ringkvpeerpb::raft_peer_client::RaftPeerClient;
use ringkv_proto::ringkvpeerpb::{Hello, MessageBatch};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::{PeerConfig, PeerContext, PeerError};

/// The raft loop's side: a bounded queue per peer, looked up in the shared [`PeerSet`], and
/// one for snapshots (`snapshot.rs`).
pub struct PeerTransport {
    peers: Arc<PeerSet>,
    snapshots: mpsc::Sender<Message>,
}

impl crate::raft::Transport for PeerTransport {
    fn send(&mut self, msg: Message) -> bool {
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            return self.snapshots.try_send(msg).is_ok();
        }
        let inner = self.peers.inner.lock();
        inner
            .queues
            .get(&msg.to)
            .is_some_and(|queue| queue.sender.try_send(msg).is_ok())
    }
}

/// The peers this member sends to, each with its queue and sender task.
pub struct PeerSet {
    config: PeerConfig,
    inner: Mutex<Inner>,
}

struct Queue {
    sender: mpsc::Sender<Message>,
    urls: Vec<String>,
    /// Distinguishes this peer's current task from one a change replaced.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<u64, Queue>,
    /// Tasks not started yet: the runtime and context come after the raft engine starts.
    unspawned: Vec<Sender>,
    spawn_on: Option<(tokio::runtime::Handle, Arc<PeerContext>)>,
    /// Since when each peer has answered without failure (etcd's `ActiveSince`).
    active_since: HashMap<u64, Instant>,
    next_generation: u64,
    /// The snapshot senders' queue (`snapshot.rs`): its sending side until the transport takes
    /// it (so the senders end with the transport), its receiving side until they start.
    snapshot_send: Option<mpsc::Sender<Message>>,
    snapshot_queue: Option<mpsc::Receiver<Message>>,
}

impl PeerSet {
    /// The set for `peers` (id and advertised peer URLs; this member excluded).
    pub fn new(peers: Vec<(u64, Vec<String>)>, config: PeerConfig) -> Arc<PeerSet> {
        let (snapshots, snapshot_queue) = mpsc::channel(super::snapshot::SNAPSHOT_QUEUE_MAX);
        let set = Arc::new(PeerSet {
            config,
            inner: Mutex::new(Inner {
                snapshot_send: Some(snapshots),
                snapshot_queue: Some(snapshot_queue),
                ..Inner::default()
            }),
        });
        for (id, urls) in peers {
            set.set_peer(id, urls);
        }
        set
    }

    /// The raft loop's side; called once.
    pub fn transport(self: &Arc<Self>) -> PeerTransport {
        let snapshots = self.inner.lock().snapshot_send.take();
        PeerTransport {
            peers: self.clone(),
            snapshots: snapshots.expect("one transport per peer set"),
        }
    }

    /// Starts the sender tasks (and the snapshot senders') on `runtime`, and every later one
    /// there too.
    pub fn spawn(&self, runtime: &tokio::runtime::Handle, ctx: &Arc<PeerContext>) {
        let mut inner = self.inner.lock();
        if let Some(queue) = inner.snapshot_queue.take() {
            runtime.spawn(super::snapshot::run_senders(
                queue,
                ctx.clone(),
                self.config.clone(),
            ));
        }
        for mut sender in std::mem::take(&mut inner.unspawned) {
            sender.ctx = Some(ctx.clone());
            runtime.spawn(sender.run());
        }
        inner.spawn_on = Some((runtime.clone(), ctx.clone()));
    }

    /// Sends to `id` at `urls` from now on; a task sending to its old URLs ends.
    pub fn set_peer(&self, id: u64, urls: Vec<String>) {
        assert!(!urls.is_empty(), "a peer has a URL");
        let (tx, rx) = mpsc::channel(self.config.queue_messages_max);
        let mut inner = self.inner.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.queues.insert(
            id,
            Queue {
                sender: tx,
                urls: urls.clone(),
                generation,
            },
        );
        inner.active_since.remove(&id);
        inner.unspawned.retain(|s| s.peer_id != id);
        let mut sender = Sender {
            peer_id: id,
            generation,
            urls,
            rx,
            ctx: None,
            config: self.config.clone(),
            client: None,
            next_url: 0,
            reachable: true,
        };
        match &inner.spawn_on {
            Some((runtime, ctx)) => {
                sender.ctx = Some(ctx.clone());
                runtime.spawn(sender.run());
            }
            None => inner.unspawned.push(sender),
        }
    }

    /// Sends to exactly `peers` from now on (a membership restored from a raft snapshot): the
    /// others' tasks end, peers whose URLs did not change keep theirs.
    pub fn replace_all(&self, peers: Vec<(u64, Vec<String>)>) {
        let current: Vec<(u64, Vec<String>)> = {
            let inner = self.inner.lock();
            inner
                .queues
                .iter()
                .map(|(id, q)| (*id, q.urls.clone()))
                .collect()
        };
        for (id, _) in &current {
            if !peers.iter().any(|(p, _)| p == id) {
                self.remove_peer(*id);
            }
        }
        for (id, urls) in peers {
            if !current.contains(&(id, urls.clone())) {
                self.set_peer(id, urls);
            }
        }
    }

    /// Stops sending to `id` (its task ends once its queue is closed and drained).
    pub fn remove_peer(&self, id: u64) {
        let mut inner = self.inner.lock();
        inner.queues.remove(&id);
        inner.active_since.remove(&id);
        inner.unspawned.retain(|s| s.peer_id != id);
    }

    /// Since when `id` has been reachable; `None` if it is not now.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.inner.lock().active_since.get(&id).copied()
    }

    fn mark(&self, id: u64, generation: u64, active: bool) {
        let mut inner = self.inner.lock();
        if inner.queues.get(&id).map(|q| q.generation) != Some(generation) {
            return;
        }
        if active {
            inner.active_since.entry(id).or_insert_with(Instant::now);
        } else {
            inner.active_since.remove(&id);
        }
    }
}

struct Sender {
    peer_id: u64,
    generation: u64,
    urls: Vec<String>,
    rx: mpsc::Receiver<Message>,
    /// Set when the task is spawned.
    ctx: Option<Arc<PeerContext>>,
    config: PeerConfig,
    client: Option<RaftPeerClient<Channel>>,
    /// The URL tried on the next connection (round robin over the peer's URLs).
    next_url: usize,
    /// Whether the last attempt succeeded; failures are logged on the change only.
    reachable: bool,
}

impl Sender {
    fn ctx(&self) -> &Arc<PeerContext> {
        self.ctx.as_ref().expect("spawned with a context")
    }

    /// Notes the outcome of a call; a peer saying this member was removed stops the member.
    fn outcome(&self, result: &Result<(), String>) {
        let ctx = self.ctx();
        ctx.peers
            .mark(self.peer_id, self.generation, result.is_ok());
        if let Err(error) = result {
            if error.ends_with(&PeerError::Removed.to_string()) {
                ctx.members.mark_removed();
            }
        }
    }

    /// Connects (and greets) eagerly, so members learn each other's client URLs even when raft
    /// has nothing to say between them, then sends batches while the connection works.
    async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        loop {
            if self.client.is_none() {
                let connected = self.connect().await;
                self.outcome(&connected.as_ref().map(|_| ()).map_err(Clone::clone));
                match connected {
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
            let delivered = self.deliver(batch).await;
            self.outcome(&delivered);
            match delivered {
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
        self.ctx().raft.report_unreachable(self.peer_id);
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
        let request = MessageBatch {
            cluster_id: self.ctx().cluster_id,
            from: self.ctx().member_id,
            messages,
        };
        let client = self.client.as_mut().expect("connected before sending");
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
        let local = self.ctx().members.local();
        let reply = client
            .greet(Hello {
                cluster_id: self.ctx().cluster_id,
                member_id: self.ctx().member_id,
                name: local.name,
                client_urls: local.client_urls,
            })
            .await
            .map_err(|status| format!("{url}: {}", status.message()))?
            .into_inner();
        if reply.cluster_id != self.ctx().cluster_id || reply.member_id != self.peer_id {
            return Err(format!(
                "{url}: member {:016x} of cluster {:016x} answered, expected member {:016x} of \
                 cluster {:016x}",
                reply.member_id,
                reply.cluster_id,
                self.peer_id,
                self.ctx().cluster_id
            ));
        }
        if let Err(e) = self
            .ctx()
            .members
            .learn(self.peer_id, &reply.name, &reply.client_urls)
        {
            eprintln!("ringkv: warning: peer {:016x}: {e}", self.peer_id);
        }
        Ok(client)
    }
}
