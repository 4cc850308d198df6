//! Counts gRPC calls and the bytes of gRPC messages received and sent (`etcd_network_client_grpc_received_bytes_total`
//! and `..._sent_bytes_total`), as a tower layer around the whole gRPC router. As in etcd, a
//! message counts its protobuf encoding only: not gRPC's 5-byte length prefix, not HTTP/2
//! framing or headers. The prefixes are recognised in the body stream by [`MessageBytes`].
//! The same layer counts calls per method and status code (`grpc_server_started_total`,
//! `grpc_server_handled_total`): the code comes from the response headers (a trailers-only
//! answer) or its trailers; a call whose body is dropped before them counts as Canceled.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::TryFutureExt;
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service};
use tower_layer::Layer;

use crate::metrics::grpc::{GrpcCall, CANCELED};
use crate::metrics::{Counter, METRICS};

/// The layer: `Server::builder().layer(GrpcTrafficLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTrafficLayer;

impl<S> Layer<S> for GrpcTrafficLayer {
    type Service = GrpcTraffic<S>;

    fn layer(&self, inner: S) -> GrpcTraffic<S> {
        GrpcTraffic(inner)
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTraffic<S>(S);

impl<S> Service<http::Request<Body>> for GrpcTraffic<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            // HTTP endpoints (/metrics scrapes) are not client gRPC traffic.
            return Box::pin(self.0.call(request));
        }
        let call = METRICS.grpc.started(request.uri().path());
        let request =
            request.map(|body| Body::new(Counted::new(body, &METRICS.grpc_received_bytes, None)));
        Box::pin(
            self.0
                .call(request)
                .map_ok(|response| count_response(response, call)),
        )
    }
}

fn count_response(
    response: http::Response<Body>,
    mut call: Option<GrpcCall>,
) -> http::Response<Body> {
    if let Some(code) = grpc_status(response.headers()) {
        // Trailers-only: the call ended with the headers.
        if let Some(call) = call.take() {
            METRICS.grpc.handled(&call, code);
        }
    }
    response.map(|body| Body::new(Counted::new(body, &METRICS.grpc_sent_bytes, call)))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A body that adds the message bytes of every data frame it passes to `counter`, and counts
/// `call` as handled when its trailers pass (or when it is dropped before them).
struct Counted {
    inner: Body,
    counter: &'static Counter,
    messages: MessageBytes,
    call: Option<GrpcCall>,
}

impl Counted {
    fn new(inner: Body, counter: &'static Counter, call: Option<GrpcCall>) -> Counted {
        Counted {
            inner,
            counter,
            messages: MessageBytes::default(),
            call,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            METRICS.grpc.handled(&call, CANCELED);
        }
    }
}

/// gRPC's length-prefixed message framing (a compressed-flag byte, a 4-byte big-endian length,
/// the message), followed across body chunks that may split it anywhere.
#[derive(Debug, Default)]
struct MessageBytes {
    /// Prefix bytes seen of the current message, 0..5; 5 while in its payload.
    prefix_seen: usize,
    /// The length field, accumulated big-endian while `prefix_seen` < 5.
    length: u32,
    /// Payload bytes of the current message not yet seen.
    payload_left: u32,
}

impl MessageBytes {
    const PREFIX_BYTES: usize = 5;

    /// Consumes one chunk; returns how many of its bytes are message payload.
    fn payload_in(&mut self, mut chunk: &[u8]) -> u64 {
        let mut payload = 0;
        while !chunk.is_empty() {
            if self.prefix_seen < Self::PREFIX_BYTES {
                // Byte 0 is the compressed flag; bytes 1..5 the length.
                if self.prefix_seen > 0 {
                    self.length = (self.length << 8) | u32::from(chunk[0]);
                }
                self.prefix_seen += 1;
                chunk = &chunk[1..];
                if self.prefix_seen == Self::PREFIX_BYTES {
                    self.payload_left = self.length;
                    self.length = 0;
                }
            } else {
                let take = chunk.len().min(self.payload_left as usize);
                payload += take as u64;
                self.payload_left -= take as u32;
                chunk = &chunk[take..];
            }
            if self.prefix_seen == Self::PREFIX_BYTES && self.payload_left == 0 {
                self.prefix_seen = 0;
            }
        }
        payload
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let payload = self.messages.payload_in(data);
                self.counter.add(payload);
            } else if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                if let Some(call) = self.call.take() {
                    METRICS.grpc.handled(&call, code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for message in messages {
            bytes.push(0);
            bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
            bytes.extend_from_slice(message);
        }
        bytes
    }

    #[test]
    fn counts_payload_across_any_chunking() {
        let stream = framed(&[b"", b"abc", &[7u8; 300], b"z"]);
        for chunk_bytes in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut counter = MessageBytes::default();
            let total: u64 = stream
                .chunks(chunk_bytes)
                .map(|chunk| counter.payload_in(chunk))
                .sum();
            assert_eq!(total, 304, "chunks of {chunk_bytes}");
            assert_eq!(counter.prefix_seen, 0, "ends between messages");
        }
    }
}
