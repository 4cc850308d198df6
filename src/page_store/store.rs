//! The store's shared state and its disk protocol: recovery at open, verified page and extent
//! reads through the cache and the unwritten pages, the publish (lay out pages, make the root
//! visible; `checkpoint.rs` makes it durable), per-segment live-byte accounting, snapshot pins,
//! and deleting segments nothing durable or pinned can reach.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::cache::PageCache;
use super::checkpoint::{CheckpointDue, CheckpointState, Pending};
use super::disk::{Disk, DiskFile};
use super::format::{
    check_segment_header, extent_pages, index_of, offset_of, open_page, page_id,
    parse_segment_file_name, seal_page, segment_file_name, segment_header_page, segment_of, Header,
    Kind, Superblock, HEADER_BYTES, PAGE_BYTES, PAYLOAD_BYTES, SUPERBLOCK_FILE,
};
use super::node::{encode_branch, encode_leaf, Page, Val, ValRef};
use super::tree::{flush, NodeWriter, PageSource, Tree};
use super::{PageStoreConfig, PageStoreError, Result};

pub(crate) struct Inner {
    pub disk: Arc<dyn Disk>,
    pub config: PageStoreConfig,
    pub cache: PageCache,
    /// The latest published root, the durable one, and the pinned generations. Held only for
    /// pointer-sized reads and writes: a reader never waits on I/O here.
    pub committed: Mutex<Committed>,
    /// Published tree pages not yet written (read after a cache miss, before the disk).
    pub pending: Mutex<Pending>,
    /// Segment table: one small entry per segment file (about 80 bytes each).
    pub segments: RwLock<BTreeMap<u32, Segment>>,
    /// The single writer: a `WriteTxn` or a cleaner step holds it.
    pub writer: Mutex<WriterState>,
    /// Serialises cleaner steps (and integrity checks) with each other.
    pub cleaner: Mutex<()>,
    /// Serialises checkpoints. Lock order: cleaner, checkpoint, writer, then the short ones.
    pub checkpoint: Mutex<CheckpointState>,
    pub checkpoint_due: CheckpointDue,
    /// Segments created so far (the log's growth), which the background cleaner keeps pace
    /// with. Only counts; never decreases.
    pub segments_created: AtomicU64,
    /// Bytes of the spare segment, if one is ready: on disk, so in `SpaceStats::file_bytes`,
    /// though not yet in the segment table.
    pub spare_bytes: AtomicU64,
    /// Set when a publish or a checkpoint failed part-way: what is durable is unknown until a
    /// reopen recovers, so nothing more is published or written.
    pub poisoned: AtomicBool,
}

#[derive(Debug, Clone)]
pub(crate) struct Committed {
    /// The latest published root: what new snapshots and write transactions start from.
    pub root: u64,
    pub height: u32,
    pub generation: u64,
    pub consistent_index: u64,
    pub entries: u64,
    /// The generation and consistent index of the latest checkpoint (the durable superblock).
    /// Invariant: `durable_generation <= generation`.
    pub durable_generation: u64,
    pub durable_consistent_index: u64,
    /// Pinned generation → number of live snapshots pinning it.
    pub pins: BTreeMap<u64, usize>,
}

pub(crate) struct Segment {
    pub file: Arc<dyn DiskFile>,
    /// Pages in use (the durable end for sealed segments).
    pub pages: u32,
    pub file_bytes: u64,
    /// Bytes of pages and extents the latest durable root reaches in this segment.
    pub live_bytes: u64,
    /// No more pages will be appended (every segment but the active one).
    pub sealed: bool,
    /// The first generation whose root reaches nothing here; deletable once that generation is
    /// durable and no snapshot pins an older one.
    pub dead_since: Option<u64>,
}

pub(crate) struct WriterState {
    pub generation: u64,
    pub next_segment: u32,
    pub active: u32,
    pub active_file: Arc<dyn DiskFile>,
    pub active_pages: u32,
    /// The open segment branch pages go to, apart from leaves and extents (see "Hot and cold
    /// pages" in the module doc); created at the first branch a publish writes.
    pub branch_tail: Option<BranchTail>,
    /// A segment created and synced ahead of need (`prepare_spare_segment`), not yet active.
    pub spare: Option<(u32, Arc<dyn DiskFile>)>,
}

