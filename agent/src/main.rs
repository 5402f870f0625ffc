//! `opi-agent`: parses the command line, sets up logging, runs the subcommand and maps its
//! error to an exit code.

use std::process::ExitCode;

use clap::Parser;
use opi_agent::cli::Cli;
use opi_agent::ErrorChain;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    opi_agent::cli::init_logging(cli.log_format);

    match opi_agent::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", ErrorChain(&error));
            ExitCode::from(error.exit_code())
        }
    }
}
