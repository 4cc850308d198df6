//! `LogStore`: the raft log as raft-rs reads it (`raft::Storage`), an in-memory copy of the
//! persisted entries rebuilt from the WAL at start; and the encoding of raft entries as WAL
//! records.
//!
//! The WAL is the durable copy; this is the cache raft-rs reads. The raft loop writes an entry to
//! the WAL and appends it here before telling raft-rs it is persisted, and compacts both at the
//! same snapshot marker, so the two hold the same entries above the marker at every `advance`.
//!
//! # Entry encoding in the WAL
//!
//! A WAL entry record holds `index`, `term` and opaque data. Raft entries also carry a type and
//! the engine's request id (`Entry::context`, empty or [`REQUEST_ID_BYTES`] long), so the WAL
//! data is
//! ```text
//! [tag: u8] ++ [request id: 16 bytes, iff tag & 0x80] ++ entry.data
//! tag & 0x7f: 0 normal, 1 conf change, 2 conf change v2
//! ```
//! Logs written before request ids existed have no 0x80 bit and decode unchanged.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::RaftError;
use crate::wal::{self, Record};

/// The raft log above the newest snapshot marker, plus the hard and conf state raft-rs starts
/// from.
///
/// Invariant: `entries[i].index == snapshot_index + 1 + i` (contiguous, starting right after the
/// marker), and every entry's term is at least `snapshot_term` and not below its predecessor's.
#[derive(Debug, Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Everything at or below this index is compacted; its term is kept for raft's log matching.
    snapshot_index: u64,
    snapshot_term: u64,
    entries: Vec<Entry>,
    /// The snapshot the loop prepared for followers that need compacted entries (metadata and
    /// descriptor; the image is in the engine's registry). Usable while its index is at or
    /// above `snapshot_index`.
    prepared: Option<Snapshot>,
    /// The highest `request_index` raft asked a snapshot for since the loop last looked, when
    /// none was usable (raft-rs asks through `&self`).
    wanted: parking_lot::Mutex<Option<u64>>,
}

impl LogStore {
    /// An empty log whose members are `conf_state`.
    pub fn new(conf_state: ConfState) -> Self {
        LogStore {
            conf_state,
            ..LogStore::default()
        }
    }

    /// The log as the WAL recovered it.
    pub fn from_recovered(
        recovered: &wal::Recovered,
        conf_state: ConfState,
    ) -> Result<Self, RaftError> {
        let mut store = LogStore::new(conf_state);
        if let Some(snap) = recovered.snapshot {
            store.snapshot_index = snap.index;
            store.snapshot_term = snap.term;
        }
        let mut entries = Vec::with_capacity(recovered.entries.len());
        for e in &recovered.entries {
            entries.push(decode_entry(e)?);
        }
        // Entries above a snapshot marker with a term below the snapshot's were written before a
        // snapshot from a newer leader was installed over them: that leader's entry at any index
        // above the marker has at least the snapshot's term, so these (and everything after
        // them in the same old run) were never committed. Raft would overwrite them; dropping
        // them keeps the log's terms non-decreasing.
        if let Some(stale) = entries.iter().position(|e| e.term < store.snapshot_term) {
            entries.truncate(stale);
        }
        store.append(&entries);
        if let Some(hs) = recovered.hard_state {
            store.hard_state.term = hs.term;
            store.hard_state.vote = hs.vote;
            store.hard_state.commit = hs.commit;
        }
        // Everything up to the snapshot marker was applied, hence committed, and raft-rs
        // requires commit >= first_index - 1. The engine writes a hard state with every marker,
        // so this only matters for a log whose newest hard state predates its marker.
        store.hard_state.commit = store.hard_state.commit.max(store.snapshot_index);
        if store.hard_state.commit > store.last() {
            return Err(RaftError::CorruptLog(format!(
                "hard state commit {} is past the last entry {}",
                store.hard_state.commit,
                store.last()
            )));
        }
        Ok(store)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// The configuration after an applied conf change (what a snapshot of this log describes).
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> u64 {
        self.snapshot_term
    }

    /// The conf state raft starts from and a snapshot installs.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The request index of the last unanswered `Storage::snapshot` call, cleared by the call.
    pub fn take_snapshot_request(&self) -> Option<u64> {
        self.wanted.lock().take()
    }

    /// The prepared snapshot's metadata and descriptor, if any.
    pub fn prepared(&self) -> Option<&Snapshot> {
        self.prepared.as_ref()
    }

    /// Replaces the prepared snapshot; returns the one it replaces.
    pub fn set_prepared(&mut self, snapshot: Option<Snapshot>) -> Option<Snapshot> {
        std::mem::replace(&mut self.prepared, snapshot)
    }

    /// Installs a received snapshot's metadata: the log restarts right after it (every entry is
    /// dropped, as raft-rs drops its own log on restore), the commit index is at least the
    /// snapshot's, and the members are the snapshot's.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = snapshot.get_metadata();
        assert!(
            meta.index >= self.hard_state.commit,
            "snapshot at {} is below the commit index {}",
            meta.index,
            self.hard_state.commit
        );
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.entries.clear();
        self.hard_state.commit = meta.index;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
    }

