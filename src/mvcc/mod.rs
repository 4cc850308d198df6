//! MVCC: etcd's multi-version key space (revisions, versions, tombstones, compaction) stored in
//! the page store's single ordered keyspace.
//!
//! # Model
//! A revision is `(main, sub)`. Every committed write transaction that changes something gets the
//! next `main`; its changes get `sub = 0, 1, 2, ...` in the order they were made. A transaction
//! that changes nothing (say, deleting absent keys) takes no revision. As in etcd, an empty store
//! is at revision 1, so the first write is revision 2, and the compacted revision starts at -1.
//! Each version of a key records `create_revision` (main revision of the put that created this
//! incarnation of the key), `mod_revision` (its own main revision), `version` (1 for the put that
//! created the key, +1 per put since) and `lease`. A delete writes a tombstone; the next put
//! starts a new incarnation: `version = 1`, `create_revision = ` its own revision.
//!
//! # Key encoding
//! MVCC's three tables share the page store's keyspace, told apart by the first byte. Integers
//! are 8-byte big-endian; revisions are never negative, so byte order is numeric order.
//!
//! ```text
//! meta      0x01 ‖ name                                   -> value
//!             "layout"         -> i64    this layout's version, 2 (see "Layout versions")
//!             "current_rev"    -> i64    revision of the latest committed write
//!             "compacted_rev"  -> i64    reads below it fail with `Compacted`
//!             "compact_job"    -> from i64 ‖ target i64 ‖ next main i64 ‖ next sub i64
//!                                          (present only while a physical compaction is due)
//! version   0x02 ‖ esc(key) ‖ 0x00 ‖ main ‖ sub           -> record
//!             record = 0x00 ‖ create_revision ‖ version ‖ lease ‖ value bytes   (a put)
//!                    | 0x01                                                     (a tombstone)
//! revision  0x03 ‖ main ‖ sub                             -> key (raw bytes)
//! ```
//!
//! First bytes from `FOREIGN_TABLE_MIN` (0x04) up belong to layers above MVCC, written in the
//! same page-store commits as the revisions they go with (`MvccBatch::put_foreign`):
//!
//! ```text
//! lease     0x04 ‖ id                                     -> granted TTL   (`src/lease/`)
//! aux       0x05 ‖ name                                   -> value   (small replicated state
//!             that is not keys, e.g. "alarms"; `MvccBatch::put_aux`, `Mvcc::aux`)
//! auth      0x06 ‖ sub ‖ name                             -> users, roles, flags (`src/auth/`)
//! ```
//!
//! `esc` maps each byte `b` of the key to `b + 1` if `b <= 0xFD`, to `0xFF 0x01` if `b = 0xFE`
//! and to `0xFF 0x02` if `b = 0xFF`; the terminator `0x00` follows. Keys that are mostly zero
//! bytes (etcdctl check perf pads its keys with 248 of them) therefore do not grow.
//! - *Ordered*: `esc` maps each byte to a code, and the codes are ordered as the bytes are
//!   (`0x01..=0xFE`, then `0xFF 0x01` < `0xFF 0x02`) and none is a prefix of another (a
//!   one-byte code is never `0xFF`). So for keys `a < b` differing first at byte `i`, `esc(a)`
//!   and `esc(b)` agree on the codes before `i` and the code of `b[i]` is greater at its first
//!   differing byte: `esc(a) ‖ x < esc(b) ‖ y` for any tails. If instead `a` is a proper prefix
//!   of `b`, `esc(a) ‖ 0x00` is followed in `esc(b)` by a code of at least `0x01`, so
//!   `esc(a) ‖ 0x00 ‖ rev < esc(b) ‖ 0x00 ‖ rev'`. Within a key, versions sort by revision.
//! - *Prefix-free*: `esc(key) ‖ 0x00` is the first `0x00` of the encoding, since no code
//!   contains `0x00`; so it delimits the key, `decode_version_key` inverts it, and
//!   `0x02 ‖ esc(key) ‖ 0x00` is a prefix of the versions of `key` and of no other key's.
//! - *Successor*: `0x02 ‖ esc(key) ‖ 0x01` is above every version of `key` (they continue the
//!   prefix with `0x00`) and at or below every version of every greater key (by the above,
//!   those either differ earlier and are greater there, or continue `esc(key)` with a code of at
//!   least `0x01`).
//!
//! Hence:
//! - the newest version of `key` at revision `r` is one `seek_le(0x02 ‖ esc(key) ‖ 0x00 ‖ r ‖
//!   i64::MAX)`: a read at any revision costs O(log n) whatever the key's history;
//! - a range visits keys, not versions: after a key, the next one starts at or after
//!   `0x02 ‖ esc(key) ‖ 0x01`, found with one seek;
//! - the revision table lists every stored version in commit order, which is what `changes`
//!   (watch replay) and physical compaction walk.
//!
//! The page store bounds key length (`PageStoreError::KeyTooLarge` from the real store), and a
//! version key is the user key plus 18 bytes plus one byte per 0xFE or 0xFF byte in it
//! (`version_key_len`); the API layer must reject longer keys before they reach a transaction.
//!
//! # Layout versions
//! `meta "layout"` names the encoding above; `Mvcc::open` and `Mvcc::replace_all` (a raft
//! snapshot from another member) refuse any other with `MvccError::Layout`, so data is never
//! misread. A store without the meta key holding no version-table entry is empty and gets the
//! key at open; one holding entries is layout 1.
//! - 1 (unversioned, before 2026-11-21): `esc` wrote `0x00` as `0x00 0xFF` and terminated with
//!   `0x00 0x00`, doubling the zero-padded keys of check perf.
//! - 2: the encoding above.
//!
//! A data dir of another layout moves through an etcd-format snapshot, which holds no MVCC
//! encoding: `etcdctl snapshot save` from a server on the old binary, then `ringkv snapshot
//! restore` (`src/snapshot/`) with this one.
//!
//! Every version has exactly one revision-table entry and vice versa; both are written and
//! deleted in the same page-store commit. `current_rev` is written in the commit of its
//! revision, `compacted_rev` in the commit that accepts a compaction.
//!
//! # Batches
//! Several main revisions may share one page-store commit (`Mvcc::batch`): each scope of the
//! batch is a write transaction of its own (its own main revision, reads that see the earlier
//! scopes), and the commit writes all their versions plus `current_rev` = the last one. So a
//! commit moves `current_rev` from `c` to `c + n` with every revision in between, or not at all:
//! a crash mid-batch leaves the previous commit. A scope that ends without changes takes no
//! revision; a scope can be rolled back (its writes are new keys only, so deleting them restores
//! the transaction exactly) and then takes none either.
//!
//! # Compaction protocol
//! `compact(R)` (etcd semantics: `R <= compacted` is `Compacted`, `R > current` is
//! `FutureRevision`) keeps, for every key, the newest version with `main <= R` and every newer
//! version; the kept one is dropped too if it is a tombstone older than `R` (a tombstone at
//! exactly `R` stays until a later compaction, as etcd's `keyIndex.compact` keeps it, so that
//! `changes(R, ..)` still reports that delete).
//! 1. Logical: one commit writes `compacted_rev = R` and `compact_job = (from, R, next)` where
//!    `from` is the last revision whose physical compaction completed. From this commit on,
//!    reads below `R` fail. If a job was already pending, the new one takes over its `from` and
//!    restarts the walk there (every deletion the old job made is also right for `R`).
//! 2. Physical, in batches of at most `MvccConfig::compaction_batch_entries` revision-table
//!    entries, one commit each, taking the writer lock only per batch so writers interleave.
//!    The walk covers revisions `max(from, 0) ..= R` in order. For an entry `e` of key `k`: if
//!    `e` is not `k`'s newest version at `R`, delete it; if it is, delete it when it is a
//!    tombstone older than `R`, and delete `k`'s single survivor of the previous compaction
//!    (its newest version at `from`) if that is older than `e`. The batch's commit advances
//!    `compact_job.next`; the last one deletes `compact_job`.
//!
//! Older versions are deleted before newer ones and a deleted tombstone goes in the same commit
//! as the survivor it shadows, so after any batch a read at a revision `>= R` sees what it saw
//! before: a crash between batches is safe, and `Mvcc::open` finishes a pending job. Space is
//! then reclaimed by the page store's cleaner: `compact` makes one bounded `PageStore::clean`
//! call when the physical work ends; the server is expected to keep calling `clean` when idle.
//!
//! # Concurrency
//! One writer at a time (an MVCC writer mutex wrapping the page store's write transaction, held
//! for a whole batch, so compaction steps run between batches, never inside one); readers work
//! on pinned page-store snapshots and never block writers or each other. The in-memory current
//! revision moves only after the commit that made it durable, so readers never see part of a
//! batch nor a revision above the durable state. A reader
//! loads the current revision before pinning its snapshot (so the snapshot holds everything up
//! to it) and the compacted revision after (so data a compaction already deleted from the
//! snapshot is never read below the compacted revision).

