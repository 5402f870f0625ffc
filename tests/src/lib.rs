//! Harness for end-to-end tests: real `opi-manager`, `opi-agent` and `opictl` processes,
//! talking real mTLS on loopback, each agent under its own `--root`.
//!
//! The binaries come from the workspace's target directory: build them first with
//! `cargo build --workspace --bins` (the project's test script does).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod admin;
pub mod alertmanager;
pub mod containerd;
pub mod etcd;
pub mod grpc;
pub mod hardening;
pub mod http;
pub mod netns;
pub mod node;
pub mod rollout;
pub mod sim;

/// Default bound of [`wait_until`].
pub const WAIT: Duration = Duration::from_secs(10);
/// Pause between two checks of [`wait_until`].
pub const POLL: Duration = Duration::from_millis(20);
/// Pause between two checks that start a process (`opictl`), so that polling does not starve
/// the manager and agents of the machine's few cores.
pub const POLL_OPICTL: Duration = Duration::from_millis(200);

/// Path of a workspace binary, next to the test executable's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Path of a binary the tests need from Debian's packages, found on PATH; panics naming the
/// package when it is missing.
pub fn system_bin(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: install Debian's `{package}` package (`scripts/test` installs it through scripts/install-test-deps)")
        })
}

/// The value of `series` (name and labels, exactly as the manager writes them) on a metrics
/// page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Ports [`free_port`] picks from: below Linux's ephemeral range (32768-60999 by default), so
/// that no outgoing connection of another test takes the port between the pick and the bind.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// `127.0.0.1:PORT` of a loopback port that was free a moment ago, for a process the test
/// starts to listen on.
pub fn free_port() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(TEST_PORTS);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("bound address").to_string();
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}")
}

/// Polls `check` every [`POLL`] until it returns true, or panics after `timeout` naming `what`.
pub fn wait_until(timeout: Duration, what: &str, check: impl FnMut() -> bool) -> Duration {
    wait_until_every(POLL, timeout, what, check)
}

/// [`wait_until`], checking every `period`.
pub fn wait_until_every(
    period: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(period);
    }
}

/// Permission bits of a file or directory.
pub fn mode(path: &Path) -> u32 {
    let metadata = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    metadata.permissions().mode() & 0o777
}

/// Runs a command to completion, capturing its output.
pub fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("command can be started")
}

/// Stdout of a successful command, or a panic showing its stderr.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Stderr of a command that must fail.
pub fn fails(output: Output) -> String {
    assert!(
        !output.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).expect("utf-8 output")
}

