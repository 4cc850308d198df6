//! Leases: etcd's lessor. A lease is an id with a granted TTL in seconds; keys put with it are
//! attached to it and are deleted, in one revision, when it is revoked or expires.
//!
//! # What is replicated and what is not
//! Grant and revoke are raft entries (`apply::entry` tags 6 and 7), applied by every member in
//! log order: the lease table and the key attachments are the same everywhere. Expiry is not:
//! only the leader (the *primary* lessor) keeps expiry instants, on its monotonic [`Clock`]. It
//! finds expired leases (a bounded number per round, `LeaseConfig::revokes_per_round`) and
//! proposes their revokes through raft like a client's `LeaseRevoke`, so members never disagree
//! about what expired, and wall-clock skew between machines cannot shorten or lengthen a TTL.
//! KeepAlive refreshes the expiry in the leader's memory only (etcd does the same: a renewal is
//! not worth a raft entry). A lease found expired is pushed `expired_retry` into the future, so
//! a revoke that fails (a lost leadership) is proposed again later rather than every round.
//!
//! A member that becomes leader promotes its lessor: every lease's expiry is refreshed to
//! `now + TTL + promote_extend` (etcd extends by the election timeout), since the old leader's
//! renewals were never replicated. So a restart or a leader change lengthens leases, never
//! shortens them. A member that loses leadership demotes: expiries become "never". Leases
//! granted while not primary never expire until promotion.
//!
//! # Persistence
//! The lease table lives in the page store next to MVCC's tables (`mvcc::FOREIGN_TABLE_MIN`),
//! written in the same page-store commit as the entry that changes it, so the consistent index
//! covers it and WAL replay stays idempotent:
//!
//! ```text
//! lease   0x04 ‖ id as u64 (8 bytes, big-endian)  ->  granted TTL, i64 big-endian (8 bytes)
//! ```
//!
//! A revoke deletes the row in the commit that deletes the lease's keys. Remaining TTLs are
//! not stored (etcd's lease checkpoints, off by default in etcd 3.4, are not built; raft entry
//! tag 8 is reserved for them).
//!
//! Which keys a lease holds is not stored: each key's newest version already records its lease
//! (`mvcc::KeyValue::lease`), so `Lessor::open` rebuilds the attachments with one pass over the
//! live keys (`Mvcc::for_each_alive`), as etcd does at restore. That costs O(live keys) reads at
//! open, and saves a second write per leased put and an undo path for refused txns.
//!
//! # Invariants
//! - A live key with a non-zero lease is attached to exactly that lease, and that lease exists:
//!   puts check the lease before writing, and a revoke deletes every attached key.
//! - `State::due` holds `(check_at, id)` for exactly the leases with a `check_at`, which is
//!   their expiry, or later once they were reported expired (`take_expired`). An expired lease
//!   stays expired whatever its `check_at`: renewing it fails. No lease has either while the
//!   lessor is not primary.

mod clock;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::mvcc::{self, Mvcc, MvccBatch, MvccError};

pub use clock::{Clock, MonotonicClock, SimClock};

/// etcd's `MaxLeaseTTL` (about 285 years): a longer grant is refused.
pub const TTL_MAX_SECS: i64 = 9_000_000_000;

/// First byte of every lease-table key (public for snapshots, which copy the table).
pub const TABLE_LEASE: u8 = 0x04;
const _: () = assert!(TABLE_LEASE >= mvcc::FOREIGN_TABLE_MIN);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Also for a lease that has expired and waits for its revoke.
    #[error("lease not found")]
    NotFound,
    /// Only the leader's lessor renews; this member is not (or not yet) it.
    #[error("not a primary lessor")]
    NotPrimary,
    #[error("lease table row {key:x?} is damaged: {value:x?}")]
    Corrupt { key: Vec<u8>, value: Vec<u8> },
    #[error(transparent)]
    Store(#[from] MvccError),
}

/// Limits and timings of the leader-side lessor; the server derives them from its flags.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// etcd's minimum TTL: `ceil(3/2 * election ticks * heartbeat)`; shorter grants get it.
    pub ttl_min_secs: i64,
    /// Added to every lease's TTL when this member becomes leader (etcd: the election timeout).
    pub promote_extend: Duration,
    /// How often the leader looks for expired leases (etcd: 500 ms).
    pub expiry_check_interval: Duration,
    /// Revokes proposed per check (etcd: `leaseRevokeRate / 2` = 500).
    pub revokes_per_round: usize,
    /// When an expired lease is proposed for revoke, it is not proposed again before this
    /// (etcd's `expiredLeaseRetryInterval`).
    pub expired_retry: Duration,
}

