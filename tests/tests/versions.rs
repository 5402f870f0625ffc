//! The version skew policy, against a real manager: agents of its minor version and one minor
//! behind are accepted and counted in `opictl status`; newer, other-major and malformed
//! versions are refused at enrollment (the token's use is kept) and at session open, naming
//! both versions. Other versions than the workspace's are sent by hand-made gRPC messages
//! over real mTLS: no binary can be told to lie about its version.

use std::path::Path;

use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::agent_message::Body;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{AgentMessage, EnrollRequest, Hello, ManagerMessage, NodeFacts};
use opi_tests::{grpc, ok, Agent, Manager, WAIT};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// This manager's version (the workspace's), and the version one minor behind it.
const CURRENT: &str = env!("CARGO_PKG_VERSION");
const ONE_MINOR_BEHIND: &str = "0.0.9";

/// A node enrolled by hand with `version` in its facts: its chain and key, or the refusal.
async fn enroll(
    manager: &Manager,
    token: &str,
    name: &str,
    version: &str,
) -> Result<(String, String), Status> {
    let key = opi_pki::ca::generate_key().unwrap();
    let mut client = grpc::enrollment(&manager.endpoint(), &manager.ca_pin())
        .await
        .unwrap();
    let request = EnrollRequest {
        token: token.into(),
        csr_der: opi_pki::csr::make_node_csr(&key, name).unwrap(),
        name: name.into(),
        facts: Some(NodeFacts {
            agent_version: version.into(),
            ..Default::default()
        }),
        reenroll: false,
    };
    let answer = client.enroll(request).await?.into_inner();
    Ok((answer.cert_chain_pem, key.serialize_pem()))
}

/// Opens a session saying hello as `version`; the stream, once the welcome arrived.
async fn session(
    manager: &Manager,
    (chain, key): &(String, String),
    version: &str,
) -> Result<(mpsc::Sender<AgentMessage>, Streaming<ManagerMessage>), Status> {
    let channel = grpc::with_cert(&manager.endpoint(), &manager.data_dir, "skew", chain, key)
        .await
        .unwrap();
    let (outbox, queue) = mpsc::channel(4);
    let hello = Hello {
        agent_version: version.into(),
        boot_id: "boot".into(),
        ..Default::default()
    };
    outbox
        .send(AgentMessage {
            body: Some(Body::Hello(hello)),
        })
        .await
        .unwrap();
    let mut inbound = AgentClient::new(channel)
        .session(ReceiverStream::new(queue))
        .await?
        .into_inner();
    match inbound.message().await?.and_then(|m| m.body) {
        Some(ManagerBody::Welcome(_)) => Ok((outbox, inbound)),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn started_manager(dir: &Path) -> Manager {
    let mut manager = Manager::init(dir, "skew");
    manager.start();
    manager
}

#[test]
fn status_counts_agent_versions_and_shows_those_one_minor_behind() {
    let dir = TempDir::new().unwrap();
    let manager = started_manager(dir.path());
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 2, &[]);
    let mut real = Agent::new(dir.path(), "real-node");
    ok(real.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    real.start();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let older = runtime
        .block_on(enroll(&manager, &token, "older-node", ONE_MINOR_BEHIND))
        .expect("one minor behind enrolls");
    let _open = runtime
        .block_on(session(&manager, &older, ONE_MINOR_BEHIND))
        .expect("one minor behind opens a session");
    opi_tests::wait_until(WAIT, "both nodes online", || {
        opi_tests::all_online(&opictl, &["real-node", "older-node"])
    });

    let status = opictl.json(&["status"]);
    let versions = status["agent_versions"].as_array().expect("agent_versions");
    assert_eq!(versions.len(), 2, "{status}");
    assert_eq!(versions[0]["version"], CURRENT);
    assert_eq!(versions[0]["nodes"], 1);
    assert_eq!(versions[0]["skew"], "current");
    assert_eq!(versions[1]["version"], ONE_MINOR_BEHIND);
    assert_eq!(versions[1]["skew"], "one minor behind");
    let table = ok(opictl.run(&["status"]));
    let line = format!("agent versions   {CURRENT}: 1, {ONE_MINOR_BEHIND}: 1 (one minor behind)\n");
    assert!(table.contains(&line), "{table}");
}

#[test]
fn newer_other_major_and_malformed_agents_are_refused_at_enrollment_keeping_the_token() {
    let dir = TempDir::new().unwrap();
    let manager = started_manager(dir.path());
    let opictl = manager.opictl();
    let (id, token) = opictl.create_token("workers", 1, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    for (version, wanted) in [
        (
            "0.2.0",
            format!("agent 0.2.0 is newer than manager {CURRENT}"),
        ),
        (
            "1.1.0",
            format!("agent 1.1.0 is newer than manager {CURRENT}"),
        ),
        (
            "banana",
            "agent version \"banana\" is not a MAJOR.MINOR.PATCH version".into(),
        ),
    ] {
        let refused = runtime
            .block_on(enroll(&manager, &token, "future-node", version))
            .expect_err("refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
        assert!(refused.message().contains(&wanted), "{refused}");
        assert!(
            refused
                .message()
                .starts_with("node future-node runs an agent version"),
            "{refused}"
        );
    }

    let tokens = opictl.json(&["token", "list"]);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert_eq!(tokens[0]["used"], 0, "a refused version spends no use");
    let audit = ok(opictl.run(&["audit"]));
    assert!(audit.contains("is newer than manager"), "{audit}");
    let enrolled = runtime.block_on(enroll(&manager, &token, "future-node", CURRENT));
    assert!(enrolled.is_ok(), "the token still enrolls: {enrolled:?}");
}

#[test]
fn a_session_saying_hello_with_an_unaccepted_version_is_refused_naming_both() {
    let dir = TempDir::new().unwrap();
    let manager = started_manager(dir.path());
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = runtime
        .block_on(enroll(&manager, &token, "upgraded-node", CURRENT))
        .unwrap();

    let refused = runtime
        .block_on(session(&manager, &node, "0.2.0"))
        .map(|_| ())
        .expect_err("a newer agent is refused");

    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(
        refused.message().contains(&format!(
            "agent 0.2.0 is newer than manager {CURRENT} (a manager accepts agents of its major \
             version, of its minor version or one minor behind); upgrade the managers before the \
             agents"
        )),
        "{refused}"
    );
    let nodes = manager.opictl().nodes();
    assert_eq!(nodes[0]["connectivity"], "offline", "never came online");
    let log = manager.log_text();
    assert!(log.contains("agent session refused"), "{log}");
}
