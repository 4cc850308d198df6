//! Writes the bbolt image of an `ExportView` (two passes: plan, then pages in file order), and
//! computes etcd's `Hash` and `HashKV` over the same bucket contents.

use prost::Message;
use ringkv_proto::mvccpb;
use sha2::{Digest, Sha256};

use crate::apply::alarm::{AlarmSet, AUX_ALARMS};
use crate::mvcc::{ExportView, ExportedVersion, Revision};

use super::bolt::{self, PAGE_BYTES};
use super::LeaseRecord;
use super::{
    alarm_key, revision_bytes, SnapshotError, ALARM_BUCKET, AUTH_BUCKET, AUTH_ROLES_BUCKET,
    AUTH_USERS_BUCKET, BUCKETS, CONSISTENT_INDEX, FINISHED_COMPACT_REV, KEY_BUCKET, LEASE_BUCKET,
    META_BUCKET, SCHEDULED_COMPACT_REV,
};

/// Bytes per chunk of a snapshot stream (etcd sends 32 KiB).
pub const CHUNK_BYTES: usize = 64 * 1024;

/// A small bucket's (key, value) entries, built in memory.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

type Visit<'f> = dyn FnMut(&[u8], &[u8]) -> Result<(), SnapshotError> + 'f;

/// Where a bucket's entries come from: built in memory (small buckets), or the key space.
enum Source<'v> {
    Mem(Vec<(Vec<u8>, Vec<u8>)>),
    Keys(&'v ExportView),
}

impl Source<'_> {
    fn for_each(&self, f: &mut Visit<'_>) -> Result<(), SnapshotError> {
        match self {
            Source::Mem(entries) => entries.iter().try_for_each(|(k, v)| f(k, v)),
            Source::Keys(view) => {
                for version in view.versions(view.current_revision()) {
                    let (rev, version) = version?;
                    let (k, v) = key_entry(rev, &version);
                    f(&k, &v)?;
                }
                Ok(())
            }
        }
    }
}

