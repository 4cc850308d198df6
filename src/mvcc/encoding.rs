//! Byte encoding of MVCC's three tables in the page store's single ordered keyspace; the layout
//! is specified in the module doc of `mvcc`.

use super::{KeyValue, Revision};

/// First byte of every meta key.
pub(super) const TABLE_META: u8 = 0x01;
/// First byte of every version-table key: `0x02 ‖ escaped(key) ‖ 0x00 0x00 ‖ main ‖ sub`.
pub(super) const TABLE_VERSION: u8 = 0x02;
/// First byte of every revision-table key: `0x03 ‖ main ‖ sub`.
pub(super) const TABLE_REVISION: u8 = 0x03;

pub(super) const META_CURRENT_REV: &[u8] = b"\x01current_rev";
pub(super) const META_COMPACTED_REV: &[u8] = b"\x01compacted_rev";
pub(super) const META_COMPACT_JOB: &[u8] = b"\x01compact_job";

const REV_BYTES: usize = 16;
const RECORD_PUT: u8 = 0;
const RECORD_TOMBSTONE: u8 = 1;
const PUT_HEADER_BYTES: usize = 1 + 3 * 8;

const _: () = assert!(TABLE_META < TABLE_VERSION && TABLE_VERSION < TABLE_REVISION);

/// Appends `key` escaped so that the encoding stays ordered and prefix-free: `0x00` becomes
/// `0x00 0xFF`, and the terminator `0x00 0x00` that follows sorts below every continuation.
fn push_escaped(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

fn push_rev(out: &mut Vec<u8>, rev: Revision) {
    assert!(rev.main >= 0 && rev.sub >= 0, "negative revision {rev:?}");
    out.extend_from_slice(&rev.main.to_be_bytes());
    out.extend_from_slice(&rev.sub.to_be_bytes());
}

fn read_i64(bytes: &[u8]) -> i64 {
    i64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

/// `0x02 ‖ escaped(key) ‖ 0x00 0x00`: the prefix shared by every version of `key` and no other.
pub(super) fn version_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 3 + REV_BYTES);
    out.push(TABLE_VERSION);
    push_escaped(&mut out, key);
    out
}

/// The version-table key of `key` at `rev`.
pub(super) fn version_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = version_prefix(key);
    push_rev(&mut out, rev);
    out
}

/// A bound just above every version of `key` and below the versions of every greater key: the
/// terminator's second byte `0x00` raised to `0x01`, which no escaped byte pair uses.
pub(super) fn version_prefix_successor(key: &[u8]) -> Vec<u8> {
    let mut out = version_prefix(key);
    *out.last_mut().expect("terminator") = 0x01;
    out
}

/// Splits a version-table key into the user key and the revision.
pub(super) fn decode_version_key(encoded: &[u8]) -> (Vec<u8>, Revision) {
    assert!(
        encoded.len() >= 1 + 2 + REV_BYTES && encoded[0] == TABLE_VERSION,
        "not a version-table key: {encoded:x?}"
    );
    let (escaped, rev) = encoded[1..].split_at(encoded.len() - 1 - REV_BYTES);
    let mut key = Vec::with_capacity(escaped.len());
    let mut i = 0;
    loop {
        let b = escaped[i];
        if b == 0 {
            match escaped[i + 1] {
                0x00 => break,
                0xFF => key.push(0),
                other => panic!("bad escape byte {other:#x} in version key {encoded:x?}"),
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
    assert_eq!(
        i + 2,
        escaped.len(),
        "trailing bytes in version key {encoded:x?}"
    );
    let rev = Revision {
        main: read_i64(&rev[..8]),
        sub: read_i64(&rev[8..]),
    };
    (key, rev)
}

/// The revision-table key for `rev`.
pub(super) fn revision_key(rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + REV_BYTES);
    out.push(TABLE_REVISION);
    push_rev(&mut out, rev);
    out
}

pub(super) fn decode_revision_key(encoded: &[u8]) -> Revision {
    assert!(
        encoded.len() == 1 + REV_BYTES && encoded[0] == TABLE_REVISION,
        "not a revision-table key: {encoded:x?}"
    );
    Revision {
        main: read_i64(&encoded[1..9]),
        sub: read_i64(&encoded[9..]),
    }
}

/// One stored version of a key: a value or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    Put {
        create_revision: i64,
        version: i64,
        lease: i64,
        value: Vec<u8>,
    },
    Tombstone,
}

