//! `opi-bench`: runs the fleet benchmark and writes its Markdown results (and the raw figures
//! as JSON beside them). `scripts/bench` builds the release binaries, raises the limits and
//! calls this.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use opi_tests::sim::bench::Bench;
use opi_tests::sim::table::markdown;

/// For each fleet size, the echo ceiling then a real manager under the same simulated load;
/// then saturation throughput and the agent's footprint.
#[derive(Debug, Parser)]
#[command(name = "opi-bench", version)]
struct Args {
    /// Fleet sizes, comma-separated (0 for none).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    agents: Vec<usize>,
    /// Fleet sizes spread over `--replicas` manager replicas on one etcd member (with one
    /// simulator and one echo ceiling per replica), comma-separated; measured after `--agents`.
    #[arg(long, value_delimiter = ',')]
    replicated_agents: Vec<usize>,
    /// Manager replicas of the `--replicated-agents` runs.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Heartbeat interval of the fleet-size runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Measurement window of each run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Local source addresses for the simulated agents, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<String>,
    /// Health report changes per minute across the fleet.
    #[arg(long, default_value_t = 6.0)]
    report_changes_per_min: f64,
    /// Agents enrolled with one bootstrap token.
    #[arg(long, default_value_t = 10_000)]
    uses_per_token: usize,
    /// Watch streams of the fan-out measurement.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Agents of the saturation run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    saturation_agents: usize,
    /// Interval at which each agent of the saturation run sends; 0s sends each heartbeat as
    /// soon as the stream takes it.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    saturation_interval: Duration,
    /// Window of the agent footprint measurement (0s skips it).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    footprint: Duration,
    /// Scratch directory for data directories and logs.
    #[arg(long)]
    work_dir: PathBuf,
    /// Where the Markdown results go; the JSON figures go beside, with `.json`.
    #[arg(long)]
    out: PathBuf,
    /// What the results say about the machine.
    #[arg(long, default_value = "")]
    machine: String,
    /// The date the results carry.
    #[arg(long, default_value = "")]
    date: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    opi_tests::sim::raise_open_files()?;
    let exe = std::env::current_exe()?;
    let bench = Bench {
        bin_dir: exe.parent().expect("binary in a directory").to_path_buf(),
        work_dir: args.work_dir,
        sizes: args.agents.into_iter().filter(|&n| n > 0).collect(),
        replicated: args.replicated_agents,
        replicas: args.replicas.max(1),
        heartbeat: args.heartbeat,
        duration: args.duration,
        sources: args.sources,
        changes_per_min: args.report_changes_per_min,
        uses_per_token: args.uses_per_token,
        watchers: args.watchers,
        saturation: (args.saturation_agents, args.saturation_interval),
        footprint: (!args.footprint.is_zero()).then_some(args.footprint),
    };
    let results = bench.run()?;
    std::fs::write(
        args.out.with_extension("json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let text = markdown(&bench, &results, &args.machine, &args.date);
    std::fs::write(&args.out, &text)?;
    print!("{text}");
    Ok(())
}
