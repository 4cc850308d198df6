//! The Watch service against the real `ringkv` binary: `etcdctl watch` (run in the background,
//! its output captured and compared exactly) and a Rust gRPC client for what etcdctl cannot
//! show (ids, error responses, progress, ordering under concurrent writers, a slow reader,
//! fragments). `RINGKV_TEST_SERVER=/usr/bin/etcd` runs the same checks against etcd.

mod server_support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::watch_client::WatchClient;
use ringkv_proto::etcdserverpb::watch_request::RequestUnion;
use ringkv_proto::etcdserverpb::{
    request_op, CompactionRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use server_support::{ok, Server};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// Bound on every wait for a watch response or an expected output.
const WAIT: Duration = Duration::from_secs(30);

fn server(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), extra);
    (dir, server)
}

/// `etcdctl watch ...` in the background, stdout and stderr to files.
struct Watching {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Watching {
    fn start(dir: &std::path::Path, name: &str, endpoint: &str, args: &[&str]) -> Watching {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("watch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("run etcdctl");
        Watching { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap()
    }

    /// Waits (bounded) until stdout has at least `lines` lines.
    fn wait_lines(&self, lines: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.stdout();
            if out.lines().count() >= lines || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for etcdctl to exit by itself; returns its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "etcdctl watch did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store's current revision (etcdctl watchers start at `--rev` = this + 1, so they see
/// every later write however late they register).
fn current_revision(endpoint: &str) -> i64 {
    server_support::json(endpoint, &["get", "nothing"])["header"]["revision"]
        .as_i64()
        .unwrap()
}

#[test]
fn etcdctl_watch_prints_events_like_etcd() {
    let (dir, s) = server(&[]);
    let ep = s.endpoint();
    ok(&ep, &["put", "foo", "v0"]);
    let next = (current_revision(&ep) + 1).to_string();
    let plain = Watching::start(
        dir.path(),
        "plain",
        &ep,
        &["--prefix", "fo", "--rev", &next],
    );
    let prev = Watching::start(
        dir.path(),
        "prev",
        &ep,
        &["foo", "--prev-kv", "--rev", &next],
    );
    ok(&ep, &["put", "foo", "bar"]);
    ok(&ep, &["del", "foo"]);
    let out = server_support::etcdctl(&ep, &["txn"], Some("\nput foo t1\nput fob t2\n\n\n"));
    assert!(out.status.success());
    assert_eq!(
        plain.wait_lines(12),
        "PUT\nfoo\nbar\nDELETE\nfoo\n\nPUT\nfoo\nt1\nPUT\nfob\nt2\n"
    );
    assert_eq!(
        prev.wait_lines(13),
        "PUT\nfoo\nv0\nfoo\nbar\nDELETE\nfoo\nbar\nfoo\n\nPUT\nfoo\nt1\n"
    );
}

#[test]
fn etcdctl_watch_rev_replays_history_and_json_groups_a_txn() {
    let (dir, s) = server(&[]);
    let ep = s.endpoint();
    ok(&ep, &["put", "k", "1"]); // 2
    ok(&ep, &["put", "k", "2"]); // 3
    ok(&ep, &["del", "k"]); // 4
    let history = Watching::start(dir.path(), "history", &ep, &["k", "--rev", "2"]);
    assert_eq!(history.wait_lines(9), "PUT\nk\n1\nPUT\nk\n2\nDELETE\nk\n\n");
    let json = Watching::start(
        dir.path(),
        "json",
        &ep,
        &["--prefix", "t", "--rev", "5", "-w", "json"],
    );
    let out = server_support::etcdctl(&ep, &["txn"], Some("\nput t1 a\nput t2 b\n\n\n"));
    assert!(out.status.success());
    let line = json.wait_lines(1);
    let resp: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(resp["Header"]["revision"], 5);
    assert_eq!(resp["Events"].as_array().unwrap().len(), 2, "{resp}");
    assert_eq!(resp["Events"][0]["kv"]["key"], server_support::b64("t1"));
    assert_eq!(resp["Events"][1]["kv"]["key"], server_support::b64("t2"));
    assert_eq!(resp["Events"][1]["kv"]["mod_revision"], 5);
    assert_eq!(resp["Canceled"], false);
}

#[test]
fn etcdctl_watch_below_the_compacted_revision_is_canceled() {
    let (dir, s) = server(&[]);
    let ep = s.endpoint();
    for v in ["1", "2", "3"] {
        ok(&ep, &["put", "k", v]);
    }
    ok(&ep, &["compaction", "3"]);
    let mut w = Watching::start(dir.path(), "compacted", &ep, &["k", "--rev", "2"]);
    assert_eq!(w.wait_exit(), Some(5));
    assert_eq!(w.stdout(), "");
    assert_eq!(
        w.stderr(),
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
         Error: watch is canceled by the server\n"
    );
    let mut j = Watching::start(
        dir.path(),
        "compacted-json",
        &ep,
        &["k", "--rev", "2", "-w", "json"],
    );
    assert_eq!(j.wait_exit(), Some(5));
    let out = j.stdout();
    let line = out.lines().find(|l| l.starts_with('{')).unwrap();
    let resp: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(resp["CompactRevision"], 3);
    assert_eq!(resp["Canceled"], true);
    assert!(resp["Header"].get("revision").is_none(), "{resp}");
    // At exactly the compacted revision the watch is served.
    let at = Watching::start(dir.path(), "at", &ep, &["k", "--rev", "3"]);
    assert_eq!(at.wait_lines(6), "PUT\nk\n2\nPUT\nk\n3\n");
}

#[test]
fn etcdctl_interactive_watch() {
    let (dir, s) = server(&[]);
    let ep = s.endpoint();
    ok(&ep, &["put", "a", "1"]);
    let mut w = Watching::start(dir.path(), "interactive", &ep, &["-i"]);
    let mut stdin = w.child.stdin.take().unwrap();
    stdin.write_all(b"watch a --rev 1\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(w.wait_lines(3), "PUT\na\n1\n");
    ok(&ep, &["put", "a", "2"]);
    assert_eq!(w.wait_lines(6), "PUT\na\n1\nPUT\na\n2\n");
    drop(stdin);
}

// ---- gRPC ----

async fn channel(s: &Server) -> Channel {
    Channel::from_shared(s.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

struct WatchStream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl WatchStream {
    /// Opens a stream whose first request is `first` and returns its created response. The
    /// request goes out with the call: etcd (grpc-go) sends no response headers before its
    /// first message, so a client that waits for them before sending would wait forever.
    async fn open(channel: Channel, first: WatchCreateRequest) -> (WatchStream, WatchResponse) {
        let (requests, rx) = mpsc::channel(64);
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(first)),
            })
            .await
            .unwrap();
        let responses = tokio::time::timeout(
            WAIT,
            WatchClient::new(channel).watch(ReceiverStream::new(rx)),
        )
        .await
        .expect("watch call in time")
        .unwrap()
        .into_inner();
        let mut stream = WatchStream {
            requests,
            responses,
        };
        let created = stream.next().await;
        assert!(created.created, "{created:?}");
        (stream, created)
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .unwrap();
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("no watch response in time")
            .unwrap()
            .expect("stream ended")
    }

    /// Creates and returns the created response.
    async fn created(&mut self, create: WatchCreateRequest) -> WatchResponse {
        self.create(create).await;
        let resp = self.next().await;
        assert!(resp.created, "{resp:?}");
        resp
    }
}

fn watch_key(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        ..WatchCreateRequest::default()
    }
}

fn watch_prefix(prefix: &str) -> WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        ..WatchCreateRequest::default()
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &[u8]) -> i64 {
    kv.put(PutRequest {
        key: key.into(),
        value: value.to_vec(),
        ..PutRequest::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

#[tokio::test]
async fn create_cancel_ids_and_errors_follow_etcd() {
    let (_dir, s) = server(&[]);
    let ch = channel(&s).await;
    let mut kv = KvClient::new(ch.clone());
    let r2 = put(&mut kv, "k", b"v").await;
    let (mut w, first) = WatchStream::open(ch, watch_key("k")).await;
    assert_eq!(
        (
            first.watch_id,
            first.canceled,
            first.header.unwrap().revision
        ),
        (0, false, r2)
    );
    let mut chosen = watch_key("k");
    chosen.watch_id = 7;
    assert_eq!(w.created(chosen.clone()).await.watch_id, 7);
    let dup = w.created(chosen).await;
    assert_eq!(
        (dup.watch_id, dup.canceled, dup.cancel_reason.as_str()),
        (
            -1,
            true,
            "mvcc: duplicate watch ID provided on the WatchStream"
        )
    );
    let mut empty = watch_key("b");
    empty.range_end = b"a".to_vec();
    let empty = w.created(empty).await;
    assert_eq!(
        (empty.watch_id, empty.canceled, empty.cancel_reason.as_str()),
        (-1, true, "mvcc: watcher range is empty")
    );
    assert_eq!(w.created(watch_key("k")).await.watch_id, 1);
    // Cancel: answered with the id; an unknown id gets no answer (the next response is the
    // progress response requested after it).
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 7,
    }))
    .await;
    let canceled = w.next().await;
    assert_eq!((canceled.watch_id, canceled.canceled), (7, true));
    assert_eq!(canceled.header.unwrap().revision, r2);
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 99,
    }))
    .await;
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = w.next().await;
    assert_eq!(
        (
            progress.watch_id,
            progress.events.len(),
            progress.header.unwrap().revision
        ),
        (-1, 0, r2)
    );
    // Watchers 0 and 1 see a put; 7 is gone.
    let r3 = put(&mut kv, "k", b"w").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = w.next().await;
        assert_eq!(resp.header.unwrap().revision, r3);
        assert_eq!(resp.events.len(), 1);
        ids.push(resp.watch_id);
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1]);
}

