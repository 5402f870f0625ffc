//! Checks on the manager's answer to an enrollment, made before anything is stored: the
//! certificate must name the node in the verified manager's fleet and carry the node's own key,
//! and the trust bundle must hold the CA the operator pinned.

use opi_pki::identity::Identity;
use opi_pki::tls::{parse_certs, TlsError};
use opi_pki::CaPin;
use opi_proto::v1::EnrollResponse;
use rcgen::KeyPair;

use crate::cert::{check_issued, CertError, LeafInfo};

/// Why an enrollment answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The issued certificate is not for this node or key.
    #[error("the issued certificate is not usable by this node")]
    CheckCertificate(#[source] CertError),
    /// The trust bundle cannot be parsed.
    #[error("the fleet trust bundle cannot be read")]
    ReadBundle(#[source] TlsError),
    /// The trust bundle lacks the pinned CA.
    #[error("the fleet trust bundle holds no CA matching the pin {pin}")]
    BundleWithoutPin {
        /// The pin given with --ca-pin.
        pin: CaPin,
    },
    /// A manager endpoint is malformed.
    #[error("the manager listed `{endpoint}` as a manager endpoint, which is not an https://HOST:PORT URL")]
    BadEndpoint {
        /// The manager endpoint.
        endpoint: String,
    },
}

/// Checks `answer` for a node holding `key`, enrolled by a verified manager of `fleet`.
pub fn check(
    answer: &EnrollResponse,
    fleet: &str,
    key: &KeyPair,
    pin: &CaPin,
) -> Result<LeafInfo, AnswerError> {
    let expected = Identity::node(fleet, &answer.node_name);
    let leaf = check_issued(&answer.cert_chain_pem, &expected, key)
        .map_err(AnswerError::CheckCertificate)?;

    let bundle = parse_certs(&answer.ca_bundle_pem, "fleet trust bundle")
        .map_err(AnswerError::ReadBundle)?;
    if !bundle.iter().any(|cert| pin.matches(cert)) {
        return Err(AnswerError::BundleWithoutPin { pin: *pin });
    }

    if let Some(endpoint) = answer
        .manager_endpoints
        .iter()
        .find(|endpoint| opi_pki::channel::host_port(endpoint).is_err())
    {
        return Err(AnswerError::BadEndpoint {
            endpoint: endpoint.clone(),
        });
    }
    Ok(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::testing::{new_key, TestFleet};

    fn answer(fleet: &TestFleet, name: &str, key: &KeyPair) -> EnrollResponse {
        EnrollResponse {
            node_name: name.into(),
            pool: "workers".into(),
            fleet: fleet.issuer.fleet().into(),
            cert_chain_pem: fleet.node_chain(name, key),
            ca_bundle_pem: fleet.root.cert_pem.clone(),
            manager_endpoints: vec!["https://m1:7443".into()],
            heartbeat_interval_secs: 10,
            profile_signers: Vec::new(),
        }
    }

    #[test]
    fn accepts_an_answer_for_this_node() {
        let fleet = TestFleet::new("prod");
        let (key, _) = new_key();
        let leaf = check(
            &answer(&fleet, "worker-1", &key),
            "prod",
            &key,
            &fleet.pin(),
        )
        .unwrap();
        assert_eq!(leaf.identity, Identity::node("prod", "worker-1"));
    }

    #[test]
    fn rejects_a_certificate_naming_another_node() {
        let fleet = TestFleet::new("prod");
        let (key, _) = new_key();
        let mut reply = answer(&fleet, "worker-1", &key);
        reply.node_name = "worker-2".into();
        let error = check(&reply, "prod", &key, &fleet.pin()).unwrap_err();
        let AnswerError::CheckCertificate(CertError::WrongIdentity { .. }) = error else {
            panic!("unexpected {error}");
        };
    }

    #[test]
    fn rejects_a_certificate_of_another_fleet() {
        let other = TestFleet::new("other");
        let (key, _) = new_key();
        let reply = answer(&other, "worker-1", &key);
        let error = check(&reply, "prod", &key, &other.pin()).unwrap_err();
        let AnswerError::CheckCertificate(CertError::WrongIdentity { .. }) = error else {
            panic!("unexpected {error}");
        };
    }

    #[test]
    fn rejects_a_certificate_for_another_key() {
        let fleet = TestFleet::new("prod");
        let (key, _) = new_key();
        let (other, _) = new_key();
        let reply = answer(&fleet, "worker-1", &other);
        let error = check(&reply, "prod", &key, &fleet.pin()).unwrap_err();
        let AnswerError::CheckCertificate(CertError::WrongKey { .. }) = error else {
            panic!("unexpected {error}");
        };
    }

    #[test]
    fn rejects_a_bundle_without_the_pinned_ca() {
        let fleet = TestFleet::new("prod");
        let stranger = TestFleet::new("prod");
        let (key, _) = new_key();
        let mut reply = answer(&fleet, "worker-1", &key);
        reply.ca_bundle_pem = stranger.root.cert_pem.clone();
        let error = check(&reply, "prod", &key, &fleet.pin()).unwrap_err();
        assert!(
            matches!(error, AnswerError::BundleWithoutPin { .. }),
            "{error}"
        );
    }

    #[test]
    fn rejects_malformed_manager_endpoints() {
        let fleet = TestFleet::new("prod");
        let (key, _) = new_key();
        let mut reply = answer(&fleet, "worker-1", &key);
        reply.manager_endpoints.push("m2:7443".into());
        let error = check(&reply, "prod", &key, &fleet.pin()).unwrap_err();
        assert!(matches!(error, AnswerError::BadEndpoint { .. }), "{error}");
    }
}
