//! A single-member log without replication: the stand-in for the raft engine until it is wired
//! in. Proposals queue on a bounded channel (back-pressure), one thread (pinned per the tuning
//! profile's `raft` core) numbers them, applies them in batches and answers each proposer after
//! its entry is applied, so an acknowledged write is in a durable page-store commit. With one
//! member every applied entry is committed, so ReadIndex is immediate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::api::{Consensus, ConsensusError, ConsensusStatus};
use crate::apply::Applier;
use crate::config::CorePlacement;

struct Proposal {
    data: Vec<u8>,
    reply: oneshot::Sender<Vec<u8>>,
}

pub struct LocalLog {
    queue: Mutex<Option<mpsc::Sender<Proposal>>>,
    applied_index: Arc<AtomicU64>,
    member_id: u64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LocalLog {
    pub fn start(
        mut applier: Applier,
        member_id: u64,
        queue_depth: usize,
        batch_max: usize,
        core: CorePlacement,
    ) -> LocalLog {
        let (queue, mut proposals) = mpsc::channel::<Proposal>(queue_depth);
        let applied_index = Arc::new(AtomicU64::new(applier.applied_index()));
        let applied = applied_index.clone();
        let thread = std::thread::Builder::new()
            .name("ringkv-apply".into())
            .spawn(move || {
                super::pin_current_thread(core);
                let mut batch = Vec::with_capacity(batch_max);
                while proposals.blocking_recv_many(&mut batch, batch_max) > 0 {
                    for proposal in batch.drain(..) {
                        let index = applier.applied_index() + 1;
                        let output = applier.apply_entry(index, &proposal.data);
                        applied.store(index, Ordering::Release);
                        // A proposer that gave up still had its entry applied.
                        let _ = proposal.reply.send(output);
                    }
                }
            })
            .expect("spawn apply thread");
        LocalLog {
            queue: Mutex::new(Some(queue)),
            applied_index,
            member_id,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Refuses new proposals, lets queued ones finish, and joins the apply thread.
    pub fn shutdown(&self) {
        self.queue.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            thread.join().expect("apply thread panicked");
        }
    }
}

impl Consensus for LocalLog {
    fn propose(&self, data: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, ConsensusError>> {
        let queue = self.queue.lock().clone();
        async move {
            let queue = queue.ok_or(ConsensusError::Stopped)?;
            let (reply, output) = oneshot::channel();
            queue
                .send(Proposal { data, reply })
                .await
                .map_err(|_| ConsensusError::Stopped)?;
            output.await.map_err(|_| ConsensusError::Stopped)
        }
        .boxed()
    }

    fn read_index(&self) -> BoxFuture<'static, Result<(), ConsensusError>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn status(&self) -> ConsensusStatus {
        let index = self.applied_index.load(Ordering::Acquire);
        ConsensusStatus {
            term: 1,
            leader_id: self.member_id,
            commit_index: index,
            applied_index: index,
        }
    }
}
