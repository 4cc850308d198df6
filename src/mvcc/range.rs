//! Range requests as etcd's server answers them: the key-interval rules of `RangeRequest`, the
//! fetch limit, the revision filters, sorting, truncation and the `more` flag.
//!
//! etcd splits a range in two: `mvcc.rangeKeys` returns the keys alive at the read revision
//! (at most `limit` of them, plus the total `count`), and `etcdserver/txn/range.go` then filters,
//! sorts, truncates and sets `more`. This file is that second half; `collect` is the first
//! half's counting loop. Differences from etcd: ties in a sort keep ascending key order (etcd's
//! sort is unstable, so any order is a correct answer there).

use std::cmp::Ordering;

use super::{KeyValue, RangeOptions, RangeResult, Result, SortOrder, SortTarget};

/// The key interval of a range request, decoded from etcd's `(key, range_end)` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyRange {
    /// `range_end` empty: only `key`.
    Single(Vec<u8>),
    /// `start <= k < end`; `end == None` (`range_end == "\0"`) means to the end of the keyspace.
    Interval {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    pub(super) fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::Interval {
                start: key.to_vec(),
                end: None,
            },
            end => KeyRange::Interval {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    pub(super) fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => k == key.as_slice(),
            KeyRange::Interval { start, end } => {
                k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice())
            }
        }
    }

    /// Whether no key can be in the interval (`range_end <= key`).
    pub(super) fn is_empty(&self) -> bool {
        match self {
            KeyRange::Single(_) => false,
            KeyRange::Interval { start, end } => end.as_ref().is_some_and(|e| e <= start),
        }
    }
}

/// etcd's `GetPrefixRangeEnd`: the smallest key greater than every key with prefix `key` —
/// `key` with trailing 0xff bytes dropped and the last other byte incremented. When every byte is
/// 0xff (or `key` is empty) no such key exists and the answer is `"\0"`, which as a `range_end`
/// means "to the end of the keyspace".
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    match key.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = key[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// What to ask of the storage half: how many kvs to fetch (`0` = all) and whether to fetch any.
/// etcd fetches everything when it must sort or filter, and one extra kv to learn `more`.
pub(super) fn fetch_limit(opts: &RangeOptions) -> i64 {
    let mut limit = opts.limit;
    if !is_default_ordering(opts.sort_target, opts.sort_order) || has_revision_filters(opts) {
        limit = 0;
    }
    if limit > 0 && limit < i64::MAX {
        limit += 1;
    }
    limit
}

fn is_default_ordering(target: SortTarget, order: SortOrder) -> bool {
    order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend)
}

fn has_revision_filters(opts: &RangeOptions) -> bool {
    opts.min_mod_revision != 0
        || opts.max_mod_revision != 0
        || opts.min_create_revision != 0
        || opts.max_create_revision != 0
}

/// The storage half's counting loop: `count` is every kv alive in the range at the read revision,
/// whatever the limit; kvs are kept up to `limit` (`<= 0`: all) unless `count_only`.
pub(super) fn collect(
    alive: impl Iterator<Item = Result<KeyValue>>,
    limit: i64,
    count_only: bool,
) -> Result<(Vec<KeyValue>, i64)> {
    let mut kvs = Vec::new();
    let mut count = 0i64;
    for kv in alive {
        let kv = kv?;
        count += 1;
        if !count_only && (limit <= 0 || (kvs.len() as i64) < limit) {
            kvs.push(kv);
        }
    }
    Ok((kvs, count))
}

/// The server half: filter, sort, truncate, strip values. `count` is the storage count, which
/// etcd does not reduce by the revision filters; `more` says whether kvs were cut at `limit`.
pub(super) fn finish(
    mut kvs: Vec<KeyValue>,
    count: i64,
    rev: i64,
    opts: &RangeOptions,
) -> RangeResult {
    if opts.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= opts.max_mod_revision);
    }
    if opts.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= opts.min_mod_revision);
    }
    if opts.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= opts.max_create_revision);
    }
    if opts.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= opts.min_create_revision);
    }
    sort(&mut kvs, opts.sort_target, opts.sort_order);
    let mut more = false;
    if opts.limit > 0 && kvs.len() as i64 > opts.limit {
        kvs.truncate(opts.limit as usize);
        more = true;
    }
    if opts.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    RangeResult {
        kvs,
        count,
        more,
        rev,
    }
}

/// Storage returns kvs in ascending key order. A target other than KEY with order NONE means
/// ASCEND (etcd's rule); KEY ASCEND and NONE need no sort.
fn sort(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    if is_default_ordering(target, order) {
        return;
    }
    if target == SortTarget::Key && order == SortOrder::Descend {
        kvs.reverse();
        return;
    }
    let ascending = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| ascending(b, a));
    } else {
        kvs.sort_by(ascending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"foo"), b"fop");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\x00");
        assert_eq!(prefix_end(b""), b"\x00");
        assert_eq!(prefix_end(b"\x00"), b"\x01");
    }

    #[test]
    fn key_range_conventions() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        let all = KeyRange::new(b"\x00", b"\x00");
        assert!(all.contains(b"\x00") && all.contains(b"\xff\xff\xff") && !all.contains(b""));
        assert!(KeyRange::new(b"b", b"a").is_empty());
        assert!(KeyRange::new(b"b", b"b").is_empty());
        assert!(!KeyRange::new(b"b", b"\x00").is_empty());
    }
}
