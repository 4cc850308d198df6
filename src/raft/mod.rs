//! Replicated state machine on raft-rs: opaque byte proposals go through raft, are persisted in
//! ringkv's WAL, and come out, committed and in log order, to a [`StateMachine`]. This module
//! knows nothing of etcd's requests.
//!
//! # Threads
//!
//! [`start`] spawns one glommio executor thread (pinned per `RaftConfig::raft_cpu`) that runs
//! the raft loop (`node.rs`) and the state machine's `apply` cooperatively. The WAL writer task
//! goes where `RaftConfig::wal_executor` says:
//! - [`WalExecutor::Raft`] (default): recovered with `Wal::recover` and spawned on the same
//!   executor. The loop awaits each `Ready`'s WAL batch before applying it, so the writer and
//!   the loop rarely have work at the same time, and a same-thread hand-off saves a cross-thread
//!   wake-up per batch.
//! - [`WalExecutor::Own`]: `start` opens the WAL with `Wal::open_with_disk` (recovery on the
//!   writer's own `wal-writer` executor thread, pinned per `wal.writer_cpu`) before the raft
//!   thread starts, and the loop submits to it across threads. Recovery, the order of records
//!   and the durability the loop waits for are the same; [`RaftHandle::shutdown`] joins that
//!   thread after the loop has stopped the writer.
//!
//! The fdatasync itself is asynchronous (io_uring) either way.
//!
//! Callers on any thread (tokio, tonic) use a [`RaftHandle`]: requests go through a bounded
//! queue (`queue.rs`) to the loop and answers come back on oneshot channels.
//!
//! # A proposal's path
//!
//! `propose` -> request queue (waits while full) -> loop takes every queued request ->
//! `RawNode::propose` with a request id (`member id ‖ sequence`, 16 bytes) as the entry's
//! `context` -> on a follower raft-rs forwards it to the leader -> `Ready` -> hard state +
//! entries in one WAL batch -> fdatasync -> committed (a single member at `advance_append`; with
//! peers once a quorum has it durable) -> `StateMachine::apply` on the batch of committed entries
//! -> on the member whose id the entry carries, the reply goes to the waiter with that sequence.
//! The log index cannot identify a proposal: a follower forwarding one never learns it. See
//! `node.rs` for the exact `Ready` handling order.
//!
//! # Peers
//!
//! The engine knows peers only as raft ids and a [`Transport`]: `Ready` messages are handed to
//! `Transport::send`, which must not block (it queues, or drops and says so; the loop then
//! calls `report_unreachable`). Messages from peers come in through [`RaftHandle::step`] on the
//! bounded request queue, and dropped ones are retransmitted by raft. Messages of a `Ready` that
//! promise durable state (votes, append responses: `persisted_messages`) are sent only after
//! that state is durable; a leader's appends go out before its own fdatasync. Without a
//! [`Membership`] the voters are the fixed `RaftConfig::voters` (every member starts with the
//! same `ConfState` and an empty log); with one, membership changes as below. A snapshot
//! carries the `ConfState` at its index.
//! Linearizable reads use ReadIndex on any member (a follower's request is forwarded to the
//! leader). With one voter there is no transport and no network on the write path.
//!
//! # Membership changes (`conf.rs`)
//!
//! A change is a raft `ConfChange` (v1: one voter or learner added, removed, or promoted at a
//! time, as etcd 3.4 does; no joint consensus) proposed through the request queue like any
//! proposal, under a request id, with the application's description of the change in the
//! `ConfChange::context`. When it commits, the loop hands it to the application's
//! [`Membership`] in log order with the data entries around it (the data entries before it are
//! applied first). The application decides, from its membership alone (so every member decides
//! the same), whether the change applies; if it does, it records the new membership durably
//! **before returning** (together with the change's index, `Membership::conf_index`), and the
//! loop then calls `RawNode::apply_conf_change` and checks that raft's new `ConfState` is the
//! one the application derives from its record. A refused change is not applied to raft
//! (etcd applies an empty change in that case). The reply bytes go to the proposer.
//!
//! Restart: the `ConfState` raft starts from is the application's (`Membership::conf_state`),
//! which reflects every change up to `conf_index`. Conf-change entries at or below
//! `conf_index` that raft hands back (they are above the state machine's applied index) are
//! passed over; those above are applied. Because the record is made durable before any later
//! entry is applied, every change at or below the state machine's durable applied index is at
//! or below `conf_index`: raft never starts past a change the record lacks. A member joining an
//! existing cluster starts from the membership and `conf_index` a peer reported, with an empty
//! log, and replays the changes above that index when the leader sends them. A raft snapshot
//! must carry the membership and its `conf_index`: `Membership::snapshot` gives the bytes when
//! one is taken, and installing one calls `Membership::restore`, which records them (and
//! re-targets the transport) and returns the `ConfState` raft takes from the snapshot.
//!
//! # Restart
//!
//! The WAL's recovered entries, hard state and snapshot marker rebuild the in-memory log
//! (`storage.rs`). raft-rs starts from `applied = min(sm.applied_index(), persisted commit)`
//! (the commit index is persisted lazily, so it may lag what was applied). The member elects
//! itself and commits its whole log; the committed entries come back to the loop, which passes
//! over those at or below the state machine's durable applied index and applies the rest exactly
//! once, in order. Their proposers are gone, so replies are dropped. [`start`] returns after
//! this, with the member leading and the state machine up to date.
//!
//! # Log compaction
//!
//! When the state machine's durable index (`StateMachine::durable_index`, which may lag what it
//! has applied) is `snapshot_entries` past the snapshot
//! marker (keeping `compact_keep_entries` below it), the loop writes a hard state and a
//! `Record::Snapshot` marker (durable), drops the entries from the in-memory log and releases
//! the WAL segments below it. The state machine is its own snapshot: it must never restart
//! with an applied index below the marker (`RaftError::StateMachineBehindLog`), unless a staged
//! image of the marker's index lets it catch up (below). A follower that needs compacted
//! entries gets a snapshot instead.
//!
//! # Snapshots to lagging and new members (`snapshot.rs`)
//!
//! A raft snapshot here is the raft metadata (index, term, `ConfState`) plus a 12-byte
//! descriptor in `Snapshot::data` naming a [`SnapshotImage`]; the state itself travels beside
//! the raft message, as etcd sends its db after the `MsgSnapshot`, and the membership record
//! (`Membership::snapshot`) in the image's header.
//!
//! - **Leader, building.** raft-rs asks `Storage::snapshot` when a follower needs an entry at or
//!   below the log's snapshot marker. The `LogStore` answers with the image the loop prepared if
//!   it is still usable (its index is at or above the marker and the request), else it records
//!   the request and says "temporarily unavailable"; at the end of that iteration the loop asks
//!   the state machine for an image (`StateMachine::snapshot`: the server pins a page-store
//!   snapshot, so this costs no copy) at the applied index, registers it under a fresh id with
//!   the membership's bytes and keeps it in the `LogStore`; raft-rs asks again on the
//!   follower's next heartbeat response. The metadata's `ConfState` is raft's at the applied
//!   index (conf changes apply in log order with the entries), and the loop checks that it is
//!   the membership record's and that the record is not newer than the image.
//!   An image is dropped once log compaction passes it.
//! - **Leader, sending.** The `MsgSnapshot` goes to the transport like any message; the peer
//!   transport hands it to a snapshot sender task (tokio), which looks the image up by id and
//!   streams it (`snapshot.rs`'s frame format: bounded, checksummed, numbered chunks) with HTTP/2
//!   flow control; the walk over the pinned image runs on a blocking thread, one chunk ahead.
//!   The raft loop never waits on it: writes go on while a snapshot streams. When the stream
//!   ends the sender reports [`RaftHandle::report_snapshot`] `Finish` (the receiver has staged
//!   and stepped it) or `Failure` (raft then retries).
//! - **Follower, receiving.** The receiver checks every frame as it arrives and stages them in
//!   `<index>.rsnap` (fsync, rename, fsync of the directory), then steps the `MsgSnapshot`.
//! - **Follower, installing** (a `Ready` with a snapshot, before its entries): (1) a hard state
//!   and a WAL snapshot marker at the snapshot index, durable; the in-memory log is reset to the
//!   marker with the snapshot's `ConfState`; older WAL segments are released; (2)
//!   `StateMachine::restore` opens the staged image and hands its header to
//!   `Membership::restore`, which records the membership durably (and re-targets the
//!   transport) and returns its `ConfState`, checked equal to the snapshot's; then it replaces
//!   the whole state with the image, durably, with its consistent index = the snapshot index;
//!   (3) the applied index moves to it. Waiters for
//!   entries the snapshot covers are answered nothing (they time out: their entries may or may
//!   not be in the image). A crash between (1) and (2) restarts with the state machine behind
//!   the marker: the engine restores the staged image of that index, membership first, before
//!   starting raft, which then takes the restored record's `ConfState` (etcd reopens its
//!   backend from `snap/<index>.snap.db` the same way), and refuses to start
//!   (`StateMachineBehindLog`) if it is gone. Restoring the membership twice is harmless (the
//!   record's index does not go back). After the restore the record reflects every change up
//!   to the snapshot index (its own index is the last change's, at or below it), so a restart
//!   starts raft from the snapshot's `ConfState`.
//!
//! # Limitations (issue 5)
//!
//! - Without a `Membership` (a member started alone), membership is fixed: conf-change
//!   entries are never proposed.
//! - raft-rs accepts one pending change at a time: a change proposed while another is
//!   uncommitted becomes an empty entry and its proposer is answered `Dropped`.
//! - A forwarded proposal lost on the way (leader change) is answered only by `Timeout`.
//! - The follower's raft loop is busy while it restores an image (one write transaction over
//!   the whole state); it neither ticks nor campaigns meanwhile.
//!
//! # Leadership (issue 5 phase 2)
//!
//! A proposal made while raft-rs would drop it (no leader known, or a leader transferring its
//! leadership) waits in the loop, bounded in count and by its deadline, and is proposed once a
//! leader is known, as etcd's raft node holds proposals while it has no leader.
//! [`RaftHandle::transfer_leader`] starts raft-rs's leader transfer (etcd's MoveLeader).
//! See `node/lead.rs`.