/// An initialised manager data directory and, when started, its `serve` process.
pub struct Manager {
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub addr: Option<SocketAddr>,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Manager {
    /// Runs `opi-manager init` for fleet `fleet` in `dir/manager`.
    pub fn init(dir: &Path, fleet: &str) -> Self {
        Self::init_with(dir, fleet, &[])
    }

    /// [`Manager::init`] with extra `init` arguments (`--san ADDR`…).
    pub fn init_with(dir: &Path, fleet: &str, extra: &[&str]) -> Self {
        let data_dir = dir.join("manager");
        ok(run(Command::new(bin("opi-manager"))
            .args([
                "init",
                "--fleet",
                fleet,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data_dir)
            .args(extra)));
        let log = dir.join("manager.log");
        Self {
            data_dir,
            log,
            addr: None,
            child: None,
            extra: Vec::new(),
        }
    }

    /// A second manager serving a copy of this one's data directory (the same CA and issuing
    /// key), with its own log under `dir`: two processes on one shared store (etcd) to race.
    pub fn copy_to(&self, dir: &Path) -> Self {
        let data_dir = dir.join("manager");
        fs::create_dir_all(&data_dir).expect("second manager data dir");
        ok(run(Command::new("cp")
            .arg("-a")
            .arg(self.data_dir.join("."))
            .arg(&data_dir)));
        let _ = fs::remove_file(data_dir.join("run/listen-addr"));
        Self {
            data_dir,
            log: dir.join("manager.log"),
            addr: None,
            child: None,
            extra: self.extra.clone(),
        }
    }

    /// The address the next start listens on instead of `127.0.0.1:0`; port 0 picks a free
    /// port, kept across restarts.
    pub fn with_listen(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Extra `serve` arguments for the next start.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Starts `opi-manager serve` on a free loopback port (the same port again after a
    /// restart) and waits until it accepts connections.
    pub fn start(&mut self) {
        let listen = self
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let addr_file = self.data_dir.join("run/listen-addr");
        let _ = fs::remove_file(&addr_file);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("manager log");
        let child = Command::new(bin("opi-manager"))
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("RUST_LOG", "info,opi_manager=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("opi-manager serve starts");
        self.child = Some(child);
        let started = Instant::now();
        while !addr_file.exists() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > WAIT {
                panic!(
                    "the manager did not listen within {WAIT:?} ({exited:?}); its log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
        let text = fs::read_to_string(&addr_file).expect("listen-addr file");
        let addr: SocketAddr = text.trim().parse().expect("listen address");
        wait_until(WAIT, "the manager port to accept", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        self.addr = Some(addr);
    }

    /// Address of the metrics listener (`serve --metrics-listen`), from `run/metrics-addr`.
    pub fn metrics_addr(&self) -> SocketAddr {
        let path = self.data_dir.join("run/metrics-addr");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; was --metrics-listen given?", path.display()));
        text.trim().parse().expect("metrics address")
    }

    /// The metrics page, from `GET /metrics`; panics unless the answer is 200.
    pub fn scrape(&self) -> String {
        let response = http::get(self.metrics_addr(), "/metrics").expect("metrics answer");
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        response.body
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr.expect("manager started"))
    }

    /// The admin bundle written by init.
    pub fn admin_bundle(&self) -> PathBuf {
        self.data_dir.join("opictl-admin.toml")
    }

    /// An `opictl` bound to this manager with the admin bundle.
    pub fn opictl(&self) -> Opictl {
        Opictl {
            config: self.admin_bundle(),
            endpoint: self.endpoint(),
        }
    }

    /// `opictl` with a bundle of `role` for operator `name`, issued by `opi-manager operator
    /// issue` into `dir`.
    pub fn operator(&self, dir: &Path, name: &str, role: &str) -> Opictl {
        let out = dir.join(format!("{name}.toml"));
        ok(run(Command::new(bin("opi-manager"))
            .args(["operator", "issue", name, "--role", role, "--ttl", "1h"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--out")
            .arg(&out)));
        Opictl {
            config: out,
            endpoint: self.endpoint(),
        }
    }

    /// The events of kind `kind` about node `node` after revision `since`, from a watch as the
    /// admin, until `done` says enough; panics after `timeout` with what came.
    pub fn node_events(
        &self,
        node: &str,
        kind: &str,
        since: u64,
        timeout: Duration,
        done: impl FnMut(&[opi_proto::v1::Event]) -> bool,
    ) -> Vec<opi_proto::v1::Event> {
        let request = opi_proto::v1::WatchRequest {
            since_revision: since,
            nodes: vec![node.into()],
            kinds: vec![kind.into()],
            ..Default::default()
        };
        self.watch_events(request, timeout, done)
    }

    /// Every event after revision `since` (0: from the first event kept), from a watch as the
    /// admin, until `done` says enough; panics after `timeout` with what came.
    pub fn events_after(
        &self,
        since: u64,
        timeout: Duration,
        done: impl FnMut(&[opi_proto::v1::Event]) -> bool,
    ) -> Vec<opi_proto::v1::Event> {
        let request = opi_proto::v1::WatchRequest {
            since_revision: since,
            replay_last: if since == 0 { u32::MAX } else { 0 },
            ..Default::default()
        };
        self.watch_events(request, timeout, done)
    }

    /// The connectivity events of the fleet after revision `since` that arrive within `quiet`,
    /// as `NODE: FROM -> TO`.
    pub fn connectivity_events(&self, since: u64, quiet: Duration) -> Vec<String> {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let mut client = grpc::admin(&self.endpoint(), &self.data_dir)
                .await
                .expect("admin client");
            let request = opi_proto::v1::WatchRequest {
                since_revision: since,
                kinds: vec!["connectivity".into()],
                ..Default::default()
            };
            let mut stream = client.watch(request).await.expect("watch").into_inner();
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + quiet;
            while let Ok(Ok(Some(event))) =
                tokio::time::timeout_at(deadline, stream.message()).await
            {
                seen.push(format!("{}: {} -> {}", event.node, event.from, event.to));
            }
            seen
        })
    }

    /// The events `request` watches, as the admin, until `done` says enough; panics after
    /// `timeout` with what came.
    fn watch_events(
        &self,
        request: opi_proto::v1::WatchRequest,
        timeout: Duration,
        done: impl FnMut(&[opi_proto::v1::Event]) -> bool,
    ) -> Vec<opi_proto::v1::Event> {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let mut client = runtime
            .block_on(grpc::admin(&self.endpoint(), &self.data_dir))
            .expect("admin client");
        runtime.block_on(grpc::collect_events(&mut client, request, timeout, done))
    }

    /// Sends SIGTERM and waits for the manager to exit; returns how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let mut child = self.child.take().expect("manager started");
        let start = std::time::Instant::now();
        send_signal(&child, nix::sys::signal::Signal::SIGTERM);
        wait_until(timeout, "the manager to exit after SIGTERM", || {
            child.try_wait().expect("manager status").is_some()
        });
        start.elapsed()
    }

    /// Kills the manager with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The manager's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The fleet CA pin, read back from the trust bundle.
    pub fn ca_pin(&self) -> String {
        let pem =
            fs::read_to_string(self.data_dir.join("pki/trust-bundle.pem")).expect("trust bundle");
        let certs = opi_pki::tls::parse_certs(&pem, "trust bundle").expect("trust bundle parses");
        opi_pki::CaPin::of_cert_der(&certs[0])
            .expect("pin")
            .to_string()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `opictl` with a bundle and an endpoint.
#[derive(Clone, Debug)]
pub struct Opictl {
    pub config: PathBuf,
    pub endpoint: String,
}

impl Opictl {
    /// Runs `opictl ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        run(Command::new(bin("opictl"))
            .arg("--config")
            .arg(&self.config)
            .args(["--manager", &self.endpoint])
            .args(args))
    }

    /// Runs `opictl ARGS -o json` and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = ok(self.run(&all));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("opictl {args:?} printed invalid JSON ({e}): {text}"))
    }

    /// Creates a token; returns `(id, ID.SECRET)`.
    pub fn create_token(&self, pool: &str, uses: u32, extra: &[&str]) -> (String, String) {
        let uses = uses.to_string();
        let mut args = vec!["token", "create", "--pool", pool, "--uses", &uses];
        args.extend(extra);
        let created = self.json(&args);
        let id = created["id"].as_str().expect("token id").to_string();
        let secret = created["secret"]
            .as_str()
            .expect("token secret")
            .to_string();
        (id, secret)
    }

    /// Nodes as `opictl nodes -o json` prints them.
    pub fn nodes(&self) -> Vec<Value> {
        self.json(&["nodes"])
            .as_array()
            .expect("nodes array")
            .clone()
    }
}

/// Sends `signal` to a process the tests started.
fn send_signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal} not sent: {e}"));
}

/// One agent with its own root directory.
pub struct Agent {
    pub name: String,
    pub root: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// An agent rooted at `dir/NAME`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let root = dir.join(name);
        fs::create_dir_all(&root).expect("agent root");
        Self {
            name: name.into(),
            log: dir.join(format!("{name}.log")),
            root,
            child: None,
        }
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("var/lib/opi-agent")
    }

    /// What `opi-agent status -o json` prints: the node's identity, managers and certificate.
    pub fn status(&self) -> Value {
        let text = ok(run(Command::new(bin("opi-agent"))
            .args(["status", "-o", "json", "--root"])
            .arg(&self.root)));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("opi-agent status printed invalid JSON ({e}): {text}"))
    }

    /// The node certificate in `node.pem`, as the manager reads it.
    pub fn leaf(&self) -> opi_pki::tls::PeerCert {
        let pem = fs::read_to_string(self.state_dir().join("node.pem")).expect("node.pem");
        let chain = opi_pki::tls::parse_certs(&pem, "node certificate").expect("node.pem parses");
        opi_pki::tls::PeerCert::from_der(&chain[0]).expect("node certificate")
    }

    /// Runs `opi-agent enroll` with the token passed through a 0600 file.
    pub fn enroll(&self, endpoint: &str, pin: &str, token: &str) -> Output {
        let token_file = self.root.join("token");
        opi_pki::files::write_secret(&token_file, token.as_bytes()).expect("token file");
        let output = run(Command::new(bin("opi-agent"))
            .args([
                "enroll",
                "--manager",
                endpoint,
                "--ca-pin",
                pin,
                "--name",
                &self.name,
            ])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--root")
            .arg(&self.root));
        self.append_log(&output.stderr);
        output
    }

    /// Runs `opi-agent enroll --reenroll` with the token passed through a 0600 file; the
    /// manager, name and trust come from the node's stored enrollment.
    pub fn reenroll(&self, token: &str) -> Output {
        let token_file = self.root.join("token");
        opi_pki::files::write_secret(&token_file, token.as_bytes()).expect("token file");
        let output = run(Command::new(bin("opi-agent"))
            .args(["enroll", "--reenroll", "--token-file"])
            .arg(&token_file)
            .arg("--root")
            .arg(&self.root));
        self.append_log(&output.stderr);
        output
    }

    /// Starts `opi-agent run` in a private mount namespace of its own, with a tmpfs of
    /// `size` mounted at `ROOT/MOUNT` first; the host's mounts are not touched.
    pub fn start_with_tmpfs(&mut self, mount: &str, size: &str) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let script = r#"mount -t tmpfs -o "size=$2" tmpfs "$0/$1" && exec "$3" run --root "$0""#;
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
            ])
            .arg(&self.root)
            .args([mount, size])
            .arg(bin("opi-agent"))
            .env("RUST_LOG", "info,opi_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("unshare starts");
        self.child = Some(child);
    }

    /// Runs `command` inside the agent's mount namespace (see [`Agent::start_with_tmpfs`]).
    pub fn in_mount_namespace(&self, command: &[&str]) -> Output {
        let pid = self.child.as_ref().expect("agent started").id().to_string();
        run(Command::new("nsenter")
            .args(["-t", &pid, "-m", "--"])
            .args(command))
    }

    /// Starts `opi-agent run` in the background.
    pub fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(bin("opi-agent"))
            .arg("run")
            .arg("--root")
            .arg(&self.root)
            .env("RUST_LOG", "info,opi_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("opi-agent run starts");
        self.child = Some(child);
    }

    /// Whether `opi-agent run` was started and has not exited.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("agent status").is_none())
    }

    /// Stops the agent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the running agent (SIGSTOP): its session stays open, but it sends nothing.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen agent go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        send_signal(self.child.as_ref().expect("agent started"), signal);
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn append_log(&self, bytes: &[u8]) {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        file.write_all(bytes).expect("agent log write");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The node in `nodes` named `name`.
pub fn node<'a>(nodes: &'a [Value], name: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["name"] == name)
}

/// Whether every named node shows as online.
pub fn all_online(opictl: &Opictl, names: &[&str]) -> bool {
    let nodes = opictl.nodes();
    names
        .iter()
        .all(|name| node(&nodes, name).is_some_and(|n| n["connectivity"] == "online"))
}
