//! etcd's Watch service: one task per bidirectional stream turns the client's create, cancel
//! and progress requests into hub calls, and the hub's deliveries into `WatchResponse`s (with
//! prev_kv and fragmentation, which are per-watcher options of the stream, as in etcd's
//! `serverWatchStream`).
//!
//! The task does one thing at a time, which is what orders a stream's responses: a watcher's
//! created response goes out before any of its events; queued deliveries go out before a
//! catch-up step reads more (the hub's exactly-once argument needs that); a progress response
//! goes out only when nothing at or below its revision is still owed to any watcher of the
//! stream (etcd 3.4 may send it ahead of pending events; 3.5 waits, and so do we). When the
//! client stops reading, the task blocks on the bounded send channel while the hub moves the
//! stream's watchers to catch-up instead of buffering (see `crate::watch`).
//!
//! A client that half-closes its side keeps receiving events, as with etcd; the task ends when
//! the client goes away.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use prost::Message;
use ringkv_proto::etcdserverpb::watch_create_request::FilterType;
use ringkv_proto::etcdserverpb::watch_request::RequestUnion;
use ringkv_proto::etcdserverpb::watch_server::Watch;
use ringkv_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use ringkv_proto::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::exec::to_pb;
use crate::mvcc::{Event, EventKind, RangeOptions};
use crate::watch::{CatchUp, Delivery, Hub, KeyRange, StreamHandle, WatchSpec};

use super::{ApiError, Context};

