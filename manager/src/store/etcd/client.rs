//! A small etcd v3 client: KV `Range` and `Txn` over tonic, against several members.
//!
//! Calls go to the member that answered last. When a member cannot be reached, reads move on
//! to the next one; a transaction moves on only if it certainly never reached the member
//! (the connection was refused or could not be opened), because retrying one that may have
//! been applied could report a conflict with itself. Every call is bounded by the timeout.
//!
//! KV calls wait for one of a fixed number of slots before they are sent: a flood of calls
//! (a whole fleet reconnecting) then queues here, instead of in etcd, which goes on working
//! on a call after its caller gave up, so that past some load every call would time out.
//! The replica's lease round skips the queue ([`EtcdClient::range_now`]).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use opi_proto::etcd::kv_client::KvClient;
use opi_proto::etcd::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::SemaphorePermit;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::config::{EtcdConfig, TlsFiles};

/// Largest response accepted from etcd; listings are paged well below it.
pub(super) const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Interval of HTTP/2 pings, which detect a dead member on an idle connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// KV calls one client has in flight at once; the others wait for a slot, up to the timeout.
const MAX_IN_FLIGHT: usize = 64;

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No member could be reached; each failure is listed.
    #[error("no etcd endpoint answered {call}: {}", list(.failures))]
    Unavailable {
        /// The call, e.g. `Range`.
        call: &'static str,
        /// What happened at each endpoint tried.
        failures: Vec<String>,
    },
    /// A transaction was sent but its answer was lost: it may or may not have been applied.
    #[error(
        "etcd endpoint {endpoint} did not answer {call} ({problem}); it may have been applied"
    )]
    Uncertain {
        /// The member.
        endpoint: String,
        /// The call.
        call: &'static str,
        /// What happened.
        problem: String,
    },
    /// A member answered with an error.
    #[error("etcd endpoint {endpoint} refused {call}: {}", .status.message())]
    Refused {
        /// The member.
        endpoint: String,
        /// The call.
        call: &'static str,
        /// etcd's answer.
        status: Status,
    },
    /// etcd refused a lease or reported it gone.
    #[error("etcd lease {id:x}: {problem}")]
    Lease {
        /// The lease.
        id: i64,
        /// What etcd said.
        problem: String,
    },
    /// Every slot stayed taken for the whole timeout: the call was not sent.
    #[error(
        "{call} not sent to etcd: this manager's {in_flight} calls in flight did not leave a \
         slot within {waited:?}"
    )]
    Busy {
        /// The call.
        call: &'static str,
        /// How many calls were in flight.
        in_flight: usize,
        /// How long the call waited.
        waited: Duration,
    },
    /// A watch was refused or cancelled by etcd.
    #[error("etcd watch cancelled: {reason}")]
    WatchCancelled {
        /// etcd's reason.
        reason: String,
        /// The oldest revision still kept, when the start revision was compacted away.
        compact_revision: i64,
    },
    /// The TLS files could not be read or used.
    #[error("cannot use etcd client TLS file {path}: {problem}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

/// A client of one etcd cluster.
pub struct EtcdClient {
    endpoints: Vec<String>,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    state: Mutex<State>,
    /// One permit per KV call in flight.
    slots: tokio::sync::Semaphore,
}

/// The member in use and its connection, if open.
#[derive(Default)]
struct State {
    current: usize,
    channel: Option<(usize, Channel)>,
}

/// Whether a call may be retried on another member after an uncertain failure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// A read: retried anywhere.
    Always,
    /// A write: retried only when it certainly was not sent.
    IfUnsent,
}

/// How one attempt at one member went.
enum Attempt<T> {
    Done(T),
    /// The member could not be used; try the next.
    Next(String),
    /// Stop with this error.
    Fail(EtcdError),
}

impl EtcdClient {
    /// A client for `config`'s endpoints; reads its TLS files, connects lazily.
    pub fn new(config: &EtcdConfig) -> Result<Self, EtcdError> {
        let tls = config.tls.as_ref().map(tls_config).transpose()?;
        Ok(Self {
            endpoints: config.endpoints.clone(),
            tls,
            timeout: config.timeout,
            state: Mutex::new(State::default()),
            slots: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// KV Range, once a slot is free; retried on the next member when one cannot be reached.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        let _slot = self.slot("Range").await?;
        self.range_now(request).await
    }

    /// KV Range without waiting for a slot: for the few calls that say whether this replica
    /// still reaches etcd, which must not queue behind a flood of others.
    pub async fn range_now(&self, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.call("Range", Retry::Always, move |channel| {
            let request = request.clone();
            async move { kv(channel).range(request).await }
        })
        .await
    }

    /// KV Txn, once a slot is free; retried on the next member only when it certainly was
    /// not sent.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        let _slot = self.slot("Txn").await?;
        self.call("Txn", Retry::IfUnsent, move |channel| {
            let request = request.clone();
            async move { kv(channel).txn(request).await }
        })
        .await
    }

    /// Waits for a free slot, up to the timeout.
    async fn slot(&self, call: &'static str) -> Result<SemaphorePermit<'_>, EtcdError> {
        match tokio::time::timeout(self.timeout, self.slots.acquire()).await {
            Ok(permit) => Ok(permit.expect("the slots are never closed")),
            Err(_) => Err(EtcdError::Busy {
                call,
                in_flight: MAX_IN_FLIGHT,
                waited: self.timeout,
            }),
        }
    }

    /// Runs `call` on the current member, then on the next ones while they cannot be reached.
    pub(super) async fn call<T, F, Fut>(
        &self,
        name: &'static str,
        retry: Retry,
        call: F,
    ) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let first = self.lock().current;
        let mut failures = Vec::new();
        for step in 0..self.endpoints.len() {
            let index = (first + step) % self.endpoints.len();
            match self.attempt(index, name, retry, &call).await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Next(failure) => failures.push(failure),
                Attempt::Fail(error) => return Err(error),
            }
        }
        Err(EtcdError::Unavailable {
            call: name,
            failures,
        })
    }

