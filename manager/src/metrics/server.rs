//! The metrics listener: plain HTTP/1.1 on an address of its own, answering `GET /metrics`
//! and nothing else, so that scraping needs no client certificate and reaches nothing else.
//! It has no TLS and no authentication: bind it to loopback or a management network.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use super::text::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use super::Exporter;

/// The one path served.
pub const METRICS_PATH: &str = "/metrics";
/// Time a client has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}; pick another --metrics-listen")]
    BindListener {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
    /// The bound address could not be read back.
    #[error("cannot read the address the metrics listener on {addr} is bound to")]
    ReadBoundAddress {
        /// The address asked for.
        addr: SocketAddr,
        /// Why reading it failed.
        #[source]
        source: io::Error,
    },
}

/// A running metrics listener.
#[derive(Debug)]
pub struct MetricsServer {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `listen` and serves `exporter`'s page in the background.
    pub async fn start(listen: SocketAddr, exporter: Arc<Exporter>) -> Result<Self, MetricsError> {
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| MetricsError::BindListener {
                    addr: listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MetricsError::ReadBoundAddress {
                addr: listen,
                source,
            })?;
        let (shutdown, stopped) = oneshot::channel();
        let span = info_span!("metrics", %addr);
        let task = tokio::spawn(accept_loop(listener, exporter, stopped).instrument(span));
        info!(%addr, path = METRICS_PATH, "serving metrics");
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting scrapes; scrapes in progress finish on their own.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(stream, peer, exporter.clone()));
                }
                Err(error) => {
                    warn!(error = %error, "cannot accept a metrics connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, exporter: Arc<Exporter>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&exporter, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        debug!(%peer, error = %error, "metrics connection ended with an error");
    }
}

/// The page for `GET /metrics`, 405 for other methods there, 404 anywhere else.
fn respond<B>(exporter: &Exporter, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        let text = format!("not found; metrics are at {METRICS_PATH}\n");
        return plain(StatusCode::NOT_FOUND, text);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(exporter.render())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
