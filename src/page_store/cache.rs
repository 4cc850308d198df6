//! The page cache: verified tree pages by page id, bounded in bytes, evicted by CLOCK. Sharded
//! so that readers on different cores rarely meet on a lock; a lock is held only for a map
//! lookup or insert, never across I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::node::Page;

const SHARDS_MAX: usize = 16;
/// A shard holds at least this much, so a small cache is fewer shards, not useless ones.
const SHARD_BYTES_MIN: usize = 64 << 10;

pub struct PageCache {
    shards: Vec<Mutex<Shard>>,
    shard_bytes_max: usize,
}

#[derive(Default)]
struct Shard {
    /// Page and its CLOCK reference bit.
    pages: HashMap<u64, (Arc<Page>, bool)>,
    clock: VecDeque<u64>,
    /// Sum of `mem_bytes` of `pages`. Invariant: `<= shard_bytes_max` after every insert
    /// (unless a single page is larger, which cannot happen for tree pages).
    bytes: usize,
}

impl PageCache {
    pub fn new(cache_bytes: usize) -> PageCache {
        let shards = (cache_bytes / SHARD_BYTES_MIN).clamp(1, SHARDS_MAX);
        PageCache {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            shard_bytes_max: cache_bytes / shards,
        }
    }

    fn shard(&self, id: u64) -> &Mutex<Shard> {
        // Fibonacci hashing: consecutive page ids spread over shards.
        let h = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.shards[h as usize % self.shards.len()]
    }

    pub fn get(&self, id: u64) -> Option<Arc<Page>> {
        let mut shard = self.shard(id).lock();
        shard.pages.get_mut(&id).map(|(page, referenced)| {
            *referenced = true;
            page.clone()
        })
    }

    pub fn insert(&self, page: Arc<Page>) {
        let id = page.id();
        let size = page.mem_bytes();
        let mut shard = self.shard(id).lock();
        if shard.pages.contains_key(&id) {
            return;
        }
        shard.pages.insert(id, (page, false));
        shard.clock.push_back(id);
        shard.bytes += size;
        // Each pass over the clock clears reference bits, so this ends within two passes.
        while shard.bytes > self.shard_bytes_max {
            let Some(victim) = shard.clock.pop_front() else {
                break;
            };
            let entry = shard
                .pages
                .get_mut(&victim)
                .expect("clock names a cached page");
            if entry.1 {
                entry.1 = false;
                shard.clock.push_back(victim);
            } else {
                let (page, _) = shard.pages.remove(&victim).unwrap();
                shard.bytes -= page.mem_bytes();
            }
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_store::format::page_id;
    use crate::page_store::node::{encode_leaf, Val};

    fn page(index: u32) -> Arc<Page> {
        let id = page_id(1, index);
        let bytes = encode_leaf(&[(b"k".to_vec(), Val::Inline(vec![1]))], id, 1);
        Arc::new(Page::decode(bytes.into(), id).unwrap())
    }

    #[test]
    fn the_cache_stays_within_its_bound_and_keeps_referenced_pages() {
        let cache = PageCache::new(256 << 10);
        cache.insert(page(0));
        for i in 1..1000 {
            assert!(cache.get(page_id(1, 0)).is_some(), "a hot page survives");
            cache.insert(page(i));
            assert!(cache.bytes() <= 256 << 10);
        }
        assert!(cache.bytes() > 128 << 10, "the cache is used");
    }
}