/// The second log tail: the segment that takes branch pages.
pub(crate) struct BranchTail {
    pub id: u32,
    /// Pages in use, header included.
    pub pages: u32,
}

impl PageSource for Inner {
    fn page(&self, id: u64) -> Result<Arc<Page>> {
        self.read_page(id)
    }
}

impl Inner {
    pub fn corruption(
        &self,
        segment: u32,
        offset: u64,
        detail: impl Into<String>,
    ) -> PageStoreError {
        PageStoreError::Corruption {
            file: self.disk.path_of(&segment_file_name(segment)),
            offset,
            detail: detail.into(),
        }
    }

    pub fn segment_file_for(&self, id: u64) -> Result<Arc<dyn DiskFile>> {
        self.segment_file(id)
    }

    fn segment_file(&self, id: u64) -> Result<Arc<dyn DiskFile>> {
        let segment = segment_of(id);
        self.segments
            .read()
            .get(&segment)
            .map(|s| s.file.clone())
            .ok_or_else(|| {
                self.corruption(
                    segment,
                    offset_of(id),
                    "page in a segment that does not exist",
                )
            })
    }

    /// Reads `buf.len()` bytes at page `id`; reading past the end of the file is corruption
    /// (a pointer to pages that were never made durable).
    fn read_at(&self, id: u64, buf: &mut [u8]) -> Result<()> {
        let file = self.segment_file(id)?;
        match file.read_exact_at(buf, offset_of(id)) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.corruption(
                segment_of(id),
                offset_of(id),
                "page beyond the end of its segment",
            )),
            other => Ok(other?),
        }
    }

    /// Reads and verifies a tree page, bypassing the cache.
    pub fn read_page_uncached(&self, id: u64) -> Result<Page> {
        let mut buf = vec![0u8; PAGE_BYTES].into_boxed_slice();
        self.read_at(id, &mut buf)?;
        Page::decode(buf, id).map_err(|d| self.corruption(segment_of(id), offset_of(id), d))
    }

    pub fn read_page(&self, id: u64) -> Result<Arc<Page>> {
        if let Some(page) = self.cache.get(id) {
            return Ok(page);
        }
        // Not yet written by a checkpoint (the cache evicted it): it is only in memory. A page
        // leaves `pending` only after its write completed, so a miss here finds it on disk.
        if let Some(page) = self.pending.lock().get(id) {
            return Ok(page);
        }
        let page = Arc::new(self.read_page_uncached(id)?);
        self.cache.insert(page.clone());
        Ok(page)
    }

    /// Reads and verifies the overflow extent at `id` holding `key`'s value of `len` bytes.
    pub fn read_value(&self, key: &[u8], id: u64, len: u32) -> Result<Vec<u8>> {
        let pages = extent_pages(key.len(), len as usize);
        let mut buf = vec![0u8; pages as usize * PAGE_BYTES];
        self.read_at(id, &mut buf)?;
        let (k, v) = self.decode_extent(id, &buf)?;
        if k != key || v.len() != len as usize {
            return Err(self.corruption(
                segment_of(id),
                offset_of(id),
                "overflow extent belongs to another key or has the wrong length",
            ));
        }
        Ok(v)
    }

    /// Verifies every page of the extent read from `id` into `buf` and returns its key and
    /// value.
    pub fn decode_extent(&self, id: u64, buf: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let pages = (buf.len() / PAGE_BYTES) as u32;
        let mut stream = Vec::with_capacity(buf.len());
        for (i, page) in buf.chunks(PAGE_BYTES).enumerate() {
            let at = id + i as u64;
            let bad = |d: String| self.corruption(segment_of(at), offset_of(at), d);
            let h = open_page(page, at).map_err(bad)?;
            let (kind, extent) = if i == 0 {
                (Kind::OverflowHead, pages)
            } else {
                (Kind::OverflowTail, i as u32)
            };
            if h.kind != kind || h.extent != extent {
                return Err(bad(format!(
                    "expected {kind:?} {extent} of an overflow extent, found {:?} {}",
                    h.kind, h.extent
                )));
            }
            stream.extend_from_slice(&page[HEADER_BYTES..HEADER_BYTES + h.payload_bytes as usize]);
        }
        let klen = if stream.len() >= 2 {
            usize::from(u16::from_le_bytes([stream[0], stream[1]]))
        } else {
            usize::MAX
        };
        if klen == usize::MAX || stream.len() < 2 + klen {
            return Err(self.corruption(
                segment_of(id),
                offset_of(id),
                "overflow extent shorter than its key",
            ));
        }
        let value = stream.split_off(2 + klen);
        stream.drain(..2);
        Ok((stream, value))
    }

    /// The bytes of a value as a tree holds it.
    pub fn resolve(&self, key: &[u8], v: Val) -> Result<Vec<u8>> {
        match v {
            Val::Inline(b) => Ok(b),
            Val::Overflow { id, len } => self.read_value(key, id, len),
            Val::Pending(b) => Ok((*b).clone()),
        }
    }

    pub fn resolve_ref(&self, key: &[u8], v: ValRef<'_>) -> Result<Vec<u8>> {
        match v {
            ValRef::Inline(b) => Ok(b.to_vec()),
            ValRef::Overflow { id, len } => self.read_value(key, id, len),
        }
    }

    // ---- open and recovery ----

    pub fn open(disk: Arc<dyn Disk>, config: PageStoreConfig) -> Result<Arc<Inner>> {
        config.validate();
        let mut segment_ids: Vec<u32> = disk
            .list()?
            .iter()
            .filter_map(|n| parse_segment_file_name(n))
            .collect();
        segment_ids.sort_unstable();
        let superblock = disk.open(SUPERBLOCK_FILE)?;
        let (sb, newest_slot) = match newest_superblock(&*superblock)? {
            Some(found) => found,
            None if segment_ids.is_empty() => {
                // A new store (or one whose creation crashed before anything was committed).
                let sb = Superblock {
                    next_segment: 1,
                    ..Superblock::default()
                };
                // Both slots are written (slot 1 as zeros, which no checksum accepts) so that
                // the file never changes size again: a commit's superblock fdatasync then
                // flushes data only.
                let mut slots = sb.encode();
                slots.resize(2 * PAGE_BYTES, 0);
                superblock.set_len(0)?;
                superblock.write_all_at(&slots, 0)?;
                superblock.sync_data()?;
                disk.sync_dir()?;
                (sb, 0)
            }
            None => {
                return Err(PageStoreError::Corruption {
                    file: disk.path_of(SUPERBLOCK_FILE),
                    offset: 0,
                    detail: "no valid superblock slot, but segment files exist".into(),
                })
            }
        };
        let mut segments = BTreeMap::new();
        for &id in &segment_ids {
            let file = disk.open(&segment_file_name(id))?;
            let len = file.len()?;
            segments.insert(
                id,
                Segment {
                    file,
                    pages: (len / PAGE_BYTES as u64) as u32,
                    file_bytes: len,
                    live_bytes: 0,
                    sealed: true,
                    dead_since: None,
                },
            );
        }
        let next_segment = sb
            .next_segment
            .max(segment_ids.last().map_or(1, |&id| id + 1));
        let inner = Arc::new(Inner {
            cache: PageCache::new(config.cache_bytes),
            config,
            committed: Mutex::new(Committed {
                root: sb.root,
                height: sb.height,
                generation: sb.generation,
                consistent_index: sb.consistent_index,
                entries: sb.entries,
                durable_generation: sb.generation,
                durable_consistent_index: sb.consistent_index,
                pins: BTreeMap::new(),
            }),
            pending: Mutex::new(Pending::default()),
            segments: RwLock::new(segments),
            writer: Mutex::new(WriterState {
                generation: sb.generation,
                next_segment,
                active: 0,
                active_file: superblock.clone(),
                active_pages: 0,
                branch_tail: None,
                spare: None,
            }),
            cleaner: Mutex::new(()),
            checkpoint: Mutex::new(CheckpointState {
                superblock,
                newest_slot,
            }),
            checkpoint_due: (Mutex::new(false), parking_lot::Condvar::new()),
            segments_created: AtomicU64::new(0),
            spare_bytes: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            disk,
        });
        inner.recover_accounting(&sb)?;
        {
            let mut ws = inner.writer.lock();
            inner.reclaim_dead(&mut ws)?;
            inner.start_segment(&mut ws, sb.generation)?;
        }
        Ok(inner)
    }

    /// Recomputes every segment's live bytes by walking the tree from the recovered root: one
    /// read of every tree page (overflow extents are counted from their leaf pointers, not
    /// read). Segments the root does not reach are marked dead.
    fn recover_accounting(&self, sb: &Superblock) -> Result<()> {
        let mut live: HashMap<u32, u64> = HashMap::new();
        if sb.root != 0 {
            self.account(sb.root, &mut live)?;
        }
        let mut segs = self.segments.write();
        for (&seg, &bytes) in &live {
            let Some(s) = segs.get_mut(&seg) else {
                return Err(self.corruption(seg, 0, "the root reaches a missing segment"));
            };
            let mut header = vec![0u8; PAGE_BYTES];
            s.file.read_exact_at(&mut header, 0)?;
            check_segment_header(&header, seg).map_err(|d| self.corruption(seg, 0, d))?;
            s.live_bytes = bytes;
        }
        for s in segs.values_mut() {
            if s.live_bytes == 0 {
                s.dead_since = Some(sb.generation);
            }
        }
        Ok(())
    }

    fn account(&self, id: u64, live: &mut HashMap<u32, u64>) -> Result<()> {
        let page = self.read_page(id)?;
        *live.entry(segment_of(id)).or_default() += PAGE_BYTES as u64;
        if page.is_leaf() {
            for i in 0..page.len() {
                if let ValRef::Overflow { id, len } = page.value(i) {
                    let pages = extent_pages(page.key(i).len(), len as usize);
                    *live.entry(segment_of(id)).or_default() +=
                        u64::from(pages) * PAGE_BYTES as u64;
                }
            }
        } else {
            for i in 0..page.len() {
                self.account(page.child(i), live)?;
            }
        }
        Ok(())
    }

    /// Creates the next segment and makes it the active one. Its header is durable and its
    /// name is in the directory before any root can point into it.
    ///
    /// The whole segment is written (header, then zeros to `segment_bytes`) and synced here, so
    /// that commits overwrite blocks that are already allocated and written: their fdatasync
    /// then flushes data only, with no file-size or extent change for the filesystem journal
    /// to commit. See "Preallocation" in the module doc.
    ///
    /// The spare segment the checkpointer prepared, if any, is taken instead: then a publish
    /// that fills a segment does no I/O for the next one.
    fn start_segment(&self, ws: &mut WriterState, generation: u64) -> Result<()> {
        let (id, file) = self.open_segment(ws, generation)?;
        ws.active = id;
        ws.active_file = file;
        ws.active_pages = 1;
        Ok(())
    }

    /// A new segment for either log tail (the spare if one is ready), entered in the segment
    /// table unsealed.
    fn open_segment(
        &self,
        ws: &mut WriterState,
        generation: u64,
    ) -> Result<(u32, Arc<dyn DiskFile>)> {
        let (id, file) = if let Some(spare) = ws.spare.take() {
            self.spare_bytes.store(0, Ordering::Relaxed);
            spare
        } else {
            let id = ws.next_segment;
            ws.next_segment += 1;
            (id, self.create_segment(id, generation)?)
        };
        self.segments.write().insert(
            id,
            Segment {
                file: file.clone(),
                pages: 1,
                file_bytes: self.config.segment_bytes as u64,
                live_bytes: 0,
                sealed: false,
                dead_since: None,
            },
        );
        Ok((id, file))
    }

    /// Writes segment `id` whole (header, zeros) and makes it and its name durable.
    fn create_segment(&self, id: u32, generation: u64) -> Result<Arc<dyn DiskFile>> {
        self.segments_created.fetch_add(1, Ordering::Relaxed);
        let file = self.disk.open(&segment_file_name(id))?;
        write_preallocated(
            &*file,
            &segment_header_page(id, generation),
            self.config.segment_bytes,
        )?;
        file.sync_data()?;
        self.disk.sync_dir()?;
        Ok(file)
    }

    /// Creates the next segment ahead of need, outside the writer lock, so that the publish
    /// that fills the active segment does not wait for 8 MiB of zeros and two syncs. Until a
    /// publish takes it, the spare is in no root and not in the segment table: a crash leaves
    /// an unreferenced segment, deleted at open (crash case 5).
    pub fn prepare_spare_segment(&self) -> Result<()> {
        let (id, generation) = {
            let mut ws = self.writer.lock();
            if ws.spare.is_some() || self.poisoned.load(Ordering::Acquire) {
                return Ok(());
            }
            let id = ws.next_segment;
            ws.next_segment += 1;
            (id, ws.generation)
        };
        let file = self.create_segment(id, generation)?;
        let mut ws = self.writer.lock();
        assert!(ws.spare.is_none(), "one thread prepares spares");
        ws.spare = Some((id, file));
        self.spare_bytes
            .store(self.config.segment_bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    // ---- publish ----

    /// Makes `tree` the published root with `consistent_index`: visible to new snapshots at
    /// once, durable at the next checkpoint. Steps P1-P3 of "Commit protocol" in the module
    /// doc. A failure poisons the store: what reached the disk is unknown until a reopen runs
    /// recovery. Returns the bytes of segments deleted after it.
    pub fn publish(
        &self,
        ws: &mut WriterState,
        mut tree: Tree,
        consistent_index: u64,
    ) -> Result<u64> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(PageStoreError::Poisoned);
        }
        let generation = ws.generation + 1;
        let laid_out = match self.lay_out(ws, &mut tree, generation) {
            Ok(w) => w,
            Err(e) => {
                self.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let pending_bytes = self.make_visible(ws, &tree, consistent_index, generation, laid_out);
        self.note_pending_bytes(pending_bytes);
        // Deleting dead segments is housekeeping: a failure here loses nothing and is retried
        // by the next commit or cleaner step.
        Ok(self.reclaim_dead(ws).unwrap_or(0))
    }

    /// P1: gives every dirty node a page id at the log tail and encodes it; overflow extents
    /// are written now (unsynced: the next checkpoint syncs their segment), tree pages are not.
    fn lay_out(&self, ws: &mut WriterState, tree: &mut Tree, generation: u64) -> Result<Written> {
        let mut w = SegWriter {
            inner: self,
            ws,
            generation,
            allocs: Vec::new(),
            extents: Vec::new(),
            new_pages: Vec::new(),
            sealed: Vec::new(),
            spill: None,
            spilled: Vec::new(),
        };
        let root = match tree.root.as_mut() {
            Some(r) => flush(r, &mut w)?,
            None => 0,
        };
        w.write_spill()?;
        let SegWriter {
            allocs,
            extents,
            new_pages,
            sealed,
            spilled,
            ..
        } = w;
        let mut pending = self.pending.lock();
        for seg in spilled {
            pending.touch(seg);
        }
        for (seg, file, at, bytes) in extents {
            file.write_all_at(&bytes, at)?;
            pending.touch(seg);
        }
        Ok(Written {
            root,
            allocs,
            new_pages,
            sealed,
        })
    }

    /// P2-P3: live bytes, the segment table, the unwritten pages, the published root, the
    /// cache. Returns the bytes of unwritten pages now held.
    fn make_visible(
        &self,
        ws: &mut WriterState,
        tree: &Tree,
        consistent_index: u64,
        generation: u64,
        written: Written,
    ) -> usize {
        {
            let mut segs = self.segments.write();
            for &(seg, start, pages) in &written.allocs {
                let s = segs.get_mut(&seg).expect("written segment is in the table");
                s.live_bytes += u64::from(pages) * PAGE_BYTES as u64;
                s.pages = s.pages.max(start + pages);
                s.file_bytes = s.file_bytes.max(u64::from(s.pages) * PAGE_BYTES as u64);
            }
            for &(id, bytes) in &tree.freed {
                let s = segs
                    .get_mut(&segment_of(id))
                    .expect("a superseded page's segment outlives the root that reached it");
                s.live_bytes = s.live_bytes.checked_sub(bytes).unwrap_or_else(|| {
                    panic!("live bytes of segment {} below zero", segment_of(id))
                });
            }
            for seg in &written.sealed {
                segs.get_mut(seg).unwrap().sealed = true;
            }
            for s in segs.values_mut() {
                if s.sealed && s.live_bytes == 0 && s.dead_since.is_none() {
                    s.dead_since = Some(generation);
                }
            }
        }
        let pages: Vec<Arc<Page>> = written
            .new_pages
            .into_iter()
            .map(|(id, bytes)| {
                Arc::new(
                    Page::decode(bytes.into_boxed_slice(), id)
                        .unwrap_or_else(|d| panic!("a page just encoded does not decode: {d}")),
                )
            })
            .collect();
        // Unwritten pages become readable before the root that reaches them is published.
        let pending_bytes = {
            let mut pending = self.pending.lock();
            for page in &pages {
                pending.add(page.clone());
            }
            for &(id, _) in &tree.freed {
                pending.supersede(id, generation);
            }
            pending.bytes()
        };
        let oldest_pin = {
            let mut c = self.committed.lock();
            c.root = written.root;
            c.height = tree.height;
            c.generation = generation;
            c.consistent_index = consistent_index;
            c.entries = tree.entries;
            c.pins.keys().next().copied()
        };
        self.pending.lock().prune(oldest_pin);
        ws.generation = generation;
        for page in pages {
            self.cache.insert(page);
        }
        pending_bytes
    }

    /// Deletes every segment that the durable root does not reach and no pinned snapshot can:
    /// dead since generation `g`, `g` durable, and no pin older than `g`. Returns the bytes
    /// deleted.
    /// Takes the writer state only as proof that the writer is held: no root is published
    /// while the victims are chosen and removed.
    pub fn reclaim_dead(&self, _writer_held: &mut WriterState) -> Result<u64> {
        let (generation, oldest_pin) = {
            let c = self.committed.lock();
            (c.durable_generation, c.pins.keys().next().copied())
        };
        let victims: Vec<u32> = self
            .segments
            .read()
            .iter()
            .filter(|(_, s)| {
                s.dead_since.is_some_and(|g| {
                    g <= generation && oldest_pin.is_none_or(|p| p >= g) && s.live_bytes == 0
                })
            })
            .map(|(&id, _)| id)
            .collect();
        let mut freed = 0;
        for &seg in &victims {
            match self.disk.remove(&segment_file_name(seg)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            if let Some(s) = self.segments.write().remove(&seg) {
                freed += s.file_bytes;
            }
        }
        if !victims.is_empty() {
            self.disk.sync_dir()?;
        }
        Ok(freed)
    }

    pub fn pin(&self) -> (Committed, u64) {
        let mut c = self.committed.lock();
        let g = c.generation;
        *c.pins.entry(g).or_default() += 1;
        (c.clone_without_pins(), g)
    }

    pub fn unpin(&self, generation: u64) {
        let mut c = self.committed.lock();
        let n = c
            .pins
            .get_mut(&generation)
            .expect("unpin of a pinned generation");
        *n -= 1;
        if *n == 0 {
            c.pins.remove(&generation);
        }
    }
}

impl Committed {
    pub fn clone_without_pins(&self) -> Committed {
        Committed {
            pins: BTreeMap::new(),
            ..*self
        }
    }
}

/// Zero-filled writes are issued in pieces of this size.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(ZERO_CHUNK_BYTES % PAGE_BYTES == 0);

/// Writes `head` at offset 0 of `file` and zeros after it up to `len_bytes`, so every block of
/// the file is allocated and written before anything is committed into it.
fn write_preallocated(file: &dyn DiskFile, head: &[u8], len_bytes: usize) -> io::Result<()> {
    assert!(head.len() % PAGE_BYTES == 0 && head.len() <= len_bytes);
    file.write_all_at(head, 0)?;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(len_bytes - head.len())];
    let mut at = head.len();
    while at < len_bytes {
        let n = zeros.len().min(len_bytes - at);
        file.write_all_at(&zeros[..n], at as u64)?;
        at += n;
    }
    Ok(())
}

/// The newest superblock slot whose checksum holds, and its slot number, if any.
fn newest_superblock(file: &dyn DiskFile) -> Result<Option<(Superblock, u64)>> {
    let len = file.len()?;
    let mut best: Option<(Superblock, u64)> = None;
    for slot in 0..2u64 {
        if len < (slot + 1) * PAGE_BYTES as u64 {
            continue;
        }
        let mut buf = vec![0u8; PAGE_BYTES];
        file.read_exact_at(&mut buf, slot * PAGE_BYTES as u64)?;
        if let Some(sb) = Superblock::decode(&buf) {
            if best.is_none_or(|(b, _)| sb.generation > b.generation) {
                best = Some((sb, slot));
            }
        }
    }
    Ok(best)
}

/// An overflow extent a publish writes at once: `(segment, file, offset, bytes)`.
type ExtentWrite = (u32, Arc<dyn DiskFile>, u64, Vec<u8>);

/// The most leaf pages a publish's spill (see `SegWriter::write_leaf`) gathers into one write.
const SPILL_RUN_BYTES: usize = 1 << 20;

/// Consecutive leaf pages of one segment that a publish writes at once instead of holding them
/// as unwritten pages.
struct SpillRun {
    segment: u32,
    file: Arc<dyn DiskFile>,
    first: u64,
    bytes: Vec<u8>,
}

struct Written {
    root: u64,
    /// `(segment, first page, pages)` allocated by the publish, extents and tree pages.
    allocs: Vec<(u32, u32, u32)>,
    new_pages: Vec<(u64, Vec<u8>)>,
    sealed: Vec<u32>,
}

/// Lays a publish's pages out at the tail of the log, in memory, rolling to a new segment when
/// the active one reaches `segment_bytes`.
struct SegWriter<'a> {
    inner: &'a Inner,
    ws: &'a mut WriterState,
    generation: u64,
    allocs: Vec<(u32, u32, u32)>,
    extents: Vec<ExtentWrite>,
    new_pages: Vec<(u64, Vec<u8>)>,
    sealed: Vec<u32>,
    /// Leaf pages being gathered for one spill write, and every segment spilled into (the next
    /// checkpoint fdatasyncs them, as it does the extents' segments).
    spill: Option<SpillRun>,
    spilled: Vec<u32>,
}

