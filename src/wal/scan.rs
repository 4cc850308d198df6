//! Reading the log back: parsing one segment image into batches (telling a torn tail from
//! corruption) and replaying records into the recovered raft state. Pure, no I/O.

use std::path::Path;

use super::format::{
    decode_frame, BatchHeader, Record, SegmentHeader, BATCH_HEADER_BYTES, BLOCK_BYTES,
};
use super::WalError;

/// What one segment holds.
#[derive(Debug)]
pub struct SegmentScan {
    pub header: SegmentHeader,
    /// Every record of every complete batch, with the file offset of its frame.
    pub records: Vec<(u64, Record)>,
    /// Where the next batch of this segment would start.
    pub end_offset: u64,
    /// `batch_seq` the next batch must carry.
    pub next_batch_seq: u64,
    /// Garbage after `end_offset` left by an interrupted batch: the byte range to zero.
    pub torn: Option<TornTail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Start of the interrupted batch (== `end_offset`).
    pub offset: u64,
    /// End of the last non-zero block after `offset`.
    pub dirty_end: u64,
    /// Why the batch at `offset` did not parse, and where (for the log line).
    pub reason: String,
}

fn corruption(file: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corruption {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// The records of a batch with their offsets and the batch's end, or where and why it is bad.
type BatchParse = Result<(Vec<(u64, Record)>, usize), (u64, String)>;

/// Parses one batch at `pos`; on failure returns the offset of the first bad byte range (the
/// batch header or the record frame that failed) and why.
fn parse_batch(buf: &[u8], pos: usize, expected_seq: u64) -> BatchParse {
    let at = pos as u64;
    let Some(header) = BatchHeader::decode(&buf[pos..]) else {
        return Err((at, "no valid batch header".into()));
    };
    if header.batch_seq != expected_seq {
        return Err((
            at,
            format!(
                "batch_seq {} where {expected_seq} was expected",
                header.batch_seq
            ),
        ));
    }
    let payload_start = pos + BATCH_HEADER_BYTES;
    let payload_end = payload_start + header.payload_bytes as usize;
    if payload_end > buf.len() {
        return Err((at, "batch runs past the end of the segment".into()));
    }
    let mut records = Vec::with_capacity(header.record_count as usize);
    let mut cursor = payload_start;
    while cursor < payload_end {
        match decode_frame(&buf[cursor..payload_end]) {
            Ok((record, frame_bytes)) => {
                records.push((cursor as u64, record));
                cursor += frame_bytes;
            }
            Err(e) => return Err((cursor as u64, e.to_string())),
        }
    }
    if records.len() != header.record_count as usize {
        return Err((
            at,
            format!(
                "batch holds {} records, header says {}",
                records.len(),
                header.record_count
            ),
        ));
    }
    Ok((records, pos + header.extent_bytes()))
}

/// Parses a whole segment image.
///
/// `newest` says whether this is the newest segment, the only one that may end in a torn batch.
/// After the last good batch there must be only zeros, or (newest segment only) the remains of
/// one interrupted batch: if any block after a bad batch starts with a valid batch header of a
/// later `batch_seq`, a later batch was written after the bad one was synced, so the bad one was
/// acknowledged and this is corruption.
pub fn scan_segment(file: &Path, buf: &[u8], newest: bool) -> Result<SegmentScan, WalError> {
    let header = SegmentHeader::decode(buf).map_err(|reason| corruption(file, 0, reason))?;
    if buf.len() < 2 * BLOCK_BYTES || buf.len() % BLOCK_BYTES != 0 {
        return Err(corruption(
            file,
            0,
            format!("segment of {} bytes is not whole blocks", buf.len()),
        ));
    }
    let mut records = Vec::new();
    let mut pos = BLOCK_BYTES;
    let mut seq = header.first_batch_seq;
    let mut failure = None;
    while pos < buf.len() {
        match parse_batch(buf, pos, seq) {
            Ok((batch, next)) => {
                records.extend(batch);
                pos = next;
                seq += 1;
            }
            Err(bad) => {
                failure = Some(bad);
                break;
            }
        }
    }
    let torn = match failure {
        None => None,
        Some(_) if buf[pos..].iter().all(|&b| b == 0) => None,
        Some((bad_offset, reason)) => {
            let later_batch = (pos + BLOCK_BYTES..buf.len())
                .step_by(BLOCK_BYTES)
                .find(|&b| BatchHeader::decode(&buf[b..]).is_some_and(|h| h.batch_seq > seq));
            if let Some(b) = later_batch {
                return Err(corruption(
                    file,
                    bad_offset,
                    format!("{reason}, yet a later batch follows at offset {b}"),
                ));
            }
            if !newest {
                return Err(corruption(
                    file,
                    bad_offset,
                    format!("{reason} in a segment that is not the newest"),
                ));
            }
            let last_dirty = buf
                .iter()
                .rposition(|&b| b != 0)
                .expect("tail is not all zero");
            let dirty_end = (last_dirty / BLOCK_BYTES + 1) * BLOCK_BYTES;
            Some(TornTail {
                offset: pos as u64,
                dirty_end: dirty_end as u64,
                reason: format!("{reason} at offset {bad_offset}"),
            })
        }
    };
    Ok(SegmentScan {
        header,
        records,
        end_offset: pos as u64,
        next_batch_seq: seq,
        torn,
    })
}

/// Raft's durable state as of the newest record, without the entries: what the writer needs to
/// check submissions and to restate at the start of every segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    pub metadata: Option<Metadata>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMarker>,
    /// Index of the newest entry, or of the snapshot marker if that is higher.
    pub last_index: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub member_id: u64,
    pub cluster_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub index: u64,
    pub term: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

impl LogState {
    /// Checks `record` against the index rules of [`Record`].
    pub fn check(&self, record: &Record) -> Result<(), String> {
        if let Record::Entry { index, .. } = record {
            if let Some(snapshot) = self.snapshot {
                if *index <= snapshot.index {
                    return Err(format!(
                        "entry {index} is at or below snapshot index {}",
                        snapshot.index
                    ));
                }
            }
            if let Some(last) = self.last_index {
                if *index > last + 1 {
                    return Err(format!("entry {index} leaves a gap after index {last}"));
                }
            }
        }
        Ok(())
    }

    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Entry { index, .. } => self.last_index = Some(*index),
            Record::HardState { term, vote, commit } => {
                self.hard_state = Some(HardState {
                    term: *term,
                    vote: *vote,
                    commit: *commit,
                });
            }
            Record::Snapshot { index, term } => {
                self.snapshot = Some(SnapshotMarker {
                    index: *index,
                    term: *term,
                });
                self.last_index = Some(self.last_index.map_or(*index, |l| l.max(*index)));
            }
            Record::Metadata {
                member_id,
                cluster_id,
            } => {
                self.metadata = Some(Metadata {
                    member_id: *member_id,
                    cluster_id: *cluster_id,
                });
            }
        }
    }

    /// The records that restate this state at the start of a segment.
    pub fn state_records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(3);
        if let Some(m) = self.metadata {
            out.push(Record::Metadata {
                member_id: m.member_id,
                cluster_id: m.cluster_id,
            });
        }
        if let Some(h) = self.hard_state {
            out.push(Record::HardState {
                term: h.term,
                vote: h.vote,
                commit: h.commit,
            });
        }
        if let Some(s) = self.snapshot {
            out.push(Record::Snapshot {
                index: s.index,
                term: s.term,
            });
        }
        out
    }
}

