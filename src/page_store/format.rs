//! On-disk encodings of the page store: page ids, the page header and its checksum, the segment
//! header page and the superblock slots. The byte diagrams are in the module doc of `mod.rs`.

use super::disk::SECTOR_BYTES;

/// The unit of allocation, I/O and checksumming.
pub const PAGE_BYTES: usize = 4096;
/// Every page starts with this header (checksum, kind, level, count, page id, generation, ...).
pub const HEADER_BYTES: usize = 32;
/// Bytes after the header that a page can use.
pub const PAYLOAD_BYTES: usize = PAGE_BYTES - HEADER_BYTES;
/// Longest key accepted; longer keys are refused with `KeyTooLarge`.
pub const MAX_KEY_BYTES: usize = 3072;
/// Longest value accepted; longer values are refused with `ValueTooLarge`.
pub const MAX_VALUE_BYTES: usize = 16 << 20;
/// A leaf entry (`LEAF_ENTRY_FIXED + key + value`) at most this long keeps its value inline;
/// a longer one moves the value to an overflow extent and keeps an 8-byte pointer.
/// Half a page: the largest size at which any two entries still share a leaf (what a split
/// needs). An extent is whole pages, so a value just over the limit costs a 4 KiB page; at
/// 1024 a 1.6 KB MVCC record (etcd's `check perf` put) took 4 KiB + a pointer entry, 2.5x the
/// bytes etcd stores (perf-reports/2026-11-21-check-perf-l-space).
pub const INLINE_ENTRY_MAX_BYTES: usize = PAYLOAD_BYTES / 2;
/// klen u16, vkind u8, vlen u32.
pub const LEAF_ENTRY_FIXED: usize = 7;
/// seplen u16, child u64 (the first child of a branch costs only its u64).
pub const BRANCH_ENTRY_FIXED: usize = 10;
/// Bytes at the start of each superblock slot covered by its checksum; the rest is zero.
pub const SUPERBLOCK_USED_BYTES: usize = 96;
/// Name of the file holding the two superblock slots.
pub const SUPERBLOCK_FILE: &str = "superblock";

pub const SUPERBLOCK_MAGIC: u32 = u32::from_le_bytes(*b"RKSB");
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RKSG");
pub const FORMAT_VERSION: u32 = 1;

// A maximal leaf entry (key at the limit, value moved out) and a maximal branch entry both fit
// a page with room to spare, so a split always has somewhere to put every entry.
const _: () = assert!(LEAF_ENTRY_FIXED + MAX_KEY_BYTES + 8 <= PAYLOAD_BYTES);
const _: () = assert!(INLINE_ENTRY_MAX_BYTES <= PAYLOAD_BYTES / 2);
const _: () = assert!(8 + BRANCH_ENTRY_FIXED + MAX_KEY_BYTES <= PAYLOAD_BYTES);
// Torn writes land in whole sectors; a page spans whole sectors so a tear is inside one page's
// checksum or between pages, never hidden.
const _: () = assert!(PAGE_BYTES % SECTOR_BYTES == 0);
const _: () = assert!(SUPERBLOCK_USED_BYTES <= SECTOR_BYTES);
// The overflow head page holds the key length and key before the value.
const _: () = assert!(2 + MAX_KEY_BYTES <= PAYLOAD_BYTES);

/// What a page holds; byte 4 of the header. Zero (a never-written page) is not a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Leaf = 1,
    Branch = 2,
    OverflowHead = 3,
    OverflowTail = 4,
    Segment = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Leaf,
            2 => Kind::Branch,
            3 => Kind::OverflowHead,
            4 => Kind::OverflowTail,
            5 => Kind::Segment,
            _ => return None,
        })
    }
}

/// A page id is its location: segment id in the high 32 bits, page index in the segment in the
/// low 32. Id 0 is "no page" (segment ids start at 1).
pub fn page_id(segment: u32, index: u32) -> u64 {
    (u64::from(segment) << 32) | u64::from(index)
}

pub fn segment_of(id: u64) -> u32 {
    (id >> 32) as u32
}

