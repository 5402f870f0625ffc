//! The command line: clap types whose doc comments are the help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{NonEmptyStringValueParser, RangedI64ValueParser, RangedU64ValueParser};
use clap::{Args, Parser, Subcommand};

use crate::filter::{
    parse_condition_type, parse_revision, ConfigFilter, ConnectivityFilter, EventKind,
    HealthFilter, SeverityFilter,
};
use crate::output::OutputChoice;
use crate::token::args::{parse_label, parse_ttl, Label};

/// The most audit entries one `opictl audit` asks for.
pub const MAX_AUDIT_LIMIT: i64 = 10_000;

/// The exit codes, at the end of `--help` and in the man pages.
pub const EXIT_CODES: &str = "Exit status: 0 on success; 1 on a runtime failure (the manager \
    unreachable, or refusing the request); 2 on a usage or configuration error (a bad option, a \
    missing or unusable operator bundle, an unreadable profile file).";

/// Heading of the options every subcommand accepts.
const GLOBAL: &str = "Global options";

/// Operate an OPI fleet: its nodes, their health and events, enrollment tokens and audit log.
///
/// opictl talks to the manager over mTLS with an operator bundle, which `opi-manager init`
/// (the first admin) or `opi-manager operator issue` (everyone else) writes.
#[derive(Debug, Parser)]
#[command(name = "opictl", version, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Operator bundle to use [default: $OPICTL_CONFIG, else ~/.config/opictl/config.toml]
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,

    /// Manager to talk to, instead of the bundle's endpoint (https://HOST:PORT)
    #[arg(long, global = true, value_name = "URL", help_heading = GLOBAL)]
    pub manager: Option<String>,

    /// Output format (csv: `opictl compliance` only)
    #[arg(short, long, global = true, value_name = "FORMAT", help_heading = GLOBAL)]
    #[arg(value_enum, default_value_t = OutputChoice::Table)]
    pub output: OutputChoice,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `opictl`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the fleet's totals and the node and health counts of each pool
    Status,
    /// List nodes with their health and problems
    Nodes(NodesArgs),
    /// Show one node, or change it: maintenance, pool, revocation, removal
    #[command(subcommand)]
    Node(NodeCommand),
    /// Follow the fleet's events as they happen, until Ctrl-C
    ///
    /// Prints one line per event: connectivity, health, condition, flapping, maintenance and
    /// lifecycle changes. `-o json` prints one JSON object per line (JSON Lines) and keeps
    /// notes on stderr. If the connection breaks, opictl reconnects (every 1 s to 10 s) and
    /// resumes after the last event it printed, so no event is skipped or printed twice. If
    /// the manager no longer keeps the events asked for, opictl says so and exits with 1.
    Watch(WatchArgs),
    /// Create, list and revoke enrollment tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Set, show and compare pool profiles (hardening, kubelet and containerd config)
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Follow and steer the rollout of a pool's profile: status, pause, resume, abort, undo
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Show the latest entries of the audit log
    Audit(AuditArgs),
    /// Show every node's ANSSI-BP-028 evidence, write a signed report, or verify one
    ///
    /// Without a subcommand: a row per node (its baseline, recommendations passing, failing
    /// or excepted, since when), then a row per recommendation across the nodes. `-o json`
    /// prints every item of every node; `-o csv` a row per node and recommendation.
    Compliance(ComplianceArgs),
    /// Show who the manager takes you for, your role and when your certificate expires
    Whoami,
    /// Get an operator certificate with a one-time code from an admin
    ///
    /// Needs --manager URL. Makes a key on this machine (it never leaves it), sends a CSR
    /// with the code to the manager, checked against the CA pin given with the code, and
    /// writes a bundle with the certificate (8 h unless the admin chose otherwise) for
    /// `opictl --config`.
    Login(LoginArgs),
    /// Invite operators (admins only)
    #[command(subcommand)]
    Operator(OperatorCommand),
}

/// Arguments of `opictl login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The fleet CA pin printed with the code (sha256:...)
    #[arg(long, value_name = "PIN")]
    pub ca_pin: String,
    /// File holding the code (`-`: standard input) [default: $OPICTL_LOGIN_CODE]
    #[arg(long, value_name = "FILE")]
    pub code_file: Option<PathBuf>,
    /// Where to write the operator bundle (0600)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `opictl operator …`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Make a one-time login code for an operator, with its role and certificate lifetime
    Invite(InviteArgs),
}

/// Arguments of `opictl operator invite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// The operator's name, in its certificate and the audit log
    pub name: String,
    /// admin, operator, viewer or alerting
    #[arg(long)]
    pub role: String,
    /// How long the code may be used (at most 24h)
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Lifetime of the certificate the login gets (at most 7days)
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
}