mod conf;
mod config;
mod error;
mod log;
mod node;
mod queue;
pub mod sim;
pub mod snapshot;
pub mod storage;

use std::future::Future;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use raft::eraftpb::{ConfChange, Message};

pub use conf::{LearnerProgress, Membership};
pub use config::{RaftConfig, WalExecutor, VOTERS_MAX};
pub use error::RaftError;
pub use snapshot::{SnapshotImage, SnapshotStreamError};
pub use storage::LogStore;

use crate::wal::disk::{Disk, GlommioDisk};
use crate::wal::{Wal, WalStats};
use futures::channel::oneshot;
use queue::{Request, RequestQueue};

/// The application's deterministic state machine.
pub trait StateMachine: Send + 'static {
    /// Applies committed entries in log order, each exactly once per process lifetime; entries
    /// with index <= applied_index() (already applied before a restart) are skipped by the
    /// engine. Empty-data entries (raft's leader no-op, conf changes) are NOT passed. Returns one
    /// reply per entry, in order, delivered to the proposer of that entry if it is still waiting
    /// on this member.
    fn apply(&mut self, entries: &[Committed]) -> Vec<Vec<u8>>;
    /// The last raft index the state machine has applied. At start it must be durable: the
    /// engine passes over entries up to it and re-applies those above.
    fn applied_index(&self) -> u64;
    /// The last raft index whose effects a crash would not lose (the state machine's durable
    /// consistent index, at most `applied_index`); the log is compacted only up to it. A state
    /// machine that makes every apply durable before returning keeps the default.
    fn durable_index(&self) -> u64 {
        self.applied_index()
    }
    /// A point-in-time image of the whole state at `applied_index()`, for a follower that needs
    /// compacted entries. `None`: this state machine cannot send snapshots (raft is told to try
    /// later, and such a follower does not catch up).
    fn snapshot(&mut self) -> Option<Arc<dyn SnapshotImage>> {
        None
    }
    /// Replaces the whole state with the image staged for raft index `index` (see
    /// `snapshot.rs`), durably, so that `applied_index()` and `durable_index()` are `index`
    /// afterwards. Called only with `index` above `applied_index()`. Before it changes any
    /// state it hands the image header's app bytes (the engine's: the membership record) to
    /// `header`, and stops with that error if `header` refuses them; so once the state is
    /// restored, the membership is too. An error halts the loop.
    fn restore(
        &mut self,
        index: u64,
        term: u64,
        header: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let _ = (term, header);
        Err(format!(
            "this state machine cannot restore snapshots (index {index})"
        ))
    }
}

