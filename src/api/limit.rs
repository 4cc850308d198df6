//! Says "message too large" the way etcd's gRPC server (grpc-go) does. A request over the gRPC
//! receive limit (`--max-request-bytes` + 512 KiB) is refused by tonic's decoder before any
//! handler runs, as code OutOfRange "Error, decoded message length too large: found N bytes, the
//! limit is: M bytes"; grpc-go answers ResourceExhausted "grpc: received message larger than max
//! (N vs. M)", and that is what etcd clients print. This wrapper rewrites that one status.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::http::{self, HeaderMap};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Code, Status};

/// Wraps one tonic service (it keeps the service's gRPC name for routing).
#[derive(Debug, Clone)]
pub struct GrpcGoLimitStatus<S>(pub S);

impl<S: NamedService> NamedService for GrpcGoLimitStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for GrpcGoLimitStatus<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

/// Rewrites a trailers-only OutOfRange status from tonic's decode limit; leaves anything else.
fn rewrite(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::OutOfRange {
        return;
    }
    let Some((found, limit)) = parse_decode_limit(status.message()) else {
        return;
    };
    let grpc_go = Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ));
    // Only fails for messages that cannot be percent-encoded into a header; ours can.
    let _ = grpc_go.add_header(headers);
}

fn parse_decode_limit(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix("Error, decoded message length too large: found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_tonics_decode_limit() {
        let mut headers = HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 614410 bytes, the limit is: 528384 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "grpc: received message larger than max (614410 vs. 528384)"
        );

        let mut headers = HeaderMap::new();
        let compacted = "etcdserver: mvcc: required revision has been compacted";
        Status::out_of_range(compacted)
            .add_header(&mut headers)
            .unwrap();
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (Code::OutOfRange, compacted)
        );
    }
}
