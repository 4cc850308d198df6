//! The applier test harness shared by `tests.rs` and `lease_tests.rs`: an applier on MVCC over an
//! in-memory page store with a simulated lease clock, fed numbered entries as raft would.

use std::sync::Arc;

use prost::Message;

use super::entry::{ApplyError, Outcome, OutcomeResult, Proposal, ProposalRequest};
use super::Applier;
use crate::lease::{Lessor, SimClock};
use crate::mvcc::Mvcc;
use crate::page_store::{PageStore, PageStoreConfig, SimDisk};

pub(super) struct Harness {
    pub mvcc: Mvcc,
    pub applier: Applier,
    pub index: u64,
}

impl Harness {
    pub fn new() -> Harness {
        let store =
            PageStore::open_on(Arc::new(SimDisk::new()), PageStoreConfig::default()).unwrap();
        let mvcc = Mvcc::open(store).unwrap();
        let lessor = Arc::new(Lessor::open(&mvcc, Arc::new(SimClock::default())).unwrap());
        let applier = Applier::with_lessor(mvcc.clone(), lessor);
        Harness {
            mvcc,
            applier,
            index: 0,
        }
    }

    pub fn lessor(&self) -> &Lessor {
        self.applier.lessor()
    }

    /// Applies `requests` as consecutive entries of one batch.
    pub fn apply_all(
        &mut self,
        requests: Vec<ProposalRequest>,
    ) -> Vec<Result<OutcomeResult, ApplyError>> {
        let entries: Vec<(u64, Vec<u8>)> = requests
            .into_iter()
            .map(|r| {
                self.index += 1;
                (self.index, Proposal::new(r).encode_to_vec())
            })
            .collect();
        self.applier
            .apply_entries(entries.iter().map(|(i, d)| (*i, d.as_slice())))
            .into_iter()
            .map(
                |out| match Outcome::decode(out.as_slice()).unwrap().result.unwrap() {
                    OutcomeResult::Error(code) => Err(ApplyError::from_code(code).unwrap()),
                    result => Ok(result),
                },
            )
            .collect()
    }

    pub fn apply(&mut self, request: ProposalRequest) -> Result<OutcomeResult, ApplyError> {
        self.apply_all(vec![request]).pop().unwrap()
    }
}
