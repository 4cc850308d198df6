//! The hub's state (streams, their watchers and queues) and the three ways it changes: the
//! applier's commit hook, a stream's requests, and catch-up steps. See the module doc of
//! `watch` for the protocol and its invariants.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::mvcc::{Event, EventKind, Mvcc, MvccError};

use super::{KeyRange, WatchConfig, WatchError, WatchSpec};

/// Events for one watcher, in revision order, and the header revision etcd would send with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub watch_id: i64,
    pub header_revision: i64,
    pub events: Vec<Event>,
}

/// What a catch-up step produced for one watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp {
    Events(Delivery),
    /// The watcher needed revisions compaction removed; it is gone from the hub.
    Compacted {
        watch_id: i64,
        compact_revision: i64,
    },
}

/// A new watcher's id and the revision its creation response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub watch_id: i64,
    pub header_revision: i64,
}

struct Watcher {
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    /// The first revision this watcher has not been given (queued or returned by a catch-up).
    next_rev: i64,
    /// See the module doc: synced watchers are fed by the hook, unsynced ones by catch-up.
    synced: bool,
    /// Events of this watcher in its stream's queue; bounded by `watcher_queue_events_max`
    /// except for a single revision into an empty queue.
    queued_events: usize,
}

impl Watcher {
    /// The events of `events` this watcher wants, in order.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| self.range.contains(&e.kv.key))
            .filter(|e| match e.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            })
            .cloned()
            .collect()
    }
}

pub(super) struct Stream {
    watchers: BTreeMap<i64, Watcher>,
    /// etcd's `nextID`: server-chosen ids count up from 0, skipping ids in use.
    next_watch_id: i64,
    pub(super) queue: VecDeque<Delivery>,
    wake: Arc<Notify>,
}

struct State {
    /// Every revision up to this one has been handed to the synced watchers.
    dispatched: i64,
    streams: HashMap<u64, Stream>,
    next_stream_id: u64,
}

/// The registry of watchers; one per server. `committed` is the applier's hook.
pub struct Hub {
    mvcc: Mvcc,
    config: WatchConfig,
    state: Mutex<State>,
    /// Watchers in all streams; read without the lock to skip the commit read when zero.
    pub(super) watchers: AtomicUsize,
    stopped: AtomicBool,
}

