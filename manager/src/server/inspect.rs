//! What the manager makes of the raw bytes an agent or an unauthenticated peer sends, without
//! a connection: the protobuf decode, then the same checks and conversions the services run
//! on it, up to where the fleet's state would be read or written. The fuzz targets (`fuzz/`)
//! and their regression tests drive these; each returns why the input was refused.

use opi_proto::v1 as pb;
use prost::Message;

use super::convert;
use crate::compliance::record::Evidence;
use crate::tokens::BootstrapToken;

/// The fleet name the checks run against.
const FLEET: &str = "fuzz";

/// An `EnrollRequest` as [`crate::fleet::Fleet::enroll`] checks it before the store.
pub fn enroll_request(bytes: &[u8]) -> Result<(), String> {
    let request = pb::EnrollRequest::decode(bytes).map_err(|e| e.to_string())?;
    let facts = convert::facts_from_proto(request.facts.unwrap_or_default());
    let token: Result<BootstrapToken, _> = request.token.parse();
    let name = match request.name.is_empty() {
        true => facts.hostname.clone(),
        false => request.name,
    };
    opi_pki::identity::validate_name(&name).map_err(|e| e.to_string())?;
    crate::versions::check(&facts.agent_version).map_err(|e| e.to_string())?;
    opi_pki::csr::check_node_csr(&request.csr_der, FLEET, &name).map_err(|e| e.to_string())?;
    token.map(|_| ()).map_err(|e| e.to_string())
}

/// An `AgentMessage` on a session: hello, heartbeat, health, apply or compliance report, or a
/// stored trust bundle, as the agent service converts it.
pub fn agent_message(bytes: &[u8]) -> Result<(), String> {
    use pb::agent_message::Body;
    let message = pb::AgentMessage::decode(bytes).map_err(|e| e.to_string())?;
    match message.body {
        Some(Body::Hello(hello)) => {
            crate::versions::check(&hello.agent_version).map_err(|e| e.to_string())?;
            let _ = convert::facts_from_proto(hello.facts.unwrap_or_default());
            match hello.report {
                Some(report) => convert::conditions_from_proto(report.conditions).map(|_| ()),
                None => Ok(()),
            }
        }
        Some(Body::Heartbeat(beat)) => {
            let _ = beat.conditions_observed_at.and_then(convert::time_from);
            Ok(())
        }
        Some(Body::Report(report)) => convert::conditions_from_proto(report.conditions).map(|_| ()),
        Some(Body::Apply(report)) => convert::apply_report_from_proto(report).map(|_| ()),
        Some(Body::Compliance(report)) => Evidence::from_proto(report).map(|_| ()),
        // The digest is only compared with the current bundle's, by the fleet.
        Some(Body::BundleStored(_)) => Ok(()),
        None => Err("empty message".into()),
    }
}

/// A `RenewRequest`, whose CSR is checked as renewal does.
pub fn renew_request(bytes: &[u8]) -> Result<(), String> {
    let request = pb::RenewRequest::decode(bytes).map_err(|e| e.to_string())?;
    opi_pki::csr::check_node_csr(&request.csr_der, FLEET, "node-1")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A `LoginRequest`, as operator login checks it before the store.
pub fn login_request(bytes: &[u8]) -> Result<(), String> {
    let request = pb::LoginRequest::decode(bytes).map_err(|e| e.to_string())?;
    let code: Result<BootstrapToken, _> = request.code.parse();
    opi_pki::csr::check_operator_csr(&request.csr_der, FLEET, "alice")
        .map_err(|e| e.to_string())?;
    code.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enroll(name: &str, version: &str) -> Vec<u8> {
        let key = opi_pki::ca::generate_key().unwrap();
        pb::EnrollRequest {
            token: BootstrapToken::generate().expose(),
            csr_der: opi_pki::csr::make_node_csr(&key, name).unwrap(),
            name: name.into(),
            facts: Some(pb::NodeFacts {
                agent_version: version.into(),
                ..Default::default()
            }),
            reenroll: false,
        }
        .encode_to_vec()
    }

    #[test]
    fn a_well_formed_enrollment_passes_and_every_cut_of_it_is_refused_without_panic() {
        let bytes = enroll("node-1", env!("CARGO_PKG_VERSION"));
        assert_eq!(enroll_request(&bytes), Ok(()));
        for end in 0..bytes.len() {
            assert!(enroll_request(&bytes[..end]).is_err(), "cut at {end}");
        }
        let newer = enroll_request(&enroll("node-1", "99.0.0")).unwrap_err();
        assert!(newer.contains("99.0.0"), "{newer}");
        assert!(enroll_request(&enroll("Bad Name", env!("CARGO_PKG_VERSION"))).is_err());
    }

    #[test]
    fn agent_messages_of_every_kind_are_checked() {
        use pb::agent_message::Body;
        let hello = pb::AgentMessage {
            body: Some(Body::Hello(pb::Hello {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            })),
        };
        assert_eq!(agent_message(&hello.encode_to_vec()), Ok(()));
        let beat = pb::AgentMessage {
            body: Some(Body::Heartbeat(pb::Heartbeat {
                conditions_observed_at: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: i32::MAX,
                }),
                ..Default::default()
            })),
        };
        assert_eq!(
            agent_message(&beat.encode_to_vec()),
            Ok(()),
            "an absurd time is ignored"
        );
        assert!(agent_message(&[]).is_err());
        assert!(agent_message(&[0xff; 16]).is_err());
    }

    #[test]
    fn renew_and_login_requests_refuse_garbage_csrs() {
        let renew = pb::RenewRequest {
            csr_der: vec![0x30, 0x82, 0xff, 0xff],
        };
        assert!(renew_request(&renew.encode_to_vec())
            .unwrap_err()
            .contains("CSR"));
        let login = pb::LoginRequest {
            code: "x".into(),
            csr_der: vec![],
        };
        assert!(login_request(&login.encode_to_vec())
            .unwrap_err()
            .contains("CSR is empty"));
    }
}
