//! The cleaner: moves the live pages out of mostly-dead segments so that whole segments can be
//! deleted. See "Reclamation" in the module doc.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::format::{open_page, page_id, Kind, PAGE_BYTES};
use super::node::{Page, Val};
use super::store::Inner;
use super::tree::Tree;
use super::{CleanReport, DiskFile, PageStore, Result};

/// A page or extent found in a victim segment, with what it takes to find its parent.
enum Found {
    /// A tree page at `level` whose range holds `key`.
    Node { id: u64, level: u8, key: Vec<u8> },
    /// An overflow extent of `pages` pages owned by `key`, with the value it holds.
    Extent {
        id: u64,
        pages: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

impl Inner {
    pub fn clean(&self, max_segments: usize) -> Result<CleanReport> {
        let _cleaner = self.cleaner.lock();
        let victims = self.pick_victims(max_segments);
        let mut report = CleanReport {
            segments_cleaned: victims.len() as u64,
            ..CleanReport::default()
        };
        // One victim per publish: the writer lock is held to relocate one segment's live pages
        // (at most a segment's worth), not a whole step's, so writers wait less.
        for (seg, file, pages) in &victims {
            // Read without the writer lock: the victim is sealed, so nothing changes it.
            let found = self.scan_segment(*seg, &**file, *pages)?;
            let mut ws = self.writer.lock();
            let (mut tree, consistent_index) = {
                let c = self.committed.lock();
                (Tree::new(c.root, c.height, c.entries), c.consistent_index)
            };
            for f in found {
                report.pages_moved += u64::from(self.relocate(&mut tree, f)?);
            }
            report.bytes_freed += self.publish(&mut ws, tree, consistent_index)?;
            let segs = self.segments.read();
            if let Some(s) = segs.get(seg).filter(|s| s.live_bytes != 0) {
                return Err(self.corruption(
                    *seg,
                    0,
                    format!(
                        "{} live bytes left after cleaning: a live page failed its checks",
                        s.live_bytes
                    ),
                ));
            }
        }
        // The victims are deleted once a durable root no longer reaches them: checkpoint now
        // rather than hold their space until the next one.
        report.bytes_freed += self.checkpoint()?;
        report.bytes_freed += self.reclaim_dead(&mut self.writer.lock())?;
        Ok(report)
    }

    /// Sealed segments below the live threshold, least live first. A segment with live pages
    /// no checkpoint has written yet is skipped: scanning reads the segment from disk.
    fn pick_victims(&self, max_segments: usize) -> Vec<(u32, Arc<dyn DiskFile>, u32)> {
        let pct = u64::from(self.config.clean_live_percent_max);
        let _writer = self.writer.lock();
        let pending = self.pending.lock();
        let segs = self.segments.read();
        let mut candidates: Vec<_> = segs
            .iter()
            .filter(|(&id, s)| {
                s.sealed
                    && s.dead_since.is_none()
                    && s.live_bytes * 100 < s.file_bytes * pct
                    && !pending.has_live_in(id)
            })
            .map(|(&id, s)| (s.live_bytes * 1000 / s.file_bytes.max(1), id))
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .take(max_segments)
            .map(|(_, id)| (id, segs[&id].file.clone(), segs[&id].pages))
            .collect()
    }

    /// Every intact page or extent in a segment. Pages that fail their checks are skipped: they
    /// are torn or junk past a crash, or, if live, the accounting check after the move reports
    /// them.
    fn scan_segment(&self, seg: u32, file: &dyn DiskFile, pages: u32) -> Result<Vec<Found>> {
        let len = file.len()?.min(u64::from(pages) * PAGE_BYTES as u64);
        let pages = (len / PAGE_BYTES as u64) as u32;
        let mut buf = vec![0u8; pages as usize * PAGE_BYTES];
        file.read_exact_at(&mut buf, 0)?;
        let mut found = Vec::new();
        let mut index = 1;
        while index < pages {
            let id = page_id(seg, index);
            let at = index as usize * PAGE_BYTES;
            let page = &buf[at..at + PAGE_BYTES];
            index += 1;
            let Ok(header) = open_page(page, id) else {
                continue;
            };
            match header.kind {
                Kind::Leaf | Kind::Branch => {
                    let Ok(node) = Page::decode(page.into(), id) else {
                        continue;
                    };
                    if let Some(key) = self.locator(&node) {
                        found.push(Found::Node {
                            id,
                            level: node.level(),
                            key,
                        });
                    }
                }
                Kind::OverflowHead => {
                    let n = header.extent;
                    let end = (index - 1 + n) as usize * PAGE_BYTES;
                    if n == 0 || end > buf.len() {
                        continue;
                    }
                    if let Ok((key, value)) = self.decode_extent(id, &buf[at..end]) {
                        found.push(Found::Extent {
                            id,
                            pages: n,
                            key,
                            value,
                        });
                        index += n - 1;
                    }
                }
                Kind::OverflowTail | Kind::Segment => {}
            }
        }
        Ok(found)
    }

    /// A key inside the page's range: a leaf's first key, a branch's first separator, or for a
    /// branch with one child, its child's locator. `None` if there is none to find (an empty
    /// leaf, or a child that is gone because the page is long dead).
    fn locator(&self, page: &Page) -> Option<Vec<u8>> {
        if page.is_leaf() {
            (page.len() > 0).then(|| page.key(0).to_vec())
        } else if page.seps() > 0 {
            Some(page.sep(0).to_vec())
        } else {
            let child = self.read_page(page.child(0)).ok()?;
            self.locator(&child)
        }
    }

    /// Copies a found page out of its segment if the current tree still reaches it; returns
    /// the pages moved.
    fn relocate(&self, tree: &mut Tree, found: Found) -> Result<u32> {
        match found {
            Found::Node { id, level, key } => {
                if tree.clean_id_at(self, &key, level)? != Some(id) {
                    return Ok(0);
                }
                tree.dirty_path(self, &key, level)?;
                Ok(1)
            }
            Found::Extent {
                id,
                pages,
                key,
                value,
            } => match tree.get(self, &key)? {
                Some(Val::Overflow { id: current, .. }) if current == id => {
                    tree.put(self, &key, Val::Pending(Arc::new(value)))?;
                    Ok(pages)
                }
                _ => Ok(0),
            },
        }
    }
}

/// A thread that runs `clean(max_segments)` every `interval` until stopped or dropped. It
/// stops early at the first error (a poisoned store, an I/O error, corruption), which `stop`
/// returns.
pub struct BackgroundCleaner {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<Result<CleanReport>>>,
}

impl PageStore {
    /// Starts a background cleaner on its own thread.
    pub fn spawn_cleaner(&self, interval: Duration, max_segments: usize) -> BackgroundCleaner {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let (store, stop) = (self.clone(), stop.clone());
            std::thread::Builder::new()
                .name("page-store-cleaner".into())
                .spawn(move || {
                    let mut total = CleanReport::default();
                    loop {
                        {
                            let mut stopped = stop.0.lock();
                            if !*stopped {
                                stop.1.wait_for(&mut stopped, interval);
                            }
                            if *stopped {
                                return Ok(total);
                            }
                        }
                        let r = store.clean(max_segments)?;
                        total.segments_cleaned += r.segments_cleaned;
                        total.pages_moved += r.pages_moved;
                        total.bytes_freed += r.bytes_freed;
                    }
                })
                .expect("spawn the page store cleaner thread")
        };
        BackgroundCleaner {
            stop,
            thread: Some(thread),
        }
    }
}

impl BackgroundCleaner {
    /// Stops the thread and returns what it did in total, or the error that stopped it.
    pub fn stop(mut self) -> Result<CleanReport> {
        self.halt()
    }

    fn halt(&mut self) -> Result<CleanReport> {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        match self.thread.take() {
            Some(t) => t.join().expect("page store cleaner thread panicked"),
            None => Ok(CleanReport::default()),
        }
    }
}

impl Drop for BackgroundCleaner {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
