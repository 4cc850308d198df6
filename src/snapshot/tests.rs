//! Round trips through the bbolt image: MVCC → image → reader → restored MVCC.

use std::path::Path;

use crate::mvcc::{Mvcc, RangeOptions};
use crate::page_store::{PageStore, PageStoreConfig};

use super::*;

fn store(dir: &Path) -> Mvcc {
    let config = PageStoreConfig {
        cache_bytes: 1 << 20,
        ..PageStoreConfig::default()
    };
    Mvcc::open(PageStore::open(dir, config).unwrap()).unwrap()
}

fn image(mvcc: &Mvcc) -> Vec<u8> {
    let view = mvcc.export().unwrap();
    let mut out = Vec::new();
    let mut last_remaining = None;
    let size = write_image(&view, &mut |chunk, remaining| {
        assert!(chunk.len() <= CHUNK_BYTES + TRAILER_BYTES as usize);
        out.extend_from_slice(&chunk);
        last_remaining = Some(remaining);
        Ok(())
    })
    .unwrap();
    assert_eq!(out.len() as u64, size + TRAILER_BYTES);
    assert_eq!(last_remaining, Some(0));
    out
}

#[test]
fn an_image_restores_to_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let mvcc = store(&dir.path().join("a"));
    // Enough keys for several leaves and a branch level, a large value that overflows a
    // page, deletes, and a compaction.
    for i in 0..600 {
        let mut w = mvcc.write();
        w.put(format!("key-{i:04}").as_bytes(), &[b'v'; 40], 0)
            .unwrap();
        w.commit(0).unwrap();
    }
    let mut w = mvcc.write();
    w.put(b"big", &vec![7u8; 20_000], 0).unwrap();
    w.commit(0).unwrap();
    let mut w = mvcc.write();
    w.delete_range(b"key-0000", b"key-0010").unwrap();
    w.commit(0).unwrap();
    mvcc.compact(300).unwrap();
    let mut w = mvcc.write();
    w.put(b"key-0001", b"again", 0).unwrap();
    w.commit(0).unwrap();

    let bytes = image(&mvcc);
    let file = dir.path().join("snap.db");
    std::fs::write(&file, &bytes).unwrap();
    let status = file_status(&file).unwrap();
    assert_eq!(status.revision, mvcc.current_revision());
    assert_eq!(status.total_size, bytes.len() as u64 - TRAILER_BYTES);

    let target = dir.path().join("restored");
    let restored = restore(&RestoreConfig {
        snapshot: file.clone(),
        data_dir: target.clone(),
        skip_hash_check: false,
    })
    .unwrap();
    assert_eq!(restored.revision, mvcc.current_revision());
    assert_eq!(restored.compacted, 300);
    let back = Mvcc::open(
        PageStore::open(target.join("member/snap"), PageStoreConfig::default()).unwrap(),
    )
    .unwrap();
    back.check_integrity().unwrap();
    for rev in [300, 500, 602, 603, 0] {
        let opts = RangeOptions {
            rev,
            ..RangeOptions::default()
        };
        assert_eq!(
            back.range(b"\0", b"\0", &opts).unwrap(),
            mvcc.range(b"\0", b"\0", &opts).unwrap(),
            "at revision {rev}"
        );
    }
    assert_eq!(
        backend_hash(&back.export().unwrap()).unwrap(),
        backend_hash(&mvcc.export().unwrap()).unwrap()
    );
    assert_eq!(
        hash_kv(&back.export().unwrap(), 0).unwrap(),
        hash_kv(&mvcc.export().unwrap(), 0).unwrap()
    );
    // An image of the restored store is the same file.
    assert_eq!(image(&back), bytes);

    // A data dir in use is refused; a damaged trailer is refused.
    assert!(matches!(
        restore(&RestoreConfig {
            snapshot: file.clone(),
            data_dir: target,
            skip_hash_check: false,
        }),
        Err(SnapshotError::DataDirNotEmpty(_))
    ));
    let mut damaged = bytes.clone();
    let at = damaged.len() - 1;
    damaged[at] ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    assert!(matches!(
        restore(&RestoreConfig {
            snapshot: file,
            data_dir: dir.path().join("other"),
            skip_hash_check: false,
        }),
        Err(SnapshotError::HashMismatch { .. })
    ));
    assert!(!dir.path().join("other/member").exists());
}

#[test]
fn garbage_is_refused_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junk");
    for junk in [
        vec![],
        vec![0u8; 100],
        vec![0xAB; 3 * 4096],
        b"hello".repeat(5000),
    ] {
        std::fs::write(&file, &junk).unwrap();
        assert!(file_status(&file).is_err());
    }
    // A valid image with a page pointer bent out of range.
    let mvcc = store(&dir.path().join("a"));
    let mut bytes = image(&mvcc);
    bytes.truncate(bytes.len() - TRAILER_BYTES as usize);
    // Root bucket leaf (page 3): first element's bucket header points at page 4; make it 9999.
    let first_value = 3 * 4096
        + 16
        + u32::from_le_bytes(bytes[3 * 4096 + 20..3 * 4096 + 24].try_into().unwrap()) as usize
        + 5;
    bytes[first_value..first_value + 8].copy_from_slice(&9999u64.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let error = file_status(&file).unwrap_err().to_string();
    assert!(error.contains("out of bounds"), "{error}");
}
