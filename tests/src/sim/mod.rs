//! A simulated fleet: N agents that enroll with real bootstrap tokens, hold one real mTLS
//! session each and heartbeat at a fixed interval, with the manager measured from outside
//! through its metrics page and `/proc`.
//!
//! Definitions the report uses:
//! - throughput: heartbeats the target counted (`opi_heartbeats_total` delta) per second over
//!   the measurement window, next to heartbeats the simulator sent in the same window;
//! - latency: the manager's own handling time of one heartbeat, p50/p99 interpolated from the
//!   `opi_heartbeat_processing_seconds` bucket deltas over the window (not a round trip: the
//!   protocol acknowledges no heartbeat, and none is added for the benchmark);
//! - target CPU: user and system time of the target process over the window, from `/proc`.
//!
//! With `hold`, the agents stay connected after the report is out, reconnecting with the real
//! agent's backoff whenever their session is lost, until standard input closes: the benchmark
//! restarts the manager meanwhile and times the reconnection storm.

pub mod agent;
pub mod bench;
pub mod echo;
pub mod fanout;
pub mod footprint;
pub mod identity;
pub mod replicated;
pub mod scrape;
pub mod table;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use agent::{Counters, Plan};
use identity::Credentials;
use scrape::Snapshot;

/// Connections or enrollments in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Longest wait for every agent to enroll, or to open its session.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between two checks of the number of open sessions.
const PHASE_POLL: Duration = Duration::from_millis(100);

/// What the simulated agents talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A real `opi-manager serve`: agents enroll through bootstrap tokens first.
    Manager,
    /// The echo ceiling (`opi-echo-ceiling`): certificates come straight from the issuing CA.
    Echo,
}

/// One simulation.
#[derive(Clone, Debug)]
pub struct Config {
    /// `https://HOST:PORT` of the target.
    pub endpoint: String,
    /// The manager's data directory (trust bundle, issuing CA, admin bundle).
    pub data_dir: PathBuf,
    /// What the agents talk to.
    pub target: Target,
    /// Number of simulated agents.
    pub agents: usize,
    /// Interval between two heartbeats of one agent.
    pub heartbeat: Duration,
    /// Length of the measurement window, once every session is open.
    pub duration: Duration,
    /// Local addresses the connections are bound to, round-robin; empty lets the kernel pick.
    pub sources: Vec<IpAddr>,
    /// Health report changes per minute across the whole fleet.
    pub changes_per_min: f64,
    /// Pool the agents enroll into.
    pub pool: String,
    /// Metrics listener of the target; by default `DATA_DIR/run/metrics-addr`.
    pub metrics: Option<SocketAddr>,
    /// Process whose resident memory is reported.
    pub target_pid: Option<u32>,
    /// Enrollments and connections in flight at once.
    pub concurrency: usize,
    /// Agents enrolled with one bootstrap token, 1 to [`identity::USES_PER_TOKEN`].
    pub uses_per_token: usize,
    /// Keep the agents connected after the report, until standard input closes.
    pub hold: bool,
    /// Index of the first agent: simulators sharing one fleet name their agents apart.
    pub first: usize,
}

/// What one simulation measured.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Report {
    /// Agents asked for.
    pub agents: usize,
    /// Agents that got a certificate.
    pub enrolled: usize,
    /// Enrollments per second, from the first request to the last answer.
    pub enroll_per_sec: f64,
    /// Enrollments the manager aborted because of a concurrent use of the token, retried.
    pub enroll_retries: u64,
    /// Agents whose first session opened.
    pub connected: usize,
    /// Time until every first session opened or failed.
    pub connect_secs: f64,
    /// `opi_agent_sessions` at the end of the window.
    pub sessions_seen: f64,
    /// Length of the measurement window.
    pub window_secs: f64,
    /// Heartbeats the simulator sent in the window.
    pub sent: u64,
    /// Heartbeats the target counted in the window.
    pub accepted: u64,
    /// `sent` per second.
    pub sent_per_sec: f64,
    /// `accepted` per second.
    pub accepted_per_sec: f64,
    /// Changed health reports sent in the window.
    pub reports_sent: u64,
    /// Sessions the target ended before the simulator did.
    pub sessions_lost: u64,
    /// Sessions opened again after a loss.
    pub reconnected: u64,
    /// Attempts to open a lost session again that failed (refused, timed out, or cut).
    #[serde(default)]
    pub failed_attempts: u64,
    /// Those of `failed_attempts` that found nobody listening.
    #[serde(default)]
    pub refused_attempts: u64,
    /// Median heartbeat handling time on the target.
    pub p50_seconds: Option<f64>,
    /// 99th percentile of the heartbeat handling time on the target.
    pub p99_seconds: Option<f64>,
    /// Resident memory of the target at the end of the window.
    pub target_rss_kib: Option<u64>,
    /// CPU time (user and system) the target used during the window.
    pub target_cpu_secs: Option<f64>,
}

