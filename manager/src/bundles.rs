//! Operator bundles: a certificate with a role, its key and where to reach the manager.

use std::time::Duration;

use opi_pki::bundle::OperatorBundle;
use opi_pki::ca::CaError;
use opi_pki::{Issuer, Role};

/// Longest operator certificate lifetime accepted.
pub const MAX_OPERATOR_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why a bundle was not issued.
#[derive(Debug, thiserror::Error)]
pub enum BundleIssueError {
    #[error("invalid operator name: {0}")]
    Name(#[source] opi_pki::identity::IdentityError),
    #[error("operator certificate lifetime {asked} is longer than the {max} allowed; ask for less with --ttl")]
    TtlTooLong { asked: String, max: String },
    #[error("cannot issue the operator certificate for {name}")]
    Issue {
        name: String,
        #[source]
        source: CaError,
    },
}

/// Issues a bundle for operator `name` with `role`, valid for `ttl`.
pub fn issue(
    issuer: &Issuer,
    trust_bundle_pem: &str,
    endpoint: &str,
    name: &str,
    role: Role,
    ttl: Duration,
) -> Result<(OperatorBundle, opi_pki::IssuedCert), BundleIssueError> {
    opi_pki::identity::validate_name(name).map_err(BundleIssueError::Name)?;
    if ttl > MAX_OPERATOR_TTL {
        return Err(BundleIssueError::TtlTooLong {
            asked: humantime::format_duration(ttl).to_string(),
            max: humantime::format_duration(MAX_OPERATOR_TTL).to_string(),
        });
    }
    let (cert, key) =
        issuer
            .issue_operator(name, role, ttl)
            .map_err(|source| BundleIssueError::Issue {
                name: name.into(),
                source,
            })?;
    let bundle = OperatorBundle {
        endpoint: endpoint.into(),
        fleet: issuer.fleet().into(),
        name: name.into(),
        role: role.as_str().into(),
        ca: trust_bundle_pem.into(),
        cert: cert.chain_pem.clone(),
        key: key.expose().into(),
    };
    Ok((bundle, cert))
}
