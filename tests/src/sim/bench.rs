//! The benchmark: for each fleet size, the echo ceiling then a real manager under the same
//! simulated load, each in a fresh data directory; with the manager still loaded, `opictl`
//! latency, watch fan-out and a restart's reconnection storm. Then heartbeat throughput at
//! saturation against the ceiling, and the real agent's footprint against node_exporter.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::footprint::{self, Footprint};
use super::scrape::{rss_kib, Snapshot};
use super::Report;

/// Longest wait for a server to write its address files.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a freshly started server gets to settle before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for every agent to be back after a manager restart.
pub(super) const STORM_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for a stopped manager to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two checks of a server's state.
pub(super) const POLL: Duration = Duration::from_millis(100);
/// Pause between two scrapes of the restarted managers' sessions: each scrape makes a manager
/// count every node, and ten a second took CPU from the reconnections being measured.
pub(super) const STORM_POLL: Duration = Duration::from_millis(500);
/// Runs of each timed `opictl` command; the median is reported.
const OPICTL_RUNS: usize = 5;

/// One benchmark run.
#[derive(Clone, Debug)]
pub struct Bench {
    /// Directory holding `opi-manager`, `opi-agent`, `opictl`, `opi-echo-ceiling` and
    /// `opi-fleet-sim`.
    pub bin_dir: PathBuf,
    /// Scratch directory for data directories and logs.
    pub work_dir: PathBuf,
    /// Fleet sizes, each measured in turn.
    pub sizes: Vec<usize>,
    /// Fleet sizes measured spread over `replicas` manager replicas on etcd, after `sizes`.
    pub replicated: Vec<usize>,
    /// Manager replicas of the `replicated` sizes.
    pub replicas: usize,
    /// Heartbeat interval of the fleet-size runs.
    pub heartbeat: Duration,
    /// Measurement window of each run.
    pub duration: Duration,
    /// Loopback source addresses for the agents' connections.
    pub sources: Vec<String>,
    /// Health report changes per minute across the fleet.
    pub changes_per_min: f64,
    /// Agents enrolled with one bootstrap token.
    pub uses_per_token: usize,
    /// Watch streams of the fan-out measurement.
    pub watchers: usize,
    /// Agents of the saturation run, and the interval at which each sends.
    pub saturation: (usize, Duration),
    /// Window of the agent footprint measurement; none skips it.
    pub footprint: Option<Duration>,
}

/// The measurements of one fleet size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// Simulated agents.
    pub agents: usize,
    /// Manager replicas on etcd the agents were spread over; 0 for a single manager on
    /// SQLite.
    pub replicas: usize,
    /// The manager under load.
    pub manager: Report,
    /// The echo ceiling under the same load.
    pub echo: Report,
    /// Resident memory of each server before any agent connected.
    pub manager_idle_kib: u64,
    /// See `manager_idle_kib`.
    pub echo_idle_kib: u64,
    /// Median wall time of `opictl status`.
    pub status_secs: Option<f64>,
    /// Median wall time of `opictl nodes --pool sim --health degraded`.
    pub nodes_secs: Option<f64>,
    /// Per round, time from the probe's report to the last watcher receiving its event.
    pub fanout_secs: Vec<f64>,
    /// Time from the manager's stop to every agent's session being open again.
    pub storm_secs: Option<f64>,
    /// What failed among the measurements above, if anything.
    pub notes: Vec<String>,
}

impl Row {
    /// Takes from the simulators' final report what happened after the first: sessions lost
    /// and opened again (the restart), and the attempts that failed meanwhile.
    pub(super) fn take_final(&mut self, last: &Report) {
        self.manager.sessions_lost = last.sessions_lost;
        self.manager.reconnected = last.reconnected;
        self.manager.failed_attempts = last.failed_attempts;
        self.manager.refused_attempts = last.refused_attempts;
        eprintln!(
            "bench: sessions opened again {}, failed attempts {} ({} refused)",
            last.reconnected, last.failed_attempts, last.refused_attempts
        );
    }
}