mod compaction;
mod encoding;
mod export;
mod range;
mod replace;
mod txn;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::page_store::{PageStore, PageStoreError, Snapshot};

pub use encoding::version_key_len;
use encoding::{
    decode_i64, decode_revision_key, decode_version_key, encode_i64, revision_key, Record,
    LAYOUT_VERSION, META_COMPACTED_REV, META_COMPACT_JOB, META_CURRENT_REV, META_LAYOUT,
    TABLE_REVISION, TABLE_VERSION,
};
pub use export::{ExportView, ExportedVersion, Importer};
pub use range::prefix_end;
use range::KeyRange;
pub use txn::{BatchTxn, MvccBatch, MvccTxn};

/// The lowest first byte of a table MVCC does not own (see the key encoding).
pub const FOREIGN_TABLE_MIN: u8 = encoding::TABLE_REVISION + 1;

/// Errors of the MVCC layer. The first two are expected answers; their messages are etcd's.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// The store (or a raft snapshot's records) uses a key layout this build cannot read.
    #[error(
        "mvcc: the data uses key layout {found}, this ringkv reads only layout {expected} \
         (layout 1 is from a ringkv before 2026-11-21); move it with `etcdctl snapshot save` \
         against the old binary and `ringkv snapshot restore` with this one"
    )]
    Layout { found: i64, expected: i64 },
    /// I/O failure or corruption below; the store should be reopened.
    #[error(transparent)]
    Store(#[from] PageStoreError),
}

