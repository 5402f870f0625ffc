//! `opi-agent plan` and `opi-agent apply` as processes, under a temporary `--root`: the plan
//! matches what apply changes, a second apply changes nothing, a SIGKILL between two writes is
//! rolled back at the next start, a failed verification restores the last-known-good byte for
//! byte, refusals name the key, and credentials never reach the output.
//!
//! containerd is real (Debian's 1.6, as a plain process whose socket lives under the root);
//! kubelet cannot run here, so its health check is disabled in these roots' `health.toml`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use opi_tests::{bin, fails, ok, run, system_bin, wait_until, WAIT};
use serde_json::Value;

/// The worker profile shipped in `deploy/profiles/`.
const WORKER: &str = include_str!("../../deploy/profiles/worker.yaml");
/// The registry password in [`WORKER`].
const PASSWORD: &str = "change-me-registry-password";
/// The containerd config found on the node before any apply.
const HAND_MADE_CONTAINERD: &str = "version = 2\n# written by hand before the agent came\n";
/// Where the containerd socket is, under the root.
const SOCKET: &str = "/run/containerd/containerd.sock";

/// A file's content, mode, owner and inode.
type Seen = (Vec<u8>, u32, (u32, u32), u64);

/// A node root with its own `health.toml`, and a profile file beside it.
struct Node {
    dir: tempfile::TempDir,
    root: PathBuf,
}

/// A real containerd whose socket is the node's.
struct Containerd {
    child: Child,
}

impl Node {
    /// A root whose containerd check looks at `socket` (under the root), kubelet's check off.
    fn new(socket: &str, timeout_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let health = format!(
            "version = 1\nchecks = [\"ContainerRuntimeHealthy\"]\n[containerd]\nsocket = {socket:?}\ntimeout_ms = {timeout_ms}\n"
        );
        write(&root.join("etc/opi-agent/health.toml"), &health, 0o644);
        write(
            &root.join("etc/containerd/config.toml"),
            HAND_MADE_CONTAINERD,
            0o640,
        );
        Self { dir, root }
    }

    fn profile(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("profile.yaml");
        fs::write(&path, text).unwrap();
        path
    }

    fn agent(&self, command: &str, profile: &Path, extra: &[&str]) -> Command {
        let mut agent = Command::new(bin("opi-agent"));
        agent
            .arg(command)
            .arg("--profile")
            .arg(profile)
            .arg("--root")
            .arg(&self.root)
            .args(extra);
        agent
    }

    fn run(&self, command: &str, profile: &Path, extra: &[&str]) -> Output {
        run(&mut self.agent(command, profile, extra))
    }

    /// Every file under the root but the agent's state, with its content and mode.
    fn snapshot(&self) -> BTreeMap<String, Seen> {
        let mut files = BTreeMap::new();
        collect(&self.root, &self.root, &mut files);
        files
    }

    fn journal(&self) -> PathBuf {
        self.root.join("var/lib/opi-agent/apply/journal.json")
    }
}

impl Containerd {
    fn start(node: &Node) -> Self {
        let dir = node.dir.path().join("containerd");
        let socket = node.root.join(SOCKET.trim_start_matches('/'));
        fs::create_dir_all(socket.parent().unwrap()).unwrap();
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("containerd.toml");
        let text = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {socket:?}\n[ttrpc]\n  address = {:?}\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            dir.join("root"),
            dir.join("state"),
            socket.with_extension("ttrpc"),
        );
        fs::write(&config, text).unwrap();
        let child = Command::new(system_bin("containerd", "containerd"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd starts");
        wait_until(WAIT, "containerd's socket", || socket.exists());
        Self { child }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, Seen>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let node_path = format!("/{}", path.strip_prefix(root).unwrap().display());
        let meta = fs::symlink_metadata(&path).unwrap();
        if node_path.starts_with("/var/lib/opi-agent") || node_path.starts_with("/run") {
            continue;
        }
        if meta.is_dir() {
            collect(root, &path, files);
        } else {
            files.insert(
                node_path,
                (
                    fs::read(&path).unwrap(),
                    meta.mode() & 0o7777,
                    (meta.uid(), meta.gid()),
                    meta.ino(),
                ),
            );
        }
    }
}

/// Paths whose content, mode or owner differs between two snapshots, or that exist in one only.
fn changed(before: &BTreeMap<String, Seen>, after: &BTreeMap<String, Seen>) -> Vec<String> {
    let mut paths: Vec<String> = before.keys().chain(after.keys()).cloned().collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| {
            before.get(p).map(|(c, m, o, _)| (c, m, o))
                != after.get(p).map(|(c, m, o, _)| (c, m, o))
        })
        .collect()
}

