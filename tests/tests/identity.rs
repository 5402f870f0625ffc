//! Node identities over their life, through real processes and real TLS: forced rotation of a
//! fleet, revocation that closes streams and survives restarts, certificates that expired
//! while the node was offline, re-enrollment only when an operator allowed it, and the
//! manager's own server certificate renewing without a restart.

use std::time::{Duration, Instant};

use opi_proto::v1::agent_client::AgentClient;
use opi_proto::v1::agent_message::Body;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{AgentMessage, Hello, ManagerMessage};
use opi_tests::{
    all_online, fails, grpc, ok, wait_until, wait_until_every, Agent, Manager, POLL_OPICTL, WAIT,
};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// Agents in the rotation test.
const FLEET_SIZE: usize = 20;

/// A started manager of fleet `e2e` with `args` for `serve`, and its directory.
fn manager(args: &[&str]) -> (TempDir, Manager) {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e").with_args(args);
    manager.start();
    (dir, manager)
}

/// Agents `prefix-0`… enrolled in pool `workers` with one token.
fn enrolled(dir: &TempDir, manager: &Manager, prefix: &str, count: usize) -> Vec<Agent> {
    let (_, token) = manager.opictl().create_token("workers", count as u32, &[]);
    (0..count)
        .map(|i| {
            let agent = Agent::new(dir.path(), &format!("{prefix}-{i}"));
            ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
            agent
        })
        .collect()
}

/// The node's current certificate chain and key, as files hold them.
fn credentials(agent: &Agent) -> (String, String) {
    let read = |file: &str| std::fs::read_to_string(agent.state_dir().join(file)).unwrap();
    (read("node.pem"), read("node.key"))
}

