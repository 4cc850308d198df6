//! Byte encoding of MVCC's three tables in the page store's single ordered keyspace; the layout
//! is specified in the module doc of `mvcc`.

use super::{KeyValue, Revision};

/// First byte of every meta key.
pub(super) const TABLE_META: u8 = 0x01;
/// First byte of every version-table key: `0x02 ‖ esc(key) ‖ 0x00 ‖ main ‖ sub`.
pub(super) const TABLE_VERSION: u8 = 0x02;
/// First byte of every revision-table key: `0x03 ‖ main ‖ sub`.
pub(super) const TABLE_REVISION: u8 = 0x03;

pub(super) const META_CURRENT_REV: &[u8] = b"\x01current_rev";
pub(super) const META_COMPACTED_REV: &[u8] = b"\x01compacted_rev";
pub(super) const META_COMPACT_JOB: &[u8] = b"\x01compact_job";
pub(super) const META_LAYOUT: &[u8] = b"\x01layout";

/// The version of this key layout, stored under `META_LAYOUT` (the mvcc module doc lists them).
/// A store without it was written by a ringkv from before layouts were versioned (layout 1).
pub(super) const LAYOUT_VERSION: i64 = 2;

const REV_BYTES: usize = 16;
const RECORD_PUT: u8 = 0;
const RECORD_TOMBSTONE: u8 = 1;
const PUT_HEADER_BYTES: usize = 1 + 3 * 8;

const _: () = assert!(TABLE_META < TABLE_VERSION && TABLE_VERSION < TABLE_REVISION);

/// Escape byte: content bytes 0xFE and 0xFF are written as `0xFF 0x01` and `0xFF 0x02`.
const ESCAPE: u8 = 0xFF;
/// Ends an escaped key; every escaped content byte is at least `0x01`.
const TERMINATOR: u8 = 0x00;
/// Bytes a version key adds to the user key, besides one per 0xFE/0xFF byte: the table byte,
/// the terminator and the 16-byte revision.
pub(super) const VERSION_KEY_OVERHEAD_BYTES: usize = 1 + 1 + REV_BYTES;

/// Appends `key` escaped and terminated (the mvcc module doc has the proof that this keeps key
/// order and is prefix-free): content byte `b <= 0xFD` becomes `b + 1`, so the zero-filled keys
/// clients use (etcdctl check perf) do not grow; `0xFE` and `0xFF` take two bytes.
fn push_escaped(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        match b {
            0xFE => out.extend_from_slice(&[ESCAPE, 0x01]),
            0xFF => out.extend_from_slice(&[ESCAPE, 0x02]),
            _ => out.push(b + 1),
        }
    }
    out.push(TERMINATOR);
}

/// Length of the version-table key of `key` at any revision: what the page store's key limit
/// applies to, so what the API layer and snapshot restore check user keys against.
pub fn version_key_len(key: &[u8]) -> usize {
    let escaped = key.iter().filter(|&&b| b >= 0xFE).count();
    key.len() + escaped + VERSION_KEY_OVERHEAD_BYTES
}

fn push_rev(out: &mut Vec<u8>, rev: Revision) {
    assert!(rev.main >= 0 && rev.sub >= 0, "negative revision {rev:?}");
    out.extend_from_slice(&rev.main.to_be_bytes());
    out.extend_from_slice(&rev.sub.to_be_bytes());
}

