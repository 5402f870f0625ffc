//! The benchmark: for each fleet size, the echo ceiling then a real manager under the same
//! simulated load, each in a fresh data directory; results as a Markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::scrape::rss_kib;
use super::Report;

/// Longest wait for a server to write its address files.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a freshly started server gets to settle before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// One benchmark run.
#[derive(Clone, Debug)]
pub struct Bench {
    /// Directory holding `opi-manager`, `opi-echo-ceiling` and `opi-fleet-sim`.
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub sizes: Vec<usize>,
    pub heartbeat: Duration,
    pub duration: Duration,
    pub sources: Vec<String>,
    pub changes_per_min: f64,
    pub uses_per_token: usize,
}

/// The measurements of one fleet size.
#[derive(Clone, Debug)]
pub struct Row {
    pub agents: usize,
    pub manager: Report,
    pub echo: Report,
    pub manager_idle_kib: u64,
    pub echo_idle_kib: u64,
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bench {
    /// Runs every size in turn.
    pub fn run(&self) -> anyhow::Result<Vec<Row>> {
        self.sizes.iter().map(|&n| self.run_size(n)).collect()
    }

    fn run_size(&self, agents: usize) -> anyhow::Result<Row> {
        let dir = self.work_dir.join(format!("n{agents}"));
        let _ = std::fs::remove_dir_all(&dir);
        let data_dir = dir.join("manager");
        self.init(&data_dir)?;

        eprintln!("bench: {agents} agents against the echo ceiling");
        let run_dir = dir.join("echo-run");
        let echo = self.spawn(
            Command::new(self.bin_dir.join("opi-echo-ceiling"))
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--run-dir")
                .arg(&run_dir),
            &dir.join("echo.log"),
        )?;
        let (echo_addr, echo_metrics) = addresses(&run_dir)?;
        let echo_idle_kib = idle_rss(&echo)?;
        let echo_report = self.simulate(
            &data_dir,
            agents,
            &echo,
            &echo_addr,
            &["--target", "echo", "--metrics", &echo_metrics],
        )?;
        drop(echo);

        eprintln!("bench: {agents} agents against the manager");
        let manager = self.spawn(
            Command::new(self.bin_dir.join("opi-manager"))
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                ])
                .arg("--heartbeat")
                .arg(humantime::format_duration(self.heartbeat).to_string())
                .arg("--data-dir")
                .arg(&data_dir)
                .env("RUST_LOG", "info"),
            &dir.join("manager.log"),
        )?;
        let (addr, _) = addresses(&data_dir.join("run"))?;
        let manager_idle_kib = idle_rss(&manager)?;
        let report = self.simulate(&data_dir, agents, &manager, &addr, &[])?;
        Ok(Row {
            agents,
            manager: report,
            echo: echo_report,
            manager_idle_kib,
            echo_idle_kib,
        })
    }

    fn init(&self, data_dir: &Path) -> anyhow::Result<()> {
        let output = Command::new(self.bin_dir.join("opi-manager"))
            .args([
                "init",
                "--fleet",
                "bench",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .stdin(Stdio::null())
            .output()
            .context("run opi-manager init")?;
        anyhow::ensure!(
            output.status.success(),
            "opi-manager init: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    fn spawn(&self, command: &mut Command, log: &Path) -> anyhow::Result<Server> {
        let log = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {:?}", command.get_program()))?;
        Ok(Server(child))
    }

    fn simulate(
        &self,
        data_dir: &Path,
        agents: usize,
        server: &Server,
        addr: &str,
        extra: &[&str],
    ) -> anyhow::Result<Report> {
        let mut command = Command::new(self.bin_dir.join("opi-fleet-sim"));
        command
            .arg("--manager")
            .arg(format!("https://{addr}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--agents", &agents.to_string(), "--json"])
            .args(["--manager-pid", &server.0.id().to_string()])
            .arg("--heartbeat")
            .arg(humantime::format_duration(self.heartbeat).to_string())
            .arg("--duration")
            .arg(humantime::format_duration(self.duration).to_string())
            .args([
                "--report-changes-per-min",
                &self.changes_per_min.to_string(),
            ])
            .args(extra);
        if !self.sources.is_empty() {
            command.args(["--sources", &self.sources.join(",")]);
        }
        let output = command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "opi-fleet-sim failed ({})",
            output.status
        );
        serde_json::from_slice(&output.stdout).context("simulator report")
    }
}

/// The `listen-addr` and `metrics-addr` a server wrote in `run_dir`, once both exist.
fn addresses(run_dir: &Path) -> anyhow::Result<(String, String)> {
    let read = |name| std::fs::read_to_string(run_dir.join(name)).map(|s| s.trim().to_string());
    let started = Instant::now();
    loop {
        if let (Ok(listen), Ok(metrics)) = (read("listen-addr"), read("metrics-addr")) {
            if !listen.is_empty() && !metrics.is_empty() {
                return Ok((listen, metrics));
            }
        }
        anyhow::ensure!(
            started.elapsed() < START_TIMEOUT,
            "no addresses in {}",
            run_dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn idle_rss(server: &Server) -> anyhow::Result<u64> {
    std::thread::sleep(SETTLE);
    rss_kib(server.0.id()).context("server exited before the benchmark")
}

/// RESULTS.md: the machine, the date, the settings and one row per size.
pub fn markdown(bench: &Bench, rows: &[Row], machine: &str, date: &str) -> String {
    let mut out = String::from("# Fleet benchmark results\n\n");
    let _ = writeln!(out, "Written by `scripts/bench` on {date}.\n\n{machine}\n");
    let _ = writeln!(
        out,
        "Settings: heartbeat every {}, measurement window {}, {} health report changes/min, {} agents per bootstrap token, sources {}.\n",
        humantime::format_duration(bench.heartbeat),
        humantime::format_duration(bench.duration),
        bench.changes_per_min,
        bench.uses_per_token,
        if bench.sources.is_empty() { "kernel's choice".to_string() } else { bench.sources.join(",") },
    );
    out.push_str("| agents | connected (manager / ceiling) | heartbeats/s manager | heartbeats/s ceiling | manager / ceiling | sent/s | p50 processing | p99 processing | manager RSS/agent | ceiling RSS/agent | enrollments/s | enroll retries |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let ratio = row.manager.accepted_per_sec / row.echo.accepted_per_sec.max(f64::MIN_POSITIVE);
        let _ = writeln!(
            out,
            "| {} | {} / {} | {:.1} | {:.1} | {:.1} % | {:.1} | {} | {} | {} | {} | {:.0} | {} |",
            row.agents,
            row.manager.connected,
            row.echo.connected,
            row.manager.accepted_per_sec,
            row.echo.accepted_per_sec,
            ratio * 100.0,
            row.manager.sent_per_sec,
            micros(row.manager.p50_seconds),
            micros(row.manager.p99_seconds),
            per_agent(&row.manager, row.manager_idle_kib),
            per_agent(&row.echo, row.echo_idle_kib),
            row.manager.enroll_per_sec,
            row.manager.enroll_retries,
        );
    }
    out
}

fn micros(seconds: Option<f64>) -> String {
    seconds.map_or("n/a".into(), |s| format!("{:.0} µs", s * 1e6))
}

fn per_agent(report: &Report, idle_kib: u64) -> String {
    match report.target_rss_kib {
        Some(kib) if report.connected > 0 => {
            let per = kib.saturating_sub(idle_kib) as f64 / report.connected as f64;
            format!("{per:.1} KiB")
        }
        _ => "n/a".into(),
    }
}
