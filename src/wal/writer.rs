//! The writer task: recovery at open, then the group-commit loop (one write and one fdatasync
//! per batch), segment cutting with a preallocated spare, and release of old segments.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;

use super::disk::{Disk, DiskFile};
use super::format::{
    align_up, encode_frame, is_spare_file, parse_segment_file_name, segment_file_name,
    spare_file_name, BatchHeader, Record, SegmentHeader, BATCH_HEADER_BYTES, BLOCK_BYTES,
};
use super::scan::{scan_segment, LogState, Replay};
use super::{Recovered, WalConfig, WalError, WalStats};

/// Reads and zeroing writes are issued in pieces of this size.
const IO_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(IO_CHUNK_BYTES % BLOCK_BYTES == 0);

pub(crate) enum Command {
    Append {
        records: Vec<Record>,
        bytes: u64,
        done: oneshot::Sender<Result<(), WalError>>,
    },
    Release {
        index: u64,
        done: oneshot::Sender<Result<usize, WalError>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// Counters shared between the writer and the handles.
#[derive(Default)]
pub(crate) struct Shared {
    pub queued_bytes: AtomicU64,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes: AtomicU64,
    pub sync_us_max: AtomicU64,
}

impl Shared {
    pub fn stats(&self) -> WalStats {
        WalStats {
            batches: self.batches.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            sync_us_max: self.sync_us_max.load(Ordering::Relaxed),
        }
    }
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest entry index written into the segment; `None` if it holds no entries.
    max_entry_index: Option<u64>,
}

/// Submissions accepted into one batch.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    waiters: Vec<oneshot::Sender<Result<(), WalError>>>,
    payload_bytes: usize,
    /// The log state after this batch.
    state: LogState,
}

/// The single writer of one WAL directory. Created by `Wal::recover`; [`WalWriter::run`] must be
/// spawned on a glommio executor (it owns all the WAL's I/O).
pub struct WalWriter<D: Disk> {
    disk: D,
    dir: PathBuf,
    cfg: WalConfig,
    rx: mpsc::UnboundedReceiver<Command>,
    shared: std::sync::Arc<Shared>,
    /// Oldest first; the back one is being written.
    segments: VecDeque<Segment>,
    file: D::File,
    /// Where the next batch goes in the current segment.
    offset: u64,
    /// Size of the current segment (as created; the config may have changed since).
    segment_bytes: u64,
    next_batch_seq: u64,
    state: LogState,
    spare: Option<glommio::Task<io::Result<D::File>>>,
    /// A command taken off the channel that belongs to the next round.
    carry: Option<Command>,
    poisoned: bool,
}

async fn read_whole<F: DiskFile>(file: &F) -> io::Result<Vec<u8>> {
    let len = file.len_bytes().await? as usize;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let chunk = file
            .read_at(out.len() as u64, IO_CHUNK_BYTES.min(len - out.len()))
            .await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn write_zeros<F: DiskFile>(file: &F, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let len = IO_CHUNK_BYTES.min((to - at) as usize);
        file.write_at(file.alloc(len), at).await?;
        at += len as u64;
    }
    Ok(())
}

fn io_error_copy(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl<D: Disk> WalWriter<D> {
    /// Reads the log in `dir` (creating it if empty), repairs a torn tail, and returns the writer
    /// positioned after the last complete batch.
    pub(crate) async fn recover(
        disk: D,
        dir: &Path,
        cfg: WalConfig,
        rx: mpsc::UnboundedReceiver<Command>,
        shared: std::sync::Arc<Shared>,
    ) -> Result<(WalWriter<D>, Recovered), WalError> {
        cfg.validate()?;
        disk.create_dir_all(dir)?;
        let mut names = Vec::new();
        let mut spares = Vec::new();
        for path in disk.list(dir)? {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if let Some((seq, first_index)) = parse_segment_file_name(&name) {
                names.push((seq, first_index, path));
            } else if is_spare_file(&path) {
                spares.push(path);
            }
        }
        for spare in &spares {
            disk.remove(spare).await?;
        }
        if !spares.is_empty() {
            disk.sync_dir(dir).await?;
        }
        names.sort_unstable_by_key(|(seq, ..)| *seq);
        for pair in names.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return Err(WalError::Corruption {
                    file: pair[1].2.clone(),
                    offset: 0,
                    reason: format!("segment sequence jumps from {} to {}", pair[0].0, pair[1].0),
                });
            }
        }

        let mut writer_parts = None;
        let mut replay = Replay::default();
        let mut segments = VecDeque::new();
        let mut repaired_tail = None;
        let mut expected_batch_seq: Option<(u64, PathBuf, u64)> = None;
        for (i, (seq, first_index, path)) in names.iter().enumerate() {
            let newest = i + 1 == names.len();
            let file = disk.open(path).await?;
            let image = read_whole(&file).await?;
            let scan = scan_segment(path, &image, newest)?;
            let image_len = image.len() as u64;
            drop(image);
            if scan.header.seq != *seq || scan.header.first_index != *first_index {
                return Err(WalError::Corruption {
                    file: path.clone(),
                    offset: 0,
                    reason: format!(
                        "header says segment {:?}, the name says {:?}",
                        (scan.header.seq, scan.header.first_index),
                        (seq, first_index)
                    ),
                });
            }
            if let Some((expected, prev_path, prev_end)) = expected_batch_seq.take() {
                if scan.header.first_batch_seq != expected {
                    return Err(WalError::Corruption {
                        file: prev_path,
                        offset: prev_end,
                        reason: format!(
                            "segment ends before batch {}, where the next segment starts",
                            scan.header.first_batch_seq
                        ),
                    });
                }
            }
            let mut max_entry_index = None;
            for (offset, record) in scan.records {
                if let Record::Entry { index, .. } = &record {
                    max_entry_index = Some(max_entry_index.map_or(*index, |m: u64| m.max(*index)));
                }
                replay.apply(path, offset, record)?;
            }
            segments.push_back(Segment {
                seq: *seq,
                path: path.clone(),
                max_entry_index,
            });
            expected_batch_seq = Some((scan.next_batch_seq, path.clone(), scan.end_offset));
            if newest {
                if let Some(torn) = &scan.torn {
                    write_zeros(&file, torn.offset, torn.dirty_end).await?;
                    file.fdatasync().await?;
                    shared.syncs.fetch_add(1, Ordering::Relaxed);
                    repaired_tail = Some((path.clone(), torn.offset));
                }
                writer_parts = Some((
                    file,
                    scan.end_offset,
                    scan.header.segment_bytes.min(image_len),
                    scan.next_batch_seq,
                ));
            } else {
                file.close().await?;
            }
        }

        let (file, offset, segment_bytes, next_batch_seq) = if let Some(parts) = writer_parts {
            parts
        } else {
            let header = SegmentHeader {
                seq: 0,
                first_index: 0,
                first_batch_seq: 0,
                segment_bytes: cfg.segment_bytes,
            };
            let file = create_segment(&disk, dir, &cfg, None, header).await?;
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            segments.push_back(Segment {
                seq: 0,
                path: dir.join(segment_file_name(0, 0)),
                max_entry_index: None,
            });
            (file, BLOCK_BYTES as u64, cfg.segment_bytes, 0)
        };
        let mut writer = WalWriter {
            disk,
            dir: dir.to_path_buf(),
            cfg,
            rx,
            shared,
            segments,
            file,
            offset,
            segment_bytes,
            next_batch_seq,
            state: replay.state.clone(),
            spare: None,
            carry: None,
            poisoned: false,
        };
        writer.start_spare();
        let recovered = Recovered {
            metadata: replay.state.metadata,
            hard_state: replay.state.hard_state,
            snapshot: replay.state.snapshot,
            entries: replay.entries,
            repaired_tail,
            segments: writer.segments.len(),
        };
        Ok((writer, recovered))
    }

