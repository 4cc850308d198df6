//! Model-based tests of `ringkv::mvcc`: random transactions (alone and in batches sharing one
//! commit), deletes, compactions and reads
//! applied to the store and to a deliberately naive model must agree, including across reopen
//! and across simulated crashes in the middle of a commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::mvcc::{
    prefix_end, BatchTxn, Event, EventKind, KeyValue, Mvcc, MvccConfig, MvccError, MvccTxn,
    RangeOptions, RangeResult, SortOrder, SortTarget,
};
use ringkv::page_store::{PageStore, PageStoreConfig, SimDisk};

/// Keys chosen to collide often and to stress the encoding: prefixes of each other, NUL and
/// 0xff bytes, and the empty key.
const KEYS: &[&[u8]] = &[
    b"",
    b"\x00",
    b"a",
    b"a\x00",
    b"a\x00b",
    b"ab",
    b"b",
    b"b\xff",
    b"c",
    b"\xff",
    b"\xff\xff",
];

// ---------------------------------------------------------------------------------------------
// The model: every version ever written, keyed by (key, (main, sub)); `None` is a tombstone.
// Everything is computed by brute force from that map.
// ---------------------------------------------------------------------------------------------

type Rev = (i64, i64);

#[derive(Clone, Debug, PartialEq)]
struct Model {
    versions: BTreeMap<(Vec<u8>, Rev), Option<KeyValue>>,
    current: i64,
    compacted: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Compacted,
    Future,
}

fn err_kind(e: &MvccError) -> Expect {
    match e {
        MvccError::Compacted => Expect::Compacted,
        MvccError::FutureRevision => Expect::Future,
        MvccError::Store(e) => panic!("unexpected store error: {e}"),
        MvccError::Layout { .. } => panic!("unexpected layout error: {e}"),
    }
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => k >= key && k < end,
    }
}

impl Model {
    fn new() -> Model {
        Model {
            versions: BTreeMap::new(),
            current: 1,
            compacted: -1,
        }
    }

    fn keys(&self) -> BTreeSet<Vec<u8>> {
        self.versions.keys().map(|(k, _)| k.clone()).collect()
    }

    /// The newest entry of `key` with main <= rev.
    fn entry_at(&self, key: &[u8], rev: i64) -> Option<(Rev, Option<KeyValue>)> {
        self.versions
            .iter()
            .rfind(|((k, r), _)| k == key && r.0 <= rev)
            .map(|((_, r), v)| (*r, v.clone()))
    }

