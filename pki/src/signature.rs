//! Detached signatures of documents, such as compliance reports: ECDSA P-256 with SHA-256,
//! DER-encoded (what `openssl dgst -sha256 -sign` writes and `-verify` reads), by a manager's
//! document signer certificate ([`crate::Issuer::issue_signer`]), which chains to the fleet
//! root CA through the replica's issuing CA. Anyone holding the root CA verifies offline.
//!
//! Verification checks, in order: the chain (signer, then issuing CA) against the roots, each
//! certificate valid at the time the document says it was made, the signer a manager of the
//! fleet with the content commitment key usage, then the signature over the exact bytes.

use rcgen::{KeyPair, SigningKey};
use sha2::Digest;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::identity::{Identity, IdentityKind};
use crate::SecretPem;

/// Why a document cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The signer's key cannot be loaded.
    #[error("cannot load the document signer's key")]
    LoadKey(#[source] rcgen::Error),
    /// Signing failed.
    #[error("cannot sign the document")]
    Sign(#[source] rcgen::Error),
}

/// Why a signature does not verify; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A PEM input holds no certificate or a broken one.
    #[error("cannot read the {what}: {why}")]
    ReadCertificates {
        /// `signer chain` or `root CA`.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The chain does not lead to one of the roots.
    #[error("the signer's chain does not lead to the fleet root CA given: {0}")]
    Untrusted(String),
    /// A certificate of the chain was not valid when the document was made.
    #[error("{what} was not valid at {at} (valid from {not_before} to {not_after})")]
    NotValidThen {
        /// Which certificate.
        what: String,
        /// The time checked.
        at: String,
        /// Its validity.
        not_before: String,
        /// Its validity.
        not_after: String,
    },
    /// The signer is not a document signer of a manager of the fleet.
    #[error("the signer {0} is not a manager's document signer")]
    NotASigner(String),
    /// The signature is not over these bytes by this key.
    #[error("the signature does not match the document: it was changed, or signed by another key")]
    BadSignature,
}

/// Who signed a verified document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The manager replica.
    pub identity: Identity,
    /// The signer certificate's serial, lowercase hex.
    pub serial: String,
    /// The issuing CA's subject.
    pub issuer: String,
    /// The pin (`sha256:` of the public key) of the root CA the chain led to.
    pub root_pin: String,
}

/// Signs `document` with the signer key `key_pem`.
pub fn sign(key_pem: &SecretPem, document: &[u8]) -> Result<Vec<u8>, SignError> {
    let key = KeyPair::from_pem(key_pem.expose()).map_err(SignError::LoadKey)?;
    key.sign(document).map_err(SignError::Sign)
}

/// Verifies `signature` over `document` by the signer whose chain is `chain_pem` (signer then
/// issuing CA), trusting only the roots of `roots_pem`, with every certificate valid at `at`
/// (when the document was made).
///
/// Shortcoming: there is no trusted timestamp, so `at` is the time the document states.
pub fn verify(
    document: &[u8],
    signature: &[u8],
    chain_pem: &str,
    roots_pem: &str,
    at: impl Into<OffsetDateTime>,
) -> Result<Signer, VerifyError> {
    let at = at.into();
    let chain = ders(chain_pem, "signer chain")?;
    let roots = ders(roots_pem, "root CA")?;
    let chain = parse_all(&chain, "signer chain")?;
    let roots = parse_all(&roots, "root CA")?;
    let [signer, issuing, ..] = chain.as_slice() else {
        return Err(VerifyError::ReadCertificates {
            what: "signer chain",
            why: "it must hold the signer certificate then the issuing CA".to_string(),
        });
    };

    signed_by(signer, issuing, "the signer certificate")?;
    if !issuing.is_ca() {
        return Err(VerifyError::Untrusted(
            "the second certificate is no CA".into(),
        ));
    }
    let root = roots
        .iter()
        .find(|root| issuing.verify_signature(Some(root.public_key())).is_ok())
        .ok_or_else(|| {
            VerifyError::Untrusted(format!(
                "no root given signed the issuing CA {}",
                issuing.subject()
            ))
        })?;
    for (what, cert) in [
        ("the signer certificate", signer),
        ("the issuing CA", issuing),
    ] {
        valid_at(cert, what, at)?;
    }
    valid_at(root, "the root CA", at)?;

    let identity = Identity::from_cert(signer)
        .map_err(|e| VerifyError::NotASigner(format!("without a fleet identity ({e})")))?;
    let commits = signer
        .key_usage()
        .ok()
        .flatten()
        .is_some_and(|usage| usage.value.non_repudiation());
    if identity.kind != IdentityKind::Manager || !commits {
        return Err(VerifyError::NotASigner(identity.uri()));
    }

    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &signer.public_key().subject_public_key.data,
    );
    key.verify(document, signature)
        .map_err(|_| VerifyError::BadSignature)?;
    let root_pin = format!(
        "sha256:{}",
        crate::ca::hex(&sha2::Sha256::digest(root.public_key().raw))
    );
    Ok(Signer {
        identity,
        serial: crate::ca::hex(signer.raw_serial()),
        issuer: issuing.subject().to_string(),
        root_pin,
    })
}

