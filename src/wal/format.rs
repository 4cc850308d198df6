//! On-disk encoding: segment header, batch header, record frames and segment file names, as
//! specified in the module doc of `wal`. Pure functions over byte slices, no I/O.

use std::path::Path;

/// Unit of alignment: every segment header and every batch starts on a block boundary, and every
/// write covers whole blocks that no earlier acknowledged write touched.
pub const BLOCK_BYTES: usize = 4096;
/// Bytes of the segment header that carry data (the rest of block 0 is zero).
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// "RINGKVWL", little endian.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"RINGKVWL");
pub const FORMAT_VERSION: u32 = 1;
pub const BATCH_HEADER_BYTES: usize = 32;
/// "RKWB", little endian.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"RKWB");
pub const FRAME_HEADER_BYTES: usize = 16;
/// Frames start on 8-byte boundaries inside a batch payload.
pub const FRAME_ALIGN_BYTES: usize = 8;
/// The state records that open every segment: metadata, hard state and snapshot marker frames.
pub const STATE_RECORDS_BYTES_MAX: usize = 3 * FRAME_HEADER_BYTES + 24 + 16 + 16;

const _: () = assert!(BLOCK_BYTES.is_power_of_two());
const _: () = assert!(SEGMENT_HEADER_BYTES <= BLOCK_BYTES);
const _: () = assert!(BATCH_HEADER_BYTES % FRAME_ALIGN_BYTES == 0);
const _: () = assert!(FRAME_HEADER_BYTES % FRAME_ALIGN_BYTES == 0);
const _: () = assert!(BLOCK_BYTES % FRAME_ALIGN_BYTES == 0);

/// Record kinds as stored in a frame's `kind` byte. 0 is never valid, so zeroed space never
/// parses as a record.
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_METADATA: u8 = 4;

/// One logical record. The WAL knows nothing of raft; these are the shapes raft's storage needs.
///
/// Index rules, checked on append and applied on replay (as etcd's WAL does):
/// - an `Entry` at index `i` replaces every entry at index `>= i` (raft rewrites its log tail
///   after a leader change); `i` may be at most one past the last entry (no gaps), and must be
///   above the newest snapshot marker's index;
/// - a `Snapshot` marker says everything up to `index` is in a snapshot: replay drops entries at
///   or below it, and the next entry may follow it directly;
/// - `HardState` and `Metadata`: the newest one wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry {
        index: u64,
        term: u64,
        data: Vec<u8>,
    },
    HardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
    Snapshot {
        index: u64,
        term: u64,
    },
    Metadata {
        member_id: u64,
        cluster_id: u64,
    },
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Entry { .. } => KIND_ENTRY,
            Record::HardState { .. } => KIND_HARD_STATE,
            Record::Snapshot { .. } => KIND_SNAPSHOT,
            Record::Metadata { .. } => KIND_METADATA,
        }
    }

    fn body_bytes(&self) -> usize {
        match self {
            Record::Entry { data, .. } => 16 + data.len(),
            Record::HardState { .. } => 24,
            Record::Snapshot { .. } | Record::Metadata { .. } => 16,
        }
    }

    /// Bytes this record occupies in a batch payload, header and alignment padding included.
    pub fn frame_bytes(&self) -> usize {
        align_up(FRAME_HEADER_BYTES + self.body_bytes(), FRAME_ALIGN_BYTES)
    }
}

pub fn align_up(value: usize, align: usize) -> usize {
    assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Encodes `record` as a frame into `out[..record.frame_bytes()]`, which must be zeroed (the
/// alignment padding stays zero).
pub fn encode_frame(record: &Record, out: &mut [u8]) {
    let body_bytes = record.body_bytes();
    assert!(out.len() >= record.frame_bytes());
    assert!(u32::try_from(body_bytes).is_ok());
    let body = &mut out[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_bytes];
    match record {
        Record::Entry { index, term, data } => {
            put_u64(body, 0, *index);
            put_u64(body, 8, *term);
            body[16..].copy_from_slice(data);
        }
        Record::HardState { term, vote, commit } => {
            put_u64(body, 0, *term);
            put_u64(body, 8, *vote);
            put_u64(body, 16, *commit);
        }
        Record::Snapshot { index, term } => {
            put_u64(body, 0, *index);
            put_u64(body, 8, *term);
        }
        Record::Metadata {
            member_id,
            cluster_id,
        } => {
            put_u64(body, 0, *member_id);
            put_u64(body, 8, *cluster_id);
        }
    }
    put_u32(out, 0, body_bytes as u32);
    out[4] = record.kind();
    out[5..8].fill(0);
    let crc = frame_crc(&out[..FRAME_HEADER_BYTES + body_bytes]);
    put_u32(out, 8, crc);
    put_u32(out, 12, 0);
}

/// CRC32C over the frame's length, kind and reserved bytes and its body: everything but the
/// CRC field itself and the reserved word after it.
fn frame_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[..8]);
    crc32c::crc32c_append(crc, &frame[FRAME_HEADER_BYTES..])
}

