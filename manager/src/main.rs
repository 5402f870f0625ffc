//! `opi-manager`: the OPI Fleet manager.

use std::process::ExitCode;

use clap::Parser;
use opi_manager::cli::{Cli, Command};
use opi_manager::cmd;

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
        Command::Serve(args) => cmd::serve::run(*args).await,
        Command::Operator(command) => cmd::operator::run(command).await,
        Command::Store(command) => cmd::store::run(command).await,
        Command::Backup(args) => cmd::backup::run_backup(args).await,
        Command::Restore(args) => cmd::backup::run_restore(args).await,
        Command::Ca(command) => cmd::ca::run(command).await,
        Command::Demo(args) => cmd::demo::run(args).await,
    }
}

/// Logs to journald when stderr is the journal (under systemd), else to stderr.
fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    opi_systemd::journal::init_logging(filter, format == "json");
}
