//! Page store: an ordered, durable byte-key → byte-value store with pinned snapshots, built as a
//! log-structured, copy-on-write B+tree.
//!
//! This doc is the on-disk format and the commit protocol. Integers are little-endian.
//!
//! # Files
//!
//! One directory (a [`Disk`]) holds:
//! - `superblock`: two 4 KiB slots at offsets 0 and 4096, written alternately. Created at its
//!   full 8 KiB (slot 1 as zeros, which fail its checksum), so its size never changes again.
//! - `seg-<id as 16 lower-case hex digits>` (e.g. `seg-000000000000002a`): segments, append-only
//!   sequences of 4 KiB pages. Segment ids start at 1, increase, and are never reused (the
//!   superblock records the next id; a crash can at most leave an unused one behind). Every
//!   segment is created full size and zero-filled (see Preallocation).
//!
//! Any other file is ignored.
//!
//! # Pages and page ids
//!
//! The unit of allocation, I/O and checksumming is a 4096-byte page (`PAGE_BYTES`), at offset
//! `index * 4096` of its segment. A page id is its location, `segment << 32 | index`; id 0
//! means "no page". A page is written once and never overwritten: a change writes a new page at
//! the tail of the log (copy-on-write), and space comes back only by deleting whole segments.
//!
//! Every page starts with a 32-byte header:
//!
//! ```text
//!  0       4      5       6         8                16                24             28        32
//!  +-------+------+-------+---------+-----------------+-----------------+--------------+---------+
//!  | crc32c| kind | level | count   | page id         | generation      | payload bytes| extent  |
//!  | u32   | u8   | u8    | u16     | u64             | u64             | u32          | u32     |
//!  +-------+------+-------+---------+-----------------+-----------------+--------------+---------+
//! ```
//! - `crc32c`: CRC32C (Castagnoli) of bytes 4..4096 of the page, unused tail (zeros) included.
//! - `kind`: 1 leaf, 2 branch, 3 overflow head, 4 overflow tail, 5 segment header. 0 never
//!   occurs, so a never-written (zero) page fails both the checksum and the kind check.
//! - `level`: 0 for leaves, parent level = child level + 1.
//! - `count`: entries in a leaf, children in a branch.
//! - `page id`: where the page was written; a read checks it, catching misdirected I/O.
//! - `generation`: the commit that wrote the page (never above the superblock's).
//! - `payload bytes`: bytes used after the header (at most 4064).
//! - `extent`: overflow head: pages in its extent; overflow tail: its index in the extent;
//!   otherwise 1.
//!
//! Every read of a page verifies checksum, kind and id before anything else looks at it; a
//! failure is [`PageStoreError::Corruption`] naming the segment file and byte offset.
//!
//! ## Segment header (page 0 of every segment)
//!
//! ```text
//!  0        32            36        40            44
//!  | header | magic "RKSG" | version | segment id |  zeros to 4096
//!  | kind 5 | u32          | u32 (1) | u32        |
//! ```
//!
//! ## Leaf (kind 1)
//!
//! `count` entries in ascending key order, packed after the header:
//!
//! ```text
//!  | klen u16 | vkind u8 | vlen u32 | key (klen) | value (vlen) if vkind 0  |
//!  |          |          |          |            | first page id u64 if 1   |
//! ```
//! A value stays inline when `7 + klen + vlen <= 2032` (`INLINE_ENTRY_MAX_BYTES`, half a page's
//! payload; stores written with the earlier limit of 1024 read the same, since a reader follows
//! `vkind`, not the limit); otherwise
//! (vkind 1) it lives in an overflow extent and the leaf keeps the extent's first page id and
//! the value length.
//!
//! ## Branch (kind 2)
//!
//! `count` children and `count - 1` separators:
//!
//! ```text
//!  | child 0 u64 | slen u16 | separator 1 | child 1 u64 | ... | slen u16 | sep n-1 | child n-1 |
//! ```
//! Separator `i` lies between children `i - 1` and `i`: keys in child `i` are `>= sep i` and
//! `< sep i+1`. A key goes to the child numbered by how many separators are `<= key`.
//! Separators are the shortest prefix of the right sibling's first key that is greater than
//! the left sibling's last key (suffix truncation).
//!
//! ## Overflow extent (kinds 3 and 4)
//!
//! `n` contiguous pages of one segment, each with its own header and checksum: a head page
//! (`extent = n`) then `n - 1` tail pages (`extent = 1..n`). The payloads concatenated read
//! `klen u16 | key | value`: the key names the owner, so the cleaner can find the leaf that
//! points at an extent it meets in a victim segment.
//!
//! ## Superblock slot (4096 bytes; bytes 96.. are zero)
//!
//! ```text
//!  0      4        8         12         16          24        32       36            40
//!  | crc  | "RKSB" | version | page size| generation| root id | height | next segment |
//!  40                 48              52                56        64..96
//!  | consistent index | active segment| active end page | entries | zero |
//! ```
//! - `crc`: CRC32C of bytes 4..96. Checkpoints alternate slots: each writes the slot not
//!   holding the newest durable superblock; recovery takes the valid slot with the higher
//!   generation. Generations are those of published roots, so durable ones may skip values.
//! - `root id` 0 with `height` 0 is the empty tree; `height` 1 is a lone leaf.
//! - `active segment`/`active end page`: where the log tail was (diagnostics: recovery starts a
//!   new segment instead of trusting anything past the durable root).
//! - The 96 used bytes lie in the slot's first 512-byte sector, so a torn slot write leaves
//!   them wholly old or wholly new under the sector model; the checksum catches anything less
//!   atomic.
//!
//! ## Preallocation
//!
//! A new segment is written whole before anything is committed into it: its header page, then
//! zeros up to `segment_bytes`, then fdatasync and a directory sync. A commit therefore only
//! overwrites blocks that are already allocated and written, and its fdatasync flushes data
//! alone: no file-size change or block allocation for the filesystem journal to commit (on
//! ext4 that journal commit, once for the segment and once for a growing superblock, was most of
//! a small commit's latency). The superblock file is fixed-size for the same reason.
//!
//! - A never-written page of a segment reads as zeros and fails the checksum and kind checks,
//!   exactly like a page past the end of a file did before; a pointer into it is corruption.
//! - Recovery never appends to an existing segment (it starts a new one), so it does not need
//!   to find where the pages of the old active segment end: its zero tail is dead space, like
//!   the unused tail of a segment sealed early, and the cleaner skips zero pages.
//! - An overflow extent longer than `segment_bytes` gets a segment of its own that grows past
//!   its preallocated size; that commit's fdatasync also commits the new file size.
//! - `SpaceStats::file_bytes` is the real disk usage: it counts every preallocated byte,
//!   including the unused tail of the active segment (at most `segment_bytes`). A segment's
//!   `file_bytes` is its full size from creation, so an abandoned, mostly-zero segment has a
//!   low live share and the cleaner picks it early.
//! - The cost: a segment's bytes are written twice (zeros, then pages), in one large
//!   sequential write at segment creation: on the checkpoint thread ahead of need (the spare
//!   segment), or inside the publish that fills the previous segment when no spare is ready.
//!
//! ## Limits and alignment
//! - Keys up to 3072 bytes (`MAX_KEY_BYTES`, else `KeyTooLarge`), always inline in leaves, so
//!   any entry and any branch item fits a page with room for a second one (checked by
//!   `const` asserts in `format.rs`). Values up to 16 MiB (`MAX_VALUE_BYTES`, else
//!   `ValueTooLarge`). A value extent always sits in one segment: an extent longer than
//!   `segment_bytes` gets a segment of its own.
//! - All I/O is whole pages at page-aligned offsets, so a torn write (the disk writes whole
//!   512-byte sectors) is always inside the checksum of the page it tears.
//!
//! # The tree
//!
//! A B+tree whose nodes are single pages; all leaves at level 0. A write transaction copies
//! the nodes it changes out of their pages (the leaf-to-root path), splits over-full ones and
//! merges small ones (under a quarter page) with a sibling in memory, and at commit writes each
//! dirty node once, children before parents (overflow extents before their leaves), then the
//! root. A page reachable from the durable root has exactly one parent.
//!
//! # Commit protocol
//!
//! A commit is two halves: a *publish* makes a new root visible at once, without waiting for
//! the disk; a *checkpoint* later makes the latest published root durable. The caller that
//! publishes must be able to redo, after a crash, everything above the durable consistent index
//! (ringkv replays its WAL, which made every entry durable before it was applied): this is
//! etcd's backend, which commits bbolt every 100 ms and relies on the WAL for the rest.
//! `WriteTxn::commit` is a publish followed by a checkpoint (durable on return);
//! `WriteTxn::publish` is the publish alone.
//!
//! Publish (under the writer lock; generation `g` = previous published + 1):
//! - P1. Give every dirty node a page id at the log tail (branches at the branch tail, see Hot
//!   and cold pages; rolling to new segments as they fill;
//!   a new segment's header and zero fill are written and fdatasync'd, and the directory
//!   synced, before anything can point into it) and encode it. Overflow extents are written to
//!   their segment now, unsynced. Tree pages are not written: they join the *unwritten pages*
//!   (`Pending`), held in memory; except that once one publish holds half of `dirty_bytes_max`
//!   of them, its further leaves are written now, unsynced, like the extents (a publish that
//!   rewrites much of the tree would otherwise hold all of it in memory).
//! - P2. Pages the new root no longer reaches leave the live-byte counts; an unwritten one
//!   moves to the superseded-unwritten set, kept while a snapshot pinned below `g` may read
//!   it, and never written (its slot in the segment stays zeros: dead space, like a torn page).
//! - P3. Publish root `g` with its consistent index: new snapshots and write transactions start
//!   from it. A reader reads a page from the cache, else the unwritten pages, else the disk.
//!
//! Checkpoint (`checkpoint.rs`; serialised; the writer lock is held only to take the plan and
//! to record the result, so publishes go on while it writes):
//! - C1. Take the latest published root `g` and the unwritten pages it reaches; write them at
//!   their ids (one write per run of consecutive ids).
//! - C2. fdatasync every segment written since the previous checkpoint (C1's and the extents
//!   of P1): every page root `g` reaches is now durable.
//! - C3. Write the superblock of `g` (root, height, consistent index, next segment id, entry
//!   count) to the slot that does NOT hold the newest durable superblock.
//! - C4. fdatasync the superblock file. Root `g` is durable.
//! - C5. Record `g` as the durable generation; forget the pages written in C1 (later reads find
//!   them on disk: they leave memory only after their write completed).
//! - C6. Delete segments no durable root and no pinned snapshot can reach any more (see
//!   Reclamation), then sync the directory.
//!
//! The background checkpointer (`spawn_checkpointer`, a thread pinned per
//! `PageStoreConfig::checkpoint_cpu`) runs every `checkpoint_interval`, or
//! sooner once the unwritten pages reach half of `dirty_bytes_max`, and after each checkpoint
//! creates a spare segment (written, synced, named in the synced directory, but in no root and
//! not yet in the segment table) that P1 takes instead of creating one; a publish that finds them
//! at `dirty_bytes_max` runs a checkpoint itself before returning (the memory bound). A page
//! rewritten by many publishes between two checkpoints is written once.
//!
//! Any I/O error in P1 or C1-C4 poisons the store ([`PageStoreError::Poisoned`] from then on,
//! for publishes and checkpoints): whether the root is durable is unknown until a reopen
//! recovers.
//!
//! Crash cases (what recovery finds and does):
//! 1. Crash after a publish, before the checkpoint that covers it (or during its C1-C2): some
//!    pages of published roots may be on disk, torn or whole, but no durable superblock points
//!    at them. Recovery takes the previous durable root; the stray pages are dead bytes in their
//!    segment (counted in `file_bytes`, never in `live_bytes`). Everything published since is
//!    lost from the store and redone by the caller from the durable consistent index.
//! 2. Crash between C2 and C3 (pages durable, superblock not written): as 1.
//! 3. Crash during C3 (torn superblock write): the slot being written fails its checksum; the
//!    other slot holds the previous durable root, whose pages were never overwritten and whose
//!    segments are not deleted before a later root is durable (C6).
//! 4. Crash between C3 and C4: the new slot may or may not have landed; either it is whole
//!    (checksum holds → root `g`, whose pages C2 made durable) or it is not (→ the previous
//!    durable root). A checkpoint (or commit) that returned Ok has passed C4 and is never lost.
//! 5. Crash while creating a segment (header or zero fill part-written): a file not yet in the
//!    synced directory disappears; one that is present but unreferenced is deleted at open.
//! 6. Crash mid-cleaning: cleaning is a publish that rewrites live pages, then a checkpoint, so
//!    1-4 apply; the victim is deleted only after a durable root no longer reaches it. A crash
//!    after that root but before the deletion leaves an unreferenced segment, deleted at open;
//!    a removal that was not yet synced brings the file back, ditto.
//! 7. Torn/junk pages after the durable end of the old tail segment, the zero pages of its
//!    preallocated tail, and the zero slots of superseded-unwritten pages: never referenced;
//!    they fail their checksum (or are valid but unreachable) and the cleaner skips them.
//! 8. Crash during C6 (segment removal): the superblock is already durable; a removal whose
//!    directory sync did not happen brings the file back, and open deletes it as unreferenced.
//!
//! `tests/page_store_model.rs` crashes after every successive disk operation of a commit and of
//! a cleaner step (with several tear patterns each) and checks old-or-new after recovery, and
//! crashes after publishes that no checkpoint covered and checks that the last durable state
//! comes back.
//!
//! Recovery: read both superblock slots, take the valid one with the highest generation (if
//! neither is valid and no segment exists, the store is new; if segments exist it is
//! corruption). Walk the tree from its root, reading every leaf and branch page once (cost:
//! one 4 KiB read per tree page, about the data set's size when values are small; overflow
//! extents are counted from their leaf pointers without being read), to recompute each
//! segment's live bytes and check the headers of the segments it reaches. Delete every
//! segment it does not reach. Start a new active segment with a fresh id.
//!
//! Assumed of the disk: fdatasync makes prior writes to that file durable; creating and
//! removing files is durable after the directory is synced; a write that is interrupted lands
//! in whole sectors of at least 512 bytes (pages are 8 sectors, so a tear is caught by the
//! page checksum); reads return what was last durably written or a detectable tear.
//!
//! # Snapshots
//!
//! A [`Snapshot`] holds the root id and generation of the latest published commit and
//! registers a pin on that generation (a map generation → count, touched only on pin and
//! unpin). Pages reachable from it are immutable until it drops, because pages are never
//! overwritten, a segment is deleted only when no pinned generation can reach it, and an
//! unwritten page superseded at generation `g` stays in memory while a generation below `g` is
//! pinned. Readers take no lock that
//! the writer holds across work; they share the page cache (sharded, lock held per lookup).
//!
//! # Hot and cold pages
//!
//! The log has two tails: leaves and overflow extents go to the active segment, branch pages to
//! a second open segment of their own (`WriterState::branch_tail`, opened at the first branch a
//! publish writes, sealed when full, like the active one). Under random-key writes a branch is
//! rewritten by nearly every checkpoint (hundreds of leaves below it), a leaf only when a write
//! lands in it: mixed in one segment, the short-lived branches leave holes between long-lived
//! leaves that only the cleaner can recover, by copying the leaves. Apart, a branch segment dies
//! whole within a few checkpoints and is deleted without copying anything. Nothing else about
//! the protocol changes: both tails are segments created and synced before anything points into
//! them, a checkpoint fdatasyncs every segment its pages lie in, and recovery starts fresh tails.
//!
//! # Reclamation (the cleaner)
//!
//! Each segment has `live_bytes`: bytes of pages and extents the latest root reaches in it. A
//! commit adds its new pages and subtracts every page it copied out (a superseded node) and
//! every extent it replaced or deleted; so victims are chosen without scanning. A sealed
//! segment whose live bytes reach 0 at generation `g` is `dead since g`; it is deleted (file
//! removed, directory synced) once a checkpoint has made a root of generation `g` or later
//! durable and no snapshot pins a generation below `g`. No root from `g` on reaches it.
//!
//! [`PageStore::clean`] picks up to `max_segments` sealed segments with
//! `live_bytes / file_bytes` below `clean_live_percent_max`, least live first, reads each whole
//! (without the writer lock), and finds which of its pages are still live: a tree page is
//! located by a key in its range (a leaf's first key, a branch's first separator) and its
//! level, by searching from the current root; it is live if the search reaches exactly its id.
//! An overflow extent is live if its owner key's leaf points at it. Then, holding the writer
//! lock for one victim at a time, it copies that victim's live pages out (making their paths
//! dirty) and publishes: the pages move to the log tail, parents with them; a checkpoint ends
//! the step. Readers never wait for the cleaner.
//! [`PageStore::spawn_cleaner`] runs these steps on a background thread at an interval.
//! The background checkpointer (`spawn_checkpointer`) also runs one cleaner step after a
//! checkpoint whenever dead bytes exceed `clean_garbage_percent` of the live bytes and four
//! segments (`PageStore::clean_to_keep_up`), sized by how many segments the log gained since the
//! previous step, plus one, at most `background_clean_segments`: each checkpoint rewrites what it
//! changed, so a store that is only ever written must be cleaned as fast as it is written, not
//! only when MVCC compaction or `defrag` asks.
//!
//! # Memory
//!
//! The page cache holds verified tree pages up to `cache_bytes` (CLOCK eviction); overflow
//! extents are read from disk on each access and not cached. Besides the cache: the segment
//! table (about 80 bytes per segment), the pin map, a write transaction's dirty nodes (and its
//! values too long to inline, until commit), and during a cleaner step its victims' contents
//! (at most `max_segments` segments), and the unwritten pages of publishes since the last
//! checkpoint (at most about `dirty_bytes_max`: one publish adds at most half of it, plus its
//! branch pages).
//!
//! # I/O
//!
//! [`DirDisk`] reads, writes and fdatasyncs through io_uring: a ring per thread, one request
//! submitted and waited for at a time (the page store's callers are synchronous). Checkpoint
//! writes are runs of whole pages in ascending order, into preallocated, already written
//! blocks (see Preallocation), so a checkpoint's fdatasyncs flush data, not metadata; a
//! publish does no I/O unless it writes an overflow value or starts a segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::MutexGuard;