/// Why a frame did not decode.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    Truncated,
    BadCrc,
    BadKind(u8),
    BadLength,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "record frame runs past its batch"),
            FrameError::BadCrc => write!(f, "record crc32c mismatch"),
            FrameError::BadKind(k) => write!(f, "unknown record kind {k}"),
            FrameError::BadLength => write!(f, "record length does not match its kind"),
        }
    }
}

/// Decodes the frame at the start of `buf`; returns the record and the frame's length (padding
/// included).
pub fn decode_frame(buf: &[u8]) -> Result<(Record, usize), FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Truncated);
    }
    let body_bytes = get_u32(buf, 0) as usize;
    let frame_bytes = align_up(FRAME_HEADER_BYTES + body_bytes, FRAME_ALIGN_BYTES);
    if frame_bytes > buf.len() {
        return Err(FrameError::Truncated);
    }
    if frame_crc(&buf[..FRAME_HEADER_BYTES + body_bytes]) != get_u32(buf, 8) {
        return Err(FrameError::BadCrc);
    }
    let body = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_bytes];
    let fixed = |n: usize| {
        if body_bytes == n {
            Ok(())
        } else {
            Err(FrameError::BadLength)
        }
    };
    let record = match buf[4] {
        KIND_ENTRY => {
            if body_bytes < 16 {
                return Err(FrameError::BadLength);
            }
            Record::Entry {
                index: get_u64(body, 0),
                term: get_u64(body, 8),
                data: body[16..].to_vec(),
            }
        }
        KIND_HARD_STATE => {
            fixed(24)?;
            Record::HardState {
                term: get_u64(body, 0),
                vote: get_u64(body, 8),
                commit: get_u64(body, 16),
            }
        }
        KIND_SNAPSHOT => {
            fixed(16)?;
            Record::Snapshot {
                index: get_u64(body, 0),
                term: get_u64(body, 8),
            }
        }
        KIND_METADATA => {
            fixed(16)?;
            Record::Metadata {
                member_id: get_u64(body, 0),
                cluster_id: get_u64(body, 8),
            }
        }
        other => return Err(FrameError::BadKind(other)),
    };
    Ok((record, frame_bytes))
}

/// Block 0 of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the log; consecutive segments have consecutive `seq`.
    pub seq: u64,
    /// Index the first entry written into this segment was expected to have (last entry + 1 when
    /// the segment was cut; 0 for the first segment of an empty log). Informational, like etcd's.
    pub first_index: u64,
    /// `batch_seq` of the segment's first batch; batch sequence numbers run on across segments.
    pub first_batch_seq: u64,
    /// Bytes the segment was preallocated to.
    pub segment_bytes: u64,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut [u8]) {
        assert!(out.len() >= SEGMENT_HEADER_BYTES);
        out[..SEGMENT_HEADER_BYTES].fill(0);
        put_u64(out, 0, SEGMENT_MAGIC);
        put_u32(out, 8, FORMAT_VERSION);
        put_u32(out, 12, BLOCK_BYTES as u32);
        put_u64(out, 16, self.seq);
        put_u64(out, 24, self.first_index);
        put_u64(out, 32, self.first_batch_seq);
        put_u64(out, 40, self.segment_bytes);
        let crc = crc32c::crc32c(&out[..60]);
        put_u32(out, 60, crc);
    }

    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, String> {
        if buf.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "file of {} bytes is shorter than a segment header",
                buf.len()
            ));
        }
        if get_u64(buf, 0) != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        if crc32c::crc32c(&buf[..60]) != get_u32(buf, 60) {
            return Err("segment header crc32c mismatch".into());
        }
        let version = get_u32(buf, 8);
        if version != FORMAT_VERSION {
            return Err(format!("unsupported format version {version}"));
        }
        if get_u32(buf, 12) as usize != BLOCK_BYTES {
            return Err(format!("unsupported block size {}", get_u32(buf, 12)));
        }
        Ok(SegmentHeader {
            seq: get_u64(buf, 16),
            first_index: get_u64(buf, 24),
            first_batch_seq: get_u64(buf, 32),
            segment_bytes: get_u64(buf, 40),
        })
    }
}

