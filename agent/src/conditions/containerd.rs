//! `ContainerRuntimeHealthy`: containerd answers its `Version` gRPC call on its Unix socket.
//!
//! The two messages are written out here rather than generated: containerd's
//! `containerd.services.version.v1.Version/Version` takes `google.protobuf.Empty` (prost's
//! `()`) and returns [`VersionResponse`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use opi_proto::v1::Severity;
use tokio::net::UnixStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Endpoint, Uri};

use super::config::HealthConfig;
use super::{CollectFuture, Collector, NodeFiles, Observation};
use crate::ErrorChain;

/// The condition type.
pub const CONTAINER_RUNTIME_HEALTHY: &str = "ContainerRuntimeHealthy";
/// containerd's version call.
pub const VERSION_METHOD: &str = "/containerd.services.version.v1.Version/Version";
/// A placeholder URI: the connector below ignores it and dials the socket.
pub const SOCKET_URI: &str = "http://containerd.sock";

/// containerd's answer to `Version`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct VersionResponse {
    /// Release, e.g. `1.6.20`.
    #[prost(string, tag = "1")]
    pub version: String,
    /// The commit it was built from.
    #[prost(string, tag = "2")]
    pub revision: String,
}

/// Why containerd could not be asked its version.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Nothing at the socket path.
    #[error("containerd socket {socket} does not exist")]
    FindSocket {
        /// The socket path.
        socket: PathBuf,
    },
    /// The socket refused the connection or HTTP/2 failed.
    #[error("cannot connect to containerd on {socket}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The call returned an error.
    #[error("containerd on {socket} failed the version call")]
    CallVersion {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: tonic::Status,
    },
    /// No answer in time.
    #[error("containerd on {socket} did not answer within {after:?}")]
    TimedOut {
        /// The socket path.
        socket: PathBuf,
        /// The time allowed.
        after: Duration,
    },
}

/// Asks containerd for its version.
#[derive(Debug)]
pub struct RuntimeCollector {
    socket: PathBuf,
    timeout: Duration,
}

impl RuntimeCollector {
    /// A check of the socket `config` names, under the root of `files`.
    pub fn new(config: &HealthConfig, files: &NodeFiles) -> Self {
        Self {
            socket: files.node(&config.containerd.socket),
            timeout: Duration::from_millis(config.containerd.timeout_ms),
        }
    }

    /// Asks once.
    pub async fn observe(&self) -> Observation {
        let started = Instant::now();
        match version(&self.socket, self.timeout).await {
            Ok(answer) => {
                let message = format!(
                    "containerd {} (revision {}) answered on {} in {} ms",
                    answer.version,
                    answer.revision,
                    self.socket.display(),
                    started.elapsed().as_millis()
                );
                Observation::ok(CONTAINER_RUNTIME_HEALTHY, "", "RuntimeAnswering", message)
            }
            Err(error) => runtime_problem(&error),
        }
    }
}

impl Collector for RuntimeCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![CONTAINER_RUNTIME_HEALTHY]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        Box::pin(async move { Ok(vec![self.observe().await]) })
    }
}

/// Calls `Version` on the containerd socket at `socket`, all within `timeout`.
pub async fn version(socket: &Path, timeout: Duration) -> Result<VersionResponse, RuntimeError> {
    if !socket.exists() {
        return Err(RuntimeError::FindSocket {
            socket: socket.to_path_buf(),
        });
    }
    match tokio::time::timeout(timeout, call_version(socket)).await {
        Ok(answer) => answer,
        Err(_) => Err(RuntimeError::TimedOut {
            socket: socket.to_path_buf(),
            after: timeout,
        }),
    }
}

async fn call_version(socket: &Path) -> Result<VersionResponse, RuntimeError> {
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    });
    let channel = Endpoint::from_static(SOCKET_URI)
        .connect_with_connector(connector)
        .await
        .map_err(|source| RuntimeError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;

    let mut grpc = tonic::client::Grpc::new(channel);
    let failed = |source| RuntimeError::CallVersion {
        socket: socket.to_path_buf(),
        source,
    };
    grpc.ready()
        .await
        .map_err(|error| failed(tonic::Status::from_error(Box::new(error))))?;
    let codec = tonic_prost::ProstCodec::<(), VersionResponse>::default();
    let method = PathAndQuery::from_static(VERSION_METHOD);
    let answer = grpc
        .unary(tonic::Request::new(()), method, codec)
        .await
        .map_err(failed)?;
    Ok(answer.into_inner())
}

/// The condition of a containerd that could not be asked.
fn runtime_problem(error: &RuntimeError) -> Observation {
    let reason = match error {
        RuntimeError::FindSocket { .. } => "SocketMissing",
        RuntimeError::Connect { .. } => "RuntimeUnreachable",
        RuntimeError::CallVersion { .. } => "VersionCallFailed",
        RuntimeError::TimedOut { .. } => "RuntimeTimedOut",
    };
    let message = ErrorChain(error).to_string();
    Observation::problem(
        CONTAINER_RUNTIME_HEALTHY,
        "",
        Severity::Critical,
        reason,
        message,
    )
}

#[cfg(test)]
#[path = "containerd_tests.rs"]
mod tests;
