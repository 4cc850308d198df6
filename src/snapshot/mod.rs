//! Snapshots in etcd's format: `Maintenance.Snapshot` streams the key space as a **bbolt
//! database image** (what etcd's backend is, so `etcdctl snapshot status` and `etcdctl snapshot
//! restore` read it), `ringkv snapshot status|restore` read such a file (ours or etcd's), and the
//! `Hash`/`HashKV` checksums are computed over the same bucket contents etcd hashes.
//!
//! # etcd's content (buckets of the image)
//!
//! ```text
//! alarm            marshaled etcdserverpb.AlarmMember -> ""            (raised alarms)
//! auth, authRoles, authUsers                         users, roles, the enabled flag (auth::AuthBuckets)
//! lease            id i64 BE -> marshaled leasepb.Lease { 1: ID, 2: TTL (granted), 3: RemainingTTL }
//!                  (RemainingTTL is 0: ringkv keeps no checkpointed remaining TTL)
//! cluster, members, members_removed                  (empty here)
//! key              main u64 BE ‖ '_' ‖ sub u64 BE [‖ 't' for a delete] -> marshaled mvccpb.KeyValue
//!                  (a delete's KeyValue holds only the key), in revision order
//! meta             "consistent_index"    -> u64 BE
//!                  "finishedCompactRev"  -> revision bytes (main ‖ '_' ‖ 0), once compacted
//!                  "scheduledCompactRev" -> revision bytes, once compacted
//! ```
//! A stream ends with a 32-byte trailer: the SHA-256 of every byte before it, which `snapshot
//! restore` checks (a file whose size is 32 more than a multiple of 512 carries one).
//!
//! # bbolt's file format (what `bolt.rs` writes and reads)
//!
//! Pages of `page_size` bytes (4096 here), little-endian integers. A page is addressed by its
//! index (pgid); a node bigger than a page takes `overflow` more pages right after it.
//!
//! ```text
//! page header (16)   | id u64 | flags u16 (1 branch, 2 leaf, 4 meta, 0x10 freelist) | count u16 | overflow u32 |
//! meta (at 16, 64)   | magic 0xED0CDAED u32 | version 2 u32 | page_size u32 | flags u32 |
//!                    | root bucket: root pgid u64, sequence u64 | freelist pgid u64 |
//!                    | pgid (pages in the file) u64 | txid u64 | checksum u64 (FNV-1a 64 of the 56 bytes before) |
//! leaf element (16)  | flags u32 (1: the value is a bucket) | pos u32 | ksize u32 | vsize u32 |
//! branch element (16)| pos u32 | ksize u32 | child pgid u64 |
//! ```
//! `pos` counts from the element's own first byte to its key; a leaf's value follows its key.
//! A branch element's key is the first key of its child. A bucket is a leaf element of its
//! parent (the root bucket's tree holds the top-level buckets) whose value is a 16-byte header
//! `root pgid u64, sequence u64`; root 0 means an inline bucket whose leaf page follows the
//! header inside the value. Pages 0 and 1 are metas (the valid one with the higher txid wins),
//! and every page below the meta's pgid must be reachable or on the freelist.
//!
//! Layout of an image written here: page 0 and 1 metas (txids 2 and 1, otherwise equal), 2 an
//! empty freelist, 3 the root bucket's leaf, then each bucket in name order: its leaves
//! (packed full, overflowing for a large entry), then its branch levels bottom up, root last.
//! No bucket is inline and nothing is free, so every page is reachable.
//!
//! # Streaming
//! The image is written from one pinned `mvcc::ExportView` in two passes over the key space:
//! the first plans the leaves (entries per leaf and first keys) and so every page id, the
//! second writes the pages in file order. Memory is bounded by one leaf (a page, or one value
//! up to the page store's 16 MiB limit), the plan (a first key per leaf) and the chunk being
//! sent; writers go on meanwhile, since the view is a page-store snapshot.

pub mod bolt;
mod image;
mod restore;

use ringkv_proto::etcdserverpb::AlarmMember;

pub use image::{backend_hash, hash_kv, write_image, HashKv, CHUNK_BYTES};
pub use restore::{file_status, restore, FileStatus, RestoreConfig, Restored};

/// Bytes of the integrity trailer: a SHA-256.
pub const TRAILER_BYTES: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a readable bbolt database (or not an etcd one).
    #[error("invalid snapshot: {0}")]
    Corrupt(String),
    #[error("expected sha256 {expected:x?}, got {actual:x?}")]
    HashMismatch { expected: Vec<u8>, actual: Vec<u8> },
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("data-dir {0:?} not empty or could not be read")]
    DataDirNotEmpty(String),
    #[error(transparent)]
    Mvcc(#[from] crate::mvcc::MvccError),
    #[error(transparent)]
    PageStore(#[from] crate::page_store::PageStoreError),
    /// The receiver of a stream went away.
    #[error("snapshot stream closed by the receiver")]
    Closed,
    #[error("{0}")]
    Invalid(String),
}

const KEY_BUCKET: &[u8] = b"key";
const META_BUCKET: &[u8] = b"meta";
const ALARM_BUCKET: &[u8] = b"alarm";
const AUTH_BUCKET: &[u8] = b"auth";
const AUTH_USERS_BUCKET: &[u8] = b"authUsers";
const AUTH_ROLES_BUCKET: &[u8] = b"authRoles";
const LEASE_BUCKET: &[u8] = b"lease";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT_REV: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT_REV: &[u8] = b"scheduledCompactRev";
/// Buckets a fresh etcd 3.4 backend has; empty ones are written too, so etcd finds them.
const BUCKETS: [&[u8]; 10] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    b"key",
    b"lease",
    b"members",
    b"members_removed",
    b"meta",
];

const REV_BYTES: usize = 17;

/// etcd's revision key: `main ‖ '_' ‖ sub`, big-endian, plus `'t'` for a tombstone.
fn revision_bytes(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(REV_BYTES + 1);
    out.extend_from_slice(&main.to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        out.push(b't');
    }
    out
}

/// Parses a revision key: `(main, sub, tombstone)`.
fn parse_revision_bytes(bytes: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match bytes.len() {
        REV_BYTES => false,
        18 if bytes[REV_BYTES] == b't' => true,
        _ => return None,
    };
    if bytes[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(bytes[9..REV_BYTES].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// etcd's `leasepb.Lease`, the value of a `lease` bucket entry.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    /// The granted TTL in seconds.
    #[prost(int64, tag = "2")]
    ttl: i64,
    /// The checkpointed remaining TTL (etcd 3.4's lease checkpoints); 0 when none.
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

fn alarm_key(alarm: &AlarmMember) -> Vec<u8> {
    prost::Message::encode_to_vec(alarm)
}

#[cfg(test)]
mod tests;
