//! Typed identities carried in certificates as SPIFFE-style URI SANs.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI scheme of every identity.
pub const SCHEME: &str = "spiffe://";

/// Longest fleet, node, replica or operator name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    Node,
    Manager,
    Operator,
}

/// Operator roles, from the certificate's organizational unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything, including issuing operator bundles.
    Admin,
    /// Day-to-day changes: tokens, node revocation.
    Operator,
    /// Read-only queries.
    Viewer,
    /// Event streams only.
    Alerting,
}

/// Who holds a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub fleet: String,
    pub kind: IdentityKind,
    pub name: String,
    /// Set for operators only.
    pub role: Option<Role>,
}

/// Why a certificate or name does not carry a usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate cannot be parsed")]
    ParseCertificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("certificate carries no `spiffe://` identity")]
    Missing,
    #[error("certificate carries {0} `spiffe://` identities; exactly one is allowed")]
    Several(usize),
    #[error("identity `{0}` is not of the form spiffe://FLEET/(node|manager|operator)/NAME")]
    Malformed(String),
    #[error("operator certificate has no valid role (organizational unit admin|operator|viewer|alerting)")]
    MissingRole,
    #[error("invalid name `{name}`: {rule}")]
    InvalidName { name: String, rule: &'static str },
}

impl Identity {
    /// A node identity.
    pub fn node(fleet: &str, name: &str) -> Self {
        Self {
            fleet: fleet.into(),
            kind: IdentityKind::Node,
            name: name.into(),
            role: None,
        }
    }

    /// A manager replica identity.
    pub fn manager(fleet: &str, replica: &str) -> Self {
        Self {
            fleet: fleet.into(),
            kind: IdentityKind::Manager,
            name: replica.into(),
            role: None,
        }
    }

    /// An operator identity with its role.
    pub fn operator(fleet: &str, name: &str, role: Role) -> Self {
        Self {
            fleet: fleet.into(),
            kind: IdentityKind::Operator,
            name: name.into(),
            role: Some(role),
        }
    }

    /// The URI SAN naming this identity.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.fleet, self.kind.path(), self.name)
    }

    /// Parses a `spiffe://FLEET/KIND/NAME` URI; the role is left unset.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix(SCHEME).ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(fleet), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let kind = IdentityKind::from_path(kind).ok_or_else(malformed)?;
        validate_name(fleet).map_err(|_| malformed())?;
        validate_name(name).map_err(|_| malformed())?;
        Ok(Self {
            fleet: fleet.into(),
            kind,
            name: name.into(),
            role: None,
        })
    }

    /// Reads the identity from a DER certificate that the TLS layer has already verified.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(IdentityError::ParseCertificate)?;
        Self::from_cert(&cert)
    }

    /// Reads the identity from a parsed certificate.
    pub fn from_cert(cert: &X509Certificate<'_>) -> Result<Self, IdentityError> {
        let uris = spiffe_uris(cert);
        let uri = match uris.as_slice() {
            [] => return Err(IdentityError::Missing),
            [one] => *one,
            many => return Err(IdentityError::Several(many.len())),
        };
        let mut identity = Self::parse_uri(uri)?;
        if identity.kind == IdentityKind::Operator {
            let role = cert
                .subject()
                .iter_organizational_unit()
                .filter_map(|ou| ou.as_str().ok())
                .find_map(|ou| ou.parse::<Role>().ok())
                .ok_or(IdentityError::MissingRole)?;
            identity.role = Some(role);
        }
        Ok(identity)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl IdentityKind {
    /// The path segment naming this kind in a URI.
    pub fn path(self) -> &'static str {
        match self {
            IdentityKind::Node => "node",
            IdentityKind::Manager => "manager",
            IdentityKind::Operator => "operator",
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        match path {
            "node" => Some(IdentityKind::Node),
            "manager" => Some(IdentityKind::Manager),
            "operator" => Some(IdentityKind::Operator),
            _ => None,
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Alerting];

    /// The role's name as written in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Alerting => "alerting",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}`; expected admin, operator, viewer or alerting")
            })
    }
}

/// Checks a fleet, node, replica or operator name: a DNS label, lowercase.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let invalid = |rule| {
        Err(IdentityError::InvalidName {
            name: name.to_string(),
            rule,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return invalid("must be 1 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("may hold only lowercase letters, digits and `-`");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("must start and end with a letter or digit");
    }
    Ok(())
}

/// Every `spiffe://` URI SAN of a certificate.
fn spiffe_uris<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    if uri.starts_with(SCHEME) {
                        uris.push(*uri);
                    }
                }
            }
        }
    }
    uris
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_uri_round_trip() {
        let id = Identity::node("prod", "worker-1");
        assert_eq!(id.uri(), "spiffe://prod/node/worker-1");
        assert_eq!(Identity::parse_uri(&id.uri()).unwrap(), id);
    }

    #[test]
    fn rejects_malformed_uris() {
        for bad in [
            "spiffe://prod/node",
            "spiffe://prod/node/a/b",
            "spiffe://prod/admin/x",
            "https://prod/node/x",
            "spiffe://prod/node/UPPER",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn validates_names() {
        assert!(validate_name("node-1").is_ok());
        for bad in ["", "-a", "a-", "a_b", "A", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parses_roles() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
