//! The Debian packages built by `scripts/build-debs`, installed with dpkg in a real node
//! (systemd-nspawn): the manager starts through its packaged unit as its own user, and the
//! agent, enrolled with a token, runs from its packaged, sandboxed unit, is ready through
//! `Type=notify` once online, logs to journald with its fields, and applies a profile inside
//! that sandbox. Needs root and the workspace's binaries, `opi-gen-docs` included (`cargo
//! build --workspace --bins`).

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
        "/usr/share/zsh/vendor-completions/_opictl",
        "/usr/share/fish/vendor_completions.d/opi-manager.fish",
    ] {
        node.exec_ok(&["test", "-s", file]);
    }
    // The test root excludes /usr/share/doc from installs (mmdebstrap's dpkg path-exclude):
    // the on-call documentation is checked in the packages themselves.
    for deb in &debs {
        let listed = ok(run(Command::new("dpkg-deb").arg("--contents").arg(deb)));
        let name = deb.file_name().unwrap().to_string_lossy();
        let package = name.split('_').next().unwrap();
        for doc in [
            "runbooks.md",
            "architecture.md",
            "security.md",
            "config-reference.md",
        ] {
            let path = format!("./usr/share/doc/{package}/{doc}");
            assert!(listed.contains(&path), "{name} lacks {path}:\n{listed}");
        }
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

    let shown = opictl(&node, &["node", "show", "pkg-node"]);
    assert_eq!(
        shown["connectivity"], "online",
        "Type=notify: ready once online"
    );
    let agent_exe = unit_property(&node, "opi-agent", "ExecStart");
    assert!(agent_exe.contains("path=/usr/bin/opi-agent"), "{agent_exe}");
    assert_eq!(unit_property(&node, "opi-agent", "Type"), "notify");
    assert_eq!(unit_property(&node, "opi-agent", "ProtectSystem"), "strict");
    assert_eq!(
        unit_property(&node, "opi-agent", "StatusText"),
        format!("connected to {MANAGER}")
    );
    let root_fs = condition(&shown, "ReadOnlyFilesystem", "/");
    assert_eq!(
        root_fs["status"], "ok",
        "the read-only sandbox is not the node's root: {root_fs}"
    );

    let session = journal_entry(&node, "opi-agent", "session open");
    assert_eq!(
        session["NODE"], "pkg-node",
        "span fields are journal fields"
    );
    assert_eq!(
        session["ENDPOINT"], MANAGER,
        "event fields are journal fields"
    );
    assert_eq!(session["SYSLOG_IDENTIFIER"], "opi-agent");
    let enrolled = journal_entry(&node, "opi-manager", "node enrolled");
    assert_eq!(enrolled["NODE"], "pkg-node");
    assert_eq!(enrolled["POOL"], "workers");

    // The sandboxed service applies what the manager sends, restarting containerd over D-Bus.
    node.write("/etc/opi-agent/floor.toml", FLOOR.as_bytes());
    node.write("/root/profile.yaml", PROFILE.as_bytes());
    let containerd_before = unit_property(&node, "containerd", "MainPID");
    opictl(
        &node,
        &["profile", "set", "workers", "-f", "/root/profile.yaml"],
    );
    wait_until_every(POLL_OPICTL, NODE_WAIT, "pkg-node in sync", || {
        let shown = opictl(&node, &["node", "show", "pkg-node"]);
        shown["config"]["state"] == "in-sync"
    });
    let config = node.exec_ok(&["cat", "/etc/containerd/config.toml"]);
    assert!(config.contains("registry.k8s.io/pause:3.9"), "{config}");
    let containerd_after = unit_property(&node, "containerd", "MainPID");
    assert_ne!(
        containerd_after, containerd_before,
        "containerd was restarted"
    );
    assert_eq!(node.unit_state("containerd"), "active");
    assert_eq!(node.unit_state("opi-agent"), "active");
}

/// A condition of a node as `opictl node show -o json` prints it.
fn condition<'a>(node: &'a Value, kind: &str, subject: &str) -> &'a Value {
    node["conditions"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|c| c["type"] == kind && c["subject"] == subject)
        })
        .unwrap_or_else(|| panic!("no {kind} condition for {subject}: {node}"))
}

/// The first journal entry of `unit` whose message starts with `message`, as JSON.
fn journal_entry(node: &Node, unit: &str, message: &str) -> Value {
    let text = node.exec_ok(&["journalctl", "--no-pager", "-o", "json", "-u", unit]);
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| {
            entry["MESSAGE"]
                .as_str()
                .is_some_and(|text| text.starts_with(message))
        })
        .unwrap_or_else(|| panic!("no {unit} journal entry starting with {message:?}:\n{text}"))
}

/// Where [`in_agent_sandbox`] puts its drop-in.
const SANDBOX_DROP_IN: &str = "/run/systemd/system/opi-agent.service.d/50-test-command.conf";