mod cache;
mod checkpoint;
mod clean;
pub mod disk;
mod format;
mod integrity;
mod node;
mod replace;
mod store;
mod tree;

pub use checkpoint::BackgroundCheckpointer;
pub use clean::BackgroundCleaner;
pub use disk::{DirDisk, Disk, DiskFile, SimDisk};
pub use format::{MAX_KEY_BYTES, MAX_VALUE_BYTES, PAGE_BYTES};
pub use replace::ReplaceStats;

use node::{Page, Val};
use store::{Inner, WriterState};
use tree::Tree;

/// Errors of the page store. `Corruption` names the file and byte offset that failed a check.
#[derive(Debug, thiserror::Error)]
pub enum PageStoreError {
    #[error("page store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("page store corruption in {file} at offset {offset}: {detail}")]
    Corruption {
        file: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("value of {len} bytes exceeds the page store limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("key of {len} bytes exceeds the page store limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    /// A commit failed part-way; nothing more is written until the store is reopened.
    #[error("page store stopped after a failed commit; reopen it to recover")]
    Poisoned,
}

pub type Result<T> = std::result::Result<T, PageStoreError>;

/// Tunables; see `tuning/` for the profiles that set them. Build with
/// `PageStoreConfig { cache_bytes, ..Default::default() }` so that new knobs keep defaults.
#[derive(Debug, Clone)]
pub struct PageStoreConfig {
    /// Upper bound on memory held by cached pages.
    pub cache_bytes: usize,
    /// A segment is sealed once it reaches this size (a bigger value extent gets a segment of
    /// its own). Smaller segments reclaim space in finer steps; bigger ones mean fewer files.
    pub segment_bytes: usize,
    /// `clean` picks segments whose live bytes are below this percentage of their size.
    pub clean_live_percent_max: u32,
    /// The background checkpointer (`spawn_checkpointer`) makes the latest published root
    /// durable this often. A longer interval writes a hot page fewer times; the WAL replays
    /// more after a crash.
    pub checkpoint_interval: Duration,
    /// Bound on the memory of published pages not yet written: at half of it the background
    /// checkpointer is woken, at all of it a publish checkpoints before it returns.
    pub dirty_bytes_max: usize,
    /// Most segments one background cleaner step moves (the checkpointer runs one step after
    /// a checkpoint while the store is over `clean_garbage_percent`; the step is the log's
    /// growth since the previous step plus one, up to this). Every checkpoint rewrites the
    /// pages it changed, so without this a write-heavy store grows until compaction or
    /// `defrag` runs the cleaner. Bigger steps keep up with faster writers; each holds the
    /// writer lock longer while it relocates. 0 leaves cleaning to them.
    pub background_clean_segments: usize,
    /// The background cleaner works while dead bytes exceed this percentage of the live bytes
    /// (and four segments): the files settle near `(1 + this / 100) x live`. Lower keeps the
    /// files (and the quota's `dbSize`) smaller and moves more live pages per byte freed.
    pub clean_garbage_percent: u32,
    /// Core the background checkpointer thread (which also runs the background cleaner's
    /// steps) is pinned to; `None` leaves it to the scheduler. Writes made by a publish happen
    /// on the publishing thread and are not placed by this.
    pub checkpoint_cpu: Option<usize>,
}

impl Default for PageStoreConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            clean_live_percent_max: 50,
            checkpoint_interval: Duration::from_millis(100),
            dirty_bytes_max: 64 << 20,
            background_clean_segments: 8,
            clean_garbage_percent: 25,
            checkpoint_cpu: None,
        }
    }
}

