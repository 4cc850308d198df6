//! A user's merged key permissions: the union of its roles' READ and WRITE intervals, and the
//! two checks etcd makes against them (`checkKeyPoint`, `checkKeyInterval`).
//!
//! A permission is a half-open interval of keys `[key, range_end)`: an empty `range_end` is the
//! single key (`[key, key ‖ 0x00)`), and `range_end = "\0"` is open ended (every key from
//! `key` on), as in etcd's `adt` affine intervals. A request's range is permitted when the
//! union of the user's intervals covers it entirely; a single key when some interval holds it.

use ringkv_proto::authpb::{permission, Permission};

/// One end of an interval; `Infinite` sorts above every key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Infinite,
}

/// Disjoint, non-adjacent intervals sorted by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct IntervalSet {
    intervals: Vec<(Vec<u8>, End)>,
}

impl IntervalSet {
    /// Merges `raw` (any order, overlapping or not) into a set.
    fn from_intervals(mut raw: Vec<(Vec<u8>, End)>) -> IntervalSet {
        raw.retain(|(begin, end)| match end {
            End::Key(end) => begin < end,
            End::Infinite => true,
        });
        raw.sort();
        let mut intervals: Vec<(Vec<u8>, End)> = Vec::with_capacity(raw.len());
        for (begin, end) in raw {
            if let Some(last) = intervals.last_mut() {
                // Overlapping or touching: `[a, b)` and `[b, c)` cover `[a, c)`.
                if last.1 >= End::Key(begin.clone()) {
                    if end > last.1 {
                        last.1 = end;
                    }
                    continue;
                }
            }
            intervals.push((begin, end));
        }
        IntervalSet { intervals }
    }

    /// The interval holding `key`, if any: the last one starting at or before it.
    fn containing(&self, key: &[u8]) -> Option<&(Vec<u8>, End)> {
        let after = self
            .intervals
            .partition_point(|(begin, _)| begin.as_slice() <= key);
        let candidate = self.intervals.get(after.checked_sub(1)?)?;
        match &candidate.1 {
            End::Key(end) if end.as_slice() <= key => None,
            _ => Some(candidate),
        }
    }

    fn contains_key(&self, key: &[u8]) -> bool {
        self.containing(key).is_some()
    }

    /// Whether `[key, end)` is covered. Since the set is merged, one interval must hold it all.
    fn covers(&self, key: &[u8], end: &End) -> bool {
        if let End::Key(end) = end {
            if end.as_slice() <= key {
                // An empty range reads nothing; etcd's interval tree treats it as the point.
                return self.contains_key(key);
            }
        }
        self.containing(key).is_some_and(|(_, have)| have >= end)
    }
}

/// What a user may read and write, merged over its roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPerms {
    read: IntervalSet,
    write: IntervalSet,
}

/// Read or write, the two kinds of access a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

fn interval(perm: &Permission) -> (Vec<u8>, End) {
    let end = match perm.range_end.as_slice() {
        [] => {
            let mut next = perm.key.clone();
            next.push(0);
            End::Key(next)
        }
        [0] => End::Infinite,
        end => End::Key(end.to_vec()),
    };
    (perm.key.clone(), end)
}