pub fn index_of(id: u64) -> u32 {
    id as u32
}

pub fn offset_of(id: u64) -> u64 {
    u64::from(index_of(id)) * PAGE_BYTES as u64
}

pub fn segment_file_name(segment: u32) -> String {
    format!("seg-{segment:016x}")
}

pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("seg-")?;
    if hex.len() != 16 {
        return None;
    }
    u32::try_from(u64::from_str_radix(hex, 16).ok()?).ok()
}

/// Pages of an overflow extent holding `key` and a value of `value_len` bytes.
pub fn extent_pages(key_len: usize, value_len: usize) -> u32 {
    (2 + key_len + value_len).div_ceil(PAYLOAD_BYTES) as u32
}

/// The decoded fixed header of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub level: u8,
    pub count: u16,
    pub id: u64,
    pub generation: u64,
    pub payload_bytes: u32,
    /// Overflow head: pages in the extent; overflow tail: index in the extent; else 1.
    pub extent: u32,
}

/// Writes `header` into the first `HEADER_BYTES` of `page` and seals the page with its checksum
/// (CRC32C of bytes 4..PAGE_BYTES).
pub fn seal_page(page: &mut [u8], header: &Header) {
    assert_eq!(page.len(), PAGE_BYTES);
    assert!(header.payload_bytes as usize <= PAYLOAD_BYTES);
    page[4] = header.kind as u8;
    page[5] = header.level;
    page[6..8].copy_from_slice(&header.count.to_le_bytes());
    page[8..16].copy_from_slice(&header.id.to_le_bytes());
    page[16..24].copy_from_slice(&header.generation.to_le_bytes());
    page[24..28].copy_from_slice(&header.payload_bytes.to_le_bytes());
    page[28..32].copy_from_slice(&header.extent.to_le_bytes());
    let crc = crc32c::crc32c(&page[4..]);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Verifies a page read from location `id`: checksum, a known kind, the id it was written for
/// (catches misdirected writes and reads) and a sane payload length. Err is the failure detail.
pub fn open_page(page: &[u8], id: u64) -> Result<Header, String> {
    assert_eq!(page.len(), PAGE_BYTES);
    let stored = u32_at(page, 0);
    let actual = crc32c::crc32c(&page[4..]);
    if stored != actual {
        return Err(format!(
            "page checksum mismatch (stored {stored:#010x}, computed {actual:#010x}): torn, \
             never written or corrupted"
        ));
    }
    let kind = Kind::from_u8(page[4]).ok_or_else(|| format!("unknown page kind {}", page[4]))?;
    let header = Header {
        kind,
        level: page[5],
        count: u16::from_le_bytes([page[6], page[7]]),
        id: u64_at(page, 8),
        generation: u64_at(page, 16),
        payload_bytes: u32_at(page, 24),
        extent: u32_at(page, 28),
    };
    if header.id != id {
        return Err(format!(
            "page claims id {:#x} but was read from {id:#x}",
            header.id
        ));
    }
    if header.payload_bytes as usize > PAYLOAD_BYTES {
        return Err(format!("payload length {} too large", header.payload_bytes));
    }
    Ok(header)
}

pub fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(buf[at..at + 2].try_into().unwrap())
}

pub fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}

pub fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

