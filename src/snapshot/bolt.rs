//! bbolt's on-disk format (the layout is specified in `snapshot`'s module doc): a writer that
//! lays out a database of non-inline buckets page by page, and a reader that walks any bbolt
//! file (inline buckets included) with every offset checked.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::SnapshotError;

pub const PAGE_BYTES: usize = 4096;
const PAGE_HEADER_BYTES: usize = 16;
const ELEMENT_BYTES: usize = 16;
const BUCKET_HEADER_BYTES: usize = 16;
const META_BYTES: usize = 64;
/// Offset of the checksum in the meta: the FNV-1a 64 covers the bytes before it.
const META_CHECKSUM_AT: usize = 56;

const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
/// A leaf element whose value is a bucket header (plus, when inline, its page).
const LEAF_FLAG_BUCKET: u32 = 0x01;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// bbolt's `pgidNoFreelist`: the freelist is not stored and is rebuilt by a scan.
const NO_FREELIST: u64 = u64::MAX;
/// A reader gives up below this depth: a real tree of 4 KiB pages is far shallower.
const DEPTH_MAX: usize = 32;
/// bbolt's `MaxKeySize`.
pub const KEY_BYTES_MAX: usize = 32768;

const _: () = assert!(PAGE_HEADER_BYTES + META_BYTES <= PAGE_BYTES);

/// Called with each entry of a bucket: key, value, and whether the value is a bucket.
pub type Visitor<'f> = dyn FnMut(&[u8], &[u8], bool) -> Result<(), SnapshotError> + 'f;

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(buf[at..at + 2].try_into().expect("2 bytes"))
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Pages (whole multiples of `PAGE_BYTES`) a leaf of these entries occupies.
pub fn leaf_pages(payload_bytes: usize) -> usize {
    (PAGE_HEADER_BYTES + payload_bytes).div_ceil(PAGE_BYTES)
}

/// Bytes one leaf element adds to its page.
pub fn leaf_entry_bytes(key: &[u8], value: &[u8]) -> usize {
    ELEMENT_BYTES + key.len() + value.len()
}

/// Bytes one branch element adds to its page.
pub fn branch_entry_bytes(key: &[u8]) -> usize {
    ELEMENT_BYTES + key.len()
}

/// Whether an entry of `bytes` still fits a page already holding `used` payload bytes and
/// `count` entries. The first entry always fits (a large one makes the page overflow).
pub fn fits(count: usize, used: usize, bytes: usize) -> bool {
    count == 0 || (PAGE_HEADER_BYTES + used + bytes <= PAGE_BYTES && count < usize::from(u16::MAX))
}

fn page_header(buf: &mut [u8], id: u64, flags: u16, count: usize, pages: usize) {
    put_u64(buf, 0, id);
    put_u16(buf, 8, flags);
    put_u16(
        buf,
        10,
        u16::try_from(count).expect("count fits the page header"),
    );
    put_u32(
        buf,
        12,
        u32::try_from(pages - 1).expect("overflow fits u32"),
    );
}

/// A leaf page (with its overflow pages) holding `entries` in order; `bucket` marks every value
/// as a bucket header.
pub fn leaf_page(id: u64, entries: &[(Vec<u8>, Vec<u8>)], bucket: bool) -> Vec<u8> {
    let payload: usize = entries.iter().map(|(k, v)| leaf_entry_bytes(k, v)).sum();
    let pages = leaf_pages(payload);
    let mut buf = vec![0u8; pages * PAGE_BYTES];
    page_header(&mut buf, id, FLAG_LEAF, entries.len(), pages);
    let mut data = PAGE_HEADER_BYTES + ELEMENT_BYTES * entries.len();
    for (i, (k, v)) in entries.iter().enumerate() {
        let elem = PAGE_HEADER_BYTES + ELEMENT_BYTES * i;
        put_u32(&mut buf, elem, if bucket { LEAF_FLAG_BUCKET } else { 0 });
        put_u32(&mut buf, elem + 4, (data - elem) as u32);
        put_u32(&mut buf, elem + 8, k.len() as u32);
        put_u32(&mut buf, elem + 12, v.len() as u32);
        buf[data..data + k.len()].copy_from_slice(k);
        data += k.len();
        buf[data..data + v.len()].copy_from_slice(v);
        data += v.len();
    }
    buf
}

