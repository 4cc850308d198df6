//! Raft snapshots: what the engine asks of the state machine to build and install one
//! ([`SnapshotImage`]), the small descriptor a `MsgSnapshot` carries, the registry the sending
//! side finds images in, and the byte format in which an image is streamed to a peer and staged
//! on its disk.
//!
//! # Stream format
//!
//! An image travels as a sequence of frames, each checked on its own, so a torn or corrupt chunk
//! is refused as soon as it arrives (not after gigabytes), and numbered, so a lost, repeated or
//! reordered chunk is too. The receiver stages the frames, unchanged, in one file; the restore
//! reads that file back with the same checks. Integers are big-endian.
//!
//! ```text
//! frame   | crc32c u32 | kind u8 | seq u32 | len u32 | payload (len bytes) |
//!           crc32c (Castagnoli) of kind ‖ seq ‖ len ‖ payload; seq = 0, 1, 2, ... in stream order
//! kind 1  header (seq 0 only):  index u64 | term u64 | app bytes (the rest: the engine's
//!                               metadata: the membership record, `Membership::snapshot`)
//! kind 2  records:              (klen u32 | vlen u32 | key | value)+, keys strictly ascending
//!                               across the whole stream
//! kind 3  end (last frame):     records u64 (in all record frames) | frames u32 (before this)
//! ```
//! A record frame is closed once its payload reaches [`CHUNK_BYTES`]; a single record may take
//! it past that (values are up to 16 MiB), never past [`FRAME_PAYLOAD_BYTES_MAX`]. A stream
//! without its end frame is incomplete and never restored.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// One record of an image, or why it could not be read.
pub type RecordResult = std::result::Result<(Vec<u8>, Vec<u8>), String>;

/// A point-in-time image of the state machine, readable from another thread while the state
/// machine goes on applying (it pins what it reads).
pub trait SnapshotImage: Send + Sync + 'static {
    /// Every record of the state, in strictly ascending key order. Blocking I/O: call it on a
    /// thread that may block.
    fn records(&self) -> Box<dyn Iterator<Item = RecordResult> + Send>;
}

/// Why a snapshot stream or staged image is refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStreamError {
    #[error("snapshot stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot stream: frame {seq} is torn ({have} of {need} bytes)")]
    Torn { seq: u32, have: usize, need: usize },
    #[error("snapshot stream: frame {seq} fails its checksum")]
    Checksum { seq: u32 },
    #[error("snapshot stream: frame {got} arrived where frame {expected} was due")]
    Sequence { expected: u32, got: u32 },
    #[error("snapshot stream: frame {seq} of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        seq: u32,
        bytes: usize,
        limit: usize,
    },
    #[error("snapshot stream: frame {seq}: {reason}")]
    Malformed { seq: u32, reason: String },
    #[error("snapshot stream: ended before its end frame")]
    Incomplete,
    #[error("snapshot stream: the image could not be read: {0}")]
    Source(String),
}

type Result<T> = std::result::Result<T, SnapshotStreamError>;

/// A record frame is closed once its payload reaches this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;
/// The largest frame payload: a chunk plus one record of the largest key and value.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = CHUNK_BYTES + (16 << 20) + (4 << 10) + 8;
/// Bytes before a frame's payload.
pub const FRAME_HEADER_BYTES: usize = 13;
/// The largest frame, for transports that bound their messages.
pub const FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX;

const KIND_HEADER: u8 = 1;
const KIND_RECORDS: u8 = 2;
const KIND_END: u8 = 3;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Header { index: u64, term: u64, app: Vec<u8> },
    Records(Vec<(Vec<u8>, Vec<u8>)>),
    End { records: u64, frames: u32 },
}

