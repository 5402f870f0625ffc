//! `opi-agent health`: the health summary this node would send right now.

use std::io;
use std::path::PathBuf;

use clap::Args;
use opi_proto::v1::HealthSummary;
use serde::Serialize;

use crate::output::{self, human_bytes, OutputFormat};
use crate::paths::DEFAULT_ROOT;

pub mod collector;

pub use collector::HealthCollector;

/// Arguments of `opi-agent health`.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Directory whose file system is reported as the node's disk
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Why the health summary could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Standard output cannot be written.
    #[error("cannot write the health summary to standard output")]
    WriteOutput(#[source] io::Error),
}

/// The health summary as printed; the same fields as on the wire.
#[derive(Debug, Serialize)]
pub struct HealthView {
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
            HealthError::WriteOutput(_) => crate::EXIT_RUNTIME,
        }
    }
}

/// Measures and prints the health summary.
pub async fn run(args: HealthArgs) -> Result<(), HealthError> {
    let mut collector = HealthCollector::new(&args.root);
    // CPU usage is a difference between two samples; sysinfo needs them this far apart.
    tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
    let view = HealthView::from(collector.summary());

    let mut out = io::stdout().lock();
    match args.output {
        OutputFormat::Table => output::write_table(&mut out, &view.rows()),
        OutputFormat::Json => output::write_json(&mut out, &view),
    }
    .map_err(HealthError::WriteOutput)
}

impl From<HealthSummary> for HealthView {
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

impl HealthView {
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
