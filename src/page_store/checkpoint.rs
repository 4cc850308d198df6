//! Publish without sync, checkpoint later: the tree pages a publish made visible but did not
//! write (`Pending`), and the checkpoint that writes them, fdatasyncs, and makes the latest
//! published root durable in a superblock. See "Commit protocol" in the module doc.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::disk::DiskFile;
use super::format::{index_of, page_id, segment_of, Superblock, PAGE_BYTES};
use super::node::Page;
use super::store::{Inner, WriterState};
use super::{PageStore, PageStoreError, Result};

/// Tree pages that are published (readers may reach them) but not yet written to their segment.
/// Readers look here after a cache miss, so a page is readable from the moment it is published
/// until it is on disk or no snapshot can reach it any more.
#[derive(Default)]
pub(crate) struct Pending {
    /// Unwritten pages the latest published root reaches, by id (segment-major order, so a
    /// segment's pages form one range). The next checkpoint writes exactly these.
    live: BTreeMap<u64, Arc<Page>>,
    /// Unwritten pages superseded before any checkpoint wrote them. They are never written;
    /// kept only while a snapshot pinned below the generation that superseded them may read
    /// them. `dead_order` holds `(generation, id)` in ascending generation.
    dead: HashMap<u64, Arc<Page>>,
    dead_order: VecDeque<(u64, u64)>,
    /// Bytes of `live` and `dead` pages: the memory the write-behind holds.
    bytes: usize,
    /// Segments written since the last checkpoint plan (overflow extents are written at
    /// publish, unsynced); the next checkpoint fdatasyncs them.
    touched: BTreeSet<u32>,
}

impl Pending {
    pub fn get(&self, id: u64) -> Option<Arc<Page>> {
        self.live.get(&id).or_else(|| self.dead.get(&id)).cloned()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn add(&mut self, page: Arc<Page>) {
        self.bytes += PAGE_BYTES;
        let old = self.live.insert(page.id(), page);
        assert!(old.is_none(), "a page id is published once");
    }

    pub fn touch(&mut self, segment: u32) {
        self.touched.insert(segment);
    }

    /// A page the latest root no longer reaches from `generation` on; if it was never written,
    /// it stays readable for older snapshots and is never written.
    pub fn supersede(&mut self, id: u64, generation: u64) {
        if let Some(page) = self.live.remove(&id) {
            self.dead.insert(id, page);
            self.dead_order.push_back((generation, id));
        }
    }

    /// Drops superseded pages no snapshot can reach: those superseded at or before the oldest
    /// pinned generation (all of them when nothing is pinned).
    pub fn prune(&mut self, oldest_pin: Option<u64>) {
        while let Some(&(generation, id)) = self.dead_order.front() {
            if oldest_pin.is_some_and(|p| p < generation) {
                break;
            }
            self.dead_order.pop_front();
            if self.dead.remove(&id).is_some() {
                self.bytes -= PAGE_BYTES;
            }
        }
    }

    /// Whether some page of `segment` is still unwritten and live: the cleaner must not read
    /// the segment from disk yet.
    pub fn has_live_in(&self, segment: u32) -> bool {
        self.live
            .range(page_id(segment, 0)..page_id(segment + 1, 0))
            .next()
            .is_some()
    }

    /// Forgets pages a checkpoint has written: from now on they are read from disk.
    fn written(&mut self, pages: &[Arc<Page>]) {
        for page in pages {
            let id = page.id();
            if self.live.remove(&id).is_some() || self.dead.remove(&id).is_some() {
                self.bytes -= PAGE_BYTES;
            }
        }
    }
}

/// Serialises checkpoints; owns the superblock file.
pub(crate) struct CheckpointState {
    pub superblock: Arc<dyn DiskFile>,
    /// The slot (0 or 1) holding the newest durable superblock; the next one goes to the other,
    /// so a torn superblock write can only destroy the slot not holding the durable root.
    pub newest_slot: u64,
}

/// What one checkpoint makes durable: the latest published root and the pages it reaches that
/// are not on disk yet.
struct Plan {
    superblock: Superblock,
    /// Sorted by id.
    pages: Vec<Arc<Page>>,
    /// Every segment with unsynced writes the root may reach.
    sync: Vec<Arc<dyn DiskFile>>,
}

impl Inner {
    /// Makes the latest published root durable; returns the bytes of segments deleted after it.
    /// Readers and the writer go on while the pages are written and synced: the writer lock is
    /// held only to take the plan and to record the result.
    pub fn checkpoint(&self) -> Result<u64> {
        let mut cp = self.checkpoint.lock();
        let plan = {
            let mut ws = self.writer.lock();
            match self.plan_checkpoint(&mut ws)? {
                Some(plan) => plan,
                None => return Ok(0),
            }
        };
        self.write_checkpoint(&mut cp, &plan)?;
        let mut ws = self.writer.lock();
        Ok(self.finish_checkpoint(&mut ws, &plan))
    }

