//! `opictl`, the operators' CLI of OPI Fleet.
//!
//! It reads an operator bundle, opens an mTLS connection to a manager and calls the
//! `Operator` service. Module map:
//! - [`cli`]: the clap types;
//! - [`config`]: finding and reading the operator bundle;
//! - [`client`]: the connection and one method per RPC;
//! - [`output`]: tables, JSON, times and sizes;
//! - [`filter`]: the values of filter options, checked while parsing;
//! - [`health`] and [`event`]: how health, conditions and events read, shared by commands;
//! - one module per subcommand: [`status`], [`nodes`], [`node`], [`watch`], [`token`],
//!   [`profile`], [`rollout`], [`compliance`], [`audit`], [`whoami`], [`login`], each with
//!   its own `run`;
//! - [`error`]: failures, their exit codes and their report.

#![warn(missing_docs)]

pub mod audit;
pub mod cli;
pub mod client;
pub mod compliance;
pub mod config;
pub mod error;
pub mod event;
pub mod filter;
pub mod health;
pub mod login;
pub mod node;
pub mod nodes;
pub mod output;
pub mod profile;
pub mod rollout;
pub mod status;
pub mod token;
pub mod watch;
pub mod whoami;

pub use error::Error;

use cli::{Cli, Command};
use client::Client;
use config::Sources;
use output::Format;

/// What every subcommand needs: how to reach the manager and how to print.
#[derive(Debug)]
pub struct Context {
    sources: Sources,
    manager: Option<String>,
    /// The output format chosen with `-o`.
    pub format: Format,
    /// Whether `-o csv` was chosen (`opictl compliance` only).
    pub csv: bool,
}

impl Context {
    /// Reads the bundle and connects. Subcommands call this after checking their own
    /// arguments, so a typing mistake is reported before any network wait.
    pub async fn connect(&self) -> Result<Client, Error> {
        let (bundle, path) = config::load(&self.sources)?;
        let endpoint = self.manager.as_deref().unwrap_or(&bundle.endpoint);
        Client::connect(&bundle, &path, endpoint).await
    }

    /// The manager given with `--manager`, if any.
    pub fn manager(&self) -> Option<&str> {
        self.manager.as_deref()
    }

    /// The operator bundle and where it was read.
    pub fn bundle(&self) -> Result<(opi_pki::bundle::OperatorBundle, std::path::PathBuf), Error> {
        config::load(&self.sources)
    }
}

/// Runs one `opictl` command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let context = Context {
        sources: Sources::from_env(cli.config),
        manager: cli.manager,
        format: cli.output.format(),
        csv: cli.output == output::OutputChoice::Csv,
    };
    if context.csv && !matches!(cli.command, Command::Compliance(_)) {
        return Err(error::UsageError::CsvOnlyForCompliance.into());
    }

    match cli.command {
        Command::Status => status::run(&context).await,
        Command::Nodes(args) => nodes::run(&context, args).await,
        Command::Node(command) => node::run(&context, command).await,
        Command::Watch(args) => watch::run(&context, args).await,
        Command::Token(command) => token::run(&context, command).await,
        Command::Profile(command) => profile::run(&context, command).await,
        Command::Rollout(command) => rollout::run(&context, command).await,
        Command::Audit(args) => audit::run(&context, args).await,
        Command::Compliance(args) => compliance::run(&context, args).await,
        Command::Whoami => whoami::run(&context).await,
        Command::Login(args) => login::login(&context, args).await,
        Command::Operator(cli::OperatorCommand::Invite(args)) => {
            login::invite(&context, args).await
        }
    }
}