#[test]
fn plan_lists_exactly_the_files_apply_then_changes() {
    let node = Node::new(SOCKET, 1000);
    let _containerd = Containerd::start(&node);
    let profile = node.profile(WORKER);

    let plan: Value =
        serde_json::from_str(&ok(node.run("plan", &profile, &["-o", "json"]))).unwrap();
    let mut planned: Vec<String> = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["action"] != "unchanged")
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    planned.sort();
    let skipped = plan["skipped"].to_string();
    assert!(
        skipped.contains("restart containerd.service (root is not /)"),
        "{skipped}"
    );
    assert!(
        skipped.contains("live sysctl net.ipv4.ip_forward=1"),
        "{skipped}"
    );

    let before = node.snapshot();
    assert_eq!(node.snapshot(), before, "plan changed nothing");
    let applied = ok(node.run("apply", &profile, &[]));
    let after = node.snapshot();
    assert_eq!(changed(&before, &after), planned, "{applied}");
    assert!(
        applied.contains("verify: ContainerRuntimeHealthy: containerd"),
        "{applied}"
    );
    assert_eq!(
        after["/etc/containerd/config.toml"].1, 0o600,
        "credentials kept 0600"
    );
    assert!(!node.journal().exists(), "journal removed at commit");
}

#[test]
fn applying_the_same_profile_twice_changes_nothing_the_second_time() {
    let node = Node::new(SOCKET, 1000);
    let _containerd = Containerd::start(&node);
    let profile = node.profile(WORKER);
    ok(node.run("apply", &profile, &[]));
    let first = node.snapshot();

    let second = ok(node.run("apply", &profile, &[]));
    assert_eq!(
        second.trim(),
        "nothing to change: the node already matches the profile"
    );
    assert_eq!(
        node.snapshot(),
        first,
        "same content, modes and inodes: nothing rewritten"
    );
    let plan: Value =
        serde_json::from_str(&ok(node.run("plan", &profile, &["-o", "json"]))).unwrap();
    assert!(
        plan["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["action"] == "unchanged"),
        "{plan}"
    );
}

#[test]
fn an_agent_killed_between_two_writes_restores_the_last_known_good_at_its_next_start() {
    let node = Node::new(SOCKET, 1000);
    let profile = node.profile(WORKER);
    let before = node.snapshot();
    let stderr = node.dir.path().join("apply.stderr");

    let mut apply = node.agent("apply", &profile, &[]);
    apply
        .env("OPI_AGENT_TEST_PAUSE_AFTER_WRITE", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap());
    let mut child = apply.spawn().unwrap();
    wait_until(WAIT, "the agent to pause after its second write", || {
        fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("paused after write 2")
    });
    assert_eq!(
        changed(&before, &node.snapshot()).len(),
        2,
        "two files written when killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(node.journal().exists(), "the journal survives the kill");

    // The next start of the agent (here `plan`) recovers first.
    let recovered = node.run("plan", &profile, &[]);
    ok(recovered.clone());
    let log = String::from_utf8_lossy(&recovered.stderr);
    assert!(log.contains("rolled back to the last-known-good"), "{log}");
    let after = node.snapshot();
    assert!(
        changed(&before, &after).is_empty(),
        "{:?}",
        changed(&before, &after)
    );
    assert_eq!(
        after["/etc/containerd/config.toml"].0,
        HAND_MADE_CONTAINERD.as_bytes()
    );
    assert!(
        !node.journal().exists(),
        "journal removed after the rollback"
    );
}

#[test]
fn a_failed_verification_restores_the_last_known_good_byte_for_byte_and_says_why() {
    let node = Node::new("/run/silent.sock", 200);
    // A socket that accepts connections in the kernel's backlog and never answers.
    let _silent = UnixListener::bind(node.root.join("run/silent.sock")).or_else(|_| {
        fs::create_dir_all(node.root.join("run")).unwrap();
        UnixListener::bind(node.root.join("run/silent.sock"))
    });
    let profile = node.profile(&WORKER.replace("verifyTimeout: 90s", "verifyTimeout: 1s"));
    let before = node.snapshot();

    let started = Instant::now();
    let error = fails(node.run("apply", &profile, &[]));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by verifyTimeout"
    );
    assert!(
        error.contains("the apply was rolled back to the last-known-good"),
        "{error}"
    );
    assert!(
        error.contains("containerd.service was not healthy within 1s"),
        "{error}"
    );
    assert!(error.contains("did not answer within"), "{error}");
    let after = node.snapshot();
    assert!(
        changed(&before, &after).is_empty(),
        "{:?}",
        changed(&before, &after)
    );
    assert_eq!(
        after["/etc/containerd/config.toml"].0,
        HAND_MADE_CONTAINERD.as_bytes()
    );
    assert_eq!(after["/etc/containerd/config.toml"].1, 0o640);
    assert!(!node.journal().exists());
}

#[test]
fn refusals_name_the_key_and_the_rule_and_change_nothing() {
    let node = Node::new(SOCKET, 1000);
    let before = node.snapshot();
    let profile = node.profile(
        "apiVersion: opi.fleet/v1\nkind: NodeProfile\nkubelet:\n  staticPodPath: /etc/kubernetes/manifests\n  authorization: {mode: AlwaysAllow}\ncontainerd: |\n  version = 2\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  BinaryName = \"/tmp/x\"\n",
    );
    let output = node.run("apply", &profile, &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a bad profile is a usage error"
    );
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("the profile has 3 problems"), "{error}");
    assert!(
        error.contains("kubelet.staticPodPath: forbidden kubelet key"),
        "{error}"
    );
    assert!(
        error.contains("kubelet.authorization.mode: forbidden: authorization mode AlwaysAllow"),
        "{error}"
    );
    assert!(
        error.contains("options.BinaryName: forbidden containerd key"),
        "{error}"
    );

    write(
        &node.root.join("etc/opi-agent/floor.toml"),
        "version = 1\n[sysctls.\"net.ipv4.conf.all.rp_filter\"]\nequals = \"1\"\n",
        0o644,
    );
    let floor_lowered = fails(node.run("plan", &node.profile(WORKER), &[]));
    assert!(floor_lowered.contains("hardening.overrides.sysctls.\"net.ipv4.conf.all.rp_filter\": lowers the node's hardening floor"), "{floor_lowered}");
    let mut expected = before.clone();
    let floor = node.snapshot().remove("/etc/opi-agent/floor.toml").unwrap();
    expected.insert("/etc/opi-agent/floor.toml".to_string(), floor);
    assert_eq!(node.snapshot(), expected);
}