/// The `key` bucket entry of one version, byte for byte what etcd stores.
fn key_entry(rev: Revision, version: &ExportedVersion) -> (Vec<u8>, Vec<u8>) {
    match version {
        ExportedVersion::Put(kv) => {
            let value = mvccpb::KeyValue {
                key: kv.key.clone(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                value: kv.value.clone(),
                lease: kv.lease,
            };
            (
                revision_bytes(rev.main, rev.sub, false),
                value.encode_to_vec(),
            )
        }
        ExportedVersion::Tombstone { key } => {
            let value = mvccpb::KeyValue {
                key: key.clone(),
                ..mvccpb::KeyValue::default()
            };
            (
                revision_bytes(rev.main, rev.sub, true),
                value.encode_to_vec(),
            )
        }
    }
}

/// Every bucket of the image, in name order, with its source.
fn buckets(view: &ExportView) -> Result<Vec<(&'static [u8], Source<'_>)>, SnapshotError> {
    let mut meta = vec![(
        CONSISTENT_INDEX.to_vec(),
        view.consistent_index().to_be_bytes().to_vec(),
    )];
    if view.compacted_revision() > 0 {
        let finished = view.finished_compaction().max(0);
        meta.push((
            FINISHED_COMPACT_REV.to_vec(),
            revision_bytes(finished, 0, false),
        ));
        meta.push((
            SCHEDULED_COMPACT_REV.to_vec(),
            revision_bytes(view.compacted_revision(), 0, false),
        ));
    }
    let alarms = match view.aux(AUX_ALARMS)? {
        Some(bytes) => AlarmSet::decode(&bytes)
            .ok_or_else(|| SnapshotError::Invalid("malformed alarm set in the store".into()))?,
        None => AlarmSet::default(),
    };
    let mut alarm_entries: Vec<(Vec<u8>, Vec<u8>)> = alarms
        .get(0)
        .iter()
        .map(|a| (alarm_key(a), Vec::new()))
        .collect();
    alarm_entries.sort();
    let auth = crate::auth::AuthBuckets::from_rows(view.foreign_rows(crate::auth::TABLE_AUTH)?)
        .map_err(|e| SnapshotError::Invalid(format!("auth state in the store: {e}")))?;
    let (mut auth_meta, mut users, mut roles) = (auth.auth, auth.users, auth.roles);
    let mut leases = lease_entries(view)?;
    let mut out = Vec::new();
    for name in BUCKETS {
        let source = match name {
            KEY_BUCKET => Source::Keys(view),
            META_BUCKET => Source::Mem(std::mem::take(&mut meta)),
            ALARM_BUCKET => Source::Mem(std::mem::take(&mut alarm_entries)),
            AUTH_BUCKET => Source::Mem(std::mem::take(&mut auth_meta)),
            AUTH_USERS_BUCKET => Source::Mem(std::mem::take(&mut users)),
            AUTH_ROLES_BUCKET => Source::Mem(std::mem::take(&mut roles)),
            LEASE_BUCKET => Source::Mem(std::mem::take(&mut leases)),
            _ => Source::Mem(Vec::new()),
        };
        out.push((name, source));
    }
    debug_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    Ok(out)
}

/// The `lease` bucket: etcd's entry for every lease in the view's lease table, in id order as
/// bbolt sorts the big-endian keys. The table is small (one row per lease), so it is built in
/// memory like the other small buckets.
fn lease_entries(view: &ExportView) -> Result<Entries, SnapshotError> {
    let mut entries = Vec::new();
    for (key, value) in view.foreign_rows(crate::lease::TABLE_LEASE)? {
        let (id, ttl) = crate::lease::decode_table_row(&key, &value)
            .map_err(|e| SnapshotError::Invalid(format!("lease table in the store: {e}")))?;
        let record = LeaseRecord {
            id,
            ttl,
            remaining_ttl: 0,
        };
        entries.push((id.to_be_bytes().to_vec(), record.encode_to_vec()));
    }
    // Table rows and bucket keys are the same big-endian bytes, so the order carries over.
    debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    Ok(entries)
}

/// A branch element: the child's first key and page id.
type Child = (Vec<u8>, u64);

/// One planned leaf: how many entries, how many pages, its first key.
struct LeafPlan {
    count: usize,
    pages: usize,
    first_key: Vec<u8>,
}

/// One bucket's pages: leaves from `base`, then branch pages bottom up; `root` is the last.
struct BucketPlan {
    base: u64,
    leaves: Vec<LeafPlan>,
    /// Branch pages in file order: (id, children).
    branches: Vec<(u64, Vec<Child>)>,
    root: u64,
    /// First page id after this bucket.
    end: u64,
}

fn plan_leaves(source: &Source<'_>) -> Result<Vec<LeafPlan>, SnapshotError> {
    let mut leaves: Vec<LeafPlan> = Vec::new();
    let (mut count, mut used) = (0usize, 0usize);
    source.for_each(&mut |k, v| {
        let bytes = bolt::leaf_entry_bytes(k, v);
        if count == 0 || !bolt::fits(count, used, bytes) {
            if let Some(last) = leaves.last_mut() {
                last.count = count;
                last.pages = bolt::leaf_pages(used);
            }
            leaves.push(LeafPlan {
                count: 0,
                pages: 0,
                first_key: k.to_vec(),
            });
            (count, used) = (0, 0);
        }
        count += 1;
        used += bytes;
        Ok(())
    })?;
    match leaves.last_mut() {
        Some(last) => {
            last.count = count;
            last.pages = bolt::leaf_pages(used);
        }
        // An empty bucket is one empty leaf.
        None => leaves.push(LeafPlan {
            count: 0,
            pages: 1,
            first_key: Vec::new(),
        }),
    }
    Ok(leaves)
}

fn plan_bucket(source: &Source<'_>, base: u64) -> Result<BucketPlan, SnapshotError> {
    let leaves = plan_leaves(source)?;
    let mut next = base;
    let mut level: Vec<Child> = Vec::with_capacity(leaves.len());
    for leaf in &leaves {
        level.push((leaf.first_key.clone(), next));
        next += leaf.pages as u64;
    }
    let mut branches = Vec::new();
    while level.len() > 1 {
        let mut upper = Vec::new();
        let mut page: Vec<Child> = Vec::new();
        let mut used = 0;
        for child in level {
            let bytes = bolt::branch_entry_bytes(&child.0);
            if !bolt::fits(page.len(), used, bytes) {
                let pages = bolt::leaf_pages(used) as u64;
                upper.push((page[0].0.clone(), next));
                branches.push((next, std::mem::take(&mut page)));
                next += pages;
                used = 0;
            }
            used += bytes;
            page.push(child);
        }
        let pages = bolt::leaf_pages(used) as u64;
        upper.push((page[0].0.clone(), next));
        branches.push((next, page));
        next += pages;
        level = upper;
    }
    Ok(BucketPlan {
        base,
        leaves,
        branches,
        root: level[0].1,
        end: next,
    })
}

/// Collects output into chunks of `CHUNK_BYTES` for `send`, hashing everything.
struct Output<'s> {
    buf: Vec<u8>,
    sha: Sha256,
    send: &'s mut dyn FnMut(Vec<u8>, u64) -> Result<(), SnapshotError>,
    pages: u64,
    /// Bytes of the whole stream (image and trailer) not yet handed to `send`.
    remaining: u64,
}

