//! Counts the bytes of gRPC request and response bodies (`etcd_network_client_grpc_received_bytes_total`
//! and `..._sent_bytes_total`), as a tower layer around the whole gRPC router. The figures are
//! body bytes: gRPC's 5-byte message prefixes included, HTTP/2 framing and headers not (etcd
//! counts the same messages through grpc-go's stats handler).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::{http, Bytes, Service};
use tower_layer::Layer;

use crate::metrics::{Counter, METRICS};

/// The layer: `Server::builder().layer(CountGrpcBytesLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountGrpcBytesLayer;

impl<S> Layer<S> for CountGrpcBytesLayer {
    type Service = CountGrpcBytes<S>;

    fn layer(&self, inner: S) -> CountGrpcBytes<S> {
        CountGrpcBytes(inner)
    }
}

#[derive(Debug, Clone)]
pub struct CountGrpcBytes<S>(S);

impl<S> Service<http::Request<Body>> for CountGrpcBytes<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        futures::future::MapOk<S::Future, fn(http::Response<Body>) -> http::Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        use futures::TryFutureExt;
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            // HTTP endpoints (/metrics scrapes) are not client gRPC traffic.
            return self
                .0
                .call(request)
                .map_ok(std::convert::identity as fn(_) -> _);
        }
        let request =
            request.map(|body| Body::new(Counted::new(body, &METRICS.grpc_received_bytes)));
        self.0.call(request).map_ok(count_response as fn(_) -> _)
    }
}

fn count_response(response: http::Response<Body>) -> http::Response<Body> {
    response.map(|body| Body::new(Counted::new(body, &METRICS.grpc_sent_bytes)))
}

/// A body that adds the length of every data frame it passes to `counter`.
struct Counted {
    inner: Body,
    counter: &'static Counter,
}

impl Counted {
    fn new(inner: Body, counter: &'static Counter) -> Counted {
        Counted { inner, counter }
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
                self.counter.add(data.len() as u64);
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
