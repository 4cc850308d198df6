//! A server under test as a cluster of `n` members on loopback (ringkv or etcd, the same flags):
//! one member is `ServerProcess::start` with the single-member flags; several are a static
//! bootstrap with etcd's flags (`--name mI`, `--initial-cluster m1=..,m2=..,m3=..`,
//! `--initial-cluster-state new`, `--initial-cluster-token`, listen/advertise peer and client
//! URLs), spawned together, then waited for until every member answers a linearizable read and
//! they agree on a leader (Maintenance.Status). Process figures (peak RSS, CPU) are sums over
//! the members still running.

use crate::load;
use crate::server::{self, ServerProcess};
use crate::BenchError;
use ringkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ringkv_proto::etcdserverpb::StatusRequest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest cluster the harness starts: more members than cores only measures scheduling.
pub const MAX_MEMBERS: u32 = 7;
/// How long the members may take to agree on a leader once each has answered a read.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The bootstrap token both servers get, so a stray member of another run cannot join.
const CLUSTER_TOKEN: &str = "ringkv-bench";

/// One member's loopback ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPorts {
    pub client: u16,
    pub peer: u16,
}

/// `m1`, `m2`, ...: the member names in `--name` and `--initial-cluster`.
pub fn member_name(index: usize) -> String {
    format!("m{}", index + 1)
}

/// `m1=http://127.0.0.1:P1,m2=...`: the same string for every member.
pub fn initial_cluster(ports: &[MemberPorts]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(index, port)| format!("{}=http://127.0.0.1:{}", member_name(index), port.peer))
        .collect::<Vec<_>>()
        .join(",")
}

/// Member `index`'s flags for a new static cluster of `ports.len()` members.
pub fn member_args(ports: &[MemberPorts], index: usize, data_dir: &Path) -> Vec<String> {
    assert!(index < ports.len(), "member {index} of {}", ports.len());
    let client = format!("http://127.0.0.1:{}", ports[index].client);
    let peer = format!("http://127.0.0.1:{}", ports[index].peer);
    [
        "--name",
        &member_name(index),
        "--data-dir",
        &data_dir.display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &initial_cluster(ports),
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        CLUSTER_TOKEN,
    ]
    .iter()
    .map(|flag| (*flag).to_owned())
    .collect()
}

/// Maintenance.Status of one endpoint: (this member's id, the leader it knows, 0 for none), or
/// None when it does not answer within `timeout`.
pub async fn status(endpoint: &str, timeout: Duration) -> Option<(u64, u64)> {
    let call = async {
        let mut channels = load::connect(&[endpoint.to_owned()], 1).await.ok()?;
        let mut client = MaintenanceClient::new(channels.remove(0));
        let reply = client.status(StatusRequest {}).await.ok()?.into_inner();
        Some((reply.header.map_or(0, |h| h.member_id), reply.leader))
    };
    tokio::time::timeout(timeout, call).await.ok().flatten()
}

pub struct Cluster {
    pub members: Vec<ServerProcess>,
    data_dirs: Vec<PathBuf>,
}

impl Cluster {
    /// Starts `n` members of `binary` (data dirs under `data_dir`, removed first; logs
    /// `<log_prefix>.log` or `<log_prefix>-mI.log`) and returns once they have a leader.
    pub async fn start(
        name: &str,
        binary: &Path,
        n: u32,
        data_dir: &Path,
        extra_args: &[String],
        log_prefix: &Path,
    ) -> Result<Cluster, BenchError> {
        if n == 0 || n > MAX_MEMBERS {
            return Err(BenchError::Config(format!(
                "--members must be 1..={MAX_MEMBERS}, not {n}"
            )));
        }
        let _ = std::fs::remove_dir_all(data_dir);
        if n == 1 {
            let log = log_prefix.with_extension("log");
            let server = ServerProcess::start(name, binary, data_dir, extra_args, &log).await?;
            return Ok(Cluster {
                members: vec![server],
                data_dirs: vec![data_dir.to_owned()],
            });
        }
        let ports = (0..n)
            .map(|_| {
                Ok(MemberPorts {
                    client: server::free_port()?,
                    peer: server::free_port()?,
                })
            })
            .collect::<Result<Vec<_>, BenchError>>()?;
        let mut cluster = Cluster {
            members: Vec::new(),
            data_dirs: Vec::new(),
        };
        for index in 0..ports.len() {
            let member_dir = data_dir.join(member_name(index));
            let mut args = member_args(&ports, index, &member_dir);
            args.extend(extra_args.iter().cloned());
            let log = PathBuf::from(format!(
                "{}-{}.log",
                log_prefix.display(),
                member_name(index)
            ));
            let label = format!("{name} {}", member_name(index));
            cluster.data_dirs.push(member_dir.clone());
            cluster.members.push(ServerProcess::spawn(
                &label,
                binary,
                &member_dir,
                args,
                ports[index].client,
                &log,
            )?);
        }
        for member in &mut cluster.members {
            member.wait_ready().await?;
        }
        cluster.wait_leader(LEADER_TIMEOUT).await?;
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(ServerProcess::endpoint).collect()
    }