/// Arguments of `opictl nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Only list the nodes of this pool
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,

    /// Only list the nodes with this health
    #[arg(long, value_name = "HEALTH", value_enum)]
    pub health: Option<HealthFilter>,

    /// Only list the nodes with this connectivity
    #[arg(long, value_name = "CONNECTIVITY", value_enum)]
    pub connectivity: Option<ConnectivityFilter>,

    /// Only list the nodes where a condition of this type is a problem (DiskPressure…)
    #[arg(long, value_name = "TYPE", value_parser = parse_condition_type)]
    pub condition: Option<String>,

    /// Only list the nodes whose config axis is in this state (--config names the bundle)
    #[arg(long = "config-state", value_name = "STATE", value_enum)]
    pub config_state: Option<ConfigFilter>,
}

/// Arguments of `opictl watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only events of the nodes of this pool; repeat for several
    #[arg(long = "pool", value_name = "POOL")]
    pub pools: Vec<String>,

    /// Only events of this node; repeat for several
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,

    /// Only events of this kind; repeat for several
    #[arg(long = "kind", value_name = "KIND", value_enum)]
    pub kinds: Vec<EventKind>,

    /// Only events at least this severe; events without a severity are then left out
    #[arg(long, value_name = "LEVEL", value_enum)]
    pub severity: Option<SeverityFilter>,

    /// Start with the events after this revision (REV in tables, `revision` in JSON)
    #[arg(long, value_name = "REV", value_parser = parse_revision)]
    pub since: Option<u64>,

    /// Start by replaying the fleet's last N events, those that pass the filters
    #[arg(long, value_name = "N", value_parser = at_least_one(), conflicts_with = "since")]
    pub last: Option<u32>,
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
    /// Put a node in maintenance, or take it out: on-call sees that its problems are expected
    Maintenance {
        /// `on` to start maintenance, `off` to end it
        #[arg(value_enum)]
        switch: Switch,
        /// Node name
        name: String,
        /// Why, shown with the node and kept in the audit log; required with `on`
        #[arg(long, value_name = "TEXT", required_if_eq("switch", "on"))]
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        reason: Option<String>,
    },
    /// Revoke a node and forget it at once; its audit entries and events are kept
    ///
    /// Asks for no confirmation.
    Delete {
        /// Node name
        name: String,
        /// Why, kept in the audit log
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Make nodes renew their certificate now, with a fresh key; the previous certificate is
    /// refused once the node's session runs on the new one
    ///
    /// Offline nodes are asked when they next connect. Name nodes, or give --pool or --all.
    Rotate {
        /// Node names
        names: Vec<String>,
        /// Every node of this pool
        #[arg(long, value_name = "POOL", conflicts_with_all = ["names", "all"])]
        pool: Option<String>,
        /// Every node of the fleet
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Why, kept in the audit log
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Let a node whose certificate expired past the renewal window re-enroll under its name
    /// (`opi-agent enroll --reenroll`), keeping its pool and history; once, within --ttl
    AllowReenroll {
        /// Node name
        name: String,
        /// How long the permission lasts (at most 7 days)
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Move a node to another pool
    Move {
        /// Node name
        name: String,
        /// The pool the node joins
        #[arg(long, value_name = "POOL", value_parser = NonEmptyStringValueParser::new())]
        pool: String,
    },
}

/// `opictl profile …`.
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Validate a profile and store it as the pool's next generation, rolled out in waves
    ///
    /// Every problem of the document is listed at once and nothing is stored unless it is
    /// valid as a whole. A document equal to the latest generation makes no new one. The new
    /// generation reaches the pool's nodes in a canary wave, then waves of at most
    /// --max-unavailable nodes, each node done once it runs the generation healthy for
    /// --settle; failures halt it (`opictl rollout status POOL` follows it).
    Set {
        /// Pool name
        pool: String,
        /// Profile document (YAML), or `-` for standard input
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        /// Sign the document with this signer key (PKCS#8 PEM, ECDSA P-256; repeatable): nodes
        /// that pinned signer keys apply only signed profiles, signed twice to lower hardening
        #[arg(long, value_name = "KEY")]
        sign_key: Vec<PathBuf>,
        /// How the new generation rolls out
        #[command(flatten)]
        strategy: StrategyArgs,
    },
    /// Show a generation of a pool's profile, secrets redacted
    Show {
        /// Pool name
        pool: String,
        /// Generation to show [default: the latest]
        #[arg(long, value_name = "N", value_parser = at_least_one_u64())]
        generation: Option<u64>,
    },
    /// Show what changed between two generations, or what a draft would change
    ///
    /// Without options: the latest generation against the one before it.
    Diff {
        /// Pool name
        pool: String,
        /// Draft profile (YAML) to compare with the latest generation, or `-` for stdin
        #[arg(short = 'f', long, value_name = "FILE", conflicts_with_all = ["from", "to"])]
        file: Option<PathBuf>,
        /// Older generation [default: the one before --to]
        #[arg(long, value_name = "N", value_parser = at_least_one_u64())]
        from: Option<u64>,
        /// Newer generation [default: the latest]
        #[arg(long, value_name = "N", value_parser = at_least_one_u64())]
        to: Option<u64>,
    },
}

/// The rollout strategy options of `opictl profile set`.
#[derive(Debug, Args)]
pub struct StrategyArgs {
    /// Nodes of the first wave; any failure among them halts the rollout
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one())]
    pub canary: u32,

    /// Nodes that may be out of healthy at once, a count or a percentage of the pool (25%)
    #[arg(long, value_name = "N|P%", default_value = "1", value_parser = parse_max_unavailable)]
    pub max_unavailable: String,

    /// Node label whose values are failure domains (zone, rack): one changes at a time
    #[arg(long, value_name = "LABEL")]
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub failure_domain: Option<String>,

    /// How long a node must stay healthy on the new generation to count as done
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_settle)]
    pub settle: Duration,

    /// Failures tolerated after the canary wave; one more halts the rollout
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub failure_budget: u32,
}