impl PageStoreConfig {
    /// The smallest cache accepted: about 15 pages, a few root-to-leaf paths.
    pub const CACHE_BYTES_MIN: usize = 64 << 10;

    fn validate(&self) {
        assert!(
            self.cache_bytes >= Self::CACHE_BYTES_MIN,
            "cache_bytes below {}",
            Self::CACHE_BYTES_MIN
        );
        assert!(
            self.segment_bytes >= 4 * PAGE_BYTES && self.segment_bytes % PAGE_BYTES == 0,
            "segment_bytes must be a multiple of the page size, at least 4 pages"
        );
        assert!(self.clean_live_percent_max <= 100);
        assert!(
            self.dirty_bytes_max >= 2 * PAGE_BYTES,
            "dirty_bytes_max below two pages"
        );
        assert!(
            !self.checkpoint_interval.is_zero(),
            "checkpoint_interval must be positive"
        );
    }

    fn segment_pages(&self) -> u32 {
        (self.segment_bytes / PAGE_BYTES) as u32
    }
}

/// Disk usage figures, for quota, `Status.dbSize`/`dbSizeInUse`, and the cleaner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Bytes of all files the store holds on disk: the superblock, every segment at its full
    /// preallocated size, and the spare segment. This is what `dbSize` and the quota report,
    /// as etcd reports the size of its bbolt file.
    pub file_bytes: u64,
    /// Bytes of pages reachable from the latest root. Pages only pinned snapshots reach are
    /// not counted here (they are in `file_bytes` until the pin drops and the cleaner runs).
    pub live_bytes: u64,
}