    fn at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        self.entry_at(key, rev).and_then(|(_, v)| v)
    }

    fn range(&self, key: &[u8], end: &[u8], o: &RangeOptions) -> Result<RangeResult, Expect> {
        if o.rev > self.current {
            return Err(Expect::Future);
        }
        let rev = if o.rev <= 0 { self.current } else { o.rev };
        if rev < self.compacted {
            return Err(Expect::Compacted);
        }
        let all: Vec<KeyValue> = self
            .keys()
            .into_iter()
            .filter(|k| in_range(k, key, end))
            .filter_map(|k| self.at(&k, rev))
            .collect();
        let count = all.len() as i64;
        let mut kvs = if o.count_only { Vec::new() } else { all };
        // etcd fetches everything only when the request sorts (order not NONE) or filters;
        // otherwise it fetches `limit + 1` kvs in key order, and a target other than KEY with
        // order NONE then sorts just those (etcdserver/txn/range.go, rangeLimit).
        let filters = o.min_mod_revision != 0
            || o.max_mod_revision != 0
            || o.min_create_revision != 0
            || o.max_create_revision != 0;
        if o.sort_order == SortOrder::None && !filters && o.limit > 0 {
            kvs.truncate(o.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (o.max_mod_revision == 0 || kv.mod_revision <= o.max_mod_revision)
                && (o.min_mod_revision == 0 || kv.mod_revision >= o.min_mod_revision)
                && (o.max_create_revision == 0 || kv.create_revision <= o.max_create_revision)
                && (o.min_create_revision == 0 || kv.create_revision >= o.min_create_revision)
        });
        // Storage order is ascending by key, and etcd sorts other targets ascending when the
        // order is NONE; either way NONE means ascending.
        let order = match o.sort_order {
            SortOrder::None => SortOrder::Ascend,
            order => order,
        };
        kvs.sort_by(|a, b| {
            let asc = match o.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                asc.reverse()
            } else {
                asc
            }
        });
        let more = o.limit > 0 && kvs.len() as i64 > o.limit;
        if more {
            kvs.truncate(o.limit as usize);
        }
        if o.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResult {
            kvs,
            count,
            more,
            rev: self.current,
        })
    }

    fn compact(&mut self, rev: i64) -> Result<(), Expect> {
        if rev <= self.compacted {
            return Err(Expect::Compacted);
        }
        if rev > self.current {
            return Err(Expect::Future);
        }
        for key in self.keys() {
            let Some((kept, value)) = self.entry_at(&key, rev) else {
                continue;
            };
            self.versions.retain(|(k, r), _| k != &key || *r >= kept);
            if value.is_none() && kept.0 < rev {
                self.versions.remove(&(key.clone(), kept));
            }
        }
        self.compacted = rev;
        Ok(())
    }

    fn changes(&self, from: i64, to: i64) -> Result<Vec<Event>, Expect> {
        if from < self.compacted {
            return Err(Expect::Compacted);
        }
        let to = if to <= 0 || to > self.current {
            self.current
        } else {
            to
        };
        let mut by_rev: Vec<(Rev, Event)> = self
            .versions
            .iter()
            .filter(|((_, r), _)| r.0 >= from && r.0 <= to)
            .map(|((k, r), v)| {
                let event = match v {
                    Some(kv) => Event {
                        kind: EventKind::Put,
                        kv: kv.clone(),
                    },
                    None => Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: k.clone(),
                            mod_revision: r.0,
                            ..KeyValue::default()
                        },
                    },
                };
                (*r, event)
            })
            .collect();
        by_rev.sort_by_key(|(r, _)| *r);
        Ok(by_rev.into_iter().map(|(_, e)| e).collect())
    }
}

/// A write transaction on a copy of the model.
struct ModelTxn {
    m: Model,
    main: i64,
    sub: i64,
}

impl ModelTxn {
    fn new(m: &Model) -> ModelTxn {
        ModelTxn {
            m: m.clone(),
            main: m.current + 1,
            sub: 0,
        }
    }

    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        self.m.at(key, self.main)
    }

    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<KeyValue> {
        let prev = self.latest(key);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map_or(self.main, |p| p.create_revision),
            mod_revision: self.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: value.to_vec(),
            lease,
        };
        self.m
            .versions
            .insert((key.to_vec(), (self.main, self.sub)), Some(kv));
        self.sub += 1;
        prev
    }

    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let doomed: Vec<KeyValue> = self
            .m
            .keys()
            .into_iter()
            .filter(|k| in_range(k, key, end))
            .filter_map(|k| self.latest(&k))
            .collect();
        for kv in &doomed {
            self.m
                .versions
                .insert((kv.key.clone(), (self.main, self.sub)), None);
            self.sub += 1;
        }
        doomed
    }

    fn range(&self, key: &[u8], end: &[u8], o: &RangeOptions) -> Result<RangeResult, Expect> {
        let mut view = self.m.clone();
        view.current = if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        };
        view.range(key, end, o)
    }

    fn commit(mut self) -> (Model, i64) {
        if self.sub > 0 {
            self.m.current = self.main;
        }
        let rev = self.m.current;
        (self.m, rev)
    }
}

// ---------------------------------------------------------------------------------------------
// Random operations.
// ---------------------------------------------------------------------------------------------

fn key(rng: &mut StdRng) -> Vec<u8> {
    KEYS[rng.gen_range(0..KEYS.len())].to_vec()
}

fn range_end(rng: &mut StdRng, key: &[u8]) -> Vec<u8> {
    match rng.gen_range(0..20) {
        0..=5 => Vec::new(),
        6..=8 => vec![0],
        9..=12 => prefix_end(key),
        _ => KEYS[rng.gen_range(0..KEYS.len())].to_vec(),
    }
}

