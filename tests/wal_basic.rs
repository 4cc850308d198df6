//! WAL behaviour on the real disk: round trip, reopen, rewrites, segment rollover, release,
//! group commit under concurrency, and the submission limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::executor::block_on;
use parking_lot::Mutex;
use ringkv::wal::{
    format, Entry, HardState, Metadata, Record, SnapshotMarker, Wal, WalConfig, WalError,
};

fn entry(index: u64, term: u64) -> Record {
    Record::Entry {
        index,
        term,
        data: format!("entry {index} term {term}").into_bytes(),
    }
}

fn indexes_terms(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.index, e.term)).collect()
}

fn wal_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("member").join("wal")
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| format::parse_segment_file_name(n).is_some())
        .collect();
    names.sort();
    names
}

/// A WAL opened by a relative path (the server's default data dir, `default.etcd`, is one)
/// failed with EBADF: glommio resolved the relative path against no directory at all. The
/// server worked around it; the WAL now makes its path absolute itself.
#[test]
fn a_relative_directory_opens_and_reopens() {
    let cwd = std::env::current_dir().unwrap();
    let tmp = tempfile::tempdir_in(&cwd).unwrap();
    let relative = tmp.path().strip_prefix(&cwd).unwrap().join("wal");
    assert!(relative.is_relative());
    let (wal, _) = Wal::open(&relative, WalConfig::small()).unwrap();
    block_on(wal.append(vec![entry(1, 1)])).unwrap();
    wal.close().unwrap();
    let (wal, recovered) = Wal::open(&relative, WalConfig::small()).unwrap();
    assert_eq!(indexes_terms(&recovered.entries), [(1, 1)]);
    wal.close().unwrap();
}

#[test]
fn round_trip_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir(&tmp);
    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    assert!(
        recovered.entries.is_empty()
            && recovered.hard_state.is_none()
            && recovered.metadata.is_none()
    );
    assert_eq!(
        segment_names(&dir),
        ["0000000000000000-0000000000000000.wal"]
    );

    block_on(wal.append(vec![Record::Metadata {
        member_id: 7,
        cluster_id: 9,
    }]))
    .unwrap();
    for i in 1..=50 {
        block_on(wal.append(vec![
            entry(i, 1),
            Record::HardState {
                term: 1,
                vote: 3,
                commit: i - 1,
            },
        ]))
        .unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.records, 101);
    assert_eq!(stats.batches, 51);
    wal.close().unwrap();

    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    assert_eq!(
        recovered.metadata,
        Some(Metadata {
            member_id: 7,
            cluster_id: 9
        })
    );
    assert_eq!(
        recovered.hard_state,
        Some(HardState {
            term: 1,
            vote: 3,
            commit: 49
        })
    );
    assert_eq!(recovered.repaired_tail, None);
    assert_eq!(
        indexes_terms(&recovered.entries),
        (1..=50).map(|i| (i, 1)).collect::<Vec<_>>()
    );
    assert_eq!(recovered.entries[9].data, b"entry 10 term 1");

    // Appending after a reopen continues the log.
    block_on(wal.append(vec![entry(51, 1)])).unwrap();
    wal.close().unwrap();
    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    assert_eq!(recovered.entries.last().unwrap().index, 51);
    wal.close().unwrap();
}

#[test]
fn rewritten_entries_truncate_the_tail_on_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir(&tmp);
    let (wal, _) = Wal::open(&dir, WalConfig::small()).unwrap();
    block_on(wal.append((1..=10).map(|i| entry(i, 1)).collect())).unwrap();
    // A new leader overwrites from index 6.
    block_on(wal.append(vec![entry(6, 2), entry(7, 2)])).unwrap();
    // A gap is refused, and nothing of the refused submission is written.
    let gap = block_on(wal.append(vec![entry(8, 2), entry(10, 2)]));
    assert!(matches!(gap, Err(WalError::InvalidRecord(_))), "{gap:?}");
    wal.close().unwrap();

    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    let want: Vec<(u64, u64)> = (1..=5).map(|i| (i, 1)).chain([(6, 2), (7, 2)]).collect();
    assert_eq!(indexes_terms(&recovered.entries), want);
    assert_eq!(recovered.entries[5].data, b"entry 6 term 2");
    wal.close().unwrap();
}

