//! `WalConfig`: every limit and knob of the WAL in one place, with a production and a test profile.

use super::format::{BATCH_HEADER_BYTES, BLOCK_BYTES, STATE_RECORDS_BYTES_MAX};
use super::WalError;

/// Limits and knobs of the WAL. `Default` is the production profile; [`WalConfig::small`] is the
/// test profile (tiny segments, so rollover happens after a few batches).
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Size every segment file is preallocated to. Default 64 MiB (etcd's `SegmentSizeBytes`).
    /// A multiple of `BLOCK_BYTES`, at least 16 blocks.
    pub segment_bytes: u64,
    /// A batch stops taking submissions once its encoded records reach this many bytes. Default
    /// 1 MiB. One submission larger than this still forms a batch of its own, as long as it fits in
    /// an empty segment.
    pub batch_bytes_max: usize,
    /// A batch stops taking submissions once it holds this many records. Default 4096.
    pub batch_records_max: usize,
    /// How long the writer waits for more submissions after the first one of a batch before
    /// writing it, in microseconds. Default 0: group commit comes from the fdatasync in flight
    /// (everything that arrives meanwhile forms the next batch), not from waiting.
    pub batch_delay_us: u64,
    /// Submissions are refused with `WalError::Overloaded` while this many encoded bytes wait for
    /// the writer. Default 256 MiB. Raft bounds its own in-flight proposals; this is the backstop.
    pub queue_bytes_max: u64,
    /// CPU the dedicated writer executor of `Wal::open` is pinned to (`Placement::Fixed`).
    /// Default `None`: `Placement::Unbound`, which tests use on shared machines.
    pub writer_cpu: Option<usize>,
    /// I/O memory glommio registers for the dedicated writer executor. Default 2 MiB (the host's
    /// RLIMIT_MEMLOCK is small and several executors may share it).
    pub writer_io_memory_bytes: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 << 20,
            batch_bytes_max: 1 << 20,
            batch_records_max: 4096,
            batch_delay_us: 0,
            queue_bytes_max: 256 << 20,
            writer_cpu: None,
            writer_io_memory_bytes: 2 << 20,
        }
    }
}

const SEGMENT_BLOCKS_MIN: u64 = 16;
const _: () = assert!(
    SEGMENT_BLOCKS_MIN * BLOCK_BYTES as u64
        > (BATCH_HEADER_BYTES + STATE_RECORDS_BYTES_MAX + BLOCK_BYTES) as u64
);

impl WalConfig {
    /// Test profile: 64 KiB segments and 8 KiB batches, so tests roll segments quickly.
    pub fn small() -> Self {
        WalConfig {
            segment_bytes: 64 << 10,
            batch_bytes_max: 8 << 10,
            ..WalConfig::default()
        }
    }

    /// Largest encoded submission (and largest batch payload besides the state records that open
    /// a segment): what fits in an empty segment after its header block, the batch header and the
    /// state records.
    pub fn submission_bytes_max(&self) -> u64 {
        self.segment_bytes - (BLOCK_BYTES + BATCH_HEADER_BYTES + STATE_RECORDS_BYTES_MAX) as u64
    }

    pub fn validate(&self) -> Result<(), WalError> {
        let fail = |s: String| Err(WalError::InvalidConfig(s));
        if self.segment_bytes % BLOCK_BYTES as u64 != 0 {
            return fail(format!(
                "segment_bytes {} is not a multiple of {BLOCK_BYTES}",
                self.segment_bytes
            ));
        }
        if self.segment_bytes < SEGMENT_BLOCKS_MIN * BLOCK_BYTES as u64 {
            return fail(format!(
                "segment_bytes {} is below {SEGMENT_BLOCKS_MIN} blocks",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > u64::from(u32::MAX) + 1 {
            return fail(format!(
                "segment_bytes {} exceeds 4 GiB",
                self.segment_bytes
            ));
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max as u64 > self.submission_bytes_max() {
            return fail(format!(
                "batch_bytes_max {} must be in 1..={}",
                self.batch_bytes_max,
                self.submission_bytes_max()
            ));
        }
        if self.batch_records_max == 0 {
            return fail("batch_records_max must be positive".into());
        }
        Ok(())
    }
}
