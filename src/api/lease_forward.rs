//! Forwarding of LeaseKeepAlive and LeaseTimeToLive from a follower to the leader: only the
//! leader's lessor keeps lease deadlines, so a renewal or a remaining TTL must come from it.
//!
//! etcd forwards both over its peer HTTP API (`/leases`, `/leases/internal`). ringkv forwards
//! them to the leader's own Lease gRPC service, at the client URLs the leader announced in its
//! peer `Hello` (`peer::Members`): no new peer RPC, the same code answers both paths, and the
//! leader treats a forwarded request exactly as a client's. A forwarded request carries
//! [`FORWARDED_HEADER`]; a member receiving one never forwards it again (a stale leader
//! answers "not leader" and the follower tries again), so a request crosses at most one hop.
//!
//! # The retry rule (etcd's `LeaseRenew`)
//!
//! Until `timeout` (etcd's request timeout, 5 s + 2 election timeouts) has passed: wait for a
//! known leader; if that is this member, answer locally; otherwise try each of its client
//! URLs; a transport failure, "not leader" or "no leader" is retried after `RETRY_PAUSE`;
//! anything else is the answer, passed on as is. Past the deadline: "etcdserver: no leader" if
//! none was known, else "etcdserver: request timed out".
//! Channels are made lazily per leader URL and kept (at most `CHANNELS_MAX`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use ringkv_proto::etcdserverpb::lease_client::LeaseClient;
use ringkv_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::ApiError;
use crate::peer::Members;

/// Metadata a forwarded request carries: the forwarding member's id (hex).
pub const FORWARDED_HEADER: &str = "ringkv-lease-forwarded-from";
/// Pause between attempts while there is no leader or the leader cannot be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Longest a connection attempt to the leader may take before the next try.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Channels kept; a cluster has at most `VOTERS_MAX` members with a few URLs each.
const CHANNELS_MAX: usize = 64;

/// What a forwarding attempt found.
pub enum Attempt<T> {
    /// The leader's answer (or its refusal, which is final).
    Done(Result<T, ApiError>),
    /// This member leads now: answer locally.
    Local,
}

pub struct LeaseForwarder {
    members: Arc<Members>,
    local_id: u64,
    timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl LeaseForwarder {
    pub fn new(members: Arc<Members>, timeout: Duration) -> LeaseForwarder {
        LeaseForwarder {
            local_id: members.local_id(),
            members,
            timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Renews lease `id` on the leader; its TTL (0: unknown or expired lease).
    pub async fn keep_alive(
        &self,
        leader: impl Fn() -> u64,
        id: i64,
    ) -> Attempt<LeaseKeepAliveResponse> {
        self.retry(leader, |mut client| async move {
            let request =
                tonic::Request::new(futures::stream::iter([LeaseKeepAliveRequest { id }]));
            let mut responses = client
                .lease_keep_alive(self.mark(request))
                .await?
                .into_inner();
            match responses.next().await {
                Some(resp) => resp,
                None => Err(tonic::Status::unavailable("keep-alive stream ended")),
            }
        })
        .await
    }

    /// The lease's remaining TTL as the leader knows it.
    pub async fn time_to_live(
        &self,
        leader: impl Fn() -> u64,
        req: LeaseTimeToLiveRequest,
    ) -> Attempt<LeaseTimeToLiveResponse> {
        self.retry(leader, |mut client| async move {
            let request = self.mark(tonic::Request::new(req));
            Ok(client.lease_time_to_live(request).await?.into_inner())
        })
        .await
    }

    fn mark<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        let value = format!("{:x}", self.local_id)
            .parse()
            .expect("hex digits are valid metadata");
        request.metadata_mut().insert(FORWARDED_HEADER, value);
        request
    }

    /// The retry rule of the module doc around one call to the leader.
    async fn retry<T, F, Fut>(&self, leader: impl Fn() -> u64, call: F) -> Attempt<T>
    where
        F: Fn(LeaseClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            let leader_id = leader();
            if leader_id == self.local_id {
                return Attempt::Local;
            }
            let urls = match leader_id {
                0 => Vec::new(),
                id => self
                    .members
                    .get(id)
                    .map(|m| m.client_urls)
                    .unwrap_or_default(),
            };
            for url in urls {
                let Some(channel) = self.channel(&url) else {
                    continue;
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, call(LeaseClient::new(channel))).await {
                    Ok(Ok(resp)) => return Attempt::Done(Ok(resp)),
                    Ok(Err(status)) if !retryable(&status) => {
                        return Attempt::Done(Err(ApiError::Forwarded {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        }));
                    }
                    Ok(Err(_)) | Err(_) => {}
                }
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                // etcd's `waitLeader` answers "no leader" when none appeared in time.
                let error = match leader_id {
                    0 => ApiError::NoLeader,
                    _ => ApiError::Timeout,
                };
                return Attempt::Done(Err(error));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// A lazily connecting channel to `url`, kept for later calls.
    fn channel(&self, url: &str) -> Option<Channel> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(url) {
            return Some(channel.clone());
        }
        let channel = Endpoint::from_shared(url.to_owned())
            .ok()?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(url.to_owned(), channel.clone());
        Some(channel)
    }
}

/// Whether a status from the leader means "ask again" rather than an answer: it could not be
/// reached, or it is no longer (or not yet) the leader.
fn retryable(status: &tonic::Status) -> bool {
    let message = status.message();
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || message == ApiError::NotLeader.to_string()
        || message == ApiError::NoLeader.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_and_transport_failures_are_retried_other_errors_are_answers() {
        let not_leader: tonic::Status = ApiError::NotLeader.into();
        assert!(retryable(&not_leader));
        assert!(retryable(&ApiError::NoLeader.into()));
        assert!(retryable(&tonic::Status::unavailable("connection refused")));
        assert!(!retryable(&tonic::Status::invalid_argument("bad")));
        assert!(!retryable(&tonic::Status::unknown("etcdserver: x")));
    }
}
