//! The agent against a fake manager on `127.0.0.1:0`, with real TLS and a CA made in the test:
//! enrollment, the session, renewal on request, and refusals.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use opi_agent::cli::Cli;
use opi_agent::enroll::EnrollError;
use opi_agent::paths::{StatePaths, DEFAULT_STATE_DIR};
use opi_agent::{store, Error};
use support::{Event, FakeManager};
use tokio::task::JoinHandle;

const TOKEN: &str = "abcdef.0123456789abcdef";

/// A node's root directory with a token file in it.
struct Node {
    root: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Self { root }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn paths(&self) -> StatePaths {
        StatePaths::new(self.root(), Path::new(DEFAULT_STATE_DIR))
    }

    async fn enroll(&self, manager: &FakeManager, pin: String) -> Result<(), Error> {
        let token_file = self.root().join("token");
        let cli = Cli::try_parse_from([
            "opi-agent".into(),
            "enroll".into(),
            "--manager".into(),
            manager.endpoint.clone(),
            "--ca-pin".into(),
            pin,
            "--token-file".into(),
            token_file.display().to_string(),
            "--name".into(),
            "worker-1".into(),
            "--root".into(),
            self.root().display().to_string(),
        ])
        .unwrap();
        opi_agent::run(cli).await
    }

    fn start_agent(&self) -> Agent {
        let cli = Cli::try_parse_from([
            "opi-agent".into(),
            "run".into(),
            "--root".into(),
            self.root().display().to_string(),
        ])
        .unwrap();
        Agent(tokio::spawn(opi_agent::run(cli)))
    }
}

/// A running agent, stopped when dropped.
struct Agent(JoinHandle<Result<(), Error>>);

impl Drop for Agent {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn mode(path: PathBuf) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn enrollment_stores_a_private_key_and_the_fleet_identity() {
    let mut manager = FakeManager::start("prod").await;
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();

    let Event::Enroll { token, .. } = manager.expect(|e| matches!(e, Event::Enroll { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(token, TOKEN);
    let paths = node.paths();
    let state = store::load(&paths).unwrap();
    assert_eq!(state.config.node, "worker-1");
    assert_eq!(state.config.fleet, "prod");
    assert_eq!(state.config.pool, "workers");
    assert_eq!(mode(paths.node_key()), 0o600);
    assert_eq!(mode(paths.dir.clone()), 0o700);
    assert!(!paths.pending_key().exists());
}

#[tokio::test]
async fn enrollment_refuses_a_manager_that_does_not_match_the_pin() {
    let manager = FakeManager::start("prod").await;
    let impostor_pin = FakeManager::start("prod").await.pin;
    let node = Node::new();
    let error = node
        .enroll(&manager, impostor_pin.to_string())
        .await
        .unwrap_err();

    assert!(
        matches!(error, Error::Enroll(EnrollError::RefuseManager { .. })),
        "{error:?}"
    );
    let shown = opi_agent::ErrorChain(&error).to_string();
    assert!(shown.contains(&impostor_pin.to_string()), "{shown}");
    assert!(shown.contains("--ca-pin"), "{shown}");
    assert!(!node.paths().config().exists());
    assert!(!node.paths().node_cert().exists());
}

#[tokio::test]
async fn enrollment_stops_on_the_manager_refusal_and_shows_its_message() {
    let manager = FakeManager::start("prod").await;
    let refusal = tonic::Status::permission_denied("token expired; create a new one");
    manager
        .script
        .enroll_failures
        .lock()
        .unwrap()
        .push_back(refusal);
    let node = Node::new();
    let error = node
        .enroll(&manager, manager.pin.to_string())
        .await
        .unwrap_err();

    let shown = opi_agent::ErrorChain(&error).to_string();
    assert!(shown.contains("token expired; create a new one"), "{shown}");
    assert!(shown.contains("PermissionDenied"), "{shown}");
    assert_eq!(error.exit_code(), 1);
    assert!(!node.paths().config().exists());
}

#[tokio::test]
async fn enrollment_retried_after_a_lost_answer_sends_the_same_key() {
    let mut manager = FakeManager::start("prod").await;
    let lost = tonic::Status::unavailable("answer lost");
    manager
        .script
        .enroll_failures
        .lock()
        .unwrap()
        .push_back(lost);
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();

    let first = manager.expect(|e| matches!(e, Event::Enroll { .. })).await;
    let second = manager.expect(|e| matches!(e, Event::Enroll { .. })).await;
    assert_eq!(first, second);
}

#[tokio::test]
async fn enrollment_is_refused_when_the_node_is_already_enrolled() {
    let manager = FakeManager::start("prod").await;
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();
    let error = node
        .enroll(&manager, manager.pin.to_string())
        .await
        .unwrap_err();

    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("worker-1"), "{error}");
}

#[tokio::test]
async fn agent_says_hello_then_heartbeats_at_the_interval_the_manager_sets() {
    let mut manager = FakeManager::start("prod").await;
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();
    let _agent = node.start_agent();

    let hello = manager.expect(|e| matches!(e, Event::Hello { .. })).await;
    let Event::Hello { has_summary, .. } = hello else {
        unreachable!()
    };
    assert!(has_summary);
    // The manager's Welcome sets a 1 s interval, well below the 10 s given at enrollment.
    let beat = tokio::time::timeout(
        Duration::from_secs(5),
        manager.expect(|e| matches!(e, Event::Heartbeat { seq: 2, .. })),
    )
    .await;
    assert!(beat.is_ok(), "no second heartbeat within 5 s");
}

#[tokio::test]
async fn agent_renews_on_request_and_reconnects_with_the_new_certificate() {
    let mut manager = FakeManager::start("prod").await;
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();
    let old_serial = store::load(&node.paths()).unwrap().leaf.serial;
    manager
        .script
        .renew_now
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _agent = node.start_agent();

    let renew = manager.expect(|e| matches!(e, Event::Renew { .. })).await;
    assert_eq!(
        renew,
        Event::Renew {
            serial: old_serial.clone()
        }
    );
    let hello = manager
        .expect(|e| matches!(e, Event::Hello { serial, .. } if *serial != old_serial))
        .await;
    let Event::Hello { serial, .. } = hello else {
        unreachable!()
    };
    assert_eq!(store::load(&node.paths()).unwrap().leaf.serial, serial);
}

#[tokio::test]
async fn agent_stores_the_manager_endpoints_announced_at_welcome() {
    let mut manager = FakeManager::start("prod").await;
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();
    let announced = vec![
        manager.endpoint.clone(),
        "https://m2.example:7443".to_string(),
    ];
    *manager.script.announced.lock().unwrap() = announced.clone();
    let _agent = node.start_agent();

    manager
        .expect(|e| matches!(e, Event::Heartbeat { .. }))
        .await;
    let stored = store::load(&node.paths()).unwrap().config.managers;
    assert_eq!(stored, announced);
}

#[tokio::test]
async fn agent_keeps_retrying_a_manager_that_refuses_the_node() {
    let mut manager = FakeManager::start("prod").await;
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();
    let revoked = tonic::Status::permission_denied("node revoked");
    *manager.script.refuse_sessions.lock().unwrap() = Some(revoked);
    let _agent = node.start_agent();

    manager.expect(|e| *e == Event::SessionRefused).await;
    manager.expect(|e| *e == Event::SessionRefused).await;
}