/// What one bounded cleaner step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_cleaned: u64,
    pub pages_moved: u64,
    pub bytes_freed: u64,
}

/// Handle to an open store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct PageStore {
    inner: Arc<Inner>,
}

impl PageStore {
    /// Opens (creating if absent) the store in `dir`, recovering the latest durable root.
    pub fn open(dir: impl AsRef<Path>, config: PageStoreConfig) -> Result<PageStore> {
        let disk = DirDisk::new(dir.as_ref())?;
        PageStore::open_on(Arc::new(disk), config)
    }

    /// Opens the store on any `Disk`; crash tests pass a `SimDisk` or its `crash_image`.
    pub fn open_on(disk: Arc<dyn Disk>, config: PageStoreConfig) -> Result<PageStore> {
        Ok(PageStore {
            inner: Inner::open(disk, config)?,
        })
    }

    /// Starts the single write transaction; a second caller blocks until the first ends.
    /// Readers (snapshots) never block on it.
    pub fn begin_write(&self) -> WriteTxn<'_> {
        let guard = self.inner.writer.lock();
        let c = self.inner.committed.lock();
        let tree = Tree::new(c.root, c.height, c.entries);
        drop(c);
        WriteTxn {
            store: self,
            guard,
            tree,
        }
    }

    /// Pins the latest committed root: a consistent point-in-time view that later commits and
    /// the cleaner never change. Unpinned on drop.
    pub fn snapshot(&self) -> Snapshot {
        let (c, generation) = self.inner.pin();
        Snapshot {
            pin: Arc::new(Pin {
                inner: self.inner.clone(),
                root: c.root,
                generation,
                consistent_index: c.consistent_index,
                entries: c.entries,
            }),
        }
    }

    /// The consistent index of the latest published commit (what readers see).
    pub fn consistent_index(&self) -> u64 {
        self.inner.committed.lock().consistent_index
    }

    /// The consistent index of the latest checkpoint: what a crash now would recover. At most
    /// `consistent_index()`; equal to it after `checkpoint` or `WriteTxn::commit`.
    pub fn durable_consistent_index(&self) -> u64 {
        self.inner.committed.lock().durable_consistent_index
    }

    /// Makes everything published so far durable (checkpoint steps C1-C6 of the module doc).
    /// Returns after the superblock's fdatasync. Readers and the writer go on meanwhile.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint().map(|_| ())
    }

    /// Creates the next segment ahead of need (the background checkpointer does this after
    /// each checkpoint), so that the publish that fills the active segment does no I/O.
    pub fn prepare_spare_segment(&self) -> Result<()> {
        self.inner.prepare_spare_segment()
    }

    /// Bytes of published pages not yet written (at most about `dirty_bytes_max`).
    pub fn unwritten_bytes(&self) -> usize {
        self.inner.pending.lock().bytes()
    }

    /// One bounded step of space reclamation; never blocks readers or the writer for long.
    /// Moves the live pages of at most `max_segments` mostly-dead segments to the log tail (one
    /// publish per segment, then one checkpoint), and deletes every segment no root or snapshot
    /// can reach any more.
    pub fn clean(&self, max_segments: usize) -> Result<CleanReport> {
        let report = self.inner.clean(max_segments)?;
        let r = &report;
        crate::metrics::METRICS
            .cleaner
            .record(r.segments_cleaned, r.pages_moved, r.bytes_freed);
        Ok(report)
    }

    pub fn space(&self) -> SpaceStats {
        let spare = self
            .inner
            .spare_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let segs = self.inner.segments.read();
        SpaceStats {
            file_bytes: 2 * PAGE_BYTES as u64
                + spare
                + segs.values().map(|s| s.file_bytes).sum::<u64>(),
            live_bytes: segs.values().map(|s| s.live_bytes).sum(),
        }
    }

    /// Bytes the page cache holds now (at most `cache_bytes`).
    pub fn cached_bytes(&self) -> usize {
        self.inner.cache.bytes()
    }

    /// Reads every reachable page and verifies every checksum and tree invariant, and that the
    /// live-byte accounting agrees with what the root reaches. Holds the writer for its
    /// duration (readers go on).
    pub fn check_integrity(&self) -> Result<()> {
        self.inner.check_integrity()
    }
}

