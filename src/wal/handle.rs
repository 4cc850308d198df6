//! `Wal`: the cloneable, thread-safe handle through which any thread submits records to the
//! writer task and waits for durability; plus the ways to start the writer.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::channel::{mpsc, oneshot};
use parking_lot::Mutex;

use super::disk::{Disk, GlommioDisk};
use super::format::Record;
use super::scan::{Entry, HardState, Metadata, SnapshotMarker};
use super::writer::{Command, Shared, WalWriter};
use super::{WalConfig, WalError};

/// What `open` read back from the log.
#[derive(Debug, Default)]
pub struct Recovered {
    pub metadata: Option<Metadata>,
    pub hard_state: Option<HardState>,
    /// The newest snapshot marker.
    pub snapshot: Option<SnapshotMarker>,
    /// Entries after the snapshot marker, contiguous by index, rewrites applied.
    pub entries: Vec<Entry>,
    /// The segment and offset from which a torn tail (an interrupted, never acknowledged batch)
    /// was zeroed, if there was one.
    pub repaired_tail: Option<(PathBuf, u64)>,
    /// Segment files in the log after recovery.
    pub segments: usize,
}

/// Counters since the WAL was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches written (each: one write, one fdatasync).
    pub batches: u64,
    /// Records submitted and made durable (segment-opening state records not counted).
    pub records: u64,
    /// fdatasyncs issued, segment creation and tail repair included.
    pub syncs: u64,
    /// Bytes written in batches, block padding included.
    pub bytes: u64,
    /// Slowest batch fdatasync, in microseconds.
    pub sync_us_max: u64,
}

struct Inner {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    submission_bytes_max: u64,
    queue_bytes_max: u64,
    /// The dedicated writer thread, when `open` started one.
    thread: Mutex<Option<glommio::ExecutorJoinHandle<()>>>,
}

/// Handle to one WAL. `Clone + Send + Sync`; all clones feed the same writer task.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