/// Where the loop sends raft messages to peers. Implementations must not block: queue the
/// message, or drop it and return `false` (the peer's queue is full or it is unknown), after
/// which the loop reports the peer unreachable to raft.
pub trait Transport: Send + 'static {
    fn send(&mut self, msg: Message) -> bool;
}

/// A committed log entry with data, as handed to [`StateMachine::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// A snapshot of the member's raft state, refreshed by the loop after every `Ready`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub member_id: u64,
    pub cluster_id: u64,
    pub term: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub commit_index: u64,
    /// Last index handed to the state machine (or passed over: no-ops, replayed entries).
    pub applied_index: u64,
}

/// State shared by the handles and the loop.
struct Shared {
    queue: RequestQueue,
    /// Images prepared for snapshot senders.
    images: snapshot::ImageRegistry,
    status: Mutex<RaftStatus>,
    finished: Mutex<Finished>,
    finished_cv: Condvar,
}

/// Whether the raft thread has finished (after the WAL writer stopped), and who waits for it.
#[derive(Default)]
struct Finished {
    done: bool,
    async_waiters: Vec<futures::channel::oneshot::Sender<()>>,
}

impl Shared {
    fn mark_finished(&self) {
        let mut finished = self.finished.lock();
        finished.done = true;
        for w in finished.async_waiters.drain(..) {
            let _ = w.send(());
        }
        self.finished_cv.notify_all();
    }
}

