//! CA pins: `sha256:` of a CA certificate's SubjectPublicKeyInfo, as kubeadm prints them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Prefix of every pin.
pub const PIN_PREFIX: &str = "sha256:";

/// A pin on a CA's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPin([u8; 32]);

/// Why a pin could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("CA pin `{0}` is malformed; expected `sha256:` followed by 64 hex digits")]
    Malformed(String),
    #[error("certificate cannot be parsed to compute its pin")]
    ParseCertificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

impl CaPin {
    /// The pin of a DER certificate.
    pub fn of_cert_der(der: &[u8]) -> Result<Self, PinError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(PinError::ParseCertificate)?;
        Ok(Self(Sha256::digest(cert.public_key().raw).into()))
    }

    /// Whether this pin names the given DER certificate's key.
    pub fn matches(&self, der: &[u8]) -> bool {
        Self::of_cert_der(der).is_ok_and(|pin| pin == *self)
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PIN_PREFIX}{}", data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CaPin {
    type Err = PinError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || PinError::Malformed(s.to_string());
        let hex = s.strip_prefix(PIN_PREFIX).ok_or_else(malformed)?;
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(hex.as_bytes())
            .map_err(|_| malformed())?;
        Ok(Self(bytes.try_into().map_err(|_| malformed())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_pins() {
        let text = format!("sha256:{}", "ab".repeat(32));
        let pin: CaPin = text.parse().unwrap();
        assert_eq!(pin.to_string(), text);
    }

    #[test]
    fn rejects_malformed_pins() {
        for bad in [
            "",
            "sha256:",
            "sha1:abcd",
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert!(bad.parse::<CaPin>().is_err(), "{bad} accepted");
        }
    }
}
