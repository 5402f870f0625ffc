//! A fake manager for the agent's tests: real TLS 1.3 with the fleet's own server
//! configuration, on `127.0.0.1:0`, with a CA made in the test. It serves `Enrollment` and
//! `Agent` as scripted by the test and reports what the agent sent as [`Event`]s.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use opi_pki::ca::{create_issuing_ca, create_root_ca, Issuer};
use opi_pki::tls::{parse_certs, PeerCert};
use opi_pki::CaPin;
use opi_proto::v1::agent_message::Body as AgentBody;
use opi_proto::v1::agent_server::{Agent, AgentServer};
use opi_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{
    AgentMessage, ConditionStatus, EnrollRequest, EnrollResponse, HealthReport, ManagerMessage,
    RecordingRequest, RecordingResponse, RenewNow, RenewRequest, RenewResponse, Welcome,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

/// Lifetime of the node certificates the fake issues.
pub const NODE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for an expected event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the agent did, as the fake manager saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An enrollment, with the key it asks a certificate for.
    Enroll { spki: Vec<u8> },
    /// A session opened with the certificate of this serial.
    Hello { serial: String },
    /// A renewal authenticated with the certificate of this serial.
    Renew { serial: String },
    /// The conditions of a hello or a report, as `(Type or Type:subject, status)`.
    Conditions {
        from: &'static str,
        conditions: Vec<(String, ConditionStatus)>,
    },
    /// A heartbeat, and whether it said when the conditions were observed.
    Heartbeat { conditions_observed: bool },
}

/// What the fake answers.
#[derive(Default)]
pub struct Script {
    /// Answers given to enrollments, after committing them, before a successful one.
    pub enroll_failures: Mutex<VecDeque<Status>>,
    /// Ask for a renewal once, after the first hello.
    pub renew_now: AtomicBool,
    /// Heartbeat interval the welcome asks for, in seconds; 0 means 10.
    pub heartbeat_secs: AtomicU32,
}

/// A running fake manager.
pub struct FakeManager {
    pub endpoint: String,
    pub pin: CaPin,
    pub script: Arc<Script>,
    pub events: mpsc::UnboundedReceiver<Event>,
}

#[derive(Clone)]
struct Service {
    issuer: Arc<Issuer>,
    root_pem: String,
    endpoint: String,
    script: Arc<Script>,
    events: mpsc::UnboundedSender<Event>,
}

/// The verified client certificate of a connection, if any.
#[derive(Clone)]
struct Peer(Option<PeerCert>);

struct Conn(TlsStream<TcpStream>);

impl FakeManager {
    /// Starts a fake manager of `fleet` on a free loopback port.
    pub async fn start(fleet: &str) -> Self {
        let root = create_root_ca(fleet).unwrap();
        let issuing = create_issuing_ca(fleet, "m1", &root).unwrap();
        let issuer = Issuer::new(fleet, &issuing).unwrap();
        let (server, key) = issuer
            .issue_server("m1", &["127.0.0.1".to_string()], NODE_TTL)
            .unwrap();
        let client_auth = opi_pki::tls::ClientAuth::new(&root.cert_pem).unwrap();
        let tls = opi_pki::tls::server_config(&server.chain_pem, &key, client_auth).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );

        let (events_tx, events) = mpsc::unbounded_channel();
        let script = Arc::new(Script::default());
        let service = Service {
            issuer: Arc::new(issuer),
            root_pem: root.cert_pem.clone(),
            endpoint: endpoint.clone(),
            script: script.clone(),
            events: events_tx,
        };
        serve(listener, TlsAcceptor::from(tls), service);
        let root_der = parse_certs(&root.cert_pem, "root").unwrap();
        Self {
            endpoint,
            pin: CaPin::of_cert_der(&root_der[0]).unwrap(),
            script,
            events,
        }
    }

    /// Waits for the next event matching `wanted`, skipping others.
    pub async fn expect(&mut self, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("the expected event did not come in time")
                .expect("the fake manager stopped");
            if wanted(&event) {
                return event;
            }
        }
    }
}

fn serve(listener: TcpListener, acceptor: TlsAcceptor, service: Service) {
    let (conns, incoming) = mpsc::channel::<Result<Conn, io::Error>>(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, conns) = (acceptor.clone(), conns.clone());
            tokio::spawn(async move {
                // A refused handshake is the agent's business; the fake just drops it.
                if let Ok(stream) = acceptor.accept(tcp).await {
                    let _ = conns.send(Ok(Conn(stream))).await;
                }
            });
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EnrollmentServer::new(service.clone()))
            .add_service(AgentServer::new(service))
            .serve_with_incoming(ReceiverStream::new(incoming)),
    );
}