/// A branch page over `children` (first key of the child, child page id), in key order.
pub fn branch_page(id: u64, children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let payload: usize = children.iter().map(|(k, _)| branch_entry_bytes(k)).sum();
    let pages = leaf_pages(payload);
    let mut buf = vec![0u8; pages * PAGE_BYTES];
    page_header(&mut buf, id, FLAG_BRANCH, children.len(), pages);
    let mut data = PAGE_HEADER_BYTES + ELEMENT_BYTES * children.len();
    for (i, (k, child)) in children.iter().enumerate() {
        let elem = PAGE_HEADER_BYTES + ELEMENT_BYTES * i;
        put_u32(&mut buf, elem, (data - elem) as u32);
        put_u32(&mut buf, elem + 4, k.len() as u32);
        put_u64(&mut buf, elem + 8, *child);
        buf[data..data + k.len()].copy_from_slice(k);
        data += k.len();
    }
    buf
}

/// The value of a non-inline bucket's entry in its parent: root page id, sequence 0.
pub fn bucket_header(root: u64) -> Vec<u8> {
    let mut v = vec![0u8; BUCKET_HEADER_BYTES];
    put_u64(&mut v, 0, root);
    v
}

/// Meta page `id` (0 or 1) of a database whose root bucket is at `root`, freelist at
/// `freelist`, `pages` pages in all, as of transaction `txid`.
pub fn meta_page(id: u64, root: u64, freelist: u64, pages: u64, txid: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE_BYTES];
    page_header(&mut buf, id, FLAG_META, 0, 1);
    let m = &mut buf[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + META_BYTES];
    put_u32(m, 0, MAGIC);
    put_u32(m, 4, VERSION);
    put_u32(m, 8, PAGE_BYTES as u32);
    put_u32(m, 12, 0);
    put_u64(m, 16, root);
    put_u64(m, 24, 0);
    put_u64(m, 32, freelist);
    put_u64(m, 40, pages);
    put_u64(m, 48, txid);
    let sum = fnv1a64(&m[..META_CHECKSUM_AT]);
    put_u64(m, META_CHECKSUM_AT, sum);
    buf
}

/// An empty freelist page.
pub fn freelist_page(id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE_BYTES];
    page_header(&mut buf, id, FLAG_FREELIST, 0, 1);
    buf
}

/// A bbolt file opened for reading: every page read is bounds-checked against the file and the
/// meta's high-water mark, so a damaged or hostile file gives `Corrupt`, never a panic.
pub struct BoltReader {
    file: File,
    page_bytes: usize,
    /// Pages the file holds (the meta's high-water mark, at most the file size).
    pages: u64,
    root: u64,
    /// `pages * page_bytes`: what etcd's `snapshot status` reports as the size.
    pub size_bytes: u64,
}

/// One bucket: the page of its root, or its inline leaf.
#[derive(Debug, Clone)]
pub enum BucketRoot {
    Page(u64),
    Inline(Vec<u8>),
}

fn corrupt(detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(detail.into())
}