    fn first(&self) -> u64 {
        self.snapshot_index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    /// Appends `entries`, replacing every entry at or after the first one's index (raft rewrites
    /// its log tail after a leader change), as the WAL does on replay.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index > self.snapshot_index && first.index <= self.last() + 1,
            "append at {} leaves a gap or rewrites compacted entries (log {}..={})",
            first.index,
            self.first(),
            self.last()
        );
        for pair in entries.windows(2) {
            assert_eq!(pair[0].index + 1, pair[1].index, "entries are contiguous");
            assert!(pair[0].term <= pair[1].term, "terms never decrease");
        }
        self.entries
            .truncate((first.index - self.snapshot_index - 1) as usize);
        if let Some(prev) = self.entries.last() {
            assert!(prev.term <= first.term, "terms never decrease");
        } else {
            assert!(self.snapshot_term <= first.term, "terms never decrease");
        }
        self.entries.extend_from_slice(entries);
    }

    /// Drops the entries up to and including `index`, keeping its term as the snapshot term.
    /// `index` must be in the log; an index at or below the current marker is a no-op.
    pub fn compact(&mut self, index: u64) {
        if index <= self.snapshot_index {
            return;
        }
        assert!(
            index <= self.last(),
            "compact to {index} beyond the last entry {}",
            self.last()
        );
        let n = (index - self.snapshot_index) as usize;
        self.snapshot_term = self.entries[n - 1].term;
        self.snapshot_index = index;
        self.entries.drain(..n);
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    /// Entries `[low, high)`, at least one if the range is not empty, then as many more as fit in
    /// `max_size` bytes. `Compacted` if `low` is at or below the snapshot marker; panics if
    /// `high` is past `last_index() + 1` (raft-rs's contract).
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last() + 1,
            "entries [{low}, {high}) past the last index {}",
            self.last()
        );
        assert!(low <= high, "entries [{low}, {high}): empty range reversed");
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    /// Term of `idx` for `idx` in `[first_index() - 1, last_index()]`: the snapshot marker keeps
    /// the term of the last compacted entry. `Compacted` below, `Unavailable` above.
    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The snapshot the loop prepared, if its index is at least `request_index` and the
    /// follower can continue from it with the log (it is at or above the snapshot marker).
    /// Otherwise the request is recorded for the loop, which prepares one at its applied index
    /// (`node.rs`), and raft-rs is told to retry later: it asks again on the follower's next
    /// response. Never an empty snapshot, which would skip state.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if let Some(prepared) = &self.prepared {
            let index = prepared.get_metadata().index;
            if index >= request_index && index >= self.snapshot_index {
                return Ok(prepared.clone());
            }
        }
        let mut wanted = self.wanted.lock();
        *wanted = Some(wanted.map_or(request_index, |w| w.max(request_index)));
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

/// Bytes of a request id in `Entry::context`: proposing member id and its sequence number,
/// both big-endian.
pub const REQUEST_ID_BYTES: usize = 16;

/// Tag bit: a request id follows the tag byte.
const TAG_REQUEST_ID: u8 = 0x80;

/// The WAL record of a raft entry (see the module doc for the data layout).
pub fn encode_entry(e: &Entry) -> Record {
    assert!(
        e.context.is_empty() || e.context.len() == REQUEST_ID_BYTES,
        "an entry context is a request id or nothing"
    );
    let mut tag = match e.get_entry_type() {
        EntryType::EntryNormal => 0u8,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    };
    if !e.context.is_empty() {
        tag |= TAG_REQUEST_ID;
    }
    let mut data = Vec::with_capacity(1 + e.context.len() + e.data.len());
    data.push(tag);
    data.extend_from_slice(&e.context);
    data.extend_from_slice(&e.data);
    Record::Entry {
        index: e.index,
        term: e.term,
        data,
    }
}