fn read_i64(bytes: &[u8]) -> i64 {
    i64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

/// `0x02 ‖ esc(key) ‖ 0x00`: the prefix shared by every version of `key` and no other.
pub(super) fn version_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(version_key_len(key));
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
/// terminator `0x00` raised to `0x01`, the least byte an escaped continuation can start with.
pub(super) fn version_prefix_successor(key: &[u8]) -> Vec<u8> {
    let mut out = version_prefix(key);
    let last = out.last_mut().expect("terminator");
    debug_assert_eq!(*last, TERMINATOR);
    *last = TERMINATOR + 1;
    out
}

/// Splits a version-table key into the user key and the revision. The key came from the page
/// store, which verified its checksum, and the layout version was checked at open: a malformed
/// one is a bug, so it panics.
pub(super) fn decode_version_key(encoded: &[u8]) -> (Vec<u8>, Revision) {
    assert!(
        encoded.len() >= VERSION_KEY_OVERHEAD_BYTES && encoded[0] == TABLE_VERSION,
        "not a version-table key: {encoded:x?}"
    );
    let (escaped, rev) = encoded[1..].split_at(encoded.len() - 1 - REV_BYTES);
    let mut key = Vec::with_capacity(escaped.len());
    let mut i = 0;
    loop {
        match escaped.get(i) {
            Some(&TERMINATOR) => break,
            Some(&ESCAPE) => {
                match escaped.get(i + 1) {
                    Some(0x01) => key.push(0xFE),
                    Some(0x02) => key.push(0xFF),
                    other => panic!("bad escape {other:x?} in version key {encoded:x?}"),
                }
                i += 2;
            }
            Some(&b) => {
                key.push(b - 1);
                i += 1;
            }
            None => panic!("unterminated version key {encoded:x?}"),
        }
    }
    assert_eq!(
        i + 1,
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

    use proptest::prelude::*;

    const REVS: [Revision; 5] = [
        Revision { main: 0, sub: 0 },
        Revision { main: 0, sub: 1 },
        Revision { main: 5, sub: 3 },
        Revision {
            main: 0xFF,
            sub: 0xFE,
        },
        Revision::MAX,
    ];

    /// The bytes the escape treats specially, and their neighbours.
    const EDGE_BYTES: [u8; 6] = [0x00, 0x01, 0x02, 0xFD, 0xFE, 0xFF];

    /// Every key of up to 3 bytes over `EDGE_BYTES`, ascending: empty, all-zero, all-0xFF,
    /// 0xFE/0xFF mixes, and every prefix of each of them.
    fn edge_keys() -> Vec<Vec<u8>> {
        let mut keys = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..3 {
            let next: Vec<Vec<u8>> = last
                .iter()
                .flat_map(|k: &Vec<u8>| {
                    EDGE_BYTES.iter().map(move |&b| {
                        let mut k = k.clone();
                        k.push(b);
                        k
                    })
                })
                .collect();
            keys.extend(next.iter().cloned());
            last = next;
        }
        keys.sort();
        keys
    }

    /// The layout's properties (mvcc module doc) for one pair of (key, revision).
    fn check_pair(a: &[u8], ra: Revision, b: &[u8], rb: Revision) {
        let (ea, eb) = (version_key(a, ra), version_key(b, rb));
        assert_eq!(
            ea.cmp(&eb),
            (a, ra).cmp(&(b, rb)),
            "order of {a:x?}@{ra:?} and {b:x?}@{rb:?}"
        );
        assert_eq!(decode_version_key(&ea), (a.to_vec(), ra));
        assert_eq!(ea.len(), version_key_len(a));
        assert!(ea.starts_with(&version_prefix(a)));
        assert!(ea < version_prefix_successor(a));
        if a != b {
            assert!(
                !eb.starts_with(&version_prefix(a)),
                "{b:x?}'s version under {a:x?}'s prefix"
            );
        }
        if a < b {
            assert!(
                version_prefix_successor(a) <= eb,
                "successor of {a:x?} above a version of {b:x?}"
            );
        }
    }

    #[test]
    fn edge_keys_keep_order_decode_and_never_interleave() {
        let keys = edge_keys();
        assert_eq!(keys.len(), 1 + 6 + 36 + 216);
        let mut encoded = Vec::new();
        for k in &keys {
            for r in REVS {
                encoded.push(version_key(k, r));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert!(
            sorted == encoded,
            "encoding order must equal (key, revision) order"
        );
        for a in keys.iter().step_by(7) {
            for b in &keys {
                check_pair(a, REVS[2], b, REVS[0]);
                check_pair(a, Revision::MAX, b, REVS[1]);
            }
        }
    }

    #[test]
    fn zero_padded_keys_do_not_grow() {
        // etcdctl check perf's key: a prefix and a varint zero-padded to 256 bytes.
        let mut key = b"/etcdctl-check-perf/".to_vec();
        key.extend_from_slice(&[0x96, 0x01]);
        key.resize(key.len() + 254, 0);
        assert_eq!(version_key_len(&key), key.len() + 18);
        assert_eq!(version_key_len(&[0xFF; 10]), 10 + 10 + 18);
        assert_eq!(version_key_len(b""), 18);
    }

    #[test]
    #[should_panic(expected = "bad escape")]
    fn a_malformed_escape_is_a_bug_not_a_key() {
        let mut e = version_key(b"\xfe", Revision { main: 2, sub: 0 });
        e[2] = 0x03;
        decode_version_key(&e);
    }

    /// Keys drawn mostly from the escape's edge bytes, some from everything.
    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => proptest::sample::select(EDGE_BYTES.to_vec()),
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..12)
    }

    fn rev_strategy() -> impl Strategy<Value = Revision> {
        (
            prop_oneof![0i64..4, Just(i64::MAX), 0..i64::MAX],
            prop_oneof![0i64..4, Just(i64::MAX)],
        )
            .prop_map(|(main, sub)| Revision { main, sub })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_keys_keep_order_decode_and_never_interleave(
            a in key_strategy(), ra in rev_strategy(), b in key_strategy(), rb in rev_strategy(),
            cut in 0usize..12,
        ) {
            check_pair(&a, ra, &b, rb);
            check_pair(&b, rb, &a, ra);
            // A prefix of a key against the key: the case a prefix-free encoding is for.
            let p = &a[..cut.min(a.len())];
            check_pair(p, rb, &a, ra);
            check_pair(&a, ra, p, rb);
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