fn rev_near(rng: &mut StdRng, m: &Model) -> i64 {
    rng.gen_range(m.compacted - 1..=m.current + 1)
}

fn options(rng: &mut StdRng, m: &Model) -> RangeOptions {
    let small = |rng: &mut StdRng| {
        if rng.gen_bool(0.8) {
            0
        } else {
            rng.gen_range(0..=m.current)
        }
    };
    RangeOptions {
        limit: [0, 0, 0, 1, 2, 3, -1][rng.gen_range(0..7)],
        rev: if rng.gen_bool(0.5) {
            0
        } else {
            rev_near(rng, m)
        },
        keys_only: rng.gen_bool(0.2),
        count_only: rng.gen_bool(0.1),
        sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][rng.gen_range(0..3)],
        sort_target: [
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ][rng.gen_range(0..5)],
        min_mod_revision: small(rng),
        max_mod_revision: small(rng),
        min_create_revision: small(rng),
        max_create_revision: small(rng),
    }
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.gen_range(0..4);
    (0..len).map(|_| rng.gen_range(b'0'..=b'3')).collect()
}

#[derive(Debug)]
enum Diff {
    Io(String),
    Mismatch(String),
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diff::Io(e) => write!(f, "I/O error: {e}"),
            Diff::Mismatch(e) => write!(f, "mismatch: {e}"),
        }
    }
}

fn io_or_panic(what: String) -> impl FnOnce(MvccError) -> Diff {
    move |e| match e {
        MvccError::Store(e) => Diff::Io(format!("{what}: {e}")),
        e => panic!("{what}: unexpected {e}"),
    }
}

/// Compares every observable of the store with the model and describes the first difference.
/// `settled` says no physical compaction may be pending, so changes at exactly the compacted
/// revision must match too.
fn diff(s: &Mvcc, m: &Model, settled: bool) -> Result<(), Diff> {
    let got = (s.current_revision(), s.compacted_revision());
    if got != (m.current, m.compacted) {
        return Err(Diff::Mismatch(format!(
            "(current, compacted): store {got:?}, model {:?}",
            (m.current, m.compacted)
        )));
    }
    for rev in m.compacted.max(1)..=m.current {
        let o = RangeOptions {
            rev,
            ..RangeOptions::default()
        };
        let store = s
            .range(b"", b"\x00", &o)
            .map_err(io_or_panic(format!("range at {rev}")))?;
        let model = m.range(b"", b"\x00", &o).unwrap();
        if store != model {
            return Err(Diff::Mismatch(format!(
                "everything at {rev}: store {store:?}, model {model:?}"
            )));
        }
    }
    let from = if settled {
        m.compacted.max(0)
    } else {
        m.compacted + 1
    };
    let store = s
        .changes(from, 0)
        .map_err(io_or_panic(format!("changes from {from}")))?;
    let model = m.changes(from, 0).unwrap();
    if store != model {
        return Err(Diff::Mismatch(format!(
            "changes from {from}: store {store:?}, model {model:?}"
        )));
    }
    Ok(())
}

/// Opens a key space with small compaction batches so that batching is exercised.
fn open(store: PageStore) -> Mvcc {
    let config = MvccConfig {
        compaction_batch_entries: 4,
        ..MvccConfig::default()
    };
    Mvcc::open_with(store, config).expect("open mvcc")
}

/// Outcome of one random step against the store.
enum Step {
    /// The model after the step (equal to before for reads and rejected operations).
    Done(Model),
    /// The store failed with an I/O error (only under `SimDisk::fail_after`); the operation may
    /// or may not have become durable, so either model is acceptable after a crash.
    Failed { after: Model },
}

macro_rules! io {
    ($e:expr, $after:expr) => {
        match $e {
            Ok(v) => v,
            Err(MvccError::Store(_)) => return Step::Failed { after: $after },
            Err(e) => panic!("unexpected error {e}"),
        }
    };
}