#[test]
fn segments_roll_over_and_release_keeps_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir(&tmp);
    let cfg = WalConfig::small();
    let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
    block_on(wal.append(vec![Record::Metadata {
        member_id: 1,
        cluster_id: 2,
    }]))
    .unwrap();
    let data = vec![0xab; 1000];
    for i in 1..=300u64 {
        let records = vec![
            Record::Entry {
                index: i,
                term: 1,
                data: data.clone(),
            },
            Record::HardState {
                term: 1,
                vote: 1,
                commit: i,
            },
        ];
        block_on(wal.append(records)).unwrap();
    }
    wal.close().unwrap();

    let names = segment_names(&dir);
    assert!(names.len() >= 5, "expected rollover, got {names:?}");
    for (seq, name) in names.iter().enumerate() {
        let (name_seq, first_index) = format::parse_segment_file_name(name).unwrap();
        assert_eq!(name_seq, seq as u64);
        assert_eq!(
            std::fs::metadata(dir.join(name)).unwrap().len(),
            cfg.segment_bytes
        );
        if seq > 0 {
            assert!(first_index > 1, "{name}");
        }
    }
    // Besides the segments, only the preallocated spare for the next one.
    let spares = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "tmp")
        })
        .count();
    assert!(spares <= 1, "{spares} spare files");

    let (wal, recovered) = Wal::open(&dir, cfg.clone()).unwrap();
    assert_eq!(recovered.segments, names.len());
    assert_eq!(
        indexes_terms(&recovered.entries),
        (1..=300).map(|i| (i, 1)).collect::<Vec<_>>()
    );

    // Release needs a snapshot marker covering the index.
    let refused = block_on(wal.release_to(200));
    assert!(
        matches!(
            refused,
            Err(WalError::ReleaseBeyondSnapshot {
                index: 200,
                snapshot_index: None
            })
        ),
        "{refused:?}"
    );
    block_on(wal.append(vec![Record::Snapshot {
        index: 200,
        term: 1,
    }]))
    .unwrap();
    let released = block_on(wal.release_to(200)).unwrap();
    assert!(released >= 2, "released {released}");
    let left = segment_names(&dir);
    assert_eq!(left.len(), names.len() - released);
    assert_eq!(left[0], names[released]);
    wal.close().unwrap();

    let (wal, recovered) = Wal::open(&dir, cfg).unwrap();
    assert_eq!(
        recovered.snapshot,
        Some(SnapshotMarker {
            index: 200,
            term: 1
        })
    );
    assert_eq!(
        recovered.metadata,
        Some(Metadata {
            member_id: 1,
            cluster_id: 2
        })
    );
    assert_eq!(
        recovered.hard_state,
        Some(HardState {
            term: 1,
            vote: 1,
            commit: 300
        })
    );
    assert_eq!(
        indexes_terms(&recovered.entries),
        (201..=300).map(|i| (i, 1)).collect::<Vec<_>>()
    );
    // Releasing everything still keeps the newest segment.
    block_on(wal.append(vec![Record::Snapshot {
        index: 300,
        term: 1,
    }]))
    .unwrap();
    block_on(wal.release_to(300)).unwrap();
    assert_eq!(segment_names(&dir).len(), 1);
    wal.close().unwrap();
    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    assert_eq!(
        recovered.snapshot,
        Some(SnapshotMarker {
            index: 300,
            term: 1
        })
    );
    assert_eq!(
        recovered.metadata,
        Some(Metadata {
            member_id: 1,
            cluster_id: 2
        })
    );
    assert!(recovered.entries.is_empty());
    block_on(wal.append(vec![entry(301, 2)])).unwrap();
    wal.close().unwrap();
}

