//! The engine against a directory tree (`--root` other than `/`): drift and the files the
//! journal restores.

use std::fs;
use std::path::Path;

use opi_profile::desired::{KUBELET_CONFIG, SYSCTL_FILE};
use opi_profile::{Floor, Profile};

use super::engine;
use super::node::Node;
use super::verify::Verifier;
use crate::conditions::config::HealthConfig;
use crate::conditions::NodeFiles;
use crate::paths::StatePaths;

const PROFILE: &str = "apiVersion: opi.fleet/v1
kind: NodeProfile
hardening: {baseline: anssi-bp028-intermediary}
kubelet: {maxPods: 50}
";

fn node(root: &Path) -> Node {
    let paths = StatePaths::new(root, Path::new(crate::paths::DEFAULT_STATE_DIR));
    Node::new(
        &paths,
        Path::new("/proc/sys"),
        Path::new("/nonexistent/bus"),
    )
}

/// A verifier with the kubelet check off: no kubelet runs here.
fn verifier(root: &Path) -> Verifier {
    let health = HealthConfig::parse(
        Path::new("health.toml"),
        "version = 1\nchecks = [\"DiskPressure\"]\n",
    )
    .unwrap();
    Verifier {
        health,
        files: NodeFiles::new(root),
        manager: None,
    }
}

async fn apply(root: &Path) -> engine::Applied {
    let desired = Profile::from_yaml(PROFILE)
        .unwrap()
        .desired_state(&Floor::default())
        .unwrap();
    engine::apply(&node(root), &desired, "sha", &verifier(root))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_hand_edit_of_a_managed_file_shows_as_drift_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    apply(dir.path()).await;
    assert!(
        super::drift(&node(dir.path())).unwrap().is_empty(),
        "no drift right after an apply"
    );

    let kubelet = dir.path().join(KUBELET_CONFIG.trim_start_matches('/'));
    let text = fs::read_to_string(&kubelet)
        .unwrap()
        .replace("maxPods: 50", "maxPods: 500");
    fs::write(&kubelet, text).unwrap();
    let sysctls = dir.path().join(SYSCTL_FILE.trim_start_matches('/'));
    fs::set_permissions(
        &sysctls,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();

    let drift = super::drift(&node(dir.path())).unwrap();
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert_eq!(drift[0].item, SYSCTL_FILE, "{drift:?}");
    assert!(drift[0].what.contains("0666"), "{drift:?}");
    assert_eq!(drift[1].item, KUBELET_CONFIG, "{drift:?}");
    assert!(drift[1].what.contains("edited"), "{drift:?}");
}

#[tokio::test]
async fn a_removed_managed_file_shows_as_drift_and_a_second_apply_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    apply(dir.path()).await;
    let kubelet = dir.path().join(KUBELET_CONFIG.trim_start_matches('/'));
    fs::remove_file(&kubelet).unwrap();
    let drift = super::drift(&node(dir.path())).unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(drift[0].what.contains("removed"), "{drift:?}");

    let again = apply(dir.path()).await;
    assert!(again.changed);
    assert_eq!(again.plan.changed_files().count(), 1);
    assert!(super::drift(&node(dir.path())).unwrap().is_empty());
}
