//! Reads of the version table through a pinned page-store snapshot: the newest version of a key
//! at a revision (one `seek_le`), and the keys alive in a range, hopping from key to key.

use crate::page_store::Snapshot;

use super::encoding::{
    decode_version_key, version_key, version_prefix, version_prefix_successor, Record,
};
use super::range::KeyRange;
use super::{KeyValue, Result, Revision};

/// The newest version of `key` with `main <= rev`, tombstones included. One `seek_le`: the cost
/// does not depend on how many versions the key has.
pub(super) fn newest_at(
    snap: &Snapshot,
    key: &[u8],
    rev: i64,
) -> Result<Option<(Revision, Record)>> {
    let probe = version_key(
        key,
        Revision {
            main: rev,
            sub: i64::MAX,
        },
    );
    let Some((found, value)) = snap.seek_le(&probe)? else {
        return Ok(None);
    };
    if !found.starts_with(&version_prefix(key)) {
        return Ok(None);
    }
    let (found_key, found_rev) = decode_version_key(&found);
    assert_eq!(found_key, key, "version prefix matched another key");
    assert!(found_rev.main <= rev);
    Ok(Some((found_rev, Record::decode(&value))))
}

/// The key-value of `key` as of `rev`, or `None` if it did not exist then.
pub(super) fn get_at(snap: &Snapshot, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
    Ok(newest_at(snap, key, rev)?.and_then(|(r, rec)| rec.into_kv(key.to_vec(), r.main)))
}

/// The kvs alive at `rev` in a key range, ascending by key. Each step finds the next key with
/// any version (`range(..).next()` from just past the previous key's versions) and then its
/// newest version at `rev` (`seek_le`), so old versions are never scanned.
pub(super) struct AliveKeys<'a> {
    snap: &'a Snapshot,
    rev: i64,
    /// Where the next key's versions start (encoded); `None` when exhausted.
    cursor: Option<Vec<u8>>,
    /// Exclusive upper bound (encoded), `None` for the end of the version table.
    end: Option<Vec<u8>>,
    single: Option<Vec<u8>>,
}

impl<'a> AliveKeys<'a> {
    pub(super) fn new(snap: &'a Snapshot, range: &KeyRange, rev: i64) -> AliveKeys<'a> {
        let mut it = AliveKeys {
            snap,
            rev,
            cursor: None,
            end: None,
            single: None,
        };
        if range.is_empty() {
            return it;
        }
        match range {
            KeyRange::Single(key) => it.single = Some(key.clone()),
            KeyRange::Interval { start, end } => {
                it.cursor = Some(version_prefix(start));
                // The version table ends where the revision table begins.
                it.end = Some(end.as_ref().map_or_else(
                    || vec![super::encoding::TABLE_VERSION + 1],
                    |e| version_prefix(e),
                ));
            }
        }
        it
    }

    fn next_key(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        let Some(first) = self.snap.range(&cursor, self.end.as_deref()).next() else {
            return Ok(None);
        };
        let (key, _) = decode_version_key(&first?.0);
        self.cursor = Some(version_prefix_successor(&key));
        Ok(Some(key))
    }
}

impl Iterator for AliveKeys<'_> {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(key) = self.single.take() {
            return get_at(self.snap, &key, self.rev).transpose();
        }
        loop {
            let key = match self.next_key() {
                Ok(Some(key)) => key,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            match get_at(self.snap, &key, self.rev) {
                Ok(Some(kv)) => return Some(Ok(kv)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
