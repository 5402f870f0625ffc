//! The client against a real tonic server on a Unix socket in a temporary directory, serving
//! containerd's `Version` method: the same wire protocol as containerd, without containerd
//! (the end-to-end test with the real daemon belongs in the `tests/` crate).

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use opi_proto::v1::ConditionStatus;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::*;

/// Serves `Version` with a fixed answer, or a fixed error.
#[derive(Clone)]
struct VersionServer {
    answer: Result<VersionResponse, Status>,
}

impl NamedService for VersionServer {
    const NAME: &'static str = "containerd.services.version.v1.Version";
}

impl tower::Service<http::Request<Body>> for VersionServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        assert_eq!(request.uri().path(), VERSION_METHOD);
        let method = Answer(self.answer.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<VersionResponse, ()>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(method, request).await)
        })
    }
}

struct Answer(Result<VersionResponse, Status>);

impl UnaryService<()> for Answer {
    type Response = VersionResponse;
    type Future = Ready<Result<Response<VersionResponse>, Status>>;

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(self.0.clone().map(Response::new))
    }
}

/// Starts the server on `DIR/containerd.sock`.
fn serve(dir: &Path, answer: Result<VersionResponse, Status>) -> PathBuf {
    let socket = dir.join("containerd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(VersionServer { answer })
        .serve_with_incoming(UnixListenerStream::new(listener));
    tokio::spawn(server);
    socket
}

fn collector(root: &Path) -> RuntimeCollector {
    let mut config = HealthConfig::default();
    config.containerd.socket = PathBuf::from("/containerd.sock");
    RuntimeCollector::new(&config, &NodeFiles::new(root))
}

fn release() -> VersionResponse {
    VersionResponse {
        version: "1.6.20~ds1".into(),
        revision: "1.6.20~ds1-1+b1".into(),
    }
}

#[tokio::test]
async fn answering_runtime_is_healthy_and_its_version_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path(), Ok(release()));
    let seen = collector(dir.path()).observe().await;
    assert_eq!(seen.status, ConditionStatus::Ok, "{}", seen.message);
    assert!(
        seen.message.contains("containerd 1.6.20~ds1"),
        "{}",
        seen.message
    );
    assert!(seen.message.contains("containerd.sock"), "{}", seen.message);
}

#[tokio::test]
async fn version_call_decodes_both_fields() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path(), Ok(release()));
    let answer = version(&socket, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer, release());
}

#[tokio::test]
async fn missing_socket_is_a_critical_problem_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let seen = collector(dir.path()).observe().await;
    assert_eq!(seen.status, ConditionStatus::Problem);
    assert_eq!(seen.severity, Severity::Critical);
    assert_eq!(seen.reason, "SocketMissing");
    let expected = dir.path().join("containerd.sock");
    assert!(
        seen.message.contains(&expected.display().to_string()),
        "{}",
        seen.message
    );
}

#[tokio::test]
async fn failing_version_call_is_a_critical_problem_with_the_status() {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path(), Err(Status::unavailable("shutting down")));
    let seen = collector(dir.path()).observe().await;
    assert_eq!(seen.reason, "VersionCallFailed", "{}", seen.message);
    assert!(seen.message.contains("shutting down"), "{}", seen.message);
}

#[tokio::test]
async fn socket_nobody_listens_on_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    // A socket file whose listener is gone: connecting to it is refused.
    drop(UnixListener::bind(dir.path().join("containerd.sock")).unwrap());
    let seen = collector(dir.path()).observe().await;
    assert_eq!(seen.reason, "RuntimeUnreachable", "{}", seen.message);
}
