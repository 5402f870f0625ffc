//! A real node for tests: a copy of a cached Debian 12 root booted with systemd-nspawn, with
//! systemd, D-Bus, containerd (a systemd unit, started at boot) and a kubelet stand-in (the
//! one fake: kubelet is not packaged in Debian). The node lives in a network namespace made
//! for it and reaches the host only through a veth pair, so a manager listening on
//! [`Node::host_addr`] is reachable from inside and nothing the node runs listens on the host.
//!
//! Needs root, `systemd-nspawn` (package `systemd-container`), `mmdebstrap` for the first
//! build of the root, and network access to a Debian mirror for that build.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{bin, run, wait_until, Manager, POLL_OPICTL};

pub mod cgroup;
pub mod net;
pub mod root;

pub use cgroup::NodeCgroup;
pub use net::NodeNetwork;
pub use root::RootLayers;

/// Longest a boot may take until systemd reports the system running.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a command run inside the node may take before it is killed.
pub const EXEC_TIMEOUT_SECS: u32 = 120;
/// Longest systemd-nspawn may take to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// `PATH` of commands run inside the node.
pub const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where [`Node::install_agent`] puts the workspace's agent inside the node.
pub const AGENT_PATH: &str = "/usr/local/bin/opi-agent";
/// The systemd bus socket, inside the node.
pub const DBUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// A booted node; shut down and removed on drop, also when the test panics.
pub struct Node {
    name: String,
    // Fields drop in this order: the container stops before its cgroup, network and files go.
    container: Container,
    cgroup: NodeCgroup,
    network: NodeNetwork,
    dir: TempDir,
    boot_time: Duration,
}

/// The running systemd-nspawn; stopped with SIGTERM on drop (SIGKILL if it does not stop).
struct Container {
    nspawn: Child,
    leader: u32,
}

impl Node {
    /// Copies the cached root (building it first if needed), boots it in a network namespace
    /// of its own and waits until systemd reports the system `running`.
    pub fn boot(name: &str) -> Self {
        let dir = TempDir::new().expect("node temp dir");
        let layers = RootLayers::create(dir.path());
        root::prepare(&layers.upper, name);

        let network = NodeNetwork::create();
        let cgroup = NodeCgroup::create(&network.netns);
        let console = dir.path().join("console.log");
        let booting = Instant::now();
        let container = Container::spawn(&layers, name, &network, &cgroup, &console);
        let mut node = Self {
            name: name.to_string(),
            container,
            cgroup,
            network,
            dir,
            boot_time: Duration::ZERO,
        };
        node.wait_running(&console);
        node.boot_time = booting.elapsed();
        eprintln!("node {name}: booted in {:?}", node.boot_time);
        node
    }

