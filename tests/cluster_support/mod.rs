//! Shared by the `cluster_*` tests: several `ringkv` processes (or reference etcd, with
//! `RINGKV_TEST_SERVER=/usr/bin/etcd`) forming one cluster on loopback ports, started, killed and
//! restarted one member at a time, and polled (with deadlines) for a leader and for agreement.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::RangeRequest;
use tonic::transport::Channel;

use super::server_support::{free_port, json, server_binary};

/// How long a member may take to report readiness on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Short ticks so elections are quick, as the tests ask (three election timeouts).
pub const HEARTBEAT_MS: &str = "50";
pub const ELECTION_MS: &str = "500";

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
    starts: u32,
    /// Stopped with SIGSTOP (`pause`) and not yet continued.
    paused: bool,
    /// Extra environment of the next starts (the server's is cleared but for `PATH`).
    pub env: Vec<(String, String)>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Started, and not paused.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing (a partitioned member, as
    /// its peers and clients see it).
    pub fn pause(&mut self) {
        assert!(!self.paused);
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) {
        assert!(self.paused);
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("member running").id();
        // SAFETY: kill(2) on our own child, which has not been reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// This member's id, from its `endpoint status`.
    pub fn id(&self) -> u64 {
        Cluster::status(self).expect("endpoint status").0
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn launch(&mut self, initial_cluster: &str, extra: &[&str]) {
        self.launch_as(initial_cluster, "new", extra);
    }

    fn launch_as(&mut self, initial_cluster: &str, state: &str, extra: &[&str]) {
        assert!(self.child.is_none());
        self.starts += 1;
        let parent = self.data_dir.parent().unwrap();
        self.log_path = parent.join(format!("{}-{}.log", self.name, self.starts));
        let log = File::create(&self.log_path).unwrap();
        let (client, peer) = (self.endpoint(), self.peer_url());
        let child = Command::new(server_binary())
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", HEARTBEAT_MS])
            .args(["--election-timeout", ELECTION_MS])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the server");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains("ready to serve client requests") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before it was ready:\n{log}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {READY_TIMEOUT:?}:\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `limit`) for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("member running");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if self.paused {
            self.resume();
        }
        let mut child = self.child.take().expect("member running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub initial_cluster: String,
}

impl Cluster {
    /// Starts `n` members named `m1..mn` with data dirs under `dir`, all at once (a member of a
    /// new cluster may wait for its peers before it reports ready), and waits for a leader.
    pub fn start(dir: &Path, n: usize) -> Cluster {
        Cluster::start_with(dir, n, &[])
    }

    /// [`Cluster::start`] with `extra` flags on every member (on restarts too, unless
    /// `restart` is given others).
    pub fn start_with(dir: &Path, n: usize, extra: &[&str]) -> Cluster {
        let mut members: Vec<Member> = (1..=n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.join(format!("m{i}.data")),
                child: None,
                log_path: PathBuf::new(),
                starts: 0,
                paused: false,
                env: Vec::new(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.launch(&initial_cluster, extra);
        }
        for m in &mut members {
            m.wait_ready();
        }
        let cluster = Cluster {
            members,
            initial_cluster,
        };
        cluster.wait_leader(Duration::from_secs(30));
        cluster
    }

    /// Restarts member `i` on its ports and data dir, with `extra` flags.
    pub fn restart(&mut self, i: usize, extra: &[&str]) {
        let initial_cluster = self.initial_cluster.clone();
        self.members[i].launch(&initial_cluster, extra);
        self.members[i].wait_ready();
    }

    /// Starts member `i` again without waiting for it to be ready (a test that kills it early).
    pub fn relaunch(&mut self, i: usize, extra: &[&str]) {
        let initial_cluster = self.initial_cluster.clone();
        self.members[i].launch(&initial_cluster, extra);
    }

    /// A new member `name` (ports and a data dir next to the others'), not started.
    pub fn new_member(&mut self, name: &str) -> usize {
        let parent = self.members[0].data_dir.parent().unwrap().to_owned();
        self.members.push(Member {
            name: name.to_owned(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: parent.join(format!("{name}.data")),
            child: None,
            log_path: PathBuf::new(),
            starts: 0,
            paused: false,
            env: Vec::new(),
        });
        self.members.len() - 1
    }

    /// Starts member `i` with `--initial-cluster-state existing` and `initial_cluster` (what
    /// `member add` printed), and waits until it is ready.
    pub fn start_joining(&mut self, i: usize, initial_cluster: &str) {
        self.launch_joining(i, initial_cluster);
        self.members[i].wait_ready();
    }

    /// [`Cluster::start_joining`] without waiting (a refused member exits instead).
    pub fn launch_joining(&mut self, i: usize, initial_cluster: &str) {
        self.members[i].launch_as(initial_cluster, "existing", &[]);
    }

    /// Starts member `i` again on its data dir without waiting for it to be ready (a removed
    /// member exits instead).
    pub fn launch_again(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        self.members[i].launch(&initial_cluster, &[]);
    }

    pub fn running(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_running())
    }

    /// `endpoint status -w json` of one member: (member id, leader id, raft term).
    pub fn status(member: &Member) -> Option<(u64, u64, u64)> {
        let out = super::server_support::etcdctl(
            &member.endpoint(),
            &["endpoint", "status", "-w", "json"],
            None,
        );
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = &v[0]["Status"];
        Some((
            s["header"]["member_id"].as_u64()?,
            // etcd's JSON leaves out a zero leader.
            s["leader"].as_u64().unwrap_or(0),
            s["header"]["raft_term"].as_u64()?,
        ))
    }

    /// Polls until every running member names the same live leader; returns its index.
    pub fn wait_leader(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let statuses: Vec<Option<(u64, u64, u64)>> = self.running().map(Self::status).collect();
            let leaders: Vec<u64> = statuses.iter().flatten().map(|s| s.1).collect();
            if leaders.len() == statuses.len() && leaders.iter().all(|&l| l != 0 && l == leaders[0])
            {
                let live = self.members.iter().position(|m| {
                    m.is_running() && Self::status(m).map(|s| s.0) == Some(leaders[0])
                });
                if let Some(i) = live {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader after {limit:?}: {statuses:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `endpoint hashkv` of every running member, polled until they agree.
    pub fn wait_hashkv_equal(&self, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let hashes: Vec<Option<(u64, u64)>> = self
                .running()
                .map(|m| {
                    let v = json(&m.endpoint(), &["endpoint", "hashkv"]);
                    let h = &v[0]["HashKV"];
                    Some((h["hash"].as_u64()?, h["header"]["revision"].as_u64()?))
                })
                .collect();
            if hashes.iter().all(|h| h.is_some() && *h == hashes[0]) {
                return hashes[0].unwrap().0;
            }
            assert!(
                Instant::now() < deadline,
                "hashkv differs after {limit:?}: {hashes:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str("--- ");
            out.push_str(&m.name);
            out.push_str(" ---\n");
            out.push_str(&m.log());
        }
        out
    }
}

/// A current-thread tokio runtime for a test's gRPC calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A KV client of `endpoint` whose requests fail after `timeout`; `None` if it cannot connect
/// (a member that is down).
pub async fn try_kv_client(endpoint: &str, timeout: Duration) -> Option<KvClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect()
        .await
        .ok()?;
    Some(KvClient::new(channel))
}

/// A KV client of `endpoint` (which must be up) whose requests fail after `timeout`.
pub async fn kv_client(endpoint: &str, timeout: Duration) -> KvClient<Channel> {
    try_kv_client(endpoint, timeout)
        .await
        .unwrap_or_else(|| panic!("cannot connect to {endpoint}"))
}

/// Every key under `prefix` with its value, by a linearizable range through `endpoint`.
pub fn read_all(endpoint: &str, prefix: &str) -> BTreeMap<String, String> {
    runtime().block_on(async {
        let mut kv = kv_client(endpoint, Duration::from_secs(15)).await;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let resp = kv
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: end,
                ..RangeRequest::default()
            })
            .await
            .expect("linearizable range")
            .into_inner();
        resp.kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key).unwrap(),
                    String::from_utf8(kv.value).unwrap(),
                )
            })
            .collect()
    })
}

/// Polls `member` (bounded by `limit`) until it names no leader.
pub fn wait_no_leader(member: &Member, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if Cluster::status(member).is_some_and(|s| s.1 == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still names a leader after {limit:?}",
            member.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
