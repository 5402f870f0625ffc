//! Certificate renewal: when to renew, and renewing.
//!
//! A certificate is renewed at a point drawn uniformly between [`RENEW_FROM`] and
//! [`RENEW_UNTIL`] of its lifetime, so that nodes enrolled together do not renew together.
//! The point is drawn from a hash of the certificate's serial number (which the CA makes
//! random): it is picked once per certificate, stays the same across agent restarts, and
//! `opi-agent status` can show it.

use std::time::Duration;

use opi_pki::ca::CaError;
use opi_pki::csr::CsrError;
use opi_pki::identity::Identity;
use opi_pki::SecretPem;
use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::RenewRequest;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::transport::Channel;

use crate::cert::{check_issued, CertError, LeafInfo};
use crate::paths::StatePaths;
use crate::rpc::{self, RpcError};
use crate::store::{self, StoreError};

/// Earliest renewal point, as a fraction of the certificate's lifetime.
pub const RENEW_FROM: f64 = 0.6;
/// Latest renewal point, as a fraction of the certificate's lifetime.
pub const RENEW_UNTIL: f64 = 0.8;
/// Time allowed for the manager to answer a renewal.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(30);
/// Ceiling of the first delay before retrying a failed renewal.
pub const RETRY_BASE: Duration = Duration::from_secs(10);
/// Longest delay between two renewal attempts.
pub const RETRY_CAP: Duration = Duration::from_secs(10 * 60);

