//! Pool profiles through the real manager and `opictl`: validation before storing, fleet-wide
//! generations, redaction in every answer, diffs, roles, and persistence across a SIGKILL.

use std::path::{Path, PathBuf};

use opi_tests::{fails, ok, Manager};
use tempfile::TempDir;

/// The worker profile shipped in the repository.
fn worker_profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiles/worker.yaml")
}

/// The shipped worker profile with one value changed, written under `dir`.
fn edited_profile(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(worker_profile()).expect("worker profile");
    let edited = text.replace("maxPods: 110", "maxPods: 90");
    assert_ne!(text, edited, "the worker profile sets maxPods: 110");
    let path = dir.join("worker-90.yaml");
    std::fs::write(&path, edited).expect("write edited profile");
    path
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn profile_generations_are_stored_redacted_diffed_and_survive_sigkill() {
    let dir = TempDir::new().expect("temp dir");
    let mut manager = Manager::init(dir.path(), "profiles");
    manager.start();
    let opictl = manager.opictl();
    let worker = worker_profile();

    let first = opictl.json(&["profile", "set", "workers", "-f", path_arg(&worker)]);
    assert_eq!(first["generation"], 1);
    assert_eq!(first["changed"], true);
    assert_eq!(first["epoch"], 1);
    let same = opictl.json(&["profile", "set", "workers", "-f", path_arg(&worker)]);
    assert_eq!(
        (same["generation"].as_u64(), same["changed"].as_bool()),
        (Some(1), Some(false))
    );

    let edited = edited_profile(dir.path());
    let second = opictl.json(&["profile", "set", "workers", "-f", path_arg(&edited)]);
    assert_eq!(second["generation"], 2);
    // Generations are fleet-wide: another pool's first profile is generation 3.
    let other = opictl.json(&["profile", "set", "edge", "-f", path_arg(&worker)]);
    assert_eq!(other["generation"], 3);

    let shown = ok(opictl.run(&["profile", "show", "workers"]));
    assert!(shown.contains("generation"), "{shown}");
    assert!(shown.contains("maxPods: 90"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(
        !shown.contains("change-me-registry-password"),
        "secret shown: {shown}"
    );
    let old = opictl.json(&["profile", "show", "workers", "--generation", "1"]);
    let old_yaml = old["yaml"].as_str().expect("yaml");
    assert!(
        old_yaml.contains("maxPods: 110") && !old_yaml.contains("change-me"),
        "{old_yaml}"
    );

    let diff = ok(opictl.run(&["profile", "diff", "workers"]));
    assert!(
        diff.contains("-  maxPods: 110") && diff.contains("+  maxPods: 90"),
        "{diff}"
    );
    assert!(
        !diff.contains("change-me-registry-password"),
        "secret in diff: {diff}"
    );
    let draft = ok(opictl.run(&["profile", "diff", "workers", "-f", path_arg(&edited)]));
    assert_eq!(draft, "no difference\n");

    manager.kill();
    manager.start();
    let latest = opictl.json(&["profile", "show", "workers"]);
    assert_eq!(latest["generation"], 2);
    let next = opictl.json(&["profile", "set", "workers", "-f", path_arg(&worker)]);
    assert_eq!(
        next["generation"], 4,
        "the generation counter survived the kill"
    );

    let audit = ok(opictl.run(&["audit", "--limit", "20"]));
    assert!(audit.contains("profile.set"), "{audit}");
    assert!(!manager.log_text().contains("change-me-registry-password"));
}

#[test]
fn an_invalid_profile_is_refused_whole_with_every_problem_and_nothing_stored() {
    let dir = TempDir::new().expect("temp dir");
    let mut manager = Manager::init(dir.path(), "profiles");
    manager.start();
    let opictl = manager.opictl();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: opi.fleet/v1\n\
         kind: NodeProfile\n\
         colour: blue\n\
         kubelet:\n  staticPodPath: /etc/kubernetes/manifests\n  authorization: {mode: AlwaysAllow}\n",
    )
    .expect("write bad profile");

    let refused = fails(opictl.run(&["profile", "set", "workers", "-f", path_arg(&bad)]));
    assert!(refused.contains("nothing stored"), "{refused}");
    for path in [
        "colour",
        "kubelet.staticPodPath",
        "kubelet.authorization.mode",
    ] {
        assert!(
            refused.contains(path),
            "problem at {path} not named: {refused}"
        );
    }
    let missing = fails(opictl.run(&["profile", "show", "workers"]));
    assert!(missing.contains("pool workers has no profile"), "{missing}");
    let audit = ok(opictl.run(&["audit"]));
    assert!(
        audit.contains("profile.set") && audit.contains("refused"),
        "{audit}"
    );
}

#[test]
fn viewers_read_profiles_but_cannot_set_them() {
    let dir = TempDir::new().expect("temp dir");
    let mut manager = Manager::init(dir.path(), "profiles");
    manager.start();
    let worker = worker_profile();
    ok(manager
        .opictl()
        .run(&["profile", "set", "workers", "-f", path_arg(&worker)]));
    let viewer = manager.operator(dir.path(), "vera", "viewer");

    let refused = fails(viewer.run(&["profile", "set", "workers", "-f", path_arg(&worker)]));
    assert!(
        refused.contains("role viewer may not set pool profiles"),
        "{refused}"
    );
    let shown = viewer.json(&["profile", "show", "workers"]);
    assert_eq!(shown["generation"], 1);
}
