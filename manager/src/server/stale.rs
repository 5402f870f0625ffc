//! Marks every operator answer given while this replica cannot reach the fleet store: the
//! answer comes from memory and may be stale, so it carries the [`STALE_SINCE`] header (gRPC
//! metadata) with the RFC 3339 time the store was lost, which `opictl` turns into a warning.
//! Changes are refused meanwhile by the store itself, with an error that says so.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use crate::fleet::Fleet;
use crate::records::rfc3339;

/// The response header (gRPC metadata key) of a stale answer.
pub const STALE_SINCE: &str = "opi-stale-since";

/// A service whose answers are marked while the fleet store is unreachable.
#[derive(Clone)]
pub struct MarkStale<S> {
    inner: S,
    fleet: Arc<Fleet>,
}

impl<S> MarkStale<S> {
    /// Marks the answers of `inner` by the store reachability of `fleet`.
    pub fn new(inner: S, fleet: Arc<Fleet>) -> Self {
        Self { inner, fleet }
    }
}

impl<S: NamedService> NamedService for MarkStale<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<Request<B>> for MarkStale<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Read before the call: the answer is built from memory as it is now.
        let since = self.fleet.store_lost_since();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(value) = since.and_then(|at| HeaderValue::try_from(rfc3339(at)).ok()) {
                response.headers_mut().insert(STALE_SINCE, value);
            }
            Ok(response)
        })
    }
}