    /// Serves submissions until `Shutdown` or until every handle is dropped.
    pub async fn run(mut self) {
        let mut shutdown = None;
        while let Some(command) = self.next_command().await {
            match command {
                Command::Shutdown { done } => {
                    shutdown = Some(done);
                    break;
                }
                Command::Release { index, done } => {
                    let _ = done.send(self.release(index).await);
                }
                append @ Command::Append { .. } => {
                    let batch = self.collect_batch(append).await;
                    if !batch.waiters.is_empty() {
                        self.commit(batch).await;
                    }
                }
            }
        }
        // Every batch was synced before its submitters heard of it: closing flushes nothing,
        // it only releases the files. The spare is left for the next open to remove.
        if let Some(spare) = self.spare.take() {
            if let Ok(file) = spare.await {
                let _ = file.close().await;
            }
        }
        let _ = self.file.close().await;
        if let Some(done) = shutdown {
            let _ = done.send(());
        }
    }

    async fn next_command(&mut self) -> Option<Command> {
        match self.carry.take() {
            Some(command) => Some(command),
            None => self.rx.next().await,
        }
    }

    /// Takes `first` and every append already queued (or arriving within `batch_delay_us`), up to
    /// the batch limits. Anything else ends the batch and waits in `carry`.
    async fn collect_batch(&mut self, first: Command) -> Batch {
        let mut batch = Batch {
            state: self.state.clone(),
            ..Batch::default()
        };
        let deadline = Instant::now() + Duration::from_micros(self.cfg.batch_delay_us);
        let mut next = Some(first);
        loop {
            let command = match next.take() {
                Some(command) => command,
                None => match self.rx.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::TryRecvError::Closed) => break,
                    Err(mpsc::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        let timer = std::pin::pin!(glommio::timer::sleep(deadline - now));
                        match futures::future::select(self.rx.next(), timer).await {
                            futures::future::Either::Left((Some(command), _)) => command,
                            _ => break,
                        }
                    }
                },
            };
            let Command::Append {
                records,
                bytes,
                done,
            } = command
            else {
                self.carry = Some(command);
                break;
            };
            let full = !batch.waiters.is_empty()
                && (batch.payload_bytes + bytes as usize > self.cfg.batch_bytes_max
                    || batch.records.len() + records.len() > self.cfg.batch_records_max);
            if full {
                self.carry = Some(Command::Append {
                    records,
                    bytes,
                    done,
                });
                break;
            }
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.admit(&mut batch, records, bytes, done);
        }
        batch
    }

    /// Adds one submission to `batch`, or answers it at once if it cannot be written.
    fn admit(
        &mut self,
        batch: &mut Batch,
        records: Vec<Record>,
        bytes: u64,
        done: oneshot::Sender<Result<(), WalError>>,
    ) {
        if self.poisoned {
            let _ = done.send(Err(WalError::Poisoned));
            return;
        }
        let mut state = batch.state.clone();
        for record in &records {
            if let Err(reason) = state.check(record) {
                let _ = done.send(Err(WalError::InvalidRecord(reason)));
                return;
            }
            state.apply(record);
        }
        batch.state = state;
        batch.payload_bytes += bytes as usize;
        batch.records.extend(records);
        batch.waiters.push(done);
    }

    /// Writes `batch` with one write and one fdatasync, then answers its submitters.
    async fn commit(&mut self, batch: Batch) {
        let result = self.write_batch(&batch).await;
        let records = batch.records.len() as u64;
        match result {
            Ok(()) => {
                self.state = batch.state;
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                self.shared.records.fetch_add(records, Ordering::Relaxed);
                crate::metrics::METRICS
                    .wal_batch_records
                    .observe(records as f64);
                for done in batch.waiters {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // After a failed write or fdatasync the file's state is unknown (fsyncgate):
                // nothing more is written until a reopen has recovered the log.
                self.poisoned = true;
                for done in batch.waiters {
                    let _ = done.send(Err(WalError::Io(io_error_copy(&e))));
                }
            }
        }
    }

    async fn write_batch(&mut self, batch: &Batch) -> io::Result<()> {
        let extent_for = |state_records: &[Record]| {
            let payload_bytes =
                batch.payload_bytes + state_records.iter().map(Record::frame_bytes).sum::<usize>();
            (
                payload_bytes,
                align_up(BATCH_HEADER_BYTES + payload_bytes, BLOCK_BYTES),
            )
        };
        let mut state_records = self.state_records_if_segment_start();
        let (mut payload_bytes, mut extent) = extent_for(&state_records);
        if self.offset + extent as u64 > self.segment_bytes {
            self.cut().await?;
            state_records = self.state.state_records();
            (payload_bytes, extent) = extent_for(&state_records);
            assert!(
                self.offset + extent as u64 <= self.segment_bytes,
                "a batch must fit an empty segment"
            );
        }
        let header = BatchHeader {
            batch_seq: self.next_batch_seq,
            payload_bytes: payload_bytes as u32,
            record_count: (state_records.len() + batch.records.len()) as u32,
        };
        let mut buf = self.file.alloc(extent);
        {
            let bytes = buf.as_mut();
            header.encode(bytes);
            let mut at = BATCH_HEADER_BYTES;
            for record in state_records.iter().chain(&batch.records) {
                encode_frame(record, &mut bytes[at..]);
                at += record.frame_bytes();
            }
            assert_eq!(at, BATCH_HEADER_BYTES + payload_bytes);
        }
        self.file.write_at(buf, self.offset).await?;
        self.sync_current().await?;
        self.offset += extent as u64;
        self.next_batch_seq += 1;
        self.shared
            .bytes
            .fetch_add(extent as u64, Ordering::Relaxed);
        crate::metrics::METRICS.wal_write_bytes.add(extent as u64);
        let segment = self.segments.back_mut().expect("a current segment");
        for record in &batch.records {
            if let Record::Entry { index, .. } = record {
                segment.max_entry_index =
                    Some(segment.max_entry_index.map_or(*index, |m| m.max(*index)));
            }
        }
        Ok(())
    }

    /// A segment's first batch restates the log state, so older segments can be released.
    fn state_records_if_segment_start(&self) -> Vec<Record> {
        if self.offset == BLOCK_BYTES as u64 {
            self.state.state_records()
        } else {
            Vec::new()
        }
    }

    async fn sync_current(&self) -> io::Result<()> {
        let start = Instant::now();
        self.file.fdatasync().await?;
        crate::metrics::METRICS
            .wal_fsync_seconds
            .observe_duration(start.elapsed());
        let us = start.elapsed().as_micros() as u64;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.shared.sync_us_max.fetch_max(us, Ordering::Relaxed);
        Ok(())
    }

    /// Starts preallocating the next segment's file in the background.
    fn start_spare(&mut self) {
        assert!(self.spare.is_none());
        let seq = self.segments.back().expect("a current segment").seq + 1;
        let disk = self.disk.clone();
        let path = self.dir.join(spare_file_name(seq));
        let len = self.cfg.segment_bytes;
        self.spare = Some(glommio::spawn_local(async move {
            disk.create(&path, len).await
        }));
    }

    /// Closes the current segment and continues in the next one (the spare, renamed into place).
    async fn cut(&mut self) -> io::Result<()> {
        let seq = self.segments.back().expect("a current segment").seq + 1;
        let first_index = self.state.last_index.map_or(0, |i| i + 1);
        let spare = self
            .spare
            .take()
            .expect("a spare is always being prepared")
            .await?;
        let header = SegmentHeader {
            seq,
            first_index,
            first_batch_seq: self.next_batch_seq,
            segment_bytes: self.cfg.segment_bytes,
        };
        let next = create_segment(&self.disk, &self.dir, &self.cfg, Some(spare), header).await?;
        std::mem::replace(&mut self.file, next).close().await?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.offset = BLOCK_BYTES as u64;
        self.segment_bytes = self.cfg.segment_bytes;
        self.segments.push_back(Segment {
            seq,
            path: self.dir.join(segment_file_name(seq, first_index)),
            max_entry_index: None,
        });
        self.start_spare();
        Ok(())
    }

    /// Deletes the oldest segments whose entries are all at or below `index`, never the newest.
    async fn release(&mut self, index: u64) -> Result<usize, WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        let snapshot_index = self.state.snapshot.map(|s| s.index);
        if snapshot_index.is_none_or(|s| index > s) {
            return Err(WalError::ReleaseBeyondSnapshot {
                index,
                snapshot_index,
            });
        }
        let mut released = 0;
        while self.segments.len() > 1 && self.segments[0].max_entry_index.is_none_or(|m| m <= index)
        {
            let segment = self.segments.pop_front().expect("checked");
            // One directory sync per removal: a crash can only ever lose a prefix of the log.
            self.disk.remove(&segment.path).await?;
            self.disk.sync_dir(&self.dir).await?;
            released += 1;
        }
        Ok(released)
    }
}

/// Writes `header` into block 0 of `spare` (or of a new file), syncs it, and renames it into the
/// log under its segment name: a named segment always has a durable header.
async fn create_segment<D: Disk>(
    disk: &D,
    dir: &Path,
    cfg: &WalConfig,
    spare: Option<D::File>,
    header: SegmentHeader,
) -> io::Result<D::File> {
    let spare_path = dir.join(spare_file_name(header.seq));
    let file = match spare {
        Some(file) => file,
        None => disk.create(&spare_path, cfg.segment_bytes).await?,
    };
    let mut block = file.alloc(BLOCK_BYTES);
    header.encode(block.as_mut());
    file.write_at(block, 0).await?;
    file.fdatasync().await?;
    disk.rename(
        &spare_path,
        &dir.join(segment_file_name(header.seq, header.first_index)),
    )
    .await?;
    disk.sync_dir(dir).await?;
    Ok(file)
}