fn seal(kind: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= FRAME_PAYLOAD_BYTES_MAX,
        "frame payload over the limit"
    );
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Writes an image as frames, `app` in its header, handing each to `emit` as soon as it is
/// complete; `emit` returning `false` (the receiver went away) stops the walk. Returns the
/// records written.
pub fn write_stream(
    image: &dyn SnapshotImage,
    index: u64,
    term: u64,
    app: &[u8],
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<u64> {
    let closed = || SnapshotStreamError::Source("the receiver went away".into());
    let mut header = Vec::new();
    header.extend_from_slice(&index.to_be_bytes());
    header.extend_from_slice(&term.to_be_bytes());
    header.extend_from_slice(app);
    if !emit(seal(KIND_HEADER, 0, &header)) {
        return Err(closed());
    }
    let mut seq = 1u32;
    let mut records = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut previous: Option<Vec<u8>> = None;
    for record in image.records() {
        let (key, value) = record.map_err(SnapshotStreamError::Source)?;
        assert!(
            previous.as_deref().is_none_or(|p| p < key.as_slice()),
            "snapshot image records must be in strictly ascending key order"
        );
        chunk.extend_from_slice(&(key.len() as u32).to_be_bytes());
        chunk.extend_from_slice(&(value.len() as u32).to_be_bytes());
        chunk.extend_from_slice(&key);
        chunk.extend_from_slice(&value);
        records += 1;
        previous = Some(key);
        if chunk.len() >= CHUNK_BYTES {
            if !emit(seal(KIND_RECORDS, seq, &chunk)) {
                return Err(closed());
            }
            seq += 1;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        if !emit(seal(KIND_RECORDS, seq, &chunk)) {
            return Err(closed());
        }
        seq += 1;
    }
    let mut end = Vec::with_capacity(12);
    end.extend_from_slice(&records.to_be_bytes());
    end.extend_from_slice(&seq.to_be_bytes());
    if !emit(seal(KIND_END, seq, &end)) {
        return Err(closed());
    }
    Ok(records)
}

/// Checks frames in stream order: sequence, checksum, limits, key order and the end frame's
/// counts. The receiver runs each arriving chunk through one; so does the restore.
#[derive(Debug, Default)]
pub struct StreamChecker {
    next_seq: u32,
    records: u64,
    last_key: Option<Vec<u8>>,
    ended: bool,
}

impl StreamChecker {
    pub fn new() -> StreamChecker {
        StreamChecker::default()
    }

    /// Whether the end frame has been checked.
    pub fn is_complete(&self) -> bool {
        self.ended
    }

    /// Decodes and checks the next frame, given whole.
    pub fn check(&mut self, bytes: &[u8]) -> Result<Frame> {
        let seq = self.next_seq;
        if self.ended {
            return Err(SnapshotStreamError::Malformed {
                seq,
                reason: "data after the end frame".into(),
            });
        }
        if bytes.len() < FRAME_HEADER_BYTES {
            return Err(SnapshotStreamError::Torn {
                seq,
                have: bytes.len(),
                need: FRAME_HEADER_BYTES,
            });
        }
        let len = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        if len > FRAME_PAYLOAD_BYTES_MAX {
            return Err(SnapshotStreamError::TooLarge {
                seq,
                bytes: len,
                limit: FRAME_PAYLOAD_BYTES_MAX,
            });
        }
        if bytes.len() != FRAME_HEADER_BYTES + len {
            return Err(SnapshotStreamError::Torn {
                seq,
                have: bytes.len(),
                need: FRAME_HEADER_BYTES + len,
            });
        }
        let crc = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[4..]) != crc {
            return Err(SnapshotStreamError::Checksum { seq });
        }
        let got = u32::from_be_bytes(bytes[5..9].try_into().expect("4 bytes"));
        if got != seq {
            return Err(SnapshotStreamError::Sequence { expected: seq, got });
        }
        let frame = self.decode(seq, bytes[4], &bytes[FRAME_HEADER_BYTES..])?;
        self.next_seq += 1;
        Ok(frame)
    }

    fn decode(&mut self, seq: u32, kind: u8, payload: &[u8]) -> Result<Frame> {
        let malformed = |reason: &str| SnapshotStreamError::Malformed {
            seq,
            reason: reason.into(),
        };
        match kind {
            KIND_HEADER if seq == 0 => {
                if payload.len() < 16 {
                    return Err(malformed("short header"));
                }
                Ok(Frame::Header {
                    index: u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")),
                    term: u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes")),
                    app: payload[16..].to_vec(),
                })
            }
            _ if seq == 0 => Err(malformed("the first frame is not a header")),
            KIND_RECORDS => {
                let mut records = Vec::new();
                let mut rest = payload;
                while !rest.is_empty() {
                    if rest.len() < 8 {
                        return Err(malformed("record cut short"));
                    }
                    let klen = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                    let vlen = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
                    rest = &rest[8..];
                    if rest.len() < klen.saturating_add(vlen) {
                        return Err(malformed("record cut short"));
                    }
                    let (key, tail) = rest.split_at(klen);
                    let (value, tail) = tail.split_at(vlen);
                    if self.last_key.as_deref().is_some_and(|last| last >= key) {
                        return Err(malformed("keys out of order"));
                    }
                    self.last_key = Some(key.to_vec());
                    records.push((key.to_vec(), value.to_vec()));
                    rest = tail;
                }
                if records.is_empty() {
                    return Err(malformed("empty record frame"));
                }
                self.records += records.len() as u64;
                Ok(Frame::Records(records))
            }
            KIND_END => {
                if payload.len() != 12 {
                    return Err(malformed("end frame of the wrong size"));
                }
                let records = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                let frames = u32::from_be_bytes(payload[8..].try_into().expect("4 bytes"));
                if records != self.records || frames != seq {
                    return Err(malformed(&format!(
                        "end frame counts {records} records in {frames} frames, the stream had \
                         {} in {seq}",
                        self.records
                    )));
                }
                self.ended = true;
                Ok(Frame::End { records, frames })
            }
            other => Err(malformed(&format!("unknown frame kind {other}"))),
        }
    }
}

/// Reads one frame from `r`: `None` at a clean end of input. The frame is checked by the
/// caller's [`StreamChecker`].
pub fn read_frame(r: &mut impl Read, seq: u32) -> Result<Option<Vec<u8>>> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut have = 0;
    while have < header.len() {
        match r.read(&mut header[have..])? {
            0 if have == 0 => return Ok(None),
            0 => {
                return Err(SnapshotStreamError::Torn {
                    seq,
                    have,
                    need: FRAME_HEADER_BYTES,
                })
            }
            n => have += n,
        }
    }
    let len = u32::from_be_bytes(header[9..13].try_into().expect("4 bytes")) as usize;
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(SnapshotStreamError::TooLarge {
            seq,
            bytes: len,
            limit: FRAME_PAYLOAD_BYTES_MAX,
        });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    frame.extend_from_slice(&header);
    let got = r.take(len as u64).read_to_end(&mut frame)?;
    if got != len {
        return Err(SnapshotStreamError::Torn {
            seq,
            have: FRAME_HEADER_BYTES + got,
            need: FRAME_HEADER_BYTES + len,
        });
    }
    Ok(Some(frame))
}

