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
    /// When a follower's need for a snapshot was last logged (raft-rs asks on every probe).
    snapshot_warned: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// At most one "cannot send a snapshot" warning per this interval.
const SNAPSHOT_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

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

    /// The engine keeps no state-machine snapshots yet (issue 5 phase 2): a follower that needs
    /// an entry at or below the snapshot marker cannot be caught up, so raft-rs is told to retry
    /// later (never given an empty snapshot that would skip state), and the leader says so in
    /// its log every `SNAPSHOT_WARNING_INTERVAL`. Single-member clusters never ask.
    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut warned = self.snapshot_warned.lock();
        let now = std::time::Instant::now();
        if warned.is_none_or(|at| now.duration_since(at) >= SNAPSHOT_WARNING_INTERVAL) {
            *warned = Some(now);
            eprintln!(
                "ringkv: warning: member {to:016x} needs raft entries at or below index {}, which \
                 this leader has compacted; sending snapshots is not supported yet, so it cannot \
                 catch up",
                self.snapshot_index
            );
        }
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
