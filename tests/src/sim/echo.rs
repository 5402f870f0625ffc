//! The echo ceiling: the manager's own transport (one TLS 1.3 port, the same server
//! configuration and client certificate check, tonic with the same HTTP/2 keep-alive) with
//! nothing behind it. Its Agent service counts heartbeats and answers nothing else (the
//! manager acknowledges no heartbeat either); its Enrollment service checks and signs the CSR
//! as the manager does, with no token, store or audit. What it sustains bounds the manager.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use opi_pki::serving::MAX_HANDSHAKES_IN_FLIGHT;
use opi_pki::tls::{server_config, ClientAuth};
use opi_proto::v1::agent_message::Body;
use opi_proto::v1::agent_server::{Agent, AgentServer};
use opi_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{
    AgentMessage, EnrollRequest, EnrollResponse, ManagerMessage, RecordingRequest,
    RecordingResponse, RenewRequest, RenewResponse, Welcome,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

/// Time a client has to complete the TLS handshake, as on the manager.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of the echo server's certificate.
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest metrics request read.
const MAX_REQUEST: usize = 8192;

/// What the echo server counts, served in the manager's metric names.
#[derive(Debug, Default)]
pub struct EchoCounts {
    heartbeats: AtomicU64,
    sessions: AtomicI64,
}

/// The bound addresses of a running echo server.
#[derive(Clone, Copy, Debug)]
pub struct EchoAddrs {
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
}

/// Serves the echo ceiling until the process ends, with a server certificate issued by the
/// fleet CA in `data_dir`; `ready` receives the bound addresses.
pub async fn serve(
    data_dir: &Path,
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    ready: impl FnOnce(EchoAddrs) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (acceptor, client_auth, signer) = tls(data_dir, listen)?;
    // The manager's listen backlog, so that the ceiling queues connections alike.
    let listener = opi_pki::serving::listen(listen).with_context(|| format!("bind {listen}"))?;
    let metrics = TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("bind {metrics_listen}"))?;
    ready(EchoAddrs {
        listen: listener.local_addr()?,
        metrics: metrics.local_addr()?,
    })?;

    let counts = Arc::new(EchoCounts::default());
    tokio::spawn(serve_metrics(metrics, counts.clone()));
    let (established, incoming) = mpsc::channel(MAX_HANDSHAKES_IN_FLIGHT);
    tokio::spawn(accept_loop(listener, acceptor, client_auth, established));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(opi_pki::channel::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AgentServer::new(EchoAgent { counts }))
        .add_service(EnrollmentServer::new(signer))
        .serve_with_incoming(ReceiverStream::new(incoming))
        .await?;
    Ok(())
}

/// The manager's TLS setup, with an echo certificate from the fleet's issuing CA, and the
/// signer of enrollments.
fn tls(
    data_dir: &Path,
    listen: SocketAddr,
) -> anyhow::Result<(TlsAcceptor, Arc<ClientAuth>, EchoSigner)> {
    let bundle = std::fs::read_to_string(data_dir.join("pki/trust-bundle.pem"))
        .with_context(|| format!("trust bundle in {}", data_dir.display()))?;
    let admin = opi_pki::bundle::OperatorBundle::read(&data_dir.join("opictl-admin.toml"))?;
    let issuer = crate::grpc::issuer(data_dir, &admin.fleet);
    let names = [listen.ip().to_string(), "localhost".to_string()];
    let (issued, key) = issuer.issue_server("echo", &names, CERT_TTL)?;
    let client_auth = ClientAuth::new(&bundle)?;
    let config = server_config(&issued.chain_pem, &key, client_auth.clone())?;
    let signer = EchoSigner {
        issuer: Arc::new(issuer),
        fleet: admin.fleet,
    };
    Ok((TlsAcceptor::from(config), client_auth, signer))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    client_auth: Arc<ClientAuth>,
    established: mpsc::Sender<io::Result<EchoConn>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT));
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, client_auth, sender) =
            (acceptor.clone(), client_auth.clone(), established.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            let Ok(Ok(stream)) = accepted else { return };
            // The manager checks every client chain once per connection; so does the ceiling.
            if let Some(chain) = stream.get_ref().1.peer_certificates() {
                let _ = client_auth.verdict(chain);
            }
            let _ = sender.send(Ok(EchoConn(stream))).await;
        });
    }
}

/// Answers every request on `listener` with the counts, in the manager's metric names.
async fn serve_metrics(listener: TcpListener, counts: Arc<EchoCounts>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let page = format!(
            "opi_heartbeats_total {}\nopi_agent_sessions {}\n",
            counts.heartbeats.load(Ordering::Relaxed),
            counts.sessions.load(Ordering::Relaxed)
        );
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n";
            let _ = stream.write_all(format!("{head}{page}").as_bytes()).await;
        });
    }
}

struct EchoAgent {
    counts: Arc<EchoCounts>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<ManagerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for EchoAgent {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let Some(AgentMessage {
            body: Some(Body::Hello(_)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("a session opens with a hello"));
        };
        // Boxed as the manager queues them.
        let (outbound, receiver) = mpsc::channel::<Box<Result<ManagerMessage, Status>>>(1);
        let welcome = ManagerBody::Welcome(Welcome::default());
        let _ = outbound
            .send(Box::new(Ok(ManagerMessage {
                body: Some(welcome),
            })))
            .await;

        let counts = self.counts.clone();
        tokio::spawn(async move {
            counts.sessions.fetch_add(1, Ordering::Relaxed);
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(Body::Heartbeat(_)) = message.body {
                    counts.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
            }
            counts.sessions.fetch_sub(1, Ordering::Relaxed);
            drop(outbound);
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(receiver).map(|m| *m),
        )))
    }

    async fn renew(&self, _: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        Err(Status::unimplemented("the echo ceiling renews nothing"))
    }

    async fn recording(
        &self,
        _: Request<RecordingRequest>,
    ) -> Result<Response<RecordingResponse>, Status> {
        Err(Status::unimplemented("the echo ceiling records nothing"))
    }
}

/// Signs every well-formed node CSR, as the manager does once a token is accepted.
struct EchoSigner {
    issuer: Arc<opi_pki::Issuer>,
    fleet: String,
}

#[tonic::async_trait]
impl Enrollment for EchoSigner {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let request = request.into_inner();
        let csr = opi_pki::csr::check_node_csr(&request.csr_der, &self.fleet, &request.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = self
            .issuer
            .issue_node(&request.name, &csr.public_key, CERT_TTL)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(EnrollResponse {
            node_name: request.name,
            fleet: self.fleet.clone(),
            cert_chain_pem: issued.chain_pem,
            ..EnrollResponse::default()
        }))
    }
}

/// A TLS connection as tonic serves it.
struct EchoConn(TlsStream<TcpStream>);

impl Connected for EchoConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for EchoConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for EchoConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