pub type Result<T> = std::result::Result<T, MvccError>;

/// A point in the store's history: `main` counts write transactions, `sub` orders the changes
/// within one. Orders by `main`, then `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const MAX: Revision = Revision {
        main: i64::MAX,
        sub: i64::MAX,
    };
}

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// 1 for the put that created the key, +1 per later put; reset by a delete.
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// The fields of etcd's `RangeRequest` other than the key interval; zero values mean "none".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Maximum kvs returned; `<= 0` for no limit.
    pub limit: i64,
    /// Revision to read at; `<= 0` for the current one.
    pub rev: i64,
    pub keys_only: bool,
    pub count_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// etcd's `RangeResponse` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys alive in the range at the read revision, regardless of limit and revision filters.
    pub count: i64,
    /// Whether kvs were cut at the limit.
    pub more: bool,
    /// The store's current revision when the read started (etcd's header revision), not the
    /// revision read at.
    pub rev: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it. A delete's kv carries only `key` and `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// Limits of the MVCC layer.
#[derive(Debug, Clone)]
pub struct MvccConfig {
    /// Revision-table entries examined per physical compaction commit (etcd: 1000 keys).
    pub compaction_batch_entries: usize,
    /// Segments `compact` asks the page store's cleaner to reclaim when it finishes.
    pub clean_segments_after_compaction: usize,
}

impl Default for MvccConfig {
    fn default() -> Self {
        MvccConfig {
            compaction_batch_entries: 1000,
            clean_segments_after_compaction: 4,
        }
    }
}

/// Handle to the key space. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Mvcc {
    inner: Arc<Inner>,
}

struct Inner {
    store: PageStore,
    config: MvccConfig,
    /// Revision of the latest committed write; changes only under `writer`, after the commit.
    current_rev: AtomicI64,
    /// Changes only under `writer`, after the commit that makes it durable and before any
    /// commit that deletes what it makes unreachable.
    compacted_rev: AtomicI64,
    writer: Mutex<()>,
}

/// A reader's consistent view: everything up to `current` is in `snap`, and nothing below
/// `compacted` may be read from it.
struct ReadView {
    current: i64,
    snap: Snapshot,
    compacted: i64,
}

/// What `check_layout` found in a store of this layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayoutCheck {
    Marked,
    /// No layout key and no version: an empty store (or one with only foreign tables).
    Unmarked,
}