impl Config {
    /// The metrics address: given, or read from the data directory.
    fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        if let Some(addr) = self.metrics {
            return Ok(addr);
        }
        let path = self.data_dir.join("run/metrics-addr");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: start the manager with --metrics-listen",
                path.display()
            )
        })?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: not an address", path.display()))
    }

    /// The source address of connection `i`.
    fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }
}

/// Raises this process's open-file limit to its hard limit: every agent holds a socket.
pub fn raise_open_files() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Runs one simulation to its end and reports what it measured: `emit` gets the report as
/// soon as the window is measured (then, with `hold`, the agents stay until standard input
/// closes), and the returned report adds the sessions lost and reopened until the end.
pub async fn run(
    config: Config,
    emit: impl FnOnce(&Report) -> anyhow::Result<()>,
) -> anyhow::Result<Report> {
    let metrics = config.metrics_addr()?;
    let config = Arc::new(config);
    let mut report = Report {
        agents: config.agents,
        ..Report::default()
    };

    let started = Instant::now();
    let credentials = identity::enroll_all(&config).await?;
    report.enrolled = credentials.len();
    report.enroll_per_sec = credentials.len() as f64 / started.elapsed().as_secs_f64();
    report.enroll_retries = identity::RETRIES.load(Ordering::Relaxed);

    let (stop, stopped) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let mut agents = connect_all(&config, credentials, &counters, stopped).await;
    report.connected = counters.connected.load(Ordering::Relaxed) as usize;
    report.connect_secs = started.elapsed().as_secs_f64();

    measure(&config, metrics, &counters, &mut report).await?;
    report.sessions_lost = counters.lost.load(Ordering::Relaxed);
    emit(&report)?;
    if config.hold {
        // Standard input closing is the signal to end; its content is ignored.
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await
            .context("wait for standard input to close")??;
    }
    let _ = stop.send(true);
    while agents.join_next().await.is_some() {}
    report.sessions_lost = counters.lost.load(Ordering::Relaxed);
    report.reconnected = counters.reconnected.load(Ordering::Relaxed);
    report.failed_attempts = counters.failed_attempts.load(Ordering::Relaxed);
    report.refused_attempts = counters.refused_attempts.load(Ordering::Relaxed);
    Ok(report)
}

/// Opens every agent's session, `concurrency` at a time; returns the running agents once all
/// have opened theirs or failed.
async fn connect_all(
    config: &Arc<Config>,
    credentials: Vec<Credentials>,
    counters: &Arc<Counters>,
    stopped: watch::Receiver<bool>,
) -> JoinSet<()> {
    let total = credentials.len() as u64;
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let plan = Arc::new(Plan::new(config));
    let mut agents = JoinSet::new();
    for (i, creds) in credentials.into_iter().enumerate() {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (plan, counters, stopped) = (plan.clone(), counters.clone(), stopped.clone());
        let source = config.source(i);
        agents.spawn(agent::run(plan, creds, source, counters, stopped, permit));
    }

    let deadline = Instant::now() + PHASE_TIMEOUT;
    while counters.settled() < total && Instant::now() < deadline {
        tokio::time::sleep(PHASE_POLL).await;
    }
    if let Some(error) = plan.first_error() {
        let failed = counters.failed.load(Ordering::Relaxed);
        eprintln!("{failed} agent(s) failed to open their session; first: {error}");
    }
    agents
}