impl UserPerms {
    /// Merges the permissions of all `roles`' permission lists.
    pub fn merge<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> UserPerms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for perm in perms {
            let ivl = interval(perm);
            match permission::Type::try_from(perm.perm_type) {
                Ok(permission::Type::Read) => read.push(ivl),
                Ok(permission::Type::Write) => write.push(ivl),
                Ok(permission::Type::Readwrite) => {
                    read.push(ivl.clone());
                    write.push(ivl);
                }
                // An unknown type grants nothing (the API refuses to store one).
                Err(_) => {}
            }
        }
        UserPerms {
            read: IntervalSet::from_intervals(read),
            write: IntervalSet::from_intervals(write),
        }
    }

    /// etcd's `isRangeOpPermitted`: `range_end` empty is the single key `key`, `"\0"` is every
    /// key from `key` on.
    pub fn permits(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        match range_end {
            [] => set.contains_key(key),
            [0] => set.covers(key, &End::Infinite),
            end => set.covers(key, &End::Key(end.to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use permission::Type;

    fn perm(kind: Type, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: key.into(),
            range_end: end.into(),
        }
    }

    fn perms(list: &[Permission]) -> UserPerms {
        UserPerms::merge(list)
    }

    #[test]
    fn a_single_key_permits_only_that_key() {
        let p = perms(&[perm(Type::Read, "foo", "")]);
        assert!(p.permits(Access::Read, b"foo", b""));
        assert!(!p.permits(Access::Read, b"fo", b""));
        assert!(!p.permits(Access::Read, b"foo\0", b""));
        assert!(!p.permits(Access::Read, b"fooa", b""));
        assert!(!p.permits(Access::Write, b"foo", b""));
        // The range holding exactly that key is covered; one more byte is not.
        assert!(p.permits(Access::Read, b"foo", b"foo\0"));
        assert!(!p.permits(Access::Read, b"foo", b"foo\0\0"));
        assert!(!p.permits(Access::Read, b"foo", b"fop"));
    }

    #[test]
    fn ranges_are_half_open_and_readwrite_grants_both() {
        let p = perms(&[perm(Type::Readwrite, "a", "c")]);
        for access in [Access::Read, Access::Write] {
            assert!(p.permits(access, b"a", b""));
            assert!(p.permits(access, b"bzzz", b""));
            assert!(!p.permits(access, b"c", b""));
            assert!(p.permits(access, b"a", b"c"));
            assert!(p.permits(access, b"b", b"b5"));
            assert!(!p.permits(access, b"a", b"c\0"));
            assert!(!p.permits(access, b"0", b"b"));
            assert!(!p.permits(access, b"a", b"\0"), "open ended goes past c");
        }
    }

    #[test]
    fn a_prefix_grant_covers_a_prefix_read() {
        // etcdctl --prefix pre/ sends [pre/, pre0).
        let p = perms(&[perm(Type::Read, "pre/", "pre0")]);
        assert!(p.permits(Access::Read, b"pre/", b"pre0"));
        assert!(p.permits(Access::Read, b"pre/x", b""));
        assert!(p.permits(Access::Read, b"pre/x/", b"pre/x0"));
        assert!(!p.permits(Access::Read, b"pre", b"pre0"));
        assert!(!p.permits(Access::Read, b"pre0", b""));
    }

    #[test]
    fn open_ended_grants_cover_everything_after() {
        let p = perms(&[perm(Type::Write, "z", "\0")]);
        assert!(p.permits(Access::Write, b"z", b"\0"));
        assert!(p.permits(Access::Write, b"zz", b"\0"));
        assert!(p.permits(Access::Write, b"\xff\xff", b""));
        assert!(p.permits(Access::Write, b"z", b"\xff"));
        assert!(!p.permits(Access::Write, b"y", b"\0"));
        assert!(!p.permits(Access::Read, b"z", b""));
    }

    #[test]
    fn the_union_of_touching_or_overlapping_grants_covers_across_them() {
        let p = perms(&[
            perm(Type::Read, "b", "d"),
            perm(Type::Read, "a", "b"),
            perm(Type::Read, "c", "f"),
            perm(Type::Read, "x", ""),
        ]);
        assert!(p.permits(Access::Read, b"a", b"f"));
        assert!(!p.permits(Access::Read, b"a", b"f\0"));
        // A gap between f and x breaks coverage.
        assert!(!p.permits(Access::Read, b"a", b"x\0"));
        assert!(p.permits(Access::Read, b"x", b""));
        // A key that is also its own point grant next to a range.
        let q = perms(&[perm(Type::Read, "a", "b"), perm(Type::Read, "b", "")]);
        assert!(q.permits(Access::Read, b"a", b"b\0"));
        assert!(!q.permits(Access::Read, b"a", b"b\0\0"));
    }

    #[test]
    fn empty_and_inverted_requests_fall_back_to_the_point() {
        let p = perms(&[perm(Type::Read, "k", "")]);
        assert!(p.permits(Access::Read, b"k", b"a"));
        assert!(!p.permits(Access::Read, b"j", b"a"));
        // An inverted grant grants nothing.
        let q = perms(&[perm(Type::Read, "m", "a")]);
        assert!(!q.permits(Access::Read, b"m", b""));
        assert_eq!(UserPerms::merge(&[]), UserPerms::default());
    }

    /// The merged set agrees with a brute-force check over a small alphabet.
    #[test]
    fn agrees_with_brute_force() {
        use rand::{Rng, SeedableRng};
        let seed = 0x5eed_a17c;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let alphabet: Vec<Vec<u8>> = ["", "a", "a\0", "b", "ba", "c", "d"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let pick =
            |rng: &mut rand::rngs::StdRng| alphabet[rng.gen_range(1..alphabet.len())].clone();
        for round in 0..300 {
            let mut list = Vec::new();
            for _ in 0..rng.gen_range(0..4) {
                let key = pick(&mut rng);
                let end = match rng.gen_range(0..3) {
                    0 => Vec::new(),
                    1 => vec![0],
                    _ => pick(&mut rng),
                };
                list.push(Permission {
                    perm_type: Type::Read as i32,
                    key,
                    range_end: end,
                });
            }
            let p = UserPerms::merge(&list);
            // Every key of length <= 3 over {0, a, b, c, d} that a probe range could hold.
            let held = |k: &[u8]| {
                list.iter().any(|perm| {
                    let (begin, end) = interval(perm);
                    begin.as_slice() <= k
                        && match &end {
                            End::Key(e) => k < e.as_slice(),
                            End::Infinite => true,
                        }
                })
            };
            let mut keys = vec![Vec::new()];
            for _ in 0..3 {
                let mut next = Vec::new();
                for k in &keys {
                    for b in [0u8, b'a', b'b', b'c', b'd'] {
                        let mut k2: Vec<u8> = k.clone();
                        k2.push(b);
                        next.push(k2);
                    }
                }
                keys.extend(next);
                keys.sort();
                keys.dedup();
            }
            let key = pick(&mut rng);
            let end = pick(&mut rng);
            if key < end {
                let brute = keys
                    .iter()
                    .filter(|k| key.as_slice() <= k.as_slice() && k.as_slice() < end.as_slice())
                    .all(|k| held(k));
                // The brute force only sees short keys, so it may say yes where the truth is
                // no; never the reverse.
                if p.permits(Access::Read, &key, &end) {
                    assert!(
                        brute,
                        "seed {seed:x} round {round}: {list:?} [{key:?}, {end:?})"
                    );
                }
            }
            assert_eq!(
                p.permits(Access::Read, &key, b""),
                held(&key),
                "seed {seed:x} round {round}: {list:?} point {key:?}"
            );
        }
    }
}
