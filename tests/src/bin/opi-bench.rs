//! `opi-bench`: runs the fleet benchmark and writes its Markdown results. `scripts/bench`
//! builds the release binaries, raises the limits and calls this.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use opi_tests::sim::bench::{markdown, Bench};

/// For each fleet size, the echo ceiling then a real manager under the same simulated load.
#[derive(Debug, Parser)]
#[command(name = "opi-bench", version)]
struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    agents: Vec<usize>,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Measurement window of each run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Local source addresses for the simulated agents, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<String>,
    #[arg(long, default_value_t = 6.0)]
    report_changes_per_min: f64,
    /// Agents enrolled with one bootstrap token.
    #[arg(long, default_value_t = 10_000)]
    uses_per_token: usize,
    /// Scratch directory for data directories and logs.
    #[arg(long)]
    work_dir: PathBuf,
    /// Where the Markdown results go.
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
    let exe = std::env::current_exe()?;
    let bench = Bench {
        bin_dir: exe.parent().expect("binary in a directory").to_path_buf(),
        work_dir: args.work_dir,
        sizes: args.agents,
        heartbeat: args.heartbeat,
        duration: args.duration,
        sources: args.sources,
        changes_per_min: args.report_changes_per_min,
        uses_per_token: args.uses_per_token,
    };
    let rows = bench.run()?;
    let text = markdown(&bench, &rows, &args.machine, &args.date);
    std::fs::write(&args.out, &text)?;
    print!("{text}");
    Ok(())
}
