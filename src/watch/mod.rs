//! The watch hub: which watchers exist, which revisions each has been sent, and the events
//! waiting for them. etcd's `watchableStore` (synced and unsynced watcher groups) on top of
//! MVCC's revision table; the gRPC stream (`api::watch`) turns its deliveries into
//! `WatchResponse`s.
//!
//! # Where events come from
//! The applier calls [`Hub::committed`] after every page-store commit with the store's current
//! revision (`apply::CommitHook`). The hub remembers the last revision it has handed out
//! (`dispatched`); if any watcher exists it reads the new revisions once with
//! `Mvcc::changes(dispatched + 1, rev)` and hands each synced watcher the events in its range,
//! one delivery per revision (so a Txn that changes several keys reaches a watcher as one
//! response, as in etcd). With no watcher it reads nothing. The read happens on the applying
//! thread, right after the commit and before any later compaction entry is applied, so a synced
//! watcher can never lose events to compaction.
//!
//! # Synced and unsynced watchers
//! Every watcher has `next_rev`, the first revision it has not been given yet.
//! - **Synced**: `next_rev > dispatched` (or, for a start revision in the future, is that
//!   start). The hook hands it new events directly, into its stream's queue.
//! - **Unsynced**: it needs revisions `<= dispatched` that it has not been given. Its stream reads
//!   them from the store in bounded steps ([`catch_up`]: at most
//!   `WatchConfig::catch_up_revisions` revisions per watcher per step, outside the hub lock) and
//!   turns synced, under the hub lock, when a step reaches `dispatched`.
//!
//! A watcher created with `start_revision` 0 starts synced at `dispatched + 1`; one created at
//! or below `dispatched` starts unsynced. A synced watcher whose queue would exceed
//! `WatchConfig::watcher_queue_events_max` (its client does not read) is not given that
//! revision: it turns unsynced at it and catches up from the store once its client reads
//! again. So a slow client never blocks the applier, and the memory it pins is bounded by its
//! watchers' queues; the price is re-reading history from the store, as etcd does.
//!
//! # Exactly once, in order
//! `dispatched` and every synced watcher's `next_rev` change only under the hub lock, together:
//! the hook hands out `(dispatched, rev]` and moves both in one critical section, and a
//! catch-up step turns a watcher synced only if it has read up to the current `dispatched`. A
//! watcher's deliveries are queued in revision order, and its stream sends the queue before
//! running a catch-up step (an unsynced watcher gets nothing new queued), so each revision
//! reaches each watcher once, ascending.
//!
//! # Compaction
//! A catch-up step that needs a revision below the compacted one ends the watcher with
//! [`CatchUp::Compacted`]: the stream sends etcd's response (`compact_revision` set, `canceled`,
//! header revision 0) and forgets the watcher. A start revision equal to the compacted revision
//! is served (compaction keeps what `changes` needs at exactly that revision).
//!
//! # Header revisions (etcd's, from `watchable_store.go`)
//! A delivery from the hook carries the revision of its events (etcd's `notify(rev)`); a
//! catch-up delivery carries `dispatched` at the time of the read (etcd's `curRev` in
//! `syncWatchers`), and may hold many revisions. Create, cancel and progress responses carry
//! `dispatched`, which trails MVCC's current revision only between a commit and its hook.
//!
//! # Cost
//! The hook matches every event of a commit against every synced watcher (linear, no interval
//! tree): bounded by `watchers_per_stream_max` per stream. Events are read once per commit
//! whatever the number of watchers.

pub mod hub;

use std::time::Duration;

pub use hub::{catch_up, CatchUp, Created, Delivery, Hub, StreamHandle};

/// Limits of the watch hub and its gRPC streams.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Watchers one Watch stream may hold at once (etcd has no bound).
    pub watchers_per_stream_max: usize,
    /// Events queued for one synced watcher before it falls back to catching up from the store.
    /// One revision is always accepted into an empty queue, however many events it has.
    pub watcher_queue_events_max: usize,
    /// Revisions one catch-up step reads for one watcher (etcd's `watchBatchMaxRevs`).
    pub catch_up_revisions: i64,
    /// Responses a stream may have handed to gRPC that the client has not taken yet.
    pub stream_send_depth: usize,
    /// How often a watcher created with `progress_notify` that got no events hears the current
    /// revision (etcd's `--experimental-watch-progress-notify-interval`, 10 minutes).
    pub progress_notify_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            watchers_per_stream_max: 10_000,
            watcher_queue_events_max: 1024,
            catch_up_revisions: 1000,
            stream_send_depth: 16,
            progress_notify_interval: Duration::from_secs(600),
        }
    }
}

/// Why a watcher could not be created. Messages are etcd's (`mvcc/watcher.go`), except the
/// stream limit, which etcd does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("ringkv: too many watchers on this stream (at most {0})")]
    TooManyWatchers(usize),
}

/// Which keys a watcher sees, with etcd's conventions already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly this key.
    Single(Vec<u8>),
    /// Every key `>= from`.
    From(Vec<u8>),
    /// Every key in `[from, end)`; `from < end`.
    Between(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    /// etcd's reading of a `WatchCreateRequest`'s key and range_end: an empty key is `"\0"`
    /// (the smallest key), an empty range_end one key, `"\0"` every key from `key` on.
    pub fn from_request(key: &[u8], range_end: &[u8]) -> Result<KeyRange, WatchError> {
        let key = if key.is_empty() {
            vec![0]
        } else {
            key.to_vec()
        };
        match range_end {
            [] => Ok(KeyRange::Single(key)),
            [0] => Ok(KeyRange::From(key)),
            end if key.as_slice() >= end => Err(WatchError::EmptyRange),
            end => Ok(KeyRange::Between(key, end.to_vec())),
        }
    }

    pub fn contains(&self, candidate: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => candidate == key.as_slice(),
            KeyRange::From(from) => candidate >= from.as_slice(),
            KeyRange::Between(from, end) => {
                candidate >= from.as_slice() && candidate < end.as_slice()
            }
        }
    }
}

/// A watcher as its creator asked for it.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// 0 lets the hub choose (the smallest unused id from its counter, as etcd does).
    pub watch_id: i64,
    pub range: KeyRange,
    /// 0 for "after the current revision".
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
}

#[cfg(test)]
mod tests;