/// Closes the queue and marks the thread finished when the raft thread ends, also by panic
/// (an assertion in the loop or in the state machine), so callers never wait on a dead loop.
struct FinishGuard(Arc<Shared>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        for request in self.0.queue.close() {
            request.fail(|| RaftError::Stopped);
        }
        self.0.mark_finished();
    }
}

struct HandleInner {
    shared: Arc<Shared>,
    wal: Wal,
    /// The WAL writer runs on a thread of its own (`WalExecutor::Own`), joined at shutdown.
    wal_own_thread: bool,
    thread: Mutex<Option<glommio::ExecutorJoinHandle<()>>>,
    proposal_bytes_max: usize,
}

impl Drop for HandleInner {
    /// The last handle gone stops the loop (without waiting for it).
    fn drop(&mut self) {
        for request in self.shared.queue.close() {
            request.fail(|| RaftError::Stopped);
        }
    }
}

/// Handle to a running member. `Clone + Send + Sync`; usable from any thread and runtime.
#[derive(Clone)]
pub struct RaftHandle {
    inner: Arc<HandleInner>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<RaftHandle>();
    send_sync::<RaftError>();
};

impl std::fmt::Debug for RaftHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl RaftHandle {
    /// Queues the request `make` builds around a reply channel (waiting for room, like
    /// `propose`) and resolves with the loop's answer; `Stopped` if the loop ends first.
    fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RaftError>>) -> Request + Send + 'static,
    ) -> impl Future<Output = Result<T, RaftError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let (reply, done) = oneshot::channel();
            inner.shared.queue.push(make(reply)).await?;
            done.await.unwrap_or(Err(RaftError::Stopped))
        }
    }

    /// Proposes `data`; resolves with the StateMachine's reply once the entry is committed and
    /// applied on this member.
    ///
    /// Back-pressure: while the request queue is full (`proposal_queue_depth`) the future waits
    /// for room rather than failing, which is kinder to clients than an error they must retry;
    /// [`RaftHandle::try_propose`] fails with `Overloaded` instead. The request is queued when
    /// the future is first polled. On a follower the proposal is forwarded to the leader and
    /// answered here when its entry applies on this member. While no leader is known (an
    /// election) or the leader is transferring its leadership, the proposal waits in the loop
    /// until one can take it (`node/lead.rs`). Errors: `EmptyProposal`, `TooLarge`,
    /// `Overloaded` (too many proposals waiting for a leader), `NoLeaderTimeout` (never
    /// proposed), `Dropped`, `Timeout` (may still apply; also a forwarded proposal lost in a
    /// leader change), `Stopped`/`Halted` (may have applied if it was in the log).
    pub fn propose(
        &self,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, RaftError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            inner.check_proposal(&data)?;
            let (reply, done) = futures::channel::oneshot::channel();
            inner
                .shared
                .queue
                .push(Request::Propose { data, reply })
                .await?;
            done.await.unwrap_or(Err(RaftError::Stopped))
        }
    }

    /// [`RaftHandle::propose`], but fails at once with `Overloaded` if the queue is full. The
    /// request is queued by this call, so the log order of `try_propose` calls from one thread
    /// is their call order.
    pub fn try_propose(
        &self,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, RaftError>> + Send + 'static {
        let queued = self.inner.check_proposal(&data).and_then(|()| {
            let (reply, done) = futures::channel::oneshot::channel();
            self.inner
                .shared
                .queue
                .try_push(Request::Propose { data, reply })
                .map_err(|(_, e)| e)
                .map(|()| done)
        });
        async move {
            match queued {
                Ok(done) => done.await.unwrap_or(Err(RaftError::Stopped)),
                Err(e) => Err(e),
            }
        }
    }

    /// Linearizable read barrier (raft ReadIndex, batched across concurrent callers): resolves
    /// once this member's applied index >= the read index confirmed by a quorum. Waits for
    /// queue room like `propose`.
    pub fn read_index(&self) -> impl Future<Output = Result<(), RaftError>> + Send + 'static {
        self.ask(move |reply| Request::ReadIndex { reply })
    }

    /// Proposes a membership change (see "Membership changes"); resolves with the
    /// [`Membership`]'s reply once it has applied on this member. Errors as `propose`, and
    /// `InvalidConfig` on a member without a `Membership`.
    pub fn propose_conf_change(
        &self,
        change: ConfChange,
    ) -> impl Future<Output = Result<Vec<u8>, RaftError>> + Send + 'static {
        let change = Box::new(change);
        self.ask(move |reply| Request::ProposeConfChange { change, reply })
    }

    /// The leader's view of how far member `id`'s log is (etcd checks it before promoting a
    /// learner); `NotLeader` on any other member.
    pub fn learner_progress(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<LearnerProgress, RaftError>> + Send + 'static {
        self.ask(move |reply| Request::LearnerProgress { id, reply })
    }

    /// Starts handing the leadership to the voter `target`; resolves once raft has started the
    /// transfer, not once it is done: watch [`RaftHandle::status`] for the new leader (raft
    /// gives up after an election timeout if `target` cannot take over). Errors: `NotLeader`,
    /// `BadTransferee` (not a voter). Proposals made meanwhile wait for the new leader.
    pub fn transfer_leader(
        &self,
        target: u64,
    ) -> impl Future<Output = Result<(), RaftError>> + Send + 'static {
        self.ask(move |reply| Request::TransferLeader { target, reply })
    }

    /// Hands a raft message from a peer to the loop. Never waits: a full queue drops the message
    /// (`Overloaded`) and raft retransmits.
    pub fn step(&self, msg: Message) -> Result<(), RaftError> {
        self.inner
            .shared
            .queue
            .try_push(Request::Step(Box::new(msg)))
            .map_err(|(_, e)| e)
    }

    /// Tells raft that a message to `peer` was lost (a failed send), so it probes the peer
    /// rather than pipelining to it. Never waits; dropped when the queue is full.
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.inner.shared.queue.try_push(Request::Unreachable(peer));
    }

    /// Tells raft how sending a snapshot to `peer` ended: `delivered` means the peer staged it
    /// and took the message. Never waits; dropped when the queue is full (raft then learns from
    /// the peer's next response).
    pub fn report_snapshot(&self, peer: u64, delivered: bool) {
        let _ = self
            .inner
            .shared
            .queue
            .try_push(Request::SnapshotStatus { peer, delivered });
    }

    /// The image a `MsgSnapshot`'s descriptor names, while the loop keeps it registered.
    pub fn snapshot_image(&self, data: &[u8]) -> Option<snapshot::RegisteredImage> {
        let id = snapshot::decode_descriptor(data)?;
        self.inner.shared.images.get(id)
    }

    pub fn status(&self) -> RaftStatus {
        *self.inner.shared.status.lock()
    }

    /// Counters of the member's WAL (batches and fdatasyncs versus records: group commit).
    pub fn wal_stats(&self) -> WalStats {
        self.inner.wal.stats()
    }

    /// Stops the loop and waits until it has answered every pending request (`Stopped`),
    /// written the commit index and stopped the WAL writer (everything submitted is durable).
    /// Idempotent; any clone may call it. Blocks: call it from a plain thread (or
    /// `spawn_blocking`), never from the state machine's `apply`.
    pub fn shutdown(&self) {
        let shared = &self.inner.shared;
        for request in shared.queue.close() {
            request.fail(|| RaftError::Stopped);
        }
        let thread = self.inner.thread.lock().take();
        if let Some(thread) = thread {
            // A panic on the raft thread has already failed every request (FinishGuard).
            let _ = thread.join();
            // The loop stopped the WAL writer on its way out (unless it panicked: then this
            // stops it, after what was submitted). A writer on the raft executor went with it.
            if self.inner.wal_own_thread {
                let _ = self.inner.wal.clone().close();
            }
        }
        let mut finished = shared.finished.lock();
        while !finished.done {
            shared.finished_cv.wait(&mut finished);
        }
    }

    /// [`RaftHandle::shutdown`] for async callers (a tonic server's graceful stop): resolves
    /// once the loop has answered everything pending and the WAL writer has stopped, without
    /// blocking a runtime thread. The raft thread exits right after; it is not joined.
    pub fn shutdown_async(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.inner.shared.clone();
        for request in shared.queue.close() {
            request.fail(|| RaftError::Stopped);
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        {
            let mut finished = shared.finished.lock();
            if finished.done {
                let _ = tx.send(());
            } else {
                finished.async_waiters.push(tx);
            }
        }
        async move {
            // A dropped sender also means the thread is gone.
            let _ = rx.await;
        }
    }
}

