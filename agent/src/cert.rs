//! Reading node certificates and checking the ones a manager issues before they are stored:
//! the leaf must name the expected node and carry the node's own public key.

use opi_pki::identity::{Identity, IdentityError};
use opi_pki::tls::{parse_certs, TlsError};
use rcgen::KeyPair;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The facts the agent needs from its own certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafInfo {
    /// The identity the certificate names.
    pub identity: Identity,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The raw public key (the SubjectPublicKeyInfo's bit string).
    pub public_key: Vec<u8>,
}

/// Why a certificate is unusable or not the one expected.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The PEM text holds no readable certificate.
    #[error("the certificate chain cannot be read")]
    ReadChain(#[source] TlsError),
    /// The leaf is not valid DER X.509.
    #[error("the leaf certificate cannot be parsed")]
    ParseLeaf(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// The leaf names no single typed identity.
    #[error("the leaf certificate carries no usable identity")]
    ReadIdentity(#[source] IdentityError),
    /// The leaf names someone else.
    #[error("the certificate names {got}, not {expected}")]
    WrongIdentity {
        /// The identity expected.
        expected: String,
        /// The identity found.
        got: String,
    },
    /// The leaf certifies another key.
    #[error("the certificate for {identity} carries another public key than this node's")]
    WrongKey {
        /// The identity expected.
        identity: String,
    },
}

impl LeafInfo {
    /// Reads the first certificate of a PEM chain.
    pub fn from_chain(chain_pem: &str) -> Result<Self, CertError> {
        let certs = parse_certs(chain_pem, "node certificate").map_err(CertError::ReadChain)?;
        let (_, cert) = X509Certificate::from_der(&certs[0]).map_err(CertError::ParseLeaf)?;
        let identity = Identity::from_cert(&cert).map_err(CertError::ReadIdentity)?;
        let validity = cert.validity();
        Ok(Self {
            identity,
            serial: opi_pki::ca::hex(cert.raw_serial()),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether `key` is the private half of this certificate's public key.
    pub fn matches_key(&self, key: &KeyPair) -> bool {
        self.public_key == key.public_key_raw()
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        self.not_after <= now
    }
}

/// Checks that the leaf of `chain_pem` names `expected` and carries `key`'s public key.
pub fn check_issued(
    chain_pem: &str,
    expected: &Identity,
    key: &KeyPair,
) -> Result<LeafInfo, CertError> {
    let leaf = LeafInfo::from_chain(chain_pem)?;
    if &leaf.identity != expected {
        return Err(CertError::WrongIdentity {
            expected: expected.uri(),
            got: leaf.identity.uri(),
        });
    }
    if !leaf.matches_key(key) {
        return Err(CertError::WrongKey {
            identity: expected.uri(),
        });
    }
    Ok(leaf)
}

/// Test helpers: a fleet CA made in the test, issuing node certificates.
#[cfg(test)]
pub(crate) mod testing {
    use opi_pki::ca::{create_issuing_ca, create_root_ca, CertifiedKey, Issuer};
    use opi_pki::{CaPin, SecretPem};
    use rcgen::KeyPair;
    use std::time::Duration;

    /// A fleet's root and issuing CA.
    pub struct TestFleet {
        pub root: CertifiedKey,
        pub issuer: Issuer,
    }

    impl TestFleet {
        pub fn new(fleet: &str) -> Self {
            let root = create_root_ca(fleet).unwrap();
            let issuing = create_issuing_ca(fleet, "m1", &root).unwrap();
            let issuer = Issuer::new(fleet, &issuing).unwrap();
            Self { root, issuer }
        }

        /// A node certificate chain for `key`.
        pub fn node_chain(&self, name: &str, key: &KeyPair) -> String {
            let ttl = Duration::from_secs(24 * 3600);
            self.issuer.issue_node(name, key, ttl).unwrap().chain_pem
        }

        pub fn pin(&self) -> CaPin {
            let der = opi_pki::tls::parse_certs(&self.root.cert_pem, "root").unwrap();
            CaPin::of_cert_der(&der[0]).unwrap()
        }
    }

    pub fn new_key() -> (KeyPair, SecretPem) {
        let key = opi_pki::ca::generate_key().unwrap();
        let pem = SecretPem::new(key.serialize_pem());
        (key, pem)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn accepts_certificate_for_this_node_and_key() {
        let fleet = TestFleet::new("prod");
        let (key, _) = new_key();
        let chain = fleet.node_chain("worker-1", &key);
        let leaf = check_issued(&chain, &Identity::node("prod", "worker-1"), &key).unwrap();
        assert_eq!(leaf.identity.name, "worker-1");
        assert!(leaf.not_before < leaf.not_after);
        assert_eq!(leaf.serial.len(), 32);
    }

    #[test]
    fn rejects_certificate_for_another_key() {
        let fleet = TestFleet::new("prod");
        let (key, _) = new_key();
        let (other, _) = new_key();
        let chain = fleet.node_chain("worker-1", &other);
        let error = check_issued(&chain, &Identity::node("prod", "worker-1"), &key).unwrap_err();
        assert!(matches!(error, CertError::WrongKey { .. }), "{error}");
    }

    #[test]
    fn rejects_certificate_naming_another_node() {
        let fleet = TestFleet::new("prod");
        let (key, _) = new_key();
        let chain = fleet.node_chain("worker-2", &key);
        let error = check_issued(&chain, &Identity::node("prod", "worker-1"), &key).unwrap_err();
        assert!(matches!(error, CertError::WrongIdentity { .. }), "{error}");
    }

    #[test]
    fn rejects_text_without_certificate() {
        let (key, _) = new_key();
        let error = check_issued("nothing", &Identity::node("p", "n"), &key).unwrap_err();
        assert!(matches!(error, CertError::ReadChain(_)), "{error}");
    }
}