/// Runs one random operation on the store and the model, checking that their answers agree.
/// `pending` tracks whether a physical compaction may be unfinished.
fn step(rng: &mut StdRng, store: &Mvcc, model: &Model, pending: &mut bool, ci: &mut u64) -> Step {
    match rng.gen_range(0..100) {
        0..=29 => txn_step(rng, store, model, ci),
        30..=44 => batch_step(rng, store, model, ci),
        45..=64 => {
            let start = key(rng);
            let end = range_end(rng, &start);
            let opts = options(rng, model);
            let want = model.range(&start, &end, &opts);
            let got = match store.range(&start, &end, &opts) {
                Err(MvccError::Store(_)) => {
                    return Step::Failed {
                        after: model.clone(),
                    }
                }
                r => r.map_err(|e| err_kind(&e)),
            };
            assert_eq!(got, want, "range {start:x?}..{end:x?} {opts:?}");
            Step::Done(model.clone())
        }
        65..=72 => {
            let rev = rev_near(rng, model);
            let mut after = model.clone();
            let want = after.compact(rev);
            if rng.gen_bool(0.5) {
                let got = store.compact(rev);
                if want.is_ok() {
                    *pending = false;
                }
                match got {
                    Err(MvccError::Store(_)) => return Step::Failed { after },
                    got => assert_eq!(got.map_err(|e| err_kind(&e)), want, "compact {rev}"),
                }
            } else {
                *ci += 1;
                match store.schedule_compaction(rev, *ci) {
                    Err(MvccError::Store(_)) => return Step::Failed { after },
                    got => assert_eq!(got.map_err(|e| err_kind(&e)), want, "schedule {rev}"),
                }
                *pending |= want.is_ok();
            }
            Step::Done(after)
        }
        73..=79 => {
            let done = io!(store.compact_step(), model.clone());
            if done {
                *pending = false;
            }
            Step::Done(model.clone())
        }
        80..=89 => {
            let from = rev_near(rng, model);
            // While a physical compaction is pending, changes at exactly the compacted revision may
            // still include what it is about to delete.
            let from = if *pending && from == model.compacted {
                from + 1
            } else {
                from
            };
            let to = if rng.gen_bool(0.5) {
                0
            } else {
                rev_near(rng, model)
            };
            let want = model.changes(from, to);
            let got = match store.changes(from, to) {
                Err(MvccError::Store(_)) => {
                    return Step::Failed {
                        after: model.clone(),
                    }
                }
                r => r.map_err(|e| err_kind(&e)),
            };
            assert_eq!(got, want, "changes {from}..{to}");
            Step::Done(model.clone())
        }
        _ => match diff(store, model, !*pending) {
            Ok(()) => Step::Done(model.clone()),
            Err(Diff::Io(_)) => Step::Failed {
                after: model.clone(),
            },
            Err(Diff::Mismatch(e)) => panic!("full comparison: {e}"),
        },
    }
}

/// What the random writer needs of a write transaction: `MvccTxn` and a batch's `BatchTxn`.
trait WriteScope {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>, MvccError>;
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, MvccError>;
    fn range(&self, key: &[u8], end: &[u8], o: &RangeOptions) -> Result<RangeResult, MvccError>;
}

impl WriteScope for MvccTxn<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>, MvccError> {
        MvccTxn::put(self, key, value, lease)
    }
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        MvccTxn::delete_range(self, key, end)
    }
    fn range(&self, key: &[u8], end: &[u8], o: &RangeOptions) -> Result<RangeResult, MvccError> {
        MvccTxn::range(self, key, end, o)
    }
}

impl WriteScope for BatchTxn<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>, MvccError> {
        BatchTxn::put(self, key, value, lease)
    }
    fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        BatchTxn::delete_range(self, key, end)
    }
    fn range(&self, key: &[u8], end: &[u8], o: &RangeOptions) -> Result<RangeResult, MvccError> {
        BatchTxn::range(self, key, end, o)
    }
}

