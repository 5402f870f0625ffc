//! `opi-agent status`: this node's local identity, read from its state directory without
//! changing anything.

use std::io;

use clap::Args;
use opi_pki::files::{self, FileError};
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{AgentConfig, ConfigError};
use crate::output::{self, timestamp, OutputFormat};
use crate::paths::LocationArgs;
use crate::run::renewal;
use crate::store::{self, StoreError};

/// Arguments of `opi-agent status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Where the node's files are.
    #[command(flatten)]
    pub location: LocationArgs,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Why the status could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// `agent.toml` cannot be loaded.
    #[error(transparent)]
    LoadConfig(ConfigError),
    /// `node.pem` cannot be read.
    #[error("cannot read the node certificate")]
    ReadCert(#[source] FileError),
    /// `node.pem` cannot be parsed.
    #[error(transparent)]
    ParseCert(StoreError),
    /// Standard output cannot be written.
    #[error("cannot write the status to standard output")]
    WriteOutput(#[source] io::Error),
}

/// The node's identity as printed.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// This node's name.
    pub node: String,
    /// Its pool.
    pub pool: String,
    /// Its fleet.
    pub fleet: String,
    /// The manager endpoints, tried in order.
    pub managers: Vec<String>,
    /// The certificate's serial number, hex.
    pub cert_serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Whether the certificate has expired.
    pub expired: bool,
    /// Why the manager refused to renew the expired certificate, if it did.
    pub renewal_refused: Option<String>,
    /// When `opi-agent run` renews the certificate, RFC 3339.
    pub renewal_planned_at: String,
    /// When the node enrolled, RFC 3339.
    pub enrolled_at: String,
    /// Where the files are.
    pub state_dir: String,
}

impl StatusError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::LoadConfig(error) => error.exit_code(),
            StatusError::ReadCert(_) | StatusError::ParseCert(_) | StatusError::WriteOutput(_) => {
                crate::EXIT_RUNTIME
            }
        }
    }
}

/// Reads and prints the node's identity.
pub fn run(args: StatusArgs) -> Result<(), StatusError> {
    let paths = args.location.resolve();
    let config = AgentConfig::load(&paths.config()).map_err(StatusError::LoadConfig)?;
    let chain = files::read_text(&paths.node_cert()).map_err(StatusError::ReadCert)?;
    let leaf = store::read_leaf(&paths.node_cert(), &chain).map_err(StatusError::ParseCert)?;

    let now = OffsetDateTime::now_utc();
    let view = StatusView {
        node: config.node,
        pool: config.pool,
        fleet: config.fleet,
        managers: config.managers,
        cert_serial: leaf.serial.clone(),
        not_before: timestamp(leaf.not_before),
        not_after: timestamp(leaf.not_after),
        expired: leaf.expired_at(now),
        renewal_refused: std::fs::read_to_string(paths.renewal_refused()).ok(),
        renewal_planned_at: timestamp(renewal::planned_at(&leaf, now)),
        enrolled_at: timestamp(config.enrolled_at),
        state_dir: paths.dir.display().to_string(),
    };
    print(&view, args.output).map_err(StatusError::WriteOutput)
}

fn print(view: &StatusView, format: OutputFormat) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match format {
        OutputFormat::Json => output::write_json(&mut out, view),
        OutputFormat::Table => output::write_table(&mut out, &view.rows()),
    }
}

impl StatusView {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let validity = match (self.expired, &self.renewal_refused) {
            (true, Some(why)) => format!(
                "{} (EXPIRED, renewal refused: {why}; re-enroll with `opi-agent enroll --reenroll --token-file FILE` once an operator ran `opictl node allow-reenroll {}`)",
                self.not_after, self.node
            ),
            (true, None) => format!(
                "{} (EXPIRED: `opi-agent run` renews it if the manager still allows, within 7 days of expiry by default)",
                self.not_after
            ),
            (false, _) => self.not_after.clone(),
        };
        vec![
            ("node", self.node.clone()),
            ("pool", self.pool.clone()),
            ("fleet", self.fleet.clone()),
            ("managers", self.managers.join(", ")),
            ("cert serial", self.cert_serial.clone()),
            ("not before", self.not_before.clone()),
            ("not after", validity),
            ("renewal planned", self.renewal_planned_at.clone()),
            ("enrolled at", self.enrolled_at.clone()),
            ("state dir", self.state_dir.clone()),
        ]
    }
}
