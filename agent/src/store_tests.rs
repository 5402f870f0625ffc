use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::cert::testing::{new_key, TestFleet};
use crate::config::CONFIG_VERSION;

struct Enrolled {
    _dir: tempfile::TempDir,
    paths: StatePaths,
    fleet: TestFleet,
}

fn config() -> AgentConfig {
    AgentConfig {
        version: CONFIG_VERSION,
        fleet: "prod".into(),
        node: "worker-1".into(),
        pool: "workers".into(),
        managers: vec!["https://m1:7443".into()],
        heartbeat_interval_secs: 10,
        enrolled_at: time::macros::datetime!(2025-01-02 03:04:05 UTC),
    }
}

/// A node enrolled through the real enrollment steps, in a temporary root.
fn enrolled() -> Enrolled {
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(dir.path(), Path::new("/var/lib/opi-agent"));
    let fleet = TestFleet::new("prod");
    let (key, _) = pending_key(&paths).unwrap();
    let chain = fleet.node_chain("worker-1", &key);
    commit_enrollment(&paths, &chain, &fleet.root.cert_pem, &config()).unwrap();
    Enrolled {
        _dir: dir,
        paths,
        fleet,
    }
}

/// A renewed key and certificate, not yet stored.
fn renewed(node: &Enrolled) -> (SecretPem, String) {
    let (key, pem) = new_key();
    (pem, node.fleet.node_chain("worker-1", &key))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn enrolled_state_round_trips_with_a_private_key_file() {
    let node = enrolled();
    let state = load(&node.paths).unwrap();
    assert_eq!(state.config, config());
    assert_eq!(state.leaf.identity, Identity::node("prod", "worker-1"));
    assert_eq!(mode(&node.paths.node_key()), 0o600);
    assert_eq!(mode(&node.paths.dir), 0o700);
    assert!(!node.paths.pending_key().exists());
}

#[test]
fn pending_key_is_reused_by_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(dir.path(), Path::new("state"));
    let (first, reused_first) = pending_key(&paths).unwrap();
    let (second, reused_second) = pending_key(&paths).unwrap();
    assert!(!reused_first);
    assert!(reused_second);
    assert_eq!(first.public_key_raw(), second.public_key_raw());
    assert_eq!(mode(&paths.pending_key()), 0o600);
}

#[test]
fn key_moved_in_place_before_the_settings_is_taken_back_by_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(dir.path(), Path::new("state"));
    let (first, _) = pending_key(&paths).unwrap();
    fs::rename(paths.pending_key(), paths.node_key()).unwrap();
    let (second, reused) = pending_key(&paths).unwrap();
    assert!(reused);
    assert_eq!(first.public_key_raw(), second.public_key_raw());
}

#[test]
fn renewal_replaces_key_and_certificate_together() {
    let node = enrolled();
    let before = load(&node.paths).unwrap();
    let (key, chain) = renewed(&node);
    store_renewed(&node.paths, &key, &chain).unwrap();
    let after = load(&node.paths).unwrap();
    assert_ne!(after.leaf.serial, before.leaf.serial);
    assert_eq!(mode(&node.paths.node_key()), 0o600);
    assert!(!node.paths.next_key().exists() && !node.paths.next_cert().exists());
}

#[test]
fn crash_after_key_rename_finishes_the_renewal_at_load() {
    let node = enrolled();
    let (key, chain) = renewed(&node);
    files::write_secret(&node.paths.next_key(), key.expose().as_bytes()).unwrap();
    files::write_public(&node.paths.next_cert(), chain.as_bytes()).unwrap();
    fs::rename(node.paths.next_key(), node.paths.node_key()).unwrap();

    let state = load(&node.paths).unwrap();
    assert_eq!(state.chain_pem, chain);
    assert!(!node.paths.next_cert().exists());
}

#[test]
fn crash_before_any_rename_finishes_the_renewal_at_load() {
    let node = enrolled();
    let (key, chain) = renewed(&node);
    files::write_secret(&node.paths.next_key(), key.expose().as_bytes()).unwrap();
    files::write_public(&node.paths.next_cert(), chain.as_bytes()).unwrap();

    let state = load(&node.paths).unwrap();
    assert_eq!(state.chain_pem, chain);
    assert_eq!(state.key, key);
}

#[test]
fn crash_before_the_certificate_was_written_keeps_the_old_pair() {
    let node = enrolled();
    let before = load(&node.paths).unwrap();
    let (key, _) = renewed(&node);
    files::write_secret(&node.paths.next_key(), key.expose().as_bytes()).unwrap();

    let state = load(&node.paths).unwrap();
    assert_eq!(state.leaf.serial, before.leaf.serial);
    assert!(!node.paths.next_key().exists());
}

#[test]
fn leftover_certificate_for_another_key_is_discarded() {
    let node = enrolled();
    let before = load(&node.paths).unwrap();
    let (_, chain) = renewed(&node);
    files::write_public(&node.paths.next_cert(), chain.as_bytes()).unwrap();

    let state = load(&node.paths).unwrap();
    assert_eq!(state.leaf.serial, before.leaf.serial);
    assert!(!node.paths.next_cert().exists());
}

#[test]
fn mismatched_key_and_certificate_are_refused_naming_both_files() {
    let node = enrolled();
    let (other, _) = new_key();
    files::write_secret(&node.paths.node_key(), other.serialize_pem().as_bytes()).unwrap();
    let error = load(&node.paths).unwrap_err();
    assert!(matches!(error, StoreError::KeyMismatch { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("node.key") && message.contains("node.pem"),
        "{message}"
    );
}

#[test]
fn loading_an_unenrolled_node_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(dir.path(), Path::new("state"));
    let error = load(&paths).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::LoadConfig(ConfigError::NotEnrolled { .. })
        ),
        "{error}"
    );
}
