//! The manager's limits, each against a real manager: a stalled TLS handshake is dropped
//! after `--handshake-timeout`, oversized messages are refused on every service, refused
//! enrollments from a rate-limited address are audited, and two agents sharing one node
//! certificate raise an identity conflict event while the newest session keeps winning.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use opi_proto::v1 as pb;
use opi_tests::{grpc, ok, Agent, Manager};
use tempfile::TempDir;
use tonic::Code;

#[test]
fn a_stalled_tls_handshake_is_dropped_after_its_timeout() {
    let dir = TempDir::new().unwrap();
    let mut manager =
        Manager::init(dir.path(), "limits").with_args(&["--handshake-timeout", "500ms"]);
    manager.start();

    let mut stalled = TcpStream::connect(manager.addr.unwrap()).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    let read = stalled.read(&mut byte);
    let waited = start.elapsed();
    println!("stalled handshake dropped after {waited:?}");
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(
        waited >= Duration::from_millis(400),
        "dropped too early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "kept too long: {waited:?}");
    // The manager still serves everyone else.
    ok(manager.opictl().run(&["status"]));
}

#[test]
fn oversized_agent_operator_and_login_messages_are_refused() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "limits");
    manager.start();
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    let agent = Agent::new(dir.path(), "big");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = manager.endpoint();
    let (session, profile, login) = runtime.block_on(async {
        let mut client = grpc::agent(&endpoint, &manager.data_dir, "limits", &agent.state_dir())
            .await
            .unwrap();
        let hello = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                agent_version: grpc::AGENT_VERSION.into(),
                boot_id: "b".repeat(300 * 1024),
                ..Default::default()
            })),
        };
        let session = match client.session(tokio_stream::iter(vec![hello])).await {
            Ok(response) => response.into_inner().message().await.map(|_| ()),
            Err(status) => Err(status),
        };

        let mut admin = grpc::admin(&endpoint, &manager.data_dir).await.unwrap();
        let request = pb::SetProfileRequest {
            pool: "workers".into(),
            yaml: "#".repeat(2 * 1024 * 1024),
            strategy: None,
            signatures: Vec::new(),
        };
        let profile = admin.set_profile(request).await.map(|_| ());

        let channel = grpc::anonymous(&endpoint, &manager.ca_pin()).await.unwrap();
        let request = pb::LoginRequest {
            code: "x".into(),
            csr_der: vec![0; 100 * 1024],
        };
        let login = pb::login_client::LoginClient::new(channel)
            .login(request)
            .await
            .map(|_| ());
        (session, profile, login)
    });
    for (what, result) in [("session", session), ("profile", profile), ("login", login)] {
        let status = result.expect_err(what);
        assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{what}: {status}"
        );
        assert!(status.message().contains("too large"), "{what}: {status}");
    }
}

#[test]
fn a_rate_limited_address_is_refused_clearly_and_audited_once() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "limits");
    manager.start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let codes = runtime.block_on(async {
        let mut client = grpc::enrollment(&manager.endpoint(), &manager.ca_pin())
            .await
            .unwrap();
        let mut codes = Vec::new();
        for _ in 0..13 {
            let request = pb::EnrollRequest {
                token: "0123456789ab.abcdefghijklmnopqrstuvwxyz234567".into(),
                ..Default::default()
            };
            codes.push(client.enroll(request).await.unwrap_err().code());
        }
        codes
    });
    assert!(
        codes[..10].iter().all(|c| *c == Code::Unauthenticated),
        "{codes:?}"
    );
    assert!(
        codes[10..].iter().all(|c| *c == Code::ResourceExhausted),
        "{codes:?}"
    );

    let audit = manager
        .opictl()
        .json(&["audit", "--action", "node.enroll", "--limit", "100"]);
    let entries = audit.as_array().unwrap();
    let limited: Vec<_> = entries
        .iter()
        .filter(|e| e["detail"].as_str().unwrap().contains("too many failed"))
        .collect();
    assert_eq!(
        entries.len(),
        11,
        "ten failures and one rate-limit entry: {audit}"
    );
    assert_eq!(limited.len(), 1, "{audit}");
    assert_eq!(limited[0]["outcome"], "refused");
    assert!(limited[0]["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[test]
fn two_agents_sharing_one_certificate_raise_a_conflict_event() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "limits").with_args(&["--heartbeat", "1s"]);
    manager.start();
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    let mut first = Agent::new(dir.path(), "twin");
    ok(first.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    let mut second = Agent::new(&dir.path().join("copy"), "twin");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(first.root.join("."))
        .arg(&second.root)
        .status()
        .unwrap();
    assert!(copied.success());

    first.start();
    opi_tests::wait_until(Duration::from_secs(10), "the first twin online", || {
        opi_tests::all_online(&manager.opictl(), &["twin"])
    });
    second.start();
    let events = manager.node_events("twin", "lifecycle", 0, Duration::from_secs(30), |events| {
        events.iter().any(|e| e.reason == "IdentityConflict")
    });
    let conflict = events
        .iter()
        .find(|e| e.reason == "IdentityConflict")
        .unwrap();
    assert!(
        conflict.message.contains("two places at once"),
        "{conflict:?}"
    );
    let audit = manager
        .opictl()
        .json(&["audit", "--action", "node.identity-conflict"]);
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    first.stop();
    second.stop();
}