/// One to four random operations in `txn`, mirrored on `mt`; `Err` on an I/O error.
fn scope_ops(rng: &mut StdRng, txn: &mut impl WriteScope, mt: &mut ModelTxn) -> Result<(), ()> {
    fn io<T>(r: Result<T, MvccError>) -> Result<T, ()> {
        match r {
            Ok(v) => Ok(v),
            Err(MvccError::Store(_)) => Err(()),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..10) {
            0..=5 => {
                let (start, v, lease) = (key(rng), value(rng), [0, 0, 7][rng.gen_range(0..3)]);
                let want = mt.put(&start, &v, lease);
                let got = io(txn.put(&start, &v, lease))?;
                assert_eq!(got, want, "put {start:x?}");
            }
            6..=8 => {
                let start = key(rng);
                let end = if rng.gen_bool(0.5) {
                    Vec::new()
                } else {
                    range_end(rng, &start)
                };
                let want = mt.delete_range(&start, &end);
                let got = io(txn.delete_range(&start, &end))?;
                assert_eq!(got, want, "delete_range {start:x?}..{end:x?}");
            }
            _ => {
                let start = key(rng);
                let end = range_end(rng, &start);
                let opts = options(rng, &mt.m);
                let want = mt.range(&start, &end, &opts);
                let got = match txn.range(&start, &end, &opts) {
                    Err(MvccError::Store(_)) => return Err(()),
                    r => r.map_err(|e| err_kind(&e)),
                };
                assert_eq!(got, want, "txn range {start:x?}..{end:x?} {opts:?}");
            }
        }
    }
    Ok(())
}

fn txn_step(rng: &mut StdRng, store: &Mvcc, model: &Model, ci: &mut u64) -> Step {
    let mut txn = store.write();
    let mut mt = ModelTxn::new(model);
    if scope_ops(rng, &mut txn, &mut mt).is_err() {
        return Step::Failed {
            after: model.clone(),
        };
    }
    if rng.gen_bool(0.1) {
        drop(txn);
        return Step::Done(model.clone());
    }
    let (after, want_rev) = mt.commit();
    *ci += 1;
    let rev = io!(txn.commit(*ci), after);
    assert_eq!(rev, want_rev, "commit revision");
    Step::Done(after)
}

/// A batch of one to six write transactions in one commit: each must behave as if committed
/// alone (its own revision, seeing the earlier ones), a rolled-back one must leave no trace,
/// readers must see none of it until `finish`, and a crash must keep all of it or none (the
/// crash test's two candidate models are "before the batch" and "after all of it").
fn batch_step(rng: &mut StdRng, store: &Mvcc, model: &Model, ci: &mut u64) -> Step {
    let mut batch = store.batch();
    let mut m = model.clone();
    for _ in 0..rng.gen_range(1..=6) {
        let mut txn = batch.txn();
        let mut mt = ModelTxn::new(&m);
        if scope_ops(rng, &mut txn, &mut mt).is_err() {
            // The scope's writes stay in the uncommitted page-store transaction: discard it all.
            drop(txn);
            return Step::Failed {
                after: model.clone(),
            };
        }
        if rng.gen_bool(0.15) {
            io!(txn.rollback(), model.clone());
        } else {
            let (after, want_rev) = mt.commit();
            assert_eq!(txn.end(), want_rev, "batch scope revision");
            m = after;
        }
        assert_eq!(batch.revision(), m.current, "batch revision");
        // Readers see the state before the batch, whatever it has done so far.
        assert_eq!(
            store.current_revision(),
            model.current,
            "reader saw part of a batch"
        );
        let start = key(rng);
        let opts = RangeOptions::default();
        let got = io!(store.range(&start, b"\0", &opts), model.clone());
        assert_eq!(
            Ok(got),
            model.range(&start, b"\0", &opts),
            "reader mid-batch"
        );
    }
    if rng.gen_bool(0.1) {
        drop(batch);
        assert_eq!(store.current_revision(), model.current);
        return Step::Done(model.clone());
    }
    *ci += 1;
    let rev = io!(batch.finish(*ci), m);
    assert_eq!(rev, m.current, "batch commit revision");
    assert_eq!(store.current_revision(), m.current);
    assert_eq!(store.page_store().consistent_index(), *ci);
    Step::Done(m)
}