impl Service {
    fn issue(&self, name: &str, csr_der: &[u8]) -> Result<(String, Vec<u8>), Status> {
        let checked = opi_pki::csr::check_node_csr(csr_der, self.issuer.fleet(), name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = self
            .issuer
            .issue_node(name, &checked.public_key, NODE_TTL)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok((issued.chain_pem, checked.spki_der))
    }

    fn peer<T>(request: &Request<T>) -> Result<PeerCert, Status> {
        request
            .extensions()
            .get::<Peer>()
            .and_then(|peer| peer.0.clone())
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))
    }

    fn welcome(&self, peer: &PeerCert) -> ManagerMessage {
        ManagerMessage {
            body: Some(ManagerBody::Welcome(Welcome {
                node_name: peer.identity.name.clone(),
                pool: "workers".into(),
                heartbeat_interval_secs: match self.script.heartbeat_secs.load(Ordering::SeqCst) {
                    0 => 10,
                    secs => secs,
                },
                manager_endpoints: vec![self.endpoint.clone()],
            })),
        }
    }
}

#[tonic::async_trait]
impl Enrollment for Service {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let request = request.into_inner();
        let name = match request.name.as_str() {
            "" => "worker-1".to_string(),
            name => name.to_string(),
        };
        let (chain, spki) = self.issue(&name, &request.csr_der)?;
        let _ = self.events.send(Event::Enroll { spki });
        if let Some(failure) = self.script.enroll_failures.lock().unwrap().pop_front() {
            return Err(failure);
        }
        Ok(Response::new(EnrollResponse {
            node_name: name,
            pool: "workers".into(),
            fleet: self.issuer.fleet().into(),
            cert_chain_pem: chain,
            ca_bundle_pem: self.root_pem.clone(),
            manager_endpoints: vec![self.endpoint.clone()],
            heartbeat_interval_secs: 10,
            profile_signers: Vec::new(),
        }))
    }
}

#[tonic::async_trait]
impl Agent for Service {
    type SessionStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ManagerMessage, Status>> + Send + 'static>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = Self::peer(&request)?;
        let (outbox, queue) = mpsc::channel(8);
        outbox.send(Ok(self.welcome(&peer))).await.unwrap();
        tokio::spawn(relay(
            request.into_inner(),
            outbox,
            peer.serial,
            self.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(queue))))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let peer = Self::peer(&request)?;
        let (chain, _) = self.issue(&peer.identity.name, &request.get_ref().csr_der)?;
        let _ = self.events.send(Event::Renew {
            serial: peer.serial,
        });
        Ok(Response::new(RenewResponse {
            cert_chain_pem: chain,
            ca_bundle_pem: self.root_pem.clone(),
        }))
    }

    async fn recording(
        &self,
        request: Request<RecordingRequest>,
    ) -> Result<Response<RecordingResponse>, Status> {
        Self::peer(&request)?;
        Ok(Response::new(RecordingResponse {
            recorded: true,
            replica: "fake".into(),
        }))
    }
}

/// Reports the agent's hello, reports and heartbeats; asks for a renewal after the hello if
/// scripted.
async fn relay(
    mut inbound: Streaming<AgentMessage>,
    outbox: mpsc::Sender<Result<ManagerMessage, Status>>,
    serial: String,
    service: Service,
) {
    while let Ok(Some(message)) = inbound.message().await {
        let hello = match message.body {
            Some(AgentBody::Hello(hello)) => hello,
            Some(AgentBody::Report(report)) => {
                let _ = service.events.send(conditions("report", &report));
                continue;
            }
            Some(AgentBody::Heartbeat(beat)) => {
                let conditions_observed = beat.conditions_observed_at.is_some();
                let _ = service.events.send(Event::Heartbeat {
                    conditions_observed,
                });
                continue;
            }
            // Apply reports come with the profile delivery, compliance evidence with an
            // applied baseline and bundle acknowledgements with a bundle; this fake scripts
            // none of them.
            Some(AgentBody::Apply(_))
            | Some(AgentBody::Compliance(_))
            | Some(AgentBody::BundleStored(_))
            | None => continue,
        };
        let report = hello.report.unwrap_or_default();
        let _ = service.events.send(conditions("hello", &report));
        let _ = service.events.send(Event::Hello {
            serial: serial.clone(),
        });
        if service.script.renew_now.swap(false, Ordering::SeqCst) {
            let renew = ManagerBody::RenewNow(RenewNow {
                reason: "test".into(),
            });
            let _ = outbox.send(Ok(ManagerMessage { body: Some(renew) })).await;
        }
    }
}

fn conditions(from: &'static str, report: &HealthReport) -> Event {
    let conditions = report
        .conditions
        .iter()
        .map(|c| {
            let key = match c.subject.as_str() {
                "" => c.r#type.clone(),
                subject => format!("{}:{subject}", c.r#type),
            };
            (key, c.status())
        })
        .collect();
    Event::Conditions { from, conditions }
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        let leaf = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        Peer(leaf.and_then(|der| PeerCert::from_der(der).ok()))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
