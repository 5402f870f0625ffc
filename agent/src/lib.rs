//! OPI Fleet node agent: enrollment, the node's identity store, the stream to the manager and
//! the health summary and node conditions it carries.
//!
//! Module map:
//! - [`cli`]: the command line, parsed by `main.rs`;
//! - one module per subcommand, each with its own `run`: [`enroll`], [`run`](mod@run), [`status`],
//!   [`health`];
//! - [`paths`]: where the agent's files live under `--root`;
//! - [`config`]: `agent.toml`, whose presence means "enrolled";
//! - [`store`]: the node's key and certificate on disk, with crash-safe replacement;
//! - [`cert`]: reading and checking the node certificates the manager issues;
//! - [`token`]: bootstrap tokens, kept out of logs;
//! - [`facts`]: what the node says about itself;
//! - [`conditions`]: the node conditions (kubelet, containerd, disks, memory, clock…), their
//!   collectors, settings and history; [`conditions::clock`] holds the crate's only `unsafe`;
//! - [`backoff`]: exponential backoff with full jitter;
//! - [`rpc`]: telling a manager's answer from a broken transport;
//! - [`output`]: `-o table|json` results on stdout;
//! - [`apply`]: the apply engine (plan, journal, last-known-good, verify, commit or roll back,
//!   drift) with one module per kind of change, and the `plan` and `apply` subcommands;
//! - [`systemd`]: restarting services through systemd's D-Bus API.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod apply;
pub mod backoff;
pub mod cert;
pub mod cli;
pub mod compliance;
pub mod conditions;
pub mod config;
pub mod enroll;
pub mod facts;
pub mod health;
pub mod output;
pub mod paths;
pub mod rpc;
pub mod run;
pub mod status;
pub mod store;
pub mod systemd;
pub mod token;

use std::error::Error as StdError;
use std::fmt;

use cli::{Cli, Command};

/// Exit code of a runtime failure.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// The version of this agent, sent to the manager.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `opi-agent enroll` failed.
    #[error(transparent)]
    Enroll(#[from] enroll::EnrollError),
    /// `opi-agent run` failed.
    #[error(transparent)]
    Run(#[from] run::RunError),
    /// `opi-agent status` failed.
    #[error(transparent)]
    Status(#[from] status::StatusError),
    /// `opi-agent health` failed.
    #[error(transparent)]
    Health(#[from] health::HealthError),
    /// `opi-agent plan` or `opi-agent apply` failed.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// `opi-agent compliance` failed.
    #[error(transparent)]
    Compliance(#[from] compliance::command::ComplianceError),
}

impl Error {
    /// The process exit code for this error: [`EXIT_USAGE`] or [`EXIT_RUNTIME`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Enroll(e) => e.exit_code(),
            Error::Run(e) => e.exit_code(),
            Error::Status(e) => e.exit_code(),
            Error::Health(e) => e.exit_code(),
            Error::Apply(e) => e.exit_code(),
            Error::Compliance(e) => e.exit_code(),
        }
    }
}

/// Runs the subcommand the user asked for.
pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Enroll(args) => enroll::run(args).await?,
        Command::Run(args) => run::run(args).await?,
        Command::Status(args) => status::run(args)?,
        Command::Health(args) => health::run(args).await?,
        Command::Plan(args) => apply::plan_command::run(args).await?,
        Command::Apply(args) => apply::apply_command::run(args).await?,
        Command::Compliance(args) => compliance::command::run(args)?,
    }
    Ok(())
}

/// Displays an error followed by each of its causes, once, separated by `: `.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            // Some libraries wrap an error in another that displays the same text.
            let text = error.to_string();
            if text != shown {
                write!(f, ": {text}")?;
            }
            shown = text;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layer(text: &'static str, source: Option<Layer>) -> Layer {
        Layer {
            text,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn error_chain_shows_each_cause_once() {
        let refused = layer("connection refused", None);
        let wrapped = layer("connection refused", Some(refused));
        let top = layer(
            "cannot connect to m1",
            Some(layer("transport error", Some(wrapped))),
        );
        assert_eq!(
            ErrorChain(&top).to_string(),
            "cannot connect to m1: transport error: connection refused"
        );
    }
}