/// Opens a session with `(chain, key)` and returns its inbound stream once welcomed.
async fn open_session(
    manager: &Manager,
    (chain, key): &(String, String),
) -> Result<Streaming<ManagerMessage>, tonic::Status> {
    let channel = grpc::with_cert(&manager.endpoint(), &manager.data_dir, "e2e", chain, key)
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
    // The sender must outlive the call: a closed request stream ends the session.
    std::mem::forget(outbox);
    let mut inbound = AgentClient::new(channel)
        .session(ReceiverStream::new(queue))
        .await?
        .into_inner();
    match inbound.message().await?.and_then(|m| m.body) {
        Some(ManagerBody::Welcome(_)) => Ok(inbound),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

#[test]
fn rotating_a_fleet_of_20_changes_every_serial_with_no_node_offline() {
    // A grace period of 3 s: a node whose session stayed down longer would show offline.
    let (dir, manager) = manager(&["--heartbeat", "1s", "--offline-after", "3s"]);
    let mut agents = enrolled(&dir, &manager, "rot", FLEET_SIZE);
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for agent in &mut agents {
        agent.start();
    }
    let opictl = manager.opictl();
    wait_until_every(
        POLL_OPICTL,
        Duration::from_secs(30),
        "20 nodes online",
        || all_online(&opictl, &names),
    );
    let before: Vec<String> = agents.iter().map(|a| a.leaf().serial).collect();
    let old_credentials = credentials(&agents[0]);
    let revision = opictl.json(&["status"])["event_revision"].as_u64().unwrap();

    let started = Instant::now();
    let rotated = opictl.json(&["node", "rotate", "--all", "--reason", "drill"]);
    assert_eq!(
        rotated["asked"].as_array().unwrap().len(),
        FLEET_SIZE,
        "{rotated}"
    );
    assert_eq!(rotated["pending"], serde_json::json!([]));
    wait_until(
        Duration::from_secs(30),
        "every agent to hold a new certificate",
        || {
            agents
                .iter()
                .zip(&before)
                .all(|(agent, old)| agent.leaf().serial != *old)
        },
    );
    let renewed_in = started.elapsed();
    wait_until_every(
        POLL_OPICTL,
        WAIT,
        "every node online with its new certificate",
        || {
            let nodes = opictl.nodes();
            agents.iter().all(|agent| {
                let serial = agent.leaf().serial;
                opi_tests::node(&nodes, &agent.name).is_some_and(|n| {
                    n["connectivity"] == "online"
                        && manager.log_text().contains(&format!("serial={serial}"))
                })
            })
        },
    );
    println!("{FLEET_SIZE} nodes renewed in {renewed_in:?}");

    // Longer than the grace period: an offline transition during the rotation would be here.
    let events = manager.connectivity_events(revision, Duration::from_secs(4));
    assert!(
        events.is_empty(),
        "nodes went offline during the rotation: {events:?}"
    );
    let status = opictl.json(&["status"]);
    assert_eq!(status["online"], FLEET_SIZE, "{status}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = wait_for_refusal(&runtime, &manager, &old_credentials);
    assert!(
        refused
            .message()
            .contains("not a current certificate of node rot-0"),
        "{refused}"
    );
    let audit = opictl.json(&["audit", "--limit", "200"]);
    let rotations = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "node.rotate" && e["detail"] == "drill")
        .count();
    assert_eq!(rotations, FLEET_SIZE);
}

/// Waits until a session with `credentials` is refused (the node's own session with its new
/// certificate supersedes them), and returns the refusal.
fn wait_for_refusal(
    runtime: &tokio::runtime::Runtime,
    manager: &Manager,
    credentials: &(String, String),
) -> tonic::Status {
    let mut refusal = None;
    wait_until(
        WAIT,
        "the superseded certificate to be refused",
        || match runtime.block_on(open_session(manager, credentials)) {
            Ok(_) => false,
            Err(status) => {
                refusal = Some(status);
                true
            }
        },
    );
    let refusal = refusal.expect("refused");
    assert_eq!(refusal.code(), tonic::Code::PermissionDenied, "{refusal}");
    refusal
}

#[test]
fn revoking_a_node_closes_its_stream_within_a_second_and_survives_a_restart() {
    let (dir, mut manager) = manager(&[]);
    let agent = enrolled(&dir, &manager, "rev", 1).remove(0);
    let pair = credentials(&agent);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut inbound = runtime.block_on(open_session(&manager, &pair)).unwrap();
    let closed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let ended = runtime.block_on(async {
            loop {
                match inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return "closed".to_string(),
                    Err(status) => return status.message().to_string(),
                }
            }
        });
        (Instant::now(), ended)
    });

    let asked = Instant::now();
    ok(manager
        .opictl()
        .run(&["node", "revoke", "rev-0", "--reason", "stolen disk"]));
    let (closed_at, reason) = closed.join().unwrap();
    let took = closed_at - asked;
    println!("stream closed {took:?} after `opictl node revoke` started: {reason}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(reason.contains("revoked (stolen disk)"), "{reason}");

    manager.kill();
    manager.start();
    let refused = runtime
        .block_on(open_session(&manager, &pair))
        .expect_err("a revoked certificate is refused after a restart");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        refused
            .message()
            .contains("node rev-0 was revoked (stolen disk)"),
        "{refused}"
    );
}

#[test]
fn a_node_offline_past_its_certificate_expiry_renews_by_itself_within_the_window() {
    let (dir, mut manager) = manager(&["--node-cert-ttl", "10s", "--heartbeat", "1s"]);
    let mut agent = enrolled(&dir, &manager, "late", 1).remove(0);
    let first = agent.leaf();
    // The manager is down while the certificate expires, and the node is not running.
    manager.kill();
    wait_until(Duration::from_secs(20), "the certificate to expire", || {
        OffsetDateTime::now_utc() > first.not_after + time::Duration::seconds(1)
    });
    assert_eq!(agent.status()["expired"], true);
    manager.start();
    agent.start();

    wait_until(WAIT, "the agent to renew its expired certificate", || {
        agent.leaf().serial != first.serial
    });
    let opictl = manager.opictl();
    wait_until_every(POLL_OPICTL, WAIT, "node online", || {
        all_online(&opictl, &["late-0"])
    });
    let log = manager.log_text();
    assert!(
        log.contains("renewing a certificate that expired within the window"),
        "{log}"
    );
    let renewed = format!("replaces {}", first.serial);
    let audit = opictl.json(&["audit", "--limit", "50"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "node.renew"
                && e["detail"].as_str().unwrap_or_default().contains(&renewed)),
        "{audit}"
    );
}