const _: () = {
    fn handle_is_shareable<T: Clone + Send + Sync + 'static>() {}
    let _ = handle_is_shareable::<Wal>;
};

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `dir` on the real disk, with the writer on a dedicated
    /// executor thread pinned per `cfg.writer_cpu`.
    pub fn open(dir: &Path, cfg: WalConfig) -> Result<(Wal, Recovered), WalError> {
        Wal::open_with_disk(GlommioDisk, dir, cfg)
    }

    /// [`Wal::open`] on any disk (tests pass a `SimDisk`).
    pub fn open_with_disk<D: Disk + Send>(
        disk: D,
        dir: &Path,
        cfg: WalConfig,
    ) -> Result<(Wal, Recovered), WalError> {
        let placement = match cfg.writer_cpu {
            Some(cpu) => glommio::Placement::Fixed(cpu),
            None => glommio::Placement::Unbound,
        };
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        let builder = glommio::LocalExecutorBuilder::new(placement)
            .name("wal-writer")
            .io_memory(cfg.writer_io_memory_bytes);
        let thread = builder
            .spawn(move || async move {
                match Wal::recover(disk, &dir, cfg).await {
                    Ok((wal, recovered, writer)) => {
                        let _ = opened_tx.send(Ok((wal, recovered)));
                        writer.run().await;
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| WalError::Io(e.into()))?;
        match opened_rx.recv() {
            Ok(Ok((wal, recovered))) => {
                *wal.inner.thread.lock() = Some(thread);
                Ok((wal, recovered))
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(WalError::Closed)
            }
        }
    }

    /// Recovers the WAL in `dir` on the current glommio executor and returns the writer without
    /// starting it: the caller spawns `writer.run()` where its placement policy says, e.g.
    /// `glommio::spawn_local(writer.run()).detach()`.
    pub async fn recover<D: Disk>(
        disk: D,
        dir: &Path,
        cfg: WalConfig,
    ) -> Result<(Wal, Recovered, WalWriter<D>), WalError> {
        // glommio resolves a relative path against no directory at all (EBADF), so every path
        // the writer touches is made absolute here, once, against the current directory.
        let dir = &std::path::absolute(dir)?;
        let (tx, rx) = mpsc::unbounded();
        let shared = Arc::new(Shared::default());
        let submission_bytes_max = cfg.submission_bytes_max();
        let queue_bytes_max = cfg.queue_bytes_max;
        let (writer, recovered) = WalWriter::recover(disk, dir, cfg, rx, shared.clone()).await?;
        let inner = Inner {
            tx,
            shared,
            submission_bytes_max,
            queue_bytes_max,
            thread: Mutex::new(None),
        };
        Ok((
            Wal {
                inner: Arc::new(inner),
            },
            recovered,
            writer,
        ))
    }

    /// Submits `records`; the future resolves once they are durable (or failed).
    ///
    /// The records are queued when `append` is called, not when the future is first polled, so
    /// the log order is the order of `append` calls. Either all records of one call are written,
    /// in one batch, or none are.
    pub fn append(
        &self,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<(), WalError>> + Send + 'static {
        let (done_tx, done_rx) = oneshot::channel();
        let queued = if records.is_empty() {
            Err(None)
        } else {
            self.enqueue(records, done_tx).map_err(Some)
        };
        async move {
            match queued {
                Ok(()) => done_rx.await.unwrap_or(Err(WalError::Closed)),
                Err(None) => Ok(()),
                Err(Some(e)) => Err(e),
            }
        }
    }

    fn enqueue(
        &self,
        records: Vec<Record>,
        done: oneshot::Sender<Result<(), WalError>>,
    ) -> Result<(), WalError> {
        let bytes: u64 = records.iter().map(|r| r.frame_bytes() as u64).sum();
        let inner = &self.inner;
        if bytes > inner.submission_bytes_max {
            return Err(WalError::TooLarge {
                bytes,
                limit_bytes: inner.submission_bytes_max,
            });
        }
        let queued_bytes = inner
            .shared
            .queued_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if queued_bytes > 0 && queued_bytes + bytes > inner.queue_bytes_max {
            inner
                .shared
                .queued_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            return Err(WalError::Overloaded {
                queued_bytes,
                limit_bytes: inner.queue_bytes_max,
            });
        }
        inner
            .tx
            .unbounded_send(Command::Append {
                records,
                bytes,
                done,
            })
            .map_err(|_| {
                inner
                    .shared
                    .queued_bytes
                    .fetch_sub(bytes, Ordering::Relaxed);
                WalError::Closed
            })
    }

    /// Deletes the oldest segments whose entries are all at or below `index` (never the newest
    /// segment); resolves to the number deleted. `index` must be covered by a snapshot marker
    /// already written. Ordered with appends like any submission.
    pub fn release_to(
        &self,
        index: u64,
    ) -> impl Future<Output = Result<usize, WalError>> + Send + 'static {
        let (done_tx, done_rx) = oneshot::channel();
        let sent = self.inner.tx.unbounded_send(Command::Release {
            index,
            done: done_tx,
        });
        async move {
            sent.map_err(|_| WalError::Closed)?;
            done_rx.await.unwrap_or(Err(WalError::Closed))
        }
    }

    /// Writes everything submitted before this call, then stops the writer task. Later
    /// submissions through any clone fail with `Closed`.
    pub async fn shutdown(&self) -> Result<(), WalError> {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .inner
            .tx
            .unbounded_send(Command::Shutdown { done: done_tx })
            .is_ok()
        {
            // An error means the writer is already gone, which is what was asked for.
            let _ = done_rx.await;
        }
        Ok(())
    }

    /// [`Wal::shutdown`], then joins the dedicated writer thread if `open` started one. Blocks:
    /// do not call it on the writer's own executor (use `shutdown().await` there).
    pub fn close(self) -> Result<(), WalError> {
        futures::executor::block_on(self.shutdown())?;
        if let Some(thread) = self.inner.thread.lock().take() {
            thread.join().map_err(|e| WalError::Io(e.into()))?;
        }
        Ok(())
    }

    pub fn stats(&self) -> WalStats {
        self.inner.shared.stats()
    }
}