/// A renewed certificate, already stored.
#[derive(Debug)]
pub struct Renewed {
    /// The new key, PEM.
    pub key: SecretPem,
    /// The new certificate and its issuing CA, PEM.
    pub chain_pem: String,
    /// What the new certificate says.
    pub leaf: LeafInfo,
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The key could not be generated.
    #[error("cannot generate the new key")]
    GenerateKey(#[source] CaError),
    /// The CSR could not be built.
    #[error("cannot build the certificate request")]
    BuildCsr(#[source] CsrError),
    /// The `Renew` call failed.
    #[error("the renewal call to {endpoint} failed")]
    CallRenew {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: RpcError,
    },
    /// The issued certificate is not for this node or key.
    #[error("refusing the certificate renewed by {endpoint}")]
    CheckCertificate {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: CertError,
    },
    /// The renewed pair could not be stored.
    #[error("cannot store the renewed certificate")]
    StoreRenewed(#[source] StoreError),
}

impl RenewError {
    /// Whether the manager refused the renewal itself (revoked, past the window).
    pub fn is_refusal(&self) -> bool {
        match self {
            RenewError::CallRenew { source, .. } => source.is_refusal(),
            RenewError::GenerateKey(_)
            | RenewError::BuildCsr(_)
            | RenewError::CheckCertificate { .. }
            | RenewError::StoreRenewed(_) => false,
        }
    }
}

/// Longest pause forced between a certificate's issue and its renewal.
const MAX_RENEWAL_GAP: time::Duration = time::Duration::minutes(1);

/// When `leaf` is to be renewed: at its point of the renewal window, but never sooner than a
/// tenth of its lifetime (at most a minute) from `now`, so that a certificate whose window
/// already passed (an issuer that backdates a lot) cannot make the agent renew in a loop.
pub fn planned_at(leaf: &LeafInfo, now: OffsetDateTime) -> OffsetDateTime {
    let planned = point_in_lifetime(leaf.not_before, leaf.not_after, draw(&leaf.serial));
    let lifetime: time::Duration = leaf.not_after - leaf.not_before;
    let gap: time::Duration = (lifetime / 10_i32).min(MAX_RENEWAL_GAP);
    planned.max(now + gap)
}

/// The point at `draw` (in `[0, 1]`) of the renewal window of a certificate's lifetime.
pub fn point_in_lifetime(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    draw: f64,
) -> OffsetDateTime {
    let lifetime = not_after - not_before;
    let fraction = RENEW_FROM + (RENEW_UNTIL - RENEW_FROM) * draw.clamp(0.0, 1.0);
    not_before + lifetime * fraction
}

/// A uniform draw in `[0, 1)` from a serial number.
fn draw(serial: &str) -> f64 {
    let digest = Sha256::digest(serial.as_bytes());
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"));
    // The top 53 bits fill an f64 mantissa exactly.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Renews `identity`'s certificate over `channel` (authenticated with the current one) with a
/// fresh key, checks the answer and stores it.
pub async fn renew(
    channel: Channel,
    endpoint: &str,
    paths: &StatePaths,
    identity: &Identity,
) -> Result<Renewed, RenewError> {
    let key = opi_pki::ca::generate_key().map_err(RenewError::GenerateKey)?;
    let csr_der =
        opi_pki::csr::make_node_csr(&key, &identity.name).map_err(RenewError::BuildCsr)?;

    let call = async move {
        AgentClient::new(channel)
            .renew(RenewRequest { csr_der })
            .await
    };
    let response = rpc::with_deadline(RENEW_TIMEOUT, call)
        .await
        .map_err(|source| RenewError::CallRenew {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let leaf = check_issued(&response.cert_chain_pem, identity, &key).map_err(|source| {
        RenewError::CheckCertificate {
            endpoint: endpoint.to_string(),
            source,
        }
    })?;

    // The trust bundle in the answer is not stored: the manager sends a changed bundle over
    // the session (a CA rollover), and the agent acknowledges what it stored.
    let key = SecretPem::new(key.serialize_pem());
    store::store_renewed(paths, &key, &response.cert_chain_pem)
        .map_err(RenewError::StoreRenewed)?;
    Ok(Renewed {
        key,
        chain_pem: response.cert_chain_pem,
        leaf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use time::macros::datetime;

    fn leaf(serial: String, not_before: OffsetDateTime, lifetime: time::Duration) -> LeafInfo {
        LeafInfo {
            identity: Identity::node("prod", "worker-1"),
            serial,
            not_before,
            not_after: not_before + lifetime,
            public_key: Vec::new(),
        }
    }

    #[test]
    fn renewal_is_always_planned_between_60_and_80_percent_of_the_lifetime() {
        let mut rng = rand::rng();
        let start = datetime!(2025-03-01 00:00 UTC);
        for _ in 0..10_000 {
            let serial = format!("{:032x}", rng.random::<u128>());
            let lifetime = time::Duration::seconds(rng.random_range(60..40 * 86_400));
            let leaf = leaf(serial, start, lifetime);
            let elapsed = (planned_at(&leaf, start) - start).as_seconds_f64();
            let fraction = elapsed / lifetime.as_seconds_f64();
            assert!((RENEW_FROM..=RENEW_UNTIL).contains(&fraction), "{fraction}");
        }
    }

    #[test]
    fn a_certificate_whose_window_has_passed_is_not_renewed_at_once() {
        let start = datetime!(2025-03-01 00:00 UTC);
        let leaf = leaf("0a1b".into(), start, time::Duration::seconds(100));
        let late = start + time::Duration::seconds(95);
        assert_eq!(planned_at(&leaf, late), late + time::Duration::seconds(10));
        let day_leaf = leaf_for_day(start);
        let very_late = start + time::Duration::days(2);
        assert_eq!(
            planned_at(&day_leaf, very_late),
            very_late + MAX_RENEWAL_GAP
        );
    }

    fn leaf_for_day(start: OffsetDateTime) -> LeafInfo {
        leaf("0c0d".into(), start, time::Duration::days(1))
    }

    #[test]
    fn window_edges_are_60_and_80_percent() {
        let start = datetime!(2025-03-01 00:00 UTC);
        let end = datetime!(2025-03-02 00:00 UTC);
        assert_eq!(
            point_in_lifetime(start, end, 0.0),
            datetime!(2025-03-01 14:24 UTC)
        );
        assert_eq!(
            point_in_lifetime(start, end, 1.0),
            datetime!(2025-03-01 19:12 UTC)
        );
        assert_eq!(
            point_in_lifetime(start, end, 7.0),
            datetime!(2025-03-01 19:12 UTC)
        );
    }

    #[test]
    fn renewal_point_is_fixed_per_certificate_and_spread_across_certificates() {
        let start = datetime!(2025-03-01 00:00 UTC);
        let day = time::Duration::days(1);
        let first = leaf("0a1b".into(), start, day);
        assert_eq!(planned_at(&first, start), planned_at(&first.clone(), start));

        let draws: Vec<f64> = (0..1000).map(|n| draw(&format!("{n:032x}"))).collect();
        let low = draws.iter().filter(|d| **d < 0.25).count();
        let high = draws.iter().filter(|d| **d > 0.75).count();
        assert!(
            (150..350).contains(&low) && (150..350).contains(&high),
            "{low} {high}"
        );
    }
}