    /// Polls every running member's Status until all name the same leader, one of them; returns
    /// its index in `members`.
    pub async fn wait_leader(&self, limit: Duration) -> Result<usize, BenchError> {
        Ok(self.leader(limit).await?.0)
    }

    /// As `wait_leader`, with the leader's member id.
    pub async fn leader(&self, limit: Duration) -> Result<(usize, u64), BenchError> {
        let deadline = Instant::now() + limit;
        loop {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for member in self.members.iter().filter(|m| m.is_running()) {
                let reply = status(&member.endpoint(), Duration::from_secs(1)).await;
                ids.push(reply.map_or(0, |(id, _)| id));
                leaders.push(reply.map_or(0, |(_, leader)| leader));
            }
            if leaders.is_empty() {
                return Err(self.members[0].fail("no member is running"));
            }
            let agreed = leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]);
            if agreed {
                if let Some(position) = ids.iter().position(|id| *id == leaders[0]) {
                    let running: Vec<usize> = (0..self.members.len())
                        .filter(|i| self.members[*i].is_running())
                        .collect();
                    return Ok((running[position], leaders[0]));
                }
            }
            if Instant::now() > deadline {
                return Err(self.members[0].fail(format!(
                    "no agreed leader after {limit:?} (leaders seen {leaders:?}, ids {ids:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The endpoints with the leader's first: one connection then goes to the leader, more are
    /// spread over every member, the leader getting the extra ones.
    pub async fn endpoints_leader_first(&self) -> Result<Vec<String>, BenchError> {
        let mut endpoints = self.endpoints();
        if endpoints.len() > 1 {
            let leader = self.wait_leader(LEADER_TIMEOUT).await?;
            endpoints.swap(0, leader);
        }
        Ok(endpoints)
    }

    /// CPU seconds (user + system) summed over the running members.
    pub fn cpu_seconds(&self) -> Result<f64, BenchError> {
        let mut total = 0.0;
        for member in self.members.iter().filter(|m| m.is_running()) {
            total += member.cpu_seconds()?;
        }
        Ok(total)
    }

    /// Peak RSS (VmHWM) summed over the running members, KiB.
    pub fn peak_rss_kib(&self) -> Result<u64, BenchError> {
        let mut total = 0;
        for member in self.members.iter().filter(|m| m.is_running()) {
            total += member.peak_rss_kib()?;
        }
        Ok(total)
    }

    /// Stops every member (SIGTERM) and removes the data dirs; returns the exit statuses.
    pub async fn stop(&mut self) -> Result<String, BenchError> {
        let mut statuses = Vec::new();
        for member in &mut self.members {
            statuses.push(member.stop().await?);
        }
        for dir in &self.data_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        statuses.dedup();
        Ok(statuses.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_member_flags_are_etcds_static_bootstrap() {
        let ports = [
            MemberPorts {
                client: 2001,
                peer: 3001,
            },
            MemberPorts {
                client: 2002,
                peer: 3002,
            },
            MemberPorts {
                client: 2003,
                peer: 3003,
            },
        ];
        assert_eq!(
            initial_cluster(&ports),
            "m1=http://127.0.0.1:3001,m2=http://127.0.0.1:3002,m3=http://127.0.0.1:3003"
        );
        let args = member_args(&ports, 1, Path::new("/d/m2")).join(" ");
        assert_eq!(
            args,
            "--name m2 --data-dir /d/m2 --listen-client-urls http://127.0.0.1:2002 \
             --advertise-client-urls http://127.0.0.1:2002 --listen-peer-urls \
             http://127.0.0.1:3002 --initial-advertise-peer-urls http://127.0.0.1:3002 \
             --initial-cluster m1=http://127.0.0.1:3001,m2=http://127.0.0.1:3002,\
             m3=http://127.0.0.1:3003 --initial-cluster-state new --initial-cluster-token \
             ringkv-bench"
        );
    }
}
