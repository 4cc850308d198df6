//! The state machine: decodes committed raft entries (`entry::Proposal`), executes them on MVCC
//! with etcd's semantics (`exec`) and returns each entry's encoded `entry::Outcome`.
//!
//! Each entry that changes the store is one MVCC write transaction, committed with the entry's
//! index as the page store's consistent index, so after a crash `applied_index` is exactly what
//! the store holds and replaying the WAL from there is idempotent. (MVCC gives one revision per
//! write transaction, so entries cannot share a page-store commit without sharing a revision.)
//! An entry that is refused (`ApplyError`) or empty changes nothing but still commits its index,
//! so `applied_index` is always the durable consistent index (the raft log may be compacted up
//! to it).
//!
//! A storage failure while applying is fatal: the applied state would no longer follow the log.

pub mod entry;
pub mod exec;

use prost::Message;
use ringkv_proto::etcdserverpb::{CompactionRequest, CompactionResponse, ResponseHeader};

use crate::mvcc::Mvcc;

use entry::{Outcome, OutcomeResult, Proposal, ProposalRequest};
use exec::{ExecError, ExecResult, WriteAt};

/// Applies committed entries in index order.
pub struct Applier {
    mvcc: Mvcc,
    applied_index: u64,
    compactor: Compactor,
}

impl Applier {
    /// Starts from the consistent index the store recorded.
    pub fn new(mvcc: Mvcc) -> Applier {
        let applied_index = mvcc.page_store().consistent_index();
        let compactor = Compactor::spawn(mvcc.clone());
        Applier {
            mvcc,
            applied_index,
            compactor,
        }
    }

    /// The last applied entry; durable (it is the page store's consistent index).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Applies the entry at `index` (which must follow `applied_index`) and returns its encoded
    /// `Outcome`. An entry at or below `applied_index` is already in the store: it is skipped and
    /// answered with an empty outcome.
    pub fn apply_entry(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        if index <= self.applied_index {
            return Outcome::default().encode_to_vec();
        }
        let proposal = Proposal::decode(data)
            .unwrap_or_else(|error| panic!("raft entry {index} is not a ringkv proposal: {error}"));
        let result = match proposal.request {
            None => Ok(None),
            Some(request) => self.execute(index, request).map(Some),
        };
        let outcome = match result {
            Ok(None) => {
                self.record_index(index);
                Outcome::default()
            }
            Ok(Some(result)) => Outcome::from_result(Ok(result)),
            Err(ExecError::Refused(error)) => {
                self.record_index(index);
                Outcome::from_result(Err(error))
            }
            Err(ExecError::Store(error)) => fatal(index, &error),
        };
        debug_assert_eq!(self.mvcc.page_store().consistent_index(), index);
        self.applied_index = index;
        outcome.encode_to_vec()
    }

    /// Makes `index` the store's consistent index for an entry that changed nothing, so
    /// `applied_index` is always durable (the log may be compacted up to it).
    fn record_index(&self, index: u64) {
        if let Err(error) = WriteAt::begin(&self.mvcc).txn.commit(index) {
            fatal(index, &error);
        }
    }

    fn execute(&mut self, index: u64, request: ProposalRequest) -> ExecResult<OutcomeResult> {
        if let ProposalRequest::Compaction(compaction) = request {
            return self
                .compact(index, &compaction)
                .map(OutcomeResult::Compaction);
        }
        let mut w = WriteAt::begin(&self.mvcc);
        let result = match request {
            ProposalRequest::Put(put) => OutcomeResult::Put(exec::put(&mut w, &put)?),
            ProposalRequest::DeleteRange(del) => {
                OutcomeResult::DeleteRange(exec::delete_range(&mut w, &del)?)
            }
            ProposalRequest::Txn(txn) => OutcomeResult::Txn(exec::txn(&mut w, &txn)?),
            ProposalRequest::Compaction(_) => unreachable!("handled above"),
        };
        w.txn.commit(index)?;
        Ok(result)
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
                    if let Err(error) = finish_compaction(&mvcc) {
                        eprintln!("ringkv: fatal: physical compaction failed: {error}");
                        std::process::abort();
                    }
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
mod tests;