/// Heartbeats at saturation: the same agents sending as fast as they may.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Saturation {
    /// The manager.
    pub manager: Report,
    /// The echo ceiling.
    pub echo: Report,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    /// One row per fleet size.
    pub rows: Vec<Row>,
    /// The saturation run.
    pub saturation: Option<Saturation>,
    /// The agent against node_exporter.
    pub footprint: Option<Footprint>,
}

/// A child process, killed when dropped.
pub struct Server(Child);

impl Server {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A simulator holding its agents connected until dropped.
pub(super) struct Held {
    pub(super) child: Child,
    pub(super) stdout: BufReader<ChildStdout>,
    pub(super) report: Report,
}

impl Bench {
    /// Runs every size, the saturation run and the footprint, in this order.
    pub fn run(&self) -> anyhow::Result<Results> {
        let mut results = Results::default();
        for &agents in &self.sizes {
            results.rows.push(self.run_size(agents)?);
        }
        for &agents in &self.replicated {
            results
                .rows
                .push(self.run_replicated(agents, self.replicas)?);
        }
        if self.saturation.0 > 0 {
            results.saturation = Some(self.run_saturation()?);
        }
        if let Some(window) = self.footprint {
            eprintln!("bench: agent footprint against node_exporter for {window:?}");
            let dir = self.fresh_dir("footprint")?;
            results.footprint = Some(footprint::measure(self, &dir, window)?);
        }
        Ok(results)
    }

    fn run_size(&self, agents: usize) -> anyhow::Result<Row> {
        let dir = self.fresh_dir(&format!("n{agents}"))?;
        let data_dir = dir.join("manager");
        self.init(&data_dir)?;

        eprintln!("bench: {agents} agents against the echo ceiling");
        let (echo, echo_idle_kib) = self.echo_run(&dir, &data_dir, agents, self.heartbeat)?;

        eprintln!("bench: {agents} agents against the manager");
        let log = dir.join("manager.log");
        let manager = self.start_manager(&data_dir, "127.0.0.1:0", "127.0.0.1:0", &log)?;
        let (listen, metrics) = addresses(&data_dir.join("run"))?;
        let manager_idle_kib = idle_rss(&manager)?;
        let sim = self.sim_command(&data_dir, agents, self.heartbeat, &manager, &listen, &[]);
        let held = self.hold(sim)?;

        let mut row = Row {
            agents,
            echo,
            manager: held.report.clone(),
            manager_idle_kib,
            echo_idle_kib,
            ..Row::default()
        };
        self.loaded_measurements(&mut row, &data_dir, &listen);
        let restarted = self.storm(&mut row, manager, &data_dir, &listen, &metrics, &log);
        let final_report = release(held)?;
        row.take_final(&final_report);
        drop(restarted?);
        Ok(row)
    }

    /// `opictl` latency and watch fan-out against the loaded manager; failures become notes.
    pub(super) fn loaded_measurements(&self, row: &mut Row, data_dir: &Path, listen: &str) {
        let endpoint = format!("https://{listen}");
        let filtered = ["nodes", "--pool", "sim", "--health", "degraded"];
        for (args, slot) in [
            (&["status"][..], &mut row.status_secs),
            (&filtered[..], &mut row.nodes_secs),
        ] {
            match self.time_opictl(data_dir, &endpoint, args) {
                Ok(secs) => *slot = Some(secs),
                Err(error) => row
                    .notes
                    .push(format!("opictl {}: {error:#}", args.join(" "))),
            }
        }

        eprintln!("bench: watch fan-out to {} watchers", self.watchers);
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let fanout = super::fanout::measure(&endpoint, data_dir, self.watchers);
        match runtime.block_on(fanout) {
            Ok(times) => row.fanout_secs = times.iter().map(Duration::as_secs_f64).collect(),
            Err(error) => row.notes.push(format!("watch fan-out: {error:#}")),
        }
    }

