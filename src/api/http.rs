//! The plain-HTTP endpoints etcd serves on its client port next to gRPC: `/health`, `/version`
//! and `/metrics`, on the same listener (HTTP/1.1 and HTTP/2), answered as etcd 3.5 answers them.
//!
//! [`HttpEndpoints`] is installed as the fallback of the gRPC router: gRPC methods route by
//! `/<service>/<method>` first; everything else comes here. A gRPC request for a service ringkv
//! does not serve still gets gRPC's Unimplemented status, as tonic's own fallback gives it.
//!
//! - `GET /health` → 200 `{"health":"true","reason":""}`, or 503 with the JSON and a newline,
//!   reason `RAFT NO LEADER` or `RANGE ERROR:<error>` (a linearizable read, ReadIndex, failed
//!   within etcd's request timeout), or `ALARM NOSPACE` / `ALARM CORRUPT` while that alarm is
//!   raised and not named by an `?exclude=` parameter. `?serializable=true` checks only this
//!   member, as in etcd.
//!   Another method → 405 `Method Not Allowed` with `Allow: GET`.
//! - `GET /version` → `{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}` (`application/json`).
//! - `/metrics` (any method) → Prometheus text: [`crate::metrics::METRICS`] plus what the scrape
//!   reads from its owners (raft status, page-store space, MVCC revisions and key count) and the
//!   process figures.
//! - any other path → 404 `404 page not found`.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use ringkv_proto::etcdserverpb::AlarmType;
use tonic::codegen::http::{self, header, HeaderValue, Method, StatusCode};
use tonic::codegen::Service;

use crate::apply::alarm::AlarmSet;
use crate::metrics::{self, Exposition, METRICS};
use crate::mvcc::{Mvcc, RangeOptions};

use super::{ApiError, Context};

/// The etcd release ringkv answers as (`/version`, `etcd_server_version`); the same as
/// `Maintenance.Status`'s version (checked by `tests/server_http.rs`).
pub const SERVER_VERSION: &str = "3.5.0";
/// The cluster version (`/version`'s `etcdcluster`): the lowest version of its members,
/// `major.minor.0`.
pub const CLUSTER_VERSION: &str = "3.5.0";

const TEXT: &str = "text/plain; charset=utf-8";

/// What the endpoints need beyond the shared [`Context`].
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// etcd's `--quota-backend-bytes` (`etcd_server_quota_backend_bytes`).
    pub quota_backend_bytes: u64,
    /// How long `/health` waits for its linearizable read: etcd's request timeout, 5 s plus
    /// twice the election timeout.
    pub health_timeout: Duration,
}

/// The HTTP endpoints, as a tower service (cheap to clone).
#[derive(Clone)]
pub struct HttpEndpoints {
    state: Arc<State>,
}

struct State {
    ctx: Arc<Context>,
    config: HttpConfig,
}

impl HttpEndpoints {
    pub fn new(ctx: Arc<Context>, config: HttpConfig) -> HttpEndpoints {
        HttpEndpoints {
            state: Arc::new(State { ctx, config }),
        }
    }
}

impl<B> Service<http::Request<B>> for HttpEndpoints {
    type Response = http::Response<String>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The body is never read: every endpoint is a GET (or ignores it).
        let (parts, _) = request.into_parts();
        let state = self.state.clone();
        Box::pin(async move { Ok(state.answer(&parts).await) })
    }
}

/// `routes` with `http` answering every path no gRPC service claims.
pub fn with_fallback(
    routes: tonic::service::Routes,
    http: HttpEndpoints,
) -> tonic::service::Routes {
    routes.into_axum_router().fallback_service(http).into()
}

