//! Raft snapshots between members: the sending side (one streaming call per `MsgSnapshot`, on
//! the tokio runtime, fed from the leader's pinned image by a blocking thread one chunk ahead)
//! and the receiving side (`RaftPeer.SendSnapshot`: every frame checked as it arrives and
//! staged, then the message stepped). The stream format is `crate::raft::snapshot`'s; the
//! protocol is in the `raft` module doc ("Snapshots to lagging and new members").
//!
//! # Limits
//!
//! One stream per peer at a time on the sending side (raft-rs sends a peer no second snapshot
//! while one is pending; a second message is reported failed at once). One receive at a time
//! per member (another is refused with `SnapshotBusy`). Two frames in memory on the sending
//! side (the one being sent and the next), one on the receiving side. A stream that makes no
//! progress for `SNAPSHOT_STALL` fails on both sides, and is reported `Failure`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use ringkv_proto::ringkvpeerpb::raft_peer_client::RaftPeerClient;
use ringkv_proto::ringkvpeerpb::{SnapshotAck, SnapshotChunk};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use super::{PeerConfig, PeerContext, PeerError};
use crate::raft::snapshot::{staged_path, write_stream, Frame, StreamChecker};

/// A snapshot stream that moves no frame for this long is abandoned.
pub const SNAPSHOT_STALL: Duration = Duration::from_secs(30);
/// Frames produced ahead of the one being sent.
const FRAMES_AHEAD: usize = 1;

/// `MsgSnapshot`s waiting for a sender task; beyond it the raft loop reports failure.
pub const SNAPSHOT_QUEUE_MAX: usize = 16;

/// The receiving side's staging directory, and whether a receive is in progress.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    busy: AtomicBool,
}

