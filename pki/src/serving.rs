//! The manager's serving certificate, replaceable while the server runs, the facts the
//! manager watches on its own certificates (names, validity), and the socket it listens on.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpSocket};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::tls::{parse_certs, parse_key, ClientAuth, TlsError, ALPN_H2};
use crate::{provider, SecretPem};

/// Connections the kernel holds for a server before it accepts them (capped by
/// `net.core.somaxconn`, 4096 by default). The manager binds before its fleet loads, and a
/// fleet coming back after a restart arrives meanwhile: with tokio's 1024 the queue
/// overflowed, and the kernel's retransmissions (after 1, 3, 7, 15 s...) held agents back.
pub const LISTEN_BACKLOG: u32 = 4096;

/// TLS handshakes a server runs at once; further connections wait in the kernel's queue.
/// With 1,024, a reconnecting fleet's handshakes queued every other task of the manager,
/// etcd calls included, for 0.3-2 s.
pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 128;

/// Listens on `addr` with a [`LISTEN_BACKLOG`]; within a tokio runtime.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a certificate says about its subject and validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject's common name.
    pub subject: String,
    /// DNS names and IP addresses of its subject alternative names.
    pub host_names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertFacts {
    /// Reads the first certificate of a PEM text.
    pub fn of_pem(pem: &str, what: &'static str) -> Result<Self, TlsError> {
        let der = parse_certs(pem, what)?.remove(0);
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|_| TlsError::NoCertificate { what })?;
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut host_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => host_names.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => host_names.extend(ip_text(bytes)),
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            subject,
            host_names,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
        })
    }

    /// Whether less than `fraction` of the lifetime is left at `now`.
    pub fn past(&self, fraction_left: f64, now: OffsetDateTime) -> bool {
        let lifetime = self.not_after - self.not_before;
        self.not_after - now < lifetime * fraction_left
    }
}

/// The server certificate rustls presents, swapped in place when the manager renews it.
///
/// The fleet's roots are appended to every chain, so that an enrolling agent finds the root it
/// pinned; they follow the `ClientAuth` the server verifies clients with.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Serving>,
    client_auth: Arc<ClientAuth>,
}

#[derive(Debug)]
struct Serving {
    chain_pem: String,
    key: SecretPem,
    certified: Arc<CertifiedKey>,
}

impl ServingCert {
    /// Serves `chain_pem` (leaf, issuing CA) with `key`, followed by `client_auth`'s roots.
    pub fn new(
        chain_pem: &str,
        key: &SecretPem,
        client_auth: Arc<ClientAuth>,
    ) -> Result<Arc<Self>, TlsError> {
        let certified = certified(chain_pem, key, &client_auth.roots_der())?;
        let current = RwLock::new(Serving {
            chain_pem: chain_pem.to_string(),
            key: key.clone(),
            certified,
        });
        Ok(Arc::new(Self {
            current,
            client_auth,
        }))
    }

    /// Serves `chain_pem` with `key` from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key: &SecretPem) -> Result<(), TlsError> {
        let certified = certified(chain_pem, key, &self.client_auth.roots_der())?;
        *self.current.write().expect("serving cert lock poisoned") = Serving {
            chain_pem: chain_pem.to_string(),
            key: key.clone(),
            certified,
        };
        Ok(())
    }

    /// The client verifier whose roots follow every chain served.
    pub fn client_auth(&self) -> &Arc<ClientAuth> {
        &self.client_auth
    }

    /// Serves the same certificate followed by the roots now trusted.
    pub fn refresh_roots(&self) -> Result<(), TlsError> {
        let mut current = self.current.write().expect("serving cert lock poisoned");
        current.certified = certified(
            &current.chain_pem,
            &current.key,
            &self.client_auth.roots_der(),
        )?;
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .expect("serving cert lock poisoned")
                .certified
                .clone(),
        )
    }
}

/// The manager's server configuration, presenting whatever `serving` holds at each handshake.
pub fn swappable_server_config(
    serving: Arc<ServingCert>,
    client_auth: Arc<ClientAuth>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let build = |source| TlsError::Build {
        what: "server",
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(build)?
        .with_client_cert_verifier(client_auth)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn certified(
    chain_pem: &str,
    key: &SecretPem,
    roots_der: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let mut chain = parse_certs(chain_pem, "server certificate")?;
    chain.extend(roots_der.iter().cloned());
    let key = parse_key(key, "server")?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Build {
            what: "server",
            source,
        })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn server_certificate_facts_list_its_host_names_and_validity() {
        let root = crate::ca::create_root_ca("f").unwrap();
        let issuing = crate::ca::create_issuing_ca("f", "m", &root).unwrap();
        let issuer = crate::Issuer::new("f", &issuing).unwrap();
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let (cert, _) = issuer
            .issue_server("m", &names, Duration::from_secs(3000))
            .unwrap();
        let facts = CertFacts::of_pem(&cert.chain_pem, "server").unwrap();
        assert_eq!(facts.host_names, names);
        assert_eq!(
            facts.not_after,
            cert.not_after.replace_nanosecond(0).unwrap()
        );
        assert!(!facts.past(1.0 / 3.0, OffsetDateTime::now_utc()));
        assert!(facts.past(1.0 / 3.0, cert.not_after - time::Duration::seconds(900)));
    }
}