#[tokio::test]
async fn txn_events_share_one_response_and_filters_apply() {
    let (_dir, s) = server(&[]);
    let ch = channel(&s).await;
    let mut kv = KvClient::new(ch.clone());
    let (mut w, _) = WatchStream::open(ch, watch_prefix("t")).await;
    let mut no_put = watch_prefix("t");
    no_put.filters = vec![0];
    no_put.prev_kv = true;
    let no_put_id = w.created(no_put).await.watch_id;
    let op = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        })),
    };
    let txn = kv
        .txn(TxnRequest {
            success: vec![op("t1"), op("t2"), op("u")],
            ..TxnRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rev = txn.header.unwrap().revision;
    let resp = w.next().await;
    assert_eq!(resp.header.unwrap().revision, rev);
    let keys: Vec<_> = resp
        .events
        .iter()
        .map(|e| e.kv.clone().unwrap().key)
        .collect();
    assert_eq!(keys, vec![b"t1".to_vec(), b"t2".to_vec()]);
    // The NOPUT watcher sees only the delete, with the previous value.
    kv.delete_range(ringkv_proto::etcdserverpb::DeleteRangeRequest {
        key: b"t1".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(w.next().await);
    }
    let delete = got.iter().find(|r| r.watch_id == no_put_id).unwrap();
    assert_eq!(delete.events.len(), 1);
    assert_eq!(delete.events[0].r#type, 1);
    assert_eq!(delete.events[0].prev_kv.clone().unwrap().value, b"v");
    assert_eq!(delete.events[0].prev_kv.clone().unwrap().mod_revision, rev);
}

/// Several writers at once: every revision reaches the watcher once, in ascending order.
#[tokio::test]
async fn concurrent_writers_every_revision_once_in_order() {
    const WRITERS: usize = 4;
    const PUTS: usize = 150;
    let (_dir, s) = server(&[]);
    let ch = channel(&s).await;
    let (mut w, created) = WatchStream::open(ch.clone(), watch_prefix("c/")).await;
    let start = created.header.unwrap().revision;
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let mut kv = KvClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..PUTS {
                put(&mut kv, &format!("c/{t}/{}", i % 7), b"v").await;
            }
        }));
    }
    let total = (WRITERS * PUTS) as i64;
    let mut next = start + 1;
    while next <= start + total {
        let resp = w.next().await;
        for event in resp.events {
            assert_eq!(
                event.kv.unwrap().mod_revision,
                next,
                "missing, repeated or out of order"
            );
            next += 1;
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A client that does not read its stream while thousands of writes go by still gets every
/// event, once, in order, when it reads again (the server catches it up from the store).
#[tokio::test]
async fn a_slow_watcher_catches_up() {
    const WRITERS: usize = 8;
    const PUTS: usize = 400;
    let (_dir, s) = server(&[]);
    let ch = channel(&s).await;
    let (mut w, created) = WatchStream::open(ch.clone(), watch_prefix("s/")).await;
    let start = created.header.unwrap().revision;
    // 1 KiB values, so 3,200 events are far more than the HTTP/2 and socket buffers hold.
    let value = vec![b'x'; 1024];
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let mut kv = KvClient::new(ch.clone());
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PUTS {
                put(&mut kv, &format!("s/{t}/{i}"), &value).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = (WRITERS * PUTS) as i64;
    let mut next = start + 1;
    while next <= start + total {
        let resp = w.next().await;
        assert!(!resp.canceled);
        for event in resp.events {
            let kv = event.kv.unwrap();
            assert_eq!(kv.mod_revision, next);
            assert_eq!(kv.value.len(), 1024);
            next += 1;
        }
    }
}

#[tokio::test]
async fn many_watchers_on_one_stream_and_many_streams_on_one_connection() {
    let (_dir, s) = server(&[]);
    let ch = channel(&s).await;
    let mut kv = KvClient::new(ch.clone());
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (mut w, first) = WatchStream::open(ch.clone(), watch_key("m0")).await;
        assert_eq!(first.watch_id, 0);
        for i in 1..40 {
            let created = w.created(watch_key(&format!("m{i}"))).await;
            assert_eq!(created.watch_id, i);
        }
        streams.push(w);
    }
    let mut revs = Vec::new();
    for i in 0..40 {
        revs.push(put(&mut kv, &format!("m{i}"), b"v").await);
    }
    for w in &mut streams {
        for i in 0..40 {
            let resp = w.next().await;
            assert_eq!(resp.watch_id, i);
            assert_eq!(resp.header.unwrap().revision, revs[i as usize]);
        }
    }
}

#[tokio::test]
async fn compacted_start_is_answered_like_etcd() {
    let (_dir, s) = server(&[]);
    let ch = channel(&s).await;
    let mut kv = KvClient::new(ch.clone());
    for _ in 0..3 {
        put(&mut kv, "k", b"v").await;
    }
    kv.compact(CompactionRequest {
        revision: 3,
        physical: true,
    })
    .await
    .unwrap();
    let mut create = watch_key("k");
    create.start_revision = 2;
    let (mut w, created) = WatchStream::open(ch, create).await;
    assert_eq!((created.watch_id, created.canceled), (0, false));
    let compacted = w.next().await;
    assert_eq!(
        (
            compacted.watch_id,
            compacted.canceled,
            compacted.compact_revision,
            compacted.header.unwrap().revision
        ),
        (0, true, 3, 0)
    );
}

#[tokio::test]
async fn fragmented_responses_are_split_under_the_request_limit() {
    const VALUE_BYTES: usize = 300_000;
    // etcd splits above --max-request-bytes + 512 KiB: 1 MiB + 512 KiB here. Three 300 KB puts
    // fit one request; with prev_kv their events make a 1.8 MB response.
    let (_dir, s) = server(&["--max-request-bytes", "1048576"]);
    let ch = channel(&s).await;
    let mut kv = KvClient::new(ch.clone());
    for key in ["f1", "f2", "f3"] {
        put(&mut kv, key, &vec![b'x'; VALUE_BYTES]).await;
    }
    let mut create = watch_prefix("f");
    create.prev_kv = true;
    create.fragment = true;
    let (mut w, _) = WatchStream::open(ch, create).await;
    let op = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: vec![b'y'; VALUE_BYTES],
            ..PutRequest::default()
        })),
    };
    kv.txn(TxnRequest {
        success: vec![op("f1"), op("f2"), op("f3")],
        ..TxnRequest::default()
    })
    .await
    .unwrap();
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    loop {
        let resp = w.next().await;
        sizes.push(resp.events.len());
        for event in &resp.events {
            assert_eq!(event.prev_kv.as_ref().unwrap().value.len(), VALUE_BYTES);
            keys.push(event.kv.as_ref().unwrap().key.clone());
        }
        if !resp.fragment {
            break;
        }
    }
    assert_eq!(sizes, vec![2, 1]);
    assert_eq!(keys, vec![b"f1".to_vec(), b"f2".to_vec(), b"f3".to_vec()]);
}

/// Regression: an open Watch stream never ends by itself, and tonic's graceful shutdown waits
/// for every stream, so SIGTERM hung until the hub learned to end its streams.
#[test]
fn sigterm_ends_open_watch_streams() {
    let (dir, mut s) = server(&[]);
    let ep = s.endpoint();
    let w = Watching::start(dir.path(), "open", &ep, &["k", "--rev", "1"]);
    ok(&ep, &["put", "k", "v"]);
    assert_eq!(w.wait_lines(3), "PUT\nk\nv\n");
    // stop_with panics if the server is still up after its bound.
    s.stop_with(libc::SIGTERM);
}