/// Replays records in log order: the state plus the entries after applying rewrites and snapshot
/// markers.
#[derive(Debug, Default)]
pub struct Replay {
    pub state: LogState,
    /// Contiguous by index, all above the snapshot marker's index.
    pub entries: Vec<Entry>,
}

impl Replay {
    /// Applies one record read at `offset` of `file`. The writer checked every record against
    /// the same rules, so a violation here means the log was damaged.
    pub fn apply(&mut self, file: &Path, offset: u64, record: Record) -> Result<(), WalError> {
        self.state.apply(&record);
        match record {
            Record::Entry { index, term, data } => {
                if let Some(first) = self.entries.first().map(|e| e.index) {
                    let last = first + self.entries.len() as u64 - 1;
                    if index > last + 1 {
                        return Err(corruption(
                            file,
                            offset,
                            format!("entry {index} leaves a gap after {last}"),
                        ));
                    }
                    self.entries.truncate(index.saturating_sub(first) as usize);
                }
                self.entries.push(Entry { index, term, data });
            }
            Record::Snapshot { index, .. } => {
                let covered = self.entries.partition_point(|e| e.index <= index);
                self.entries.drain(..covered);
            }
            Record::HardState { .. } | Record::Metadata { .. } => {}
        }
        debug_assert!(self
            .entries
            .windows(2)
            .all(|w| w[1].index == w[0].index + 1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Record {
        Record::Entry {
            index,
            term,
            data: vec![index as u8],
        }
    }

    #[test]
    fn replay_applies_rewrites_and_snapshots() {
        let file = Path::new("x.wal");
        let mut replay = Replay::default();
        for r in [
            entry(1, 1),
            entry(2, 1),
            entry(3, 1),
            entry(2, 2),
            entry(3, 2),
            Record::Snapshot { index: 2, term: 2 },
            entry(4, 2),
        ] {
            replay.apply(file, 0, r).unwrap();
        }
        let got: Vec<(u64, u64)> = replay.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, [(3, 2), (4, 2)]);
        assert!(replay.apply(file, 0, entry(9, 2)).is_err());
    }

    #[test]
    fn checks_match_replay_rules() {
        let mut state = LogState::default();
        assert!(state.check(&entry(5, 1)).is_ok());
        state.apply(&entry(5, 1));
        assert!(state.check(&entry(7, 1)).is_err());
        assert!(state.check(&entry(3, 2)).is_ok());
        state.apply(&Record::Snapshot { index: 10, term: 2 });
        assert!(state.check(&entry(10, 2)).is_err());
        assert!(state.check(&entry(11, 2)).is_ok());
    }
}
