//! Shared by the `server_*` tests: start the real `ringkv` binary on free loopback ports with a
//! data dir, stop or kill it, and run the real `etcdctl` against it.

#![allow(dead_code)]

pub mod acked;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to report readiness on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `RINGKV_TEST_SERVER=/usr/bin/etcd` runs the same tests against reference etcd (same flags),
/// which is how the expected outputs were checked.
pub fn server_binary() -> std::ffi::OsString {
    std::env::var_os("RINGKV_TEST_SERVER").unwrap_or_else(|| env!("CARGO_BIN_EXE_ringkv").into())
}

pub fn is_reference() -> bool {
    std::env::var_os("RINGKV_TEST_SERVER").is_some()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    child: Option<Child>,
    binary: std::ffi::OsString,
    pub client_port: u16,
    peer_port: u16,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    extra: Vec<String>,
    /// Environment variables besides PATH (test-only hooks of the binary).
    env: Vec<(String, String)>,
    starts: u32,
}

impl Server {
    /// Starts a single-member server with its data in `data_dir`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_at(&server_binary(), data_dir, free_port(), free_port(), extra)
    }

    /// Starts `binary` (ringkv or etcd) as member `default` on the given ports, e.g. on a data
    /// dir restored from a snapshot for `default=http://127.0.0.1:<peer_port>`.
    pub fn start_at(
        binary: &std::ffi::OsStr,
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        extra: &[&str],
    ) -> Server {
        let mut server = Server {
            child: None,
            binary: binary.to_owned(),
            client_port,
            peer_port,
            data_dir: data_dir.to_owned(),
            log_path: PathBuf::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            starts: 0,
        };
        server.launch();
        server
    }

    /// `start` with extra environment variables (the binary's test-only hooks).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut server = Server {
            child: None,
            binary: server_binary(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: data_dir.to_owned(),
            log_path: PathBuf::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            starts: 0,
        };
        server.launch();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL the member is started with (its `--initial-advertise-peer-urls`).
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn launch(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let parent = self.data_dir.parent().unwrap();
        self.log_path = parent.join(format!("ringkv-{}-{}.log", self.client_port, self.starts));
        let log = File::create(&self.log_path).unwrap();
        let client = self.endpoint();
        let peer = self.peer_url();
        let child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(&self.extra)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ringkv");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.contains("ready to serve client requests") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ringkv exited with {status} before it was ready:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "ringkv not ready after {READY_TIMEOUT:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("server running").id();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.child.take().unwrap().wait().unwrap();
    }

    /// Sends `signal` (SIGTERM/SIGINT) and waits for a clean exit; returns the exit code.
    pub fn stop_with(&mut self, signal: libc::c_int) -> Option<i32> {
        self.signal(signal);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ringkv did not stop after signal {signal}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// Starts the server again on the same ports and data dir with other extra flags.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `etcdctl` (API v3) against `endpoint`, feeding `stdin` if given.
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=20s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (apt-get install etcd-client)");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// `etcdctl` that must succeed; returns stdout.
pub fn ok(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `etcdctl` that must fail; returns its last stderr line (etcdctl's `Error: ...`).
pub fn fails(endpoint: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = etcdctl(endpoint, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "etcdctl {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default()
        .to_owned()
}

pub fn json(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let out = ok(endpoint, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// etcdctl prints keys and values in JSON as base64.
pub fn b64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