impl Output<'_> {
    fn page(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        assert_eq!(bytes.len() % PAGE_BYTES, 0);
        self.pages += (bytes.len() / PAGE_BYTES) as u64;
        self.sha.update(bytes);
        for piece in bytes.chunks(CHUNK_BYTES) {
            self.buf.extend_from_slice(piece);
            if self.buf.len() >= CHUNK_BYTES {
                let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
                self.remaining -= full.len() as u64;
                (self.send)(full, self.remaining)?;
            }
        }
        Ok(())
    }
}

/// Writes the bbolt image of `view` followed by its SHA-256 trailer, in chunks of at most
/// `CHUNK_BYTES` (the last chunk holds the trailer), each with the bytes still to come after
/// it. Returns the image size without trailer.
pub fn write_image(
    view: &ExportView,
    send: &mut dyn FnMut(Vec<u8>, u64) -> Result<(), SnapshotError>,
) -> Result<u64, SnapshotError> {
    const ROOT_LEAF: u64 = 3;
    let buckets = buckets(view)?;
    let mut plans = Vec::with_capacity(buckets.len());
    let mut next = ROOT_LEAF + 1;
    for (_, source) in &buckets {
        let plan = plan_bucket(source, next)?;
        next = plan.end;
        plans.push(plan);
    }
    let total_pages = next;
    let root_entries: Vec<(Vec<u8>, Vec<u8>)> = buckets
        .iter()
        .zip(&plans)
        .map(|((name, _), plan)| (name.to_vec(), bolt::bucket_header(plan.root)))
        .collect();
    let root_leaf = bolt::leaf_page(ROOT_LEAF, &root_entries, true);
    assert_eq!(root_leaf.len(), PAGE_BYTES, "the bucket list fits one page");

    let mut out = Output {
        buf: Vec::with_capacity(CHUNK_BYTES),
        sha: Sha256::new(),
        send,
        pages: 0,
        remaining: total_pages * PAGE_BYTES as u64 + super::TRAILER_BYTES,
    };
    out.page(&bolt::meta_page(0, ROOT_LEAF, 2, total_pages, 2))?;
    out.page(&bolt::meta_page(1, ROOT_LEAF, 2, total_pages, 1))?;
    out.page(&bolt::freelist_page(2))?;
    out.page(&root_leaf)?;
    for ((name, source), plan) in buckets.iter().zip(&plans) {
        write_bucket(name, source, plan, &mut out)?;
    }
    assert_eq!(out.pages, total_pages, "pages written differ from the plan");
    let Output {
        mut buf,
        sha,
        send,
        remaining,
        ..
    } = out;
    buf.extend_from_slice(&sha.finalize());
    assert_eq!(buf.len() as u64, remaining);
    send(buf, 0)?;
    Ok(total_pages * PAGE_BYTES as u64)
}

