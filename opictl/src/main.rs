//! The `opictl` binary: parses the command line, runs it, reports a failure once.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use opictl::cli::Cli;
use tracing_subscriber::EnvFilter;

/// Environment variable holding the log filter (`debug`, `opictl=debug,tonic=info`…).
const LOG_ENV: &str = "OPICTL_LOG";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match opictl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", opictl::error::report(&error));
            ExitCode::from(error.exit_code())
        }
    }
}
