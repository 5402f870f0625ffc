//! The command line: clap types whose doc comments are the help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedI64ValueParser;
use clap::{Args, Parser, Subcommand};

use crate::output::Format;
use crate::token::args::{parse_label, parse_ttl, Label};

/// The most audit entries one `opictl audit` asks for.
pub const MAX_AUDIT_LIMIT: i64 = 10_000;

/// Heading of the options every subcommand accepts.
const GLOBAL: &str = "Global options";

/// Operate an OPI fleet: its nodes, enrollment tokens and audit log.
///
/// opictl talks to the manager over mTLS with an operator bundle, which `opi-manager init`
/// (the first admin) or `opi-manager operator issue` (everyone else) writes.
#[derive(Debug, Parser)]
#[command(name = "opictl", version)]
pub struct Cli {
    /// Operator bundle to use [default: $OPICTL_CONFIG, else ~/.config/opictl/config.toml]
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,

    /// Manager to talk to, instead of the bundle's endpoint (https://HOST:PORT)
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL)]
    pub manager: Option<String>,

    /// Output format
    #[arg(short, long, global = true, value_name = "FORMAT", help_heading = GLOBAL)]
    #[arg(value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `opictl`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the fleet's totals and the node counts of each pool
    Status,
    /// List nodes
    Nodes(NodesArgs),
    /// Show, revoke or remove one node
    #[command(subcommand)]
    Node(NodeCommand),
    /// Create, list and revoke enrollment tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the latest entries of the audit log
    Audit(AuditArgs),
    /// Show who the manager takes you for, your role and when your certificate expires
    Whoami,
}

/// Arguments of `opictl nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Only list the nodes of this pool
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
}

/// `opictl node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Show everything the manager knows about a node
    Show {
        /// Node name
        name: String,
    },
    /// Revoke a node: its stream is closed and its certificates are refused from now on
    Revoke {
        /// Node name
        name: String,
        /// Why, kept with the node and in the audit log
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Forget a node: its certificates stop working and its name is free for a new enrollment
    Remove {
        /// Node name
        name: String,
    },
}

/// `opictl token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token and print the `opi-agent enroll` line that uses it
    Create(TokenCreateArgs),
    /// List tokens (never their secrets)
    List,
    /// Revoke a token so that no further node can enroll with it
    Revoke {
        /// Token id (the part before the dot)
        id: String,
    },
}

/// Arguments of `opictl token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Pool the enrolled nodes join
    #[arg(long, value_name = "POOL")]
    pub pool: String,

    /// How long the token can be used, at most 7 days (30m, 1h, 2d…)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// How many nodes can enroll with the token
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one())]
    pub uses: u32,

    /// Label given to every node enrolled with the token; repeat for several
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,

    /// Free text kept with the token, shown in the audit log
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// Arguments of `opictl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many of the latest entries to show
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = audit_limit())]
    pub limit: u32,
}

/// Accepts a count of one or more.
fn at_least_one() -> RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..)
}

/// Accepts an audit limit the manager can answer in one message.
fn audit_limit() -> RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=MAX_AUDIT_LIMIT)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_create_defaults_to_one_use_for_one_hour() {
        let cli = Cli::parse_from(["opictl", "token", "create", "--pool", "workers"]);

        let Command::Token(TokenCommand::Create(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.ttl, Duration::from_secs(3600));
        assert_eq!(args.uses, 1);
        assert!(args.labels.is_empty());
    }

    #[test]
    fn output_format_is_accepted_after_the_subcommand() {
        let cli = Cli::parse_from(["opictl", "nodes", "--pool", "db", "-o", "json"]);

        assert_eq!(cli.output, Format::Json);
    }

    #[test]
    fn token_create_refuses_zero_uses() {
        let parsed =
            Cli::try_parse_from(["opictl", "token", "create", "--pool", "w", "--uses", "0"]);

        assert!(parsed.is_err());
    }
}