impl State {
    async fn answer(&self, request: &http::request::Parts) -> http::Response<String> {
        if is_grpc(&request.headers) {
            return tonic::Status::unimplemented("").into_http();
        }
        match request.uri.path() {
            "/health" if request.method == Method::GET => {
                let query = request.uri.query();
                let serializable = query_value(query, "serializable") == Some("true");
                let excluded: Vec<&str> = query_values(query, "exclude").collect();
                self.health(serializable, &excluded).await
            }
            "/version" if request.method == Method::GET => response(
                StatusCode::OK,
                "application/json",
                format!(r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#),
            ),
            "/health" | "/version" => {
                let mut answer = text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                answer
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
                answer
            }
            "/metrics" => response(StatusCode::OK, metrics::CONTENT_TYPE, self.metrics().await),
            _ => text_error(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    async fn health(&self, serializable: bool, excluded: &[&str]) -> http::Response<String> {
        let checked = match alarm_reason(&super::quota::alarms(&self.ctx), excluded) {
            Some(reason) => Err(reason.to_owned()),
            None => self.check_health(serializable).await,
        };
        match checked {
            Ok(()) => {
                METRICS.health_success.inc();
                response(StatusCode::OK, TEXT, health_json("true", ""))
            }
            Err(reason) => {
                METRICS.health_failures.inc();
                eprintln!("ringkv: warning: serving /health false: {reason}");
                text_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &health_json("false", &reason),
                )
            }
        }
    }

    /// The rest of etcd's `checkHealth` after the alarms: a leader, then a read.
    async fn check_health(&self, serializable: bool) -> Result<(), String> {
        let consensus = &self.ctx.consensus;
        if serializable {
            // A serializable range reads this member's MVCC, which cannot fail short of a
            // storage error that would have stopped the server.
            return Ok(());
        }
        if consensus.status().leader_id == 0 {
            return Err("RAFT NO LEADER".to_owned());
        }
        let read = tokio::time::timeout(self.config.health_timeout, consensus.read_index()).await;
        match read {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("RANGE ERROR:{}", ApiError::from(error))),
            Err(_) => Err(format!("RANGE ERROR:{}", ApiError::Timeout)),
        }
    }

    async fn metrics(&self) -> String {
        let mut out = Exposition::new();
        self.server_metrics(&mut out);
        METRICS.render(&mut out);
        // Counting keys walks the key space: off the async threads.
        let mvcc = self.ctx.mvcc.clone();
        let keys = tokio::task::spawn_blocking(move || count_keys(&mvcc))
            .await
            .ok()
            .flatten();
        self.mvcc_metrics(&mut out, keys);
        metrics::process::render(&mut out);
        out.into_text()
    }

    fn server_metrics(&self, out: &mut Exposition) {
        let ctx = &self.ctx;
        let raft = ctx.consensus.status();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        out.gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            flag(raft.leader_id != 0),
        );
        out.gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            flag(raft.leader_id == ctx.member_id),
        );
        out.gauge(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            0.0,
        );
        out.labeled_gauge(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            ("server_id", &format!("{:x}", ctx.member_id)),
            1.0,
        );
        out.labeled_gauge(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            ("server_version", SERVER_VERSION),
            1.0,
        );
        let major_minor = CLUSTER_VERSION
            .rsplit_once('.')
            .map_or(CLUSTER_VERSION, |(mm, _)| mm);
        out.labeled_gauge(
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            ("cluster_version", major_minor),
            1.0,
        );
        out.gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            self.config.quota_backend_bytes as f64,
        );
        // etcd's "proposals" totals are raft indexes, declared as gauges.
        out.gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            raft.commit_index as f64,
        );
        out.gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            raft.applied_index as f64,
        );
    }

    fn mvcc_metrics(&self, out: &mut Exposition, keys: Option<u64>) {
        let mvcc = &self.ctx.mvcc;
        let space = mvcc.page_store().space();
        out.gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            space.file_bytes as f64,
        );
        out.gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            space.live_bytes as f64,
        );
        out.gauge(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            mvcc.current_revision() as f64,
        );
        out.gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            mvcc.compacted_revision().max(0) as f64,
        );
        if let Some(keys) = keys {
            out.gauge(
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
                keys as f64,
            );
        }
    }
}

/// Keys alive at the current revision (etcd also counts deleted keys it has not compacted
/// yet); `None` if the store failed the read.
fn count_keys(mvcc: &Mvcc) -> Option<u64> {
    let options = RangeOptions {
        count_only: true,
        ..RangeOptions::default()
    };
    match mvcc.range(b"\0", b"\0", &options) {
        Ok(result) => u64::try_from(result.count).ok(),
        Err(error) => {
            eprintln!("ringkv: warning: /metrics cannot count keys: {error}");
            None
        }
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

fn query_value<'q>(query: Option<&'q str>, name: &'q str) -> Option<&'q str> {
    query_values(query, name).next()
}

/// Every value of `name` in the query (`?exclude=NOSPACE&exclude=CORRUPT`).
fn query_values<'q>(query: Option<&'q str>, name: &'q str) -> impl Iterator<Item = &'q str> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// etcd's `checkHealth`: the first raised alarm whose name (`NOSPACE`, `CORRUPT`) is not
/// excluded makes the member unhealthy, with etcd's reason.
fn alarm_reason(alarms: &AlarmSet, excluded: &[&str]) -> Option<&'static str> {
    alarms
        .get(AlarmType::None as i32)
        .iter()
        .filter_map(|raised| AlarmType::try_from(raised.alarm).ok())
        .find(|alarm| !excluded.contains(&alarm.as_str_name()))
        .map(|alarm| match alarm {
            AlarmType::Nospace => "ALARM NOSPACE",
            AlarmType::Corrupt => "ALARM CORRUPT",
            AlarmType::None => "ALARM UNKNOWN",
        })
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> http::Response<String> {
    let mut answer = http::Response::new(body);
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
}

/// Go's `http.Error`: the message and a newline, as plain text the browser must not sniff.
fn text_error(status: StatusCode, message: &str) -> http::Response<String> {
    let mut answer = response(status, TEXT, format!("{message}\n"));
    answer.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    answer
}

fn health_json(health: &str, reason: &str) -> String {
    format!(
        r#"{{"health":{},"reason":{}}}"#,
        json_string(health),
        json_string(reason)
    )
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_json_is_etcds() {
        assert_eq!(health_json("true", ""), r#"{"health":"true","reason":""}"#);
        assert_eq!(
            health_json("false", "RANGE ERROR:a \"b\"\n"),
            r#"{"health":"false","reason":"RANGE ERROR:a \"b\"\n"}"#
        );
    }

    #[test]
    fn query_parameters() {
        assert_eq!(
            query_value(Some("exclude=NOSPACE&serializable=true"), "serializable"),
            Some("true")
        );
        assert_eq!(query_value(Some("serializable"), "serializable"), None);
        assert_eq!(query_value(None, "serializable"), None);
        let both = Some("exclude=NOSPACE&serializable=true&exclude=CORRUPT");
        assert_eq!(
            query_values(both, "exclude").collect::<Vec<_>>(),
            ["NOSPACE", "CORRUPT"]
        );
    }

    #[test]
    fn raised_alarms_make_health_false_unless_excluded() {
        let mut alarms = AlarmSet::default();
        assert_eq!(alarm_reason(&alarms, &[]), None);
        alarms.activate(1, AlarmType::Nospace as i32);
        assert_eq!(alarm_reason(&alarms, &[]), Some("ALARM NOSPACE"));
        assert_eq!(alarm_reason(&alarms, &["NOSPACE"]), None);
        alarms.activate(1, AlarmType::Corrupt as i32);
        assert_eq!(alarm_reason(&alarms, &["NOSPACE"]), Some("ALARM CORRUPT"));
    }
}