    /// Stops the manager, starts it again on the same addresses and waits for every agent's
    /// session; returns the new manager.
    fn storm(
        &self,
        row: &mut Row,
        manager: Server,
        data_dir: &Path,
        listen: &str,
        metrics: &str,
        log: &Path,
    ) -> anyhow::Result<Server> {
        eprintln!(
            "bench: manager restart with {} agents",
            row.manager.connected
        );
        let started = Instant::now();
        stop(manager)?;
        let restart_log = log.with_extension("restart.log");
        let manager = self.start_manager(data_dir, listen, metrics, &restart_log)?;
        let metrics = metrics.parse().context("metrics address")?;
        let expected = row.manager.connected as f64;
        while started.elapsed() < STORM_TIMEOUT {
            let sessions = Snapshot::take_blocking(metrics).map_or(0.0, |s| s.sessions);
            if sessions >= expected {
                row.storm_secs = Some(started.elapsed().as_secs_f64());
                return Ok(manager);
            }
            std::thread::sleep(STORM_POLL);
        }
        row.notes.push(format!(
            "reconnection storm: not every agent was back within {STORM_TIMEOUT:?}"
        ));
        Ok(manager)
    }

    fn run_saturation(&self) -> anyhow::Result<Saturation> {
        let (agents, interval) = self.saturation;
        let dir = self.fresh_dir("saturation")?;
        let data_dir = dir.join("manager");
        self.init(&data_dir)?;
        eprintln!("bench: saturation, {agents} agents every {interval:?}, echo ceiling");
        let (echo, _) = self.echo_run(&dir, &data_dir, agents, interval)?;

        eprintln!("bench: saturation, {agents} agents every {interval:?}, manager");
        let log = dir.join("manager.log");
        let manager = self.start_manager(&data_dir, "127.0.0.1:0", "127.0.0.1:0", &log)?;
        let (listen, _) = addresses(&data_dir.join("run"))?;
        let mut sim = self.sim_command(&data_dir, agents, interval, &manager, &listen, &[]);
        let manager = simulate(&mut sim)?;
        Ok(Saturation { manager, echo })
    }

