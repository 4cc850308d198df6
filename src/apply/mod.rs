//! The state machine: decodes committed raft entries (`entry::Proposal`), executes them on MVCC
//! with etcd's semantics (`exec`) and returns each entry's encoded `entry::Outcome`.
//!
//! The entries of one `apply_entries` call share one MVCC batch: each entry that changes the
//! store is one write transaction of the batch (its own main revision, as if applied alone), and
//! the batch is one page-store publish recording the last entry's index as the consistent index.
//! Nothing of a batch is visible to readers before its publish, and replies are returned after
//! it. An entry that is refused (`ApplyError`; its writes, if any, are rolled back) or empty
//! changes nothing and takes no revision; its index is recorded by the batch's publish all the
//! same.
//!
//! # Applied versus durable
//!
//! A publish is visible at once but durable only at the page store's next checkpoint (a
//! background thread, every `checkpoint_interval`, as etcd commits its backend every 100 ms):
//! the entries are already durable in the WAL, so the apply path waits for no fdatasync of its
//! own. `applied_index` is the last published index (what readers see); `durable_index` is the
//! last checkpointed one (what a crash recovers: a checkpoint is durable whole or not at all).
//! The raft log, and the WAL under it, may be compacted only up to `durable_index`; after a
//! crash the store reopens at `durable_index` and raft replays the entries above it, which
//! apply is idempotent for.
//!
//! A compaction entry ends the batch before it: compaction takes MVCC's writer lock and commits
//! its logical step with its own index, and its revision checks must see every earlier entry.
//!
//! Lease grants and revokes are entries too (`lease`): their changes to the lease table are
//! written in the batch's commit, and the in-memory lessor is updated as each kept entry ends,
//! so the next entry of the batch sees them (see `crate::lease`).
//!
//! Every entry first passes the auth check for the client named in its header (`auth`):
//! refused, it changes nothing. Auth entries change the auth state and write its rows in the
//! batch's commit (see `crate::auth`).
//!
//! A storage failure while applying is fatal: the applied state would no longer follow the log.

pub mod alarm;
pub mod auth;
pub mod entry;
pub mod exec;
pub mod lease;
mod restore;

use prost::Message;
use ringkv_proto::etcdserverpb::{CompactionRequest, CompactionResponse, ResponseHeader};

use std::sync::Arc;

use crate::auth::{AuthConfig, AuthStore};
use crate::lease::{self as lessor, Lessor, MonotonicClock};
use crate::mvcc::{Mvcc, MvccBatch};
use crate::page_store::BackgroundCheckpointer;

use entry::{Outcome, OutcomeResult, Proposal, ProposalRequest};
use exec::{ExecError, ExecResult, WriteAt};

/// Told, after every page-store commit the applier makes, the store's current revision: every
/// revision up to it is now visible to readers (the watch hub reads them from there).
pub type CommitHook = Box<dyn FnMut(i64) + Send>;

/// Applies committed entries in index order.
pub struct Applier {
    mvcc: Mvcc,
    applied_index: u64,
    compactor: Compactor,
    guard: alarm::Guard,
    lessor: Arc<Lessor>,
    on_commit: Option<CommitHook>,
    /// Makes published batches durable; its drop (the applier's) checkpoints a last time.
    _checkpointer: BackgroundCheckpointer,
    auth: Arc<AuthStore>,
}

impl Applier {
    /// Starts from the consistent index the store recorded, with the leases the store holds
    /// (on the monotonic clock). A store whose leases cannot be read is fatal.
    pub fn new(mvcc: Mvcc) -> Applier {
        let lessor = Lessor::open(&mvcc, Arc::new(MonotonicClock)).unwrap_or_else(|error| {
            eprintln!("ringkv: fatal: cannot load the leases: {error}");
            std::process::abort();
        });
        Applier::with_lessor(mvcc, Arc::new(lessor))
    }

    /// As `new`, with a lessor already opened (`Lessor::open`) on this store.
    pub fn with_lessor(mvcc: Mvcc, lessor: Arc<Lessor>) -> Applier {
        let applied_index = mvcc.page_store().consistent_index();
        let compactor = Compactor::spawn(mvcc.clone());
        let guard = alarm::Guard::load(&mvcc);
        let auth = AuthStore::open(&mvcc, AuthConfig::default()).unwrap_or_else(|error| {
            eprintln!("ringkv: fatal: cannot load the auth state: {error}");
            std::process::abort();
        });
        let checkpointer = mvcc.page_store().spawn_checkpointer();
        Applier {
            mvcc,
            applied_index,
            compactor,
            guard,
            lessor,
            on_commit: None,
            _checkpointer: checkpointer,
            auth: Arc::new(auth),
        }
    }

