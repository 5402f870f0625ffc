//! `opi-manager`: the OPI Fleet manager.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use opi_manager::cmd;

/// The OPI Fleet manager: fleet CA, enrollment, agent sessions and the operator API.
#[derive(Debug, Parser)]
#[command(name = "opi-manager", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a fleet: root CA, issuing CA, server certificate, store and admin bundle.
    Init(cmd::init::InitArgs),
    /// Serve agents and operators.
    Serve(cmd::serve::ServeArgs),
    /// Manage operator bundles.
    #[command(subcommand)]
    Operator(cmd::operator::OperatorCommand),
    /// Run a manager and a small local fleet of real agents, until Ctrl-C.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime can be built");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => cmd::init::run(args).await,
        Command::Serve(args) => cmd::serve::run(args).await,
        Command::Operator(command) => cmd::operator::run(command).await,
        Command::Demo(args) => cmd::demo::run(args).await,
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
