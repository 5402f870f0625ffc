//! OPI Fleet PKI.
//!
//! The fleet root CA signs one issuing CA per manager replica; issuing CAs sign the manager's
//! server certificate, node certificates and operator certificates. Every leaf names its
//! holder with a typed, SPIFFE-style URI SAN (`spiffe://FLEET/node/NAME`,
//! `spiffe://FLEET/manager/REPLICA`, `spiffe://FLEET/operator/NAME`) and matching key usages.
//!
//! Module map:
//! - [`identity`]: typed identities and their parsing from a verified certificate;
//! - [`csr`]: making CSRs on the node, and checking CSRs on the manager;
//! - [`ca`]: creating CAs and issuing certificates (pure: no I/O);
//! - [`pin`]: `sha256:` CA pins;
//! - [`tls`]: rustls server and client configurations, with the identity checks;
//! - [`profile_sig`]: signatures of profiles by operators' signer keys, apart from the CA;
//! - [`serving`]: the manager's server certificate, replaced while serving;
//! - [`bundle`]: the operator bundle that `opictl --config` reads;
//! - [`channel`]: gRPC channels to the manager over those configs;
//! - [`signature`]: detached signatures of documents, verifiable offline with the root CA;
//! - [`chain`]: the audit log's hash chain and its signed checkpoints;
//! - [`files`]: PEM files on disk, secrets written 0600 and atomically.

pub mod bundle;
pub mod ca;
pub mod chain;
pub mod channel;
pub mod csr;
pub mod files;
pub mod identity;
pub mod pin;
pub mod profile_sig;
pub mod serving;
pub mod signature;
pub mod tls;

pub use ca::{CertifiedKey, IssuedCert, Issuer};
pub use identity::{Identity, IdentityKind, Role};
pub use pin::CaPin;

/// A PEM-encoded private key whose `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps a PEM-encoded private key.
    pub fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM text; callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// `sha256:` and the hex digest of a trust bundle's PEM text: how manager and agents name
/// the bundle an agent stored.
pub fn bundle_digest(pem: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", ca::hex(&sha2::Sha256::digest(pem.as_bytes())))
}

/// The process-wide crypto provider: ring, as everywhere in the fleet.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_pem_debug_hides_key() {
        let secret = SecretPem::new("-----BEGIN PRIVATE KEY-----\nabc\n".into());
        let shown = format!("{secret:?}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