    /// One simulation against a fresh echo ceiling; its report and the ceiling's idle memory.
    fn echo_run(
        &self,
        dir: &Path,
        data_dir: &Path,
        agents: usize,
        interval: Duration,
    ) -> anyhow::Result<(Report, u64)> {
        let run_dir = dir.join("echo-run");
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut command = Command::new(self.bin_dir.join("opi-echo-ceiling"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--run-dir")
            .arg(&run_dir);
        let echo = self.spawn(&mut command, &dir.join("echo.log"))?;
        let (addr, metrics) = addresses(&run_dir)?;
        let idle = idle_rss(&echo)?;
        let extra = ["--target", "echo", "--metrics", &metrics];
        let mut sim = self.sim_command(data_dir, agents, interval, &echo, &addr, &extra);
        Ok((simulate(&mut sim)?, idle))
    }

    /// A scratch directory of its own under the work directory, emptied.
    pub(super) fn fresh_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work_dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        Ok(dir)
    }

    /// `opi-manager init` of a fleet named `bench` in `data_dir`.
    pub fn init(&self, data_dir: &Path) -> anyhow::Result<()> {
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

    /// `opi-manager serve` on `listen`, metrics on `metrics`, logging to `log`.
    pub fn start_manager(
        &self,
        data_dir: &Path,
        listen: &str,
        metrics: &str,
        log: &Path,
    ) -> anyhow::Result<Server> {
        let _ = std::fs::remove_file(data_dir.join("run/listen-addr"));
        let _ = std::fs::remove_file(data_dir.join("run/metrics-addr"));
        let mut command = Command::new(self.bin_dir.join("opi-manager"));
        command
            .args(["serve", "--listen", listen, "--metrics-listen", metrics])
            .arg("--heartbeat")
            .arg(humantime::format_duration(self.heartbeat).to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", manager_log());
        self.spawn(&mut command, log)
    }

    /// Starts `command` with its standard error in `log`.
    pub fn spawn(&self, command: &mut Command, log: &Path) -> anyhow::Result<Server> {
        let log = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {:?}", command.get_program()))?;
        Ok(Server(child))
    }

    /// Runs `opictl ARGS -o json` as the fleet's admin; fails with its standard error.
    pub fn opictl(
        &self,
        data_dir: &Path,
        endpoint: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let output = Command::new(self.bin_dir.join("opictl"))
            .arg("--config")
            .arg(data_dir.join("opictl-admin.toml"))
            .args(["--manager", endpoint])
            .args(args)
            .args(["-o", "json"])
            .stdin(Stdio::null())
            .output()
            .context("run opictl")?;
        anyhow::ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(output)
    }

    /// Median wall time of [`OPICTL_RUNS`] runs of `opictl ARGS`, process start included.
    fn time_opictl(&self, data_dir: &Path, endpoint: &str, args: &[&str]) -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..OPICTL_RUNS {
            let started = Instant::now();
            self.opictl(data_dir, endpoint, args)?;
            times.push(started.elapsed().as_secs_f64());
        }
        Ok(median(&mut times))
    }

    pub(super) fn sim_command(
        &self,
        data_dir: &Path,
        agents: usize,
        interval: Duration,
        server: &Server,
        addr: &str,
        extra: &[&str],
    ) -> Command {
        let mut command = Command::new(self.bin_dir.join("opi-fleet-sim"));
        command
            .arg("--manager")
            .arg(format!("https://{addr}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--agents", &agents.to_string(), "--json"])
            .args(["--manager-pid", &server.pid().to_string()])
            .arg("--heartbeat")
            .arg(humantime::format_duration(interval).to_string())
            .arg("--duration")
            .arg(humantime::format_duration(self.duration).to_string())
            .args([
                "--report-changes-per-min",
                &self.changes_per_min.to_string(),
            ])
            .args(["--uses-per-token", &self.uses_per_token.to_string()])
            .args(extra);
        if !self.sources.is_empty() {
            command.args(["--sources", &self.sources.join(",")]);
        }
        command
    }

    /// Starts the simulator with `--hold` and waits for its report.
    fn hold(&self, mut command: Command) -> anyhow::Result<Held> {
        let mut child = command
            .arg("--hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start opi-fleet-sim")?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let report = next_report(&mut stdout).context("opi-fleet-sim report")?;
        Ok(Held {
            child,
            stdout,
            report,
        })
    }
}

/// Runs the simulator to its end and parses its report.
fn simulate(command: &mut Command) -> anyhow::Result<Report> {
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

/// The first line of a simulator's standard output, as a report.
pub(super) fn next_report(stdout: &mut BufReader<ChildStdout>) -> anyhow::Result<Report> {
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    anyhow::ensure!(!line.is_empty(), "the simulator ended without a report");
    Ok(serde_json::from_str(&line)?)
}

/// Closes a held simulator's standard input and returns its final report, which counts the
/// sessions lost and opened again since the first.
pub(super) fn release(mut held: Held) -> anyhow::Result<Report> {
    drop(held.child.stdin.take());
    let last = next_report(&mut held.stdout).context("opi-fleet-sim final report");
    let status = held.child.wait()?;
    anyhow::ensure!(status.success(), "opi-fleet-sim failed ({status})");
    last
}

/// The managers' log filter: `OPI_BENCH_LOG` (say `info` to see a restart's phases), else
/// warnings only.
pub(super) fn manager_log() -> String {
    std::env::var("OPI_BENCH_LOG").unwrap_or_else(|_| "warn".into())
}

/// Sends SIGTERM and waits for the process to exit.
pub(super) fn stop(mut server: Server) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let started = Instant::now();
    while server.0.try_wait()?.is_none() {
        anyhow::ensure!(
            started.elapsed() < STOP_TIMEOUT,
            "manager did not stop on SIGTERM"
        );
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// The `listen-addr` and `metrics-addr` a server wrote in `run_dir`, once both exist.
pub fn addresses(run_dir: &Path) -> anyhow::Result<(String, String)> {
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
        std::thread::sleep(POLL);
    }
}

pub(super) fn idle_rss(server: &Server) -> anyhow::Result<u64> {
    std::thread::sleep(SETTLE);
    rss_kib(server.pid()).context("server exited before the benchmark")
}

/// The median of `values` (sorted in place); 0 when empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}
