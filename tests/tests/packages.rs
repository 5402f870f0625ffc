//! The Debian packages built by `scripts/build-debs`, installed with dpkg in a real node
//! (systemd-nspawn): the manager starts through its packaged unit as its own user, and the
//! agent, enrolled with a token, runs from its packaged unit and comes online. Needs root and
//! the workspace's binaries, `opi-gen-docs` included (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use opi_tests::node::Node;
use opi_tests::{bin, ok, run, wait_until_every, POLL_OPICTL};
use serde_json::Value;
use tempfile::TempDir;

/// Bound for what happens through systemd inside the node.
const NODE_WAIT: Duration = Duration::from_secs(30);
/// Where the packaged manager listens inside the node.
const MANAGER: &str = "https://127.0.0.1:7443";
/// The admin bundle `opi-manager init` writes in the packaged data directory.
const ADMIN_BUNDLE: &str = "/var/lib/opi-manager/opictl-admin.toml";

/// Builds the packages from the workspace's binaries, uncompressed for speed.
fn build_debs(out: &Path) -> Vec<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-debs");
    let bin_dir = bin("opi-agent").parent().expect("target dir").to_path_buf();
    let listed = ok(run(Command::new(script)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out)
        .args(["--compression", "none"])));
    listed.lines().map(PathBuf::from).collect()
}

/// `opictl ARGS -o json` inside the node, with the packaged manager's admin bundle.
fn opictl(node: &Node, args: &[&str]) -> Value {
    let mut command = vec!["opictl", "--config", ADMIN_BUNDLE];
    command.extend(args);
    command.extend(["-o", "json"]);
    let text = node.exec_ok(&command);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("opictl {args:?}: {e}: {text}"))
}

/// `systemctl show -p PROPERTY --value UNIT` inside the node.
fn unit_property(node: &Node, unit: &str, property: &str) -> String {
    let value = node.exec_ok(&["systemctl", "show", "-p", property, "--value", unit]);
    value.trim().to_string()
}

/// Installs the packages in the node with `dpkg -i`.
fn install(node: &Node, debs: &[PathBuf]) {
    let mut command = vec!["dpkg".to_string(), "-i".to_string()];
    for deb in debs {
        let name = deb.file_name().expect("file name").to_string_lossy();
        let inside = format!("/root/debs/{name}");
        node.copy_in(deb, &inside);
        command.push(inside);
    }
    let words: Vec<&str> = command.iter().map(String::as_str).collect();
    node.exec_ok(&words);
}

