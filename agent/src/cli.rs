//! The `opi-agent` command line. Doc comments below are the help text.

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::{apply, compliance, enroll, health, run, status};

/// Log level used when `RUST_LOG` is unset.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The exit codes, at the end of `--help` and in the man pages.
pub const EXIT_CODES: &str = "Exit status: 0 on success; 1 on a runtime failure (a manager \
    unreachable or refusing, an apply rolled back); 2 on a usage or configuration error (a bad \
    option, an unusable health.toml, floor.toml or profile).";

/// OPI Fleet node agent: enrolls this node into a fleet and keeps it connected to its managers.
///
/// Results go to standard output; logs and errors go to standard error. The log level comes
/// from RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(name = "opi-agent", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Format of the logs written to standard error (under systemd, text logs go to journald
    /// with one journal field per log field)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The agent's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this node with a bootstrap token, trusting the manager through a CA pin
    Enroll(enroll::EnrollArgs),
    /// Stay connected to the managers: heartbeats, health and certificate renewal
    Run(run::RunArgs),
    /// Show this node's local identity: node, pool, fleet, managers and certificate
    Status(status::StatusArgs),
    /// Show this node's health summary and conditions as they would be sent now
    Health(health::HealthArgs),
    /// Show what applying a node profile would change here, without changing anything
    Plan(apply::PlanArgs),
    /// Apply a node profile as one transaction: save, apply, verify, commit or roll back
    Apply(apply::ApplyArgs),
    /// Show this node's ANSSI-BP-028 evidence: each recommendation of its baseline, observed
    Compliance(compliance::command::ComplianceArgs),
}

/// Format of the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line
    Json,
}

/// Sends tracing events to journald when standard error is the journal (under systemd),
/// else to standard error; filtered by `RUST_LOG` (default [`DEFAULT_LOG_LEVEL`]).
pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_LEVEL));
    opi_systemd::journal::init_logging(filter, format == LogFormat::Json);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn enroll_requires_exactly_one_token_source() {
        let base = ["opi-agent", "enroll", "--manager", "https://m:7443"];
        let pin = format!("sha256:{}", "ab".repeat(32));
        let with = |extra: &[&str]| {
            let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            args.extend(["--ca-pin".to_string(), pin.clone()]);
            args.extend(extra.iter().map(|s| s.to_string()));
            Cli::try_parse_from(args)
        };
        assert!(with(&[]).is_err());
        assert!(with(&["--token", "a.b", "--token-file", "/t"]).is_err());
        assert!(with(&["--token", "-"]).is_ok());
        assert!(with(&["--token-file", "/t"]).is_ok());
    }

    #[test]
    fn enroll_rejects_malformed_pin_and_endpoint_as_usage_errors() {
        let bad_pin = Cli::try_parse_from([
            "opi-agent",
            "enroll",
            "--manager",
            "https://m:7443",
            "--ca-pin",
            "sha256:zz",
            "--token",
            "-",
        ]);
        assert_eq!(bad_pin.unwrap_err().exit_code(), 2);
        let pin = format!("sha256:{}", "ab".repeat(32));
        let bad_endpoint = Cli::try_parse_from([
            "opi-agent",
            "enroll",
            "--manager",
            "m:7443",
            "--ca-pin",
            &pin,
            "--token",
            "-",
        ]);
        assert_eq!(bad_endpoint.unwrap_err().exit_code(), 2);
    }
}