/// A status as grpc-go's `status.Error` prints it: etcd puts that text in a refused watch's
/// `cancel_reason` (e.g. "rpc error: code = PermissionDenied desc = etcdserver: permission
/// denied"), and clients print it.
fn go_status_text(status: &Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

/// etcd's answer to a create that failed names no watcher.
const INVALID_WATCH_ID: i64 = -1;

pub struct WatchService {
    ctx: Arc<Context>,
    hub: Arc<Hub>,
}

impl WatchService {
    pub fn new(ctx: Arc<Context>, hub: Arc<Hub>) -> WatchService {
        WatchService { ctx, hub }
    }
}

type Outgoing = Result<WatchResponse, Status>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Outgoing> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let metadata = request.metadata().clone();
        let incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(self.hub.config().stream_send_depth);
        let session = Session {
            ctx: self.ctx.clone(),
            metadata,
            stream: self.hub.open_stream(),
            tx,
            options: HashMap::new(),
            progress_requested: false,
            fragment_bytes: super::max_decoding_message_bytes(self.ctx.limits.max_request_bytes),
        };
        tokio::spawn(session.run(incoming));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What a watcher's creator asked for that the hub does not need to know.
#[derive(Debug, Clone, Copy)]
struct Options {
    prev_kv: bool,
    fragment: bool,
    /// `Some` if the watcher asked for progress notifications: whether no events were sent
    /// to it since the last progress tick (etcd's `progress[id]`).
    progress_idle: Option<bool>,
}

/// The client went away; the stream is over.
struct Closed;

struct Session {
    ctx: Arc<Context>,
    /// The stream's request metadata: its auth token, checked at every create as etcd does.
    metadata: MetadataMap,
    stream: StreamHandle,
    tx: mpsc::Sender<Outgoing>,
    options: HashMap<i64, Options>,
    progress_requested: bool,
    /// Responses of a watcher that asked for fragments are split below this size: etcd's
    /// watch server uses `--max-request-bytes` plus its gRPC overhead allowance.
    fragment_bytes: usize,
}

impl Session {
    async fn run(mut self, mut incoming: Streaming<WatchRequest>) {
        let wake = self.stream.wake();
        let interval = self.stream.hub().config().progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closing = self.tx.clone();
        let mut reading = true;
        loop {
            if self.stream.hub().is_stopped() || self.flush().await.is_err() {
                return;
            }
            let busy = self.stream.has_unsynced();
            tokio::select! {
                biased;
                () = closing.closed() => return,
                message = incoming.message(), if reading => match message {
                    Ok(Some(request)) => {
                        if self.handle(request).await.is_err() {
                            return;
                        }
                    }
                    // Half-closed: keep sending, as etcd does.
                    Ok(None) => reading = false,
                    Err(_) => return,
                },
                () = wake.notified() => {}
                _ = ticker.tick() => {
                    if self.progress_tick().await.is_err() {
                        return;
                    }
                }
                () = std::future::ready(()), if busy => {}
            }
        }
    }

    /// Sends what the hub queued, runs one catch-up step if a watcher needs it, and answers a
    /// pending progress request once nothing is owed.
    async fn flush(&mut self) -> Result<(), Closed> {
        for delivery in self.stream.take_queued() {
            self.send_delivery(delivery).await?;
        }
        if self.stream.has_unsynced() {
            let job = self.stream.catch_up_job();
            let steps = match tokio::task::spawn_blocking(job).await {
                Ok(Ok(steps)) => steps,
                Ok(Err(error)) => {
                    let status = ApiError::Internal(error.to_string()).into();
                    let _ = self.tx.send(Err(status)).await;
                    return Err(Closed);
                }
                Err(join) => {
                    let status = ApiError::Internal(format!("watch catch-up: {join}")).into();
                    let _ = self.tx.send(Err(status)).await;
                    return Err(Closed);
                }
            };
            for step in steps {
                match step {
                    CatchUp::Events(delivery) => self.send_delivery(delivery).await?,
                    CatchUp::Compacted {
                        watch_id,
                        compact_revision,
                    } => {
                        self.options.remove(&watch_id);
                        // etcd's compacted response carries no header revision.
                        let response = WatchResponse {
                            header: self.ctx.header(0),
                            watch_id,
                            canceled: true,
                            compact_revision,
                            ..WatchResponse::default()
                        };
                        self.send(response).await?;
                    }
                }
            }
        }
        if self.progress_requested {
            if let Some(rev) = self.stream.progress() {
                self.progress_requested = false;
                let response = WatchResponse {
                    header: self.ctx.header(rev),
                    watch_id: INVALID_WATCH_ID,
                    ..WatchResponse::default()
                };
                self.send(response).await?;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                let watch_id = cancel.watch_id;
                // etcd answers nothing for an id it does not know.
                let Some(rev) = self.stream.cancel(watch_id) else {
                    return Ok(());
                };
                self.options.remove(&watch_id);
                let response = WatchResponse {
                    header: self.ctx.header(rev),
                    watch_id,
                    canceled: true,
                    ..WatchResponse::default()
                };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Closed> {
        if let Err(refused) = self.check_permitted(&create) {
            // etcd's answer: created and canceled at once, with the gRPC error's text.
            let status = Status::from(refused);
            let response = WatchResponse {
                header: self.ctx.header(self.ctx.mvcc.current_revision()),
                watch_id: create.watch_id,
                created: true,
                canceled: true,
                cancel_reason: go_status_text(&status),
                ..WatchResponse::default()
            };
            return self.send(response).await;
        }
        let filters = |wanted: FilterType| create.filters.contains(&(wanted as i32));
        let created = KeyRange::from_request(&create.key, &create.range_end).and_then(|range| {
            self.stream.create(WatchSpec {
                watch_id: create.watch_id,
                range,
                start_revision: create.start_revision,
                no_put: filters(FilterType::Noput),
                no_delete: filters(FilterType::Nodelete),
            })
        });
        let response = match created {
            Ok(created) => {
                self.options.insert(
                    created.watch_id,
                    Options {
                        prev_kv: create.prev_kv,
                        fragment: create.fragment,
                        progress_idle: create.progress_notify.then_some(true),
                    },
                );
                WatchResponse {
                    header: self.ctx.header(created.header_revision),
                    watch_id: created.watch_id,
                    created: true,
                    ..WatchResponse::default()
                }
            }
            Err(error) => WatchResponse {
                header: self.ctx.header(self.stream.hub().dispatched()),
                watch_id: INVALID_WATCH_ID,
                created: true,
                canceled: true,
                cancel_reason: error.to_string(),
                ..WatchResponse::default()
            },
        };
        self.send(response).await
    }

    /// etcd's periodic progress notification: to each `progress_notify` watcher that got no
    /// events since the last tick and is owed nothing.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        let mut due = Vec::new();
        for (&watch_id, options) in &mut self.options {
            if options.progress_idle == Some(true) {
                if let Some(rev) = self.stream.watcher_progress(watch_id) {
                    due.push((watch_id, rev));
                }
            }
            if let Some(idle) = &mut options.progress_idle {
                *idle = true;
            }
        }
        due.sort_unstable();
        for (watch_id, rev) in due {
            let response = WatchResponse {
                header: self.ctx.header(rev),
                watch_id,
                ..WatchResponse::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }

    async fn send_delivery(&mut self, delivery: Delivery) -> Result<(), Closed> {
        let Some(options) = self.options.get_mut(&delivery.watch_id) else {
            // Canceled after the hub handed the delivery over.
            return Ok(());
        };
        if let Some(idle) = &mut options.progress_idle {
            *idle = false;
        }
        let options = *options;
        let events = delivery
            .events
            .into_iter()
            .map(|event| self.to_pb_event(event, options.prev_kv))
            .collect();
        let response = WatchResponse {
            header: self.ctx.header(delivery.header_revision),
            watch_id: delivery.watch_id,
            events,
            ..WatchResponse::default()
        };
        if options.fragment {
            for part in fragments(response, self.fragment_bytes) {
                self.send(part).await?;
            }
            Ok(())
        } else {
            self.send(response).await
        }
    }

    fn to_pb_event(&self, event: Event, prev_kv: bool) -> mvccpb::Event {
        let r#type = match event.kind {
            EventKind::Put => mvccpb::event::EventType::Put,
            EventKind::Delete => mvccpb::event::EventType::Delete,
        };
        let prev_kv = if prev_kv { self.prev_kv(&event) } else { None };
        mvccpb::Event {
            r#type: r#type as i32,
            kv: Some(to_pb(event.kv)),
            prev_kv,
        }
    }

    /// The key's version just before the event, as etcd reads it (`Rev: mod_revision - 1`);
    /// none if the key did not exist or that revision is compacted away.
    fn prev_kv(&self, event: &Event) -> Option<mvccpb::KeyValue> {
        let rev = event.kv.mod_revision - 1;
        if rev < 1 || (event.kind == EventKind::Put && event.kv.version == 1) {
            return None;
        }
        let opts = RangeOptions {
            rev,
            ..RangeOptions::default()
        };
        let result = self.ctx.mvcc.range(&event.kv.key, &[], &opts).ok()?;
        result.kvs.into_iter().next().map(to_pb)
    }

    /// etcd's `isWatchPermitted`: the stream's token names a caller who may read the range
    /// (an unknown or expired token is refused; no token is the anonymous caller, refused with
    /// "user name is empty" while auth is enabled).
    fn check_permitted(&self, create: &WatchCreateRequest) -> Result<(), ApiError> {
        let caller = self.ctx.caller(&self.metadata)?;
        self.ctx
            .check_range(&caller, &create.key, &create.range_end)
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
    }
}

/// etcd's `sendFragments`: a response of at least `max_bytes` with two or more events goes out
/// as several, each holding as many events as keep it under `max_bytes` (at least one), all
/// but the last marked `fragment`.
fn fragments(response: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < max_bytes || response.events.len() < 2 {
        return vec![response];
    }
    let mut template = response;
    let events = std::mem::take(&mut template.events);
    let mut parts = Vec::new();
    let mut current = WatchResponse {
        fragment: true,
        ..template.clone()
    };
    for event in events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= max_bytes {
            let overflow = current.events.pop().expect("just pushed");
            let next = WatchResponse {
                fragment: true,
                events: vec![overflow],
                ..template.clone()
            };
            parts.push(std::mem::replace(&mut current, next));
        }
    }
    current.fragment = false;
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, value_bytes: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: key.into(),
                value: vec![b'x'; value_bytes],
                ..mvccpb::KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    fn response(events: Vec<mvccpb::Event>) -> WatchResponse {
        WatchResponse {
            watch_id: 7,
            events,
            ..WatchResponse::default()
        }
    }

    #[test]
    fn small_or_single_event_responses_are_not_fragmented() {
        let small = response(vec![event("a", 10), event("b", 10)]);
        assert_eq!(fragments(small.clone(), 1000), vec![small]);
        let big_single = response(vec![event("a", 5000)]);
        assert_eq!(fragments(big_single.clone(), 1000), vec![big_single]);
    }

    #[test]
    fn fragments_keep_every_event_in_order_under_the_bound() {
        let events: Vec<_> = (0..10).map(|i| event(&format!("k{i}"), 300)).collect();
        let parts = fragments(response(events.clone()), 1000);
        assert!(parts.len() > 1);
        let (last, rest) = parts.split_last().unwrap();
        assert!(!last.fragment && rest.iter().all(|p| p.fragment));
        for part in &parts {
            assert_eq!(part.watch_id, 7);
            assert!(part.encoded_len() < 1000 || part.events.len() == 1);
        }
        let joined: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, events);
    }
}
