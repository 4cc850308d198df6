//! One server process (ringkv or etcd, same flags) on free loopback ports with its own data dir:
//! start it as a single member (or spawn it with a cluster member's flags, see `cluster`), wait
//! until it answers a linearizable read, read its peak RSS and CPU time from /proc, stop it with
//! SIGTERM (or SIGKILL it, for failover trials).

use crate::load;
use crate::BenchError;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::RangeRequest;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to elect itself and answer, on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A port the kernel just handed out on 127.0.0.1. Another process may take it before the server
/// binds it; the server then fails to start and says so.
pub fn free_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("bind 127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(BenchError::io("local_addr"))?
        .port())
}

/// The flags both servers are started with (etcd's single-member bootstrap).
pub fn server_args(data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        "--name".into(),
        "b".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("b={peer}"),
    ]
}

/// `binary --version`, on one line.
pub fn version(binary: &Path) -> String {
    match Command::new(binary).arg("--version").output() {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        Err(error) => format!("unknown ({error})"),
    }
}

#[derive(Debug)]
pub struct ServerProcess {
    pub name: String,
    child: Option<Child>,
    pub client_port: u16,
    /// Exactly what the server was started with, for the report.
    pub args: Vec<String>,
    pub log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `binary` on free loopback ports with `data_dir` (created if missing) and
    /// `extra_args` after the standard flags; stdout and stderr go to `log_path`. Returns once
    /// the server has answered a linearizable read.
    pub async fn start(
        name: &str,
        binary: &Path,
        data_dir: &Path,
        extra_args: &[String],
        log_path: &Path,
    ) -> Result<ServerProcess, BenchError> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let mut args = server_args(data_dir, client_port, peer_port);
        args.extend(extra_args.iter().cloned());
        let mut server = ServerProcess::spawn(name, binary, data_dir, args, client_port, log_path)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Starts `binary` with exactly `args` (which must listen for clients on `client_port` and
    /// use `data_dir`, created here if missing) without waiting for it: cluster members are
    /// only ready once a quorum of them runs.
    pub fn spawn(
        name: &str,
        binary: &Path,
        data_dir: &Path,
        args: Vec<String>,
        client_port: u16,
        log_path: &Path,
    ) -> Result<ServerProcess, BenchError> {
        std::fs::create_dir_all(data_dir).map_err(BenchError::io(format!(
            "create data dir {}",
            data_dir.display()
        )))?;
        let log = File::create(log_path)
            .map_err(BenchError::io(format!("create {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(BenchError::io("dup log file"))?;
        let child = Command::new(binary)
            .args(&args)
            // No inherited ETCD_* variable may change the configuration under test.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(BenchError::io(format!("spawn {}", binary.display())))?;
        Ok(ServerProcess {
            name: name.to_owned(),
            child: Some(child),
            client_port,
            args,
            log_path: log_path.to_owned(),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn fail(&self, reason: impl Into<String>) -> BenchError {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        BenchError::Server {
            server: self.name.clone(),
            reason: format!(
                "{} (log {}):\n{}",
                reason.into(),
                self.log_path.display(),
                tail.join("\n")
            ),
        }
    }

    /// Waits (up to READY_TIMEOUT) until the server answers a linearizable read.
    pub async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = vec![self.endpoint()];
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("server running")
                .try_wait()
                .map_err(BenchError::io("wait for server"))?
            {
                self.child = None;
                return Err(self.fail(format!("exited with {status} before it was ready")));
            }
            if let Ok(mut channels) = load::connect(&endpoint, 1).await {
                let mut kv = KvClient::new(channels.remove(0));
                let read = kv.range(RangeRequest {
                    key: b"ringkv-bench-ready".to_vec(),
                    ..Default::default()
                });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), read).await {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(self.fail(format!("not ready after {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64, BenchError> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).map_err(BenchError::io(path))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| self.fail("no VmHWM in /proc/PID/status"))
    }

    /// User plus system CPU time so far, in seconds (all threads).
    pub fn cpu_seconds(&self) -> Result<f64, BenchError> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).map_err(BenchError::io(path))?;
        // Fields after the parenthesised command name (which may hold spaces): state is field 3,
        // utime field 14 and stime field 15, so they are the 12th and 13th after the ')'.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |index: usize| {
            fields
                .get(index)
                .and_then(|field| field.parse::<u64>().ok())
        };
        let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
            return Err(self.fail("unreadable /proc/PID/stat"));
        };
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        Ok((utime + stime) as f64 / ticks_per_second as f64)
    }

    /// SIGKILL and reap: a crash, for failover trials. Returns false if it had already exited.
    pub fn kill(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = child.kill();
        let _ = child.wait();
        true
    }

    /// SIGTERM, then waits for the exit (SIGKILL after STOP_TIMEOUT). Returns how it ended:
    /// `exit status: 0`, `signal: 15 (SIGTERM)` (etcd re-raises SIGTERM), or `killed after ...`.
    pub async fn stop(&mut self) -> Result<String, BenchError> {
        let Some(mut child) = self.child.take() else {
            return Ok("already exited".into());
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(BenchError::io("wait for server"))?
            {
                return Ok(status.to_string());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(format!("killed after {STOP_TIMEOUT:?} without exiting"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