impl HandleInner {
    fn check_proposal(&self, data: &[u8]) -> Result<(), RaftError> {
        if data.is_empty() {
            return Err(RaftError::EmptyProposal);
        }
        if data.len() > self.proposal_bytes_max {
            return Err(RaftError::TooLarge {
                bytes: data.len(),
                limit_bytes: self.proposal_bytes_max,
            });
        }
        Ok(())
    }
}

/// Opens the member's WAL in `cfg.wal_dir`, rebuilds the raft log from it, and starts the raft
/// loop on its own executor thread; returns once recovery is done (or failed). A single member
/// then elects itself and re-applies committed entries above `sm.applied_index()` before this
/// returns; a member with peers returns at once and waits for an election.
pub fn start(cfg: RaftConfig, sm: Box<dyn StateMachine>) -> Result<RaftHandle, RaftError> {
    start_with_disk(GlommioDisk, cfg, sm)
}

/// [`start`] for a member with peers: `transport` carries its messages (see [`Transport`]).
pub fn start_with_transport(
    cfg: RaftConfig,
    sm: Box<dyn StateMachine>,
    transport: Box<dyn Transport>,
) -> Result<RaftHandle, RaftError> {
    start_with(GlommioDisk, cfg, sm, Some(transport))
}

/// [`start`] for a member whose membership changes: raft's configuration is `membership`'s
/// (`cfg.voters` is ignored) and follows the conf changes it applies; `transport` carries
/// messages to whichever peers that membership has.
pub fn start_with_membership(
    mut cfg: RaftConfig,
    sm: Box<dyn StateMachine>,
    transport: Box<dyn Transport>,
    membership: Box<dyn Membership>,
) -> Result<RaftHandle, RaftError> {
    cfg.voters = vec![cfg.member_id];
    start_inner(GlommioDisk, cfg, sm, Some(transport), Some(membership))
}

