//! The agent against the real manager: what enrollment stores, the session's heartbeats and
//! announced endpoints, and certificate renewal late in a certificate's life.

use std::collections::BTreeSet;
use std::time::Duration;

use opi_pki::tls::PeerCert;
use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::agent_message::Body;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{AgentMessage, Hello, RenewRequest};
use opi_tests::{
    all_online, grpc, mode, node, ok, wait_until, wait_until_every, Agent, Manager, Opictl,
    POLL_OPICTL, WAIT,
};
use serde_json::Value;
use tempfile::TempDir;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_stream::wrappers::ReceiverStream;

/// Node certificate lifetime for renewal tests: the agent renews 6 to 8 s after issuance.
const SHORT_TTL: &str = "10s";
/// Longest wait for one certificate rollover of a [`SHORT_TTL`] certificate.
const ROLLOVER_WAIT: Duration = Duration::from_secs(20);

/// A started manager of fleet `e2e` with `args` for `serve`, and its directory.
fn manager(args: &[&str]) -> (TempDir, Manager) {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e").with_args(args);
    manager.start();
    (dir, manager)
}

/// An agent named `name`, enrolled in pool `workers` with a single-use token.
fn enrolled(dir: &TempDir, manager: &Manager, name: &str) -> Agent {
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    let agent = Agent::new(dir.path(), name);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent
}

fn managers(agent: &Agent) -> Vec<String> {
    let status = agent.status();
    let list = status["managers"].as_array().expect("managers list");
    list.iter()
        .map(|m| m.as_str().expect("endpoint").to_string())
        .collect()
}

#[test]
fn enrollment_stores_a_0600_key_and_the_fleet_identity() {
    let (dir, manager) = manager(&[]);
    let opictl = manager.opictl();
    let (token_id, token) = opictl.create_token("workers", 1, &[]);
    let agent = Agent::new(dir.path(), "worker-1");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));

    let status = agent.status();
    assert_eq!(status["node"], "worker-1");
    assert_eq!(status["fleet"], "e2e");
    assert_eq!(status["pool"], "workers");
    assert_eq!(status["managers"], serde_json::json!([manager.endpoint()]));
    let state = agent.state_dir();
    assert_eq!(mode(&state.join("node.key")), 0o600);
    assert_eq!(mode(&state), 0o700);
    assert!(!state.join("node.key.pending").exists());

    let leaf = agent.leaf();
    assert_eq!(leaf.identity.uri(), "spiffe://e2e/node/worker-1");
    assert_eq!(status["cert_serial"], leaf.serial.as_str());
    assert_renewal_planned_ahead(&agent);
    let ca = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    let ca = opi_pki::tls::parse_certs(&ca, "ca.pem").unwrap();
    let pin = opi_pki::CaPin::of_cert_der(&ca[0]).unwrap();
    assert_eq!(
        pin.to_string(),
        manager.ca_pin(),
        "ca.pem is the fleet's root"
    );
    let nodes = opictl.nodes();
    let listed = node(&nodes, "worker-1").expect("node listed");
    assert_eq!(listed["pool"], "workers");
    assert_eq!(listed["token_id"], token_id.as_str());
    assert_eq!(listed["cert_not_after"], rfc3339(&leaf));
}

#[test]
fn enrollment_of_an_enrolled_node_is_refused_naming_node_and_fleet() {
    let (dir, manager) = manager(&[]);
    let opictl = manager.opictl();
    let (token_id, token) = opictl.create_token("workers", 2, &[]);
    let agent = Agent::new(dir.path(), "twice");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    let cert = std::fs::read(agent.state_dir().join("node.pem")).unwrap();

    let again = agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token);
    assert_eq!(again.status.code(), Some(2));
    let error = String::from_utf8_lossy(&again.stderr);
    assert!(
        error.contains("already enrolled as node twice of fleet e2e"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(agent.state_dir().join("node.pem")).unwrap(),
        cert
    );
    let tokens = opictl.json(&["token", "list"]);
    assert_eq!(tokens[0]["id"], token_id.as_str());
    assert_eq!(
        tokens[0]["used"], 1,
        "the second attempt never reached the manager"
    );
}