/// Runs `command` as the packaged `opi-agent.service` itself, changed by a drop-in only in
/// what it runs (once, `Type=oneshot`, without the enrollment condition): every sandboxing
/// setting is the shipped unit's. Returns whether it succeeded, and the unit's journal.
fn in_agent_sandbox(node: &Node, command: &str) -> (bool, String) {
    let drop_in = format!(
        "[Unit]\nConditionPathExists=\n[Service]\nType=oneshot\nRestart=no\nWatchdogSec=0\nExecStart=\nExecStart={command}\n"
    );
    node.write(SANDBOX_DROP_IN, drop_in.as_bytes());
    node.exec_ok(&["systemctl", "daemon-reload"]);
    let started = node.exec(&["systemctl", "start", "opi-agent"]);
    let journal = node.journal("opi-agent");
    node.exec_ok(&["rm", SANDBOX_DROP_IN]);
    // A unit that succeeded and is not enabled may be unloaded already: nothing to reset.
    let _ = node.exec(&["systemctl", "reset-failed", "opi-agent"]);
    node.exec_ok(&["systemctl", "daemon-reload"]);
    (started.status.success(), journal)
}

#[test]
fn packaged_agent_applies_a_profile_and_restarts_containerd_through_systemd() {
    let dir = TempDir::new().unwrap();
    let debs = build_debs(dir.path());
    let node = Node::boot("node-apply");
    install(&node, &debs);
    let before = unit_property(&node, "containerd", "MainPID");
    node.write("/etc/opi-agent/profile.yaml", PROFILE.as_bytes());
    // kernel.* and fs.* sysctls are read-only in a container: this node's floor keeps to net.*.
    node.write("/etc/opi-agent/floor.toml", FLOOR.as_bytes());

    let (applied, journal) = in_agent_sandbox(
        &node,
        "/usr/bin/opi-agent apply --profile /etc/opi-agent/profile.yaml",
    );
    assert!(applied, "apply inside the agent's sandbox:\n{journal}");

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

#[test]
fn packaged_agent_sandbox_writes_only_the_paths_the_agent_manages() {
    let dir = TempDir::new().unwrap();
    let debs = build_debs(dir.path());
    let node = Node::boot("node-sandbox");
    install(&node, &debs);

    for allowed in [
        "/etc/containerd/opi-probe",
        "/etc/sysctl.d/opi-probe",
        "/etc/systemd/system/kubelet.service.d/opi-probe",
        "/var/lib/opi-agent/opi-probe",
    ] {
        let (wrote, journal) = in_agent_sandbox(&node, &format!("/usr/bin/touch {allowed}"));
        assert!(wrote, "{allowed} is writable in the sandbox:\n{journal}");
        node.exec_ok(&["rm", allowed]);
    }
    for refused in [
        "/etc/opi-probe",
        "/usr/bin/opi-probe",
        "/var/lib/opi-probe",
        "/root/x",
    ] {
        let (wrote, journal) = in_agent_sandbox(&node, &format!("/usr/bin/touch {refused}"));
        assert!(
            !wrote,
            "{refused} must not be writable in the sandbox:\n{journal}"
        );
        assert!(
            journal.contains("Read-only file system") || journal.contains("Permission denied"),
            "{journal}"
        );
        let left = node.exec(&["test", "-e", refused]);
        assert!(!left.status.success(), "{refused} was created");
    }
    let (chmod_shadow, journal) = in_agent_sandbox(&node, "/usr/bin/chmod 0640 /etc/shadow");
    assert!(
        chmod_shadow,
        "a mode-managed file's mode can be set:\n{journal}"
    );
    let (setuid, journal) =
        in_agent_sandbox(&node, "/usr/bin/chmod u+s /etc/containerd/config.toml");
    assert!(!setuid, "no set-id bit, even on a managed file:\n{journal}");
}

#[test]
fn packaged_agent_applies_the_intermediary_baseline_inside_its_sandbox() {
    let dir = TempDir::new().unwrap();
    let debs = build_debs(dir.path());
    let node = Node::boot("node-baseline");
    install(&node, &debs);
    let profile = opi_tests::hardening::container_profile("anssi-bp028-intermediary", "");
    node.write("/etc/opi-agent/profile.yaml", profile.as_bytes());
    node.write("/etc/opi-agent/floor.toml", FLOOR.as_bytes());

    let (applied, journal) = in_agent_sandbox(
        &node,
        "/usr/bin/opi-agent apply --profile /etc/opi-agent/profile.yaml",
    );
    assert!(applied, "apply inside the agent's sandbox:\n{journal}");
    let login_defs = node.exec_ok(&["cat", "/etc/login.defs"]);
    assert!(
        login_defs.contains("\nENCRYPT_METHOD\tYESCRYPT\n"),
        "edited in place though /etc is read-only to the agent:\n{login_defs}"
    );
    let sudo = node.exec_ok(&[
        "stat",
        "-c",
        "%a %U",
        "/etc/sudoers.d/opi-fleet",
        "/etc/sudoers.d",
    ]);
    assert_eq!(sudo, "440 root\n750 root\n");

    let text = node.exec_ok(&[
        "/usr/bin/opi-agent",
        "compliance",
        "--root",
        "/",
        "-o",
        "json",
    ]);
    let evidence: Value = serde_json::from_str(&text).unwrap();
    let summary = &evidence["summary"];
    assert_eq!(summary["fail"], 0, "{text}");
    assert!(summary["pass"].as_u64().unwrap() >= 10, "{summary}");
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
