//! `--experimental-watch-progress-notify-interval` (etcd 3.4): a watcher created with
//! `progress_notify` that has had no events for an interval hears the current revision in an
//! empty response with its own watch id; a watcher that did not ask hears nothing. etcdctl 3.4
//! has no `--progress-notify`, so a Rust gRPC client watches. With the 10-minute default no
//! notification could arrive within the test's bound, so a server that ignored the flag fails
//! it. `RINGKV_TEST_SERVER=/usr/bin/etcd` runs the same checks against etcd.

mod server_support;

use std::process::Command;
use std::time::Duration;

use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::watch_client::WatchClient;
use ringkv_proto::etcdserverpb::watch_request::RequestUnion;
use ringkv_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use server_support::Server;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// Bound on every wait for a watch response.
const WAIT: Duration = Duration::from_secs(30);

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{}", server.client_port))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn put(kv: &mut KvClient<Channel>, key: &str) -> i64 {
    kv.put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn next(replies: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("a watch response within the bound")
        .unwrap()
        .expect("the stream stays open")
}

fn create(key: &str, progress_notify: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            progress_notify,
            ..Default::default()
        })),
    }
}

/// Reads responses until `watch_id`'s progress notification at `revision`. Every response on
/// the way must be such a notification (an earlier tick may report an older revision), never
/// one for another watcher or an event.
async fn progress_at(replies: &mut Streaming<WatchResponse>, watch_id: i64, revision: i64) {
    for _ in 0..100 {
        let reply = next(replies).await;
        assert!(
            !reply.created && !reply.canceled && reply.events.is_empty(),
            "{reply:?}"
        );
        assert_eq!(reply.watch_id, watch_id, "only {watch_id} asked: {reply:?}");
        let reported = reply.header.unwrap().revision;
        assert!(
            reported <= revision,
            "{reported} is beyond the store's {revision}"
        );
        if reported == revision {
            return;
        }
    }
    panic!("no progress notification at {revision}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_progress_notify_watchers_hear_the_current_revision_each_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--experimental-watch-progress-notify-interval=500ms"],
    );
    let channel = channel(&server).await;
    let mut kv = KvClient::new(channel.clone());
    let (requests, receiver) = mpsc::channel(4);
    requests.send(create("p", true)).await.unwrap();
    requests.send(create("p", false)).await.unwrap();
    let mut replies = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let notified = next(&mut replies).await;
    let silent = next(&mut replies).await;
    assert!(notified.created && silent.created);
    let (notified, silent) = (notified.watch_id, silent.watch_id);

    // Writes elsewhere move the revision without an event for either watcher.
    let revision = put(&mut kv, "other").await;
    progress_at(&mut replies, notified, revision).await;

    // An event reaches both (a notification of the older revision may come first); the
    // notifications resume once the watcher is idle again, with the latest write's revision.
    let event_revision = put(&mut kv, "p").await;
    let mut saw_event = Vec::new();
    for _ in 0..100 {
        let reply = next(&mut replies).await;
        let reported = reply.header.unwrap().revision;
        if reply.events.is_empty() {
            assert_eq!((reply.watch_id, reported), (notified, revision));
            continue;
        }
        assert_eq!((reply.events.len(), reported), (1, event_revision));
        saw_event.push(reply.watch_id);
        if saw_event.len() == 2 {
            break;
        }
    }
    saw_event.sort_unstable();
    let mut both = vec![notified, silent];
    both.sort_unstable();
    assert_eq!(saw_event, both);
    let revision = put(&mut kv, "other").await;
    progress_at(&mut replies, notified, revision).await;
    drop(requests);
}

#[test]
fn a_malformed_interval_is_refused_with_etcds_reason() {
    if server_support::is_reference() {
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("--experimental-watch-progress-notify-interval=5")
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim_end(),
        "ringkv: failed to verify flags: invalid value \"5\" for flag \
         --experimental-watch-progress-notify-interval: parse error"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("--print-config")
        .env_clear()
        .env("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "1m30s")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("experimental-watch-progress-notify-interval: 90000000000\n"),
        "{output:?}"
    );
}
