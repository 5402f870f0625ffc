//! `opi-fleet-sim`: a fleet of simulated agents against a real manager (or the echo
//! ceiling), measured from outside. See `opi_tests::sim` for what is measured and how.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use opi_tests::sim::identity::USES_PER_TOKEN;
use opi_tests::sim::{self, Config, Target, DEFAULT_CONCURRENCY};

/// Enrolls N simulated agents through real bootstrap tokens, opens one mTLS session each and
/// heartbeats for a while; prints heartbeats/s, processing latency and the target's memory.
#[derive(Debug, Parser)]
#[command(name = "opi-fleet-sim", version)]
struct Args {
    /// Target URL, https://HOST:PORT.
    #[arg(long)]
    manager: String,
    /// The manager's data directory (admin bundle, trust bundle, issuing CA).
    #[arg(long)]
    data_dir: PathBuf,
    /// Number of simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Interval between two heartbeats of one agent.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Length of the measurement window, once every session is open.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Local source addresses, comma-separated, used round-robin (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Health report changes per minute across the fleet.
    #[arg(long, default_value_t = 0.0)]
    report_changes_per_min: f64,
    /// Pool the agents enroll into.
    #[arg(long, default_value = "sim")]
    pool: String,
    /// What the agents talk to.
    #[arg(long, value_enum, default_value_t = TargetArg::Manager)]
    target: TargetArg,
    /// Metrics listener of the target; by default DATA_DIR/run/metrics-addr.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Process id of the target, whose resident memory is reported.
    #[arg(long)]
    manager_pid: Option<u32>,
    /// Enrollments and connections in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Agents enrolled with one bootstrap token (at most 10000, the manager's limit).
    #[arg(long, default_value_t = USES_PER_TOKEN)]
    uses_per_token: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// After printing the report, keep the agents connected (reconnecting when their session
    /// is lost) until standard input closes, then print the final report (sessions lost and
    /// opened again meanwhile).
    #[arg(long)]
    hold: bool,
    /// Index of the first agent's name (`sim-NNNNN`), for simulators sharing one fleet.
    #[arg(long, default_value_t = 0)]
    first: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TargetArg {
    Manager,
    Echo,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    sim::raise_open_files()?;
    let json = args.json;
    let config = Config {
        endpoint: args.manager,
        data_dir: args.data_dir,
        target: match args.target {
            TargetArg::Manager => Target::Manager,
            TargetArg::Echo => Target::Echo,
        },
        agents: args.agents,
        heartbeat: args.heartbeat,
        duration: args.duration,
        sources: args.sources,
        changes_per_min: args.report_changes_per_min,
        pool: args.pool,
        metrics: args.metrics,
        target_pid: args.manager_pid,
        concurrency: args.concurrency.max(1),
        uses_per_token: args.uses_per_token.clamp(1, USES_PER_TOKEN),
        hold: args.hold,
        first: args.first,
    };
    let hold = args.hold;
    let emit = move |report: &sim::Report| {
        if json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            print!("{}", report.summary());
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        Ok(())
    };
    let last = sim::run(config, emit).await?;
    if hold {
        emit(&last)?;
    }
    Ok(())
}
