//! Reading snapshot files (ours or etcd's): `snapshot status` (etcd's hash, revision, entry
//! count and size) and `snapshot restore` (a new member's data dir built from the file).

use std::fs::File;
use std::path::{Path, PathBuf};

use prost::Message;
use ringkv_proto::etcdserverpb::AlarmMember;
use ringkv_proto::mvccpb;
use sha2::{Digest, Sha256};

use crate::apply::alarm::{AlarmSet, AUX_ALARMS};
use crate::lease::TTL_MAX_SECS;
use crate::mvcc::{ExportedVersion, Importer, KeyValue, Mvcc, Revision};
use crate::page_store::{PageStore, PageStoreConfig, MAX_KEY_BYTES, MAX_VALUE_BYTES};

use super::bolt::{BoltReader, BucketRoot};
use super::LeaseRecord;
use super::{
    parse_revision_bytes, SnapshotError, ALARM_BUCKET, AUTH_BUCKET, AUTH_ROLES_BUCKET,
    AUTH_USERS_BUCKET, FINISHED_COMPACT_REV, KEY_BUCKET, LEASE_BUCKET, META_BUCKET,
    SCHEDULED_COMPACT_REV, TRAILER_BYTES,
};

/// What `etcdctl snapshot status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStatus {
    /// CRC-32C over every bucket name and entry.
    pub hash: u32,
    /// Main revision of the last `key` entry.
    pub revision: i64,
    /// Entries in all buckets.
    pub total_key: u64,
    /// Pages times page size.
    pub total_size: u64,
}

fn invalid(detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(detail.into())
}

fn open(path: &Path) -> Result<(BoltReader, u64, File), SnapshotError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let reader = BoltReader::open(file.try_clone()?, len)?;
    Ok((reader, len, file))
}

/// The top-level buckets: (name, root).
fn top_buckets(db: &BoltReader) -> Result<Vec<(Vec<u8>, BucketRoot)>, SnapshotError> {
    let mut out = Vec::new();
    db.for_each(&db.root(), &mut |name, value, is_bucket| {
        if !is_bucket {
            return Err(invalid(format!(
                "cannot get hash of bucket {}",
                String::from_utf8_lossy(name)
            )));
        }
        out.push((name.to_vec(), BoltReader::bucket(value)?));
        Ok(())
    })?;
    Ok(out)
}

/// etcd's `snapshot status` of the file at `path`.
pub fn file_status(path: &Path) -> Result<FileStatus, SnapshotError> {
    let (db, ..) = open(path)?;
    let mut status = FileStatus {
        hash: 0,
        revision: 0,
        total_key: 0,
        total_size: db.size_bytes,
    };
    let mut crc = 0u32;
    for (name, root) in top_buckets(&db)? {
        crc = crc32c::crc32c_append(crc, &name);
        let is_key = name == KEY_BUCKET;
        db.for_each(&root, &mut |k, v, _| {
            crc = crc32c::crc32c_append(crc, k);
            crc = crc32c::crc32c_append(crc, v);
            if is_key && k.len() >= 8 {
                status.revision = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            }
            status.total_key += 1;
            Ok(())
        })?;
    }
    status.hash = crc;
    Ok(status)
}

/// Checks the SHA-256 trailer etcd's restore checks; returns the image length without it.
fn check_trailer(file: &File, len: u64, skip_hash_check: bool) -> Result<u64, SnapshotError> {
    use std::os::unix::fs::FileExt;
    let has_hash = len % 512 == TRAILER_BYTES;
    if !has_hash {
        return if skip_hash_check {
            Ok(len)
        } else {
            Err(SnapshotError::MissingHash)
        };
    }
    let image = len - TRAILER_BYTES;
    if skip_hash_check {
        return Ok(image);
    }
    let mut expected = vec![0u8; TRAILER_BYTES as usize];
    file.read_exact_at(&mut expected, image)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < image {
        let n = buf.len().min((image - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        sha.update(&buf[..n]);
        at += n as u64;
    }
    let actual = sha.finalize().to_vec();
    if actual != expected {
        return Err(SnapshotError::HashMismatch { expected, actual });
    }
    Ok(image)
}

/// `ringkv snapshot restore`'s inputs.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub snapshot: PathBuf,
    pub data_dir: PathBuf,
    pub skip_hash_check: bool,
}

/// What a restore produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub compacted: i64,
    pub versions: u64,
}

