//! Creating the fleet CAs and issuing certificates. Pure: keys and certificates in, PEM out.
//!
//! Leaf certificates take nothing from a CSR but its public key: subject, names, usages,
//! validity and serial are all set here.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::{Identity, Role};
use crate::SecretPem;

/// Lifetime of the fleet root CA.
pub const ROOT_CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a manager replica's issuing CA.
pub const ISSUING_CA_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Lifetime of a manager's server certificate.
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a node certificate.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of a document signer's certificate: it signs one report at once, and verifiers
/// check it was valid when the report says it was made.
pub const SIGNER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of an operator certificate.
pub const DEFAULT_OPERATOR_TTL: Duration = Duration::from_secs(8 * 3600);
/// Backdating of `notBefore`, to absorb clock skew between manager and node (at most a tenth
/// of the certificate's lifetime).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why a key or certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot generate a P-256 key pair")]
    GenerateKey(#[source] rcgen::Error),
    #[error("cannot load the {what} private key")]
    LoadKey {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot load the {what} certificate")]
    LoadCert {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot sign the certificate for {subject}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid subject alternative name `{0}`")]
    InvalidSan(String),
    #[error("{what} validity is out of range")]
    Validity { what: String },
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: SecretPem,
}

/// A freshly issued leaf certificate.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The leaf, PEM.
    pub cert_pem: String,
    /// The leaf followed by the issuing CA, PEM: what a TLS peer presents.
    pub chain_pem: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// An issuing CA able to sign leaves, with the root it chains to.
pub struct Issuer {
    fleet: String,
    ca_cert_pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

/// Generates a fresh ECDSA P-256 key pair.
pub fn generate_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::GenerateKey)
}

/// Creates the self-signed fleet root CA.
pub fn create_root_ca(fleet: &str) -> Result<CertifiedKey, CaError> {
    let key = generate_key()?;
    let mut params = ca_params(format!("OPI Fleet root CA {fleet}"), ROOT_CA_TTL, 1)?;
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{fleet}"))?];
    let cert = params.self_signed(&key).map_err(|source| CaError::Sign {
        subject: format!("root CA of {fleet}"),
        source,
    })?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: SecretPem::new(key.serialize_pem()),
    })
}

/// Creates a replica's issuing CA, signed by the root.
pub fn create_issuing_ca(
    fleet: &str,
    replica: &str,
    root: &CertifiedKey,
) -> Result<CertifiedKey, CaError> {
    let root_key = load_key("root CA", &root.key_pem)?;
    let root_issuer =
        rcgen::Issuer::from_ca_cert_pem(&root.cert_pem, root_key).map_err(|source| {
            CaError::LoadCert {
                what: "root CA",
                source,
            }
        })?;
    let key = generate_key()?;
    let mut params = ca_params(
        format!("OPI Fleet issuing CA {fleet}/{replica}"),
        ISSUING_CA_TTL,
        0,
    )?;
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{fleet}"))?];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &root_issuer)
        .map_err(|source| CaError::Sign {
            subject: format!("issuing CA {fleet}/{replica}"),
            source,
        })?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: SecretPem::new(key.serialize_pem()),
    })
}

