//! The manager's single TLS port: enrollment (no client certificate), agent sessions (node
//! certificates) and the operator API (operator certificates), all over gRPC.

mod agent;
pub mod authz;
mod conn;
mod convert;
mod enroll;
mod identity;
mod operator;
mod peer;
mod profiles;
mod query;
mod rollouts;
mod status;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opi_pki::tls::ClientAuth;
use opi_proto::v1::agent_server::AgentServer;
use opi_proto::v1::enrollment_server::EnrollmentServer;
use opi_proto::v1::operator_server::OperatorServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tracing::info;

pub use conn::PeerInfo;

use crate::fleet::Fleet;

/// Largest enrollment request accepted (a CSR and a few facts need about 1 KiB).
pub const MAX_ENROLL_MESSAGE: usize = 64 * 1024;
/// Largest message accepted on an agent session.
pub const MAX_AGENT_MESSAGE: usize = 256 * 1024;
/// Largest operator request accepted.
pub const MAX_OPERATOR_MESSAGE: usize = 1024 * 1024;
/// Interval of HTTP/2 keep-alive pings to clients.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Established connections queued for tonic at most.
const ACCEPT_QUEUE: usize = 1024;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `addr`; separate from [`serve`] so callers learn the port before serving.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves the fleet on `listener` until `shutdown` completes.
pub async fn serve(
    fleet: Arc<Fleet>,
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    client_auth: Arc<ClientAuth>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let (established, incoming) = mpsc::channel(ACCEPT_QUEUE);
    let acceptor = TlsAcceptor::from(tls);
    let accepting = tokio::spawn(conn::accept_loop(
        listener,
        acceptor,
        client_auth,
        established,
    ));
    info!(%addr, fleet = %fleet.fleet_name(), "manager listening");

    let enrollment = EnrollmentServer::new(enroll::EnrollmentService {
        fleet: fleet.clone(),
    })
    .max_decoding_message_size(MAX_ENROLL_MESSAGE);
    let agent = AgentServer::new(agent::AgentService {
        fleet: fleet.clone(),
    })
    .max_decoding_message_size(MAX_AGENT_MESSAGE);
    let operator = OperatorServer::new(operator::OperatorService { fleet })
        .max_decoding_message_size(MAX_OPERATOR_MESSAGE);
    let result = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(enrollment)
        .add_service(agent)
        .add_service(operator)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await;
    accepting.abort();
    result.map_err(ServeError::from)
}
