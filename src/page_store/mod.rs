//! Page store: an ordered, durable byte-key → byte-value store with pinned snapshots.
//!
//! PLACEHOLDER: this file fixes the public API that `mvcc` builds on. Its body is an in-memory
//! map so that the layers above can be written in parallel; the log-structured implementation
//! (segments, copy-on-write B+tree, superblock, cache, cleaner) replaces the body and keeps every
//! signature below. Nothing may ship while this placeholder is in place.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};

pub mod disk;

pub use disk::{DirDisk, Disk, DiskFile, SimDisk};

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
}

pub type Result<T> = std::result::Result<T, PageStoreError>;

/// Tunables; see `tuning/` for the profiles that set them.
#[derive(Debug, Clone)]
pub struct PageStoreConfig {
    /// Upper bound on memory held by cached pages.
    pub cache_bytes: usize,
}

impl Default for PageStoreConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 256 << 20,
        }
    }
}

/// Disk usage figures, for quota, `Status.dbSize`/`dbSizeInUse`, and the cleaner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Bytes of all files the store holds on disk.
    pub file_bytes: u64,
    /// Bytes of pages reachable from the latest root or a pinned snapshot.
    pub live_bytes: u64,
}

/// What one bounded cleaner step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_cleaned: u64,
    pub pages_moved: u64,
    pub bytes_freed: u64,
}

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

struct Committed {
    map: Arc<Map>,
    consistent_index: u64,
}

/// Handle to an open store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct PageStore {
    inner: Arc<Inner>,
}

struct Inner {
    #[allow(dead_code)]
    disk: Arc<dyn Disk>,
    committed: RwLock<Committed>,
    writer: Mutex<()>,
}

impl PageStore {
    /// Opens (creating if absent) the store in `dir`, recovering the latest durable root.
    pub fn open(dir: impl AsRef<Path>, config: PageStoreConfig) -> Result<PageStore> {
        let disk = DirDisk::new(dir.as_ref())?;
        PageStore::open_on(Arc::new(disk), config)
    }

    /// Opens the store on any `Disk`; crash tests pass a `SimDisk` or its `crash_image`.
    pub fn open_on(disk: Arc<dyn Disk>, _config: PageStoreConfig) -> Result<PageStore> {
        Ok(PageStore {
            inner: Arc::new(Inner {
                disk,
                committed: RwLock::new(Committed {
                    map: Arc::new(Map::new()),
                    consistent_index: 0,
                }),
                writer: Mutex::new(()),
            }),
        })
    }

    /// Starts the single write transaction; a second caller blocks until the first ends.
    /// Readers (snapshots) never block on it.
    pub fn begin_write(&self) -> WriteTxn<'_> {
        let guard = self.inner.writer.lock();
        let base = self.inner.committed.read().map.clone();
        WriteTxn {
            store: self,
            _guard: guard,
            map: (*base).clone(),
        }
    }

    /// Pins the latest committed root: a consistent point-in-time view that later commits and
    /// the cleaner never change. Unpinned on drop.
    pub fn snapshot(&self) -> Snapshot {
        let c = self.inner.committed.read();
        Snapshot {
            map: c.map.clone(),
            consistent_index: c.consistent_index,
        }
    }

    /// The consistent index recorded by the latest durable commit.
    pub fn consistent_index(&self) -> u64 {
        self.inner.committed.read().consistent_index
    }

    /// One bounded step of space reclamation; never blocks readers or the writer for long.
    pub fn clean(&self, _max_segments: usize) -> Result<CleanReport> {
        Ok(CleanReport::default())
    }

    pub fn space(&self) -> SpaceStats {
        SpaceStats::default()
    }

    /// Reads every reachable page and verifies every checksum and tree invariant.
    pub fn check_integrity(&self) -> Result<()> {
        Ok(())
    }
}

/// The single writer's transaction. Dropping it without `commit` discards its changes.
pub struct WriteTxn<'a> {
    store: &'a PageStore,
    _guard: MutexGuard<'a, ()>,
    map: Map,
}

impl WriteTxn<'_> {
    /// Reads through this transaction's own uncommitted writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.map.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    /// Returns whether the key existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.map.remove(key).is_some())
    }

    /// Makes every change durable (pages, then the root that points at them) and visible to new
    /// snapshots, recording `consistent_index` atomically with them. Returns after fdatasync.
    pub fn commit(self, consistent_index: u64) -> Result<()> {
        let mut c = self.store.inner.committed.write();
        c.map = Arc::new(self.map);
        c.consistent_index = consistent_index;
        Ok(())
    }
}

/// A pinned, immutable view. `Clone + Send + Sync`; clones share the pin.
#[derive(Clone)]
pub struct Snapshot {
    map: Arc<Map>,
    consistent_index: u64,
}

impl Snapshot {
    pub fn consistent_index(&self) -> u64 {
        self.consistent_index
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }

    /// The greatest entry whose key is `<= key`.
    pub fn seek_le(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .map
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    /// Entries with `start <= key < end` (`end = None`: to the last key), in ascending key order.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> RangeIter {
        let upper = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
        let items: Vec<_> = if upper_before(start, end) {
            Vec::new()
        } else {
            self.map
                .range((Bound::Included(start.to_vec()), upper))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        RangeIter {
            items: items.into_iter(),
        }
    }
}

fn upper_before(start: &[u8], end: Option<&[u8]>) -> bool {
    end.is_some_and(|e| e <= start)
}

/// Ascending iterator over a snapshot; holds the snapshot's pin while alive.
pub struct RangeIter {
    items: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
}

impl Iterator for RangeIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.items.next().map(Ok)
    }
}
