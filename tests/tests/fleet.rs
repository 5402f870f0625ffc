//! The foundation end to end: enrollment, sessions, revocation, restarts, secrets.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use opi_tests::{all_online, bin, fails, node, ok, run, wait_until, Agent, Manager, WAIT};
use tempfile::TempDir;

fn agents(dir: &TempDir, manager: &Manager, names: &[&str]) -> Vec<Agent> {
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", names.len() as u32, &["--label", "zone=a"]);
    let pin = manager.ca_pin();
    names
        .iter()
        .map(|name| {
            let agent = Agent::new(dir.path(), name);
            ok(agent.enroll(&manager.endpoint(), &pin, &token));
            agent
        })
        .collect()
}

#[test]
fn enrolls_three_agents_and_sees_them_online_within_two_seconds() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let names = ["node-a", "node-b", "node-c"];
    let mut agents = agents(&dir, &manager, &names);

    let start = Instant::now();
    agents.iter_mut().for_each(Agent::start);
    let opictl = manager.opictl();
    wait_until(Duration::from_secs(2), "three nodes online", || {
        all_online(&opictl, &names)
    });
    println!("three agents online {:?} after start", start.elapsed());

    let nodes = opictl.nodes();
    for name in names {
        let node = node(&nodes, name).expect("node listed");
        assert_eq!(node["pool"], "workers");
        assert_eq!(node["labels"]["zone"], "a");
        assert_eq!(node["connectivity"], "online");
        assert!(time::OffsetDateTime::parse(
            node["last_seen"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
        for key in ["agent_version", "os", "kernel"] {
            assert!(
                !node[key].as_str().unwrap_or_default().is_empty(),
                "{name}: {key} empty in {node}"
            );
        }
    }
    let status = opictl.json(&["status"]);
    assert_eq!(status["online"], 3);
    assert_eq!(status["pools"][0]["pool"], "workers");
}

#[test]
fn manager_killed_with_sigkill_loses_nothing_and_agents_reconnect() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let names = ["keep-1", "keep-2", "gone-3"];
    let mut agents = agents(&dir, &manager, &names);
    agents.iter_mut().for_each(Agent::start);
    let opictl = manager.opictl();
    wait_until(WAIT, "nodes online", || all_online(&opictl, &names));
    let (spare_id, _) = opictl.create_token("spare", 2, &[]);
    ok(opictl.run(&["node", "revoke", "gone-3", "--reason", "disk stolen"]));

    manager.kill();
    manager.start();

    let opictl = manager.opictl();
    wait_until(
        Duration::from_secs(15),
        "surviving agents to reconnect",
        || all_online(&opictl, &names[..2]),
    );
    let nodes = opictl.nodes();
    assert_eq!(nodes.len(), 3, "every enrolled node survives the crash");
    let revoked = node(&nodes, "gone-3").unwrap();
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["connectivity"], "offline");
    let tokens = opictl.json(&["token", "list"]);
    let spare = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == spare_id.as_str())
        .expect("token survives");
    assert_eq!(spare["uses"], 2);
    let audit = ok(opictl.run(&["audit", "--limit", "100"]));
    assert!(audit.contains("node.revoke"), "{audit}");
}

#[test]
fn revoked_node_session_closes_within_one_second_and_stays_refused() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let mut agents = agents(&dir, &manager, &["victim"]);
    let agent = &mut agents[0];
    let opictl = manager.opictl();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (elapsed, status) = runtime.block_on(async {
        let mut client = opi_tests::grpc::agent(
            &manager.endpoint(),
            &manager.data_dir,
            "e2e",
            &agent.state_dir(),
        )
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello()).await.unwrap();
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        inbound.message().await.unwrap().expect("welcome");
        let opictl = opictl.clone();
        let start = Instant::now();
        let revoke =
            tokio::task::spawn_blocking(move || ok(opictl.run(&["node", "revoke", "victim"])));
        let status = loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => break status,
            }
        };
        revoke.await.unwrap();
        (start.elapsed(), status)
    });
    println!("revoked session closed after {elapsed:?}: {status}");
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("revoked"), "{status}");

    agent.start();
    // Refused, the agent neither exits nor gives up: it retries with backoff.
    wait_until(WAIT, "the agent to be refused twice", || {
        let log = agent.log_text();
        let refusals = log
            .lines()
            .filter(|l| l.contains("the manager refuses this node") && l.contains("revoked"));
        refusals.count() >= 2
    });
    assert!(agent.running(), "a refused agent keeps running");
    let nodes = opictl.nodes();
    assert_eq!(node(&nodes, "victim").unwrap()["connectivity"], "offline");
}

