//! Who is calling: the identity from the connection's verified certificate, never from a
//! message field.

use opi_pki::tls::PeerCert;
use opi_pki::{IdentityKind, Role};
use tonic::Request;

use super::authz::Action;
use super::conn::PeerInfo;
use crate::fleet::{Fleet, FleetError};

/// An authenticated caller of a given kind.
#[derive(Clone, Debug)]
pub struct Caller {
    pub cert: PeerCert,
    pub remote: String,
}

/// The connection info of a request; always present for requests our listener accepted.
pub fn peer_info<T>(request: &Request<T>) -> PeerInfo {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .expect("every connection is accepted by our TLS listener, which attaches PeerInfo")
}

/// The calling node, checked against the fleet's records.
pub fn node<T>(request: &Request<T>, fleet: &Fleet) -> Result<Caller, FleetError> {
    let caller = of_kind(request, fleet, IdentityKind::Node)?;
    fleet.check_node_cert(&caller.cert)?;
    Ok(caller)
}

/// The calling node for the renewal call only: a current certificate, or one that expired
/// less than the fleet's renewal window ago (its chain verified as of its expiry), so that a
/// node offline past its certificate's end proves possession of its key and renews.
pub fn renewing_node<T>(request: &Request<T>, fleet: &Fleet) -> Result<Caller, FleetError> {
    let info = peer_info(request);
    let expired = match (info.cert.as_deref(), info.expired.as_deref()) {
        (Some(Err(_)), Some(expired)) => expired.clone(),
        _ => return node(request, fleet),
    };
    if expired.identity.kind != IdentityKind::Node || expired.identity.fleet != fleet.fleet_name() {
        return Err(FleetError::WrongIdentity {
            expected: kind_name(IdentityKind::Node),
            got: expired.identity.uri(),
        });
    }
    fleet.check_expired_node_cert(&expired)?;
    Ok(Caller {
        cert: expired,
        remote: info.remote.to_string(),
    })
}

/// The calling operator, if its role allows `action`.
pub fn operator<T>(
    request: &Request<T>,
    fleet: &Fleet,
    action: Action,
) -> Result<(Caller, Role), FleetError> {
    let caller = of_kind(request, fleet, IdentityKind::Operator)?;
    let role = caller.cert.identity.role.ok_or(FleetError::WrongIdentity {
        expected: "an operator",
        got: caller.cert.identity.uri(),
    })?;
    if !action.allows(role) {
        return Err(FleetError::Forbidden {
            role: role.to_string(),
            action: action.describe(),
        });
    }
    Ok((caller, role))
}

fn of_kind<T>(
    request: &Request<T>,
    fleet: &Fleet,
    kind: IdentityKind,
) -> Result<Caller, FleetError> {
    let info = peer_info(request);
    let expected = kind_name(kind);
    let cert = match info.cert.as_deref() {
        None => return Err(FleetError::NoClientCertificate),
        Some(Err(why)) => return Err(FleetError::CertificateRefused(why.clone())),
        Some(Ok(cert)) => cert.clone(),
    };
    if cert.identity.kind != kind || cert.identity.fleet != fleet.fleet_name() {
        return Err(FleetError::WrongIdentity {
            expected,
            got: cert.identity.uri(),
        });
    }
    Ok(Caller {
        cert,
        remote: info.remote.to_string(),
    })
}

fn kind_name(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Node => "a node",
        IdentityKind::Manager => "a manager",
        IdentityKind::Operator => "an operator",
    }
}
