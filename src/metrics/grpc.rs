//! Per-method gRPC counters in go-grpc-prometheus's names, which etcd exports and its dashboards
//! chart: `grpc_server_started_total` and `grpc_server_handled_total` (by status code), labelled
//! `grpc_service`, `grpc_method`, `grpc_type`. Only methods that were called appear.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::Exposition;

/// Distinct (service, method) pairs kept: the names come from request paths, so a client could
/// otherwise grow the map without bound. etcd's API has fewer than 64 methods.
pub const METHODS_MAX: usize = 256;

/// gRPC status code names, indexed by code (`codes.Code.String()` in grpc-go).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The status code a call that ends without one (the client went away) is counted under.
pub const CANCELED: u32 = 1;

#[derive(Debug)]
struct MethodCounts {
    grpc_type: &'static str,
    started: u64,
    handled: [u64; CODE_NAMES.len()],
}

#[derive(Debug, Default)]
pub struct GrpcMetrics {
    methods: Mutex<BTreeMap<(String, String), MethodCounts>>,
}

/// A call that was counted as started; [`GrpcMetrics::handled`] counts its end.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    service: String,
    method: String,
}

impl GrpcMetrics {
    pub const fn new() -> GrpcMetrics {
        GrpcMetrics {
            methods: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts a call to `path` (`/<service>/<method>`) as started; `None` (not counted) for a
    /// path of another shape, or a new method once [`METHODS_MAX`] are known.
    pub fn started(&self, path: &str) -> Option<GrpcCall> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let name_ok = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        };
        if !name_ok(service) || !name_ok(method) {
            return None;
        }
        let mut methods = self.methods.lock();
        let key = (service.to_owned(), method.to_owned());
        if !methods.contains_key(&key) && methods.len() >= METHODS_MAX {
            return None;
        }
        methods
            .entry(key)
            .or_insert_with(|| MethodCounts {
                grpc_type: grpc_type(method),
                started: 0,
                handled: [0; CODE_NAMES.len()],
            })
            .started += 1;
        Some(GrpcCall {
            service: service.to_owned(),
            method: method.to_owned(),
        })
    }

    /// Counts the end of `call` with status `code` (codes beyond the known ones as Unknown).
    pub fn handled(&self, call: &GrpcCall, code: u32) {
        let code = if (code as usize) < CODE_NAMES.len() {
            code as usize
        } else {
            2
        };
        let mut methods = self.methods.lock();
        let key = (call.service.clone(), call.method.clone());
        if let Some(counts) = methods.get_mut(&key) {
            counts.handled[code] += 1;
        }
    }

    pub fn render(&self, out: &mut Exposition) {
        let methods = self.methods.lock();
        out.family_header(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            "counter",
        );
        for ((service, method), counts) in methods.iter() {
            out.sample(
                "grpc_server_started_total",
                &[
                    ("grpc_method", method),
                    ("grpc_service", service),
                    ("grpc_type", counts.grpc_type),
                ],
                counts.started as f64,
            );
        }
        out.family_header(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for ((service, method), counts) in methods.iter() {
            for (code, handled) in counts.handled.iter().enumerate() {
                // OK always, so that error ratios have a denominator; other codes once seen.
                if *handled > 0 || code == 0 {
                    out.sample(
                        "grpc_server_handled_total",
                        &[
                            ("grpc_code", CODE_NAMES[code]),
                            ("grpc_method", method),
                            ("grpc_service", service),
                            ("grpc_type", counts.grpc_type),
                        ],
                        *handled as f64,
                    );
                }
            }
        }
    }
}

/// etcd's streaming methods; everything else is unary.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" => "server_stream",
        _ => "unary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_code() {
        let grpc = GrpcMetrics::new();
        let range = grpc.started("/etcdserverpb.KV/Range").unwrap();
        grpc.handled(&range, 0);
        let watch = grpc.started("/etcdserverpb.Watch/Watch").unwrap();
        grpc.handled(&watch, CANCELED);
        assert!(grpc.started("/no-slash").is_none());
        assert!(grpc.started("/a b/c").is_none());
        let mut out = Exposition::new();
        grpc.render(&mut out);
        let text = out.into_text();
        for line in [
            "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0",
            "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn methods_are_bounded() {
        let grpc = GrpcMetrics::new();
        for i in 0..METHODS_MAX {
            assert!(grpc.started(&format!("/s/m{i}")).is_some());
        }
        assert!(grpc.started("/s/one_more").is_none());
        assert!(
            grpc.started("/s/m0").is_some(),
            "known methods are still counted"
        );
    }
}