#[test]
fn agent_says_hello_then_heartbeats_at_the_interval_the_manager_sets() {
    // Enrolled under the default 10 s interval; the restarted manager's welcome asks for 1 s.
    let (dir, mut manager) = manager(&[]);
    let mut agent = enrolled(&dir, &manager, "beat");
    manager.kill();
    let mut manager = manager.with_args(&["--heartbeat", "1s"]);
    manager.start();
    agent.start();

    let opictl = manager.opictl();
    wait_until_every(POLL_OPICTL, WAIT, "node online", || {
        all_online(&opictl, &["beat"])
    });
    let first = beat_node(&opictl);
    assert!(
        first["summary"]["memory_total_bytes"].as_u64() > Some(0),
        "the hello carries a health summary: {first}"
    );
    // Four distinct last-seen seconds take about 3 s at 1 s, and 30 s at the enrolled 10 s.
    let mut seen = BTreeSet::new();
    let took = wait_until_every(
        POLL_OPICTL,
        Duration::from_secs(8),
        "four heartbeats",
        || {
            let last_seen = beat_node(&opictl)["last_seen"].as_str().map(String::from);
            seen.extend(last_seen);
            seen.len() >= 4
        },
    );
    println!("last_seen took four values in {took:?}");
    let log = agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("heartbeat interval set by the manager") && l.contains("1s")),
        "{log}"
    );
}

#[test]
fn agent_stores_the_manager_endpoints_announced_at_welcome() {
    let (dir, mut manager) = manager(&[]);
    let mut agent = enrolled(&dir, &manager, "listener");
    let endpoint = manager.endpoint();
    assert_eq!(managers(&agent), vec![endpoint.clone()]);

    // The port is known only now: restart on it, announcing a second manager too.
    manager.kill();
    let announced = [endpoint.clone(), "https://m2.example:7443".to_string()];
    let mut manager =
        manager.with_args(&["--advertise", &announced[0], "--advertise", &announced[1]]);
    manager.start();
    assert_eq!(manager.endpoint(), endpoint);
    agent.start();

    wait_until(WAIT, "agent.toml to list the announced endpoints", || {
        managers(&agent) == announced
    });
    assert_eq!(mode(&agent.state_dir().join("agent.toml")) & 0o022, 0);
    wait_until_every(POLL_OPICTL, WAIT, "node online", || {
        all_online(&manager.opictl(), &["listener"])
    });
}

#[test]
fn agent_renews_late_with_a_fresh_key_and_reconnects_with_the_new_certificate() {
    let (dir, manager) = manager(&["--node-cert-ttl", SHORT_TTL, "--heartbeat", "1s"]);
    let mut agent = enrolled(&dir, &manager, "renewer");
    let state = agent.state_dir();
    let first = agent.leaf();
    let first_key = std::fs::read_to_string(state.join("node.key")).unwrap();
    assert_renewal_planned_ahead(&agent);
    agent.start();

    let second = next_certificate(&agent, &first);
    println!("renewed {} -> {}", first.serial, second.serial);
    assert!(
        second.not_after - first.not_after >= time::Duration::seconds(5),
        "renewed at {} for a certificate valid until {}: not late in its life",
        second.not_after,
        first.not_after
    );
    let key = std::fs::read_to_string(state.join("node.key")).unwrap();
    assert_ne!(key, first_key, "the renewal uses a fresh key");
    assert_eq!(mode(&state.join("node.key")), 0o600);
    assert!(!state.join("node.key.next").exists());
    assert!(!state.join("node.pem.next").exists());

    online_with(&manager, &agent, &second);
    let renewals = renewals(&manager.opictl(), "renewer");
    let replaced = format!("serial {} replaces {}", second.serial, first.serial);
    assert!(
        renewals.iter().any(|detail| detail.starts_with(&replaced)),
        "{renewals:?}"
    );
}

#[test]
fn node_stays_online_across_two_certificate_rollovers() {
    let (dir, manager) = manager(&["--node-cert-ttl", SHORT_TTL, "--heartbeat", "1s"]);
    let mut agent = enrolled(&dir, &manager, "roller");
    let first = agent.leaf();
    assert_renewal_planned_ahead(&agent);
    agent.start();

    let second = next_certificate(&agent, &first);
    let third = next_certificate(&agent, &second);
    println!(
        "rolled over {} -> {} -> {}",
        first.serial, second.serial, third.serial
    );
    assert!(
        third.not_after - second.not_after >= time::Duration::seconds(5),
        "the second certificate was renewed early"
    );

    online_with(&manager, &agent, &third);
    let renewals = renewals(&manager.opictl(), "roller");
    for (new, old) in [(&second, &first), (&third, &second)] {
        let replaced = format!("serial {} replaces {}", new.serial, old.serial);
        assert!(
            renewals.iter().any(|detail| detail.starts_with(&replaced)),
            "no `{replaced}` in {renewals:?}"
        );
    }
}