#[test]
fn packages_install_in_a_node_enable_nothing_and_ship_units_docs_and_settings() {
    let dir = TempDir::new().unwrap();
    let debs = build_debs(dir.path());
    assert_eq!(debs.len(), 3, "{debs:?}");
    let node = Node::boot("node-debs");

    install(&node, &debs);

    for unit in ["opi-manager.service", "opi-agent.service"] {
        assert_eq!(unit_property(&node, unit, "UnitFileState"), "disabled");
        assert_eq!(node.unit_state(unit), "inactive");
        let fragment = unit_property(&node, unit, "FragmentPath");
        assert_eq!(fragment, format!("/lib/systemd/system/{unit}"));
    }
    let user = node.exec_ok(&["getent", "passwd", "opi-manager"]);
    assert!(
        user.trim_end()
            .ends_with(":/var/lib/opi-manager:/usr/sbin/nologin"),
        "{user}"
    );
    let data_dir = node.exec_ok(&["stat", "-c", "%U:%G %a", "/var/lib/opi-manager"]);
    assert_eq!(data_dir.trim(), "opi-manager:opi-manager 750");
    for file in [
        "/usr/share/man/man1/opi-agent-enroll.1.gz",
        "/usr/share/man/man1/opi-manager-init.1.gz",
        "/usr/share/man/man1/opictl-nodes.1.gz",
        "/usr/share/bash-completion/completions/opictl",
        "/usr/share/zsh/vendor-completions/_opi-agent",
        "/usr/share/fish/vendor_completions.d/opi-manager.fish",
    ] {
        node.exec_ok(&["test", "-s", file]);
    }
    let conffiles = node.exec_ok(&["dpkg-query", "-W", "-f=${Conffiles}", "opi-agent"]);
    assert!(
        conffiles.contains("/etc/opi-agent/health.toml"),
        "{conffiles}"
    );
    let health = node.agent_health();
    assert!(health["conditions"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
}

#[test]
fn packaged_manager_and_agent_run_through_systemd_and_the_node_comes_online() {
    let dir = TempDir::new().unwrap();
    let debs = build_debs(dir.path());
    let node = Node::boot("node-pkg");
    install(&node, &debs);

    let init = node.exec_ok(&[
        "runuser",
        "-u",
        "opi-manager",
        "--",
        "opi-manager",
        "init",
        "--fleet",
        "pkg",
        "--data-dir",
        "/var/lib/opi-manager",
        "--listen",
        "127.0.0.1:7443",
    ]);
    let pin = init
        .lines()
        .find_map(|line| line.strip_prefix("fleet CA pin:"))
        .expect("init prints the pin")
        .trim()
        .to_string();
    node.exec_ok(&["systemctl", "start", "opi-manager"]);
    assert_eq!(
        node.unit_state("opi-manager"),
        "active",
        "Type=notify: ready once started"
    );
    let pid = unit_property(&node, "opi-manager", "MainPID");
    let owner = node.exec_ok(&["ps", "-o", "user=", "-p", &pid]);
    assert_eq!(owner.trim(), "opi-manager");

    let token = opictl(&node, &["token", "create", "--pool", "workers"]);
    let secret = token["secret"].as_str().expect("token secret");
    let enrolled = node.enroll(MANAGER, &pin, secret, "pkg-node");
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    node.exec_ok(&["systemctl", "start", "opi-agent"]);
    node.wait_active("opi-agent", NODE_WAIT);

    wait_until_every(POLL_OPICTL, NODE_WAIT, "pkg-node online", || {
        opictl(&node, &["node", "show", "pkg-node"])["connectivity"] == "online"
    });
    let agent_exe = unit_property(&node, "opi-agent", "ExecStart");
    assert!(agent_exe.contains("path=/usr/bin/opi-agent"), "{agent_exe}");
    let journal = node.journal("opi-agent");
    assert!(journal.contains("pkg-node"), "{journal}");
}

#[test]
fn packaged_agent_applies_a_profile_and_restarts_containerd_through_systemd() {
    let dir = TempDir::new().unwrap();
    let debs = build_debs(dir.path());
    let node = Node::boot("node-apply");
    install(&node, &debs);
    let before = unit_property(&node, "containerd", "MainPID");
    node.write("/root/profile.yaml", PROFILE.as_bytes());
    // kernel.* and fs.* sysctls are read-only in a container: this node's floor keeps to net.*.
    node.write("/etc/opi-agent/floor.toml", FLOOR.as_bytes());

    let applied = node.exec(&["opi-agent", "apply", "--profile", "/root/profile.yaml"]);
    assert!(
        applied.status.success(),
        "{}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );

    let config = node.exec_ok(&["cat", "/etc/containerd/config.toml"]);
    assert!(config.contains("registry.k8s.io/pause:3.9"), "{config}");
    let after = unit_property(&node, "containerd", "MainPID");
    assert_ne!(after, before, "containerd was restarted");
    assert_eq!(node.unit_state("containerd"), "active");
    node.exec_ok(&["ctr", "version"]);
    let redirects = node.exec_ok(&["sysctl", "-n", "net.ipv4.conf.all.accept_redirects"]);
    assert_eq!(
        redirects.trim(),
        "0",
        "the floor's sysctl is live in the node"
    );
}

/// A node floor of one `net.*` sysctl, which a container's network namespace can set.
const FLOOR: &str = r#"version = 1
blacklisted_modules = []
[sysctls."net.ipv4.conf.all.accept_redirects"]
max = 0
"#;

/// A profile changing containerd's settings only.
const PROFILE: &str = r#"apiVersion: opi.fleet/v1
kind: NodeProfile
containerd: |
  version = 2

  [plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
apply:
  restartServices: true
"#;