/// `opictl rollout …`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show a pool's rollout: state, cause, waves and the step of each node
    ///
    /// In a terminal each wave has a progress bar; otherwise plain lines. With --watch,
    /// the status is shown again whenever it changes, until the rollout completes or is
    /// aborted, or Ctrl-C.
    Status {
        /// Pool name
        pool: String,
        /// Follow the rollout until it ends
        #[arg(long)]
        watch: bool,
    },
    /// Start no further wave; the nodes of the current wave are still followed
    Pause {
        /// Pool name
        pool: String,
    },
    /// Start waves again after a pause or a halt, forgetting the failures that halted it
    Resume {
        /// Pool name
        pool: String,
    },
    /// End the rollout where it stands: nodes not yet targeted keep their generation
    Abort {
        /// Pool name
        pool: String,
    },
    /// Roll the pool back to the rollout's previous generation, as a new generation
    ///
    /// The new generation repeats the previous one's content and rolls out with the same
    /// strategy and gating, so generations only grow.
    Undo {
        /// Pool name
        pool: String,
    },
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Start
    On,
    /// End
    Off,
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

/// Arguments of `opictl compliance`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ComplianceArgs {
    /// Write or verify a signed report
    #[command(subcommand)]
    pub command: Option<ComplianceCommand>,

    /// Only the nodes of this pool
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
}

/// `opictl compliance …`.
#[derive(Debug, Subcommand)]
pub enum ComplianceCommand {
    /// Have the manager sign a report (every node's evidence, history and exceptions) and
    /// write it: JSON, its signature, the signer's chain and a Markdown rendering
    Report(ComplianceReportArgs),
    /// Verify a report offline with the fleet root CA: chain, validity and signature
    Verify(ComplianceVerifyArgs),
}

/// Arguments of `opictl compliance report`.
#[derive(Debug, Args)]
pub struct ComplianceReportArgs {
    /// Directory to write the report's four files into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Only the nodes of this pool
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,

    /// Evidence snapshots per node in the history [default: the manager's, 10]
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub history: u32,
}

/// Arguments of `opictl compliance verify`.
#[derive(Debug, Args)]
pub struct ComplianceVerifyArgs {
    /// The report document (compliance-report.json)
    pub file: PathBuf,

    /// The fleet root CA to trust (PEM), from the manager's DATA_DIR/pki/root-ca.pem
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,

    /// The detached signature [default: FILE.sig]
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,

    /// The signer's chain [default: compliance-report.chain.pem beside FILE]
    #[arg(long, value_name = "FILE")]
    pub chain: Option<PathBuf>,
}

/// Arguments of `opictl audit`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// Verify the log or export a checkpoint, instead of listing entries
    #[command(subcommand)]
    pub command: Option<AuditCommand>,

    /// How many of the latest entries to show
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = audit_limit())]
    pub limit: u32,

    /// Only entries since this long ago (`2h`, `3days`) or since this time (RFC 3339)
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    pub since: Option<std::time::SystemTime>,

    /// Only entries whose actor contains this text (`alice`, `token:`)
    #[arg(long, value_name = "TEXT")]
    pub actor: Option<String>,

    /// Only entries of this action, or of this family (`node` matches `node.revoke`)
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
}

