//! `opi-manager demo`: a manager with its embedded store and a small local fleet, enrolled
//! through a real token over real mTLS, each agent a real process with its own `--root`. The
//! pools get the profiles shipped in `deploy/profiles/`: the worker nodes the worker profile,
//! one more node the control-plane profile, both ANSSI-BP-028 intermediary; under `--root`
//! only files change, and each node reports its compliance evidence.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use opi_pki::files;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use super::init::{self, InitArgs};
use super::serve::{self, ServeArgs};
use crate::datadir::DataDir;
use crate::fleet::TokenSpec;
use crate::rollout::{Budget, Strategy};

/// Most nodes the demo starts.
pub const MAX_DEMO_NODES: usize = 50;
/// The pool of the worker nodes, and its profile.
pub const WORKER_POOL: (&str, &str) =
    ("demo", include_str!("../../../deploy/profiles/worker.yaml"));
/// The pool of the control-plane node, and its profile.
pub const CONTROL_PLANE_POOL: (&str, &str) = (
    "control-plane",
    include_str!("../../../deploy/profiles/control-plane.yaml"),
);
/// The demo nodes' checks: no kubelet or containerd runs under their roots and the machine's
/// clock may not be synchronised, so those checks are left out; with them the nodes would be
/// degraded and the health-gated rollouts of the demo's profiles would halt at the canary.
pub const DEMO_HEALTH: &str = r#"version = 1
checks = ["DiskPressure", "InodePressure", "MemoryPressure", "PidPressure", "ReadOnlyFilesystem",
    "CertificateExpiring", "RebootRequired", "HardwareErrors", "ConfigDrift",
    "HardeningExceptionExpired"]
"#;
/// How the demo's profiles roll out: a canary, then the rest at once, a few seconds apart.
pub const DEMO_SETTLE_SECS: u64 = 5;

/// The host's `login.defs`, copied into each demo root as a node image would have one.
pub const IMAGE_LOGIN_DEFS: &str = "/etc/login.defs";

/// Arguments of `opi-manager demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of local agents to enroll and run.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Data directory [default: a new directory under the system temp dir, kept on exit].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address the demo manager listens on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// The `opi-agent` binary [default: next to this binary, else on PATH].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > MAX_DEMO_NODES {
        bail!("--nodes must be between 1 and {MAX_DEMO_NODES}");
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let dir = DataDir::new(&data_dir);
    if !dir.config().exists() {
        init::run(init_args(&data_dir, args.listen)).await?;
    }
    let running = serve::start(&serve_args(&data_dir, args.listen)).await?;
    let endpoint = running.endpoints[0].clone();
    let pin = running.fleet.trust().pin.to_string();
    let workers = token_file(&running, &data_dir, WORKER_POOL.0, args.nodes).await?;
    let control_plane = token_file(&running, &data_dir, CONTROL_PLANE_POOL.0, 1).await?;

    let agent_bin = args.agent_bin.clone().unwrap_or_else(find_agent_bin);
    let mut nodes: Vec<(Node, &Path)> = (1..=args.nodes)
        .map(|i| {
            let node = Node {
                name: format!("demo-node-{i}"),
                root: data_dir.join("nodes").join(format!("node-{i}")),
            };
            (node, workers.as_path())
        })
        .collect();
    let control = Node {
        name: "demo-control-plane-1".to_string(),
        root: data_dir.join("nodes").join("control-plane-1"),
    };
    nodes.push((control, control_plane.as_path()));
    for (node, token) in &nodes {
        node.enroll(&agent_bin, &endpoint, &pin, token).await?;
    }
    // Set once the nodes are enrolled, so that each rollout has its waves from the start.
    for (pool, profile) in [WORKER_POOL, CONTROL_PLANE_POOL] {
        running
            .fleet
            .set_profile(
                pool,
                profile,
                demo_strategy(),
                "local:demo",
                "local",
                Vec::new(),
            )
            .await
            .with_context(|| format!("cannot set the profile of pool {pool}"))?;
    }
    let mut agents = Vec::new();
    for (node, _) in &nodes {
        agents.push(node.spawn(&agent_bin)?);
    }

    print_instructions(&dir, &endpoint, nodes.len());
    crate::signals::terminated().await;
    info!("stopping the demo fleet");
    for mut agent in agents {
        let _ = agent.kill().await;
    }
    running.stop().await
}

struct Node {
    name: String,
    root: PathBuf,
}