impl LeaseConfig {
    /// etcd's rules for a member with this heartbeat and election timeout.
    pub fn for_raft(heartbeat: Duration, election_timeout: Duration) -> LeaseConfig {
        let heartbeat_ns = heartbeat.as_nanos().max(1);
        let election_ticks = election_timeout.as_nanos() / heartbeat_ns;
        let min_ns = (3 * election_ticks / 2) * heartbeat_ns;
        LeaseConfig {
            ttl_min_secs: i64::try_from(min_ns.div_ceil(1_000_000_000)).unwrap_or(i64::MAX),
            promote_extend: election_timeout,
            expiry_check_interval: Duration::from_millis(500),
            revokes_per_round: 500,
            expired_retry: Duration::from_secs(3),
        }
    }
}

impl Default for LeaseConfig {
    /// etcd's defaults: 100 ms heartbeat, 1 s election timeout, so a 2 s minimum TTL.
    fn default() -> Self {
        LeaseConfig::for_raft(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// A change the applier made to the leases, recorded while an entry runs and applied (to the
/// page store's lease table and the lessor) only once the entry is kept: a refused entry's
/// effects are dropped with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEffect {
    Grant { id: i64, ttl_secs: i64 },
    Revoke { id: i64 },
    Attach { id: i64, key: Vec<u8> },
    Detach { id: i64, key: Vec<u8> },
}

/// `LeaseTimeToLive`'s answer for a lease that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    pub granted_ttl_secs: i64,
    /// Whole seconds left, truncated toward zero (etcd's `int64(Remaining().Seconds())`); may
    /// be negative for an expired lease whose revoke is pending.
    pub remaining_secs: i64,
    /// Attached keys in ascending order, if asked for.
    pub keys: Vec<Vec<u8>>,
}

/// The member's leases. `Send + Sync`: the applier changes it on the raft thread; the API reads
/// and renews on gRPC threads. Every method holds the one mutex briefly and does no I/O.
pub struct Lessor {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Lease>,
    /// `(check_at, id)` of every lease that has a `check_at` (see the module invariants).
    due: BTreeSet<(Instant, i64)>,
    /// The raft term this member leads and was promoted in; `None`: not primary.
    primary_term: Option<u64>,
}

struct Lease {
    ttl_secs: i64,
    keys: BTreeSet<Vec<u8>>,
    /// `None`: never (this lessor is not primary, or beyond the clock's range).
    expiry: Option<Instant>,
    /// When `take_expired` looks at it next: the expiry, or the retry time once reported.
    check_at: Option<Instant>,
}

fn lease_key(id: i64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = TABLE_LEASE;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// A lease-table row for lease `id` granted `ttl_secs` (what a snapshot restore writes).
pub fn table_row(id: i64, ttl_secs: i64) -> ([u8; 9], [u8; 8]) {
    (lease_key(id), ttl_secs.to_be_bytes())
}

/// `(id, granted TTL)` of a lease-table row.
pub fn decode_table_row(key: &[u8], value: &[u8]) -> Result<(i64, i64), LeaseError> {
    let corrupt = || LeaseError::Corrupt {
        key: key.to_vec(),
        value: value.to_vec(),
    };
    let id = key
        .strip_prefix(&[TABLE_LEASE])
        .and_then(|id| <[u8; 8]>::try_from(id).ok())
        .ok_or_else(corrupt)?;
    let ttl = <[u8; 8]>::try_from(value).map_err(|_| corrupt())?;
    Ok((i64::from_be_bytes(id), i64::from_be_bytes(ttl)))
}

/// Writes the lease-table rows of `effects` into `batch` (the entry's page-store commit).
pub fn persist(effects: &[LeaseEffect], batch: &mut MvccBatch<'_>) -> mvcc::Result<()> {
    for effect in effects {
        match effect {
            LeaseEffect::Grant { id, ttl_secs } => {
                batch.put_foreign(&lease_key(*id), &ttl_secs.to_be_bytes())?;
            }
            LeaseEffect::Revoke { id } => {
                let existed = batch.delete_foreign(&lease_key(*id))?;
                assert!(existed, "revoked lease {id:x} had no table row");
            }
            LeaseEffect::Attach { .. } | LeaseEffect::Detach { .. } => {}
        }
    }
    Ok(())
}

impl Lessor {
    /// An empty lessor, not primary.
    pub fn new(clock: Arc<dyn Clock>) -> Lessor {
        Lessor {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Loads the lease table from the store under `mvcc` and re-attaches every live key that
    /// names a lease (one pass over the live keys; see the module doc). Not primary: expiries
    /// start at promotion.
    pub fn open(mvcc: &Mvcc, clock: Arc<dyn Clock>) -> Result<Lessor, LeaseError> {
        let lessor = Lessor::new(clock);
        *lessor.state.lock() = State::load(mvcc)?;
        Ok(lessor)
    }

    /// Replaces every lease with those the store under `mvcc` now holds (after a raft snapshot
    /// was installed), as `open` loads them. A primary lessor stays primary, with every expiry
    /// refreshed from now.
    pub fn reload(&self, mvcc: &Mvcc) -> Result<(), LeaseError> {
        let mut fresh = State::load(mvcc)?;
        let now = self.clock.now();
        let mut state = self.state.lock();
        fresh.primary_term = state.primary_term;
        *state = fresh;
        if state.primary_term.is_some() {
            let ids: Vec<i64> = state.leases.keys().copied().collect();
            for id in ids {
                state.refresh(id, now);
            }
        }
        Ok(())
    }

    pub fn contains(&self, id: i64) -> bool {
        self.state.lock().leases.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.state.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys attached to `id`, ascending; `None` if there is no such lease.
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        let state = self.state.lock();
        Some(state.leases.get(&id)?.keys.iter().cloned().collect())
    }

    /// Applies the effects of one kept entry, in order. They were decided against this state,
    /// so each must fit it (a grant of a new id, a revoke or attach of an existing one).
    pub fn apply(&self, effects: Vec<LeaseEffect>) {
        if effects.is_empty() {
            return;
        }
        let now = self.clock.now();
        let mut state = self.state.lock();
        for effect in effects {
            state.apply(effect, now);
        }
    }

    pub fn is_primary(&self) -> bool {
        self.state.lock().primary_term.is_some()
    }

    /// Becomes the primary lessor for `term` (this member leads it and has applied the entries
    /// of earlier terms): every expiry is refreshed to `now + TTL + extend`. Does nothing if
    /// already promoted for `term`, so every observer of the leadership may call it.
    pub fn promote(&self, term: u64, extend: Duration) {
        let now = self.clock.now();
        let mut state = self.state.lock();
        if state.primary_term == Some(term) {
            return;
        }
        state.primary_term = Some(term);
        let ids: Vec<i64> = state.leases.keys().copied().collect();
        for id in ids {
            state.refresh(id, now + extend);
        }
    }

    /// Stops being primary: no lease expires until the next promotion.
    pub fn demote(&self) {
        let mut state = self.state.lock();
        state.primary_term = None;
        state.due.clear();
        for lease in state.leases.values_mut() {
            lease.expiry = None;
            lease.check_at = None;
        }
    }

    /// KeepAlive: the lease's expiry becomes `now + TTL`; returns the TTL. An expired lease
    /// is `NotFound`: its revoke is due (etcd waits for that revoke and then says the same).
    pub fn renew(&self, id: i64) -> Result<i64, LeaseError> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        if state.primary_term.is_none() {
            return Err(LeaseError::NotPrimary);
        }
        let lease = state.leases.get(&id).ok_or(LeaseError::NotFound)?;
        if lease.expiry.is_some_and(|expiry| expiry <= now) {
            return Err(LeaseError::NotFound);
        }
        let ttl = lease.ttl_secs;
        state.refresh(id, now);
        Ok(ttl)
    }

    pub fn time_to_live(&self, id: i64, with_keys: bool) -> Option<TimeToLive> {
        let now = self.clock.now();
        let state = self.state.lock();
        let lease = state.leases.get(&id)?;
        let remaining_secs = match lease.expiry {
            // etcd reports "forever" as the largest Duration in seconds.
            None => i64::MAX / 1_000_000_000,
            Some(expiry) if expiry >= now => {
                i64::try_from((expiry - now).as_secs()).unwrap_or(i64::MAX)
            }
            Some(expiry) => -i64::try_from((now - expiry).as_secs()).unwrap_or(i64::MAX),
        };
        Some(TimeToLive {
            granted_ttl_secs: lease.ttl_secs,
            remaining_secs,
            keys: if with_keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Every lease id, soonest expiry first (etcd's order), then the ones without an expiry;
    /// ties by id.
    pub fn leases(&self) -> Vec<i64> {
        let state = self.state.lock();
        let mut leases: Vec<(Option<Instant>, i64)> = state
            .leases
            .iter()
            .map(|(id, lease)| (lease.expiry, *id))
            .collect();
        drop(state);
        leases.sort_unstable_by_key(|&(expiry, id)| (expiry.is_none(), expiry, id));
        leases.into_iter().map(|(_, id)| id).collect()
    }

    /// Up to `max` expired leases, soonest first, to be revoked through raft. Each is given
    /// `retry` more before it is reported again, in case its revoke is lost. Empty unless
    /// primary.
    pub fn take_expired(&self, max: usize, retry: Duration) -> Vec<i64> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let expired: Vec<i64> = state
            .due
            .iter()
            .take_while(|(check_at, _)| *check_at <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect();
        for &id in &expired {
            state.set_check_at(id, Some(now + retry));
        }
        expired
    }
}

impl State {
    /// The lease table of the store under `mvcc`, with every live key that names a lease
    /// attached (one pass over the live keys); no expiries (not primary).
    fn load(mvcc: &Mvcc) -> Result<State, LeaseError> {
        let mut state = State::default();
        let snap = mvcc.page_store().snapshot();
        for row in snap.range(&[TABLE_LEASE], Some(&[TABLE_LEASE + 1])) {
            let (key, value) = row.map_err(MvccError::from)?;
            let (id, ttl_secs) = decode_table_row(&key, &value)?;
            state.leases.insert(
                id,
                Lease {
                    ttl_secs,
                    keys: BTreeSet::new(),
                    expiry: None,
                    check_at: None,
                },
            );
        }
        drop(snap);
        mvcc.for_each_alive(|kv| {
            if kv.lease != 0 {
                let lease = state.leases.get_mut(&kv.lease).unwrap_or_else(|| {
                    panic!(
                        "key {:x?} names lease {:x}, which is not in the table",
                        kv.key, kv.lease
                    )
                });
                lease.keys.insert(kv.key);
            }
        })?;
        Ok(state)
    }

    fn apply(&mut self, effect: LeaseEffect, now: Instant) {
        match effect {
            LeaseEffect::Grant { id, ttl_secs } => {
                assert!(
                    id != 0 && ttl_secs > 0,
                    "grant of lease {id:x}, {ttl_secs}s"
                );
                let old = self.leases.insert(
                    id,
                    Lease {
                        ttl_secs,
                        keys: BTreeSet::new(),
                        expiry: None,
                        check_at: None,
                    },
                );
                assert!(old.is_none(), "lease {id:x} granted twice");
                if self.primary_term.is_some() {
                    self.refresh(id, now);
                }
            }
            LeaseEffect::Revoke { id } => {
                self.set_expiry(id, None);
                let lease = self.leases.remove(&id).expect("revoked lease exists");
                assert!(
                    lease.keys.is_empty(),
                    "lease {id:x} revoked with {} keys still attached",
                    lease.keys.len()
                );
            }
            LeaseEffect::Attach { id, key } => {
                let lease = self.leases.get_mut(&id).expect("attach to a live lease");
                lease.keys.insert(key);
            }
            LeaseEffect::Detach { id, key } => {
                let lease = self.leases.get_mut(&id).expect("detach from a live lease");
                assert!(
                    lease.keys.remove(&key),
                    "{key:x?} was not attached to {id:x}"
                );
            }
        }
    }

    /// Expiry becomes `from + TTL`.
    fn refresh(&mut self, id: i64, from: Instant) {
        let ttl = self.leases[&id].ttl_secs;
        let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        // An instant beyond the clock's range (a 285-year TTL is fine; larger is refused at
        // grant) saturates at "never".
        self.set_expiry(id, from.checked_add(ttl));
    }

    fn set_expiry(&mut self, id: i64, expiry: Option<Instant>) {
        self.leases.get_mut(&id).expect("lease exists").expiry = expiry;
        self.set_check_at(id, expiry);
    }

    fn set_check_at(&mut self, id: i64, check_at: Option<Instant>) {
        let lease = self.leases.get_mut(&id).expect("lease exists");
        if let Some(old) = lease.check_at {
            let removed = self.due.remove(&(old, id));
            debug_assert!(removed);
        }
        lease.check_at = check_at;
        if let Some(new) = check_at {
            self.due.insert((new, id));
        }
    }
}