impl BoltReader {
    /// Opens `file` of `len` bytes (an integrity trailer, if any, already excluded).
    pub fn open(file: File, len: u64) -> Result<BoltReader, SnapshotError> {
        let mut best: Option<(u64, usize, u64, u64)> = None;
        let mut first_error = None;
        for slot in 0..2u64 {
            match Self::read_meta(&file, len, slot) {
                Ok(m) => {
                    if best.is_none_or(|b| m.0 > b.0) {
                        best = Some(m);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some((_, page_bytes, root, pages)) = best else {
            return Err(first_error.unwrap_or_else(|| corrupt("no valid meta page")));
        };
        if pages.saturating_mul(page_bytes as u64) > len {
            return Err(corrupt(format!(
                "meta names {pages} pages of {page_bytes} bytes; the file has {len} bytes"
            )));
        }
        Ok(BoltReader {
            file,
            page_bytes,
            pages,
            root,
            size_bytes: pages * page_bytes as u64,
        })
    }

    /// (txid, page size, root bucket page, high-water mark) of a valid meta in `slot`.
    fn read_meta(
        file: &File,
        len: u64,
        slot: u64,
    ) -> Result<(u64, usize, u64, u64), SnapshotError> {
        // The page size is in the meta itself; slot 1 sits one page in, so read slot 0's
        // header first to learn where slot 1 is (bbolt does the same).
        let mut buf = [0u8; PAGE_HEADER_BYTES + META_BYTES];
        let page_bytes = if slot == 0 {
            0
        } else {
            file.read_exact_at(&mut buf, 0)?;
            get_u32(&buf, PAGE_HEADER_BYTES + 8) as usize
        };
        if slot == 1 && !(512..=65536).contains(&page_bytes) {
            return Err(corrupt(
                "meta 1 unreachable: meta 0 names no valid page size",
            ));
        }
        let at = slot * page_bytes as u64;
        if at + buf.len() as u64 > len {
            return Err(corrupt("file too small for a bbolt meta page"));
        }
        file.read_exact_at(&mut buf, at)?;
        let m = &buf[PAGE_HEADER_BYTES..];
        if get_u16(&buf, 8) != FLAG_META {
            return Err(corrupt(format!("page {slot} is not a meta page")));
        }
        if get_u32(m, 0) != MAGIC {
            return Err(corrupt("not a bbolt file: bad magic (invalid database)"));
        }
        if get_u32(m, 4) != VERSION {
            return Err(corrupt(format!(
                "unsupported bbolt version {}",
                get_u32(m, 4)
            )));
        }
        if fnv1a64(&m[..META_CHECKSUM_AT]) != get_u64(m, META_CHECKSUM_AT) {
            return Err(corrupt(format!("meta {slot} checksum mismatch")));
        }
        let size = get_u32(m, 8) as usize;
        if !(512..=65536).contains(&size) || !size.is_power_of_two() {
            return Err(corrupt(format!("invalid page size {size}")));
        }
        let root = get_u64(m, 16);
        let freelist = get_u64(m, 32);
        let pages = get_u64(m, 40);
        if root < 2 || root >= pages || (freelist != NO_FREELIST && freelist >= pages) {
            return Err(corrupt(format!(
                "meta {slot} points outside its {pages} pages"
            )));
        }
        Ok((get_u64(m, 48), size, root, pages))
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, SnapshotError> {
        if id < 2 || id >= self.pages {
            return Err(corrupt(format!(
                "page id {id} out of bounds ({} pages)",
                self.pages
            )));
        }
        let mut head = vec![0u8; self.page_bytes];
        self.file
            .read_exact_at(&mut head, id * self.page_bytes as u64)?;
        if get_u64(&head, 0) != id {
            return Err(corrupt(format!(
                "page {id} names itself {}",
                get_u64(&head, 0)
            )));
        }
        let overflow = u64::from(get_u32(&head, 12));
        if id + overflow >= self.pages {
            return Err(corrupt(format!("page {id} overflows past the end")));
        }
        if overflow > 0 {
            head.resize(self.page_bytes * (overflow as usize + 1), 0);
            self.file.read_exact_at(
                &mut head[self.page_bytes..],
                (id + 1) * self.page_bytes as u64,
            )?;
        }
        Ok(head)
    }

    /// The root bucket (whose entries are the top-level buckets).
    pub fn root(&self) -> BucketRoot {
        BucketRoot::Page(self.root)
    }

    /// Calls `f(key, value, is_bucket)` for every entry of `bucket` in key order.
    pub fn for_each(&self, bucket: &BucketRoot, f: &mut Visitor<'_>) -> Result<(), SnapshotError> {
        match bucket {
            BucketRoot::Inline(page) => visit_leaf(page, f),
            BucketRoot::Page(id) => self.walk(*id, 0, f),
        }
    }

    fn walk(&self, id: u64, depth: usize, f: &mut Visitor<'_>) -> Result<(), SnapshotError> {
        if depth > DEPTH_MAX {
            return Err(corrupt(format!(
                "tree deeper than {DEPTH_MAX} at page {id}"
            )));
        }
        let page = self.page(id)?;
        match get_u16(&page, 8) {
            FLAG_LEAF => visit_leaf(&page, f),
            FLAG_BRANCH => {
                let count = usize::from(get_u16(&page, 10));
                for i in 0..count {
                    let elem = PAGE_HEADER_BYTES + ELEMENT_BYTES * i;
                    if elem + ELEMENT_BYTES > page.len() {
                        return Err(corrupt(format!(
                            "branch page {id}: element {i} out of page"
                        )));
                    }
                    self.walk(get_u64(&page, elem + 8), depth + 1, f)?;
                }
                Ok(())
            }
            flags => Err(corrupt(format!("page {id}: invalid page type {flags:#x}"))),
        }
    }

    /// The bucket a bucket entry's value describes.
    pub fn bucket(value: &[u8]) -> Result<BucketRoot, SnapshotError> {
        if value.len() < BUCKET_HEADER_BYTES {
            return Err(corrupt("bucket header shorter than 16 bytes"));
        }
        match get_u64(value, 0) {
            0 => Ok(BucketRoot::Inline(value[BUCKET_HEADER_BYTES..].to_vec())),
            root => Ok(BucketRoot::Page(root)),
        }
    }
}

/// Calls `f` for every element of a leaf page held in `page` (a whole page, or an inline
/// bucket's page, which may be shorter than a page).
fn visit_leaf(page: &[u8], f: &mut Visitor<'_>) -> Result<(), SnapshotError> {
    if page.len() < PAGE_HEADER_BYTES {
        return Err(corrupt("inline bucket page shorter than its header"));
    }
    if get_u16(page, 8) != FLAG_LEAF {
        return Err(corrupt(format!(
            "expected a leaf page, found type {:#x}",
            get_u16(page, 8)
        )));
    }
    let count = usize::from(get_u16(page, 10));
    for i in 0..count {
        let elem = PAGE_HEADER_BYTES + ELEMENT_BYTES * i;
        if elem + ELEMENT_BYTES > page.len() {
            return Err(corrupt(format!("leaf element {i} outside its page")));
        }
        let flags = get_u32(page, elem);
        let pos = get_u32(page, elem + 4) as usize;
        let ksize = get_u32(page, elem + 8) as usize;
        let vsize = get_u32(page, elem + 12) as usize;
        let start = elem + pos;
        let end = start.checked_add(ksize).and_then(|e| e.checked_add(vsize));
        match end {
            Some(end) if end <= page.len() => {
                let key = &page[start..start + ksize];
                f(
                    key,
                    &page[start + ksize..end],
                    flags & LEAF_FLAG_BUCKET != 0,
                )?;
            }
            _ => return Err(corrupt(format!("leaf element {i} points outside its page"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn elements_point_at_their_keys() {
        let entries = vec![
            (b"k1".to_vec(), b"v1".to_vec()),
            (b"k2".to_vec(), vec![7; 5000]),
        ];
        let page = leaf_page(9, &entries, false);
        assert_eq!(page.len(), 2 * PAGE_BYTES, "the large value overflows");
        assert_eq!(get_u32(&page, 12), 1);
        let mut seen = Vec::new();
        visit_leaf(&page, &mut |k, v, b| {
            assert!(!b);
            seen.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, entries);
    }
}