impl SegWriter<'_> {
    /// Whether this publish already holds half of `dirty_bytes_max` of unwritten pages: its
    /// further leaves are written at once. One publish that changes a large part of the tree
    /// (check perf's final delete of 480k keys rewrites every leaf of the version table) would
    /// otherwise hold all of its pages in memory until the next checkpoint, far beyond the
    /// bound: 2 GiB there.
    fn spilling(&self) -> bool {
        self.new_pages.len() * PAGE_BYTES >= self.inner.config.dirty_bytes_max / 2
    }

    /// Adds leaf page `id` (just allocated in the active segment) to the spill run, writing the
    /// run first if `id` does not extend it or it is full. Unsynced, like an overflow extent:
    /// no durable root reaches the page before the checkpoint that syncs its segment.
    fn spill_leaf(&mut self, id: u64, page: &[u8]) -> Result<()> {
        debug_assert_eq!(segment_of(id), self.ws.active);
        let extends = self.spill.as_ref().is_some_and(|run| {
            run.segment == segment_of(id)
                && run.first + (run.bytes.len() / PAGE_BYTES) as u64 == id
                && run.bytes.len() + PAGE_BYTES <= SPILL_RUN_BYTES
        });
        if !extends {
            self.write_spill()?;
            self.spill = Some(SpillRun {
                segment: self.ws.active,
                file: self.ws.active_file.clone(),
                first: id,
                bytes: Vec::with_capacity(SPILL_RUN_BYTES),
            });
        }
        let run = self.spill.as_mut().expect("started above");
        run.bytes.extend_from_slice(page);
        Ok(())
    }

    /// Writes the gathered spill run, if any.
    fn write_spill(&mut self) -> Result<()> {
        if let Some(run) = self.spill.take() {
            run.file.write_all_at(&run.bytes, offset_of(run.first))?;
            if self.spilled.last() != Some(&run.segment) {
                self.spilled.push(run.segment);
            }
        }
        Ok(())
    }

    /// Reserves `pages` contiguous pages in one segment of the leaf tail. An extent longer than
    /// a segment gets a segment of its own that is longer than `segment_bytes`.
    fn alloc(&mut self, pages: u32) -> Result<u64> {
        let target = self.inner.config.segment_pages();
        if self.ws.active_pages > 1 && self.ws.active_pages + pages > target {
            self.sealed.push(self.ws.active);
            self.inner.start_segment(self.ws, self.generation)?;
        }
        let id = page_id(self.ws.active, self.ws.active_pages);
        self.ws.active_pages += pages;
        self.record_alloc(id, pages);
        Ok(id)
    }

    /// Reserves one page of the branch tail, opening a new branch segment when it is full.
    fn alloc_branch(&mut self) -> Result<u64> {
        let target = self.inner.config.segment_pages();
        if self
            .ws
            .branch_tail
            .as_ref()
            .is_none_or(|t| t.pages + 1 > target)
        {
            if let Some(full) = self.ws.branch_tail.take() {
                self.sealed.push(full.id);
            }
            let (id, _) = self.inner.open_segment(self.ws, self.generation)?;
            self.ws.branch_tail = Some(BranchTail { id, pages: 1 });
        }
        let tail = self.ws.branch_tail.as_mut().expect("opened above");
        let id = page_id(tail.id, tail.pages);
        tail.pages += 1;
        self.record_alloc(id, 1);
        Ok(id)
    }

    fn record_alloc(&mut self, id: u64, pages: u32) {
        let seg = segment_of(id);
        match self
            .allocs
            .iter_mut()
            .rev()
            .find(|(s, start, n)| *s == seg && *start + *n == index_of(id))
        {
            Some((_, _, n)) => *n += pages,
            None => self.allocs.push((seg, index_of(id), pages)),
        }
    }
}

