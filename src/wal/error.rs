//! `WalError`: every way a WAL operation can fail, expected outcomes apart from corruption.

use std::path::PathBuf;

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The disk returned an error. After a failed write or fdatasync the WAL is poisoned.
    #[error("wal: i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// A checksum, magic, version or sequence check failed before the tail of the log: the log
    /// holds acknowledged records that can no longer be read, so it refuses to open.
    #[error("wal: corruption in {} at offset {offset}: {reason}", file.display())]
    Corruption {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// An earlier write or fdatasync failed. The page cache state after a failed fsync is
    /// unknowable, so the WAL accepts nothing more until it is reopened (and recovered).
    #[error("wal: poisoned by an earlier i/o error; reopen to recover")]
    Poisoned,

    /// The writer has stopped (closed, or its executor is gone).
    #[error("wal: closed")]
    Closed,

    /// More than `WalConfig::queue_bytes_max` bytes are waiting to be written.
    #[error("wal: overloaded: {queued_bytes} bytes queued, limit {limit_bytes}")]
    Overloaded { queued_bytes: u64, limit_bytes: u64 },

    /// One submission is larger than what fits in an empty segment.
    #[error("wal: submission of {bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge { bytes: u64, limit_bytes: u64 },

    /// The submitted records break the log's index rules (see `Record`). Nothing of the
    /// submission was written.
    #[error("wal: invalid record: {0}")]
    InvalidRecord(String),

    /// `release_to` asked to drop entries no snapshot marker covers.
    #[error(
        "wal: cannot release up to index {index}: newest snapshot marker is at {snapshot_index:?}"
    )]
    ReleaseBeyondSnapshot {
        index: u64,
        snapshot_index: Option<u64>,
    },

    /// The configuration breaks one of `WalConfig`'s documented limits.
    #[error("wal: invalid config: {0}")]
    InvalidConfig(String),
}
