//! Locks and elections against the real `ringkv` binary: `etcdctl lock` / `etcdctl elect` (whose
//! client-side recipes exercise KV, Watch and Lease as etcd's do), and the v3lock / v3election
//! gRPC services with a tonic client: mutual exclusion, hand-over on unlock, resign and lease
//! expiry, observers, errors, and permission checks under auth.
//!
//! Every wait has a deadline; "still waiting" is asserted only after the waiter's own key is
//! visible in the store, so it is known to be queued behind the holder.

mod server_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::auth_client::AuthClient;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::{
    AuthenticateRequest, LeaseGrantRequest, LeaseRevokeRequest, RangeRequest,
};
use ringkv_proto::v3electionpb::election_client::ElectionClient;
use ringkv_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use ringkv_proto::v3lockpb::lock_client::LockClient;
use ringkv_proto::v3lockpb::{LockRequest, UnlockRequest};
use server_support::{ok, Server};
use tonic::transport::Channel;
use tonic::Code;

/// Longest wait for anything that should happen "soon" (a waiter to queue, a released lock to
/// be taken) on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(20);

/// Longest wait for a lease of `EXPIRING_TTL` to expire and its keys to go.
const EXPIRY: Duration = Duration::from_secs(30);
const EXPIRING_TTL: i64 = 2;

fn server(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), extra);
    (dir, server)
}

/// A long-running `etcdctl` whose stdout lines arrive on a channel; killed when dropped.
struct Etcdctl {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Etcdctl {
    fn spawn(endpoint: &str, args: &[&str]) -> Etcdctl {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcdctl");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Etcdctl { child, lines }
    }