/// The raft entry of a recovered WAL entry record.
pub fn decode_entry(e: &wal::Entry) -> Result<Entry, RaftError> {
    let Some((&tag, mut data)) = e.data.split_first() else {
        return Err(RaftError::CorruptLog(format!(
            "entry {} has no entry-type byte",
            e.index
        )));
    };
    let mut context: &[u8] = &[];
    if tag & TAG_REQUEST_ID != 0 {
        if data.len() < REQUEST_ID_BYTES {
            return Err(RaftError::CorruptLog(format!(
                "entry {} is shorter than its request id",
                e.index
            )));
        }
        (context, data) = data.split_at(REQUEST_ID_BYTES);
    }
    let entry_type = match tag & !TAG_REQUEST_ID {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => {
            return Err(RaftError::CorruptLog(format!(
                "entry {} has unknown entry type {tag}",
                e.index
            )))
        }
    };
    let mut out = Entry::default();
    out.set_entry_type(entry_type);
    out.index = e.index;
    out.term = e.term;
    out.context = context.to_vec().into();
    out.data = data.to_vec().into();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        (e.index, e.term) = (index, term);
        e.data = vec![1].into();
        e
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        s
    }

    fn unavailable(r: &raft::Result<Snapshot>) -> bool {
        matches!(
            r,
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        )
    }

    /// raft-rs gets the prepared snapshot only while it is usable; otherwise the request is
    /// recorded for the loop, once.
    #[test]
    fn snapshot_requests_and_prepared_snapshots() {
        let mut log = LogStore::new(ConfState::from((vec![1, 2, 3], vec![])));
        log.append(&(1..=20).map(|i| entry(i, 1)).collect::<Vec<_>>());
        log.compact(10);
        assert!(unavailable(&log.snapshot(0, 2)));
        assert!(unavailable(&log.snapshot(12, 3)));
        assert_eq!(log.take_snapshot_request(), Some(12));
        assert_eq!(log.take_snapshot_request(), None);

        log.set_prepared(Some(snapshot(15, 1)));
        assert_eq!(log.snapshot(0, 2).unwrap().get_metadata().index, 15);
        assert!(
            unavailable(&log.snapshot(16, 2)),
            "below the requested index"
        );
        assert_eq!(log.take_snapshot_request(), Some(16));
        log.compact(18);
        assert!(unavailable(&log.snapshot(0, 2)), "below the log's marker");
    }

    /// Installing a snapshot resets the log to it, whatever the log held.
    #[test]
    fn apply_snapshot_restarts_the_log_after_it() {
        let mut log = LogStore::new(ConfState::from((vec![1], vec![])));
        log.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>());
        log.set_commit(3);
        log.apply_snapshot(&snapshot(40, 4));
        assert_eq!((log.first(), log.last()), (41, 40));
        assert_eq!(log.term(40).unwrap(), 4);
        assert_eq!(log.hard_state().commit, 40);
        assert_eq!(log.hard_state().term, 4);
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
        log.append(&[entry(41, 4), entry(42, 5)]);
        assert_eq!(log.last(), 42);
    }

    /// Entries above a marker with a term below the snapshot's are an old tail the installed
    /// snapshot superseded: recovery drops them.
    #[test]
    fn recovery_drops_an_old_tail_above_a_newer_snapshot() {
        let wal_entry = |index, term| wal::Entry {
            index,
            term,
            data: vec![0, 7],
        };
        let recovered = wal::Recovered {
            metadata: None,
            hard_state: Some(wal::HardState {
                term: 5,
                vote: 0,
                commit: 10,
            }),
            snapshot: Some(wal::SnapshotMarker { index: 10, term: 5 }),
            entries: vec![wal_entry(11, 2), wal_entry(12, 2)],
            repaired_tail: None,
            segments: 1,
        };
        let log = LogStore::from_recovered(&recovered, ConfState::default()).unwrap();
        assert_eq!((log.first(), log.last()), (11, 10));
        let recovered = wal::Recovered {
            entries: vec![wal_entry(11, 5), wal_entry(12, 6)],
            ..recovered
        };
        let log = LogStore::from_recovered(&recovered, ConfState::default()).unwrap();
        assert_eq!(log.last(), 12);
    }
}
