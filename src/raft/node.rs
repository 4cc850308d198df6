//! The raft loop: one task on the raft executor that owns the `RawNode`, the state machine and
//! the WAL handle, and turns queued requests into `Ready`s, WAL batches and applied entries.
//!
//! # One iteration
//!
//! 1. Tick raft if a heartbeat interval has passed; time out old requests; re-issue read
//!    barriers unanswered for half an election timeout.
//! 2. Take every queued request (up to `max_batch_entries` / `max_batch_bytes`): proposals go to
//!    `RawNode::propose` under a request id (a follower's are forwarded by raft-rs), read
//!    barriers are batched into one `RawNode::read_index`, peers' messages to `RawNode::step`,
//!    failed sends to `report_unreachable`.
//! 3. If raft has a `Ready`, handle it (below) and loop; otherwise sleep until a request arrives
//!    or the next tick is due.
//!
//! Requests that arrive while a `Ready` is being persisted wait in the queue and are all taken by
//! the next iteration, so they share the next `Ready`, WAL batch and fdatasync: group commit at
//! the raft level, with no timer.
//!
//! # Handling a `Ready` (the order is the point)
//!
//! 1. Send `messages` (a leader may send appends before persisting; raft thesis 10.2.1): each
//!    goes to the transport's queue for its peer, never blocking; one the transport drops is
//!    reported with `report_unreachable`.
//! 2. Persist: hard state, then the new entries, in one WAL submission (several if larger than a
//!    segment allows), and await durability. The entries are appended to the in-memory
//!    `LogStore` first, so raft-rs can read them once told they are persisted.
//! 3. Take the read states (confirmed read indexes).
//! 4. Apply `committed_entries` (already persisted by earlier `Ready`s).
//! 5. Send `persisted_messages` (votes and append responses: only after the state they promise
//!    is durable).
//! 6. `advance_append`: raft learns the entries are persisted; a single member commits them now.
//!    Handle the `LightReady`: note the commit index, send its messages, apply its committed
//!    entries; then `advance_apply`.
//! 7. Answer read barriers whose index is applied; compact the log if due; publish the status.
//!
//! Nothing is applied or answered before the entry is durable in the WAL. The commit index is
//! persisted lazily, in the hard state written with the next entries: it can be recomputed, and
//! replay is idempotent because the state machine's durable applied index is the truth.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;
use std::time::{SystemTime, UNIX_EPOCH};

use raft::eraftpb::{ConfChange, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, Ready, SnapshotStatus, StateRole};

use super::conf::{self, Membership};
use super::queue::{ProposeReply, ReadReply, Request};
use super::snapshot::{decode_descriptor, encode_descriptor, RegisteredImage};
use super::storage::{encode_entry, LogStore, REQUEST_ID_BYTES};
use super::{Committed, RaftConfig, RaftError, RaftStatus, Shared, StateMachine, Transport};
use crate::wal::disk::Disk;
use crate::wal::{self, Record, Wal};

mod lead;

/// Bytes of a hard-state frame in a WAL submission.
const HARD_STATE_FRAME_BYTES: usize = 40;

struct Proposal {
    deadline: Instant,
    reply: ProposeReply,
}

/// A request id: the proposing member and its sequence number (`Entry::context`).
pub(crate) fn request_id(member_id: u64, seq: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(REQUEST_ID_BYTES);
    id.extend_from_slice(&member_id.to_be_bytes());
    id.extend_from_slice(&seq.to_be_bytes());
    id
}