    /// Uses `auth` (`AuthStore::open` on this store, with this member's settings) instead of
    /// the store loaded with the default settings.
    #[must_use]
    pub fn with_auth(mut self, auth: Arc<AuthStore>) -> Applier {
        self.auth = auth;
        self
    }

    /// The auth state this applier maintains; the API reads it and checks tokens in it.
    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.auth
    }

    /// This member's `--quota-backend-bytes` (none until set).
    pub fn set_quota_backend_bytes(&mut self, bytes: u64) {
        self.guard.set_quota_bytes(bytes);
    }

    /// The leases this applier maintains; the API reads and renews them.
    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    /// Calls `hook` after every commit, on the applying thread, before the entries' replies are
    /// returned; it must not block for long (it holds up the raft loop).
    #[must_use]
    pub fn with_commit_hook(mut self, hook: CommitHook) -> Applier {
        self.on_commit = Some(hook);
        self
    }

    /// The last applied entry: visible to readers, durable once `durable_index` reaches it.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The last entry a crash would not lose from the store: the page store's durable
    /// consistent index (at most `applied_index`).
    pub fn durable_index(&self) -> u64 {
        self.mvcc.page_store().durable_consistent_index()
    }

    /// Applies the entry at `index` (which must follow `applied_index`) and returns its encoded
    /// `Outcome`; see `apply_entries`.
    pub fn apply_entry(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        self.apply_entries([(index, data)])
            .pop()
            .expect("one outcome per entry")
    }

    /// Applies `(index, data)` entries in ascending index order in one MVCC batch (one
    /// page-store publish, plus one per compaction entry) and returns each entry's encoded
    /// `Outcome`. An entry at or below `applied_index` is already in the store: it is skipped
    /// and answered with an empty outcome. Returns once every entry is visible (durable in the
    /// WAL already; in the store at the next checkpoint).
    pub fn apply_entries<'d>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'d [u8])>,
    ) -> Vec<Vec<u8>> {
        let mvcc = self.mvcc.clone();
        let mut batch = None;
        let mut last = self.applied_index;
        let mut outcomes = Vec::new();
        for (index, data) in entries {
            if index <= self.applied_index {
                outcomes.push(Outcome::default().encode_to_vec());
                continue;
            }
            assert!(
                index > last,
                "entry {index} after {last}: not in index order"
            );
            let proposal = Proposal::decode(data).unwrap_or_else(|error| {
                panic!("raft entry {index} is not a ringkv proposal: {error}")
            });
            let checked = proposal.request.as_ref().map_or(Ok(()), |request| {
                auth::check(&self.auth, &self.lessor, proposal.auth.as_ref(), request)
            });
            let outcome = match proposal.request {
                Some(_) if checked.is_err() => {
                    // Refused: nothing changes, but the batch records the index.
                    batch.get_or_insert_with(|| mvcc.batch());
                    Outcome::from_result(Err(checked.unwrap_err().into()))
                }
                Some(request) if auth::is_auth(&request) => {
                    let batch = batch.get_or_insert_with(|| mvcc.batch());
                    match auth::apply(&self.auth, batch, index, request) {
                        Ok(result) => Outcome::from_result(result.map_err(Into::into)),
                        Err(error) => fatal(index, &error),
                    }
                }
                Some(ProposalRequest::Compaction(req)) => {
                    if let Some(batch) = batch.take() {
                        self.finish(batch, last);
                    }
                    self.compact_entry(index, &req)
                }
                Some(ProposalRequest::Alarm(req)) => {
                    let batch = batch.get_or_insert_with(|| mvcc.batch());
                    match self.guard.apply(batch, &req) {
                        Ok(resp) => Outcome::from_result(Ok(OutcomeResult::Alarm(resp))),
                        Err(error) => fatal(index, &error),
                    }
                }
                request => self.guard.gate(&mvcc, request, |request| {
                    execute(
                        batch.get_or_insert_with(|| mvcc.batch()),
                        &self.lessor,
                        index,
                        request,
                    )
                }),
            };
            last = index;
            outcomes.push(outcome.encode_to_vec());
        }
        if let Some(batch) = batch {
            self.finish(batch, last);
        }
        debug_assert_eq!(
            self.mvcc.page_store().consistent_index(),
            self.applied_index
        );
        outcomes
    }

    /// Publishes the batch with `index`, its last entry, which is then applied.
    fn finish(&mut self, batch: MvccBatch<'_>, index: u64) {
        if let Err(error) = batch.publish(index) {
            fatal(index, &error);
        }
        // The batch is visible to readers from here on: watchers may be told.
        self.applied_index = index;
        if let Some(hook) = &mut self.on_commit {
            hook(self.mvcc.current_revision());
        }
    }

    fn compact_entry(&mut self, index: u64, req: &CompactionRequest) -> Outcome {
        let outcome = match self.compact(index, req) {
            Ok(resp) => Outcome::from_result(Ok(OutcomeResult::Compaction(resp))),
            Err(ExecError::Refused(error)) => {
                // Nothing changed, but the index is recorded so that it is durable.
                self.finish(self.mvcc.clone().batch(), index);
                Outcome::from_result(Err(error))
            }
            Err(ExecError::Store(error)) => fatal(index, &error),
        };
        self.applied_index = index;
        outcome
    }

    /// The logical step is durable when this returns; the physical work runs on the compactor
    /// thread (a client asking for `physical` waits for it in the API layer).
    fn compact(&mut self, index: u64, req: &CompactionRequest) -> ExecResult<CompactionResponse> {
        self.mvcc.schedule_compaction(req.revision, index)?;
        self.compactor.wake();
        Ok(CompactionResponse {
            header: Some(ResponseHeader {
                revision: self.mvcc.current_revision(),
                ..ResponseHeader::default()
            }),
        })
    }
}

