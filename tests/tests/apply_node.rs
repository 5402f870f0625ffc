//! `opi-agent apply --root /` inside a real node (a Debian 12 root booted with systemd-nspawn,
//! tests/src/node): live `net.*` sysctls written in the node's own network namespace, services
//! restarted through the node's systemd over D-Bus, and a failed verification rolled back with
//! the service restarted again; and the same from generations the manager on the host sends
//! to the agent running in the node. `kernel.*` sysctls are read-only inside a container, so these
//! nodes' floor holds `net.*` bounds only. Needs root (as CI has).

use std::time::Duration;

use opi_tests::node::{Node, AGENT_PATH};

/// The profile file inside the node.
const PROFILE_PATH: &str = "/root/profile.yaml";
/// Bound for what happens over the network or through systemd inside a node.
const NODE_WAIT: Duration = Duration::from_secs(30);

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

/// A manager on the host, with `node`'s agent enrolled as worker-1, running under the node's
/// systemd and online.
fn managed(node: &Node, dir: &std::path::Path) -> opi_tests::Manager {
    let mut manager = node
        .host_manager(dir, "nodes")
        .with_args(&["--heartbeat", "1s"]);
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 1, &[]);
    opi_tests::ok(node.enroll(&manager.endpoint(), &manager.ca_pin(), &token, "worker-1"));
    node.start_agent();
    opi_tests::wait_until_every(opi_tests::POLL_OPICTL, NODE_WAIT, "worker-1 online", || {
        opi_tests::all_online(&opictl, &["worker-1"])
    });
    manager
}

/// The node's config axis, as `opictl nodes -o json` shows it.
fn config_axis(opictl: &opi_tests::Opictl, name: &str) -> serde_json::Value {
    let nodes = opictl.nodes();
    opi_tests::node(&nodes, name).expect("node listed")["config"].clone()
}

#[test]
fn generations_from_the_manager_apply_live_on_a_real_node_and_a_breaking_one_rolls_back() {
    let dir = tempfile::TempDir::new().unwrap();
    let node = node(
        "apply-managed",
        "\"KubeletHealthy\", \"ContainerRuntimeHealthy\"",
    );
    let manager = managed(&node, dir.path());
    let opictl = manager.opictl();
    let set = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let set = opictl.json(&["profile", "set", "workers", "-f", path.to_str().unwrap()]);
        set["generation"].as_u64().expect("generation")
    };
    let wait_state = |state: &str| {
        let what = format!("worker-1 config {state}");
        opi_tests::wait_until_every(opi_tests::POLL_OPICTL, NODE_WAIT, &what, || {
            config_axis(&opictl, "worker-1")["state"] == state
        });
        config_axis(&opictl, "worker-1")
    };

    let forward = match node
        .exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"])
        .trim()
    {
        "1" => "0",
        _ => "1",
    };
    let containerd_before = main_pid(&node, "containerd.service");
    let good = format!(
        "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  overrides:\n    sysctls:\n      net.ipv4.ip_forward: {forward}\ncontainerd: |\n  version = 2\napply: {{verifyTimeout: 30s}}\n"
    );
    let first = set("good.yaml", &good);
    let applied = wait_state("in-sync");
    assert_eq!(applied["applied_generation"], first, "{applied}");
    let live = node.exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(live.trim(), forward);
    let containerd_after = main_pid(&node, "containerd.service");
    assert!(
        containerd_after != containerd_before && containerd_after != "u 0",
        "containerd restarted through systemd: {containerd_before} -> {containerd_after}"
    );

    node.set_kubelet_healthy(false, "stand-in told to fail");
    let breaking = good.replace(
        "apply: {verifyTimeout: 30s}",
        "kubelet:\n  protectKernelDefaults: false\n  maxPods: 50\napply: {verifyTimeout: 2s}",
    );
    let second = set("breaking.yaml", &breaking);
    let failed = wait_state("failed");
    assert_eq!(failed["desired_generation"], second, "{failed}");
    assert_eq!(failed["applied_generation"], first, "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("rolled back to the last-known-good"),
        "{reason}"
    );
    assert!(
        reason.contains("kubelet.service was not healthy within 2s"),
        "{reason}"
    );
    let gone = node.exec(&["test", "!", "-e", "/var/lib/kubelet/config.yaml"]);
    assert!(gone.status.success(), "the kubelet config was not removed");
    let live = node.exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(live.trim(), forward, "the first generation's value stays");
}

#[test]
fn a_reboot_scoped_generation_the_profile_allows_reboots_the_node_through_systemd() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut node = node("apply-reboot", "\"RebootRequired\"");
    let manager = managed(&node, dir.path());
    let opictl = manager.opictl();

    let profile = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  overrides:\n    sysctls:\n      kernel.kexec_load_disabled: 1\napply: {allowReboot: true}\n";
    let path = dir.path().join("reboot.yaml");
    std::fs::write(&path, profile).unwrap();
    opictl.json(&["profile", "set", "workers", "-f", path.to_str().unwrap()]);
    opi_tests::wait_until_every(
        opi_tests::POLL_OPICTL,
        NODE_WAIT,
        "applied, reboot required",
        || {
            let config = config_axis(&opictl, "worker-1");
            config["state"] == "in-sync" && config["reboot_required"] == true
        },
    );
    let sysctls = std::fs::read_to_string(node.root().join("etc/sysctl.d/90-opi-fleet.conf"));
    assert!(sysctls.unwrap().contains("kernel.kexec_load_disabled = 1"));

    let status = node.wait_stopped(NODE_WAIT);
    assert_eq!(
        status.code(),
        Some(133),
        "nspawn exits with 133 when its node reboots"
    );
}

#[test]
fn a_containerd_config_that_stops_containerd_from_starting_is_rolled_back_and_containerd_runs_again(
) {
    let node = node("apply-containerd", "\"ContainerRuntimeHealthy\"");
    // containerd 1.6 starts with every value the allowlist lets through; this node's containerd
    // is made to refuse one sandbox image at start, as a containerd refusing a setting would.
    node.write(
        "/etc/systemd/system/containerd.service.d/50-test-refuses.conf",
        b"[Service]\nExecStartPre=/bin/sh -c '! grep -q pause:refused /etc/containerd/config.toml'\n",
    );
    node.exec_ok(&["systemctl", "daemon-reload"]);
    let config_before = node.exec_ok(&["cat", "/etc/containerd/config.toml"]);
    let before = main_pid(&node, "containerd.service");
    let profile = "apiVersion: opi.fleet/v1\nkind: NodeProfile\ncontainerd: |\n  version = 2\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:refused\"\napply: {verifyTimeout: 10s}\n";

    let error = opi_tests::fails(apply(&node, profile));
    assert!(
        error.contains("the apply was rolled back to the last-known-good"),
        "{error}"
    );
    assert!(error.contains("containerd.service"), "{error}");
    let config_after = node.exec_ok(&["cat", "/etc/containerd/config.toml"]);
    assert_eq!(
        config_after, config_before,
        "containerd's config restored byte for byte"
    );
    node.wait_active("containerd", NODE_WAIT);
    let version = node.exec_ok(&["ctr", "version"]);
    assert!(version.contains("Server:"), "{version}");
    let after = main_pid(&node, "containerd.service");
    assert!(
        after != before && after != "u 0",
        "containerd started again with its last-known-good: {before} -> {after}"
    );
}
