//! Direct gRPC clients, for tests that send what our own binaries never would.

use std::path::Path;

use opi_pki::tls::{client_config, ManagerVerifier};
use opi_pki::SecretPem;
use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::enrollment_client::EnrollmentClient;
use opi_proto::v1::operator_client::OperatorClient;
use tonic::transport::Channel;

/// The agent version hand-made messages carry: the workspace's, which the manager accepts.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Node facts for hand-made enrollments: empty but for an accepted agent version.
pub fn facts() -> opi_proto::v1::NodeFacts {
    opi_proto::v1::NodeFacts {
        agent_version: AGENT_VERSION.into(),
        ..Default::default()
    }
}

/// A channel that trusts the pinned CA and presents no client certificate.
pub async fn anonymous(endpoint: &str, pin: &str) -> anyhow::Result<Channel> {
    let verifier = ManagerVerifier::with_pin(pin.parse()?);
    Ok(opi_pki::channel::connect(endpoint, client_config(verifier, None)?).await?)
}

/// A channel presenting `chain_pem`/`key_pem`, trusting the manager data dir's bundle.
pub async fn with_cert(
    endpoint: &str,
    manager_dir: &Path,
    fleet: &str,
    chain_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Channel> {
    let bundle = std::fs::read_to_string(manager_dir.join("pki/trust-bundle.pem"))?;
    let verifier = ManagerVerifier::with_roots(&bundle, fleet)?;
    let key = SecretPem::new(key_pem.to_string());
    Ok(
        opi_pki::channel::connect(endpoint, client_config(verifier, Some((chain_pem, &key)))?)
            .await?,
    )
}

/// A channel presenting an enrolled agent's own certificate.
pub async fn as_node(
    endpoint: &str,
    manager_dir: &Path,
    fleet: &str,
    state_dir: &Path,
) -> anyhow::Result<Channel> {
    let chain = std::fs::read_to_string(state_dir.join("node.pem"))?;
    let key = std::fs::read_to_string(state_dir.join("node.key"))?;
    with_cert(endpoint, manager_dir, fleet, &chain, &key).await
}

/// Enrollment client on an anonymous channel.
pub async fn enrollment(endpoint: &str, pin: &str) -> anyhow::Result<EnrollmentClient<Channel>> {
    Ok(EnrollmentClient::new(anonymous(endpoint, pin).await?))
}

/// [`enrollment`] over a connection from the local address `source` (any of 127.0.0.0/8), so
/// that the manager's limit of failed enrollments per address does not throttle many clients.
pub async fn enrollment_from(
    endpoint: &str,
    pin: &str,
    source: std::net::IpAddr,
) -> anyhow::Result<EnrollmentClient<Channel>> {
    let verifier = ManagerVerifier::with_pin(pin.parse()?);
    let tls = client_config(verifier, None)?;
    let channel = opi_pki::channel::connect_from(endpoint, tls, Some(source)).await?;
    Ok(EnrollmentClient::new(channel))
}

/// Agent client for an enrolled node.
pub async fn agent(
    endpoint: &str,
    manager_dir: &Path,
    fleet: &str,
    state_dir: &Path,
) -> anyhow::Result<AgentClient<Channel>> {
    Ok(AgentClient::new(
        as_node(endpoint, manager_dir, fleet, state_dir).await?,
    ))
}

/// Operator client presenting the given credentials.
pub async fn operator(
    endpoint: &str,
    manager_dir: &Path,
    fleet: &str,
    chain_pem: &str,
    key_pem: &str,
) -> anyhow::Result<OperatorClient<Channel>> {
    Ok(OperatorClient::new(
        with_cert(endpoint, manager_dir, fleet, chain_pem, key_pem).await?,
    ))
}

/// The fleet's issuing CA, loaded from a manager data dir, to mint certificates a test needs.
pub fn issuer(manager_dir: &Path, fleet: &str) -> opi_pki::Issuer {
    let ca = opi_pki::ca::CertifiedKey {
        cert_pem: std::fs::read_to_string(manager_dir.join("pki/issuing-ca.pem"))
            .expect("issuing CA"),
        key_pem: SecretPem::new(
            std::fs::read_to_string(manager_dir.join("pki/issuing-ca.key")).expect("issuing key"),
        ),
    };
    opi_pki::Issuer::new(fleet, &ca).expect("issuing CA loads")
}

/// Operator client with the admin bundle that `opi-manager init` wrote.
pub async fn admin(endpoint: &str, manager_dir: &Path) -> anyhow::Result<OperatorClient<Channel>> {
    let bundle = opi_pki::bundle::OperatorBundle::read(&manager_dir.join("opictl-admin.toml"))?;
    operator(
        endpoint,
        manager_dir,
        &bundle.fleet,
        &bundle.cert,
        &bundle.key,
    )
    .await
}

/// Collects events from a watch until `done` says the collection is complete, or panics
/// after `timeout` with what was received.
pub async fn collect_events(
    client: &mut OperatorClient<Channel>,
    request: opi_proto::v1::WatchRequest,
    timeout: std::time::Duration,
    mut done: impl FnMut(&[opi_proto::v1::Event]) -> bool,
) -> Vec<opi_proto::v1::Event> {
    let mut stream = client
        .watch(request)
        .await
        .expect("watch starts")
        .into_inner();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&events) {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(event))) => events.push(event),
            Ok(other) => panic!("watch ended early ({other:?}) after {events:?}"),
            Err(_) => panic!("timed out after {timeout:?}; events so far: {events:#?}"),
        }
    }
    events
}