#[test]
fn manager_accepts_the_two_newest_certificates_of_a_node_and_refuses_older_ones() {
    let (dir, manager) = manager(&[]);
    let agent = enrolled(&dir, &manager, "kept");
    let state = agent.state_dir();
    let read = |file: &str| std::fs::read_to_string(state.join(file)).unwrap();
    let first = (read("node.pem"), read("node.key"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sessions = runtime.block_on(async {
        let second = renew(&manager, &first).await;
        let third = renew(&manager, &second).await;
        let mut sessions = Vec::new();
        for pair in [&first, &second, &third] {
            sessions.push(open_session(&manager, pair).await);
        }
        sessions
    });
    let [first, second, third] = sessions.try_into().unwrap();
    let refused = first.expect_err("the certificate two renewals old is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        refused
            .message()
            .contains("not a current certificate of node kept"),
        "{refused}"
    );
    second.expect("the previous certificate still opens a session");
    third.expect("the newest certificate opens a session");
}

/// Renews a node's certificate over a direct call authenticated with `(chain, key)`.
async fn renew(manager: &Manager, (chain, key): &(String, String)) -> (String, String) {
    let channel = grpc::with_cert(&manager.endpoint(), &manager.data_dir, "e2e", chain, key)
        .await
        .unwrap();
    let new_key = opi_pki::ca::generate_key().unwrap();
    let csr_der = opi_pki::csr::make_node_csr(&new_key, "kept").unwrap();
    let renewed = AgentClient::new(channel)
        .renew(RenewRequest { csr_der })
        .await
        .expect("renewal accepted")
        .into_inner();
    (renewed.cert_chain_pem, new_key.serialize_pem())
}

/// Opens a session with `(chain, key)`; `Ok` once the manager's welcome arrives.
async fn open_session(
    manager: &Manager,
    (chain, key): &(String, String),
) -> Result<(), tonic::Status> {
    let channel = grpc::with_cert(&manager.endpoint(), &manager.data_dir, "e2e", chain, key)
        .await
        .unwrap();
    let hello = AgentMessage {
        body: Some(Body::Hello(Hello {
            agent_version: opi_tests::grpc::AGENT_VERSION.into(),
            ..Default::default()
        })),
    };
    let (outbox, queue) = tokio::sync::mpsc::channel(1);
    outbox.send(hello).await.unwrap();
    let mut inbound = AgentClient::new(channel)
        .session(ReceiverStream::new(queue))
        .await?
        .into_inner();
    match inbound.message().await?.and_then(|m| m.body) {
        Some(ManagerBody::Welcome(_)) => Ok(()),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn beat_node(opictl: &Opictl) -> Value {
    node(&opictl.nodes(), "beat").expect("node listed").clone()
}

fn rfc3339(leaf: &PeerCert) -> String {
    leaf.not_after.format(&Rfc3339).unwrap()
}

/// Checks that `opi-agent status` plans the renewal of the current certificate in its future.
fn assert_renewal_planned_ahead(agent: &Agent) {
    let status = agent.status();
    let time = |key: &str| {
        let text = status[key].as_str().unwrap_or_default();
        OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{key}: {e}: {status}"))
    };
    let (planned, not_after) = (time("renewal_planned_at"), time("not_after"));
    assert!(
        OffsetDateTime::now_utc() < planned && planned < not_after,
        "renewal of a certificate valid until {not_after} planned at {planned}: {status}"
    );
}

/// Waits for `node.pem` to hold a certificate other than `current`, and returns it.
fn next_certificate(agent: &Agent, current: &PeerCert) -> PeerCert {
    let mut next = None;
    wait_until(ROLLOVER_WAIT, "the agent to renew its certificate", || {
        let leaf = agent.leaf();
        let renewed = leaf.serial != current.serial;
        next = renewed.then_some(leaf);
        renewed
    });
    next.expect("renewed")
}

/// Waits until the manager shows the node online in a session opened after it issued `leaf`,
/// which the agent can only have opened with that certificate (or a later one).
fn online_with(manager: &Manager, agent: &Agent, leaf: &PeerCert) {
    let opictl = manager.opictl();
    let name = agent.name.as_str();
    let online_line = format!("session open node={name}");
    wait_until_every(
        POLL_OPICTL,
        WAIT,
        "the node online with its renewed certificate",
        || {
            let log = manager.log_text();
            let reconnected = log
                .find(&format!("serial={}", leaf.serial))
                .is_some_and(|issued| log[issued..].contains(&online_line));
            reconnected && all_online(&opictl, &[name])
        },
    );
}

/// Details of the `node.renew` audit entries of node `name`.
fn renewals(opictl: &Opictl, name: &str) -> Vec<String> {
    let audit = opictl.json(&["audit", "--limit", "200"]);
    audit
        .as_array()
        .expect("audit entries")
        .iter()
        .filter(|e| e["action"] == "node.renew" && e["subject"] == name && e["outcome"] == "ok")
        .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
        .collect()
}