    /// The next stdout line, within `limit`.
    fn line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("etcdctl printed no line within {limit:?}: {e}"))
    }

    /// Nothing printed so far (the process is blocked).
    fn assert_silent(&self) {
        if let Ok(line) = self.lines.try_recv() {
            panic!("etcdctl printed {line:?} while it should wait");
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// SIGTERM (etcdctl then releases what it holds) and reap.
    fn terminate(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + SOON;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "etcdctl ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Etcdctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The keys under `prefix`, oldest first, via etcdctl.
fn keys(e: &str, prefix: &str) -> Vec<String> {
    let out = ok(
        e,
        &["get", "--prefix", "--keys-only", "--sort-by=CREATE", prefix],
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits until `prefix` holds `count` keys.
fn wait_keys(e: &str, prefix: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + SOON;
    loop {
        let found = keys(e, prefix);
        if found.len() == count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}: {found:?}, expected {count} keys"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `<name>/<lease hex>`, as etcd names a participant.
fn assert_participant(key: &str, name: &str) {
    let hex = key
        .strip_prefix(&format!("{name}/"))
        .unwrap_or_else(|| panic!("{key:?} is not under {name}/"));
    assert!(
        !hex.is_empty()
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{key:?}"
    );
}

#[test]
fn etcdctl_lock_excludes_a_second_locker_until_the_first_releases() {
    let (_dir, s) = server(&[]);
    let e = s.endpoint();
    let first = Etcdctl::spawn(&e, &["lock", "job"]);
    let first_key = first.line(SOON);
    assert_participant(&first_key, "job");
    // etcdctl prints the key's kv: the key, then its (empty) value.
    assert_eq!(first.line(SOON), "");
    let second = Etcdctl::spawn(&e, &["lock", "job"]);
    let queued = wait_keys(&e, "job/", 2);
    assert_eq!(queued[0], first_key);
    second.assert_silent();
    first.terminate();
    let second_key = second.line(SOON);
    assert_eq!(second_key, queued[1]);
    assert_eq!(keys(&e, "job/"), vec![second_key]);
}

#[test]
fn etcdctl_lock_passes_to_a_waiter_when_the_holders_lease_expires() {
    let (_dir, s) = server(&[]);
    let e = s.endpoint();
    let holder = Etcdctl::spawn(&e, &["lock", "--ttl", "2", "job"]);
    let holder_key = holder.line(SOON);
    let waiter = Etcdctl::spawn(&e, &["lock", "job"]);
    let queued = wait_keys(&e, "job/", 2);
    assert_eq!(queued[0], holder_key);
    waiter.assert_silent();
    // Frozen, the holder sends no keep-alives; only the expiry of its lease can free the lock.
    holder.signal(libc::SIGSTOP);
    let took = waiter
        .lines
        .recv_timeout(EXPIRY)
        .expect("the waiter should take the lock once the holder's lease expired");
    assert_eq!(took, queued[1]);
    assert_eq!(keys(&e, "job/"), vec![took]);
    drop(holder);
}

#[test]
fn etcdctl_lock_runs_a_command_with_the_lock_in_its_environment() {
    let (_dir, s) = server(&[]);
    let e = s.endpoint();
    let out = ok(
        &e,
        &[
            "lock",
            "job",
            "--",
            "sh",
            "-c",
            "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\"",
        ],
    );
    let (key, rev) = out.trim_end().split_once(' ').unwrap();
    assert_participant(key, "job");
    // A fresh store is at revision 1: the lock's put is revision 2.
    assert_eq!(rev, "2", "{out:?}");
    // The command's exit released the lock.
    assert!(keys(&e, "job/").is_empty());
}

#[test]
fn etcdctl_elect_campaigns_observes_and_hands_over() {
    let (_dir, s) = server(&[]);
    let e = s.endpoint();
    let leader = Etcdctl::spawn(&e, &["elect", "poll", "alice"]);
    let leader_key = leader.line(SOON);
    assert_participant(&leader_key, "poll");
    assert_eq!(leader.line(SOON), "alice");
    let observer = Etcdctl::spawn(&e, &["elect", "-l", "poll"]);
    assert_eq!(observer.line(SOON), leader_key);
    assert_eq!(observer.line(SOON), "alice");
    let candidate = Etcdctl::spawn(&e, &["elect", "poll", "bob"]);
    let queued = wait_keys(&e, "poll/", 2);
    assert_eq!(queued[0], leader_key);
    candidate.assert_silent();
    leader.terminate();
    assert_eq!(candidate.line(SOON), queued[1]);
    assert_eq!(candidate.line(SOON), "bob");
    assert_eq!(observer.line(SOON), queued[1]);
    assert_eq!(observer.line(SOON), "bob");
}

// ---- the gRPC services ----

struct Clients {
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
}

async fn clients(s: &Server) -> Clients {
    let channel = Channel::from_shared(s.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Clients {
        lock: LockClient::new(channel.clone()),
        election: ElectionClient::new(channel.clone()),
        lease: LeaseClient::new(channel.clone()),
        kv: KvClient::new(channel),
    }
}

async fn grant(c: &mut Clients, ttl: i64) -> i64 {
    c.lease
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn revoke(c: &mut Clients, id: i64) {
    c.lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap();
}

/// Keys under `prefix`, oldest first.
async fn grpc_keys(c: &mut Clients, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let resp =
        c.kv.range(RangeRequest {
            key: prefix.into(),
            range_end: end,
            sort_target: 1, // CREATE
            sort_order: 1,  // ASCEND
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    resp.kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key).unwrap())
        .collect()
}

async fn grpc_wait_keys(c: &mut Clients, prefix: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + SOON;
    loop {
        let found = grpc_keys(c, prefix).await;
        if found.len() == count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}: {found:?}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn key_of(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("request should fail");
    assert_eq!((status.code(), status.message()), (code, message));
}

fn with<T>(token: &str, req: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(req);
    req.metadata_mut().insert("token", token.parse().unwrap());
    req
}

fn lock_request(name: &str, lease: i64) -> LockRequest {
    LockRequest {
        name: name.into(),
        lease,
    }
}

#[tokio::test]
async fn lock_and_unlock_hand_the_lock_to_the_next_waiter() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let (a, b) = (grant(&mut c, 60).await, grant(&mut c, 60).await);
    let held = c
        .lock
        .lock(lock_request("mx", a))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8(held.key.clone()).unwrap(),
        key_of("mx", a)
    );
    // The put of the key made revision 2 of a fresh store.
    assert_eq!(held.header.unwrap().revision, 2);
    // The same lease locking again re-enters: it already holds the oldest key.
    let again = c
        .lock
        .lock(lock_request("mx", a))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.key, held.key);

    let mut waiter_client = c.lock.clone();
    let waiter = tokio::spawn(async move { waiter_client.lock(lock_request("mx", b)).await });
    let queued = grpc_wait_keys(&mut c, "mx/", 2).await;
    assert_eq!(queued, vec![key_of("mx", a), key_of("mx", b)]);
    assert!(!waiter.is_finished());

    let unlocked = c
        .lock
        .unlock(UnlockRequest {
            key: held.key.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unlocked.header.unwrap().revision, 4);
    let took = tokio::time::timeout(SOON, waiter)
        .await
        .expect("the waiter should get the lock once it was released")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8(took.key).unwrap(), key_of("mx", b));
    // The header of the waiter's final read of its own key.
    assert_eq!(took.header.unwrap().revision, 4);
    assert_eq!(grpc_keys(&mut c, "mx/").await, vec![key_of("mx", b)]);
}

#[tokio::test]
async fn lock_passes_on_when_the_holders_lease_expires() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let holder = grant(&mut c, EXPIRING_TTL).await;
    let waiter = grant(&mut c, 60).await;
    c.lock.lock(lock_request("mx", holder)).await.unwrap();
    let mut waiter_client = c.lock.clone();
    let waiting = tokio::spawn(async move { waiter_client.lock(lock_request("mx", waiter)).await });
    let took = tokio::time::timeout(EXPIRY, waiting)
        .await
        .expect("the holder's lease should expire and free the lock")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8(took.key).unwrap(), key_of("mx", waiter));
}

#[tokio::test]
async fn a_waiter_whose_lease_is_revoked_fails() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let (a, b) = (grant(&mut c, 60).await, grant(&mut c, 60).await);
    c.lock.lock(lock_request("mx", a)).await.unwrap();
    let mut waiter_client = c.lock.clone();
    let waiting = tokio::spawn(async move { waiter_client.lock(lock_request("mx", b)).await });
    grpc_wait_keys(&mut c, "mx/", 2).await;
    revoke(&mut c, b).await;
    assert_eq!(grpc_keys(&mut c, "mx/").await, vec![key_of("mx", a)]);
    assert!(!waiting.is_finished());
    revoke(&mut c, a).await;
    let result = tokio::time::timeout(SOON, waiting).await.unwrap().unwrap();
    if server_support::is_reference() {
        // etcd 3.4 does not look at its own key after the wait and answers with a lock it no
        // longer holds; 3.5 added the check ringkv makes.
        let held = result.unwrap().into_inner();
        assert_eq!(String::from_utf8(held.key).unwrap(), key_of("mx", b));
    } else {
        assert_status(result, Code::Unknown, "mutex: session is expired");
    }
    assert!(grpc_keys(&mut c, "mx/").await.is_empty());
}

#[tokio::test]
async fn lock_errors_are_etcds() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    assert_status(
        c.lock.lock(lock_request("mx", 0x1234)).await,
        Code::Unknown,
        "etcdserver: requested lease not found",
    );
    assert_status(
        c.lock.unlock(UnlockRequest { key: Vec::new() }).await,
        Code::Unknown,
        "etcdserver: key is not provided",
    );
    // Unlocking a key nobody holds is a delete of nothing.
    let resp = c
        .lock
        .unlock(UnlockRequest {
            key: b"mx/1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.header.unwrap().revision, 1);
    // Lease 0: the server grants a session lease of 60 s for the lock.
    let held = c
        .lock
        .lock(lock_request("mx", 0))
        .await
        .unwrap()
        .into_inner();
    let key = String::from_utf8(held.key).unwrap();
    assert_participant(&key, "mx");
    let lease = i64::from_str_radix(key.strip_prefix("mx/").unwrap(), 16).unwrap();
    let ttl = c
        .lease
        .lease_time_to_live(ringkv_proto::etcdserverpb::LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert_eq!(ttl.keys, vec![key.into_bytes()]);
}

fn leader_key(resp: &ringkv_proto::v3electionpb::CampaignResponse) -> LeaderKey {
    resp.leader.clone().unwrap()
}

async fn leader_value(c: &mut Clients, name: &str) -> (String, String) {
    let kv = c
        .election
        .leader(LeaderRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .kv
        .unwrap();
    (
        String::from_utf8(kv.key).unwrap(),
        String::from_utf8(kv.value).unwrap(),
    )
}

#[tokio::test]
async fn campaign_proclaim_leader_and_resign() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let (a, b) = (grant(&mut c, 60).await, grant(&mut c, 60).await);
    let won = c
        .election
        .campaign(CampaignRequest {
            name: b"poll".to_vec(),
            lease: a,
            value: b"v1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let leader = leader_key(&won);
    assert_eq!(
        leader,
        LeaderKey {
            name: b"poll".to_vec(),
            key: key_of("poll", a).into_bytes(),
            rev: 2,
            lease: a,
        }
    );
    assert_eq!(won.header.unwrap().revision, 2);
    assert_eq!(
        leader_value(&mut c, "poll").await,
        (key_of("poll", a), "v1".to_owned())
    );

    let proclaimed = c
        .election
        .proclaim(ProclaimRequest {
            leader: Some(leader.clone()),
            value: b"v2".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proclaimed.header.unwrap().revision, 3);
    assert_eq!(leader_value(&mut c, "poll").await.1, "v2");

    let mut candidate_client = c.election.clone();
    let candidate = tokio::spawn(async move {
        candidate_client
            .campaign(CampaignRequest {
                name: b"poll".to_vec(),
                lease: b,
                value: b"w".to_vec(),
            })
            .await
    });
    grpc_wait_keys(&mut c, "poll/", 2).await;
    assert!(!candidate.is_finished());
    // A waiting candidate is not the leader.
    assert_eq!(leader_value(&mut c, "poll").await.1, "v2");

    let resigned = c
        .election
        .resign(ResignRequest {
            leader: Some(leader.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resigned.header.unwrap().revision, 5);
    let next = tokio::time::timeout(SOON, candidate)
        .await
        .expect("the candidate should win once the leader resigned")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(
        leader_key(&next),
        LeaderKey {
            name: b"poll".to_vec(),
            key: key_of("poll", b).into_bytes(),
            rev: 4,
            lease: b,
        }
    );
    // The header of its put, not of the wait.
    assert_eq!(next.header.unwrap().revision, 4);
    assert_eq!(
        leader_value(&mut c, "poll").await,
        (key_of("poll", b), "w".to_owned())
    );

    // The old leadership is gone: proclaiming fails, resigning again does nothing.
    assert_status(
        c.election
            .proclaim(ProclaimRequest {
                leader: Some(leader.clone()),
                value: b"v3".to_vec(),
            })
            .await,
        Code::Unknown,
        "election: not leader",
    );
    let again = c
        .election
        .resign(ResignRequest {
            leader: Some(leader),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.header.unwrap().revision, 5);
    assert_eq!(leader_value(&mut c, "poll").await.1, "w");
}

#[tokio::test]
async fn campaigning_again_with_a_new_value_proclaims_it() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let a = grant(&mut c, 60).await;
    let campaign = |value: &str| CampaignRequest {
        name: b"poll".to_vec(),
        lease: a,
        value: value.into(),
    };
    let first = c
        .election
        .campaign(campaign("v1"))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .election
        .campaign(campaign("v2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leader_key(&first), leader_key(&second));
    // The header is the first txn's (the failed create), not the proclaim's.
    assert_eq!(second.header.unwrap().revision, 2);
    assert_eq!(leader_value(&mut c, "poll").await.1, "v2");
}

#[tokio::test]
async fn election_errors_are_etcds() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    assert_status(
        c.election
            .leader(LeaderRequest {
                name: b"nobody".to_vec(),
            })
            .await,
        Code::Unknown,
        "election: no leader",
    );
    assert_status(
        c.election
            .proclaim(ProclaimRequest {
                leader: None,
                value: b"v".to_vec(),
            })
            .await,
        Code::Unknown,
        "\"leader\" field must be provided",
    );
    assert_status(
        c.election.resign(ResignRequest { leader: None }).await,
        Code::Unknown,
        "\"leader\" field must be provided",
    );
    assert_status(
        c.election
            .campaign(CampaignRequest {
                name: b"poll".to_vec(),
                lease: 0x1234,
                value: b"v".to_vec(),
            })
            .await,
        Code::Unknown,
        "etcdserver: requested lease not found",
    );
    let a = grant(&mut c, 60).await;
    assert_status(
        c.election
            .proclaim(ProclaimRequest {
                leader: Some(LeaderKey {
                    name: b"poll".to_vec(),
                    key: key_of("poll", a).into_bytes(),
                    rev: 99,
                    lease: a,
                }),
                value: b"v".to_vec(),
            })
            .await,
        Code::Unknown,
        "election: not leader",
    );
}

/// The next Observe response as (header revision, key, value).
async fn next(stream: &mut tonic::Streaming<LeaderResponse>) -> (i64, String, String) {
    let resp = tokio::time::timeout(SOON, stream.message())
        .await
        .expect("an observe response")
        .unwrap()
        .unwrap();
    let kv = resp.kv.unwrap();
    (
        resp.header.unwrap().revision,
        String::from_utf8(kv.key).unwrap(),
        String::from_utf8(kv.value).unwrap(),
    )
}

#[tokio::test]
async fn observe_follows_proclamations_and_successions() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let (a, b) = (grant(&mut c, 60).await, grant(&mut c, 60).await);
    // etcd sends the stream's headers with its first response, so the call itself waits.
    let mut observer_client = c.election.clone();
    let observing = tokio::spawn(async move {
        observer_client
            .observe(LeaderRequest {
                name: b"poll".to_vec(),
            })
            .await
    });
    // Whether the observer saw no leader first (and waited for this put) or finds it with its
    // first read, it reports the same: the key at its creation revision.
    let won = c
        .election
        .campaign(CampaignRequest {
            name: b"poll".to_vec(),
            lease: a,
            value: b"v1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = tokio::time::timeout(SOON, observing)
        .await
        .expect("observe should answer once there is a leader")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut stream).await,
        (2, key_of("poll", a), "v1".to_owned())
    );
    let leader = leader_key(&won);
    c.election
        .proclaim(ProclaimRequest {
            leader: Some(leader.clone()),
            value: b"v2".to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut stream).await,
        (3, key_of("poll", a), "v2".to_owned())
    );
    let mut candidate_client = c.election.clone();
    let candidate = tokio::spawn(async move {
        candidate_client
            .campaign(CampaignRequest {
                name: b"poll".to_vec(),
                lease: b,
                value: b"w".to_vec(),
            })
            .await
    });
    grpc_wait_keys(&mut c, "poll/", 2).await;
    c.election
        .resign(ResignRequest {
            leader: Some(leader),
        })
        .await
        .unwrap();
    // The succession is read fresh: the header is the read's (the resign's revision).
    assert_eq!(
        next(&mut stream).await,
        (5, key_of("poll", b), "w".to_owned())
    );
    tokio::time::timeout(SOON, candidate)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn token(auth: &mut AuthClient<Channel>, name: &str, password: &str) -> String {
    auth.authenticate(AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

/// etcd runs the recipes with the caller's credentials: a user who may not write the lock's
/// keys is refused with the KV error, and one who may gets the lock.
#[tokio::test]
async fn recipes_run_with_the_callers_permissions() {
    let (_dir, s) = server(&[]);
    let e = s.endpoint();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "locker"],
        &[
            "role",
            "grant-permission",
            "locker",
            "--prefix=true",
            "readwrite",
            "mx/",
        ],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix=true",
            "read",
            "mx/",
        ],
        &["user", "add", "ann:annpw"],
        &["user", "grant-role", "ann", "locker"],
        &["user", "add", "bob:bobpw"],
        &["user", "grant-role", "bob", "reader"],
        &["auth", "enable"],
    ] {
        ok(&e, args);
    }
    let mut c = clients(&s).await;
    let channel = Channel::from_shared(e.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut auth = AuthClient::new(channel);
    let root = token(&mut auth, "root", "rootpw").await;
    let ann = token(&mut auth, "ann", "annpw").await;
    let bob = token(&mut auth, "bob", "bobpw").await;
    let lease = c
        .lease
        .lease_grant(with(&root, LeaseGrantRequest { ttl: 60, id: 0 }))
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_status(
        c.lock.lock(lock_request("mx", lease)).await,
        Code::Unknown,
        "etcdserver: user name is empty",
    );
    assert_status(
        c.lock.lock(with(&bob, lock_request("mx", lease))).await,
        Code::Unknown,
        "etcdserver: permission denied",
    );
    assert_status(
        c.lock.lock(with(&ann, lock_request("other", lease))).await,
        Code::Unknown,
        "etcdserver: permission denied",
    );
    let held = c
        .lock
        .lock(with(&ann, lock_request("mx", lease)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8(held.key.clone()).unwrap(),
        key_of("mx", lease)
    );
    assert_status(
        c.lock
            .unlock(with(
                &bob,
                UnlockRequest {
                    key: held.key.clone(),
                },
            ))
            .await,
        Code::Unknown,
        "etcdserver: permission denied",
    );
    // bob may read: he sees the leader of an election under mx/, but may not campaign.
    assert_status(
        c.election
            .campaign(with(
                &bob,
                CampaignRequest {
                    name: b"mx".to_vec(),
                    lease,
                    value: b"v".to_vec(),
                },
            ))
            .await,
        Code::Unknown,
        "etcdserver: permission denied",
    );
    let kv = c
        .election
        .leader(with(
            &bob,
            LeaderRequest {
                name: b"mx".to_vec(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .kv
        .unwrap();
    assert_eq!(kv.key, held.key);
    c.lock
        .unlock(with(&ann, UnlockRequest { key: held.key }))
        .await
        .unwrap();
}

/// A waiter whose client goes away must not leave its key queued: it would hold up every later
/// locker until its lease expired. etcd deletes it when the Lock is cancelled; the holder keeps
/// the lock.
#[tokio::test]
async fn a_cancelled_lock_removes_its_waiting_key() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let (a, b) = (grant(&mut c, 60).await, grant(&mut c, 60).await);
    c.lock.lock(lock_request("mx", a)).await.unwrap();
    let mut waiter_client = c.lock.clone();
    let waiting = tokio::spawn(async move { waiter_client.lock(lock_request("mx", b)).await });
    grpc_wait_keys(&mut c, "mx/", 2).await;
    // Dropping the call resets its HTTP/2 stream: the server sees the client go.
    waiting.abort();
    assert_eq!(
        grpc_wait_keys(&mut c, "mx/", 1).await,
        vec![key_of("mx", a)]
    );
}

/// Likewise a cancelled Campaign resigns; the leader stays.
#[tokio::test]
async fn a_cancelled_campaign_resigns() {
    let (_dir, s) = server(&[]);
    let mut c = clients(&s).await;
    let (a, b) = (grant(&mut c, 60).await, grant(&mut c, 60).await);
    let campaign = |lease: i64, value: &str| CampaignRequest {
        name: b"poll".to_vec(),
        lease,
        value: value.into(),
    };
    c.election.campaign(campaign(a, "v1")).await.unwrap();
    let mut candidate_client = c.election.clone();
    let request = campaign(b, "w");
    let waiting = tokio::spawn(async move { candidate_client.campaign(request).await });
    grpc_wait_keys(&mut c, "poll/", 2).await;
    waiting.abort();
    assert_eq!(
        grpc_wait_keys(&mut c, "poll/", 1).await,
        vec![key_of("poll", a)]
    );
    assert_eq!(leader_value(&mut c, "poll").await.1, "v1");
}

/// A shutdown does not wait on recipes: a queued Lock and an open Observe end with the server
/// instead of holding its connections open until the drain limit cuts them.
#[tokio::test]
async fn shutdown_ends_waiting_locks_and_observers() {
    let (_dir, mut s) = server(&[]);
    let mut c = clients(&s).await;
    let (a, b) = (grant(&mut c, 60).await, grant(&mut c, 60).await);
    let held = c
        .lock
        .lock(lock_request("mx", a))
        .await
        .unwrap()
        .into_inner();
    let mut observer = c
        .election
        .observe(LeaderRequest {
            name: b"mx".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = observer.message().await.unwrap().unwrap();
    assert_eq!(first.kv.unwrap().key, held.key);
    let mut waiter_client = c.lock.clone();
    let waiting = tokio::spawn(async move { waiter_client.lock(lock_request("mx", b)).await });
    grpc_wait_keys(&mut c, "mx/", 2).await;
    let code = tokio::task::spawn_blocking(move || {
        let code = s.stop_with(libc::SIGTERM);
        (code, s.log())
    })
    .await
    .unwrap();
    // etcd dies of the signal it re-raises; ringkv exits cleanly.
    if !server_support::is_reference() {
        assert_eq!(code.0, Some(0), "{}", code.1);
    }
    assert!(
        !code.1.contains("still open"),
        "connections outlived the shutdown:\n{}",
        code.1
    );
    let result = tokio::time::timeout(SOON, waiting).await.unwrap().unwrap();
    assert!(result.is_err(), "{result:?}");
    let ended = tokio::time::timeout(SOON, observer.message())
        .await
        .unwrap();
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
}
