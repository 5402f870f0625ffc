//! rustls configurations for the fleet: TLS 1.3 only, ring, ALPN `h2`.
//!
//! - The manager's server config asks for a client certificate chaining to the fleet roots but
//!   lets a handshake without one through: only the enrollment call is served to such callers.
//! - Clients (agents, `opictl`) verify the manager with [`ManagerVerifier`]: the chain must reach
//!   a trusted root (or, when enrolling, the root whose key matches the CA pin) and the leaf
//!   must carry a manager identity of the expected fleet.

use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, IdentityError, IdentityKind};
use crate::pin::CaPin;
use crate::{provider, SecretPem};

/// ALPN protocol of gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in the {what} PEM")]
    NoCertificate { what: &'static str },
    #[error("the {what} PEM holds an unreadable certificate")]
    ParseCertificate {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} private key PEM is unreadable")]
    ParseKey {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the trust bundle holds a certificate rustls cannot use as a root")]
    AddRoot(#[source] rustls::Error),
    #[error("cannot build the {what} TLS configuration")]
    Build {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the client-certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
}

/// Why the manager's certificate was refused by a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManagerRefused {
    #[error("no CA in the manager's certificate chain matches the pin {0}; check --ca-pin against the one `opictl token create` printed")]
    PinMismatch(CaPin),
    #[error("the manager's certificate does not chain to the fleet CA: {0}")]
    Chain(String),
    #[error("the server's certificate names {0}, which is not a manager; refusing to talk to it")]
    NotManager(String),
    #[error("the server is a manager of fleet `{got}`, not of fleet `{expected}`")]
    WrongFleet { expected: String, got: String },
    #[error("the server's certificate carries no usable identity: {0}")]
    Identity(String),
}

/// The verified identity and certificate facts of a TLS peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    pub identity: Identity,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl PeerCert {
    /// Reads a verified leaf certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(IdentityError::ParseCertificate)?;
        let identity = Identity::from_cert(&cert)?;
        let serial = crate::ca::hex(cert.raw_serial());
        let not_after = cert.validity().not_after.to_datetime();
        Ok(Self {
            identity,
            serial,
            not_after,
        })
    }
}

/// Parses every certificate of a PEM text.
pub fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::ParseCertificate { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// Parses a PEM private key.
pub fn parse_key(pem: &SecretPem, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
        .map_err(|source| TlsError::ParseKey { what, source })
}

/// A root store holding every certificate of a trust bundle.
pub fn root_store(bundle_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(bundle_pem, "trust bundle")? {
        roots.add(cert).map_err(TlsError::AddRoot)?;
    }
    Ok(roots)
}

/// The manager's server configuration.
///
/// `chain_pem` is the server certificate and its issuing CA; the trust bundle is appended so
/// that an enrolling agent, which knows only a pin, can find the root it pinned.
pub fn server_config(
    chain_pem: &str,
    key: &SecretPem,
    client_auth: Arc<ClientAuth>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut chain = parse_certs(chain_pem, "server certificate")?;
    chain.extend(client_auth.roots_der());
    let build = |source| TlsError::Build {
        what: "server",
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(build)?
        .with_client_cert_verifier(client_auth)
        .with_single_cert(chain, parse_key(key, "server")?)
        .map_err(build)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Client authentication on the manager's port.
///
/// The handshake requires a client that presents a certificate to prove possession of its
/// key, but lets a certificate that does not chain to the fleet roots through, so that the
/// caller can be told precisely why it is refused ("expired at…", "not signed by this fleet")
/// instead of seeing a closed connection. The chain is then checked by [`ClientAuth::verdict`],
/// and only an `Ok` verdict ever yields an identity.
///
/// The trusted roots can be replaced while serving (CA rollover): each verdict uses the roots
/// in force when it is made.
#[derive(Debug)]
pub struct ClientAuth {
    trusted: RwLock<Trusted>,
}

/// The roots a [`ClientAuth`] verifies against, and their verifier.
#[derive(Debug, Clone)]
struct Trusted {
    inner: Arc<dyn ClientCertVerifier>,
    roots_der: Vec<CertificateDer<'static>>,
}

impl Trusted {
    fn of(trust_bundle_pem: &str) -> Result<Self, TlsError> {
        let roots_der = parse_certs(trust_bundle_pem, "trust bundle")?;
        let roots = Arc::new(root_store(trust_bundle_pem)?);
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .allow_unauthenticated()
            .build()
            .map_err(TlsError::ClientVerifier)?;
        Ok(Self { inner, roots_der })
    }
}

impl ClientAuth {
    /// Trusts the roots of `trust_bundle_pem`.
    pub fn new(trust_bundle_pem: &str) -> Result<Arc<Self>, TlsError> {
        let trusted = RwLock::new(Trusted::of(trust_bundle_pem)?);
        Ok(Arc::new(Self { trusted }))
    }

    /// Trusts the roots of `trust_bundle_pem` from now on, instead of the previous ones.
    pub fn set_roots(&self, trust_bundle_pem: &str) -> Result<(), TlsError> {
        let trusted = Trusted::of(trust_bundle_pem)?;
        *self.trusted.write().expect("client auth lock poisoned") = trusted;
        Ok(())
    }

    /// The trusted roots, DER.
    pub fn roots_der(&self) -> Vec<CertificateDer<'static>> {
        self.trusted().roots_der
    }

    fn trusted(&self) -> Trusted {
        self.trusted
            .read()
            .expect("client auth lock poisoned")
            .clone()
    }

    /// Verifies a presented chain (leaf first) and reads its identity, or says why not.
    pub fn verdict(&self, chain: &[CertificateDer<'_>]) -> Result<PeerCert, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("empty certificate chain")?;
        self.trusted()
            .inner
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| describe_refusal(&e))?;
        PeerCert::from_der(leaf).map_err(|e| format!("client certificate refused: {e}"))
    }

    /// Verifies an expired chain as of the leaf's last second of validity: the proof that a
    /// node whose certificate expired while it was offline still holds a key this fleet
    /// certified. `None` when the leaf has not expired or the chain did not verify then.
    /// Only the renewal call may accept what this returns.
    pub fn expired_verdict(&self, chain: &[CertificateDer<'_>]) -> Option<PeerCert> {
        let (leaf, intermediates) = chain.split_first()?;
        let cert = PeerCert::from_der(leaf).ok()?;
        if cert.not_after >= OffsetDateTime::now_utc() {
            return None;
        }
        let last_second = u64::try_from(cert.not_after.unix_timestamp() - 1).ok()?;
        let then = UnixTime::since_unix_epoch(std::time::Duration::from_secs(last_second));
        self.trusted()
            .inner
            .verify_client_cert(leaf, intermediates, then)
            .ok()?;
        Some(cert)
    }
}

impl ClientCertVerifier for ClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the roots may change while serving, and fleet clients present their one
        // certificate whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to `verdict`, which every service consults; see the type's documentation.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trusted()
            .inner
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trusted()
            .inner
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trusted().inner.supported_verify_schemes()
    }
}

/// Words a chain verification failure for the client and the manager's log.
fn describe_refusal(error: &rustls::Error) -> String {
    let hint = match error {
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "it has expired; a node renews before expiry or re-enrolls, an operator asks for a new bundle"
        }
        // A CA with the name of a trusted one but another key (a retired CA after a rollover,
        // or a forgery) fails on its signature.
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "it is not signed by this fleet's CA"
        }
        rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose)
        | rustls::Error::InvalidCertificate(CertificateError::InvalidPurposeContext { .. }) => {
            "it is not a client certificate"
        }
        _ => "it does not verify against the fleet's CA",
    };
    format!("client certificate refused: {hint} ({error})")
}