    /// `checkpoint` with the checkpoint and writer locks already held (integrity checks).
    pub fn checkpoint_locked(&self, cp: &mut CheckpointState, ws: &mut WriterState) -> Result<()> {
        if let Some(plan) = self.plan_checkpoint(ws)? {
            self.write_checkpoint(cp, &plan)?;
            self.finish_checkpoint(ws, &plan);
        }
        Ok(())
    }

    fn plan_checkpoint(&self, ws: &mut WriterState) -> Result<Option<Plan>> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(PageStoreError::Poisoned);
        }
        let c = self.committed.lock().clone_without_pins();
        if c.generation == c.durable_generation {
            return Ok(None);
        }
        let mut pending = self.pending.lock();
        let pages: Vec<Arc<Page>> = pending.live.values().cloned().collect();
        let mut segments = std::mem::take(&mut pending.touched);
        drop(pending);
        segments.extend(pages.iter().map(|p| segment_of(p.id())));
        let segs = self.segments.read();
        let sync = segments
            .iter()
            .map(|seg| {
                segs.get(seg).map(|s| s.file.clone()).ok_or_else(|| {
                    self.corruption(*seg, 0, "an unwritten page lies in a deleted segment")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Plan {
            superblock: Superblock {
                generation: c.generation,
                root: c.root,
                height: c.height,
                consistent_index: c.consistent_index,
                next_segment: ws.next_segment,
                active_segment: ws.active,
                active_end_page: ws.active_pages,
                entries: c.entries,
            },
            pages,
            sync,
        }))
    }

    /// Steps C1-C4 of the commit protocol; any failure poisons the store.
    fn write_checkpoint(&self, cp: &mut CheckpointState, plan: &Plan) -> Result<()> {
        // etcd's backend commit: the step that makes applied writes durable.
        let _timer = crate::metrics::METRICS.backend_commit_seconds.start_timer();
        let result = self.write_checkpoint_io(cp, plan);
        if result.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        result
    }

    fn write_checkpoint_io(&self, cp: &mut CheckpointState, plan: &Plan) -> Result<()> {
        // C1: the pages, one write per run of consecutive ids in a segment.
        let mut run: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < plan.pages.len() {
            run.clear();
            let run_start = plan.pages[i].id();
            let mut next = run_start;
            while i < plan.pages.len() && plan.pages[i].id() == next {
                run.extend_from_slice(plan.pages[i].bytes());
                next += 1;
                i += 1;
            }
            let file = self.segment_file_for(run_start)?;
            file.write_all_at(&run, u64::from(index_of(run_start)) * PAGE_BYTES as u64)?;
        }
        // C2: everything the root reaches is durable ...
        for file in &plan.sync {
            file.sync_data()?;
        }
        // C3-C4: ... before the superblock that names it.
        let slot = 1 - cp.newest_slot;
        cp.superblock
            .write_all_at(&plan.superblock.encode(), slot * PAGE_BYTES as u64)?;
        cp.superblock.sync_data()?;
        cp.newest_slot = slot;
        Ok(())
    }

    /// C5-C6: records the durable root, forgets the written pages, deletes what is now dead.
    fn finish_checkpoint(&self, ws: &mut WriterState, plan: &Plan) -> u64 {
        {
            let mut c = self.committed.lock();
            assert!(plan.superblock.generation > c.durable_generation);
            c.durable_generation = plan.superblock.generation;
            c.durable_consistent_index = plan.superblock.consistent_index;
        }
        self.pending.lock().written(&plan.pages);
        // Housekeeping: a failure loses nothing and is retried after the next commit.
        self.reclaim_dead(ws).unwrap_or(0)
    }

    /// Wakes the background checkpointer if the unwritten pages reach half their bound.
    pub fn note_pending_bytes(&self, bytes: usize) {
        if bytes >= self.config.dirty_bytes_max / 2 {
            let (due, cv) = &self.checkpoint_due;
            *due.lock() = true;
            cv.notify_all();
        }
    }
}

/// A thread that checkpoints every `checkpoint_interval`, or sooner when the unwritten pages
/// reach half of `dirty_bytes_max`, keeps a spare segment ready for the writer, and cleans in
/// step with the writers (`PageStore::clean_to_keep_up`). It stops at the first error (the store
/// is then poisoned, and the next publish fails), which `stop` returns.
pub struct BackgroundCheckpointer {
    stop: Arc<Mutex<bool>>,
    store: PageStore,
    thread: Option<JoinHandle<Result<()>>>,
}

impl PageStore {
    /// The background cleaning policy, run by the checkpointer after each checkpoint: once dead
    /// bytes pass `clean_garbage_percent` of the live bytes (and four segments of slack), one
    /// cleaner step of as many segments as the log gained since the previous step, plus one,
    /// at most `background_clean_segments`. Cleaning so proportionally to the write rate keeps
    /// the files near `(1 + clean_garbage_percent / 100) x live` however fast the writers go,
    /// while each step stays bounded (the writer lock is held only to relocate one step's
    /// pages). `segments_seen` is the caller's record of `segments_created` at its previous
    /// step. Returns the bytes freed.
    pub fn clean_to_keep_up(&self, segments_seen: &mut u64) -> Result<u64> {
        let config = &self.inner.config;
        let created = self.inner.segments_created.load(Ordering::Relaxed);
        let grown = created.saturating_sub(*segments_seen);
        if config.background_clean_segments == 0 || !self.over_garbage_target() {
            *segments_seen = created;
            return Ok(0);
        }
        *segments_seen = created;
        let step = usize::try_from(grown)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
            .min(config.background_clean_segments);
        Ok(self.clean(step)?.bytes_freed)
    }

