//! `check_integrity`: reads every page the latest root reaches straight from disk and checks
//! checksums, B+tree invariants, overflow extents, and the live-byte accounting.

use std::collections::HashMap;

use super::format::{
    check_segment_header, extent_pages, offset_of, segment_of, PAGE_BYTES, SUPERBLOCK_FILE,
};
use super::node::ValRef;
use super::store::Inner;
use super::{PageStoreError, Result};

struct Walk {
    generation: u64,
    live: HashMap<u32, u64>,
    entries: u64,
}

impl Inner {
    pub fn check_integrity(&self) -> Result<()> {
        let _cleaner = self.cleaner.lock();
        let mut cp = self.checkpoint.lock();
        let mut ws = self.writer.lock();
        // What is checked is read from disk: make all of it durable first.
        self.checkpoint_locked(&mut cp, &mut ws)?;
        let c = self.committed.lock().clone();
        let mut walk = Walk {
            generation: c.generation,
            live: HashMap::new(),
            entries: 0,
        };
        if c.root == 0 {
            self.expect(c.height == 0, 0, "empty tree with a nonzero height")?;
        } else {
            self.expect(c.height >= 1, 0, "a root with height 0")?;
            self.check_node(c.root, c.height - 1, None, None, true, &mut walk)?;
        }
        self.expect(
            walk.entries == c.entries,
            0,
            &format!(
                "{} entries reachable, superblock says {}",
                walk.entries, c.entries
            ),
        )?;
        let segs = self.segments.read();
        for &seg in walk.live.keys() {
            let Some(s) = segs.get(&seg) else {
                return Err(self.corruption(seg, 0, "the root reaches a deleted segment"));
            };
            let mut header = vec![0u8; PAGE_BYTES];
            s.file.read_exact_at(&mut header, 0)?;
            check_segment_header(&header, seg).map_err(|d| self.corruption(seg, 0, d))?;
        }
        for (&seg, s) in segs.iter() {
            let reached = walk.live.get(&seg).copied().unwrap_or(0);
            if reached != s.live_bytes {
                return Err(self.corruption(
                    seg,
                    0,
                    format!(
                        "live-byte accounting says {} bytes, the root reaches {reached}",
                        s.live_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    fn expect(&self, ok: bool, offset: u64, detail: &str) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(PageStoreError::Corruption {
                file: self.disk.path_of(SUPERBLOCK_FILE),
                offset,
                detail: detail.to_string(),
            })
        }
    }

    /// Checks the subtree at `id`, whose keys must lie in `[lo, hi)` (the fences its ancestors'
    /// separators set).
    fn check_node(
        &self,
        id: u64,
        level: u32,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        is_root: bool,
        walk: &mut Walk,
    ) -> Result<()> {
        let page = self.read_page_uncached(id)?;
        let bad = |d: String| Err(self.corruption(segment_of(id), offset_of(id), d));
        *walk.live.entry(segment_of(id)).or_default() += PAGE_BYTES as u64;
        if u32::from(page.level()) != level {
            return bad(format!(
                "page at level {} where {level} belongs",
                page.level()
            ));
        }
        if page.header.generation > walk.generation {
            return bad(format!(
                "page of generation {} under root of generation {}",
                page.header.generation, walk.generation
            ));
        }
        let in_fences = |k: &[u8]| lo.is_none_or(|l| k >= l) && hi.is_none_or(|h| k < h);
        if page.is_leaf() {
            if page.len() == 0 {
                return bad("empty leaf".into());
            }
            for i in 0..page.len() {
                let key = page.key(i);
                if !in_fences(key) {
                    return bad(format!("leaf key {i} outside its parent's fences"));
                }
                if i > 0 && page.key(i - 1) >= key {
                    return bad(format!("leaf keys {} and {i} out of order", i - 1));
                }
                if let ValRef::Overflow { id: ext, len } = page.value(i) {
                    self.read_value(key, ext, len)?;
                    let pages = extent_pages(key.len(), len as usize);
                    *walk.live.entry(segment_of(ext)).or_default() +=
                        u64::from(pages) * PAGE_BYTES as u64;
                }
            }
            walk.entries += page.len() as u64;
            return Ok(());
        }
        if is_root && page.len() < 2 {
            return bad("root branch with fewer than two children".into());
        }
        for i in 0..page.seps() {
            let sep = page.sep(i);
            if !in_fences(sep) || lo.is_some_and(|l| sep <= l) {
                return bad(format!("separator {i} outside its parent's fences"));
            }
            if i > 0 && page.sep(i - 1) >= sep {
                return bad(format!("separators {} and {i} out of order", i - 1));
            }
        }
        for i in 0..page.len() {
            let child_lo = if i == 0 { lo } else { Some(page.sep(i - 1)) };
            let child_hi = if i == page.seps() {
                hi
            } else {
                Some(page.sep(i))
            };
            self.check_node(page.child(i), level - 1, child_lo, child_hi, false, walk)?;
        }
        Ok(())
    }
}