/// The (member, sequence) of an entry's request id; `None` for raft's own entries and for logs
/// written before request ids.
pub(crate) fn parse_request_id(context: &[u8]) -> Option<(u64, u64)> {
    if context.len() != REQUEST_ID_BYTES {
        return None;
    }
    let (member, seq) = context.split_at(8);
    Some((
        u64::from_be_bytes(member.try_into().ok()?),
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// The first sequence number of this process: the wall clock in nanoseconds, so that a restarted
/// member never reuses a sequence that an entry still in its log carries (it proposes fewer than
/// one request per nanosecond). Replayed entries then match no live waiter.
fn first_sequence() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// What the application hands the loop: its state machine, transport and membership.
type Parts = (
    Box<dyn StateMachine>,
    Option<Box<dyn Transport>>,
    Option<Box<dyn Membership>>,
);

enum Payload {
    Data(Vec<u8>),
    ConfChange(Box<ConfChange>),
}

struct ReadWaiter {
    deadline: Instant,
    reply: ReadReply,
}

/// Read barriers, batched: all waiters queued between two `read_index` calls share one context.
/// A context is a request id (`member id ‖ sequence`): the leader keys pending reads by context
/// across all members, so contexts must be unique cluster-wide.
#[derive(Default)]
struct Reads {
    next_ctx: u64,
    /// Waiting for raft to be able to serve a read index (a leader that has committed in its term).
    unsent: Vec<ReadWaiter>,
    /// Sent to raft under a context, waiting for its read state. A follower's request or the
    /// leader's answer may be lost on the way: a context unanswered after `read_retry` is sent
    /// again under a new one (etcd retries after 500 ms too).
    in_flight: HashMap<u64, Vec<ReadWaiter>>,
    sent_at: HashMap<u64, Instant>,
    /// Read index known, waiting for the applied index to reach it.
    confirmed: Vec<(u64, Vec<ReadWaiter>)>,
}

pub struct Node {
    raw: RawNode<LogStore>,
    sm: Box<dyn StateMachine>,
    wal: Wal,
    shared: Arc<Shared>,
    cfg: RaftConfig,
    /// Peers' messages go here; `None` for a single member (raft addresses no one).
    transport: Option<Box<dyn Transport>>,
    /// Where conf changes apply; `None`: the voters are fixed (`RaftConfig::voters`).
    membership: Option<Box<dyn Membership>>,
    /// Proposals made on this member, by sequence number, waiting for their entry to apply.
    proposals: HashMap<u64, Proposal>,
    /// Proposals this member appended as leader: index -> sequence. An entry of another request
    /// applied at that index means the proposal's entry was replaced: it is answered `Dropped`.
    leader_indexes: BTreeMap<u64, u64>,
    next_seq: u64,
    reads: Reads,
    /// The last index handed to the state machine or passed over (no-ops, replayed entries).
    applied: u64,
    /// Entries at or below this were applied before the restart: the state machine's durable
    /// applied index at start. They are passed over, never re-applied.
    skip_through: u64,
    /// The in-memory commit index is ahead of the one last written to the WAL.
    commit_unpersisted: bool,
    next_tick: Instant,
    requests: Vec<Request>,
    /// Proposals waiting for raft to accept proposals (a leader known, no transfer): `lead.rs`.
    held: lead::Held,
    /// Id of the next image registered for snapshot senders.
    next_image_id: u64,
    /// When the loop last said it cannot build a snapshot (a state machine without images).
    snapshot_warned: Option<Instant>,
}

/// At most one "cannot send a snapshot" warning per this interval.
const SNAPSHOT_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How `run` gets its WAL (`RaftConfig::wal_executor`).
pub enum WalStart<D> {
    /// Recover the log on this executor and spawn the writer task here.
    Recover(D),
    /// Already recovered by `Wal::open`, whose writer runs on a thread of its own.
    Opened(Wal, wal::Recovered),
}

/// Recovers the WAL on this executor and starts its writer here (or takes one already opened),
/// builds the node, elects it (a single member) and handles the first `Ready` (which re-applies
/// the committed log above the state machine's index), reports the outcome on `opened`, then
/// runs the loop until shutdown.
pub async fn run<D: Disk>(
    wal_start: WalStart<D>,
    cfg: RaftConfig,
    sm: Box<dyn StateMachine>,
    transport: Option<Box<dyn Transport>>,
    membership: Option<Box<dyn Membership>>,
    shared: Arc<Shared>,
    opened: std::sync::mpsc::Sender<Result<Wal, RaftError>>,
) {
    let (wal, recovered) = match wal_start {
        WalStart::Recover(disk) => match Wal::recover(disk, &cfg.wal_dir, cfg.wal.clone()).await {
            Ok((wal, recovered, writer)) => {
                glommio::spawn_local(writer.run()).detach();
                (wal, recovered)
            }
            Err(e) => {
                let _ = opened.send(Err(e.into()));
                return;
            }
        },
        WalStart::Opened(wal, recovered) => (wal, recovered),
    };
    let parts = (sm, transport, membership);
    let mut node = match Node::new(cfg, parts, shared, wal.clone(), &recovered).await {
        Ok(node) => node,
        Err(e) => {
            let _ = wal.shutdown().await;
            let _ = opened.send(Err(e));
            return;
        }
    };
    drop(recovered);
    if let Err(e) = node.begin().await {
        let _ = wal.shutdown().await;
        let _ = opened.send(Err(e));
        return;
    }
    let _ = opened.send(Ok(wal));
    let result = node.run_loop().await;
    node.stop(result).await;
}

/// raft-rs's configuration of a member starting from `applied` (one tick per heartbeat). Shared
/// with the simulation (`sim.rs`), so that it runs raft exactly as configured here.
pub(crate) fn raft_config(cfg: &RaftConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: cfg.member_id,
        heartbeat_tick: 1,
        election_tick: cfg.election_ticks(),
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        pre_vote: cfg.pre_vote,
        check_quorum: cfg.check_quorum,
        ..raft::Config::default()
    }
}

impl Node {
    async fn new(
        cfg: RaftConfig,
        (sm, transport, membership): Parts,
        shared: Arc<Shared>,
        wal: Wal,
        recovered: &wal::Recovered,
    ) -> Result<Node, RaftError> {
        match recovered.metadata {
            Some(m) if m.member_id != cfg.member_id || m.cluster_id != cfg.cluster_id => {
                return Err(RaftError::MemberMismatch {
                    wal_member_id: m.member_id,
                    wal_cluster_id: m.cluster_id,
                    member_id: cfg.member_id,
                    cluster_id: cfg.cluster_id,
                });
            }
            Some(_) => {}
            None => {
                wal.append(vec![Record::Metadata {
                    member_id: cfg.member_id,
                    cluster_id: cfg.cluster_id,
                }])
                .await?;
            }
        }
        // Fixed membership: every member starts from the same voters and an empty log.
        // Otherwise the record's, which reflects every change up to its conf index.
        let conf_state = match &membership {
            Some(m) => m.conf_state(),
            None => ConfState::from((cfg.voters.clone(), Vec::<u64>::new())),
        };
        let mut store = LogStore::from_recovered(recovered, conf_state)?;
        let (mut sm, mut membership) = (sm, membership);
        let snapshot_index = store.snapshot_index();
        if sm.applied_index() < snapshot_index {
            // A crash between a received snapshot's WAL marker and its restore: the membership
            // may be the old one too, and is restored with the state.
            let restored = restore_at_start(
                &mut *sm,
                membership.as_deref_mut(),
                snapshot_index,
                store.snapshot_term(),
                cfg.member_id,
            );
            if let Some(conf_state) = restored {
                store.set_conf_state(conf_state);
            }
        }
        let sm_applied = sm.applied_index();
        let last_index = raft::Storage::last_index(&store)?;
        if sm_applied < snapshot_index {
            return Err(RaftError::StateMachineBehindLog {
                applied_index: sm_applied,
                snapshot_index,
            });
        }
        if sm_applied > last_index {
            return Err(RaftError::CorruptLog(format!(
                "state machine applied index {sm_applied} is past the log's last index \
                 {last_index}: the log lost acknowledged entries or belongs to another store"
            )));
        }
        // raft-rs requires applied <= commit; entries between the persisted commit and the
        // state machine's index come back as committed and are passed over.
        let applied = sm_applied.min(store.hard_state().commit);
        let raft_cfg = raft_config(&cfg, applied);
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, store, &super::log::logger(cfg.member_id))?;
        let next_tick = Instant::now() + cfg.heartbeat;
        let node = Node {
            raw,
            sm,
            wal,
            shared,
            transport,
            membership,
            proposals: HashMap::new(),
            leader_indexes: BTreeMap::new(),
            next_seq: first_sequence(),
            reads: Reads {
                next_ctx: first_sequence(),
                ..Reads::default()
            },
            applied,
            skip_through: sm_applied,
            commit_unpersisted: false,
            next_tick,
            requests: Vec::with_capacity(cfg.max_batch_entries),
            held: lead::Held::default(),
            next_image_id: 1,
            snapshot_warned: None,
            cfg,
        };
        node.publish_status();
        Ok(node)
    }

    /// As etcd does for a single member: elect ourselves at once rather than after an election
    /// timeout (with peers this stays with the election timer), and persist and apply
    /// what that yields, so `start` returns with a leader and the log replayed.
    async fn begin(&mut self) -> Result<(), RaftError> {
        let voters = self.raw.raft.prs().conf().voters().ids();
        if voters.len() == 1 && voters.contains(self.cfg.member_id) {
            self.raw.campaign()?;
        }
        while self.raw.has_ready() {
            self.handle_ready().await?;
        }
        Ok(())
    }

    async fn run_loop(&mut self) -> Result<(), RaftError> {
        loop {
            self.tick();
            let mut requests = std::mem::take(&mut self.requests);
            let closed = self.shared.queue.drain(
                self.cfg.max_batch_entries,
                self.cfg.max_batch_bytes,
                &mut requests,
            );
            for request in requests.drain(..) {
                self.handle_request(request);
            }
            self.requests = requests;
            if closed {
                return Ok(());
            }
            self.release_held();
            self.issue_reads();
            self.prepare_snapshot();
            if self.raw.has_ready() {
                self.handle_ready().await?;
                continue;
            }
            self.wait().await;
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if now < self.next_tick {
            return;
        }
        // One tick however late: ticks missed during a long apply are dropped (as etcd's ticker
        // drops them) rather than firing an election timeout at once.
        self.raw.tick();
        self.next_tick = now + self.cfg.heartbeat;
        self.expire_requests(now);
        self.expire_held(now);
        self.retry_reads(now);
    }

    async fn wait(&self) {
        let now = Instant::now();
        if now >= self.next_tick {
            return;
        }
        let queued = pin!(self.shared.queue.wait());
        let timer = pin!(glommio::timer::sleep(self.next_tick - now));
        futures::future::select(queued, timer).await;
    }

    fn handle_request(&mut self, request: Request) {
        let deadline = Instant::now() + self.cfg.request_timeout;
        match request {
            Request::Propose { data, reply } => {
                self.propose(Payload::Data(data), reply, deadline);
            }
            Request::ProposeConfChange { change, reply } => {
                if self.membership.is_none() {
                    let reason = "this member's membership is fixed".to_owned();
                    let _ = reply.send(Err(RaftError::InvalidConfig(reason)));
                } else {
                    self.propose(Payload::ConfChange(change), reply, deadline);
                }
            }
            Request::LearnerProgress { id, reply } => {
                let _ = reply.send(conf::learner_progress(&self.raw, id));
            }
            Request::ReadIndex { reply } => {
                self.reads.unsent.push(ReadWaiter { deadline, reply });
            }
            Request::Step(msg) => {
                // Messages from unknown peers or stale terms are raft's to judge; an error here
                // (a message for a removed peer) is not the loop's failure.
                if let Err(e) = self.raw.step(*msg) {
                    if !matches!(e, raft::Error::StepPeerNotFound) {
                        eprintln!("raft[{:x}]: step: {e}", self.cfg.member_id);
                    }
                }
            }
            Request::Unreachable(peer) => self.raw.report_unreachable(peer),
            Request::TransferLeader { target, reply } => self.transfer_leader(target, reply),
            Request::SnapshotStatus { peer, delivered } => {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(peer, status);
            }
        }
    }

    /// Proposes `payload`, or holds it while raft would drop it (no leader, a leader transfer)
    /// or while older proposals are held (`lead.rs`).
    fn propose(&mut self, payload: Payload, reply: ProposeReply, deadline: Instant) {
        if !self.held.is_empty() || !self.accepts_proposals() {
            self.hold(payload, reply, deadline);
            return;
        }
        self.propose_now(payload, reply, deadline);
    }

    /// Proposes `payload` under a new request id; on a follower raft-rs forwards it to the
    /// leader.
    fn propose_now(&mut self, payload: Payload, reply: ProposeReply, deadline: Instant) {
        let raft = &self.raw.raft;
        let leader_id = raft.leader_id;
        let leading = raft.state == StateRole::Leader;
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = request_id(self.cfg.member_id, seq);
        let proposed = match payload {
            Payload::Data(data) => self.raw.propose(id, data),
            Payload::ConfChange(change) => self.raw.propose_conf_change(id, *change),
        };
        if let Err(e) = proposed {
            let error = match e {
                // A leader transferring leadership, or a follower that lost its leader.
                raft::Error::ProposalDropped => RaftError::NotLeader { leader_id },
                e => e.into(),
            };
            let _ = reply.send(Err(error));
            return;
        }
        if leading {
            // A leader appends a proposal to its own log at once: this is its index.
            let index = self.raw.raft.raft_log.last_index();
            // An older proposal at this index was replaced in a past term and not yet noticed.
            if let Some(old) = self.leader_indexes.insert(index, seq) {
                if let Some(p) = self.proposals.remove(&old) {
                    let _ = p.reply.send(Err(RaftError::Dropped { index }));
                }
            }
        }
        self.proposals.insert(seq, Proposal { deadline, reply });
    }

    /// Hands `msgs` to the transport; one it cannot queue is reported unreachable.
    fn send_messages(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let Some(transport) = self.transport.as_mut() else {
            let m = &msgs[0];
            panic!(
                "a member without peers has no transport, yet raft sent {:?} to {}",
                m.get_msg_type(),
                m.to
            );
        };
        let mut unreachable = Vec::new();
        for m in msgs {
            let (to, snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            if !transport.send(m) {
                unreachable.push((to, snapshot));
            }
        }
        for (to, snapshot) in unreachable {
            self.raw.report_unreachable(to);
            if snapshot {
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
            }
        }
    }

    /// Sends all waiting read barriers to raft under one context, once raft can serve them: a
    /// leader only answers a read index after committing an entry in its term (raft-rs drops the
    /// request otherwise), a follower forwards it to a known leader.
    fn issue_reads(&mut self) {
        if self.reads.unsent.is_empty() {
            return;
        }
        let raft = &self.raw.raft;
        let ready = match raft.state {
            StateRole::Leader => raft.commit_to_current_term(),
            _ => raft.leader_id != raft::INVALID_ID,
        };
        if !ready {
            return;
        }
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        let waiters = std::mem::take(&mut self.reads.unsent);
        self.reads.in_flight.insert(ctx, waiters);
        self.reads.sent_at.insert(ctx, Instant::now());
        self.raw.read_index(request_id(self.cfg.member_id, ctx));
    }

    async fn handle_ready(&mut self) -> Result<(), RaftError> {
        let mut rd = self.raw.ready();
        self.send_messages(rd.take_messages());
        if !rd.snapshot().is_empty() {
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs.clone());
            }
            self.install_snapshot(rd.snapshot().clone()).await?;
        }
        self.persist(&mut rd).await?;
        for rs in rd.take_read_states() {
            let Some((member, ctx)) = parse_request_id(&rs.request_ctx) else {
                panic!("read contexts are request ids: {:?}", rs.request_ctx);
            };
            if member != self.cfg.member_id {
                continue;
            }
            self.reads.sent_at.remove(&ctx);
            if let Some(waiters) = self.reads.in_flight.remove(&ctx) {
                self.reads.confirmed.push((rs.index, waiters));
            }
        }
        self.apply(rd.take_committed_entries());
        self.send_messages(rd.take_persisted_messages());

        let mut light = self.raw.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
            self.commit_unpersisted = true;
        }
        self.send_messages(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();

        self.answer_reads();
        self.maybe_compact().await?;
        self.publish_status();
        Ok(())
    }

    /// Makes the `Ready`'s hard state and entries durable (module doc, step 2).
    async fn persist(&mut self, rd: &mut Ready) -> Result<(), RaftError> {
        let entries = rd.take_entries();
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone());
        }
        if entries.is_empty() && rd.hs().is_none() {
            return Ok(());
        }
        let last_before = self.raw.raft.raft_log.persisted;
        let chunk_bytes_max = self.cfg.wal.submission_bytes_max() as usize - HARD_STATE_FRAME_BYTES;
        let mut chunks: Vec<Vec<Record>> = vec![Vec::new()];
        let mut chunk_bytes = 0;
        for e in &entries {
            let record = encode_entry(e);
            let bytes = record.frame_bytes();
            if chunk_bytes + bytes > chunk_bytes_max && !chunks[chunks.len() - 1].is_empty() {
                chunks.push(Vec::new());
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunks.last_mut().expect("one chunk").push(record);
        }
        // The hard state goes first: a term and vote are durable no later than entries of that
        // term. Its commit may not pass the last entry durable with it (raft-rs refuses to
        // start from a commit beyond the log).
        let first_chunk_last = entries
            .iter()
            .take(chunks[0].len())
            .last()
            .map_or(last_before, |e| e.index);
        self.raw.mut_store().append(&entries);
        let hs = self.raw.store().hard_state();
        let commit = hs.commit.min(first_chunk_last);
        chunks[0].insert(
            0,
            Record::HardState {
                term: hs.term,
                vote: hs.vote,
                commit,
            },
        );
        self.commit_unpersisted = commit < hs.commit;
        for chunk in chunks {
            self.wal.append(chunk).await?;
        }
        Ok(())
    }

    /// Hands committed entries with data to the state machine in batches and answers their
    /// proposers; a conf change ends a batch and goes to the membership (`conf.rs`), so both see
    /// the log in order.
    fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(entries.len());
        let mut replies = Vec::with_capacity(entries.len());
        for e in entries {
            assert_eq!(
                e.index,
                self.applied + 1,
                "committed entries arrive contiguous and in order"
            );
            let own_seq = parse_request_id(&e.context)
                .filter(|&(member, _)| member == self.cfg.member_id)
                .map(|(_, seq)| seq);
            if e.get_entry_type() != EntryType::EntryNormal {
                self.apply_batch(&batch, std::mem::take(&mut replies));
                batch.clear();
                self.applied = e.index;
                self.drop_replaced(e.index, own_seq);
                let waiter = own_seq.and_then(|seq| self.proposals.remove(&seq));
                self.apply_conf_entry(&e, waiter);
                continue;
            }
            self.applied = e.index;
            self.drop_replaced(e.index, own_seq);
            let waiter = own_seq.and_then(|seq| self.proposals.remove(&seq));
            let pass_over = e.index <= self.skip_through || e.data.is_empty();
            match waiter {
                Some(w) if !pass_over => replies.push(Some(w.reply)),
                Some(w) => {
                    // Applied before this process started: not this waiter's entry.
                    let _ = w.reply.send(Err(RaftError::Dropped { index: e.index }));
                }
                None if !pass_over => replies.push(None),
                None => {}
            }
            if !pass_over {
                batch.push(Committed {
                    index: e.index,
                    term: e.term,
                    data: e.data.to_vec(),
                });
            }
        }
        if let Some((&first_waiting, _)) = self.leader_indexes.first_key_value() {
            assert!(
                first_waiting > self.applied,
                "a proposal below applied was never answered"
            );
        }
        self.apply_batch(&batch, replies);
    }

    /// One `StateMachine::apply` call, then the replies.
    fn apply_batch(&mut self, batch: &[Committed], replies: Vec<Option<ProposeReply>>) {
        if batch.is_empty() {
            return;
        }
        let results = self.sm.apply(batch);
        assert_eq!(
            results.len(),
            batch.len(),
            "the state machine returns one reply per entry"
        );
        // Before any proposer hears back, so that `status().applied_index` never lags a reply
        // a caller has already seen.
        self.publish_status();
        for (reply, result) in replies.into_iter().zip(results) {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(result));
            }
        }
    }

    /// A committed conf change: to the membership, then raft (`conf::apply_entry`).
    fn apply_conf_entry(&mut self, e: &Entry, waiter: Option<Proposal>) {
        let Some(membership) = self.membership.as_mut() else {
            panic!(
                "conf change at index {} in the log of a member whose membership is fixed",
                e.index
            );
        };
        let reply = conf::apply_entry(&mut self.raw, membership.as_mut(), e);
        self.publish_status();
        if let Some(w) = waiter {
            let _ = w.reply.send(match reply {
                Some(reply) => Ok(reply),
                // Reflected by the record before this process started: not this waiter's.
                None => Err(RaftError::Dropped { index: e.index }),
            });
        }
    }

    /// Answers `Dropped` to this member's leader proposals at or below `index` whose entry was
    /// replaced (another leader's entry took the slot): that entry will never apply.
    fn drop_replaced(&mut self, index: u64, own_seq: Option<u64>) {
        while let Some(entry) = self.leader_indexes.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (at, seq) = entry.remove_entry();
            if at == index && Some(seq) == own_seq {
                continue;
            }
            if let Some(p) = self.proposals.remove(&seq) {
                let _ = p.reply.send(Err(RaftError::Dropped { index: at }));
            }
        }
    }

    /// Moves read barriers unanswered for `read_retry` back to `unsent`, to go out again under a
    /// new context (the old one's answer, if it ever comes, finds no waiters).
    fn retry_reads(&mut self, now: Instant) {
        let retry = self.cfg.election_timeout / 2;
        let stale: Vec<u64> = self
            .reads
            .sent_at
            .iter()
            .filter(|(_, &sent)| now.duration_since(sent) >= retry)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in stale {
            self.reads.sent_at.remove(&ctx);
            if let Some(waiters) = self.reads.in_flight.remove(&ctx) {
                self.reads.unsent.extend(waiters);
            }
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        self.reads.confirmed.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.reply.send(Ok(()));
            }
            false
        });
    }

    /// Compacts the log once the state machine's durable applied index is `snapshot_entries`
    /// past the snapshot marker (plus the `compact_keep_entries` kept for lagging followers):
    /// snapshot marker to the WAL (durable first), then the in-memory log, then old segments.
    async fn maybe_compact(&mut self) -> Result<(), RaftError> {
        // Only what the state machine has made durable: entries above it are replayed from
        // the log after a crash.
        let durable = self.sm.durable_index().min(self.applied);
        let snapshot_index = self.raw.store().snapshot_index();
        let target = durable.saturating_sub(self.cfg.compact_keep_entries);
        if target <= snapshot_index || target - snapshot_index < self.cfg.snapshot_entries {
            return Ok(());
        }
        let term = raft::Storage::term(self.raw.store(), target)?;
        let hs = self.raw.store().hard_state().clone();
        assert!(
            hs.commit >= target,
            "only applied, hence committed, entries are compacted"
        );
        self.wal
            .append(vec![
                Record::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit.min(self.raw.raft.raft_log.persisted),
                },
                Record::Snapshot {
                    index: target,
                    term,
                },
            ])
            .await?;
        self.raw.mut_store().compact(target);
        self.wal.release_to(target).await?;
        // A prepared image below the marker would leave a follower needing compacted entries.
        if self
            .raw
            .store()
            .prepared()
            .is_some_and(|p| p.get_metadata().index < target)
        {
            self.set_prepared(None);
        }
        Ok(())
    }

    fn expire_requests(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in expired {
            let p = self.proposals.remove(&seq).expect("listed");
            let _ = p.reply.send(Err(self.timeout_error(p.deadline)));
        }
        let proposals = &self.proposals;
        self.leader_indexes
            .retain(|_, seq| proposals.contains_key(seq));
        let expire = |waiters: &mut Vec<ReadWaiter>| {
            let mut kept = Vec::with_capacity(waiters.len());
            for w in waiters.drain(..) {
                if w.deadline <= now {
                    let _ = w.reply.send(Err(RaftError::Timeout));
                } else {
                    kept.push(w);
                }
            }
            *waiters = kept;
        };
        expire(&mut self.reads.unsent);
        self.reads.in_flight.values_mut().for_each(expire);
        self.reads.confirmed.iter_mut().for_each(|(_, w)| expire(w));
        self.reads.in_flight.retain(|_, w| !w.is_empty());
        let in_flight = &self.reads.in_flight;
        self.reads
            .sent_at
            .retain(|ctx, _| in_flight.contains_key(ctx));
        self.reads.confirmed.retain(|(_, w)| !w.is_empty());
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let mut status = self.shared.status.lock();
        // etcd counts a change to a known leader other than the last one seen.
        if raft.leader_id != raft::INVALID_ID && raft.leader_id != status.leader_id {
            crate::metrics::METRICS.leader_changes.inc();
        }
        *status = RaftStatus {
            member_id: self.cfg.member_id,
            cluster_id: self.cfg.cluster_id,
            term: raft.term,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
        };
    }

    /// Fails everything pending, writes the commit index if it is behind, stops the WAL writer.
    async fn stop(mut self, result: Result<(), RaftError>) {
        let reason = result.as_ref().err().map(ToString::to_string);
        let error = || match &reason {
            None => RaftError::Stopped,
            Some(reason) => RaftError::Halted {
                reason: reason.clone(),
            },
        };
        for request in self.shared.queue.close() {
            request.fail(error);
        }
        for (_, p) in std::mem::take(&mut self.proposals) {
            let _ = p.reply.send(Err(error()));
        }
        self.fail_held(error);
        let reads = std::mem::take(&mut self.reads);
        let waiters = reads
            .unsent
            .into_iter()
            .chain(reads.in_flight.into_values().flatten())
            .chain(reads.confirmed.into_iter().flat_map(|(_, w)| w));
        for w in waiters {
            let _ = w.reply.send(Err(error()));
        }
        if result.is_ok() && self.commit_unpersisted {
            let hs = self.raw.store().hard_state();
            let flushed = self
                .wal
                .append(vec![Record::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit.min(self.raw.raft.raft_log.persisted),
                }])
                .await;
            if let Err(e) = flushed {
                eprintln!(
                    "raft[{:x}]: writing the commit index at shutdown failed: {e}",
                    self.cfg.member_id
                );
            }
        }
        let _ = self.wal.shutdown().await;
        if let Some(reason) = &reason {
            eprintln!("raft[{:x}]: halted: {reason}", self.cfg.member_id);
        }
        self.publish_status();
    }
}

