//! `LogStore`'s `raft::Storage` contract, method by method (the cases raft-rs's own MemStorage
//! tests pin), and its rebuild from what the WAL recovers.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::{GetEntriesContext, Storage, StorageError};
use ringkv::raft::storage::{decode_entry, encode_entry};
use ringkv::raft::{LogStore, RaftError};
use ringkv::wal::{self, Record};

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Entry::default()
    }
}

fn conf() -> ConfState {
    ConfState::from((vec![1], Vec::<u64>::new()))
}

/// Entries 3 (term 3), 4 (term 4), 5 (term 5) after a snapshot at index 2, term 2... built the
/// way the engine builds it: append 1..=5, compact to 2.
fn store_3_to_5() -> LogStore {
    let mut s = LogStore::new(conf());
    s.append(&[
        entry(1, 1, b"a"),
        entry(2, 2, b"b"),
        entry(3, 3, b"c"),
        entry(4, 4, b"d"),
        entry(5, 5, b"e"),
    ]);
    s.compact(2);
    s
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.index).collect()
}

fn is_store_err<T>(r: &raft::Result<T>, want: &StorageError) -> bool {
    matches!(r, Err(raft::Error::Store(e)) if e == want)
}

#[test]
fn empty_store_is_truncated_at_zero() {
    let s = LogStore::new(conf());
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0).unwrap(), 0);
    assert!(is_store_err(&s.term(1), &StorageError::Unavailable));
    assert!(s.entries(1, 1, None, ctx()).unwrap().is_empty());
    let state = s.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState::default());
    assert_eq!(state.conf_state.voters, vec![1]);
    assert!(is_store_err(
        &s.snapshot(0, 2),
        &StorageError::SnapshotTemporarilyUnavailable
    ));
}

#[test]
fn term_keeps_the_snapshot_term_and_refuses_outside_the_log() {
    let s = store_3_to_5();
    assert_eq!(s.first_index().unwrap(), 3);
    assert_eq!(s.last_index().unwrap(), 5);
    assert!(is_store_err(&s.term(1), &StorageError::Compacted));
    assert_eq!(s.term(2).unwrap(), 2, "term of the compacted index is kept");
    assert_eq!(s.term(3).unwrap(), 3);
    assert_eq!(s.term(5).unwrap(), 5);
    assert!(is_store_err(&s.term(6), &StorageError::Unavailable));
}

