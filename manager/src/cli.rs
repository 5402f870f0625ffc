//! The `opi-manager` command line, in the library so that packaging can generate its man
//! pages and shell completions from it. Doc comments below are the help text.

use clap::{Parser, Subcommand};

use crate::cmd;

/// The exit codes, at the end of `--help` and in the man pages.
pub const EXIT_CODES: &str = "Exit status: 0 on success (serve: stopped by SIGTERM or SIGINT); 1 \
    on any failure of the command, a bad data directory or store included; 2 on a usage error \
    of the command line.";

/// The OPI Fleet manager: fleet CA, enrollment, agent sessions and the operator API.
#[derive(Debug, Parser)]
#[command(name = "opi-manager", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The manager's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a fleet: root CA, issuing CA, server certificate, store and admin bundle.
    Init(cmd::init::InitArgs),
    /// Serve agents and operators.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Manage operator bundles.
    #[command(subcommand)]
    Operator(cmd::operator::OperatorCommand),
    /// Back up the fleet store, the CA material and manager.toml into one 0600 file.
    Backup(cmd::backup::BackupArgs),
    /// Restore a backup into a data directory and a store (stop the manager first); moves the
    /// store's epoch up so that agents take the next profile generation.
    Restore(cmd::backup::RestoreArgs),
    /// Work on fleet stores: migrate one into another.
    #[command(subcommand)]
    Store(cmd::store::StoreCommand),
    /// Roll the fleet over to a new root and issuing CA without downtime.
    #[command(subcommand)]
    Ca(cmd::ca::CaCommand),
    /// Run a manager and a small local fleet of real agents, until Ctrl-C.
    Demo(cmd::demo::DemoArgs),
}
