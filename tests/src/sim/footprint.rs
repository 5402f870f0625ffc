//! Agent footprint: the real `opi-agent run` against a manager, next to Debian's
//! `prometheus-node-exporter` scraped at a fixed rate, both sampled from `/proc` over the same
//! window. CPU per hour is extrapolated from the window.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::bench::{Bench, Server};
use super::scrape::{cpu_secs, rss_kib};

/// The baseline's binary, from Debian's `prometheus-node-exporter` package.
pub const NODE_EXPORTER: &str = "prometheus-node-exporter";
/// Interval at which the baseline is scraped, as a Prometheus server would.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(10);
/// Time both processes run before the window opens, so that start-up is not counted.
const WARM_UP: Duration = Duration::from_secs(5);
/// Pause between two samples of resident memory.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What one process used over the window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    /// Resident memory at the end of the window.
    pub rss_kib: u64,
    /// Highest resident memory sampled during the window.
    pub peak_rss_kib: u64,
    /// CPU time (user and system) used during the window.
    pub cpu_secs: f64,
}

/// The agent and its baseline over one window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Footprint {
    /// Length of the window.
    pub window_secs: f64,
    /// The real agent at its default heartbeat interval.
    pub agent: Usage,
    /// `prometheus-node-exporter --no-collector.systemd`, scraped every [`SCRAPE_EVERY`].
    pub node_exporter: Usage,
}

impl Usage {
    /// CPU seconds per hour, extrapolated linearly from the window.
    pub fn cpu_per_hour(&self, window_secs: f64) -> f64 {
        self.cpu_secs * 3600.0 / window_secs.max(f64::MIN_POSITIVE)
    }
}

/// Runs the agent, enrolled with a fresh manager in `dir`, and the baseline for `window`.
pub fn measure(bench: &Bench, dir: &Path, window: Duration) -> anyhow::Result<Footprint> {
    let data_dir = dir.join("manager");
    bench.init(&data_dir)?;
    let manager =
        bench.start_manager(&data_dir, "127.0.0.1:0", "127.0.0.1:0", &dir.join("m.log"))?;
    let (endpoint, _) = super::bench::addresses(&data_dir.join("run"))?;
    let endpoint = format!("https://{endpoint}");

    let root = dir.join("agent-root");
    enroll_agent(bench, &data_dir, &endpoint, &root)?;
    let mut run = Command::new(bench.bin_dir.join("opi-agent"));
    run.arg("run").arg("--root").arg(&root);
    let agent = bench.spawn(&mut run, &dir.join("agent.log"))?;

    let listen = free_port()?;
    let mut exporter = Command::new(crate::system_bin(NODE_EXPORTER, NODE_EXPORTER));
    exporter
        .arg(format!("--web.listen-address={listen}"))
        .arg("--no-collector.systemd");
    let exporter = bench.spawn(&mut exporter, &dir.join("node-exporter.log"))?;

    std::thread::sleep(WARM_UP);
    let footprint = sample(&agent, &exporter, listen, window)?;
    drop(manager);
    Ok(footprint)
}

/// Creates a one-use token with `opictl` and enrolls the agent under `root` with it.
fn enroll_agent(bench: &Bench, data_dir: &Path, endpoint: &str, root: &Path) -> anyhow::Result<()> {
    let created = bench.opictl(
        data_dir,
        endpoint,
        &["token", "create", "--pool", "footprint"],
    )?;
    let created: serde_json::Value = serde_json::from_slice(&created.stdout)?;
    let secret = created["secret"].as_str().context("token secret")?;
    let token_file = root.join("token");
    std::fs::create_dir_all(root)?;
    opi_pki::files::write_secret(&token_file, secret.as_bytes())?;

    let pin = std::fs::read_to_string(data_dir.join("pki/trust-bundle.pem"))?;
    let certs = opi_pki::tls::parse_certs(&pin, "trust bundle")?;
    let pin = opi_pki::CaPin::of_cert_der(&certs[0])?.to_string();
    let output = Command::new(bench.bin_dir.join("opi-agent"))
        .args([
            "enroll",
            "--manager",
            endpoint,
            "--ca-pin",
            &pin,
            "--name",
            "footprint",
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--root")
        .arg(root)
        .output()
        .context("run opi-agent enroll")?;
    anyhow::ensure!(
        output.status.success(),
        "opi-agent enroll: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Samples both processes for `window`, scraping the exporter every [`SCRAPE_EVERY`].
fn sample(
    agent: &Server,
    exporter: &Server,
    listen: SocketAddr,
    window: Duration,
) -> anyhow::Result<Footprint> {
    let (agent_pid, exporter_pid) = (agent.pid(), exporter.pid());
    let cpu = |pid| cpu_secs(pid).with_context(|| format!("process {pid} ended"));
    let (agent_cpu, exporter_cpu) = (cpu(agent_pid)?, cpu(exporter_pid)?);
    let mut footprint = Footprint::default();
    let started = Instant::now();
    let mut next_scrape = started;
    while started.elapsed() < window {
        if Instant::now() >= next_scrape {
            let page = crate::http::get(listen, "/metrics").context("scrape node_exporter")?;
            anyhow::ensure!(page.status == 200, "node_exporter answered {}", page.status);
            next_scrape += SCRAPE_EVERY;
        }
        for (usage, pid) in [
            (&mut footprint.agent, agent_pid),
            (&mut footprint.node_exporter, exporter_pid),
        ] {
            usage.rss_kib = rss_kib(pid).with_context(|| format!("process {pid} ended"))?;
            usage.peak_rss_kib = usage.peak_rss_kib.max(usage.rss_kib);
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    footprint.window_secs = started.elapsed().as_secs_f64();
    footprint.agent.cpu_secs = cpu(agent_pid)? - agent_cpu;
    footprint.node_exporter.cpu_secs = cpu(exporter_pid)? - exporter_cpu;
    Ok(footprint)
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?)
}
