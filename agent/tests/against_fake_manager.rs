//! A fake manager stands in only for what the real one cannot be made to do today: lose an
//! enrollment answer after committing it (the agent retries with the same key), send
//! `RenewNow` (no operator call triggers it yet), and show each message the agent sends
//! (hello, report, heartbeat) as it comes; everything else is in `tests/tests/agent.rs`.

mod support;

use std::path::Path;

use clap::Parser;
use opi_agent::cli::Cli;
use opi_agent::paths::{StatePaths, DEFAULT_STATE_DIR};
use opi_agent::{store, Error};
use opi_proto::v1::ConditionStatus;
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

    /// Writes `health.toml` under the root.
    fn health_settings(&self, text: &str) {
        let path = self.root().join("etc/opi-agent/health.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
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
        .expect(|e| matches!(e, Event::Hello { serial } if *serial != old_serial))
        .await;
    let Event::Hello { serial } = hello else {
        unreachable!()
    };
    assert_eq!(store::load(&node.paths()).unwrap().leaf.serial, serial);
}

#[tokio::test]
async fn agent_sends_its_conditions_at_hello_and_again_when_one_changes() {
    let mut manager = FakeManager::start("prod").await;
    manager
        .script
        .heartbeat_secs
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let node = Node::new();
    node.enroll(&manager, manager.pin.to_string())
        .await
        .unwrap();
    node.health_settings("version = 1\nchecks = [\"RebootRequired\"]\n");
    std::fs::create_dir_all(node.root().join("var/run")).unwrap();
    let _agent = node.start_agent();

    let reboot = |status| ("RebootRequired".to_string(), status);
    let hello = manager
        .expect(|e| matches!(e, Event::Conditions { from: "hello", .. }))
        .await;
    let Event::Conditions { conditions, .. } = hello else {
        unreachable!()
    };
    assert!(
        conditions.contains(&reboot(ConditionStatus::Ok)),
        "{conditions:?}"
    );
    let beat = manager
        .expect(|e| matches!(e, Event::Heartbeat { .. }))
        .await;
    assert_eq!(
        beat,
        Event::Heartbeat {
            conditions_observed: true
        }
    );

    std::fs::write(node.root().join("var/run/reboot-required"), "").unwrap();
    let report = manager
        .expect(|e| matches!(e, Event::Conditions { from: "report", .. }))
        .await;
    let Event::Conditions { conditions, .. } = report else {
        unreachable!()
    };
    assert!(
        conditions.contains(&reboot(ConditionStatus::Problem)),
        "{conditions:?}"
    );
    assert!(node.paths().conditions().exists());
}