/// 64 threads each append one entry at a time and wait for it. Entries arriving while an
/// fdatasync is in flight must share the next one: far fewer syncs than records.
#[test]
fn group_commit_batches_concurrent_submitters() {
    const SUBMITTERS: u64 = 64;
    const PER_SUBMITTER: u64 = 40;
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir(&tmp);
    let cfg = WalConfig {
        segment_bytes: 4 << 20,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
    let syncs_at_start = wal.stats().syncs;
    // Indexes are handed out and queued under one lock, as the raft loop would order them.
    let next_index = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..SUBMITTERS)
        .map(|_| {
            let wal = wal.clone();
            let next_index = next_index.clone();
            std::thread::spawn(move || {
                for _ in 0..PER_SUBMITTER {
                    let durable = {
                        let mut next = next_index.lock();
                        *next += 1;
                        wal.append(vec![entry(*next, 1)])
                    };
                    block_on(durable).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = wal.stats();
    let records = SUBMITTERS * PER_SUBMITTER;
    let syncs = stats.syncs - syncs_at_start;
    println!("{stats:?}");
    assert_eq!(stats.records, records);
    assert!(syncs * 4 <= records, "{syncs} syncs for {records} records");
    assert!(
        stats.batches * 4 <= records,
        "{} batches for {records} records",
        stats.batches
    );
    wal.close().unwrap();

    let (wal, recovered) = Wal::open(&dir, cfg).unwrap();
    assert_eq!(
        indexes_terms(&recovered.entries),
        (1..=records).map(|i| (i, 1)).collect::<Vec<_>>()
    );
    wal.close().unwrap();
}

#[test]
fn batch_delay_and_pinned_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir(&tmp);
    let cfg = WalConfig {
        batch_delay_us: 20_000,
        writer_cpu: Some(0),
        ..WalConfig::small()
    };
    let (wal, _) = Wal::open(&dir, cfg).unwrap();
    // Queued before the writer looks: with the delay they all land in one batch.
    let pending: Vec<_> = (1..=20).map(|i| wal.append(vec![entry(i, 1)])).collect();
    for p in pending {
        block_on(p).unwrap();
    }
    assert!(wal.stats().batches <= 2, "{:?}", wal.stats());
    wal.close().unwrap();
}

#[test]
fn limits_refuse_oversized_submissions_and_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir(&tmp);
    let cfg = WalConfig::small();
    let (wal, _) = Wal::open(&dir, cfg.clone()).unwrap();
    let huge = Record::Entry {
        index: 1,
        term: 1,
        data: vec![0; cfg.segment_bytes as usize],
    };
    assert!(matches!(
        block_on(wal.append(vec![huge])),
        Err(WalError::TooLarge { .. })
    ));
    // The biggest submission that fits an empty segment is accepted and forces a cut.
    let max_data = cfg.submission_bytes_max() as usize - format::FRAME_HEADER_BYTES - 16;
    block_on(wal.append(vec![entry(1, 1)])).unwrap();
    block_on(wal.append(vec![Record::Entry {
        index: 2,
        term: 1,
        data: vec![7; max_data],
    }]))
    .unwrap();
    block_on(wal.append(vec![entry(3, 1)])).unwrap();
    wal.close().unwrap();
    let (wal, recovered) = Wal::open(&dir, cfg).unwrap();
    assert_eq!(recovered.entries.len(), 3);
    assert_eq!(recovered.entries[1].data.len(), max_data);
    assert!(recovered.segments >= 2);
    wal.close().unwrap();

    let bad = WalConfig {
        segment_bytes: 10_000,
        ..WalConfig::small()
    };
    assert!(matches!(
        Wal::open(&dir, bad),
        Err(WalError::InvalidConfig(_))
    ));
}

#[test]
fn closed_wal_refuses_submissions() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(&wal_dir(&tmp), WalConfig::small()).unwrap();
    let other = wal.clone();
    wal.close().unwrap();
    assert!(matches!(
        block_on(other.append(vec![entry(1, 1)])),
        Err(WalError::Closed)
    ));
}

/// The server places the writer itself: recover on its executor, spawn `run`, submit from that
/// executor and from another thread.
#[test]
fn writer_runs_on_a_caller_provided_executor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = wal_dir(&tmp);
    let executor =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(1 << 20);
    let dir_in = dir.clone();
    let handle = executor
        .spawn(move || async move {
            let (wal, recovered, writer) =
                Wal::recover(ringkv::wal::disk::GlommioDisk, &dir_in, WalConfig::small())
                    .await
                    .unwrap();
            assert!(recovered.entries.is_empty());
            glommio::spawn_local(writer.run()).detach();
            wal.append(vec![entry(1, 1)]).await.unwrap();
            let other = wal.clone();
            let from_thread = std::thread::spawn(move || block_on(other.append(vec![entry(2, 1)])));
            // The thread blocks on a future this executor's writer resolves; yield until it is done.
            while !from_thread.is_finished() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            from_thread.join().unwrap().unwrap();
            wal.append(vec![entry(3, 1)]).await.unwrap();
            wal.shutdown().await.unwrap();
            assert!(matches!(
                wal.append(vec![entry(4, 1)]).await,
                Err(WalError::Closed)
            ));
        })
        .unwrap();
    handle.join().unwrap();

    let (wal, recovered) = Wal::open(&dir, WalConfig::small()).unwrap();
    assert_eq!(indexes_terms(&recovered.entries), [(1, 1), (2, 1), (3, 1)]);
    wal.close().unwrap();
}