/// Restores the state machine and the membership from the image staged for the log's snapshot
/// marker, at start; the configuration raft starts from, if the membership was restored. If
/// the state cannot be restored, the caller refuses to start (`StateMachineBehindLog`).
fn restore_at_start(
    sm: &mut dyn StateMachine,
    mut membership: Option<&mut (dyn Membership + 'static)>,
    index: u64,
    term: u64,
    member_id: u64,
) -> Option<ConfState> {
    eprintln!(
        "raft[{member_id:x}]: info: the state machine is at {} behind the log's snapshot at \
         {index}: restoring the staged snapshot",
        sm.applied_index()
    );
    let mut conf_state = None;
    let restored = sm.restore(index, term, &mut |header| {
        conf_state = conf::restore(membership.as_deref_mut(), header)?;
        Ok(())
    });
    if let Err(reason) = restored {
        eprintln!("raft[{member_id:x}]: error: restoring the snapshot at {index}: {reason}");
    }
    conf_state
}

/// Snapshots: preparing one for followers (leader) and installing a received one (follower).
/// See the module doc of `raft` ("Snapshots to lagging and new members").
impl Node {
    /// If raft asked for a snapshot it could not have, prepares one at the applied index: the
    /// state machine's image, registered for the senders, and its metadata for `LogStore`.
    fn prepare_snapshot(&mut self) {
        let Some(request_index) = self.raw.store().take_snapshot_request() else {
            return;
        };
        let index = self.applied;
        let conf_index = self.membership.as_ref().map_or(0, |m| m.conf_index());
        if index < request_index || index < self.raw.store().snapshot_index() || index < conf_index
        {
            // Not applied far enough yet (after a restart the membership record may be ahead
            // of the replay); raft asks again.
            return;
        }
        let Some(image) = self.sm.snapshot() else {
            let now = Instant::now();
            if self
                .snapshot_warned
                .is_none_or(|at| now.duration_since(at) >= SNAPSHOT_WARNING_INTERVAL)
            {
                self.snapshot_warned = Some(now);
                eprintln!(
                    "raft[{:x}]: warning: a member needs raft entries this leader has compacted, \
                     and the state machine cannot build snapshots: it cannot catch up",
                    self.cfg.member_id
                );
            }
            return;
        };
        let term = match raft::Storage::term(self.raw.store(), index) {
            Ok(term) => term,
            Err(e) => panic!("the applied index {index} has a term in the log: {e}"),
        };
        // raft's configuration at the applied index: conf changes apply in log order with the
        // entries, so it is the one at the image's index, and the membership record's.
        let conf_state = self.raw.raft.prs().conf().to_conf_state();
        let app = match &self.membership {
            Some(m) => {
                let recorded = m.conf_state();
                assert!(
                    conf::same_members(&conf_state, &recorded),
                    "the snapshot at {index}: raft's configuration {conf_state:?} differs from \
                     the recorded {recorded:?} (as of index {conf_index})"
                );
                m.snapshot()
            }
            None => Vec::new(),
        };
        let id = self.next_image_id;
        self.next_image_id += 1;
        self.shared.images.insert(
            id,
            RegisteredImage {
                index,
                term,
                app: app.into(),
                image,
            },
        );
        let mut snapshot = Snapshot {
            data: encode_descriptor(id).into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        self.set_prepared(Some(snapshot));
    }

    /// Replaces the prepared snapshot, unregistering the old one's image (a sender streaming it
    /// holds its own reference).
    fn set_prepared(&mut self, snapshot: Option<Snapshot>) {
        if let Some(old) = self.raw.mut_store().set_prepared(snapshot) {
            if let Some(id) = decode_descriptor(&old.data) {
                self.shared.images.remove(id);
            }
        }
    }

    /// Installs a received snapshot (a `Ready`'s, before its entries): WAL marker and hard
    /// state, durable; the in-memory log reset to it; the state machine restored from the
    /// staged image; the applied index moved to it.
    async fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), RaftError> {
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        assert!(
            index > self.applied,
            "raft installs only snapshots past the applied index ({index} <= {})",
            self.applied
        );
        self.raw.mut_store().apply_snapshot(&snapshot);
        let hs = self.raw.store().hard_state().clone();
        self.wal
            .append(vec![
                Record::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: index,
                },
                Record::Snapshot { index, term },
            ])
            .await?;
        self.wal.release_to(index).await?;
        super::snapshot::failpoint("raft-snapshot-marked");
        let started = Instant::now();
        let mut restored_conf = None;
        let membership = &mut self.membership;
        self.sm
            .restore(index, term, &mut |header| {
                restored_conf = conf::restore(membership.as_deref_mut(), header)?;
                Ok(())
            })
            .map_err(|reason| RaftError::Restore { index, reason })?;
        if let Some(recorded) = restored_conf {
            let taken = snapshot.get_metadata().get_conf_state();
            assert!(
                conf::same_members(taken, &recorded),
                "the snapshot at {index}: raft took the configuration {taken:?}, its membership \
                 record says {recorded:?}"
            );
            self.raw.mut_store().set_conf_state(recorded);
        }
        assert_eq!(
            self.sm.applied_index(),
            index,
            "a restored state machine is at the snapshot's index"
        );
        eprintln!(
            "raft[{:x}]: info: restored the snapshot at index {index} (term {term}) in {:?}",
            self.cfg.member_id,
            started.elapsed()
        );
        self.applied = index;
        self.skip_through = self.skip_through.max(index);
        // Proposals this member appended as leader at or below the snapshot: whether their
        // entries are in it is unknown, so they are answered nothing and time out.
        self.leader_indexes.retain(|&at, _| at > index);
        self.set_prepared(None);
        self.publish_status();
        Ok(())
    }
}