    /// Whether dead bytes exceed `clean_garbage_percent` of the live bytes and four segments.
    fn over_garbage_target(&self) -> bool {
        let config = &self.inner.config;
        let space = self.space();
        let dead = space.file_bytes.saturating_sub(space.live_bytes);
        let allowed = space.live_bytes / 100 * u64::from(config.clean_garbage_percent);
        let slack = 4 * config.segment_bytes as u64;
        dead > allowed.max(slack)
    }

    /// Starts the checkpointer on its own thread (`page-store-checkpoint`, pinned per
    /// `PageStoreConfig::checkpoint_cpu`). Without one, the store still checkpoints
    /// on `commit`, `checkpoint`, the cleaner, and when the unwritten pages reach their bound.
    pub fn spawn_checkpointer(&self) -> BackgroundCheckpointer {
        let stop = Arc::new(Mutex::new(false));
        let thread = {
            let (store, stop) = (self.clone(), stop.clone());
            std::thread::Builder::new()
                .name("page-store-checkpoint".into())
                .spawn(move || {
                    let inner = &*store.inner;
                    crate::affinity::pin_current_thread(
                        inner.config.checkpoint_cpu,
                        "the page store checkpointer",
                    );
                    let interval: Duration = inner.config.checkpoint_interval;
                    let mut segments_seen = inner.segments_created.load(Ordering::Relaxed);
                    loop {
                        {
                            let (due, cv) = &inner.checkpoint_due;
                            let mut due = due.lock();
                            if !*due && !*stop.lock() {
                                cv.wait_for(&mut due, interval);
                            }
                            *due = false;
                        }
                        if *stop.lock() {
                            return inner.checkpoint().map(|_| ());
                        }
                        if let Err(e) = inner.checkpoint() {
                            eprintln!("ringkv: error: page store checkpoint failed: {e}");
                            return Err(e);
                        }
                        // A failure only means the writer creates its next segment itself
                        // (and meets the error there, which poisons the store).
                        if let Err(e) = inner.prepare_spare_segment() {
                            eprintln!("ringkv: warning: preparing a spare segment failed: {e}");
                        }
                        if let Err(e) = store.clean_to_keep_up(&mut segments_seen) {
                            eprintln!("ringkv: error: background cleaning failed: {e}");
                            return Err(e);
                        }
                    }
                })
                .expect("spawn the page store checkpoint thread")
        };
        BackgroundCheckpointer {
            stop,
            store: self.clone(),
            thread: Some(thread),
        }
    }
}

impl BackgroundCheckpointer {
    /// Stops the thread after a last checkpoint; returns the error that stopped it, if any.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        *self.stop.lock() = true;
        let (due, cv) = &self.store.inner.checkpoint_due;
        *due.lock() = true;
        cv.notify_all();
        match self.thread.take() {
            Some(t) => t.join().expect("page store checkpoint thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundCheckpointer {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// The wake-up flag of the background checkpointer.
pub(crate) type CheckpointDue = (Mutex<bool>, Condvar);
