//! The manager's TLS ports: enrollment and login (no client certificate), agent sessions (node
//! certificates) and the operator API (operator certificates), all over gRPC; on one port, or
//! the operator API and login on a port of their own (`serve --operator-listen`).

mod agent;
mod audit;
pub mod authz;
mod conn;
mod convert;
mod enroll;
mod identity;
pub mod inspect;
mod login;
mod operator;
mod peer;
mod profiles;
mod query;
mod rollouts;
pub mod stale;
mod status;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::Shutdown;
use opi_pki::tls::ClientAuth;
use opi_proto::v1::agent_server::AgentServer;
use opi_proto::v1::enrollment_server::EnrollmentServer;
use opi_proto::v1::login_server::LoginServer;
use opi_proto::v1::operator_server::OperatorServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tracing::{info, warn};

pub use conn::PeerInfo;

use crate::fleet::Fleet;

/// Largest enrollment request accepted (a CSR and a few facts need about 1 KiB).
pub const MAX_ENROLL_MESSAGE: usize = 64 * 1024;
/// Largest message accepted on an agent session.
pub const MAX_AGENT_MESSAGE: usize = 256 * 1024;
/// Largest operator request accepted.
pub const MAX_OPERATOR_MESSAGE: usize = 1024 * 1024;
/// Time a call has to be answered; a stream only has to be opened in it (its hello read).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
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

/// Binds `addr` with the kernel queue of [`opi_pki::serving::LISTEN_BACKLOG`]; separate from
/// [`serve`] so callers learn the port before serving.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    opi_pki::serving::listen(addr).map_err(|source| ServeError::Bind { addr, source })
}

/// Where the manager listens; clones share the sockets.
#[derive(Clone)]
pub struct Listeners {
    /// Agents' port: enrollment and agent sessions, and the operator API unless `operators`.
    pub agents: Arc<TcpListener>,
    /// The operator API's own port (`serve --operator-listen`), if any.
    pub operators: Option<Arc<TcpListener>>,
}

impl Listeners {
    /// Stops listening at once: new connections are refused and those the kernel queued are
    /// reset. Done here rather than by the server's tasks, which a runtime busy telling a
    /// large fleet to go away polled a second late: 400 of 10,000 agents reconnected
    /// meanwhile, each costing a TLS handshake and a failed attempt.
    pub fn close(&self) {
        for listener in std::iter::once(&self.agents).chain(&self.operators) {
            // Shutting down a listening socket's reading side stops it listening (Linux).
            let closed = nix::sys::socket::shutdown(listener.as_raw_fd(), Shutdown::Read);
            if let Err(error) = closed {
                warn!(error = %error, "cannot stop listening; the server's shutdown will");
            }
        }
    }
}

/// Time limits of every connection and call.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time a client has to complete its TLS handshake.
    pub handshake: Duration,
    /// Time a call has to be answered (a stream: to be opened).
    pub call: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake: conn::HANDSHAKE_TIMEOUT,
            call: CALL_TIMEOUT,
        }
    }
}

/// Serves the fleet on its listeners until `shutdown` completes.
pub async fn serve(
    fleet: Arc<Fleet>,
    listeners: Listeners,
    tls: Arc<ServerConfig>,
    client_auth: Arc<ClientAuth>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let port = Port {
        fleet: fleet.clone(),
        tls: tls.clone(),
        client_auth: client_auth.clone(),
        limits,
    };
    let agents = port.serve(
        listeners.agents,
        listeners.operators.is_none(),
        true,
        wait(stopped.clone()),
    );
    let operators = async {
        match listeners.operators {
            Some(listener) => {
                port.serve(listener, true, false, wait(stopped.clone()))
                    .await
            }
            None => Ok(()),
        }
    };
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (_, agents, operators) = tokio::join!(signal, agents, operators);
    agents.and(operators)
}

/// What every listener shares.
struct Port {
    fleet: Arc<Fleet>,
    tls: Arc<ServerConfig>,
    client_auth: Arc<ClientAuth>,
    limits: Limits,
}

impl Port {
    /// Serves on `listener` the operator API and login when `operators`, enrollment and agent
    /// sessions when `agents`.
    async fn serve(
        &self,
        listener: Arc<TcpListener>,
        operators: bool,
        agents: bool,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let (established, incoming) = mpsc::channel(ACCEPT_QUEUE);
        let accepting = tokio::spawn(conn::accept_loop(
            listener,
            TlsAcceptor::from(self.tls.clone()),
            self.client_auth.clone(),
            established,
            self.limits.handshake,
        ));
        info!(%addr, fleet = %self.fleet.fleet_name(), operators, agents, "manager listening");
        // The listener closes as shutdown starts, so that agents told to come back later are
        // refused at once instead of waiting on a manager that no longer serves them.
        let stop_accepting = accepting.abort_handle();
        let shutdown = async move {
            shutdown.await;
            stop_accepting.abort();
        };

        let fleet = &self.fleet;
        let enrollment = agents.then(|| {
            EnrollmentServer::new(enroll::EnrollmentService {
                fleet: fleet.clone(),
            })
            .max_decoding_message_size(MAX_ENROLL_MESSAGE)
        });
        let agent = agents.then(|| {
            AgentServer::new(agent::AgentService {
                fleet: fleet.clone(),
            })
            .max_decoding_message_size(MAX_AGENT_MESSAGE)
        });
        let operator = operators.then(|| {
            let service = OperatorServer::new(operator::OperatorService {
                fleet: fleet.clone(),
            })
            .max_decoding_message_size(MAX_OPERATOR_MESSAGE);
            stale::MarkStale::new(service, fleet.clone())
        });
        let login = operators.then(|| {
            LoginServer::new(login::LoginService {
                fleet: fleet.clone(),
            })
            .max_decoding_message_size(MAX_ENROLL_MESSAGE)
        });
        let result = Server::builder()
            .timeout(self.limits.call)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_optional_service(enrollment)
            .add_optional_service(agent)
            .add_optional_service(operator)
            .add_optional_service(login)
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
            .await;
        accepting.abort();
        result.map_err(ServeError::from)
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn a_closed_listener_refuses_connections_and_ends_accepting() {
        let agents = Arc::new(bind("127.0.0.1:0".parse().unwrap()).await.unwrap());
        let addr = agents.local_addr().unwrap();
        let listeners = Listeners {
            agents: agents.clone(),
            operators: None,
        };
        TcpStream::connect(addr)
            .await
            .expect("queued while listening");

        listeners.close();
        let refused = TcpStream::connect(addr)
            .await
            .expect_err("refused once closed");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        // What the accept loop takes for the end, rather than a failure to retry.
        let ended = agents.accept().await.expect_err("nothing to accept");
        assert_eq!(ended.kind(), ErrorKind::InvalidInput);
    }
}
