//! `opi-agent health`: the health summary and the node conditions this node would send
//! right now. It reads the condition history for the times shown but never writes it.

use std::io::{self, Write};

use clap::Args;
use opi_pki::files;
use opi_proto::v1::HealthSummary;
use serde::Serialize;
use tokio::sync::watch;
use tracing::warn;

use crate::conditions::{self, Evaluator, Validity};
use crate::output::{self, human_bytes, timestamp, OutputFormat};
use crate::paths::{LocationArgs, StatePaths};
use crate::{store, ErrorChain};

pub mod collector;
pub mod conditions_view;

pub use collector::HealthCollector;
use conditions_view::ConditionView;

/// Arguments of `opi-agent health`.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Where the node's files are; the summary's disk is the file system holding --root.
    #[command(flatten)]
    pub location: LocationArgs,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Why the health summary could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// `health.toml` cannot be used.
    #[error(transparent)]
    LoadHealthConfig(conditions::ConfigError),
    /// Standard output cannot be written.
    #[error("cannot write the health summary to standard output")]
    WriteOutput(#[source] io::Error),
}

/// The health summary and conditions as printed.
#[derive(Debug, Serialize)]
pub struct HealthView {
    /// The summary, its fields at the top level.
    #[serde(flatten)]
    pub summary: SummaryView,
    /// When the conditions were observed, RFC 3339.
    pub conditions_observed_at: String,
    /// Every condition, ordered by type then subject.
    pub conditions: Vec<ConditionView>,
}

/// The health summary as printed; the same fields as on the wire.
#[derive(Debug, Serialize)]
pub struct SummaryView {
    /// CPU use over the last sample interval, in percent of all CPUs.
    pub cpu_percent: f32,
    /// Memory in use.
    pub memory_used_bytes: u64,
    /// Memory installed.
    pub memory_total_bytes: u64,
    /// Bytes used on the file system holding the root.
    pub disk_used_bytes: u64,
    /// Size of that file system.
    pub disk_total_bytes: u64,
    /// Load average over 1 minute.
    pub load1: f32,
    /// Load average over 5 minutes.
    pub load5: f32,
    /// Load average over 15 minutes.
    pub load15: f32,
    /// Seconds since boot.
    pub uptime_secs: u64,
}

impl HealthError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            HealthError::LoadHealthConfig(error) => error.exit_code(),
            HealthError::WriteOutput(_) => crate::EXIT_RUNTIME,
        }
    }
}

/// Measures, checks and prints.
pub async fn run(args: HealthArgs) -> Result<(), HealthError> {
    let paths = args.location.resolve();
    let (_certificate, current) = watch::channel(certificate_validity(&paths));
    let mut evaluator =
        Evaluator::open(&paths, current, false).map_err(HealthError::LoadHealthConfig)?;
    let evaluation = evaluator.evaluate().await;
    // Sampled after the checks, so that their own work does not show as CPU use. CPU usage
    // is a difference between two samples; sysinfo needs them this far apart.
    let mut collector = HealthCollector::new(&paths.root);
    tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
    let view = HealthView {
        summary: SummaryView::from(collector.summary()),
        conditions_observed_at: timestamp(evaluation.observed_at),
        conditions: evaluation
            .conditions
            .iter()
            .map(ConditionView::from)
            .collect(),
    };

    let mut out = io::stdout().lock();
    match args.output {
        OutputFormat::Table => write_table(&mut out, &view),
        OutputFormat::Json => output::write_json(&mut out, &view),
    }
    .map_err(HealthError::WriteOutput)
}

/// The summary rows, a blank line, then the conditions.
fn write_table(out: &mut impl Write, view: &HealthView) -> io::Result<()> {
    output::write_table(out, &view.summary.rows())?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = view.conditions.iter().map(ConditionView::cells).collect();
    output::write_columns(out, &conditions_view::HEADERS, &rows)
}

/// The validity of the node certificate, if the node is enrolled and it can be read.
fn certificate_validity(paths: &StatePaths) -> Option<Validity> {
    let path = paths.node_cert();
    if !path.exists() {
        return None;
    }
    let read = files::read_text(&path).map_err(store::StoreError::ReadFile);
    match read.and_then(|chain| store::read_leaf(&path, &chain)) {
        Ok(leaf) => Some(Validity::of(&leaf)),
        Err(error) => {
            warn!(error = %ErrorChain(&error), "the node certificate is not checked");
            None
        }
    }
}

impl From<HealthSummary> for SummaryView {
    fn from(summary: HealthSummary) -> Self {
        Self {
            cpu_percent: summary.cpu_percent,
            memory_used_bytes: summary.memory_used_bytes,
            memory_total_bytes: summary.memory_total_bytes,
            disk_used_bytes: summary.disk_used_bytes,
            disk_total_bytes: summary.disk_total_bytes,
            load1: summary.load1,
            load5: summary.load5,
            load15: summary.load15,
            uptime_secs: summary.uptime_secs,
        }
    }
}

impl SummaryView {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let uptime = std::time::Duration::from_secs(self.uptime_secs);
        vec![
            ("cpu", format!("{:.1} %", self.cpu_percent)),
            (
                "memory",
                used_of(self.memory_used_bytes, self.memory_total_bytes),
            ),
            ("disk", used_of(self.disk_used_bytes, self.disk_total_bytes)),
            (
                "load",
                format!("{:.2} {:.2} {:.2}", self.load1, self.load5, self.load15),
            ),
            ("uptime", humantime::format_duration(uptime).to_string()),
        ]
    }
}

fn used_of(used: u64, total: u64) -> String {
    format!("{} used of {}", human_bytes(used), human_bytes(total))
}
