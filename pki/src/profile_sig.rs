//! Signatures of profile documents by operators' signer keys: plain ECDSA P-256 key pairs,
//! independent of the fleet's TLS CA, so that a manager holding the CA keys still cannot sign
//! a profile the agents accept.

use rcgen::SigningKey;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::SecretPem;

/// Why a signer key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SignerKeyError {
    #[error("{what} holds no usable P-256 private key")]
    PrivateKey {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} holds no PEM public key (`-----BEGIN PUBLIC KEY-----`); make one with `openssl pkey -in KEY -pubout`")]
    PublicKey { what: String },
    #[error("cannot sign with {what}")]
    Sign {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// A signature and the public key (DER SubjectPublicKeyInfo) to check it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentSignature {
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Signs `document` with the private key `key` (PKCS#8 PEM), named `what` in errors.
pub fn sign(
    key: &SecretPem,
    what: &str,
    document: &[u8],
) -> Result<DocumentSignature, SignerKeyError> {
    let pair =
        rcgen::KeyPair::from_pem(key.expose()).map_err(|source| SignerKeyError::PrivateKey {
            what: what.to_string(),
            source,
        })?;
    let signature = pair.sign(document).map_err(|source| SignerKeyError::Sign {
        what: what.to_string(),
        source,
    })?;
    Ok(DocumentSignature {
        public_key: rcgen::PublicKeyData::subject_public_key_info(&pair),
        signature,
    })
}

/// The DER SubjectPublicKeyInfo of a PEM public key, named `what` in errors.
pub fn public_key_der(pem: &str, what: &str) -> Result<Vec<u8>, SignerKeyError> {
    SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|_| SignerKeyError::PublicKey {
            what: what.to_string(),
        })
}

/// Whether `signature` over `document` verifies with `public_key`.
pub fn verifies(public_key: &[u8], document: &[u8], signature: &[u8]) -> bool {
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(public_key) else {
        return false;
    };
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki.subject_public_key.data)
        .verify(document, signature)
        .is_ok()
}

/// `sha256:` and the hex digest of a DER public key: how logs and errors name a signer.
pub fn key_pin(public_key: &[u8]) -> String {
    format!("sha256:{}", crate::ca::hex(&Sha256::digest(public_key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only_and_over_its_document_only() {
        let key = crate::ca::generate_key().unwrap();
        let other = crate::ca::generate_key().unwrap();
        let pem = SecretPem::new(key.serialize_pem());
        let signed = sign(&pem, "alice.key", b"hardening: {}").unwrap();
        let public = public_key_der(&key.public_key_pem(), "alice.pub").unwrap();
        assert_eq!(signed.public_key, public);
        assert!(verifies(&public, b"hardening: {}", &signed.signature));
        assert!(!verifies(&public, b"hardening: {} ", &signed.signature));
        let other = public_key_der(&other.public_key_pem(), "bob.pub").unwrap();
        assert!(!verifies(&other, b"hardening: {}", &signed.signature));
        assert!(public_key_der("nope", "x").is_err());
    }
}