fn write_bucket(
    name: &[u8],
    source: &Source<'_>,
    plan: &BucketPlan,
    out: &mut Output<'_>,
) -> Result<(), SnapshotError> {
    let changed = || {
        SnapshotError::Invalid(format!(
            "bucket {} changed between the passes over a pinned view",
            String::from_utf8_lossy(name)
        ))
    };
    let mut leaf = 0;
    let mut id = plan.base;
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    source.for_each(&mut |k, v| {
        let want = plan.leaves.get(leaf).ok_or_else(changed)?;
        if entries.is_empty() && k != want.first_key.as_slice() {
            return Err(changed());
        }
        entries.push((k.to_vec(), v.to_vec()));
        if entries.len() == want.count {
            let page = bolt::leaf_page(id, &entries, false);
            if page.len() != want.pages * PAGE_BYTES {
                return Err(changed());
            }
            out.page(&page)?;
            id += want.pages as u64;
            leaf += 1;
            entries.clear();
        }
        Ok(())
    })?;
    if plan.leaves.len() == 1 && plan.leaves[0].count == 0 {
        out.page(&bolt::leaf_page(id, &[], false))?;
        leaf = 1;
    }
    if leaf != plan.leaves.len() || !entries.is_empty() {
        return Err(changed());
    }
    for (id, children) in &plan.branches {
        out.page(&bolt::branch_page(*id, children))?;
    }
    Ok(())
}

/// etcd's `Maintenance.Hash`: CRC-32C over every bucket's name and entries, in bbolt order,
/// leaving out `meta/consistent_index` (etcd's `DefaultIgnores`).
pub fn backend_hash(view: &ExportView) -> Result<u32, SnapshotError> {
    let mut crc = 0u32;
    for (name, source) in buckets(view)? {
        crc = crc32c::crc32c_append(crc, name);
        source.for_each(&mut |k, v| {
            if !(name == META_BUCKET && k == CONSISTENT_INDEX) {
                crc = crc32c::crc32c_append(crc, k);
                crc = crc32c::crc32c_append(crc, v);
            }
            Ok(())
        })?;
    }
    Ok(crc)
}

/// `HashKV`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    /// The revision hashed up to.
    pub hash_revision: i64,
    pub current_revision: i64,
    pub compact_revision: i64,
}

/// etcd's `HashKV` (`store.hashByRev`): CRC-32C of `"key"` and then every `key`-bucket entry
/// with `main <= rev`, where an entry at or below the compacted revision counts only if a
/// compaction at `rev` would keep it; so members with the same history agree whatever their
/// physical compaction progress. `rev <= 0` means the current revision. Errors are etcd's:
/// `Compacted` for `0 < rev <= compacted`, `FutureRevision` above the current revision.
pub fn hash_kv(view: &ExportView, rev: i64) -> Result<HashKv, SnapshotError> {
    use crate::mvcc::MvccError;
    let (current, compacted) = (view.current_revision(), view.compacted_revision());
    if rev > 0 && rev <= compacted {
        return Err(MvccError::Compacted.into());
    }
    if rev > current {
        return Err(MvccError::FutureRevision.into());
    }
    let rev = if rev <= 0 { current } else { rev };
    // etcd filters only when the keep set is not empty, i.e. some key is alive at `rev`.
    let mut any_kept = false;
    if compacted > 0 {
        for version in view.versions(rev) {
            let (r, v) = version?;
            if let ExportedVersion::Put(kv) = &v {
                if view.kept_at(&kv.key, r, rev)? {
                    any_kept = true;
                    break;
                }
            }
        }
    }
    let mut crc = crc32c::crc32c(KEY_BUCKET);
    for version in view.versions(rev) {
        let (r, v) = version?;
        if r.main <= compacted && any_kept && !view.kept_at(v.key(), r, rev)? {
            continue;
        }
        let (k, value) = key_entry(r, &v);
        crc = crc32c::crc32c_append(crc, &k);
        crc = crc32c::crc32c_append(crc, &value);
    }
    Ok(HashKv {
        hash: crc,
        hash_revision: rev,
        current_revision: current,
        compact_revision: compacted,
    })
}
