//! What a learner serves: as etcd 3.4's gRPC interceptors, a member that is a learner answers
//! only `Maintenance.Status` and serializable `KV.Range`; every other call of etcd's services
//! (streams included) is refused with Unavailable "etcdserver: rpc not supported for learner".
//! A tower layer around the gRPC router: it reads the membership on every call (a learner
//! promoted serves everything from the next call) and, for a `Range` on a learner, decodes the
//! one request message to see whether it is serializable, then hands the same bytes on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body::{Body as _, Frame, SizeHint};
use prost::Message as _;
use ringkv_proto::etcdserverpb::RangeRequest;
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service};
use tower_layer::Layer;

use super::ApiError;
use crate::peer::Members;

const STATUS_PATH: &str = "/etcdserverpb.Maintenance/Status";
const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// The services a learner refuses (etcd's interceptors cover every service of its gRPC server).
const GUARDED_PREFIXES: [&str; 3] = ["/etcdserverpb.", "/v3lockpb.", "/v3electionpb."];

#[derive(Debug, Clone)]
pub struct LearnerGateLayer {
    members: Arc<Members>,
    /// The largest request body read to look at a `Range` (the server's decoding limit).
    body_bytes_max: usize,
}

impl LearnerGateLayer {
    pub fn new(members: Arc<Members>, body_bytes_max: usize) -> LearnerGateLayer {
        LearnerGateLayer {
            members,
            body_bytes_max,
        }
    }
}

impl<S> Layer<S> for LearnerGateLayer {
    type Service = LearnerGate<S>;

    fn layer(&self, inner: S) -> LearnerGate<S> {
        LearnerGate {
            inner,
            gate: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LearnerGate<S> {
    inner: S,
    gate: LearnerGateLayer,
}

fn refusal() -> http::Response<Body> {
    tonic::Status::from(ApiError::NotSupportedForLearner).into_http()
}

impl<S> Service<http::Request<Body>> for LearnerGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let guarded = GUARDED_PREFIXES.iter().any(|p| path.starts_with(p)) && path != STATUS_PATH;
        let members = &self.gate.members;
        let learner = guarded && members.is_learner(members.local_id());
        if !learner {
            return Box::pin(self.inner.call(request));
        }
        if path != RANGE_PATH {
            return Box::pin(async { Ok(refusal()) });
        }
        // The service is ready now; the clone may not be, so call this one after the body.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.gate.body_bytes_max;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let Some(bytes) = read_body(body, limit).await else {
                return Ok(refusal());
            };
            if !serializable_range(&bytes) {
                return Ok(refusal());
            }
            let body = Body::new(Once(Some(Bytes::from(bytes))));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

/// The whole body, if it is at most `limit` bytes and arrives without error.
async fn read_body(mut body: Body, limit: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Some(bytes),
            Some(Err(_)) => return None,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > limit {
                        return None;
                    }
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Whether a gRPC request body is one uncompressed `RangeRequest` with `serializable` set.
fn serializable_range(body: &[u8]) -> bool {
    let Some((&[compressed, a, b, c, d], message)) = body.split_first_chunk::<5>() else {
        return false;
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if compressed != 0 || message.len() != len {
        return false;
    }
    RangeRequest::decode(message).is_ok_and(|r| r.serializable)
}

/// A body of one chunk.
struct Once(Option<Bytes>);

impl http_body::Body for Once {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(request: &RangeRequest) -> Vec<u8> {
        let message = request.encode_to_vec();
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        body
    }

    #[test]
    fn only_a_serializable_range_passes() {
        let mut request = RangeRequest {
            key: b"k".to_vec(),
            ..RangeRequest::default()
        };
        assert!(!serializable_range(&framed(&request)));
        request.serializable = true;
        let body = framed(&request);
        assert!(serializable_range(&body));
        assert!(!serializable_range(&body[..body.len() - 1]));
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert!(!serializable_range(&compressed));
        assert!(!serializable_range(&[]));
    }
}