/// Header of one batch: the unit of one write and one fdatasync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_seq: u64,
    pub payload_bytes: u32,
    pub record_count: u32,
}

impl BatchHeader {
    pub fn encode(&self, out: &mut [u8]) {
        out[..BATCH_HEADER_BYTES].fill(0);
        put_u32(out, 0, BATCH_MAGIC);
        put_u32(out, 4, self.record_count);
        put_u64(out, 8, self.batch_seq);
        put_u32(out, 16, self.payload_bytes);
        let crc = crc32c::crc32c(&out[..28]);
        put_u32(out, 28, crc);
    }

    /// `None` unless `buf` starts with a well-formed batch header (magic and CRC).
    pub fn decode(buf: &[u8]) -> Option<BatchHeader> {
        if buf.len() < BATCH_HEADER_BYTES
            || get_u32(buf, 0) != BATCH_MAGIC
            || crc32c::crc32c(&buf[..28]) != get_u32(buf, 28)
        {
            return None;
        }
        Some(BatchHeader {
            batch_seq: get_u64(buf, 8),
            payload_bytes: get_u32(buf, 16),
            record_count: get_u32(buf, 4),
        })
    }

    /// Bytes the batch occupies on disk: header and payload, padded to the block size.
    pub fn extent_bytes(&self) -> usize {
        align_up(
            BATCH_HEADER_BYTES + self.payload_bytes as usize,
            BLOCK_BYTES,
        )
    }
}

/// `<seq:016x>-<first_index:016x>.wal`, so a directory listing sorts in log order.
pub fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Inverse of [`segment_file_name`]; `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

/// The file a segment is prepared in before it is renamed into the log.
pub fn spare_file_name(seq: u64) -> String {
    format!("{seq:016x}.tmp")
}

pub fn is_spare_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_flipped_bits() {
        let records = [
            Record::Entry {
                index: 7,
                term: 2,
                data: b"hello".to_vec(),
            },
            Record::Entry {
                index: 8,
                term: 2,
                data: vec![],
            },
            Record::HardState {
                term: 3,
                vote: 1,
                commit: 7,
            },
            Record::Snapshot { index: 5, term: 1 },
            Record::Metadata {
                member_id: 9,
                cluster_id: 10,
            },
        ];
        for record in &records {
            let mut buf = vec![0u8; record.frame_bytes()];
            encode_frame(record, &mut buf);
            assert_eq!(decode_frame(&buf), Ok((record.clone(), buf.len())));
            for bit in 0..(FRAME_HEADER_BYTES - 4 + record.body_bytes()) * 8 {
                let byte = if bit / 8 < 12 { bit / 8 } else { bit / 8 + 4 };
                let mut bad = buf.clone();
                bad[byte] ^= 1 << (bit % 8);
                assert!(
                    decode_frame(&bad).is_err(),
                    "flip of bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn state_records_fit_their_budget() {
        let state = [
            Record::HardState {
                term: 1,
                vote: 1,
                commit: 1,
            },
            Record::Snapshot { index: 1, term: 1 },
            Record::Metadata {
                member_id: 1,
                cluster_id: 1,
            },
        ];
        assert_eq!(
            state.iter().map(Record::frame_bytes).sum::<usize>(),
            STATE_RECORDS_BYTES_MAX
        );
    }

    #[test]
    fn headers_and_names_round_trip() {
        let header = SegmentHeader {
            seq: 3,
            first_index: 99,
            first_batch_seq: 12,
            segment_bytes: 1 << 16,
        };
        let mut block = vec![0u8; BLOCK_BYTES];
        header.encode(&mut block);
        assert_eq!(SegmentHeader::decode(&block), Ok(header));
        block[20] ^= 4;
        assert!(SegmentHeader::decode(&block).is_err());

        let batch = BatchHeader {
            batch_seq: 5,
            payload_bytes: 4100,
            record_count: 3,
        };
        let mut buf = [0u8; BATCH_HEADER_BYTES];
        batch.encode(&mut buf);
        assert_eq!(BatchHeader::decode(&buf), Some(batch));
        assert_eq!(batch.extent_bytes(), 2 * BLOCK_BYTES);
        assert_eq!(BatchHeader::decode(&[0u8; BATCH_HEADER_BYTES]), None);

        let name = segment_file_name(1, 0x2a);
        assert_eq!(name, "0000000000000001-000000000000002a.wal");
        assert_eq!(parse_segment_file_name(&name), Some((1, 0x2a)));
        assert_eq!(parse_segment_file_name("1-2.wal"), None);
    }
}