/// A staged image read back for a restore: the header's fields, then its records in order,
/// every frame checked again; the iterator fails if the end frame is missing or wrong.
pub struct StagedImage {
    pub index: u64,
    pub term: u64,
    pub app: Vec<u8>,
    reader: std::io::BufReader<std::fs::File>,
    checker: StreamChecker,
    pending: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    failed: bool,
}

impl StagedImage {
    pub fn open(path: &Path) -> Result<StagedImage> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut checker = StreamChecker::new();
        let Some(first) = read_frame(&mut reader, 0)? else {
            return Err(SnapshotStreamError::Incomplete);
        };
        let Frame::Header { index, term, app } = checker.check(&first)? else {
            unreachable!("frame 0 is checked to be a header");
        };
        Ok(StagedImage {
            index,
            term,
            app,
            reader,
            checker,
            pending: Vec::new().into_iter(),
            failed: false,
        })
    }

    /// Reads the next frame: `true` with records pending, `false` after the end frame.
    fn refill(&mut self) -> Result<bool> {
        let Some(bytes) = read_frame(&mut self.reader, self.checker.next_seq)? else {
            return Err(SnapshotStreamError::Incomplete);
        };
        match self.checker.check(&bytes)? {
            Frame::Records(records) => {
                self.pending = records.into_iter();
                Ok(true)
            }
            Frame::End { .. } => {
                if read_frame(&mut self.reader, self.checker.next_seq)?.is_some() {
                    return Err(SnapshotStreamError::Malformed {
                        seq: self.checker.next_seq,
                        reason: "data after the end frame".into(),
                    });
                }
                Ok(false)
            }
            Frame::Header { .. } => unreachable!("only frame 0 is a header"),
        }
    }
}

impl Iterator for StagedImage {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(record) = self.pending.next() {
            return Some(Ok(record));
        }
        if self.checker.is_complete() {
            return None;
        }
        match self.refill() {
            Ok(true) => self.pending.next().map(Ok),
            Ok(false) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Where the receiver stages the image of index `index` in `dir`.
pub fn staged_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016x}.rsnap"))
}