/// The first page of every segment file.
pub fn segment_header_page(segment: u32, generation: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_BYTES];
    let p = &mut page[HEADER_BYTES..];
    p[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    p[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    p[8..12].copy_from_slice(&segment.to_le_bytes());
    seal_page(
        &mut page,
        &Header {
            kind: Kind::Segment,
            level: 0,
            count: 0,
            id: page_id(segment, 0),
            generation,
            payload_bytes: 12,
            extent: 1,
        },
    );
    page
}

/// Checks a segment header page; Err is the failure detail.
pub fn check_segment_header(page: &[u8], segment: u32) -> Result<(), String> {
    let h = open_page(page, page_id(segment, 0))?;
    let p = &page[HEADER_BYTES..];
    if h.kind != Kind::Segment || u32_at(p, 0) != SEGMENT_MAGIC {
        return Err("not a segment header".into());
    }
    if u32_at(p, 4) != FORMAT_VERSION || u32_at(p, 8) != segment {
        return Err("segment header names another version or segment".into());
    }
    Ok(())
}

/// The durable root of the store: one superblock slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Superblock {
    pub generation: u64,
    /// Root page id; 0 for the empty tree.
    pub root: u64,
    /// Levels in the tree: 0 empty, 1 a lone leaf, ...
    pub height: u32,
    pub consistent_index: u64,
    /// Every segment id in use is below this; ids are never reused.
    pub next_segment: u32,
    /// The segment being appended to when this slot was written, and its first unused page.
    pub active_segment: u32,
    pub active_end_page: u32,
    /// Entries in the tree.
    pub entries: u64,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_BYTES];
        b[4..8].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.root.to_le_bytes());
        b[32..36].copy_from_slice(&self.height.to_le_bytes());
        b[36..40].copy_from_slice(&self.next_segment.to_le_bytes());
        b[40..48].copy_from_slice(&self.consistent_index.to_le_bytes());
        b[48..52].copy_from_slice(&self.active_segment.to_le_bytes());
        b[52..56].copy_from_slice(&self.active_end_page.to_le_bytes());
        b[56..64].copy_from_slice(&self.entries.to_le_bytes());
        let crc = crc32c::crc32c(&b[4..SUPERBLOCK_USED_BYTES]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a slot; `None` if its checksum, magic, version or page size is wrong (a torn or
    /// never-written slot).
    pub fn decode(b: &[u8]) -> Option<Superblock> {
        if b.len() < SUPERBLOCK_USED_BYTES
            || u32_at(b, 0) != crc32c::crc32c(&b[4..SUPERBLOCK_USED_BYTES])
            || u32_at(b, 4) != SUPERBLOCK_MAGIC
            || u32_at(b, 8) != FORMAT_VERSION
            || u32_at(b, 12) as usize != PAGE_BYTES
        {
            return None;
        }
        Some(Superblock {
            generation: u64_at(b, 16),
            root: u64_at(b, 24),
            height: u32_at(b, 32),
            next_segment: u32_at(b, 36),
            consistent_index: u64_at(b, 40),
            active_segment: u32_at(b, 48),
            active_end_page: u32_at(b, 52),
            entries: u64_at(b, 56),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_page_opens_and_any_flipped_byte_is_caught() {
        let mut page = vec![0u8; PAGE_BYTES];
        page[HEADER_BYTES..HEADER_BYTES + 3].copy_from_slice(b"abc");
        let h = Header {
            kind: Kind::Leaf,
            level: 0,
            count: 1,
            id: page_id(3, 7),
            generation: 9,
            payload_bytes: 3,
            extent: 1,
        };
        seal_page(&mut page, &h);
        assert_eq!(open_page(&page, page_id(3, 7)), Ok(h));
        assert!(open_page(&page, page_id(3, 8)).is_err());
        for at in [0, 4, 20, HEADER_BYTES + 1, PAGE_BYTES - 1] {
            let mut bad = page.clone();
            bad[at] ^= 0x40;
            assert!(open_page(&bad, page_id(3, 7)).is_err(), "flip at {at}");
        }
        assert!(open_page(&vec![0u8; PAGE_BYTES], page_id(3, 7)).is_err());
    }

    #[test]
    fn superblock_round_trips_and_rejects_a_tear() {
        let sb = Superblock {
            generation: 5,
            root: page_id(2, 1),
            height: 2,
            consistent_index: 77,
            next_segment: 4,
            active_segment: 3,
            active_end_page: 12,
            entries: 1000,
        };
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b), Some(sb));
        let mut torn = b.clone();
        torn[40] ^= 1;
        assert_eq!(Superblock::decode(&torn), None);
        assert_eq!(Superblock::decode(&vec![0u8; PAGE_BYTES]), None);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("superblock"), None);
        assert_eq!(parse_segment_file_name("seg-zz"), None);
    }
}