impl Record {
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            Record::Tombstone => vec![RECORD_TOMBSTONE],
            Record::Put {
                create_revision,
                version,
                lease,
                value,
            } => {
                assert!(*create_revision > 0 && *version > 0);
                let mut out = Vec::with_capacity(PUT_HEADER_BYTES + value.len());
                out.push(RECORD_PUT);
                out.extend_from_slice(&create_revision.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&lease.to_be_bytes());
                out.extend_from_slice(value);
                out
            }
        }
    }

    /// Decodes a record the page store returned. The page store has verified its checksum, so a
    /// malformed record is a bug in this module, not disk damage: it panics.
    pub(super) fn decode(bytes: &[u8]) -> Record {
        match bytes.first() {
            Some(&RECORD_TOMBSTONE) => {
                assert_eq!(bytes.len(), 1, "tombstone record with payload");
                Record::Tombstone
            }
            Some(&RECORD_PUT) => {
                assert!(bytes.len() >= PUT_HEADER_BYTES, "short put record");
                Record::Put {
                    create_revision: read_i64(&bytes[1..9]),
                    version: read_i64(&bytes[9..17]),
                    lease: read_i64(&bytes[17..25]),
                    value: bytes[PUT_HEADER_BYTES..].to_vec(),
                }
            }
            other => panic!("unknown MVCC record kind {other:?}"),
        }
    }

    pub(super) fn is_tombstone(&self) -> bool {
        matches!(self, Record::Tombstone)
    }

    /// The key-value this record describes as of `mod_revision`, or `None` for a tombstone.
    pub(super) fn into_kv(self, key: Vec<u8>, mod_revision: i64) -> Option<KeyValue> {
        match self {
            Record::Tombstone => None,
            Record::Put {
                create_revision,
                version,
                lease,
                value,
            } => Some(KeyValue {
                key,
                create_revision,
                mod_revision,
                version,
                value,
                lease,
            }),
        }
    }
}

pub(super) fn encode_i64(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub(super) fn decode_i64(bytes: &[u8]) -> i64 {
    assert_eq!(bytes.len(), 8, "meta value of {} bytes", bytes.len());
    read_i64(bytes)
}

/// A physical compaction in progress: removing what `compact(target)` made unreachable, having
/// started from the previous compacted revision `from`; `next` is the first revision-table
/// entry not yet examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CompactJob {
    pub(super) from: i64,
    pub(super) target: i64,
    pub(super) next: Revision,
}

impl CompactJob {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.target.to_be_bytes());
        push_rev(&mut out, self.next);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> CompactJob {
        assert_eq!(
            bytes.len(),
            32,
            "compaction job record of {} bytes",
            bytes.len()
        );
        CompactJob {
            from: read_i64(&bytes[..8]),
            target: read_i64(&bytes[8..16]),
            next: Revision {
                main: read_i64(&bytes[16..24]),
                sub: read_i64(&bytes[24..]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_keep_order_and_never_interleave() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"\x00\xff",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"a\x01",
            b"ab",
            b"b",
            b"\xff",
            b"\xff\xff",
        ];
        let revs = [
            Revision { main: 0, sub: 0 },
            Revision { main: 5, sub: 3 },
            Revision::MAX,
        ];
        let mut encoded = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for r in revs {
                let e = version_key(k, r);
                assert_eq!(decode_version_key(&e), (k.to_vec(), r));
                assert!(e.starts_with(&version_prefix(k)));
                assert!(e < version_prefix_successor(k));
                encoded.push((i, e));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            sorted, encoded,
            "encoding order must equal (key, revision) order"
        );
        for (i, k) in keys.iter().enumerate().skip(1) {
            assert!(version_prefix_successor(keys[i - 1]) <= version_prefix(k));
        }
    }

    #[test]
    fn records_round_trip() {
        let put = Record::Put {
            create_revision: 3,
            version: 2,
            lease: -7,
            value: b"v".to_vec(),
        };
        assert_eq!(Record::decode(&put.encode()), put);
        assert_eq!(
            Record::decode(&Record::Tombstone.encode()),
            Record::Tombstone
        );
        let job = CompactJob {
            from: -1,
            target: 9,
            next: Revision { main: 4, sub: 1 },
        };
        assert_eq!(CompactJob::decode(&job.encode()), job);
        assert_eq!(decode_revision_key(&revision_key(job.next)), job.next);
    }
}