/// A client configuration verifying the manager with `verifier`, presenting `client` if given.
pub fn client_config(
    verifier: Arc<ManagerVerifier>,
    client: Option<(&str, &SecretPem)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let build = |source| TlsError::Build {
        what: "client",
        source,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(build)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((chain_pem, key)) => builder
            .with_client_auth_cert(
                parse_certs(chain_pem, "client certificate")?,
                parse_key(key, "client")?,
            )
            .map_err(build)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// What a client trusts the manager's chain to.
#[derive(Debug)]
enum Trust {
    /// The fleet trust bundle stored after enrollment.
    Roots(Arc<WebPkiServerVerifier>),
    /// The pin given on the command line, before the node has a trust bundle.
    Pin(CaPin),
}

/// Verifies that the server is a manager of the fleet, and remembers why it was refused.
#[derive(Debug)]
pub struct ManagerVerifier {
    trust: Trust,
    fleet: Option<String>,
    provider: Arc<CryptoProvider>,
    last: Mutex<Option<Result<Identity, ManagerRefused>>>,
}

impl ManagerVerifier {
    /// Trusts the roots of `bundle_pem`, and only managers of `fleet`.
    pub fn with_roots(bundle_pem: &str, fleet: &str) -> Result<Arc<Self>, TlsError> {
        let roots = Arc::new(root_store(bundle_pem)?);
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Build {
                what: "server verifier",
                source: rustls::Error::General(e.to_string()),
            })?;
        Ok(Arc::new(Self::new(
            Trust::Roots(inner),
            Some(fleet.to_string()),
        )))
    }

    /// Trusts the CA of the server's chain whose key matches `pin`.
    pub fn with_pin(pin: CaPin) -> Arc<Self> {
        Arc::new(Self::new(Trust::Pin(pin), None))
    }

    fn new(trust: Trust, fleet: Option<String>) -> Self {
        Self {
            trust,
            fleet,
            provider: provider(),
            last: Mutex::new(None),
        }
    }

    /// The outcome of the last verification: the manager's identity, or why it was refused.
    pub fn last_outcome(&self) -> Option<Result<Identity, ManagerRefused>> {
        self.last.lock().expect("verifier lock poisoned").clone()
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<Identity, ManagerRefused> {
        let chain = |e: rustls::Error| ManagerRefused::Chain(e.to_string());
        match &self.trust {
            Trust::Roots(inner) => {
                inner
                    .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                    .map_err(chain)?;
            }
            Trust::Pin(pin) => {
                let anchor = intermediates
                    .iter()
                    .find(|cert| pin.matches(cert))
                    .ok_or(ManagerRefused::PinMismatch(*pin))?;
                let mut roots = RootCertStore::empty();
                roots.add(anchor.clone().into_owned()).map_err(chain)?;
                let inner = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| ManagerRefused::Chain(e.to_string()))?;
                inner
                    .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                    .map_err(chain)?;
            }
        }
        let identity = Identity::from_cert_der(end_entity)
            .map_err(|e| ManagerRefused::Identity(e.to_string()))?;
        if identity.kind != IdentityKind::Manager {
            return Err(ManagerRefused::NotManager(identity.uri()));
        }
        if let Some(fleet) = &self.fleet {
            if &identity.fleet != fleet {
                return Err(ManagerRefused::WrongFleet {
                    expected: fleet.clone(),
                    got: identity.fleet,
                });
            }
        }
        Ok(identity)
    }
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = self.verify(end_entity, intermediates, server_name, now);
        *self.last.lock().expect("verifier lock poisoned") = Some(outcome.clone());
        match outcome {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(refused) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(refused)),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