/// The layout rule of the module doc, given a store's `meta "layout"` value and whether it
/// holds any version-table entry.
fn check_layout(layout: Option<&[u8]>, has_versions: bool) -> Result<LayoutCheck> {
    let found = match layout {
        Some(v) if v.len() == 8 => decode_i64(v),
        // Nothing any layout writes: reported as unknown, not a panic.
        Some(_) => -1,
        None if has_versions => 1,
        None => return Ok(LayoutCheck::Unmarked),
    };
    if found != LAYOUT_VERSION {
        return Err(MvccError::Layout {
            found,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(LayoutCheck::Marked)
}

/// etcd's `rangeKeys` revision checks, in its order: the revision to read at.
fn check_read_rev(rev: i64, current: i64, compacted: i64) -> Result<i64> {
    if rev > current {
        return Err(MvccError::FutureRevision);
    }
    let rev = if rev <= 0 { current } else { rev };
    if rev < compacted {
        return Err(MvccError::Compacted);
    }
    Ok(rev)
}

impl Mvcc {
    pub fn open(store: PageStore) -> Result<Mvcc> {
        Mvcc::open_with(store, MvccConfig::default())
    }

    /// Opens the key space in `store` (an empty store is a key space at revision 1) and finishes
    /// any physical compaction a crash interrupted. `Layout` if the store has another layout.
    pub fn open_with(store: PageStore, config: MvccConfig) -> Result<Mvcc> {
        assert!(config.compaction_batch_entries > 0);
        let snap = store.snapshot();
        let has_versions = snap
            .range(&[TABLE_VERSION], Some(&[TABLE_VERSION + 1][..]))
            .next()
            .transpose()?
            .is_some();
        let layout = snap.get(META_LAYOUT)?;
        drop(snap);
        if check_layout(layout.as_deref(), has_versions)? == LayoutCheck::Unmarked {
            let mut txn = store.begin_write();
            txn.put(META_LAYOUT, &encode_i64(LAYOUT_VERSION))?;
            txn.commit(store.consistent_index())?;
        }
        let snap = store.snapshot();
        let current = snap.get(META_CURRENT_REV)?.map_or(1, |v| decode_i64(&v));
        let compacted = snap.get(META_COMPACTED_REV)?.map_or(-1, |v| decode_i64(&v));
        assert!(
            current >= 1 && compacted <= current,
            "meta: current {current}, compacted {compacted}"
        );
        drop(snap);
        let mvcc = Mvcc {
            inner: Arc::new(Inner {
                store,
                config,
                current_rev: AtomicI64::new(current),
                compacted_rev: AtomicI64::new(compacted),
                writer: Mutex::new(()),
            }),
        };
        while !mvcc.compact_step()? {}
        Ok(mvcc)
    }

    pub fn current_revision(&self) -> i64 {
        self.inner.current_rev.load(Ordering::Acquire)
    }

    pub fn compacted_revision(&self) -> i64 {
        self.inner.compacted_rev.load(Ordering::Acquire)
    }

    /// The page store underneath, for its consistent index, space figures and cleaner.
    pub fn page_store(&self) -> &PageStore {
        &self.inner.store
    }

    fn read_view(&self) -> ReadView {
        let current = self.inner.current_rev.load(Ordering::Acquire);
        let snap = self.inner.store.snapshot();
        let compacted = self.inner.compacted_rev.load(Ordering::Acquire);
        ReadView {
            current,
            snap,
            compacted,
        }
    }

    /// etcd's `Range`: `range_end` empty for the single `key`, `"\0"` for every key `>= key`,
    /// otherwise the keys in `[key, range_end)`.
    pub fn range(&self, key: &[u8], range_end: &[u8], opts: &RangeOptions) -> Result<RangeResult> {
        let view = self.read_view();
        let rev = check_read_rev(opts.rev, view.current, view.compacted)?;
        let range = KeyRange::new(key, range_end);
        let alive = view::AliveKeys::new(&view.snap, &range, rev);
        let (kvs, count) = range::collect(alive, range::fetch_limit(opts), opts.count_only)?;
        Ok(range::finish(kvs, count, view.current, opts))
    }

    /// Starts the write transaction; every change in it gets the same main revision. Blocks
    /// while another write transaction or compaction batch is open on this thread or another,
    /// so do not call `compact` or `write` while holding one.
    pub fn write(&self) -> MvccTxn<'_> {
        MvccTxn::begin(&self.inner)
    }

    /// Starts a batch: successive write transactions (`MvccBatch::txn`), each its own main
    /// revision as if written and committed alone, made durable and visible together by one
    /// page-store commit (`MvccBatch::finish`). Blocks as `write` does.
    pub fn batch(&self) -> MvccBatch<'_> {
        MvccBatch::begin(&self.inner)
    }

    /// Every stored change with `from_rev <= main <= to_rev`, in revision order; `to_rev <= 0`
    /// or beyond the current revision means up to the current one. `from_rev` below the
    /// compacted revision is `Compacted` (at exactly the compacted revision, only the changes
    /// compaction kept are reported, as in etcd).
    pub fn changes(&self, from_rev: i64, to_rev: i64) -> Result<Vec<Event>> {
        let view = self.read_view();
        if from_rev < view.compacted {
            return Err(MvccError::Compacted);
        }
        let to = if to_rev <= 0 || to_rev > view.current {
            view.current
        } else {
            to_rev
        };
        let from = from_rev.max(0);
        let mut events = Vec::new();
        if from > to {
            return Ok(events);
        }
        let start = revision_key(Revision { main: from, sub: 0 });
        let end = revision_key(Revision {
            main: to + 1,
            sub: 0,
        });
        for entry in view.snap.range(&start, Some(&end)) {
            let (rk, key) = entry?;
            let rev = decode_revision_key(&rk);
            let record = view.snap.get(&encoding::version_key(&key, rev))?;
            let record = Record::decode(&record.expect("revision entry without its version"));
            let event = match record.into_kv(key.clone(), rev.main) {
                Some(kv) => Event {
                    kind: EventKind::Put,
                    kv,
                },
                None => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        mod_revision: rev.main,
                        ..KeyValue::default()
                    },
                },
            };
            events.push(event);
        }
        Ok(events)
    }

    /// Calls `f` on every kv alive at the current revision, ascending by key, and returns that
    /// revision. One pass over each live key's newest version (seeks skip older ones): what the
    /// lessor costs at open to rebuild which keys each lease holds.
    pub fn for_each_alive(&self, mut f: impl FnMut(KeyValue)) -> Result<i64> {
        let view = self.read_view();
        let range = KeyRange::new(b"", b"\x00");
        for kv in view::AliveKeys::new(&view.snap, &range, view.current) {
            f(kv?);
        }
        Ok(view.current)
    }

    /// Verifies the page store and MVCC's own invariants: version and revision tables mirror
    /// each other, nothing is newer than the current revision, and (with no compaction pending)
    /// every key has at most one version at or below the compacted revision, never a tombstone
    /// older than it. O(n); for tests and offline checks.
    pub fn check_integrity(&self) -> Result<()> {
        let _writer = self.inner.writer.lock();
        self.inner.store.check_integrity()?;
        let view = self.read_view();
        let snap = &view.snap;
        let mut versions = BTreeSet::new();
        let mut below_compacted: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let job_pending = snap.get(META_COMPACT_JOB)?.is_some();
        for entry in snap.range(&[TABLE_VERSION], Some(&[TABLE_VERSION + 1][..])) {
            let (k, v) = entry?;
            let (key, rev) = decode_version_key(&k);
            let record = Record::decode(&v);
            assert!(
                rev.main >= 2 && rev.main <= view.current,
                "version {rev:?} of {key:x?}"
            );
            if rev.main <= view.compacted && !job_pending {
                assert!(
                    !(record.is_tombstone() && rev.main < view.compacted),
                    "tombstone {rev:?} of {key:x?} survived compaction at {}",
                    view.compacted
                );
                let n = below_compacted.entry(key.clone()).or_default();
                *n += 1;
                assert_eq!(
                    *n, 1,
                    "two versions of {key:x?} at or below the compacted revision"
                );
            }
            versions.insert((rev, key));
        }
        let mut revisions = BTreeSet::new();
        for entry in snap.range(&[TABLE_REVISION], Some(&[TABLE_REVISION + 1][..])) {
            let (k, key) = entry?;
            revisions.insert((decode_revision_key(&k), key));
        }
        assert!(versions == revisions, "version and revision tables differ");
        Ok(())
    }
}