/// The single writer's transaction. Dropping it without `commit` discards its changes.
pub struct WriteTxn<'a> {
    store: &'a PageStore,
    guard: MutexGuard<'a, WriterState>,
    tree: Tree,
}

impl WriteTxn<'_> {
    /// Reads through this transaction's own uncommitted writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let inner = &*self.store.inner;
        match self.tree.get(inner, key)? {
            Some(v) => Ok(Some(inner.resolve(key, v)?)),
            None => Ok(None),
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(PageStoreError::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_BYTES,
            });
        }
        self.tree.put(&*self.store.inner, key, Val::new(key, value))
    }

    /// Returns whether the key existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        if key.len() > MAX_KEY_BYTES {
            return Ok(false);
        }
        self.tree.delete(&*self.store.inner, key)
    }

    /// Makes every change visible to new snapshots, recording `consistent_index` atomically
    /// with them, without writing or syncing anything but overflow values: the changes become
    /// durable at the next checkpoint (`PageStore::checkpoint`, the background checkpointer,
    /// or a `commit`). A crash before then recovers the previous durable root; the caller must
    /// be able to redo the work from `durable_consistent_index` (ringkv: the WAL).
    pub fn publish(self, consistent_index: u64) -> Result<()> {
        let WriteTxn {
            store,
            mut guard,
            tree,
        } = self;
        store.inner.publish(&mut guard, tree, consistent_index)?;
        drop(guard);
        let over = store.inner.pending.lock().bytes() >= store.inner.config.dirty_bytes_max;
        if over {
            // The bound on unwritten pages: this writer pays for the checkpoint.
            store.inner.checkpoint()?;
        }
        Ok(())
    }

    /// `publish`, then a checkpoint: every change is durable (pages, then the root that points
    /// at them) and visible when this returns, after fdatasync.
    pub fn commit(self, consistent_index: u64) -> Result<()> {
        let store = self.store;
        self.publish(consistent_index)?;
        store.inner.checkpoint().map(|_| ())
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(PageStoreError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// One pinned generation; shared by the clones of a snapshot and its iterators.
struct Pin {
    inner: Arc<Inner>,
    root: u64,
    generation: u64,
    consistent_index: u64,
    entries: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.inner.unpin(self.generation);
    }
}

/// A pinned, immutable view. `Clone + Send + Sync`; clones share the pin.
#[derive(Clone)]
pub struct Snapshot {
    pin: Arc<Pin>,
}

impl Snapshot {
    pub fn consistent_index(&self) -> u64 {
        self.pin.consistent_index
    }

    /// The commit generation this snapshot pins (increases by one per commit).
    pub fn generation(&self) -> u64 {
        self.pin.generation
    }

    /// Number of entries in this snapshot.
    pub fn len(&self) -> u64 {
        self.pin.entries
    }

    pub fn is_empty(&self) -> bool {
        self.pin.entries == 0
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.pin.root == 0 {
            return Ok(None);
        }
        let inner = &*self.pin.inner;
        let mut id = self.pin.root;
        loop {
            let page = inner.read_page(id)?;
            if page.is_leaf() {
                return match page.search(key) {
                    Ok(i) => Ok(Some(inner.resolve_ref(key, page.value(i))?)),
                    Err(_) => Ok(None),
                };
            }
            id = page.child(page.child_index(key));
        }
    }

    /// The greatest entry whose key is `<= key`.
    pub fn seek_le(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.pin.root == 0 {
            return Ok(None);
        }
        let inner = &*self.pin.inner;
        // Path of (branch, child index taken); backtrack to the previous leaf if the leaf
        // reached holds no key <= `key`.
        let mut path: Vec<(Arc<Page>, usize)> = Vec::new();
        let mut page = inner.read_page(self.pin.root)?;
        loop {
            if page.is_leaf() {
                let pos = match page.search(key) {
                    Ok(i) => i + 1,
                    Err(i) => i,
                };
                if pos > 0 {
                    let k = page.key(pos - 1).to_vec();
                    let v = inner.resolve_ref(&k, page.value(pos - 1))?;
                    return Ok(Some((k, v)));
                }
                // Up to the nearest branch where a left sibling exists, then down its rightmost
                // edge.
                loop {
                    let Some((branch, i)) = path.pop() else {
                        return Ok(None);
                    };
                    if i > 0 {
                        page = inner.read_page(branch.child(i - 1))?;
                        while !page.is_leaf() {
                            page = inner.read_page(page.child(page.len() - 1))?;
                        }
                        let last = page.len() - 1;
                        let k = page.key(last).to_vec();
                        let v = inner.resolve_ref(&k, page.value(last))?;
                        return Ok(Some((k, v)));
                    }
                }
            }
            let i = page.child_index(key);
            let child = page.child(i);
            path.push((page, i));
            page = inner.read_page(child)?;
        }
    }

    /// Entries with `start <= key < end` (`end = None`: to the last key), in ascending key order.
    /// Pages are read lazily as the iterator advances; this is also how a whole snapshot is
    /// streamed (`range(b"", None)`).
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> RangeIter {
        RangeIter {
            snapshot: self.clone(),
            start: Some(start.to_vec()),
            end: end.map(<[u8]>::to_vec),
            path: Vec::new(),
            done: upper_before(start, end) || self.pin.root == 0,
        }
    }
}

fn upper_before(start: &[u8], end: Option<&[u8]>) -> bool {
    end.is_some_and(|e| e <= start)
}

/// Ascending iterator over a snapshot; holds the snapshot's pin while alive.
pub struct RangeIter {
    snapshot: Snapshot,
    /// Where to seek on the first `next`; `None` once positioned.
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    /// Root-to-leaf path: each page and the index of the next child / entry to visit.
    path: Vec<(Arc<Page>, usize)>,
    done: bool,
}

impl RangeIter {
    fn seek(&mut self, key: &[u8]) -> Result<()> {
        let inner = &*self.snapshot.pin.inner;
        let mut page = inner.read_page(self.snapshot.pin.root)?;
        while !page.is_leaf() {
            let i = page.child_index(key);
            let child = page.child(i);
            self.path.push((page, i + 1));
            page = inner.read_page(child)?;
        }
        let pos = page.search(key).unwrap_or_else(|i| i);
        self.path.push((page, pos));
        Ok(())
    }

    /// Moves to the first entry of the next leaf; false at the end of the tree.
    fn next_leaf(&mut self) -> Result<bool> {
        let inner = &*self.snapshot.pin.inner;
        self.path.pop();
        loop {
            let Some((branch, next)) = self.path.last_mut() else {
                return Ok(false);
            };
            if *next < branch.len() {
                let mut page = inner.read_page(branch.child(*next))?;
                *next += 1;
                while !page.is_leaf() {
                    let child = page.child(0);
                    self.path.push((page, 1));
                    page = inner.read_page(child)?;
                }
                self.path.push((page, 0));
                return Ok(true);
            }
            self.path.pop();
        }
    }

    fn advance(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if let Some(start) = self.start.take() {
            self.seek(&start)?;
        }
        loop {
            let (leaf, pos) = self.path.last_mut().expect("positioned");
            if *pos < leaf.len() {
                let i = *pos;
                *pos += 1;
                let key = leaf.key(i);
                if self.end.as_deref().is_some_and(|e| key >= e) {
                    return Ok(None);
                }
                let k = key.to_vec();
                let v = self.snapshot.pin.inner.resolve_ref(&k, leaf.value(i))?;
                return Ok(Some((k, v)));
            }
            if !self.next_leaf()? {
                return Ok(None);
            }
        }
    }
}

impl Iterator for RangeIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                self.path.clear();
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<PageStore>();
        is::<Snapshot>();
        is::<RangeIter>();
        is::<BackgroundCleaner>();
    }
}