/// Runs one entry's request as the next write transaction of `batch`. A refused request's
/// writes are rolled back, so it takes no revision and changes nothing; a kept one's lease
/// effects go into the batch's lease table and then the lessor.
fn execute(
    batch: &mut MvccBatch<'_>,
    lessor: &Lessor,
    index: u64,
    request: Option<ProposalRequest>,
) -> Outcome {
    let Some(request) = request else {
        return Outcome::default();
    };
    let mut w = WriteAt::begin(batch, lessor);
    let result = match request {
        ProposalRequest::Put(put) => exec::put(&mut w, &put).map(OutcomeResult::Put),
        ProposalRequest::DeleteRange(del) => {
            exec::delete_range(&mut w, &del).map(OutcomeResult::DeleteRange)
        }
        ProposalRequest::Txn(txn) => exec::txn(&mut w, &txn).map(OutcomeResult::Txn),
        ProposalRequest::LeaseGrant(req) => {
            lease::grant(&mut w, &req).map(OutcomeResult::LeaseGrant)
        }
        ProposalRequest::LeaseRevoke(req) => {
            lease::revoke(&mut w, &req).map(OutcomeResult::LeaseRevoke)
        }
        ProposalRequest::Compaction(_) => unreachable!("a compaction ends the batch"),
        ProposalRequest::Alarm(_) => unreachable!("alarms are applied by the guard"),
        other => unreachable!("auth entries are applied by apply::auth: {other:?}"),
    };
    match result {
        Ok(result) => {
            let effects = w.end();
            if let Err(error) = lessor::persist(&effects, batch) {
                fatal(index, &error);
            }
            lessor.apply(effects);
            Outcome::from_result(Ok(result))
        }
        Err(ExecError::Refused(error)) => {
            if let Err(store) = w.txn.rollback() {
                fatal(index, &store);
            }
            Outcome::from_result(Err(error))
        }
        Err(ExecError::Store(error)) => fatal(index, &error),
    }
}

fn fatal(index: u64, error: &dyn std::fmt::Display) -> ! {
    eprintln!("ringkv: fatal: storage failed while applying raft entry {index}: {error}");
    std::process::abort();
}

/// Runs scheduled physical compactions in bounded batches on its own thread, then asks the
/// page store's cleaner for space. Stops when the applier is dropped.
struct Compactor {
    wake: crossbeam::channel::Sender<()>,
}

impl Compactor {
    fn spawn(mvcc: Mvcc) -> Compactor {
        let (wake, woken) = crossbeam::channel::bounded::<()>(1);
        std::thread::Builder::new()
            .name("ringkv-compactor".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let (rev, started) = (mvcc.compacted_revision(), std::time::Instant::now());
                    if let Err(error) = finish_compaction(&mvcc) {
                        eprintln!("ringkv: fatal: physical compaction failed: {error}");
                        std::process::abort();
                    }
                    // etcd's line (mvcc package) when its scheduled compaction completes.
                    eprintln!(
                        "ringkv: info: mvcc: finished scheduled compaction at {rev} (took {:?})",
                        started.elapsed()
                    );
                }
            })
            .expect("spawn compactor thread");
        Compactor { wake }
    }

    fn wake(&self) {
        // A full channel means a wake-up is already pending; it will see this job too.
        let _ = self.wake.try_send(());
    }
}

/// Runs physical compaction batches until none is pending, then one bounded cleaner step.
/// Safe to call from several threads at once: each batch takes MVCC's writer lock.
pub fn finish_compaction(mvcc: &Mvcc) -> crate::mvcc::Result<()> {
    while !mvcc.compact_step()? {}
    mvcc.page_store().clean(4)?;
    Ok(())
}

#[cfg(test)]
mod harness;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod tests;
