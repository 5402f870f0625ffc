//! gRPC channels to the manager over our own rustls client configuration.
//!
//! tonic's built-in TLS cannot check typed identities or CA pins, so the TLS handshake happens
//! in a custom connector and tonic only sees an established stream.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::{lookup_host, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Port used when an endpoint URL names none.
pub const DEFAULT_PORT: u16 = 7443;
/// Time allowed for TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval of HTTP/2 keep-alive pings, which detect a dead manager on an idle stream.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("manager endpoint `{0}` is not a valid https://HOST:PORT URL")]
    BadEndpoint(String),
    #[error("cannot connect to the manager at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Opens a channel to `endpoint` (`https://HOST[:PORT]`), handshaking with `tls`.
pub async fn connect(endpoint: &str, tls: Arc<ClientConfig>) -> Result<Channel, ChannelError> {
    connect_from(endpoint, tls, None).await
}

/// [`connect`], with the TCP connection bound to the local address `source` when given, so
/// that one client machine can open more connections than one source address has ports.
pub async fn connect_from(
    endpoint: &str,
    tls: Arc<ClientConfig>,
    source: Option<IpAddr>,
) -> Result<Channel, ChannelError> {
    let (host, port) = host_port(endpoint)?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| ChannelError::BadEndpoint(endpoint.to_string()))?;
    let target = Endpoint::from_shared(endpoint.to_string())
        .map_err(|_| ChannelError::BadEndpoint(endpoint.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(move |_: Uri| {
        let tls = TlsConnector::from(tls.clone());
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = open_tcp(host.trim_matches(['[', ']']), port, source).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    target
        .connect_with_connector(connector)
        .await
        .map_err(|source| ChannelError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })
}

/// A TCP connection to `host:port`, from `source` when given (port chosen by the kernel).
async fn open_tcp(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect((host, port)).await;
    };
    let target = lookup_host((host, port))
        .await?
        .find(|addr| addr.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address of the family of source {source}"),
            )
        })?;
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Host and port of an `https://` URL.
pub fn host_port(endpoint: &str) -> Result<(String, u16), ChannelError> {
    let bad = || ChannelError::BadEndpoint(endpoint.to_string());
    let uri: Uri = endpoint.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().ok_or_else(bad)?.to_string();
    Ok((
        host.trim_matches(['[', ']']).to_string(),
        uri.port_u16().unwrap_or(DEFAULT_PORT),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            host_port("https://m.example:9443").unwrap(),
            ("m.example".into(), 9443)
        );
        assert_eq!(
            host_port("https://127.0.0.1").unwrap(),
            ("127.0.0.1".into(), DEFAULT_PORT)
        );
        assert_eq!(
            host_port("https://[::1]:7443").unwrap(),
            ("::1".into(), 7443)
        );
        assert!(host_port("http://m:1").is_err());
        assert!(host_port("m:1").is_err());
    }
}
