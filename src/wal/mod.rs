//! Write-ahead log: raft's durable record stream as block-aligned, checksummed batches in
//! preallocated segment files, written by one task with group commit. This doc is the format spec.
//!
//! The WAL knows nothing of raft. It stores four record kinds (entries, hard state, snapshot
//! markers, metadata; see [`Record`] for the index rules applied on append and replay) and gives
//! them back, rewrites applied, when it is opened.
//!
//! # Use
//!
//! - [`Wal::open`] recovers the log and starts the writer on a dedicated executor thread
//!   (`WalConfig::writer_cpu` pins it); [`Wal::recover`] recovers on the caller's glommio
//!   executor and hands back the [`WalWriter`] for the caller to spawn where its placement
//!   policy says.
//! - [`Wal::append`] may be called from any thread; its future resolves once the records are
//!   durable. [`Wal::release_to`] drops segments a snapshot covers. [`Wal::close`] /
//!   [`Wal::shutdown`] stop the writer after everything submitted before them.
//! - The disk is behind [`disk::Disk`]: [`disk::GlommioDisk`] in production, [`sim::SimDisk`]
//!   (loses and tears unsynced writes at a crash) in tests.
//!
//! # Files
//!
//! The log lives in one directory (`<data-dir>/member/wal/`; the API takes the directory). It is
//! a sequence of segment files named
//!
//! ```text
//! <seq:016x>-<first_index:016x>.wal      e.g. 0000000000000003-00000000000004d2.wal
//! ```
//!
//! `seq` numbers segments 0, 1, 2, ... without gaps (a gap is corruption). `first_index` is the
//! index the segment's first entry was expected to have when the segment was cut (newest entry + 1),
//! as in etcd; it is informational, the records are authoritative. A sorted listing is log order.
//! `<seq:016x>.tmp` is a segment being prepared; open deletes any it finds.
//!
//! Every segment is preallocated to `WalConfig::segment_bytes` (64 MiB default) with `fallocate`
//! and then filled with zeros that are written and fdatasynced before the file is used (the spare
//! is prepared this way in the background). Writes inside a segment therefore neither grow the
//! file nor land in unwritten extents: a batch's fdatasync flushes data only, with no extent
//! conversion or size change for the filesystem journal to commit (fallocate alone leaves the
//! extents unwritten, and on ext4 every batch then paid a journal commit). A segment never written
//! past its header reads as zeros. The price is writing each segment twice (zeros, then batches),
//! once per `segment_bytes` of log, off the commit path except for the first segment of a new log.
//!
//! # Segment layout
//!
//! All integers little endian. `BLOCK` = [`format::BLOCK_BYTES`] = 4096.
//!
//! ```text
//! block 0: segment header (64 bytes used, rest zero)
//!  0       8       12      16              24              32              40              48      60  64
//!  +-------+-------+-------+---------------+---------------+---------------+---------------+-------+---+
//!  | magic |version| block |      seq      |  first_index  |first_batch_seq| segment_bytes | zero  |crc|
//!  |RINGKVWL  u32=1| u32   |      u64      |      u64      |      u64      |      u64      |       |u32|
//!  +-------+-------+-------+---------------+---------------+---------------+---------------+-------+---+
//!  crc = CRC32C(bytes 0..60)
//!
//! block 1..: batches, back to back, each starting on a block boundary, then zeros to the end.
//! ```
//!
//! A **batch** is what one write and one fdatasync put on disk:
//!
//! ```text
//!  batch header (32 bytes)                                            frames            padding
//!  0      4        8            16        20        24      28  32
//!  +------+--------+------------+---------+---------+-------+---+-------------------+---------+
//!  |"RKWB"| count  | batch_seq  | payload | reserved|reserv.|crc| frame frame ...   | zeros   |
//!  | u32  | u32    | u64        | u32     | u32 = 0 |u32 = 0|u32| (payload bytes)   | to BLOCK|
//!  +------+--------+------------+---------+---------+-------+---+-------------------+---------+
//!  crc = CRC32C(bytes 0..28); count = frames in the payload; batch_seq runs 0, 1, 2, ... across
//!  all segments (a segment header says where its first batch continues the count).
//! ```
//!
//! A **record frame** (8-byte aligned within the payload):
//!
//! ```text
//!  0         4      5        8       12        16
//!  +---------+------+--------+-------+---------+------------------------+--------------+
//!  | len u32 | kind | zero x3| crc   | reserved| body (len bytes)       | zeros to 8 B |
//!  +---------+------+--------+-------+---------+------------------------+--------------+
//!  crc = CRC32C(bytes 0..8 ++ body). kind: 1 entry, 2 hard state, 3 snapshot, 4 metadata
//!  (0 is never valid, so zeros never parse as a record). Bodies, u64 each:
//!    entry:      index, term, data (len - 16 bytes)
//!    hard state: term, vote, commit
//!    snapshot:   index, term
//!    metadata:   member_id, cluster_id
//! ```
//!
//! The first batch of every segment starts with the metadata, hard state and snapshot marker in
//! force when it was written, so a segment never depends on the ones before it for that state:
//! `release_to` may delete them.
//!
//! # Alignment and torn writes
//!
//! Files are opened with O_DIRECT (glommio `DmaFile`, io_uring). Every batch is padded with zeros
//! to a whole number of blocks and starts on a fresh block, so **a write never touches a block
//! that holds acknowledged data**: a write torn by power loss can damage only the batch being
//! written, which was not acknowledged. The price is padding, at most one block per batch; group
//! commit keeps batches large under load, and an idle log writes one block per commit, as any
//! O_DIRECT log must. (Rewriting a partly filled tail block instead would put acknowledged records
//! in the blast radius of every later torn write.)
//!
//! # Commit protocol
//!
//! One writer task owns the files. Submitters on any thread put records on a channel at the
//! moment they call [`Wal::append`] (so log order is call order) and wait on a oneshot.
//!
//! 1. The writer takes every queued submission up to `batch_bytes_max` / `batch_records_max`
//!    (optionally waiting `batch_delay_us` for more). Whatever arrives while a batch is being
//!    written and synced waits in the channel and forms the next batch: that is group commit.
//! 2. If the batch does not fit in the rest of the segment, the segment is cut: the spare file,
//!    preallocated and zero-filled in the background, gets its header, is fdatasynced, renamed to its segment
//!    name, and the directory is fsynced; a new spare is started.
//! 3. The batch is encoded into one aligned buffer, written with one write at the segment's
//!    write offset, then fdatasynced.
//! 4. Only then are the batch's submitters told it is durable.
//!
//! A failed write or fdatasync poisons the WAL: every later submission fails until it is
//! reopened, because the state of the file after a failed fsync cannot be known.
//!
//! ## Crash cases
//!
//! 1. Crash before a batch's write reaches the disk: the batch is not there; the tail reads as
//!    zeros. Nothing acknowledged is lost.
//! 2. Crash during the write or before its fdatasync returns: any subset of the batch's sectors
//!    may be on disk. Open finds a bad batch header or frame with only that batch's remains
//!    after it, zeroes them ("torn tail", reported in [`Recovered::repaired_tail`]) and appends
//!    from there. Not acknowledged, so nothing acknowledged is lost.
//! 3. Crash after the fdatasync, before the submitters hear of it: the records are durable and
//!    come back on open. The caller must treat an unanswered append as "maybe written".
//! 4. Crash while cutting a segment (or while the spare is being zero-filled): either a `.tmp`
//!    file (deleted at open) or a renamed segment whose header and zero fill were synced before
//!    the rename, holding no batches yet; writing continues in it (its first batch then restates
//!    the state).
//! 5. Crash during `release_to`: segments are removed oldest first with a directory fsync after
//!    each, so only a prefix of the log can be gone.
//! 6. Crash while zeroing a torn tail at open: the next open finds a torn tail again.
//!
//! ## Reading back: torn tail versus corruption
//!
//! Open reads every segment and checks every CRC. Batches parse while the header is valid, its
//! `batch_seq` is the next one, and every frame has a good CRC. At the first failure:
//!
//! - only zeros follow: the end of the log;
//! - a block further on starts with a valid batch header of a later `batch_seq`, or the
//!   segment is not the newest: a later batch was written after the failed one was synced, so
//!   the failed one was acknowledged: [`WalError::Corruption`] naming the file and the offset of
//!   the bad batch header or frame, and the WAL refuses to open;
//! - otherwise (newest segment, only remains of one batch follow): a torn tail, case 2.
//!
//! Consecutive segments must continue the `batch_seq` count exactly, or the earlier one lost
//! batches at its end: corruption too.
//!
//! # What is assumed of the disk
//!
//! - fdatasync returning means the written data (and the file size and extent state it needs)
//!   survives power loss; a directory fsync does the same for creations, renames and removals.
//! - A write may tear at any sector boundary, in any order, but does not change sectors outside
//!   the range it was asked to write.
//! - Synced data does not rot silently. A bit flip in the last acknowledged batch cannot be told
//!   apart from a torn write and is truncated like one (etcd has the same limit); anywhere else it
//!   is reported as corruption.
//! - Opaque entry data is not crafted to contain a valid batch header of a later `batch_seq` at
//!   a block boundary (that could only turn a torn tail into a refused open, never lose data).

mod config;
pub mod disk;
mod error;
pub mod format;
mod handle;
pub mod scan;
pub mod sim;
mod writer;

pub use config::WalConfig;
pub use error::WalError;
pub use format::Record;
pub use handle::{Recovered, Wal, WalStats};
pub use scan::{Entry, HardState, Metadata, SnapshotMarker};
pub use writer::WalWriter;
