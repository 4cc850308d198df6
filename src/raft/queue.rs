//! `RequestQueue`: the bounded, thread-safe queue through which any thread hands proposals, read
//! barriers and messages from peers to the raft loop, with async back-pressure when it is full.
//!
//! Why not `futures::channel::mpsc`: its bounded channel grants every sender clone one extra
//! slot, and every `propose` future owns a clone, so the bound would grow with the number of
//! callers. Here the bound is exact.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use futures::channel::oneshot;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use raft::eraftpb::{ConfChange, Message};

use super::conf::LearnerProgress;
use super::RaftError;

pub type ProposeReply = oneshot::Sender<Result<Vec<u8>, RaftError>>;
pub type ReadReply = oneshot::Sender<Result<(), RaftError>>;
pub type ProgressReply = oneshot::Sender<Result<LearnerProgress, RaftError>>;
/// Answers a leader transfer once raft has started it (not once it is done).
pub type TransferReply = oneshot::Sender<Result<(), RaftError>>;

/// One request for the raft loop.
pub enum Request {
    Propose {
        data: Vec<u8>,
        reply: ProposeReply,
    },
    ReadIndex {
        reply: ReadReply,
    },
    /// A membership change (`conf.rs`); answered like a proposal.
    ProposeConfChange {
        change: Box<ConfChange>,
        reply: ProposeReply,
    },
    /// The leader's view of a learner's log.
    LearnerProgress {
        id: u64,
        reply: ProgressReply,
    },
    /// A raft message from a peer (the transport's receiving side).
    Step(Box<Message>),
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// Hand the leadership to the voter `target` (this member must lead).
    TransferLeader {
        target: u64,
        reply: TransferReply,
    },
    /// How streaming a snapshot to `peer` ended.
    SnapshotStatus {
        peer: u64,
        delivered: bool,
    },
}

impl Request {
    /// Answers the request with an error (the reply channel takes one of either kind).
    pub fn fail(self, error: impl FnOnce() -> RaftError) {
        match self {
            Request::Propose { reply, .. } | Request::ProposeConfChange { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Request::LearnerProgress { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Request::ReadIndex { reply } | Request::TransferLeader { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            // Raft retransmits what it does not hear back about.
            Request::Step(_) | Request::Unreachable(_) | Request::SnapshotStatus { .. } => {}
        }
    }
}

struct State {
    requests: VecDeque<Request>,
    closed: bool,
    /// Tasks waiting for room, oldest first. A drain that frees `n` slots wakes the `n` oldest
    /// (each re-checks and re-registers if it lost the race); one that empties the queue wakes
    /// all, so wakers of dropped futures cannot strand live waiters.
    space_waiters: VecDeque<Waker>,
}

pub struct RequestQueue {
    state: Mutex<State>,
    /// The raft loop, when it waits for requests.
    loop_waker: AtomicWaker,
    depth: usize,
}

impl RequestQueue {
    pub fn new(depth: usize) -> Self {
        assert!(depth > 0);
        RequestQueue {
            state: Mutex::new(State {
                requests: VecDeque::with_capacity(depth.min(4096)),
                closed: false,
                space_waiters: VecDeque::new(),
            }),
            loop_waker: AtomicWaker::new(),
            depth,
        }
    }

    /// Queues `request` if there is room; otherwise hands it back.
    pub fn try_push(&self, request: Request) -> Result<(), (Request, RaftError)> {
        let mut state = self.state.lock();
        if state.closed {
            return Err((request, RaftError::Stopped));
        }
        if state.requests.len() >= self.depth {
            return Err((request, RaftError::Overloaded { depth: self.depth }));
        }
        state.requests.push_back(request);
        drop(state);
        self.loop_waker.wake();
        Ok(())
    }

    /// Queues `request`, waiting for room while the queue is full. Fails (dropping the request)
    /// once the queue is closed.
    pub async fn push(&self, request: Request) -> Result<(), RaftError> {
        let mut request = Some(request);
        poll_fn(|cx| {
            let mut state = self.state.lock();
            if state.closed {
                return Poll::Ready(Err(RaftError::Stopped));
            }
            if state.requests.len() < self.depth {
                state
                    .requests
                    .push_back(request.take().expect("pushed once"));
                drop(state);
                self.loop_waker.wake();
                return Poll::Ready(Ok(()));
            }
            state.space_waiters.push_back(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Moves up to `max` requests into `out`, stopping early once the proposals taken carry
    /// `max_bytes` of data. Returns whether the queue is closed.
    pub fn drain(&self, max: usize, max_bytes: usize, out: &mut Vec<Request>) -> bool {
        let mut state = self.state.lock();
        let mut bytes = 0;
        let mut freed = 0;
        while freed < max && bytes < max_bytes {
            let Some(request) = state.requests.pop_front() else {
                break;
            };
            match &request {
                Request::Propose { data, .. } => bytes += data.len(),
                Request::Step(m) => bytes += m.entries.iter().map(|e| e.data.len()).sum::<usize>(),
                Request::ProposeConfChange { change, .. } => bytes += change.context.len(),
                Request::ReadIndex { .. }
                | Request::LearnerProgress { .. }
                | Request::Unreachable(_)
                | Request::TransferLeader { .. }
                | Request::SnapshotStatus { .. } => {}
            }
            out.push(request);
            freed += 1;
        }
        let wake = if state.requests.is_empty() {
            state.space_waiters.len()
        } else {
            freed.min(state.space_waiters.len())
        };
        let waiters: Vec<Waker> = state.space_waiters.drain(..wake).collect();
        let closed = state.closed;
        drop(state);
        for w in waiters {
            w.wake();
        }
        closed
    }

    /// Resolves once a request is queued or the queue is closed.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            self.loop_waker.register(cx.waker());
            let state = self.state.lock();
            if state.closed || !state.requests.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Refuses every later request and returns the ones still queued; wakes everyone.
    pub fn close(&self) -> Vec<Request> {
        let mut state = self.state.lock();
        state.closed = true;
        let left: Vec<Request> = state.requests.drain(..).collect();
        let waiters = std::mem::take(&mut state.space_waiters);
        drop(state);
        for w in waiters {
            w.wake();
        }
        self.loop_waker.wake();
        left
    }
}
