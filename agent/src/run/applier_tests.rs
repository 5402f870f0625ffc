use std::path::Path;

use super::*;
use crate::apply::verify::ProbeFuture;

/// The manager check always passes: these tests are about which generation is taken; the
/// end-to-end tests reach a real manager.
struct Reachable;

impl ManagerProbe for Reachable {
    fn reachable(&self) -> ProbeFuture<'_> {
        Box::pin(async { Ok("reachable".to_string()) })
    }
}

const PROFILE: &str = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  baseline: anssi-bp028-minimal\n  overrides:\n    sysctls:\n      net.ipv4.tcp_syncookies: 1\n";

/// A task on an empty node root, and what it reports.
fn task(root: &Path) -> (Task, watch::Receiver<Reports>) {
    let paths = StatePaths::new(root, Path::new(crate::paths::DEFAULT_STATE_DIR));
    std::fs::create_dir_all(&paths.dir).unwrap();
    let (sender, reports) = watch::channel(Reports::default());
    let task = Task {
        node: Node::new(
            &paths,
            Path::new(DEFAULT_PROC_SYS),
            Path::new(DEFAULT_DBUS_SOCKET),
        ),
        paths,
        state: ProfileState::empty(),
        reports: sender,
        manager: Arc::new(Reachable),
        drift_reported: None,
        drift_remediated: None,
        signers: Vec::new(),
    };
    (task, reports)
}

fn desired(generation: u64, yaml: &str) -> DesiredProfile {
    DesiredProfile {
        pool: "workers".into(),
        generation,
        epoch: 1,
        yaml: yaml.into(),
        digest: digest(yaml),
        signatures: Vec::new(),
    }
}

fn latest(reports: &watch::Receiver<Reports>) -> (ApplyOutcome, String, u64) {
    let reports = reports.borrow();
    let report = reports.latest.clone().expect("a report");
    (report.outcome(), report.reason, reports.revision)
}

#[tokio::test]
async fn a_new_generation_is_applied_and_becomes_the_nodes() {
    let root = tempfile::tempdir().unwrap();
    let (mut task, reports) = task(root.path());

    task.on_profile(desired(3, PROFILE)).await;

    let (outcome, reason, _) = latest(&reports);
    assert_eq!(outcome, ApplyOutcome::Applied, "{reason}");
    let id = GenerationId {
        epoch: 1,
        generation: 3,
    };
    assert_eq!(reports.borrow().applied, Some(id));
    let report = reports.borrow().latest.clone().unwrap();
    assert!(
        report
            .changes
            .iter()
            .any(|c| c == "create /etc/sysctl.d/90-opi-fleet.conf"),
        "{:?}",
        report.changes
    );
    let stored = ProfileState::load(&task.paths.profile()).unwrap();
    assert_eq!(stored.applied_id(), Some(id));
    assert!(root.path().join("etc/sysctl.d/90-opi-fleet.conf").exists());
}

#[tokio::test]
async fn an_older_generation_is_refused_without_touching_the_node() {
    let root = tempfile::tempdir().unwrap();
    let (mut task, reports) = task(root.path());
    task.on_profile(desired(5, PROFILE)).await;
    let written = std::fs::read(root.path().join("etc/sysctl.d/90-opi-fleet.conf")).unwrap();

    let older = PROFILE.replace("tcp_syncookies: 1", "tcp_syncookies: 0");
    task.on_profile(desired(4, &older)).await;

    let (outcome, reason, _) = latest(&reports);
    assert_eq!(outcome, ApplyOutcome::Refused);
    assert!(
        reason.contains("generation 4 (epoch 1) is older than generation 5 (epoch 1)"),
        "{reason}"
    );
    let now = std::fs::read(root.path().join("etc/sysctl.d/90-opi-fleet.conf")).unwrap();
    assert_eq!(now, written);
    assert_eq!(task.state.applied_id().map(|id| id.generation), Some(5));
}

#[tokio::test]
async fn a_document_that_does_not_match_its_digest_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (mut task, reports) = task(root.path());
    let mut profile = desired(2, PROFILE);
    profile.yaml.push_str("# changed on the way\n");

    task.on_profile(profile).await;

    let (outcome, reason, _) = latest(&reports);
    assert_eq!(outcome, ApplyOutcome::Refused);
    assert!(reason.contains("does not match its digest"), "{reason}");
    assert!(!root.path().join("etc/sysctl.d/90-opi-fleet.conf").exists());
}

#[tokio::test]
async fn a_failed_generation_sent_again_is_reported_again_not_retried() {
    let root = tempfile::tempdir().unwrap();
    let floor = root.path().join("etc/opi-agent/floor.toml");
    std::fs::create_dir_all(floor.parent().unwrap()).unwrap();
    std::fs::write(
        &floor,
        "version = 1\n[sysctls.\"net.ipv4.tcp_syncookies\"]\nmin = 2\n",
    )
    .unwrap();
    let (mut task, reports) = task(root.path());

    task.on_profile(desired(7, PROFILE)).await;
    let (outcome, reason, first) = latest(&reports);
    assert_eq!(outcome, ApplyOutcome::Refused);
    assert!(
        reason.contains("lowers the node's hardening floor"),
        "{reason}"
    );
    assert_eq!(first, 2, "applying, then refused");

    task.on_profile(desired(7, PROFILE)).await;
    let (outcome, again, second) = latest(&reports);
    assert_eq!((outcome, again), (ApplyOutcome::Refused, reason));
    assert_eq!(second, first + 1, "one report, and no second apply");
}

#[tokio::test]
async fn the_generation_applied_is_answered_again_without_work() {
    let root = tempfile::tempdir().unwrap();
    let (mut task, reports) = task(root.path());
    task.on_profile(desired(3, PROFILE)).await;
    let record = std::fs::read(task.node.applied()).unwrap();

    task.on_profile(desired(3, PROFILE)).await;

    let (outcome, reason, _) = latest(&reports);
    assert_eq!(outcome, ApplyOutcome::Applied);
    assert_eq!(reason, "the node already runs this generation");
    assert_eq!(std::fs::read(task.node.applied()).unwrap(), record);
}