/// The index of a staged image's file name, `None` for other files.
pub fn parse_staged_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".rsnap")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Names in `RINGKV_FAILPOINTS` (comma-separated) abort the process where `failpoint(name)` is
/// called: crash tests of the steps whose order matters. Read once.
pub fn failpoint(name: &str) {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        std::env::var("RINGKV_FAILPOINTS")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    });
    if names.iter().any(|n| n == name) {
        eprintln!("ringkv: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// `Snapshot::data` of a `MsgSnapshot`: which registered image the stream will carry.
const DESCRIPTOR_MAGIC: &[u8; 4] = b"RKS1";

pub fn encode_descriptor(image_id: u64) -> Vec<u8> {
    let mut out = DESCRIPTOR_MAGIC.to_vec();
    out.extend_from_slice(&image_id.to_be_bytes());
    out
}

pub fn decode_descriptor(data: &[u8]) -> Option<u64> {
    let id = data.strip_prefix(DESCRIPTOR_MAGIC)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

/// An image the leader has prepared, with the raft position it stands for.
#[derive(Clone)]
pub struct RegisteredImage {
    pub index: u64,
    pub term: u64,
    /// The header's app bytes: the membership record at `index` (empty without one).
    pub app: Arc<[u8]>,
    pub image: Arc<dyn SnapshotImage>,
}

/// Images the raft loop has prepared, by id, for the transport's snapshot senders. The loop
/// registers one when raft first asks for a snapshot and unregisters it once the log's
/// compaction passes it; a sender holds its own `Arc` while streaming.
#[derive(Default)]
pub struct ImageRegistry {
    images: Mutex<HashMap<u64, RegisteredImage>>,
}

impl ImageRegistry {
    pub fn insert(&self, id: u64, image: RegisteredImage) {
        self.images.lock().insert(id, image);
    }

    pub fn remove(&self, id: u64) {
        self.images.lock().remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<RegisteredImage> {
        self.images.lock().get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<(Vec<u8>, Vec<u8>)>);

    impl SnapshotImage for Fixed {
        fn records(&self) -> Box<dyn Iterator<Item = RecordResult> + Send> {
            Box::new(self.0.clone().into_iter().map(Ok))
        }
    }

    fn image(n: usize, value_bytes: usize) -> Fixed {
        Fixed(
            (0..n)
                .map(|i| (format!("k{i:08}").into_bytes(), vec![i as u8; value_bytes]))
                .collect(),
        )
    }

    fn frames(img: &Fixed) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        write_stream(img, 42, 7, b"members", |f| {
            out.push(f);
            true
        })
        .unwrap();
        out
    }

    fn check_all(frames: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut checker = StreamChecker::new();
        let mut records = Vec::new();
        for f in frames {
            if let Frame::Records(r) = checker.check(f)? {
                records.extend(r);
            }
        }
        if !checker.is_complete() {
            return Err(SnapshotStreamError::Incomplete);
        }
        Ok(records)
    }

    #[test]
    fn round_trip_in_bounded_chunks() {
        let img = image(3000, 1000);
        let frames = frames(&img);
        assert!(frames.len() > 3, "several record frames");
        for f in &frames {
            assert!(f.len() <= FRAME_HEADER_BYTES + CHUNK_BYTES + 2000);
        }
        assert_eq!(check_all(&frames).unwrap(), img.0);
    }

    #[test]
    fn empty_image_has_header_and_end() {
        let frames = frames(&Fixed(Vec::new()));
        assert_eq!(frames.len(), 2);
        assert!(check_all(&frames).unwrap().is_empty());
    }

    #[test]
    fn torn_corrupt_lost_and_reordered_frames_are_refused() {
        let frames = frames(&image(3000, 1000));
        let mut torn = frames.clone();
        torn[1].truncate(100);
        assert!(matches!(
            check_all(&torn),
            Err(SnapshotStreamError::Torn { seq: 1, .. })
        ));
        let mut flipped = frames.clone();
        flipped[2][500] ^= 1;
        let err = check_all(&flipped).unwrap_err();
        assert!(matches!(err, SnapshotStreamError::Checksum { seq: 2 }));
        assert_eq!(
            err.to_string(),
            "snapshot stream: frame 2 fails its checksum"
        );
        let mut lost = frames.clone();
        lost.remove(2);
        assert!(matches!(
            check_all(&lost),
            Err(SnapshotStreamError::Sequence {
                expected: 2,
                got: 3
            })
        ));
        let mut swapped = frames.clone();
        swapped.swap(1, 2);
        assert!(check_all(&swapped).is_err());
        let mut cut = frames.clone();
        cut.pop();
        assert!(matches!(
            check_all(&cut),
            Err(SnapshotStreamError::Incomplete)
        ));
        let mut oversized = frames[1].clone();
        oversized[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut checker = StreamChecker::new();
        checker.check(&frames[0]).unwrap();
        assert!(matches!(
            checker.check(&oversized),
            Err(SnapshotStreamError::TooLarge { .. })
        ));
    }

    #[test]
    fn staged_file_reads_back_and_a_cut_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(2500, 900);
        let path = staged_path(dir.path(), 42);
        let bytes: Vec<u8> = frames(&img).concat();
        std::fs::write(&path, &bytes).unwrap();
        let staged = StagedImage::open(&path).unwrap();
        assert_eq!((staged.index, staged.term), (42, 7));
        assert_eq!(staged.app, b"members");
        let records: Vec<_> = staged.map(|r| r.unwrap()).collect();
        assert_eq!(records, img.0);
        assert_eq!(parse_staged_name("000000000000002a.rsnap"), Some(42));
        assert_eq!(parse_staged_name("2a.rsnap"), None);

        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let results: Vec<_> = StagedImage::open(&path).unwrap().collect();
        assert!(
            results.last().unwrap().is_err(),
            "a cut file ends in an error"
        );
    }

    #[test]
    fn descriptor_round_trips() {
        assert_eq!(decode_descriptor(&encode_descriptor(9)), Some(9));
        assert_eq!(decode_descriptor(b"RKS1"), None);
        assert_eq!(decode_descriptor(b""), None);
    }
}