/// Builds the key space of a new member in `<data_dir>/member/snap` from the snapshot file:
/// every version of the `key` bucket with its revision, the compaction state, the alarms, the
/// auth buckets and the leases.
/// Refuses a data dir that exists and is not empty (etcd's rule). The caller records the
/// member's ids. On failure the partly built `member` directory is removed.
pub fn restore(cfg: &RestoreConfig) -> Result<Restored, SnapshotError> {
    if let Ok(mut entries) = std::fs::read_dir(&cfg.data_dir) {
        if entries.next().is_some() {
            return Err(SnapshotError::DataDirNotEmpty(
                cfg.data_dir.display().to_string(),
            ));
        }
    }
    let file = File::open(&cfg.snapshot)?;
    let len = file.metadata()?.len();
    let image = check_trailer(&file, len, cfg.skip_hash_check)?;
    let db = BoltReader::open(file, image)?;
    let member = cfg.data_dir.join("member");
    let result = build(&db, &member.join("snap"));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&member);
    }
    result
}

fn build(db: &BoltReader, snap_dir: &Path) -> Result<Restored, SnapshotError> {
    let buckets = top_buckets(db)?;
    let bucket = |name: &[u8]| buckets.iter().find(|(n, _)| n == name).map(|(_, r)| r);
    let key = bucket(KEY_BUCKET).ok_or_else(|| invalid("no \"key\" bucket"))?;
    let (mut finished, mut scheduled) = (-1, -1);
    if let Some(meta) = bucket(META_BUCKET) {
        db.for_each(meta, &mut |k, v, _| {
            let rev = || {
                parse_revision_bytes(v)
                    .map(|(main, ..)| main)
                    .ok_or_else(|| invalid("malformed compaction revision in \"meta\""))
            };
            match k {
                FINISHED_COMPACT_REV => finished = rev()?,
                SCHEDULED_COMPACT_REV => scheduled = rev()?,
                _ => {}
            }
            Ok(())
        })?;
    }
    let mut alarms = AlarmSet::default();
    if let Some(alarm) = bucket(ALARM_BUCKET) {
        db.for_each(alarm, &mut |k, _, _| {
            let a = AlarmMember::decode(k).map_err(|e| invalid(format!("alarm entry: {e}")))?;
            alarms.activate(a.member_id, a.alarm);
            Ok(())
        })?;
    }
    // etcd's restore keeps users, roles and the enabled flag.
    let mut auth = crate::auth::AuthBuckets::default();
    for (name, entries) in [
        (AUTH_BUCKET, &mut auth.auth),
        (AUTH_USERS_BUCKET, &mut auth.users),
        (AUTH_ROLES_BUCKET, &mut auth.roles),
    ] {
        if let Some(root) = bucket(name) {
            db.for_each(root, &mut |k, v, _| {
                entries.push((k.to_vec(), v.to_vec()));
                Ok(())
            })?;
        }
    }
    let auth_rows = auth
        .into_rows()
        .map_err(|e| invalid(format!("auth buckets: {e}")))?;
    let leases = read_leases(db, bucket(LEASE_BUCKET))?;

    std::fs::create_dir_all(snap_dir)?;
    let store = PageStore::open(snap_dir, PageStoreConfig::default())?;
    let mut importer = Importer::new(&store);
    let mut last: Option<Revision> = None;
    let mut versions = 0u64;
    db.for_each(key, &mut |k, v, _| {
        let (rev, mut version) = decode_version(k, v)?;
        if let ExportedVersion::Put(kv) = &mut version {
            // etcd's restore logs a key whose lease is gone and leaves it unattached; ringkv's
            // lessor requires every named lease to exist, so the key loses the lease instead.
            if kv.lease != 0 && !leases.contains_key(&kv.lease) {
                kv.lease = 0;
            }
        }
        if last.is_some_and(|l| l >= rev) {
            return Err(invalid(format!("revision {rev:?} out of order in \"key\"")));
        }
        last = Some(rev);
        importer.push(rev, &version)?;
        versions += 1;
        Ok(())
    })?;
    if !alarms.is_empty() {
        importer.put_aux(AUX_ALARMS, &alarms.encode())?;
    }
    for (key, value) in &auth_rows {
        importer.put_foreign(key, value)?;
    }
    for (&id, &ttl_secs) in &leases {
        let (key, value) = crate::lease::table_row(id, ttl_secs);
        importer.put_foreign(&key, &value)?;
    }
    let finished_at = finished.max(-1);
    let current = importer.finish(last.map_or(1, |r| r.main).max(scheduled), finished_at)?;
    let mvcc = Mvcc::open(store)?;
    if scheduled > finished_at && scheduled <= current {
        // etcd resumes a compaction the snapshot caught in progress.
        mvcc.compact(scheduled)?;
    }
    Ok(Restored {
        revision: current,
        compacted: mvcc.compacted_revision(),
        versions,
    })
}