fn ders(pem: &str, what: &'static str) -> Result<Vec<Vec<u8>>, VerifyError> {
    crate::tls::parse_certs(pem, what)
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .map_err(|e| VerifyError::ReadCertificates {
            what,
            why: e.to_string(),
        })
}

fn parse_all<'a>(
    ders: &'a [Vec<u8>],
    what: &'static str,
) -> Result<Vec<X509Certificate<'a>>, VerifyError> {
    ders.iter()
        .map(|der| {
            X509Certificate::from_der(der)
                .map(|(_, cert)| cert)
                .map_err(|e| VerifyError::ReadCertificates {
                    what,
                    why: e.to_string(),
                })
        })
        .collect()
}

fn signed_by(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    what: &str,
) -> Result<(), VerifyError> {
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|_| {
            VerifyError::Untrusted(format!("{what} was not signed by {}", issuer.subject()))
        })
}

fn valid_at(cert: &X509Certificate<'_>, what: &str, at: OffsetDateTime) -> Result<(), VerifyError> {
    let validity = cert.validity();
    let (from, to) = (
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    );
    if at >= from && at <= to {
        return Ok(());
    }
    let format = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Err(VerifyError::NotValidThen {
        what: what.to_string(),
        at: format(at),
        not_before: format(from),
        not_after: format(to),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{create_issuing_ca, create_root_ca, SIGNER_CERT_TTL};
    use crate::Issuer;
    use std::time::Duration;

    struct Fleet {
        root_pem: String,
        issuer: Issuer,
    }

    fn new_fleet(name: &str) -> Fleet {
        let root = create_root_ca(name).unwrap();
        let issuing = create_issuing_ca(name, "m1", &root).unwrap();
        Fleet {
            root_pem: root.cert_pem,
            issuer: Issuer::new(name, &issuing).unwrap(),
        }
    }

    #[test]
    fn a_signed_document_verifies_with_the_root_and_names_the_manager() {
        let fleet = new_fleet("prod");
        let (cert, key) = fleet.issuer.issue_signer("m1", SIGNER_CERT_TTL).unwrap();
        let document = br#"{"report": 1}"#;
        let signature = sign(&key, document).unwrap();
        let now = OffsetDateTime::now_utc();
        let signer = verify(document, &signature, &cert.chain_pem, &fleet.root_pem, now).unwrap();
        assert_eq!(signer.identity.uri(), "spiffe://prod/manager/m1");
    }

    #[test]
    fn a_changed_byte_another_root_or_a_tls_certificate_is_refused() {
        let fleet = new_fleet("prod");
        let (cert, key) = fleet.issuer.issue_signer("m1", SIGNER_CERT_TTL).unwrap();
        let now = OffsetDateTime::now_utc();
        let signature = sign(&key, b"pass").unwrap();
        let changed = verify(b"fail", &signature, &cert.chain_pem, &fleet.root_pem, now);
        assert!(
            matches!(changed, Err(VerifyError::BadSignature)),
            "{changed:?}"
        );

        let other = new_fleet("prod");
        let foreign = verify(b"pass", &signature, &cert.chain_pem, &other.root_pem, now);
        assert!(
            matches!(foreign, Err(VerifyError::Untrusted(_))),
            "{foreign:?}"
        );

        let (server, server_key) = fleet
            .issuer
            .issue_server("m1", &["localhost".to_string()], Duration::from_secs(3600))
            .unwrap();
        let by_server = sign(&server_key, b"pass").unwrap();
        let refused = verify(b"pass", &by_server, &server.chain_pem, &fleet.root_pem, now);
        assert!(
            matches!(refused, Err(VerifyError::NotASigner(_))),
            "{refused:?}"
        );

        let later = now + Duration::from_secs(2 * 24 * 3600);
        let expired = verify(b"pass", &signature, &cert.chain_pem, &fleet.root_pem, later);
        assert!(
            matches!(expired, Err(VerifyError::NotValidThen { .. })),
            "{expired:?}"
        );
    }
}
