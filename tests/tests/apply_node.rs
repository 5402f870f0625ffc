//! `opi-agent apply --root /` inside a real node (a Debian 12 root booted with systemd-nspawn,
//! tests/src/node): live `net.*` sysctls written in the node's own network namespace, services
//! restarted through the node's systemd over D-Bus, and a failed verification rolled back with
//! the service restarted again. `kernel.*` sysctls are read-only inside a container, so these
//! nodes' floor holds `net.*` bounds only. Needs root (as CI has).

use std::time::Duration;

use opi_tests::node::{Node, AGENT_PATH};

/// The profile file inside the node.
const PROFILE_PATH: &str = "/root/profile.yaml";

/// The main pid of `unit`, asked over the node's systemd bus.
fn main_pid(node: &Node, unit: &str) -> String {
    let object = format!(
        "/org/freedesktop/systemd1/unit/{}",
        unit.replace('.', "_2e")
    );
    let output = node.busctl(&[
        "get-property",
        "org.freedesktop.systemd1",
        &object,
        "org.freedesktop.systemd1.Service",
        "MainPID",
    ]);
    opi_tests::ok(output).trim().to_string()
}

/// A node with the agent, a `net.*`-only floor and the given checks in `health.toml`.
fn node(name: &str, checks: &str) -> Node {
    let node = Node::boot(name);
    node.install_agent();
    node.write(
        "/etc/opi-agent/floor.toml",
        b"version = 1\n[sysctls.\"net.ipv4.conf.all.accept_redirects\"]\nmax = 0\n",
    );
    let health = format!("version = 1\nchecks = [{checks}]\n");
    node.write("/etc/opi-agent/health.toml", health.as_bytes());
    node
}

fn apply(node: &Node, profile: &str) -> std::process::Output {
    node.write(PROFILE_PATH, profile.as_bytes());
    node.exec(&[
        AGENT_PATH,
        "apply",
        "--profile",
        PROFILE_PATH,
        "--root",
        "/",
    ])
}

#[test]
fn apply_on_a_real_node_sets_live_sysctls_and_restarts_containerd_through_systemd() {
    let node = node("apply-live", "\"ContainerRuntimeHealthy\"");
    let forward = if node
        .exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"])
        .trim()
        == "1"
    {
        "0"
    } else {
        "1"
    };
    let before = main_pid(&node, "containerd.service");
    let profile = format!(
        "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  overrides:\n    sysctls:\n      net.ipv4.ip_forward: {forward}\ncontainerd: |\n  version = 2\napply: {{verifyTimeout: 30s}}\n"
    );

    let applied = apply(&node, &profile);
    let stdout = opi_tests::ok(applied);
    assert!(
        stdout.contains("restart       containerd.service"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verify: ContainerRuntimeHealthy: containerd"),
        "{stdout}"
    );
    assert_eq!(
        node.exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"])
            .trim(),
        forward
    );
    assert_eq!(
        node.exec_ok(&["sysctl", "-n", "net.ipv4.conf.all.accept_redirects"])
            .trim(),
        "0"
    );
    let after = main_pid(&node, "containerd.service");
    assert!(
        after != before && after != "u 0",
        "containerd restarted: {before} -> {after}"
    );
    let config = node.exec_ok(&["cat", "/etc/containerd/config.toml"]);
    assert!(config.contains("SystemdCgroup = true"), "{config}");

    let again = opi_tests::ok(apply(&node, &profile));
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(
        main_pid(&node, "containerd.service"),
        after,
        "no restart the second time"
    );
}

#[test]
fn a_failed_kubelet_check_on_a_real_node_restores_the_files_and_restarts_kubelet_again() {
    let node = node("apply-rollback", "\"KubeletHealthy\"");
    node.set_kubelet_healthy(false, "stand-in told to fail");
    let before = main_pid(&node, "kubelet.service");
    let profile = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nkubelet:\n  protectKernelDefaults: false\n  maxPods: 50\napply: {verifyTimeout: 2s}\n";

    let output = apply(&node, profile);
    let error = opi_tests::fails(output);
    assert!(
        error.contains("the apply was rolled back to the last-known-good"),
        "{error}"
    );
    assert!(
        error.contains("kubelet.service was not healthy within 2s"),
        "{error}"
    );
    assert!(error.contains("stand-in told to fail"), "{error}");
    for path in [
        "/var/lib/kubelet/config.yaml",
        "/etc/systemd/system/kubelet.service.d/20-opi-fleet.conf",
    ] {
        let gone = node.exec(&["test", "!", "-e", path]);
        assert!(
            gone.status.success(),
            "{path} was not removed by the rollback"
        );
    }
    let journal = node.exec(&["test", "!", "-e", "/var/lib/opi-agent/apply/journal.json"]);
    assert!(journal.status.success(), "journal left behind");
    let after = main_pid(&node, "kubelet.service");
    assert!(
        after != before && after != "u 0",
        "kubelet restarted: {before} -> {after}"
    );
    node.wait_active("kubelet", Duration::from_secs(30));
}
