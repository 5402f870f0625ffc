//! Signed desired state, end to end: agents pin the fleet's profile signer keys at enrollment
//! and apply only profiles signed by one of them (two to lower the hardening level), even when
//! the manager itself skips the check, as a compromised one would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opi_tests::{fails, node, ok, wait_until_every, Agent, Manager, POLL_OPICTL, WAIT};
use serde_json::Value;
use tempfile::TempDir;

/// The worker profile shipped in the repository (ANSSI-BP-028 intermediary).
const WORKER: &str = include_str!("../../deploy/profiles/worker.yaml");
/// A profile at the minimal level: lower than the worker's.
const MINIMAL: &str =
    "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  baseline: anssi-bp028-minimal\n";
/// Bound for an apply and its report to reach the manager.
const APPLY_WAIT: Duration = Duration::from_secs(20);

/// A signer key pair written to `dir`: `NAME.key` (0600) and `NAME.pub`.
fn signer(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = opi_pki::ca::generate_key().unwrap();
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    opi_pki::files::write_secret(&private, key.serialize_pem().as_bytes()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (private, public)
}

fn set(manager: &Manager, dir: &TempDir, text: &str, keys: &[&PathBuf]) -> std::process::Output {
    let path = dir.path().join("profile.yaml");
    std::fs::write(&path, text).unwrap();
    let mut args = vec!["profile", "set", "workers", "-f", path.to_str().unwrap()];
    for key in keys {
        args.extend(["--sign-key", key.to_str().unwrap()]);
    }
    manager.opictl().run(&args)
}

fn config(manager: &Manager) -> Value {
    node(&manager.opictl().nodes(), "signed-1").expect("node listed")["config"].clone()
}

/// Waits until the node's config axis is `state` for the latest desired generation.
fn wait_state(manager: &Manager, state: &str) -> Value {
    wait_until_every(POLL_OPICTL, APPLY_WAIT, state, || {
        let config = config(manager);
        config["state"] == state
    });
    config(manager)
}

/// The manager started again on the same port with `args` for `serve`.
fn restarted(mut manager: Manager, args: &[&str]) -> Manager {
    manager.kill();
    let mut all = vec!["--heartbeat", "1s"];
    all.extend(args);
    let mut manager = manager.with_args(&all);
    manager.start();
    manager
}

#[test]
fn agents_apply_only_profiles_signed_by_their_pinned_keys_and_two_to_lower_hardening() {
    let dir = TempDir::new().unwrap();
    let (alice, alice_pub) = signer(dir.path(), "alice");
    let (bob, bob_pub) = signer(dir.path(), "bob");
    let (mallory, _) = signer(dir.path(), "mallory");
    let signers = [
        "--profile-signer",
        alice_pub.to_str().unwrap(),
        "--profile-signer",
        bob_pub.to_str().unwrap(),
    ];
    let manager = restarted(Manager::init(dir.path(), "signed"), &signers);

    let mut agent = Agent::new(dir.path(), "signed-1");
    let settings = agent.root.join("etc/opi-agent");
    std::fs::create_dir_all(&settings).unwrap();
    std::fs::write(
        settings.join("health.toml"),
        "version = 1\nchecks = [\"ConfigDrift\"]\n",
    )
    .unwrap();
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    let pinned = std::fs::read_to_string(agent.state_dir().join("profile-signers.txt")).unwrap();
    assert_eq!(pinned.lines().count(), 2, "{pinned}");
    agent.start();
    wait_until_every(POLL_OPICTL, WAIT, "the agent online", || {
        opi_tests::all_online(&manager.opictl(), &["signed-1"])
    });

    // The manager refuses what its agents would refuse.
    let refused = fails(set(&manager, &dir, WORKER, &[]));
    assert!(
        refused.contains("no signer key this fleet's agents pinned signed it"),
        "{refused}"
    );

    // A manager that skips the check (as a compromised one would) still cannot get a profile
    // applied that no pinned key signed.
    let manager = restarted(manager, &[]);
    ok(set(&manager, &dir, WORKER, &[&mallory]));
    let failed = wait_state(&manager, "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not signed by any of the 2 signer key(s) this node pinned"),
        "{failed}"
    );
    assert!(!agent.root.join("etc/sysctl.d/90-opi-fleet.conf").exists());

    // Signed again, a changed document (an unchanged one makes no new generation).
    let manager = restarted(manager, &signers);
    let worker = WORKER.replace("ClientAliveInterval: 300", "ClientAliveInterval: 240");
    ok(set(&manager, &dir, &worker, &[&alice]));
    wait_state(&manager, "in-sync");

    // Lowering the hardening level takes two distinct pinned signers.
    let manager = restarted(manager, &[]);
    ok(set(&manager, &dir, MINIMAL, &[&alice]));
    let failed = wait_state(&manager, "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("lowers the hardening level from intermediary to minimal"),
        "{failed}"
    );
    let minimal = format!("{MINIMAL}  overrides:\n    sysctls:\n      kernel.kptr_restrict: 2\n");
    ok(set(&manager, &dir, &minimal, &[&alice, &bob]));
    let applied = wait_state(&manager, "in-sync");
    println!("applied with two signers: {applied}");
}
