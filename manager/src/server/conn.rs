//! Accepting TLS connections ourselves, so that tonic sees each connection's verified client
//! certificate (parsed once per connection) and remote address.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use opi_pki::serving::MAX_HANDSHAKES_IN_FLIGHT;
use opi_pki::tls::{ClientAuth, PeerCert};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// Time a client has to complete the TLS handshake, unless `serve --handshake-timeout` says.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The client certificate, if one was presented: its verified identity, or why it was
    /// refused. Only an `Ok` here ever identifies a caller.
    pub cert: Option<Arc<Result<PeerCert, String>>>,
    /// When `cert` was refused because it expired: the certificate, if its chain verified as
    /// of its last valid second. Only the renewal call may accept it, within a window.
    pub expired: Option<Arc<PeerCert>>,
}

/// A TLS connection with its peer information.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

/// Accepts connections on `listener`, handshakes them, and sends the established ones.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    acceptor: TlsAcceptor,
    client_auth: Arc<ClientAuth>,
    established: mpsc::Sender<Result<TlsConn, io::Error>>,
    handshake_timeout: Duration,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT));
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            // The listener was closed (`Listeners::close`): shutting down.
            Err(error) if error.kind() == io::ErrorKind::InvalidInput => return,
            Err(error) => {
                warn!(error = %error, "cannot accept connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let client_auth = client_auth.clone();
        let sender = established.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let shaken = handshake(acceptor, &client_auth, tcp, remote, handshake_timeout).await;
            if let Some(conn) = shaken {
                let _ = sender.send(Ok(conn)).await;
            }
        });
        if established.is_closed() {
            return;
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    client_auth: &ClientAuth,
    tcp: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<TlsConn> {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            log_handshake_failure(remote, &error);
            return None;
        }
        Err(_) => {
            debug!(%remote, ?timeout, "TLS handshake timed out; connection dropped");
            return None;
        }
    };
    let mut expired = None;
    let cert = stream.get_ref().1.peer_certificates().map(|chain| {
        let verdict = client_auth.verdict(chain);
        if verdict.is_err() {
            expired = client_auth.expired_verdict(chain).map(Arc::new);
        }
        match (&verdict, &expired) {
            (Err(_), Some(cert)) => {
                debug!(%remote, identity = %cert.identity.uri(), not_after = %cert.not_after, "expired client certificate: only renewal may accept it");
            }
            (Err(why), None) => warn!(%remote, reason = %why, "TLS client certificate refused"),
            (Ok(_), _) => {}
        }
        Arc::new(verdict)
    });
    Some(TlsConn {
        stream,
        peer: PeerInfo {
            remote,
            cert,
            expired,
        },
    })
}

/// Certificate problems are worth an operator's look; plain disconnects are not.
fn log_handshake_failure(remote: SocketAddr, error: &io::Error) {
    let text = error.to_string();
    if text.contains("certificate") || text.contains("Certificate") {
        warn!(%remote, error = %text, "TLS handshake refused: bad client certificate");
    } else {
        debug!(%remote, error = %text, "TLS handshake failed");
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