#[test]
fn secrets_never_reach_logs_and_key_files_are_0600() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 1, &[]);
    let mut agent = Agent::new(dir.path(), "quiet");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent.start();
    wait_until(WAIT, "node online", || all_online(&opictl, &["quiet"]));
    // A refused attempt with the same (now used) token must not log it either.
    let other = Agent::new(dir.path(), "late");
    fails(other.enroll(&manager.endpoint(), &manager.ca_pin(), &token));

    let secret = token.split_once('.').unwrap().1;
    let key_bodies: Vec<String> = [
        agent.state_dir().join("node.key"),
        manager.data_dir.join("pki/issuing-ca.key"),
        manager.data_dir.join("pki/root-ca.key"),
        manager.data_dir.join("pki/server.key"),
    ]
    .iter()
    .map(|path| {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
        let pem = std::fs::read_to_string(path).unwrap();
        pem.lines().nth(1).expect("PEM body").to_string()
    })
    .collect();
    let bundle_mode = std::fs::metadata(manager.admin_bundle())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(bundle_mode, 0o600);

    let logs = [manager.log_text(), agent.log_text(), other.log_text()].join("\n");
    assert!(logs.contains("node enrolled"), "logs were captured");
    assert!(!logs.contains(secret), "a token secret reached the logs");
    for body in key_bodies {
        assert!(!logs.contains(&body), "a private key reached the logs");
    }
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a private key reached the logs"
    );
}

#[test]
fn roles_limit_what_operators_may_do() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let issue = |name: &str, role: &str| {
        let out = dir.path().join(format!("{name}.toml"));
        ok(run(std::process::Command::new(bin("opi-manager"))
            .args([
                "operator",
                "issue",
                name,
                "--role",
                role,
                "--ttl",
                "1h",
                "--data-dir",
            ])
            .arg(&manager.data_dir)
            .arg("--out")
            .arg(&out)));
        opi_tests::Opictl {
            config: out,
            endpoint: manager.endpoint(),
        }
    };
    let viewer = issue("vera", "viewer");
    let alerting = issue("alex", "alerting");

    assert!(viewer.nodes().is_empty());
    let refused = fails(viewer.run(&["token", "create", "--pool", "p"]));
    assert!(
        refused.contains("role viewer may not create tokens"),
        "{refused}"
    );
    let refused = fails(alerting.run(&["nodes"]));
    assert!(
        refused.contains("role alerting may not list nodes"),
        "{refused}"
    );
    let who = viewer.json(&["whoami"]);
    assert_eq!(who["role"], "viewer");
    let audit = ok(manager.opictl().run(&["audit"]));
    assert!(audit.contains("operator.issue"), "{audit}");
}

fn hello() -> opi_proto::v1::AgentMessage {
    use opi_proto::v1::{agent_message::Body, Hello};
    opi_proto::v1::AgentMessage {
        body: Some(Body::Hello(Hello {
            agent_version: opi_tests::grpc::AGENT_VERSION.into(),
            boot_id: "b".into(),
            ..Default::default()
        })),
    }
}

#[test]
fn maintenance_move_and_delete_are_events_and_audited() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let _agents = agents(&dir, &manager, &["spare-1"]);
    let opictl = manager.opictl();

    let refused = fails(opictl.run(&["node", "maintenance", "on", "spare-1"]));
    assert!(refused.contains("reason"), "{refused}");
    ok(opictl.run(&[
        "node",
        "maintenance",
        "on",
        "spare-1",
        "--reason",
        "disk swap",
    ]));
    let shown = opictl.json(&["node", "show", "spare-1"]);
    assert_eq!(shown["maintenance"]["reason"], "disk swap", "{shown}");
    assert_eq!(opictl.json(&["status"])["maintenance"], 1);

    ok(opictl.run(&["node", "move", "spare-1", "--pool", "batch"]));
    assert_eq!(node(&opictl.nodes(), "spare-1").unwrap()["pool"], "batch");
    ok(opictl.run(&["node", "maintenance", "off", "spare-1"]));
    ok(opictl.run(&[
        "node",
        "delete",
        "spare-1",
        "--reason",
        "returned to vendor",
    ]));
    assert!(opictl.nodes().is_empty());

    let audit = ok(opictl.run(&["audit", "--limit", "100"]));
    for action in [
        "node.maintenance.on",
        "node.move",
        "node.maintenance.off",
        "node.remove",
    ] {
        assert!(audit.contains(action), "{action} audited:\n{audit}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(opi_tests::grpc::admin(
            &manager.endpoint(),
            &manager.data_dir,
        ))
        .unwrap();
    let request = opi_proto::v1::WatchRequest {
        nodes: vec!["spare-1".into()],
        replay_last: 100,
        ..Default::default()
    };
    let events = runtime.block_on(opi_tests::grpc::collect_events(
        &mut client,
        request,
        WAIT,
        |events| {
            events
                .iter()
                .any(|e| e.kind == "lifecycle" && e.to == "removed")
        },
    ));
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.kind != "connectivity" && e.kind != "health" && e.kind != "condition")
        .map(|e| (e.kind.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("maintenance", "on"),
            ("lifecycle", "batch"),
            ("maintenance", "off"),
            ("lifecycle", "removed")
        ]
    );
}