#[test]
fn an_expired_certificate_is_refused_for_anything_but_renewal() {
    let (dir, manager) = manager(&["--node-cert-ttl", "10s"]);
    let agent = enrolled(&dir, &manager, "exp", 1).remove(0);
    let leaf = agent.leaf();
    wait_until(Duration::from_secs(20), "the certificate to expire", || {
        OffsetDateTime::now_utc() > leaf.not_after + time::Duration::seconds(1)
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime
        .block_on(open_session(&manager, &credentials(&agent)))
        .expect_err("an expired certificate opens no session");
    assert!(refused.message().contains("expired"), "{refused}");
}

#[test]
fn a_node_past_the_window_reenrolls_only_once_an_operator_allowed_it() {
    let (dir, manager) = manager(&[
        "--node-cert-ttl",
        "10s",
        "--expired-renewal-window",
        "1s",
        "--heartbeat",
        "1s",
    ]);
    let opictl = manager.opictl();
    let mut agent = enrolled(&dir, &manager, "gone", 1).remove(0);
    ok(opictl.run(&["node", "move", "gone-0", "--pool", "db"]));
    let before = opictl.json(&["node", "show", "gone-0"]);
    let leaf = agent.leaf();
    wait_until(
        Duration::from_secs(20),
        "the window after expiry to pass",
        || OffsetDateTime::now_utc() > leaf.not_after + time::Duration::seconds(2),
    );

    // The agent tries, is refused, says so and does not retry in a loop.
    agent.start();
    wait_until(WAIT, "the agent to record the refusal", || {
        agent.status()["renewal_refused"].is_string()
    });
    let status = agent.status();
    let refusal = status["renewal_refused"].as_str().unwrap();
    assert!(refusal.contains("allow-reenroll gone-0"), "{refusal}");
    let log = agent.log_text();
    assert!(
        log.contains("the manager refuses to renew the expired node certificate"),
        "{log}"
    );
    agent.stop();
    let attempts = manager.log_text().matches("past the window").count();
    assert!(
        attempts <= 2,
        "{attempts} renewal attempts in a few seconds"
    );

    let (_, token) = opictl.create_token("workers", 2, &[]);
    let refused = fails(agent.reenroll(&token));
    assert!(
        refused.contains("no operator allowed it to re-enroll")
            && refused.contains("opictl node allow-reenroll gone-0"),
        "{refused}"
    );

    ok(opictl.run(&["node", "allow-reenroll", "gone-0", "--ttl", "10m"]));
    let done = ok(agent.reenroll(&token));
    assert!(
        done.contains("re-enrolled as node gone-0 in pool db"),
        "{done}"
    );
    let again = fails(agent.reenroll(&token));
    assert!(
        again.contains("no operator allowed it"),
        "the permission is one-shot: {again}"
    );

    let after = opictl.json(&["node", "show", "gone-0"]);
    assert_eq!(after["pool"], "db");
    assert_eq!(after["enrolled_at"], before["enrolled_at"]);
    let kinds: Vec<&str> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap_or_default())
        .collect();
    assert!(
        kinds.contains(&"re-enrolled") && kinds.contains(&"db"),
        "{kinds:?}"
    );
    assert_ne!(agent.leaf().serial, leaf.serial);
    assert_eq!(agent.status()["renewal_refused"], serde_json::Value::Null);

    agent.start();
    wait_until_every(POLL_OPICTL, WAIT, "the re-enrolled node online", || {
        all_online(&opictl, &["gone-0"])
    });
    let audit = opictl.json(&["audit", "--limit", "50"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == "gone-0")
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert!(
        actions.contains(&"node.allow-reenroll") && actions.contains(&"node.reenroll"),
        "{actions:?}"
    );
}

#[test]
fn the_manager_renews_its_server_certificate_without_a_restart_and_warns_of_ca_expiry() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init_with(dir.path(), "e2e", &["--server-cert-ttl", "6s"])
        .with_args(&[
            "--server-cert-ttl",
            "6s",
            "--ca-expiry-warning",
            "7years",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
    manager.start();
    let server_pem = manager.data_dir.join("pki/server.pem");
    let first = opi_pki::serving::CertFacts::of_pem(
        &std::fs::read_to_string(&server_pem).unwrap(),
        "server",
    )
    .unwrap();

    wait_until(
        Duration::from_secs(15),
        "the first certificate to expire",
        || OffsetDateTime::now_utc() > first.not_after + time::Duration::seconds(1),
    );
    // opictl verifies the certificate the manager presents now: an expired one would fail.
    let status = manager.opictl().json(&["status"]);
    let log = manager.log_text();
    assert!(log.contains("server certificate renewed"), "{log}");
    let certificates = status["certificates"].as_array().unwrap();
    let warning = |what: &str| {
        certificates
            .iter()
            .find(|c| c["certificate"] == what)
            .map(|c| c["warning"].clone())
    };
    assert!(warning("server").is_some(), "{status}");
    // Issuing CAs live 5 years, roots 10: only the issuing CA is within 7 years.
    assert_eq!(
        warning("issuing-ca"),
        Some(serde_json::json!(true)),
        "{status}"
    );
    assert_eq!(
        warning("root-ca"),
        Some(serde_json::json!(false)),
        "{status}"
    );
    assert!(log.contains("a fleet CA expires soon"), "{log}");
    let page = manager.scrape();
    assert_eq!(
        opi_tests::sample(
            &page,
            "opi_manager_certificate_expiring{certificate=\"issuing-ca\"}"
        ),
        Some(1.0),
        "{page}"
    );
}

#[test]
fn a_rotation_asked_while_a_node_is_offline_happens_at_its_next_session() {
    let (dir, manager) = manager(&["--heartbeat", "1s"]);
    let mut agent = enrolled(&dir, &manager, "away", 1).remove(0);
    let first = agent.leaf();
    let rotated = manager.opictl().json(&["node", "rotate", "away-0"]);
    assert_eq!(
        rotated["pending"],
        serde_json::json!(["away-0"]),
        "{rotated}"
    );
    assert_eq!(rotated["asked"], serde_json::json!([]));

    // Its 24 h certificate would otherwise renew in 14 h at the earliest.
    agent.start();
    let took = wait_until(WAIT, "the agent to renew at its first session", || {
        agent.leaf().serial != first.serial
    });
    println!("renewed {took:?} after starting");
    let log = manager.log_text();
    assert!(log.contains("pending certificate rotation asked"), "{log}");
}

#[test]
fn viewers_may_neither_rotate_nor_allow_reenrollment() {
    let (dir, manager) = manager(&[]);
    enrolled(&dir, &manager, "ro", 1);
    let viewer = manager.operator(dir.path(), "vera", "viewer");
    for args in [
        &["node", "rotate", "--all"][..],
        &["node", "allow-reenroll", "ro-0"][..],
    ] {
        let refused = fails(viewer.run(args));
        assert!(
            refused.contains("role viewer may not"),
            "{args:?}: {refused}"
        );
    }
}

#[test]
fn a_revoked_node_neither_renews_its_expired_certificate_nor_may_reenroll() {
    let (dir, manager) = manager(&["--node-cert-ttl", "10s"]);
    let agent = enrolled(&dir, &manager, "bad", 1).remove(0);
    let opictl = manager.opictl();
    ok(opictl.run(&["node", "revoke", "bad-0", "--reason", "compromised"]));
    let refused = fails(opictl.run(&["node", "allow-reenroll", "bad-0"]));
    assert!(
        refused.contains("node bad-0 was revoked (compromised)"),
        "{refused}"
    );

    let leaf = agent.leaf();
    wait_until(Duration::from_secs(20), "the certificate to expire", || {
        OffsetDateTime::now_utc() > leaf.not_after + time::Duration::seconds(1)
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(async {
        let mut client = grpc::agent(
            &manager.endpoint(),
            &manager.data_dir,
            "e2e",
            &agent.state_dir(),
        )
        .await
        .unwrap();
        let key = opi_pki::ca::generate_key().unwrap();
        let csr_der = opi_pki::csr::make_node_csr(&key, "bad-0").unwrap();
        client
            .renew(opi_proto::v1::RenewRequest { csr_der })
            .await
            .expect_err("a revoked node does not renew")
    });
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        refused.message().contains("revoked (compromised)"),
        "{refused}"
    );
}