impl Hub {
    /// A hub that has dispatched everything MVCC holds now; create it before the applier
    /// applies anything new.
    pub fn new(mvcc: Mvcc, config: WatchConfig) -> Arc<Hub> {
        assert!(config.watchers_per_stream_max > 0);
        assert!(config.watcher_queue_events_max > 0);
        assert!(config.catch_up_revisions > 0);
        assert!(config.stream_send_depth > 0);
        let dispatched = mvcc.current_revision();
        Arc::new(Hub {
            mvcc,
            config,
            state: Mutex::new(State {
                dispatched,
                streams: HashMap::new(),
                next_stream_id: 0,
            }),
            watchers: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    pub fn mvcc(&self) -> &Mvcc {
        &self.mvcc
    }

    /// The last revision handed to synced watchers.
    pub fn dispatched(&self) -> i64 {
        self.state.lock().dispatched
    }

    /// The applier's commit hook: every revision up to `rev` is committed and visible. Called
    /// from one thread at a time (the applier's), with non-decreasing `rev`.
    pub fn committed(&self, rev: i64) {
        let from = self.state.lock().dispatched + 1;
        if rev < from {
            return;
        }
        // Only this hook moves `dispatched`, so `from` stays right while the lock is released.
        let events = if self.watchers.load(Ordering::Acquire) > 0 {
            match self.mvcc.changes(from, rev) {
                Ok(events) => Some(events),
                Err(error) => {
                    // Synced watchers that needed these revisions will read them in catch-up,
                    // which reports a lasting failure to their streams.
                    eprintln!(
                        "ringkv: warning: watch: cannot read revisions {from}..={rev}: {error}"
                    );
                    None
                }
            }
        } else {
            None
        };
        let by_revision = events.as_deref().map(group_by_revision);
        let max = self.config.watcher_queue_events_max;
        let mut state = self.state.lock();
        assert_eq!(
            state.dispatched + 1,
            from,
            "watch hub: concurrent commit hooks"
        );
        for stream in state.streams.values_mut() {
            let mut woken = false;
            let Some(groups) = &by_revision else {
                // Nothing was read (no watcher at the time, or a read error): a watcher that
                // needs these revisions was created meanwhile or must re-read them; the store
                // has them.
                for w in stream.watchers.values_mut() {
                    if w.synced && w.next_rev <= rev {
                        w.synced = false;
                        woken = true;
                    }
                }
                if woken {
                    stream.wake.notify_one();
                }
                continue;
            };
            // Revision by revision, as etcd notifies, so a stream's responses are in revision
            // order across its watchers too.
            for &(group_rev, group) in groups {
                for (&watch_id, w) in &mut stream.watchers {
                    if !w.synced || group_rev < w.next_rev {
                        continue;
                    }
                    let events = w.select(group);
                    if events.is_empty() {
                        continue;
                    }
                    woken = true;
                    if w.queued_events > 0 && w.queued_events + events.len() > max {
                        w.synced = false;
                        w.next_rev = group_rev;
                        continue;
                    }
                    w.queued_events += events.len();
                    stream.queue.push_back(Delivery {
                        watch_id,
                        header_revision: group_rev,
                        events,
                    });
                }
            }
            for w in stream.watchers.values_mut() {
                if w.synced && w.next_rev <= rev {
                    w.next_rev = rev + 1;
                }
            }
            if woken {
                stream.wake.notify_one();
            }
        }
        state.dispatched = rev;
    }

    /// Server shutdown: every stream is woken and sees `is_stopped`, so it can end (an open
    /// Watch stream would otherwise hold a graceful shutdown forever).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for stream in self.state.lock().streams.values() {
            stream.wake.notify_one();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Registers a Watch stream; dropping the handle removes it with its watchers.
    pub fn open_stream(self: &Arc<Hub>) -> StreamHandle {
        let wake = Arc::new(Notify::new());
        let mut state = self.state.lock();
        let id = state.next_stream_id;
        state.next_stream_id += 1;
        state.streams.insert(
            id,
            Stream {
                watchers: BTreeMap::new(),
                next_watch_id: 0,
                queue: VecDeque::new(),
                wake: wake.clone(),
            },
        );
        StreamHandle {
            hub: self.clone(),
            id,
            wake,
        }
    }
}

/// The events of one commit, split by main revision (they arrive in revision order).
fn group_by_revision(events: &[Event]) -> Vec<(i64, &[Event])> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=events.len() {
        if i == events.len() || events[i].kv.mod_revision != events[start].kv.mod_revision {
            assert!(
                i == events.len() || events[i].kv.mod_revision > events[start].kv.mod_revision,
                "changes out of revision order"
            );
            groups.push((events[start].kv.mod_revision, &events[start..i]));
            start = i;
        }
    }
    groups
}

/// One Watch stream's view of the hub.
pub struct StreamHandle {
    hub: Arc<Hub>,
    id: u64,
    wake: Arc<Notify>,
}

impl StreamHandle {
    /// Woken when deliveries are queued or a watcher turns unsynced.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub(super) fn with_stream<T>(&self, f: impl FnOnce(&mut Stream, i64) -> T) -> T {
        let mut state = self.hub.state.lock();
        let dispatched = state.dispatched;
        let stream = state
            .streams
            .get_mut(&self.id)
            .expect("stream registered until its handle drops");
        f(stream, dispatched)
    }

    /// etcd's `WatchStream.Watch`: a watcher from `spec.start_revision` (0: from the next
    /// revision) with the requested or the next free id.
    pub fn create(&self, spec: WatchSpec) -> Result<Created, WatchError> {
        let max = self.hub.config.watchers_per_stream_max;
        let created = self.with_stream(|stream, dispatched| {
            if stream.watchers.len() >= max {
                return Err(WatchError::TooManyWatchers(max));
            }
            let watch_id = if spec.watch_id == 0 {
                while stream.watchers.contains_key(&stream.next_watch_id) {
                    stream.next_watch_id += 1;
                }
                stream.next_watch_id += 1;
                stream.next_watch_id - 1
            } else if stream.watchers.contains_key(&spec.watch_id) {
                return Err(WatchError::DuplicateId);
            } else {
                spec.watch_id
            };
            let (next_rev, synced) = match spec.start_revision {
                0 => (dispatched + 1, true),
                start if start > dispatched => (start, true),
                start => (start, false),
            };
            stream.watchers.insert(
                watch_id,
                Watcher {
                    range: spec.range,
                    no_put: spec.no_put,
                    no_delete: spec.no_delete,
                    next_rev,
                    synced,
                    queued_events: 0,
                },
            );
            if !synced {
                stream.wake.notify_one();
            }
            Ok(Created {
                watch_id,
                header_revision: dispatched,
            })
        })?;
        self.hub.watchers.fetch_add(1, Ordering::AcqRel);
        Ok(created)
    }

    /// etcd's `WatchStream.Cancel`: removes the watcher and what is queued for it; returns the
    /// header revision of the cancel response, or `None` for an unknown id (etcd then answers
    /// nothing).
    pub fn cancel(&self, watch_id: i64) -> Option<i64> {
        let rev = self.with_stream(|stream, dispatched| {
            stream.watchers.remove(&watch_id)?;
            stream.queue.retain(|d| d.watch_id != watch_id);
            Some(dispatched)
        })?;
        self.hub.watchers.fetch_sub(1, Ordering::AcqRel);
        Some(rev)
    }

    /// Takes every queued delivery, oldest first.
    pub fn take_queued(&self) -> Vec<Delivery> {
        self.with_stream(|stream, _| {
            let taken: Vec<Delivery> = stream.queue.drain(..).collect();
            for delivery in &taken {
                let w = stream
                    .watchers
                    .get_mut(&delivery.watch_id)
                    .expect("queued for a live watcher");
                w.queued_events -= delivery.events.len();
            }
            taken
        })
    }

    /// Whether some watcher of this stream needs a catch-up step.
    pub fn has_unsynced(&self) -> bool {
        self.with_stream(|stream, _| stream.watchers.values().any(|w| !w.synced))
    }

    /// The revision a progress response may claim for the whole stream: `Some` once every
    /// watcher is synced and nothing is queued, so no event at or below it is still owed.
    pub fn progress(&self) -> Option<i64> {
        self.with_stream(|stream, dispatched| {
            let idle = stream.queue.is_empty() && stream.watchers.values().all(|w| w.synced);
            idle.then_some(dispatched)
        })
    }

    /// The revision a progress notification for one watcher may claim (see `progress`).
    pub fn watcher_progress(&self, watch_id: i64) -> Option<i64> {
        self.with_stream(|stream, dispatched| {
            let w = stream.watchers.get(&watch_id)?;
            (w.synced && w.queued_events == 0).then_some(dispatched)
        })
    }

    /// A catch-up step for this stream's unsynced watchers, to run where blocking reads are
    /// allowed (see [`catch_up`]).
    pub fn catch_up_job(&self) -> impl FnOnce() -> Result<Vec<CatchUp>, MvccError> + Send {
        let hub = self.hub.clone();
        let id = self.id;
        move || catch_up(&hub, id)
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let removed = self.hub.state.lock().streams.remove(&self.id);
        let watchers = removed.map_or(0, |s| s.watchers.len());
        self.hub.watchers.fetch_sub(watchers, Ordering::AcqRel);
    }
}

/// One catch-up step for every unsynced watcher of stream `id`: reads at most
/// `catch_up_revisions` revisions per watcher from the store (outside the hub lock), then
/// records what it read under the lock, turning a watcher synced if it reached `dispatched`.
/// A watcher that still has deliveries queued is skipped until its stream has taken them.
pub fn catch_up(hub: &Hub, id: u64) -> Result<Vec<CatchUp>, MvccError> {
    let (todo, target) = {
        let state = hub.state.lock();
        let Some(stream) = state.streams.get(&id) else {
            return Ok(Vec::new());
        };
        let todo: Vec<(i64, i64)> = stream
            .watchers
            .iter()
            // A watcher with deliveries still queued waits: they are older than what it
            // would read, and its stream sends them first.
            .filter(|(_, w)| !w.synced && w.queued_events == 0)
            .map(|(&watch_id, w)| (watch_id, w.next_rev))
            .collect();
        (todo, state.dispatched)
    };
    let mut out = Vec::new();
    for (watch_id, from) in todo {
        let to = target.min(from.saturating_add(hub.config.catch_up_revisions - 1));
        let read = if from > to {
            Ok(Vec::new())
        } else {
            hub.mvcc.changes(from, to)
        };
        let events = match read {
            Ok(events) => events,
            Err(MvccError::Compacted) => {
                let mut state = hub.state.lock();
                if let Some(stream) = state.streams.get_mut(&id) {
                    if stream.watchers.remove(&watch_id).is_some() {
                        hub.watchers.fetch_sub(1, Ordering::AcqRel);
                        out.push(CatchUp::Compacted {
                            watch_id,
                            compact_revision: hub.mvcc.compacted_revision(),
                        });
                    }
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        let mut state = hub.state.lock();
        let dispatched = state.dispatched;
        let Some(w) = state
            .streams
            .get_mut(&id)
            .and_then(|s| s.watchers.get_mut(&watch_id))
        else {
            continue;
        };
        // Only this stream's task runs catch-up and cancels, and the hook leaves unsynced
        // watchers alone: nobody moved this watcher since the snapshot above.
        assert!(!w.synced && w.next_rev == from);
        w.next_rev = from.max(to + 1);
        if w.next_rev > dispatched {
            w.synced = true;
        }
        let events = w.select(&events);
        if !events.is_empty() {
            out.push(CatchUp::Events(Delivery {
                watch_id,
                header_revision: target,
                events,
            }));
        }
    }
    Ok(out)
}