/// Scrapes the target at both ends of the window and fills in throughput and latency.
async fn measure(
    config: &Config,
    metrics: SocketAddr,
    counters: &Counters,
    report: &mut Report,
) -> anyhow::Result<()> {
    let before = Snapshot::take(metrics).await?;
    let cpu_before = config.target_pid.and_then(scrape::cpu_secs);
    let sent_before = counters.sent.load(Ordering::Relaxed);
    let reports_before = counters.reports.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(config.duration).await;
    let after = Snapshot::take(metrics).await?;
    let window = started.elapsed().as_secs_f64();

    report.window_secs = window;
    report.sent = counters.sent.load(Ordering::Relaxed) - sent_before;
    report.reports_sent = counters.reports.load(Ordering::Relaxed) - reports_before;
    report.accepted = after.heartbeats.saturating_sub(before.heartbeats);
    report.sent_per_sec = report.sent as f64 / window;
    report.accepted_per_sec = report.accepted as f64 / window;
    report.sessions_seen = after.sessions;
    let buckets = scrape::delta(&after.buckets, &before.buckets);
    report.p50_seconds = scrape::quantile(&buckets, 0.5);
    report.p99_seconds = scrape::quantile(&buckets, 0.99);
    report.target_rss_kib = config.target_pid.and_then(scrape::rss_kib);
    let cpu_after = config.target_pid.and_then(scrape::cpu_secs);
    report.target_cpu_secs = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    Ok(())
}

impl Report {
    /// The reports of simulators that ran side by side against several servers, as one:
    /// counts, rates, memory and CPU add up, times and latencies take the worst.
    pub fn combine(reports: &[Report]) -> Report {
        let sum = |f: fn(&Report) -> f64| reports.iter().map(f).sum::<f64>();
        let max = |f: fn(&Report) -> f64| reports.iter().map(f).fold(0.0, f64::max);
        let worst = |f: fn(&Report) -> Option<f64>| reports.iter().filter_map(f).reduce(f64::max);
        let all = |f: fn(&Report) -> Option<f64>| reports.iter().map(f).sum::<Option<f64>>();
        Report {
            agents: reports.iter().map(|r| r.agents).sum(),
            enrolled: reports.iter().map(|r| r.enrolled).sum(),
            enroll_per_sec: sum(|r| r.enroll_per_sec),
            enroll_retries: reports.iter().map(|r| r.enroll_retries).sum(),
            connected: reports.iter().map(|r| r.connected).sum(),
            connect_secs: max(|r| r.connect_secs),
            sessions_seen: sum(|r| r.sessions_seen),
            window_secs: max(|r| r.window_secs),
            sent: reports.iter().map(|r| r.sent).sum(),
            accepted: reports.iter().map(|r| r.accepted).sum(),
            sent_per_sec: sum(|r| r.sent_per_sec),
            accepted_per_sec: sum(|r| r.accepted_per_sec),
            reports_sent: reports.iter().map(|r| r.reports_sent).sum(),
            sessions_lost: reports.iter().map(|r| r.sessions_lost).sum(),
            reconnected: reports.iter().map(|r| r.reconnected).sum(),
            failed_attempts: reports.iter().map(|r| r.failed_attempts).sum(),
            refused_attempts: reports.iter().map(|r| r.refused_attempts).sum(),
            p50_seconds: worst(|r| r.p50_seconds),
            p99_seconds: worst(|r| r.p99_seconds),
            target_rss_kib: reports.iter().map(|r| r.target_rss_kib).sum(),
            target_cpu_secs: all(|r| r.target_cpu_secs),
        }
    }

    /// The report as people read it.
    pub fn summary(&self) -> String {
        let ms = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{:.3} ms", s * 1e3));
        let rss = self
            .target_rss_kib
            .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        format!(
            "agents           {} ({} enrolled, {} connected in {:.1} s, {} lost)\n\
             enrollments      {:.0}/s ({} retried after a concurrent token change)\n\
             window           {:.1} s\n\
             heartbeats       {:.1}/s accepted, {:.1}/s sent ({} / {})\n\
             health reports   {}\n\
             sessions seen    {}\n\
             processing p50   {}\n\
             processing p99   {}\n\
             target RSS       {}\n",
            self.agents,
            self.enrolled,
            self.connected,
            self.connect_secs,
            self.sessions_lost,
            self.enroll_per_sec,
            self.enroll_retries,
            self.window_secs,
            self.accepted_per_sec,
            self.sent_per_sec,
            self.accepted,
            self.sent,
            self.reports_sent,
            self.sessions_seen,
            ms(self.p50_seconds),
            ms(self.p99_seconds),
            rss,
        )
    }
}
