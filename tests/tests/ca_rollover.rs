//! CA rollover with agents online (`opi-manager ca rotate`, then `ca retire`), through real
//! processes and real TLS: the bundle reaches every agent, issuing switches to the new CA
//! once they all stored it, every node renews from it without going offline, and the old CA
//! is refused after retirement.

use std::process::Command;
use std::time::Duration;

use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::agent_message::Body;
use opi_proto::v1::{AgentMessage, Hello};
use opi_tests::{all_online, bin, grpc, ok, run, wait_until, wait_until_every, Agent, Manager};
use opi_tests::{POLL_OPICTL, WAIT};
use tempfile::TempDir;
use tokio_stream::wrappers::ReceiverStream;

/// Agents online during the rollover.
const AGENTS: usize = 5;
/// Longest wait for one phase of the rollover.
const PHASE: Duration = Duration::from_secs(30);

fn roots(agent: &Agent) -> usize {
    let pem = std::fs::read_to_string(agent.state_dir().join("ca.pem")).unwrap();
    opi_pki::tls::parse_certs(&pem, "ca.pem").unwrap().len()
}

fn ca(manager: &Manager, command: &str) -> String {
    ok(run(Command::new(bin("opi-manager"))
        .args(["ca", command, "--data-dir"])
        .arg(&manager.data_dir)))
}

fn issuing_ca(manager: &Manager) -> String {
    std::fs::read_to_string(manager.data_dir.join("pki/issuing-ca.pem")).unwrap()
}

#[test]
fn a_ca_rollover_with_agents_online_disconnects_none_and_refuses_the_old_ca_after_retirement() {
    let dir = TempDir::new().unwrap();
    let mut manager =
        Manager::init(dir.path(), "e2e").with_args(&["--heartbeat", "1s", "--offline-after", "3s"]);
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", AGENTS as u32, &[]);
    let mut agents: Vec<Agent> = (0..AGENTS)
        .map(|i| {
            let agent = Agent::new(dir.path(), &format!("ca-{i}"));
            ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
            agent
        })
        .collect();
    for agent in &mut agents {
        agent.start();
    }
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_until_every(POLL_OPICTL, WAIT, "agents online", || {
        all_online(&opictl, &names)
    });
    let old_issuer = grpc::issuer(&manager.data_dir, "e2e");
    let old_issuing = issuing_ca(&manager);
    let revision = opictl.json(&["status"])["event_revision"].as_u64().unwrap();

    let rotated = ca(&manager, "rotate");
    assert!(rotated.contains("added to the trust bundle"), "{rotated}");
    let took = wait_until(PHASE, "every agent to store the two-root bundle", || {
        agents.iter().all(|agent| roots(agent) == 2)
    });
    println!("bundle stored by {AGENTS} agents in {took:?}");
    let took = wait_until(
        PHASE,
        "every agent to hold a certificate of the new CA",
        || {
            let issuing = issuing_ca(&manager);
            issuing != old_issuing
                && agents.iter().all(|agent| {
                    std::fs::read_to_string(agent.state_dir().join("node.pem"))
                        .is_ok_and(|chain| chain.ends_with(&issuing))
                })
        },
    );
    println!("every agent renewed from the new CA {took:?} later");
    assert!(!manager.data_dir.join("pki/next").exists());
    wait_until_every(
        POLL_OPICTL,
        WAIT,
        "agents online with new certificates",
        || {
            let log = manager.log_text();
            all_online(&manager.opictl(), &names)
                && agents
                    .iter()
                    .all(|agent| log.contains(&format!("serial={}", agent.leaf().serial)))
        },
    );

    let retired = ca(&manager, "retire");
    assert!(
        retired.contains("certificates of the old CA are refused"),
        "{retired}"
    );
    wait_until(PHASE, "every agent to store the one-root bundle", || {
        agents.iter().all(|agent| roots(agent) == 1)
    });
    let new_root = std::fs::read_to_string(manager.data_dir.join("pki/root-ca.pem")).unwrap();
    for agent in &agents {
        let stored = std::fs::read_to_string(agent.state_dir().join("ca.pem")).unwrap();
        assert_eq!(stored, new_root, "{} trusts the new root alone", agent.name);
    }

    let refused = old_ca_session(&manager, &old_issuer);
    assert!(
        refused.message().contains("not signed by this fleet's CA"),
        "{refused}"
    );
    let events = manager.connectivity_events(revision, Duration::from_secs(4));
    assert!(
        events.is_empty(),
        "nodes went offline during the rollover: {events:?}"
    );
    let status = manager.opictl().json(&["status"]);
    assert_eq!(status["online"], AGENTS, "{status}");
    let audit = manager.opictl().json(&["audit", "--limit", "200"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert!(
        actions.contains(&"ca.rotate") && actions.contains(&"ca.retire"),
        "{actions:?}"
    );
}

/// A session opened with a fresh node certificate of the retired issuing CA: its refusal.
fn old_ca_session(manager: &Manager, old_issuer: &opi_pki::Issuer) -> tonic::Status {
    let key = opi_pki::ca::generate_key().unwrap();
    let cert = old_issuer
        .issue_node("ca-0", &key, Duration::from_secs(600))
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = grpc::with_cert(
            &manager.endpoint(),
            &manager.data_dir,
            "e2e",
            &cert.chain_pem,
            &key.serialize_pem(),
        )
        .await
        .unwrap();
        let hello = AgentMessage {
            body: Some(Body::Hello(Hello {
                agent_version: grpc::AGENT_VERSION.into(),
                ..Default::default()
            })),
        };
        let (outbox, queue) = tokio::sync::mpsc::channel(1);
        outbox.send(hello).await.unwrap();
        AgentClient::new(channel)
            .session(ReceiverStream::new(queue))
            .await
            .expect_err("a certificate of the retired CA is refused")
    })
}