#[test]
fn entries_honours_range_and_max_size() {
    let s = store_3_to_5();
    assert!(is_store_err(
        &s.entries(2, 4, None, ctx()),
        &StorageError::Compacted
    ));
    assert_eq!(indexes(&s.entries(3, 4, None, ctx()).unwrap()), vec![3]);
    assert_eq!(
        indexes(&s.entries(3, 6, None, ctx()).unwrap()),
        vec![3, 4, 5]
    );
    assert_eq!(indexes(&s.entries(4, 6, None, ctx()).unwrap()), vec![4, 5]);
    assert!(s.entries(6, 6, None, ctx()).unwrap().is_empty());
    // At least one entry however small the limit; then as many as fit.
    assert_eq!(indexes(&s.entries(3, 6, 0, ctx()).unwrap()), vec![3]);
    // Protobuf size of each of these entries: term, index (tag + 1-byte varint each) and data
    // (tag + length + 1 byte).
    let one = 7;
    assert_eq!(indexes(&s.entries(3, 6, one, ctx()).unwrap()), vec![3]);
    assert_eq!(
        indexes(&s.entries(3, 6, 2 * one, ctx()).unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        indexes(&s.entries(3, 6, 3 * one - 1, ctx()).unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        indexes(&s.entries(3, 6, 3 * one, ctx()).unwrap()),
        vec![3, 4, 5]
    );
    assert_eq!(
        indexes(&s.entries(3, 6, u64::MAX, ctx()).unwrap()),
        vec![3, 4, 5]
    );
}

#[test]
#[should_panic(expected = "past the last index")]
fn entries_past_the_last_index_panics() {
    let _ = store_3_to_5().entries(3, 7, None, ctx());
}

#[test]
fn append_rewrites_the_tail_and_compact_moves_the_marker() {
    let mut s = store_3_to_5();
    // A new leader's entries replace 4 and 5.
    s.append(&[entry(4, 6, b"x"), entry(5, 6, b"y"), entry(6, 6, b"z")]);
    assert_eq!(s.last_index().unwrap(), 6);
    assert_eq!(s.term(3).unwrap(), 3);
    assert_eq!(s.term(4).unwrap(), 6);
    let got = s.entries(4, 7, None, ctx()).unwrap();
    assert_eq!(got[0].data.as_ref(), b"x");
    // Appending right after the last entry.
    s.append(&[entry(7, 6, b"w")]);
    assert_eq!(s.last_index().unwrap(), 7);
    s.compact(5);
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.term(5).unwrap(), 6);
    assert!(is_store_err(&s.term(4), &StorageError::Compacted));
    s.compact(3);
    assert_eq!(
        s.first_index().unwrap(),
        6,
        "compacting below the marker is a no-op"
    );
    s.compact(7);
    assert_eq!(s.first_index().unwrap(), 8);
    assert_eq!(s.last_index().unwrap(), 7);
    assert_eq!(s.term(7).unwrap(), 6);
    // The log continues after a fully compacted store.
    s.append(&[entry(8, 7, b"v")]);
    assert_eq!(indexes(&s.entries(8, 9, None, ctx()).unwrap()), vec![8]);
}

#[test]
#[should_panic(expected = "leaves a gap")]
fn append_with_a_gap_panics() {
    store_3_to_5().append(&[entry(7, 5, b"gap")]);
}

#[test]
#[should_panic(expected = "rewrites compacted entries")]
fn append_over_compacted_entries_panics() {
    store_3_to_5().append(&[entry(2, 5, b"old")]);
}

#[test]
#[should_panic(expected = "terms never decrease")]
fn append_with_a_lower_term_panics() {
    store_3_to_5().append(&[entry(6, 4, b"stale")]);
}

#[test]
fn entries_round_trip_through_wal_records() {
    for (ty, data) in [
        (EntryType::EntryNormal, &b"put k v"[..]),
        (EntryType::EntryNormal, &b""[..]),
        (EntryType::EntryConfChange, &b"cc"[..]),
        (EntryType::EntryConfChangeV2, &b"cc2"[..]),
    ] {
        let mut e = entry(9, 4, data);
        e.set_entry_type(ty);
        let Record::Entry { index, term, data } = encode_entry(&e) else {
            panic!("an entry record");
        };
        let back = decode_entry(&wal::Entry { index, term, data }).unwrap();
        assert_eq!(back, e);
    }
    // A request id (the entry context) survives the WAL; a truncated one is corruption.
    let mut e = entry(9, 4, b"put k v");
    e.context = (1u8..=16).collect::<Vec<u8>>().into();
    let Record::Entry { index, term, data } = encode_entry(&e) else {
        panic!("an entry record");
    };
    assert_eq!(data[0], 0x80, "normal entry with a request id");
    assert_eq!(decode_entry(&wal::Entry { index, term, data }).unwrap(), e);
    for bad in [vec![], vec![9u8, 1, 2], vec![0x80u8, 1, 2, 3]] {
        let r = decode_entry(&wal::Entry {
            index: 1,
            term: 1,
            data: bad,
        });
        assert!(matches!(r, Err(RaftError::CorruptLog(_))));
    }
}

#[test]
fn rebuilds_from_recovered_wal_state() {
    let recovered = wal::Recovered {
        hard_state: Some(wal::HardState {
            term: 5,
            vote: 1,
            commit: 3,
        }),
        snapshot: Some(wal::SnapshotMarker { index: 4, term: 4 }),
        entries: [5u64, 6]
            .iter()
            .map(|&i| match encode_entry(&entry(i, 5, b"d")) {
                Record::Entry { index, term, data } => wal::Entry { index, term, data },
                _ => unreachable!(),
            })
            .collect(),
        ..wal::Recovered::default()
    };
    let s = LogStore::from_recovered(&recovered, conf()).unwrap();
    assert_eq!(s.first_index().unwrap(), 5);
    assert_eq!(s.last_index().unwrap(), 6);
    assert_eq!(s.term(4).unwrap(), 4);
    let hs = s.initial_state().unwrap().hard_state;
    assert_eq!((hs.term, hs.vote), (5, 1));
    assert_eq!(hs.commit, 4, "a commit behind the marker is raised to it");

    let past_the_log = wal::Recovered {
        hard_state: Some(wal::HardState {
            term: 5,
            vote: 1,
            commit: 9,
        }),
        ..wal::Recovered::default()
    };
    assert!(matches!(
        LogStore::from_recovered(&past_the_log, conf()),
        Err(RaftError::CorruptLog(_))
    ));
}