impl Staging {
    pub fn new(dir: PathBuf) -> Staging {
        Staging {
            dir,
            busy: AtomicBool::new(false),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Clears `busy` when a receive ends, however it ends.
struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs `f` (file I/O) where blocking is allowed on the multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Receives one snapshot stream: checks the sender and every frame, stages the frames in
/// `<index>.part`, and once the end frame checks out makes it `<index>.rsnap` (fsync, rename,
/// directory fsync) and steps the message into the raft loop.
pub async fn receive(
    ctx: &PeerContext,
    mut stream: tonic::Streaming<SnapshotChunk>,
    check_sender: impl Fn(u64, u64) -> Result<(), PeerError>,
) -> Result<SnapshotAck, PeerError> {
    let staging = &ctx.staging;
    if staging.busy.swap(true, Ordering::AcqRel) {
        return Err(PeerError::SnapshotBusy);
    }
    let _busy = BusyGuard(&staging.busy);
    let first = next_chunk(&mut stream)
        .await?
        .ok_or(PeerError::Undecodable)?;
    check_sender(first.cluster_id, first.from)?;
    let msg = Message::parse_from_bytes(&first.message).map_err(|_| PeerError::Undecodable)?;
    if msg.get_msg_type() != MessageType::MsgSnapshot
        || msg.from != first.from
        || msg.to != ctx.member_id
    {
        return Err(PeerError::Misaddressed {
            from: msg.from,
            to: msg.to,
        });
    }
    let (index, term) = (
        msg.get_snapshot().get_metadata().index,
        msg.get_snapshot().get_metadata().term,
    );
    let started = Instant::now();
    let part = staging.dir.join(format!("{index:016x}.part"));
    let staged = stage(&mut stream, first.frame, &part, index, term).await;
    let records = match staged {
        Ok(records) => records,
        Err(e) => {
            let _ = blocking(|| std::fs::remove_file(&part));
            eprintln!(
                "ringkv: warning: snapshot at index {index} from {:016x} refused: {e}",
                msg.from
            );
            return Err(e);
        }
    };
    let path = staged_path(&staging.dir, index);
    blocking(|| -> std::io::Result<()> {
        std::fs::rename(&part, &path)?;
        std::fs::File::open(&staging.dir)?.sync_all()
    })
    .map_err(|e| PeerError::SnapshotIo(e.to_string()))?;
    eprintln!(
        "ringkv: info: received the snapshot at index {index} (term {term}, {records} records) \
         from {:016x} in {:?}",
        msg.from,
        started.elapsed()
    );
    match ctx.raft.step(msg) {
        Ok(()) => Ok(SnapshotAck { records }),
        Err(crate::raft::RaftError::Overloaded { .. }) => Err(PeerError::Overloaded),
        Err(_) => Err(PeerError::Stopped),
    }
}

/// The next chunk; a sender that sends nothing for `SNAPSHOT_STALL` (a hung peer on a live
/// connection) fails the receive, so it cannot hold the one receive slot forever.
async fn next_chunk(
    stream: &mut tonic::Streaming<SnapshotChunk>,
) -> Result<Option<SnapshotChunk>, PeerError> {
    match tokio::time::timeout(SNAPSHOT_STALL, stream.message()).await {
        Ok(chunk) => chunk.map_err(|status| PeerError::SnapshotIo(status.message().to_owned())),
        Err(_) => Err(PeerError::SnapshotIo(format!(
            "no chunk for {SNAPSHOT_STALL:?}"
        ))),
    }
}

/// Checks and writes every frame to `part`, the first being `first_frame`; returns the records
/// once the end frame has checked out and the file is synced.
async fn stage(
    stream: &mut tonic::Streaming<SnapshotChunk>,
    first_frame: Vec<u8>,
    part: &Path,
    index: u64,
    term: u64,
) -> Result<u64, PeerError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| PeerError::SnapshotIo(format!("{}: {e}", part.display()));
    let mut file = blocking(|| {
        if let Some(dir) = part.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::create(part)
    })
    .map_err(io)?;
    let mut checker = StreamChecker::new();
    let mut frame = first_frame;
    let mut records = 0u64;
    loop {
        match checker.check(&frame)? {
            Frame::Header {
                index: i, term: t, ..
            } if (i, t) != (index, term) => {
                return Err(PeerError::SnapshotMismatch {
                    index,
                    term,
                    stream_index: i,
                    stream_term: t,
                });
            }
            Frame::Records(r) => records += r.len() as u64,
            Frame::Header { .. } | Frame::End { .. } => {}
        }
        blocking(|| file.write_all(&frame)).map_err(io)?;
        if checker.is_complete() {
            break;
        }
        frame = match next_chunk(stream).await? {
            Some(chunk) => chunk.frame,
            None => return Err(crate::raft::SnapshotStreamError::Incomplete.into()),
        };
    }
    if next_chunk(stream).await?.is_some() {
        return Err(PeerError::Undecodable);
    }
    blocking(|| file.sync_all()).map_err(io)?;
    Ok(records)
}

/// The sending side: takes `MsgSnapshot`s the raft loop queued and streams each to its peer on
/// a task of its own, at most one per peer.
pub async fn run_senders(
    mut queue: mpsc::Receiver<Message>,
    ctx: Arc<PeerContext>,
    config: PeerConfig,
) {
    let active: Arc<Mutex<HashSet<u64>>> = Arc::default();
    while let Some(msg) = queue.recv().await {
        let to = msg.to;
        if !active.lock().insert(to) {
            // raft-rs sends a peer no second snapshot while one is pending; say it failed.
            ctx.raft.report_snapshot(to, false);
            continue;
        }
        let (ctx, config, active) = (ctx.clone(), config.clone(), active.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = send(&ctx, &config, msg).await;
            active.lock().remove(&to);
            match result {
                Ok((records, bytes)) => {
                    eprintln!(
                        "ringkv: info: sent a snapshot to {to:016x}: {records} records, {bytes} \
                         bytes in {:?}",
                        started.elapsed()
                    );
                    ctx.raft.report_snapshot(to, true);
                }
                Err(e) => {
                    eprintln!("ringkv: warning: sending a snapshot to {to:016x} failed: {e}");
                    ctx.raft.report_snapshot(to, false);
                }
            }
        });
    }
}

/// Streams the image `msg` names to its peer; `(records, bytes)` sent.
async fn send(ctx: &PeerContext, config: &PeerConfig, msg: Message) -> Result<(u64, u64), String> {
    let snapshot = msg.get_snapshot();
    let registered = ctx
        .raft
        .snapshot_image(&snapshot.data)
        .ok_or("its image is no longer registered (the log was compacted past it)")?;
    let meta = snapshot.get_metadata();
    assert_eq!(
        (registered.index, registered.term),
        (meta.index, meta.term),
        "a descriptor names the image of its own index"
    );
    let member = ctx.members.get(msg.to).ok_or("unknown member")?;
    let url = member
        .peer_urls
        .first()
        .ok_or("member has no peer URL")?
        .clone();
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut client = RaftPeerClient::new(channel)
        .max_decoding_message_size(config.message_bytes_max)
        .max_encoding_message_size(config.message_bytes_max);

    let (tx, rx) = mpsc::channel::<SnapshotChunk>(FRAMES_AHEAD);
    let first = SnapshotChunk {
        cluster_id: ctx.cluster_id,
        from: ctx.member_id,
        message: msg.write_to_bytes().map_err(|e| e.to_string())?,
        frame: Vec::new(),
    };
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(AtomicU64::new(0));
    let (index, term, image) = (registered.index, registered.term, registered.image);
    let app = registered.app;
    let (counted, moved) = (bytes_sent.clone(), progress.clone());
    let producer = tokio::task::spawn_blocking(move || {
        let mut first = Some(first);
        write_stream(&*image, index, term, &app, |frame| {
            counted.fetch_add(frame.len() as u64, Ordering::Relaxed);
            moved.fetch_add(1, Ordering::Relaxed);
            let chunk = match first.take() {
                Some(mut first) => {
                    first.frame = frame;
                    first
                }
                None => SnapshotChunk {
                    frame,
                    ..SnapshotChunk::default()
                },
            };
            tx.blocking_send(chunk).is_ok()
        })
    });
    let call = client.send_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
    let ack = watch_progress(call, &progress).await?;
    let records = producer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if ack.records != records {
        return Err(format!(
            "the receiver staged {} records, {records} were sent",
            ack.records
        ));
    }
    Ok((records, bytes_sent.load(Ordering::Relaxed)))
}

/// Awaits the call, failing it if no frame has moved for `SNAPSHOT_STALL`.
async fn watch_progress(
    call: impl std::future::Future<Output = Result<tonic::Response<SnapshotAck>, tonic::Status>>,
    progress: &AtomicU64,
) -> Result<SnapshotAck, String> {
    let mut call = std::pin::pin!(call);
    let mut seen = progress.load(Ordering::Relaxed);
    let mut since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            result = &mut call => {
                return result
                    .map(tonic::Response::into_inner)
                    .map_err(|status| status.message().to_owned());
            }
            _ = tick.tick() => {
                let now = progress.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    since = Instant::now();
                } else if since.elapsed() >= SNAPSHOT_STALL {
                    return Err(format!("no progress for {SNAPSHOT_STALL:?}"));
                }
            }
        }
    }
}