#[test]
fn registry_credentials_never_appear_in_plan_output() {
    let node = Node::new(SOCKET, 1000);
    let profile = node.profile(WORKER);
    for format in ["table", "json"] {
        let output = node.run("plan", &profile, &["-o", format]);
        let stdout = ok(output.clone());
        assert!(stdout.contains("<redacted>"), "{stdout}");
        assert!(!stdout.contains(PASSWORD), "{stdout}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains(PASSWORD));
    }
}

#[test]
fn a_changed_registry_password_is_planned_and_applied_without_being_shown() {
    let node = Node::new(SOCKET, 1000);
    let _containerd = Containerd::start(&node);
    ok(node.run("apply", &node.profile(WORKER), &[]));
    let rotated = "rotated-registry-password";
    let profile = node.profile(&WORKER.replace(PASSWORD, rotated));

    let plan = ok(node.run("plan", &profile, &[]));
    assert!(
        plan.contains("update    /etc/containerd/config.toml"),
        "{plan}"
    );
    assert!(plan.contains("~ credentials changed (not shown)"), "{plan}");
    assert!(
        !plan.contains(rotated) && !plan.contains(PASSWORD),
        "{plan}"
    );
    let applied = ok(node.run("apply", &profile, &[]));
    assert!(!applied.contains(rotated), "{applied}");
    let config = fs::read_to_string(node.root.join("etc/containerd/config.toml")).unwrap();
    assert!(config.contains(rotated), "the new password is written");
}

#[test]
fn reboot_scoped_values_are_refused_unless_allowed_and_then_flag_the_node() {
    let node = Node::new(SOCKET, 1000);
    let high =
        "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening: {baseline: anssi-bp028-high}\n";
    let before = node.snapshot();

    let output = node.run("apply", &node.profile(high), &[]);
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("needs a reboot to take effect (")
            && error.contains("kernel.modules_disabled=1"),
        "{error}"
    );
    assert!(
        error.contains("apply.allowReboot is false; nothing was changed"),
        "{error}"
    );
    assert!(changed(&before, &node.snapshot()).is_empty());

    let allowed = node.profile(&format!("{high}apply: {{allowReboot: true}}\n"));
    let plan = ok(node.run("plan", &allowed, &[]));
    assert!(
        plan.contains("reboot        required for") && plan.contains("kernel.modules_disabled=1"),
        "{plan}"
    );
    ok(node.run("apply", &allowed, &[]));
    let sysctls = fs::read_to_string(node.root.join("etc/sysctl.d/90-opi-fleet.conf")).unwrap();
    assert!(
        sysctls.contains("kernel.yama.ptrace_scope = 3"),
        "{sysctls}"
    );
    assert!(
        node.root.join("var/run/reboot-required").exists(),
        "the node asks for a reboot"
    );
}