impl Issuer {
    /// Loads an issuing CA from its PEM certificate and key.
    pub fn new(fleet: &str, ca: &CertifiedKey) -> Result<Self, CaError> {
        let signing_key = load_key("issuing CA", &ca.key_pem)?;
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, signing_key).map_err(|source| {
                CaError::LoadCert {
                    what: "issuing CA",
                    source,
                }
            })?;
        Ok(Self {
            fleet: fleet.into(),
            ca_cert_pem: ca.cert_pem.clone(),
            issuer,
        })
    }

    /// The fleet this CA issues for.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// The issuing CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Issues a node client certificate for `public_key`.
    pub fn issue_node(
        &self,
        name: &str,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let identity = Identity::node(&self.fleet, name);
        let mut params = leaf_params(&identity, ttl)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&identity, params, public_key)
    }

    /// Issues an operator client certificate with a fresh key.
    pub fn issue_operator(
        &self,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(IssuedCert, SecretPem), CaError> {
        let identity = Identity::operator(&self.fleet, name, role);
        let mut params = leaf_params(&identity, ttl)?;
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = generate_key()?;
        let issued = self.sign(&identity, params, &key)?;
        Ok((issued, SecretPem::new(key.serialize_pem())))
    }

    /// Issues an operator client certificate for `public_key`, made by the operator
    /// (`opictl login`); the key never reaches the manager.
    pub fn issue_operator_for(
        &self,
        name: &str,
        role: Role,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let identity = Identity::operator(&self.fleet, name, role);
        let mut params = leaf_params(&identity, ttl)?;
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&identity, params, public_key)
    }

    /// Issues the manager replica's server certificate with a fresh key.
    ///
    /// `names` are host names or IP addresses the manager answers on.
    pub fn issue_server(
        &self,
        replica: &str,
        names: &[String],
        ttl: Duration,
    ) -> Result<(IssuedCert, SecretPem), CaError> {
        let identity = Identity::manager(&self.fleet, replica);
        let mut params = leaf_params(&identity, ttl)?;
        for name in names {
            params.subject_alt_names.push(host_san(name)?);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = generate_key()?;
        let issued = self.sign(&identity, params, &key)?;
        Ok((issued, SecretPem::new(key.serialize_pem())))
    }

    /// Issues, with a fresh key, a certificate for the manager replica to sign documents
    /// (compliance reports): key usages digital signature and content commitment, no extended
    /// key usage, so that it can serve neither TLS side.
    pub fn issue_signer(
        &self,
        replica: &str,
        ttl: Duration,
    ) -> Result<(IssuedCert, SecretPem), CaError> {
        let identity = Identity::manager(&self.fleet, replica);
        let mut params = leaf_params(&identity, ttl)?;
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "document signer");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        let key = generate_key()?;
        let issued = self.sign(&identity, params, &key)?;
        Ok((issued, SecretPem::new(key.serialize_pem())))
    }

    fn sign(
        &self,
        identity: &Identity,
        params: CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, CaError> {
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|source| CaError::Sign {
                subject: identity.uri(),
                source,
            })?;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex(&s.to_bytes()))
            .unwrap_or_default();
        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}", self.ca_cert_pem);
        Ok(IssuedCert {
            cert_pem,
            chain_pem,
            serial,
            not_after: params.not_after,
        })
    }
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn load_key(what: &'static str, pem: &SecretPem) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(pem.expose()).map_err(|source| CaError::LoadKey { what, source })
}

fn ca_params(
    common_name: String,
    ttl: Duration,
    path_len: u8,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "OPI Fleet");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.clone());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, ttl, &common_name)?;
    Ok(params)
}

fn leaf_params(identity: &Identity, ttl: Duration) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::OrganizationName,
        format!("OPI Fleet {}", identity.fleet),
    );
    params
        .distinguished_name
        .push(DnType::CommonName, identity.name.clone());
    params.subject_alt_names = vec![uri_san(&identity.uri())?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, ttl, &identity.uri())?;
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, ttl: Duration, what: &str) -> Result<(), CaError> {
    let now = OffsetDateTime::now_utc();
    let out_of_range = || CaError::Validity {
        what: what.to_string(),
    };
    // Backdate by at most a tenth of the lifetime: a short-lived certificate must not spend
    // most of its life before it was issued, or renewal at 60-80 % would fall in the past.
    let backdate = CLOCK_SKEW.min(ttl / 10);
    params.not_before = now
        .checked_sub(backdate.try_into().map_err(|_| out_of_range())?)
        .ok_or_else(out_of_range)?;
    params.not_after = now
        .checked_add(ttl.try_into().map_err(|_| out_of_range())?)
        .ok_or_else(out_of_range)?;
    Ok(())
}

/// 128 random bits, top bit clear so the DER integer stays positive and 16 bytes long.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    let uri = uri
        .to_string()
        .try_into()
        .map_err(|_| CaError::InvalidSan(uri.to_string()))?;
    Ok(SanType::URI(uri))
}

fn host_san(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .to_string()
        .try_into()
        .map_err(|_| CaError::InvalidSan(name.to_string()))?;
    Ok(SanType::DnsName(dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(ttl: Duration) -> IssuedCert {
        let root = create_root_ca("f").unwrap();
        let issuing = create_issuing_ca("f", "m", &root).unwrap();
        let issuer = Issuer::new("f", &issuing).unwrap();
        issuer
            .issue_node("n1", &generate_key().unwrap(), ttl)
            .unwrap()
    }

    fn lifetime(cert: &IssuedCert) -> Duration {
        let der = crate::tls::parse_certs(&cert.cert_pem, "leaf").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        let validity = parsed.validity();
        let seconds = validity.not_after.timestamp() - validity.not_before.timestamp();
        Duration::from_secs(seconds as u64)
    }

    #[test]
    fn long_lived_certificates_are_backdated_by_the_clock_skew() {
        let ttl = Duration::from_secs(24 * 3600);
        assert_eq!(lifetime(&issue(ttl)), ttl + CLOCK_SKEW);
    }

    #[test]
    fn short_lived_certificates_are_backdated_by_a_tenth_of_their_life_at_most() {
        let ttl = Duration::from_secs(10);
        assert_eq!(lifetime(&issue(ttl)), ttl + Duration::from_secs(1));
    }
}