fn run_seed(seed: u64, ops: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = PageStore::open_on(Arc::new(SimDisk::new()), PageStoreConfig::default()).unwrap();
    let mut s = open(store.clone());
    let mut m = Model::new();
    let mut pending = false;
    let mut ci = 0;
    for _ in 0..ops {
        if rng.gen_range(0..40) == 0 {
            // Reopen the key space on the same page store: MVCC rebuilds its state from meta
            // keys and finishes a pending compaction.
            drop(s);
            s = open(store.clone());
            pending = false;
            diff(&s, &m, true).unwrap_or_else(|e| panic!("after reopen: {e}"));
            continue;
        }
        match step(&mut rng, &s, &m, &mut pending, &mut ci) {
            Step::Done(after) => m = after,
            Step::Failed { .. } => panic!("I/O error without fault injection"),
        }
    }
    while !s.compact_step().unwrap() {}
    diff(&s, &m, true).unwrap_or_else(|e| panic!("at the end: {e}"));
    s.check_integrity().unwrap();
}

/// Seeds to run: `MVCC_MODEL_SEEDS` (for soaking), else `default`.
fn seeds(default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("MVCC_MODEL_SEEDS").map_or(default, |s| s.parse().expect("a number"));
    let first = std::env::var("MVCC_MODEL_FIRST_SEED").map_or(0, |s| s.parse().expect("a number"));
    first..first + n
}

#[test]
fn store_agrees_with_the_model() {
    for seed in seeds(150) {
        eprintln!("seed {seed}");
        run_seed(seed, 250);
    }
}

/// Runs random operations on a `SimDisk` store, stops the disk after a random number of
/// operations, restarts from a crash image, and checks that the recovered store equals the model
/// as of the last acknowledged operation, or the one after it if the failed operation was in
/// flight. Several crashes per seed. Returns how many crashes interrupted an operation.
fn run_crash_seed(seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut disk = SimDisk::new();
    let mut s =
        open(PageStore::open_on(Arc::new(disk.clone()), PageStoreConfig::default()).unwrap());
    let mut m = Model::new();
    let mut ci = 0;
    let mut interrupted = 0;
    for crash in 0..4 {
        let mut pending = false;
        disk.fail_after(rng.gen_range(0..400));
        let mut candidates = None;
        for _ in 0..200 {
            match step(&mut rng, &s, &m, &mut pending, &mut ci) {
                Step::Done(after) => m = after,
                Step::Failed { after } => {
                    interrupted += 1;
                    candidates = Some([m.clone(), after]);
                    break;
                }
            }
        }
        let candidates = candidates.unwrap_or_else(|| [m.clone(), m.clone()]);
        drop(s);
        let image = disk.crash_image(seed * 31 + crash);
        let store = PageStore::open_on(Arc::new(image.clone()), PageStoreConfig::default())
            .unwrap_or_else(|e| panic!("crash {crash}: reopen page store: {e}"));
        s = open(store);
        s.check_integrity().unwrap();
        let results: Vec<_> = candidates.iter().map(|c| diff(&s, c, true)).collect();
        let Some(i) = results.iter().position(Result::is_ok) else {
            let why: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().err().map(ToString::to_string))
                .collect();
            panic!("crash {crash}: recovered store matches neither model: {why:?}")
        };
        m = candidates[i].clone();
        ci = ci.max(s.page_store().consistent_index());
        disk = image;
    }
    interrupted
}

#[test]
fn store_agrees_with_the_model_across_crashes() {
    let mut interrupted = 0;
    let seeds = seeds(60);
    let crashes = 4 * (seeds.end - seeds.start);
    for seed in seeds {
        eprintln!("seed {seed}");
        interrupted += run_crash_seed(seed);
    }
    eprintln!("{interrupted} of {crashes} crashes interrupted an operation");
    // Guards against the fault injection silently missing: many crashes must cut an operation.
    assert!(
        interrupted * 3 >= crashes,
        "only {interrupted} of {crashes} crashes interrupted an operation"
    );
}
