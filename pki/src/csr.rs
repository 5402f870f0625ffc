//! CSRs: made on the node with a key that never leaves it, checked on the manager.
//!
//! The manager uses only the CSR's public key, but still refuses CSRs that ask for more than a
//! node may have (a CA, or another identity), so that a confused or hostile client learns why.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SubjectPublicKeyInfo};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use crate::identity::{Identity, IdentityKind};

/// Largest CSR accepted, in bytes; a P-256 CSR is about 300.
pub const MAX_CSR_LEN: usize = 4096;

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is empty")]
    Empty,
    #[error("CSR is {0} bytes, more than the {MAX_CSR_LEN} allowed")]
    TooLarge(usize),
    #[error("CSR is not a valid DER PKCS#10 request")]
    Parse,
    #[error("CSR signature does not verify: the request was not signed by its own key")]
    BadSignature,
    #[error("CSR key is {0}; only ECDSA P-256 keys are accepted")]
    UnsupportedKey(String),
    #[error("CSR asks for a CA certificate; nodes and operators get leaf certificates only")]
    AsksForCa,
    #[error("CSR names `{0}`, which is not the caller; nobody can ask for another identity")]
    ForeignIdentity(String),
    #[error("cannot build the CSR")]
    Build(#[source] rcgen::Error),
}

/// A CSR whose signature, key type and requests were checked.
#[derive(Debug)]
pub struct CheckedCsr {
    /// The requested public key, ready for signing.
    pub public_key: SubjectPublicKeyInfo,
    /// DER SubjectPublicKeyInfo, used to recognise a retried request.
    pub spki_der: Vec<u8>,
}

/// Builds a DER CSR for a node's key. Only the key matters to the manager.
pub fn make_node_csr(key: &KeyPair, name: &str) -> Result<Vec<u8>, CsrError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(key).map_err(CsrError::Build)?;
    Ok(csr.der().to_vec())
}

/// Checks a CSR sent by node `node` (or a node to be, named `node`) of `fleet`.
pub fn check_node_csr(der: &[u8], fleet: &str, node: &str) -> Result<CheckedCsr, CsrError> {
    check_csr(der, fleet, IdentityKind::Node, node)
}

/// Checks a CSR sent by operator `name` of `fleet` logging in (`opictl login`).
pub fn check_operator_csr(der: &[u8], fleet: &str, name: &str) -> Result<CheckedCsr, CsrError> {
    check_csr(der, fleet, IdentityKind::Operator, name)
}

fn check_csr(
    der: &[u8],
    fleet: &str,
    kind: IdentityKind,
    name: &str,
) -> Result<CheckedCsr, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge(der.len()));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Parse)?;
    if !rest.is_empty() {
        return Err(CsrError::Parse);
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let spki = &csr.certification_request_info.subject_pki;
    check_p256(spki)?;
    check_requests(&csr, fleet, kind, name)?;

    let spki_der = spki.raw.to_vec();
    let public_key = SubjectPublicKeyInfo::from_der(&spki_der)
        .map_err(|_| CsrError::UnsupportedKey("not usable for signing".into()))?;
    Ok(CheckedCsr {
        public_key,
        spki_der,
    })
}

fn check_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    let alg = &spki.algorithm;
    if alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::UnsupportedKey(describe_key(spki)));
    }
    let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrError::UnsupportedKey(describe_key(spki)));
    }
    Ok(())
}

fn describe_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA-{}", rsa.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => format!("EC ({} bits)", ec.key_size()),
        _ => format!("of algorithm {}", spki.algorithm.algorithm),
    }
}

/// Refuses requested extensions that ask for a CA or for another identity.
fn check_requests(
    csr: &X509CertificationRequest<'_>,
    fleet: &str,
    kind: IdentityKind,
    name: &str,
) -> Result<(), CsrError> {
    let Some(extensions) = csr.requested_extensions() else {
        return Ok(());
    };
    for ext in extensions {
        match ext {
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::AsksForCa),
            ParsedExtension::SubjectAlternativeName(san) => {
                for general in &san.general_names {
                    check_requested_name(general, fleet, kind, name)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_requested_name(
    general: &GeneralName<'_>,
    fleet: &str,
    kind: IdentityKind,
    name: &str,
) -> Result<(), CsrError> {
    let GeneralName::URI(uri) = general else {
        return Ok(());
    };
    match Identity::parse_uri(uri) {
        Ok(id) if id.kind == kind && id.fleet == fleet && id.name == name => Ok(()),
        _ => Err(CsrError::ForeignIdentity(uri.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa, SanType};

    fn csr_with(params: CertificateParams, key: &KeyPair) -> Vec<u8> {
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn accepts_plain_p256_csr() {
        let key = crate::ca::generate_key().unwrap();
        let der = make_node_csr(&key, "n1").unwrap();
        let checked = check_node_csr(&der, "f", "n1").unwrap();
        assert!(!checked.spki_der.is_empty());
    }

    #[test]
    fn rejects_garbage_and_empty_csrs() {
        assert!(matches!(
            check_node_csr(b"", "f", "n"),
            Err(CsrError::Empty)
        ));
        assert!(matches!(
            check_node_csr(b"garbage", "f", "n"),
            Err(CsrError::Parse)
        ));
        assert!(matches!(
            check_node_csr(&[0u8; 5000], "f", "n"),
            Err(CsrError::TooLarge(5000))
        ));
    }

    #[test]
    fn rejects_non_p256_keys() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = make_node_csr(&key, "n1").unwrap();
        let err = check_node_csr(&der, "f", "n1").unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err}");
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = make_node_csr(&key, "n1").unwrap();
        assert!(matches!(
            check_node_csr(&der, "f", "n1"),
            Err(CsrError::UnsupportedKey(_))
        ));
    }

    #[test]
    fn rejects_csr_asking_for_ca() {
        let key = crate::ca::generate_key().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let err = check_node_csr(&csr_with(params, &key), "f", "n1").unwrap_err();
        assert!(matches!(err, CsrError::AsksForCa), "{err}");
    }

    #[test]
    fn rejects_csr_naming_manager_or_other_node() {
        let key = crate::ca::generate_key().unwrap();
        for uri in [
            "spiffe://f/manager/m1",
            "spiffe://f/node/other",
            "spiffe://g/node/n1",
        ] {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
            let err = check_node_csr(&csr_with(params, &key), "f", "n1").unwrap_err();
            assert!(matches!(err, CsrError::ForeignIdentity(_)), "{uri}: {err}");
        }
    }

    #[test]
    fn rejects_csr_with_forged_signature() {
        let key = crate::ca::generate_key().unwrap();
        let mut der = make_node_csr(&key, "n1").unwrap();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert!(matches!(
            check_node_csr(&der, "f", "n1"),
            Err(CsrError::BadSignature | CsrError::Parse)
        ));
    }
}