impl NodeWriter for SegWriter<'_> {
    fn write_overflow(&mut self, key: &[u8], value: &[u8]) -> Result<u64> {
        let pages = extent_pages(key.len(), value.len());
        let id = self.alloc(pages)?;
        let mut stream = Vec::with_capacity(2 + key.len() + value.len());
        stream.extend_from_slice(&(key.len() as u16).to_le_bytes());
        stream.extend_from_slice(key);
        stream.extend_from_slice(value);
        let mut extent = vec![0u8; pages as usize * PAGE_BYTES];
        for (i, (page, chunk)) in extent
            .chunks_mut(PAGE_BYTES)
            .zip(stream.chunks(PAYLOAD_BYTES))
            .enumerate()
        {
            page[HEADER_BYTES..HEADER_BYTES + chunk.len()].copy_from_slice(chunk);
            let head = i == 0;
            seal_page(
                page,
                &Header {
                    kind: if head {
                        Kind::OverflowHead
                    } else {
                        Kind::OverflowTail
                    },
                    level: 0,
                    count: 0,
                    id: id + i as u64,
                    generation: self.generation,
                    payload_bytes: chunk.len() as u32,
                    extent: if head { pages } else { i as u32 },
                },
            );
        }
        self.extents.push((
            self.ws.active,
            self.ws.active_file.clone(),
            offset_of(id),
            extent,
        ));
        Ok(id)
    }

    fn write_leaf(&mut self, entries: &[(Vec<u8>, Val)]) -> Result<u64> {
        let id = self.alloc(1)?;
        let page = encode_leaf(entries, id, self.generation);
        if self.spilling() {
            self.spill_leaf(id, &page)?;
        } else {
            self.new_pages.push((id, page));
        }
        Ok(id)
    }

    fn write_branch(&mut self, level: u8, seps: &[Vec<u8>], children: &[u64]) -> Result<u64> {
        let id = self.alloc_branch()?;
        let page = encode_branch(level, seps, children, id, self.generation);
        self.new_pages.push((id, page));
        Ok(id)
    }
}