/// The `lease` bucket as id -> granted TTL. etcd keeps leases across a restore (with their
/// keys attached; their countdown restarts at the granted TTL when the member becomes leader),
/// and so does ringkv. A checkpointed RemainingTTL is not kept (see the module doc).
fn read_leases(
    db: &BoltReader,
    root: Option<&BucketRoot>,
) -> Result<std::collections::BTreeMap<i64, i64>, SnapshotError> {
    let mut leases = std::collections::BTreeMap::new();
    let Some(root) = root else {
        return Ok(leases);
    };
    db.for_each(root, &mut |k, v, _| {
        let record = LeaseRecord::decode(v).map_err(|e| invalid(format!("lease entry: {e}")))?;
        let key_id = <[u8; 8]>::try_from(k)
            .map(i64::from_be_bytes)
            .map_err(|_| invalid(format!("lease key {k:x?} is not 8 bytes")))?;
        if record.id != key_id || record.id == 0 || !(1..=TTL_MAX_SECS).contains(&record.ttl) {
            return Err(invalid(format!(
                "lease entry {key_id:x}: id {:x} / TTL {} out of range",
                record.id, record.ttl
            )));
        }
        leases.insert(record.id, record.ttl);
        Ok(())
    })?;
    Ok(leases)
}

/// One `key` bucket entry as a version, validated so that the import's invariants hold.
fn decode_version(k: &[u8], v: &[u8]) -> Result<(Revision, ExportedVersion), SnapshotError> {
    let (main, sub, tombstone) =
        parse_revision_bytes(k).ok_or_else(|| invalid(format!("malformed revision key {k:x?}")))?;
    if main < 1 || sub < 0 {
        return Err(invalid(format!("revision {main}.{sub} out of range")));
    }
    let kv = mvccpb::KeyValue::decode(v)
        .map_err(|e| invalid(format!("revision {main}: undecodable KeyValue: {e}")))?;
    if kv.key.is_empty() || crate::mvcc::version_key_len(&kv.key) > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "revision {main}: key of {} bytes is empty or beyond ringkv's limit",
            kv.key.len()
        )));
    }
    let rev = Revision { main, sub };
    if tombstone {
        return Ok((rev, ExportedVersion::Tombstone { key: kv.key }));
    }
    if kv.create_revision < 1 || kv.version < 1 || kv.create_revision > main {
        return Err(invalid(format!(
            "revision {main}: create revision {} / version {} out of range",
            kv.create_revision, kv.version
        )));
    }
    if kv.value.len() > MAX_VALUE_BYTES {
        return Err(invalid(format!("revision {main}: value too large")));
    }
    Ok((
        rev,
        ExportedVersion::Put(KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: main,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }),
    ))
}