    /// The node's host name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the boot took, from starting nspawn to systemd reporting `running`.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The node's root as the host sees it, through its init's mount namespace (this also
    /// shows the node's `/run` and other file systems mounted inside).
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.container.leader))
    }

    /// The host directory holding the node's own files (its root's upper layer, console
    /// log); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node's systemd bus socket, reachable from the host.
    pub fn dbus_socket(&self) -> PathBuf {
        self.root().join(DBUS_SOCKET.trim_start_matches('/'))
    }

    /// The host-side address of the node's veth pair: a server listening there is reachable
    /// from inside the node, and from nowhere else but the host.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.network.host_addr
    }

    /// The node's own address on the veth pair.
    pub fn node_addr(&self) -> Ipv4Addr {
        self.network.node_addr
    }

    /// The cgroups nspawn and the node's processes run in.
    pub fn cgroup(&self) -> &NodeCgroup {
        &self.cgroup
    }

    /// The network the node lives in.
    pub fn network(&self) -> &NodeNetwork {
        &self.network
    }

    /// Runs `command` inside the node (all its namespaces, a clean environment with
    /// [`NODE_PATH`]), killed after [`EXEC_TIMEOUT_SECS`].
    pub fn exec(&self, command: &[&str]) -> Output {
        run(&mut self.exec_command(command))
    }

    /// [`Node::exec`] of a command that must succeed; its stdout.
    pub fn exec_ok(&self, command: &[&str]) -> String {
        let output = self.exec(command);
        assert!(
            output.status.success(),
            "{command:?} failed in node {} ({}): {}{}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Copies a host file into the node at `node_path` (an absolute path inside), creating
    /// its directory and keeping its mode.
    pub fn copy_in(&self, host_path: &Path, node_path: &str) {
        let dest = self.root().join(node_path.trim_start_matches('/'));
        let parent = dest.parent().expect("a path inside the node has a parent");
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        fs::copy(host_path, &dest).unwrap_or_else(|e| {
            panic!(
                "copy {} to {node_path} in node {}: {e}",
                host_path.display(),
                self.name
            )
        });
    }

    /// Writes `contents` to `node_path` inside the node, creating its directory.
    pub fn write(&self, node_path: &str, contents: &[u8]) {
        let dest = self.root().join(node_path.trim_start_matches('/'));
        let parent = dest.parent().expect("a path inside the node has a parent");
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        fs::write(&dest, contents)
            .unwrap_or_else(|e| panic!("write {node_path} in node {}: {e}", self.name));
    }

    /// The journal of `unit` inside the node.
    pub fn journal(&self, unit: &str) -> String {
        let output = self.exec(&["journalctl", "--no-pager", "-o", "short-iso", "-u", unit]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `systemctl is-active UNIT` inside the node: `active`, `inactive`, `failed`…
    pub fn unit_state(&self, unit: &str) -> String {
        let output = self.exec(&["systemctl", "is-active", unit]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Waits until `unit` is active, or panics with its journal.
    pub fn wait_active(&self, unit: &str, timeout: Duration) {
        let start = Instant::now();
        while self.unit_state(unit) != "active" {
            assert!(
                start.elapsed() < timeout,
                "{unit} not active in node {} after {timeout:?}:\n{}",
                self.name,
                self.journal(unit)
            );
            std::thread::sleep(POLL_OPICTL);
        }
    }

    /// Runs `busctl --address=unix:path=SOCKET ARGS` on the host, against the node's systemd
    /// bus: the way the agent's restarts reach systemd.
    pub fn busctl(&self, args: &[&str]) -> Output {
        run(Command::new("busctl")
            .arg(format!(
                "--address=unix:path={}",
                self.dbus_socket().display()
            ))
            .args(args))
    }

    /// `GET PATH` on `127.0.0.1:PORT` inside the node (bash's `/dev/tcp`: the root has no
    /// HTTP client); the whole answer, status line first.
    pub fn http_get(&self, port: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let output = self.exec(&["bash", "-c", &script]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Makes the kubelet stand-in's `/healthz` fail with `reason`, or answer `ok` again.
    pub fn set_kubelet_healthy(&self, healthy: bool, reason: &str) {
        let path = root::KUBELET_UNHEALTHY_FILE;
        if healthy {
            let file = self.root().join(path.trim_start_matches('/'));
            fs::remove_file(&file)
                .or_else(ignore_missing)
                .expect("remove unhealthy file");
        } else {
            self.write(path, reason.as_bytes());
        }
    }

    /// Waits until systemd-nspawn exits by itself (the node powered off or rebooted: nspawn
    /// exits with 133 on a reboot), and returns its exit status; panics after `timeout`.
    pub fn wait_stopped(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        let what = format!("node {} to stop", self.name);
        wait_until(timeout, &what, || {
            status = self.container.nspawn.try_wait().expect("nspawn status");
            status.is_some()
        });
        status.expect("stopped")
    }

    /// Copies the workspace's `opi-agent` to [`AGENT_PATH`] inside the node.
    pub fn install_agent(&self) {
        self.copy_in(&bin("opi-agent"), AGENT_PATH);
    }

    /// Runs `opi-agent enroll` inside the node, with the token in a 0600 file there, as
    /// `node_name`; the agent found first on the node's `PATH` is used.
    pub fn enroll(&self, endpoint: &str, pin: &str, token: &str, node_name: &str) -> Output {
        let token_file = "/root/opi-token";
        self.write(token_file, token.as_bytes());
        self.exec_ok(&["chmod", "0600", token_file]);
        self.exec(&[
            "opi-agent",
            "enroll",
            "--manager",
            endpoint,
            "--ca-pin",
            pin,
            "--name",
            node_name,
            "--token-file",
            token_file,
        ])
    }

    /// Starts `command` as the transient unit `unit` (`systemd-run`) inside the node.
    pub fn start_transient(&self, unit: &str, env: &[&str], command: &[&str]) {
        let mut args = vec!["systemd-run".to_string(), format!("--unit={unit}")];
        args.extend(env.iter().map(|pair| format!("--setenv={pair}")));
        args.extend(command.iter().map(|word| word.to_string()));
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exec_ok(&words);
    }

    /// Runs `opi-agent run --root /` as the transient unit `opi-agent` (debug logs).
    pub fn start_agent(&self) {
        self.start_transient(
            "opi-agent",
            &["RUST_LOG=info,opi_agent=debug"],
            &["opi-agent", "run", "--root", "/"],
        );
    }

    /// What `opi-agent health -o json` prints inside the node.
    pub fn agent_health(&self) -> serde_json::Value {
        let text = self.exec_ok(&["opi-agent", "health", "-o", "json"]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("opi-agent health printed invalid JSON ({e}): {text}"))
    }

    /// A manager data directory in `dir` for fleet `fleet`, whose server certificate names
    /// the host's veth address and which will listen there (any free port) once started.
    pub fn host_manager(&self, dir: &Path, fleet: &str) -> Manager {
        let host = self.host_addr();
        Manager::init_with(dir, fleet, &["--san", &host.to_string()])
            .with_listen(SocketAddr::new(host.into(), 0))
    }

    fn exec_command(&self, command: &[&str]) -> Command {
        let leader = self.container.leader.to_string();
        let timeout = EXEC_TIMEOUT_SECS.to_string();
        let mut nsenter = Command::new("nsenter");
        nsenter
            .args(["-t", &leader, "-a", "--", "env", "-i"])
            .arg(format!("PATH={NODE_PATH}"))
            .args(["timeout", "--kill-after=5", &timeout])
            .args(command);
        nsenter
    }

    /// Waits for `systemctl is-system-running --wait` to say `running`.
    fn wait_running(&self, console: &Path) {
        // Until systemd has made its private socket, systemctl cannot wait for it.
        let private = self.root().join("run/systemd/private");
        wait_until(BOOT_TIMEOUT, "systemd's socket inside the node", || {
            private.exists()
        });
        let output = self.exec(&["systemctl", "is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if state != "running" {
            let failed = self.exec(&["systemctl", "--failed", "--no-pager"]);
            panic!(
                "node {} booted into state {state:?}, not running: {}\n{}\nconsole:\n{}",
                self.name,
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&failed.stdout),
                fs::read_to_string(console).unwrap_or_default()
            );
        }
    }
}

impl Container {
    /// Starts systemd-nspawn in `cgroup`, in a private mount namespace where the node's root
    /// is mounted, booting it in `network`'s namespace; waits for the container's init.
    fn spawn(
        layers: &RootLayers,
        name: &str,
        network: &NodeNetwork,
        cgroup: &NodeCgroup,
        console: &Path,
    ) -> Self {
        let log = fs::File::create(console).expect("console log");
        let procs: Vec<String> = cgroup
            .procs_files()
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        // The shell moves itself into the node's cgroups, mounts the root, then becomes nspawn.
        let script = r#"for procs in $OPI_NODE_CGROUPS; do echo $$ > "$procs" || exit 1; done
mount -t overlay opi-node -o "$1" "$2" || exit 1
shift 2
exec "$@""#;
        let nspawn = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(layers.mount_options())
            .arg(&layers.merged)
            .args(["systemd-nspawn", "--boot", "--directory"])
            .arg(&layers.merged)
            .args([
                "--machine",
                name,
                "--register=no",
                "--keep-unit",
                "--private-network",
            ])
            .arg(format!(
                "--network-namespace-path={}",
                network.netns_path().display()
            ))
            .arg("--console=passive")
            .env("OPI_NODE_CGROUPS", procs.join(" "))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("console log"))
            .stderr(log)
            .spawn()
            .expect("unshare starts systemd-nspawn (package systemd-container)");
        let mut container = Self { nspawn, leader: 0 };
        container.leader = container.wait_leader(console);
        container
    }

    /// The container's init: nspawn's child once it runs systemd in a new pid namespace.
    fn wait_leader(&mut self, console: &Path) -> u32 {
        let nspawn = self.nspawn.id();
        let mut leader = None;
        wait_until(BOOT_TIMEOUT, "the node's systemd to start", || {
            if let Some(status) = self.nspawn.try_wait().expect("nspawn status") {
                panic!(
                    "systemd-nspawn exited ({status}):\n{}",
                    fs::read_to_string(console).unwrap_or_default()
                );
            }
            leader = child_of(nspawn).filter(|&pid| runs_systemd_in_own_pid_ns(pid));
            leader.is_some()
        });
        leader.expect("found above")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !matches!(self.nspawn.try_wait(), Ok(None)) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if !matches!(self.nspawn.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(crate::POLL);
        }
        eprintln!("systemd-nspawn {pid} did not stop within {STOP_TIMEOUT:?}: killing it");
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// A child process of `parent`, found by scanning `/proc`.
fn child_of(parent: u32) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let after_name = &stat[stat.rfind(')')? + 2..];
        let ppid: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// Whether `pid` runs systemd in a pid namespace other than ours: the container's init.
fn runs_systemd_in_own_pid_ns(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let theirs = fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let ours = fs::read_link("/proc/self/ns/pid").ok();
    comm.trim() == "systemd" && theirs.is_some() && theirs != ours
}

/// Treats a missing file as already removed.
fn ignore_missing(error: std::io::Error) -> std::io::Result<()> {
    match error.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(error),
    }
}