/// The subcommands of `opictl audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that no entry of the audit log was deleted, edited or reordered
    ///
    /// Reads the whole log and checks its hash chain, then every checkpoint the manager kept
    /// and every --checkpoint file given (signed by a manager of your fleet, and matching the
    /// log). Exits with 1 naming each entry that does not hold. A log rewritten from some
    /// entry on, or cut short, by someone holding the store and the manager's keys shows only
    /// against a checkpoint exported before: keep them off the manager.
    Verify(AuditVerifyArgs),
    /// Have the manager sign the log's head now, and write the checkpoint to a file
    Checkpoint(AuditCheckpointArgs),
}

/// Arguments of `opictl audit verify`.
#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// A checkpoint exported earlier with `opictl audit checkpoint`; repeat for several
    #[arg(long = "checkpoint", value_name = "FILE")]
    pub checkpoints: Vec<PathBuf>,
}

/// Arguments of `opictl audit checkpoint`.
#[derive(Debug, Args)]
pub struct AuditCheckpointArgs {
    /// Where to write the signed checkpoint (JSON)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Reads `--since`: a duration back from now, or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{text}` reaches before 1970"));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "`{text}` is neither a duration (`2h`) nor an RFC 3339 time (`2026-01-31T08:00:00Z`)"
        )
    })
}

/// Checks a `--max-unavailable` value: a count of 1 or more, or a percentage of 1 to 100.
pub fn parse_max_unavailable(text: &str) -> Result<String, String> {
    let valid = match text.strip_suffix('%') {
        Some(percent) => percent.parse::<u32>().is_ok_and(|p| (1..=100).contains(&p)),
        None => text.parse::<u32>().is_ok_and(|n| n >= 1),
    };
    match valid {
        true => Ok(text.to_string()),
        false => Err(format!(
            "`{text}` is not a count of nodes (2) or a percentage of the pool (25%)"
        )),
    }
}

/// Checks a `--settle` value: a duration of at most a day (0s, 30s, 5m…).
pub fn parse_settle(text: &str) -> Result<Duration, String> {
    let settle = humantime::parse_duration(text.trim())
        .map_err(|_| format!("`{text}` is not a duration such as 30s or 5m"))?;
    if settle > Duration::from_secs(24 * 3600) {
        return Err("a settle time is at most 24h".into());
    }
    Ok(settle)
}

/// Accepts a count of one or more.
fn at_least_one() -> RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..)
}

/// Accepts a generation number, 1 or more.
fn at_least_one_u64() -> RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
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

        assert_eq!(cli.output, OutputChoice::Json);
    }

    #[test]
    fn nodes_config_state_filter_does_not_clash_with_the_bundle_option() {
        let cli = Cli::parse_from([
            "opictl",
            "--config",
            "/etc/opictl.toml",
            "nodes",
            "--config-state",
            "failed",
        ]);

        assert_eq!(cli.config, Some(PathBuf::from("/etc/opictl.toml")));
        let Command::Nodes(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.config_state, Some(ConfigFilter::Failed));
    }

    #[test]
    fn profile_set_takes_the_rollout_defaults_and_checks_the_budget() {
        let cli = Cli::parse_from(["opictl", "profile", "set", "w", "-f", "p.yaml"]);
        let Command::Profile(ProfileCommand::Set { strategy, .. }) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(strategy.canary, 1);
        assert_eq!(strategy.max_unavailable, "1");
        assert_eq!(strategy.settle, Duration::from_secs(30));
        assert_eq!(strategy.failure_budget, 0);

        for bad in ["0", "0%", "120%", "two"] {
            let line = [
                "opictl",
                "profile",
                "set",
                "w",
                "-f",
                "p",
                "--max-unavailable",
                bad,
            ];
            let error = Cli::try_parse_from(line).expect_err(bad);
            assert_eq!(error.exit_code(), 2, "{bad}");
        }
        let line = [
            "opictl",
            "profile",
            "set",
            "w",
            "-f",
            "p",
            "--max-unavailable",
            "25%",
        ];
        assert!(Cli::try_parse_from(line).is_ok());
    }

    #[test]
    fn token_create_refuses_zero_uses() {
        let parsed =
            Cli::try_parse_from(["opictl", "token", "create", "--pool", "w", "--uses", "0"]);

        assert!(parsed.is_err());
    }

    #[test]
    fn nodes_takes_the_bundle_and_a_config_state_filter_together() {
        let cli = Cli::parse_from([
            "opictl",
            "--config",
            "admin.toml",
            "nodes",
            "--config-state",
            "drifted",
        ]);

        assert_eq!(
            cli.config.as_deref(),
            Some(std::path::Path::new("admin.toml"))
        );
        let Command::Nodes(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.config_state.is_some());
    }
}