impl Node {
    async fn enroll(
        &self,
        bin: &Path,
        endpoint: &str,
        pin: &str,
        token_file: &Path,
    ) -> anyhow::Result<()> {
        if self.root.join("var/lib/opi-agent/agent.toml").exists() {
            info!(node = %self.name, "already enrolled");
            return Ok(());
        }
        files::create_dir(&self.root, 0o755)?;
        let health = self.root.join("etc/opi-agent/health.toml");
        std::fs::create_dir_all(health.parent().expect("a file under the root"))?;
        files::write_public(&health, DEMO_HEALTH.as_bytes())?;
        // A node image has its own login.defs, whose keys the baseline edits (R36, R68).
        if let Ok(login_defs) = std::fs::read(IMAGE_LOGIN_DEFS) {
            files::write_public(&self.root.join("etc/login.defs"), &login_defs)?;
        }
        let output = Command::new(bin)
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
            .arg(token_file)
            .arg("--root")
            .arg(&self.root)
            .output()
            .await
            .with_context(|| format!("cannot run {}; pass --agent-bin", bin.display()))?;
        if !output.status.success() {
            bail!(
                "enrolling {} failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn spawn(&self, bin: &Path) -> anyhow::Result<Child> {
        let log_path = self.root.join("agent.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--root")
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        info!(node = %self.name, log = %log_path.display(), "agent started");
        Ok(child)
    }
}

/// A canary, then every other node of the pool, [`DEMO_SETTLE_SECS`] apart.
fn demo_strategy() -> Strategy {
    Strategy {
        max_unavailable: Budget::Percent(100),
        settle_secs: DEMO_SETTLE_SECS,
        ..Strategy::default()
    }
}

/// A token for `uses` nodes of `pool`, written to a secret file of the data directory.
async fn token_file(
    running: &serve::Running,
    data_dir: &Path,
    pool: &str,
    uses: usize,
) -> anyhow::Result<PathBuf> {
    let spec = TokenSpec {
        pool: pool.into(),
        ttl: Duration::from_secs(3600),
        uses: uses as u32,
        labels: BTreeMap::from([("env".to_string(), "demo".to_string())]),
        description: "opi-manager demo".into(),
    };
    let token = running
        .fleet
        .create_token(spec, "local:demo", "local")
        .await?;
    let path = data_dir.join(format!("demo-token-{pool}"));
    files::write_secret(&path, token.token.expose().as_bytes())?;
    Ok(path)
}

fn init_args(data_dir: &Path, listen: SocketAddr) -> InitArgs {
    InitArgs {
        data_dir: data_dir.to_path_buf(),
        fleet: "demo".into(),
        replica: "manager".into(),
        sans: Vec::new(),
        listen,
        advertise: Vec::new(),
        server_cert_ttl: opi_pki::ca::SERVER_CERT_TTL,
        admin_ttl: Duration::from_secs(24 * 3600),
        store: None,
        join: None,
    }
}

fn serve_args(data_dir: &Path, listen: SocketAddr) -> ServeArgs {
    ServeArgs {
        data_dir: data_dir.to_path_buf(),
        listen: Some(listen),
        operator_listen: None,
        handshake_timeout: crate::server::Limits::default().handshake,
        call_timeout: crate::server::Limits::default().call,
        audit_checkpoint_every: Duration::from_secs(600),
        advertise: Vec::new(),
        store: None,
        node_cert_ttl: Duration::from_secs(24 * 3600),
        heartbeat: Duration::from_secs(10),
        offline_after: Duration::from_secs(40),
        report_freshness: Duration::from_secs(60),
        event_retention: crate::events::DEFAULT_RETENTION,
        reconnect_rate: crate::fleet::going_away::RECONNECTS_PER_SEC,
        expired_renewal_window: crate::fleet::DEFAULT_EXPIRED_RENEWAL_WINDOW,
        profile_signer: Vec::new(),
        server_cert_ttl: opi_pki::ca::SERVER_CERT_TTL,
        ca_expiry_warning: crate::identity::DEFAULT_CA_EXPIRY_WARNING,
        metrics_listen: None,
        metrics_per_node: false,
        alertmanager: Vec::new(),
        runbooks: crate::alerts::DEFAULT_RUNBOOKS.into(),
        alert_resend: crate::alerts::DEFAULT_RESEND,
        storm_threshold: crate::alerts::DEFAULT_STORM_THRESHOLD,
        leader_lease: Duration::from_secs(10),
        replica_name: None,
    }
}

fn default_data_dir() -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    std::env::temp_dir().join(format!("opi-demo-{stamp}"))
}

/// `opi-agent` beside this binary (as cargo builds them), else from PATH.
fn find_agent_bin() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("opi-agent")));
    match beside {
        Some(path) if path.exists() => path,
        _ => {
            warn!("opi-agent not found next to opi-manager; using the one on PATH");
            PathBuf::from("opi-agent")
        }
    }
}

fn print_instructions(dir: &DataDir, endpoint: &str, nodes: usize) {
    let config = dir.admin_bundle();
    println!();
    println!(
        "demo fleet running: manager at {endpoint}, {nodes} agent(s), data in {}",
        dir.root().display()
    );
    println!("in another terminal:");
    println!("  export OPICTL_CONFIG={}", config.display());
    println!("  opictl status");
    println!("  opictl nodes");
    println!("  opictl compliance");
    println!("  opictl compliance report --out report && opictl compliance verify report/compliance-report.json --ca {}/pki/root-ca.pem", dir.root().display());
    println!(
        "agent logs: {}/nodes/node-N/agent.log; stop with Ctrl-C",
        dir.root().display()
    );
}