    async fn attempt<T, F, Fut>(
        &self,
        index: usize,
        name: &'static str,
        retry: Retry,
        call: &F,
    ) -> Attempt<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let endpoint = &self.endpoints[index];
        let channel = match tokio::time::timeout(self.timeout, self.channel(index)).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(problem)) => return Attempt::Next(format!("{endpoint}: {problem}")),
            Err(_) => {
                return Attempt::Next(format!(
                    "{endpoint}: no connection after {:?}",
                    self.timeout
                ))
            }
        };
        let outcome = tokio::time::timeout(self.timeout, call(channel)).await;

        let (problem, unsent) = match outcome {
            Ok(Ok(response)) => {
                self.lock().current = index;
                return Attempt::Done(response.into_inner());
            }
            Ok(Err(status)) if !unreachable(&status) => {
                return Attempt::Fail(EtcdError::Refused {
                    endpoint: endpoint.clone(),
                    call: name,
                    status,
                })
            }
            Ok(Err(status)) => (describe(&status), never_sent(&status)),
            Err(_) => (format!("no answer within {:?}", self.timeout), false),
        };
        self.forget(index);
        if retry == Retry::Always || unsent {
            return Attempt::Next(format!("{endpoint}: {problem}"));
        }
        Attempt::Fail(EtcdError::Uncertain {
            endpoint: endpoint.clone(),
            call: name,
            problem,
        })
    }

    /// The open connection to member `index`, opening it if needed.
    async fn channel(&self, index: usize) -> Result<Channel, String> {
        if let Some((open, channel)) = &self.lock().channel {
            if *open == index {
                return Ok(channel.clone());
            }
        }
        let channel = self.connect(&self.endpoints[index]).await?;
        self.lock().channel = Some((index, channel.clone()));
        Ok(channel)
    }

    /// Drops the connection to member `index`, so that the next call opens a fresh one.
    fn forget(&self, index: usize) {
        let mut state = self.lock();
        if state
            .channel
            .as_ref()
            .is_some_and(|(open, _)| *open == index)
        {
            state.channel = None;
        }
        state.current = (index + 1) % self.endpoints.len();
    }

    async fn connect(&self, endpoint: &str) -> Result<Channel, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let target = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
            .map_err(|error| format!("not a valid endpoint ({error})"))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(self.timeout)
            .keep_alive_while_idle(true);
        let connected = match &self.tls {
            None => target.connect().await,
            Some(tls) => {
                let connector = tls_connector(endpoint, tls.clone())?;
                target.connect_with_connector(connector).await
            }
        };
        connected.map_err(|error| crate::error_chain(&error))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields, sound even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A KV client on `channel`, accepting large listings.
fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A connector that opens TCP to `endpoint` and handshakes TLS with `tls`.
fn tls_connector(
    endpoint: &str,
    tls: Arc<ClientConfig>,
) -> Result<
    impl tower::Service<
            Uri,
            Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
            Error = std::io::Error,
            Future = impl Send,
        > + Clone
        + Send,
    String,
> {
    let (host, _) = endpoint
        .rsplit_once(':')
        .expect("endpoints are checked HOST:PORT");
    let host = host.trim_matches(['[', ']']).to_owned();
    let server_name = ServerName::try_from(host)
        .map_err(|_| format!("`{endpoint}` has no valid TLS server name"))?;
    let address = endpoint.to_owned();
    Ok(tower::service_fn(move |_: Uri| {
        let (tls, server_name, address) = (tls.clone(), server_name.clone(), address.clone());
        async move {
            let tcp = TcpStream::connect(address.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(tls).connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    }))
}

/// A rustls client configuration trusting `files.ca`, presenting the client certificate if set.
fn tls_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, EtcdError> {
    let bad = |path: &std::path::Path, problem: String| EtcdError::Tls {
        path: path.to_owned(),
        problem,
    };
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|error| bad(path, error.to_string()))
    };
    let ca = read(&files.ca)?;
    let roots = opi_pki::tls::root_store(&ca)
        .map_err(|error| bad(&files.ca, crate::error_chain(&error)))?;
    let builder = ClientConfig::builder_with_provider(opi_pki::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| bad(&files.ca, error.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain_pem = read(cert)?;
            let certs = opi_pki::tls::parse_certs(&chain_pem, "etcd client certificate")
                .map_err(|error| bad(cert, crate::error_chain(&error)))?;
            let key_pem = opi_pki::SecretPem::new(read(key)?);
            let key_der = opi_pki::tls::parse_key(&key_pem, "etcd client")
                .map_err(|error| bad(key, crate::error_chain(&error)))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|error| bad(cert, error.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Whether `status` says the member could not be reached, rather than that it refused.
fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || (status.code() == Code::Unknown && std::error::Error::source(status).is_some())
}

/// Whether the failure happened before the request could leave: no connection was made.
fn never_sent(status: &Status) -> bool {
    use std::io::ErrorKind;
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            );
        }
        source = error.source();
    }
    false
}

/// A status's message and the causes under it, on one line.
fn describe(status: &Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), crate::error_chain(source)),
        None => status.message().to_owned(),
    }
}

fn list(failures: &[String]) -> String {
    failures.join("; ")
}
