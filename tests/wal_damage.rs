//! Opening WAL files damaged on disk: a torn tail and a zero-filled tail are crash remains and
//! are repaired; a flipped bit before the tail is corruption and is refused with file and offset.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use futures::executor::block_on;
use ringkv::wal::{format, Record, Wal, WalConfig, WalError};

const BLOCK: u64 = format::BLOCK_BYTES as u64;

fn entry(index: u64) -> Record {
    Record::Entry {
        index,
        term: 1,
        data: vec![index as u8; 100],
    }
}

/// A log of `n` single-entry batches in segment 0: entry `i` is the batch at block `i`.
fn write_log(dir: &Path, n: u64) -> PathBuf {
    let (wal, _) = Wal::open(dir, WalConfig::small()).unwrap();
    for i in 1..=n {
        block_on(wal.append(vec![entry(i)])).unwrap();
    }
    wal.close().unwrap();
    dir.join(format::segment_file_name(0, 0))
}

fn patch(file: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}

fn read(file: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = OpenOptions::new().read(true).open(file).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn indexes(dir: &Path) -> (Vec<u64>, Option<(PathBuf, u64)>) {
    let (wal, recovered) = Wal::open(dir, WalConfig::small()).unwrap();
    wal.close().unwrap();
    (
        recovered.entries.iter().map(|e| e.index).collect(),
        recovered.repaired_tail,
    )
}

/// The last batch was half written when the power went: its header and first sector are there,
/// the rest of its frame is garbage. Open drops it (never acknowledged), zeroes it, and appends
/// after the good batches.
#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let segment = write_log(&dir, 8);
    patch(&segment, 8 * BLOCK + 100, &[0x5a; 60]);

    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    assert_eq!(
        recovered
            .entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(recovered.repaired_tail, Some((segment.clone(), 8 * BLOCK)));
    assert!(
        read(&segment, 8 * BLOCK, BLOCK as usize)
            .iter()
            .all(|&b| b == 0),
        "torn batch zeroed"
    );
    block_on(wal.append(vec![entry(8), entry(9)])).unwrap();
    wal.close().unwrap();

    assert_eq!(indexes(&dir), ((1..=9).collect(), None));
}

/// A torn write that left only a stray later sector of the batch (its header block missing).
#[test]
fn torn_tail_without_its_header_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let segment = write_log(&dir, 5);
    patch(&segment, 6 * BLOCK + 512, &[0xff; 512]);
    let (got, repaired) = indexes(&dir);
    assert_eq!(got, (1..=5).collect::<Vec<_>>());
    assert_eq!(repaired, Some((segment, 6 * BLOCK)));
}

/// The last batch reads as zeros (the write never reached the disk, the preallocated space
/// shows through): the end of the log, nothing to repair.
#[test]
fn zero_filled_tail_is_the_end_of_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let segment = write_log(&dir, 6);
    patch(&segment, 6 * BLOCK, &vec![0; BLOCK as usize]);

    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    assert_eq!(
        recovered
            .entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>()
    );
    assert_eq!(recovered.repaired_tail, None);
    block_on(wal.append(vec![entry(6)])).unwrap();
    wal.close().unwrap();
    assert_eq!(indexes(&dir), ((1..=6).collect(), None));
}

/// A bit flipped in entry 3's data, with valid batches after it: acknowledged data is damaged,
/// so open refuses and names the file and the offset of the bad record frame.
#[test]
fn flipped_bit_in_the_middle_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let segment = write_log(&dir, 8);
    let frame_offset = 3 * BLOCK + format::BATCH_HEADER_BYTES as u64;
    let data_offset = frame_offset + format::FRAME_HEADER_BYTES as u64 + 16 + 40;
    let mut byte = read(&segment, data_offset, 1);
    byte[0] ^= 0x08;
    patch(&segment, data_offset, &byte);

    let err = Wal::open(&dir, WalConfig::small()).unwrap_err();
    match &err {
        WalError::Corruption { file, offset, .. } => {
            assert_eq!(file, &segment);
            assert_eq!(*offset, frame_offset);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("0000000000000000-0000000000000000.wal")
            && message.contains(&frame_offset.to_string()),
        "{message}"
    );
    // Refusing must not have modified anything: still refused.
    assert!(matches!(
        Wal::open(&dir, WalConfig::small()),
        Err(WalError::Corruption { .. })
    ));
}

/// A destroyed batch header in a segment that is not the newest is corruption even though only
/// zeros follow it in that segment: the next segment proves the batch was acknowledged.
#[test]
fn damage_in_an_older_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (wal, _) = Wal::open(&dir, WalConfig::small()).unwrap();
    for i in 1..=40 {
        block_on(wal.append(vec![entry(i)])).unwrap();
    }
    wal.close().unwrap();
    let first = dir.join(format::segment_file_name(0, 0));
    assert!(dir.join(format::segment_file_name(1, 16)).exists());
    // Segment 0 holds 15 one-block batches; destroy the header of its last one.
    patch(&first, 15 * BLOCK, &[0xee; 8]);
    match Wal::open(&dir, WalConfig::small()) {
        Err(WalError::Corruption { file, offset, .. }) => {
            assert_eq!(file, first);
            assert_eq!(offset, 15 * BLOCK);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// A damaged segment header is corruption at offset 0.
#[test]
fn damaged_segment_header_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let segment = write_log(&dir, 2);
    patch(&segment, 20, &[0x01]);
    match Wal::open(&dir, WalConfig::small()) {
        Err(WalError::Corruption {
            file, offset: 0, ..
        }) => assert_eq!(file, segment),
        other => panic!("expected corruption, got {other:?}"),
    }
}