/// [`start`] on any disk: tests pass a `wal::sim::SimDisk`, which loses and tears unsynced
/// writes at a simulated crash.
pub fn start_with_disk<D: Disk + Send>(
    disk: D,
    cfg: RaftConfig,
    sm: Box<dyn StateMachine>,
) -> Result<RaftHandle, RaftError> {
    start_with(disk, cfg, sm, None)
}

/// [`start`] on any disk, with a transport when the member has peers.
pub fn start_with<D: Disk + Send>(
    disk: D,
    cfg: RaftConfig,
    sm: Box<dyn StateMachine>,
    transport: Option<Box<dyn Transport>>,
) -> Result<RaftHandle, RaftError> {
    start_inner(disk, cfg, sm, transport, None)
}

fn start_inner<D: Disk + Send>(
    disk: D,
    cfg: RaftConfig,
    sm: Box<dyn StateMachine>,
    transport: Option<Box<dyn Transport>>,
    membership: Option<Box<dyn Membership>>,
) -> Result<RaftHandle, RaftError> {
    cfg.validate()?;
    if cfg.voters.len() > 1 && transport.is_none() {
        return Err(RaftError::InvalidConfig(
            "a member with peers needs a transport".into(),
        ));
    }
    let shared = Arc::new(Shared {
        queue: RequestQueue::new(cfg.proposal_queue_depth),
        images: snapshot::ImageRegistry::default(),
        status: Mutex::new(RaftStatus {
            member_id: cfg.member_id,
            cluster_id: cfg.cluster_id,
            ..RaftStatus::default()
        }),
        finished: Mutex::new(Finished::default()),
        finished_cv: Condvar::new(),
    });
    let placement = match cfg.raft_cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    // A writer of its own is started (and the log recovered) here, before the loop's thread:
    // `Wal::open` blocks until recovery is done, which must not happen on an executor.
    let (wal_start, own_wal) = match cfg.wal_executor {
        WalExecutor::Raft => (node::WalStart::Recover(disk), None),
        WalExecutor::Own => {
            let (wal, recovered) = Wal::open_with_disk(disk, &cfg.wal_dir, cfg.wal.clone())?;
            let own = wal.clone();
            (node::WalStart::Opened(wal, recovered), Some(own))
        }
    };
    let proposal_bytes_max = cfg.proposal_bytes_max;
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let thread_shared = shared.clone();
    let thread = glommio::LocalExecutorBuilder::new(placement)
        .name(&format!("raft-{:x}", cfg.member_id))
        .io_memory(cfg.wal.writer_io_memory_bytes)
        .spawn(move || async move {
            let _finish = FinishGuard(thread_shared.clone());
            node::run(
                wal_start,
                cfg,
                sm,
                transport,
                membership,
                thread_shared,
                opened_tx,
            )
            .await;
        })
        .map_err(|e| {
            // The closure, and the writer's handle in it, is gone: stop the writer's thread.
            if let Some(own) = &own_wal {
                let _ = own.clone().close();
            }
            RaftError::Io(e.into())
        })?;
    let result = match opened_rx.recv() {
        Ok(Ok(wal)) => {
            return Ok(RaftHandle {
                inner: Arc::new(HandleInner {
                    shared,
                    wal,
                    wal_own_thread: own_wal.is_some(),
                    thread: Mutex::new(Some(thread)),
                    proposal_bytes_max,
                }),
            })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RaftError::Stopped),
    };
    let _ = thread.join();
    if let Some(own) = own_wal {
        // The loop has shut the writer down; this joins its thread.
        let _ = own.close();
    }
    result
}
