//! `MemoryPressure`: memory available to new work (`MemAvailable`), as a share of the total.

use std::path::PathBuf;
use std::sync::Arc;

use opi_proto::v1::Severity;

use super::config::HealthConfig;
use super::{blocking, grade_below, CollectFuture, Collector, NodeFiles, Observation};
use crate::output::human_bytes;

/// The condition type.
pub const MEMORY_PRESSURE: &str = "MemoryPressure";
/// The kernel's memory counters.
pub const MEMINFO: &str = "/proc/meminfo";

/// Checks available memory.
#[derive(Debug)]
pub struct MemoryCollector {
    meminfo: PathBuf,
    warning: f64,
    critical: f64,
}

/// Total and available memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`.
    pub available: u64,
}

/// Why the memory counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    ReadMeminfo {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A counter is missing.
    #[error("{path} has no {field} line")]
    ParseMeminfo {
        /// The file concerned.
        path: PathBuf,
        /// The counter missing.
        field: &'static str,
    },
}

impl MemoryCollector {
    /// A check with the thresholds of `config`.
    pub fn new(config: &HealthConfig, files: &NodeFiles) -> Self {
        Self {
            meminfo: files.kernel(MEMINFO),
            warning: config.memory.warning_available_percent,
            critical: config.memory.critical_available_percent,
        }
    }

    /// Reads the counters and judges them.
    pub fn observe(&self) -> Result<Observation, MemoryError> {
        let text =
            std::fs::read_to_string(&self.meminfo).map_err(|source| MemoryError::ReadMeminfo {
                path: self.meminfo.clone(),
                source,
            })?;
        let memory = parse(&text).map_err(|field| MemoryError::ParseMeminfo {
            path: self.meminfo.clone(),
            field,
        })?;
        Ok(self.judge(memory))
    }

    fn judge(&self, memory: Memory) -> Observation {
        let percent = match memory.total {
            0 => 0.0,
            total => memory.available as f64 * 100.0 / total as f64,
        };
        let message = format!(
            "{} available of {} ({percent:.1} %); warning below {} %, critical below {} %",
            human_bytes(memory.available),
            human_bytes(memory.total),
            self.warning,
            self.critical,
        );
        match grade_below(percent, self.warning, self.critical) {
            None => Observation::ok(MEMORY_PRESSURE, "", "MemoryAvailable", message),
            Some(severity) => {
                let reason = match severity {
                    Severity::Critical => "MemoryExhausted",
                    _ => "MemoryLow",
                };
                Observation::problem(MEMORY_PRESSURE, "", severity, reason, message)
            }
        }
    }
}

impl Collector for MemoryCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![MEMORY_PRESSURE]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        blocking(move || Ok(vec![self.observe()?]))
    }
}

/// `MemTotal` and `MemAvailable` from meminfo text; the missing field's name otherwise.
pub fn parse(text: &str) -> Result<Memory, &'static str> {
    let field = |name: &'static str| {
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .ok_or(name)
    };
    Ok(Memory {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(meminfo: &str) -> (tempfile::TempDir, MemoryCollector) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("proc/meminfo"), meminfo).unwrap();
        let collector =
            MemoryCollector::new(&HealthConfig::default(), &NodeFiles::new(root.path()));
        (root, collector)
    }

    #[test]
    fn meminfo_counters_are_read_in_bytes() {
        let text = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(
            parse(text),
            Ok(Memory {
                total: 16_000_000 * 1024,
                available: 8_000_000 * 1024
            })
        );
        assert_eq!(parse("MemTotal: 1 kB\n"), Err("MemAvailable"));
    }

    #[test]
    fn low_available_memory_is_graded() {
        let (_root, collector) = staged("MemTotal: 1000000 kB\nMemAvailable: 80000 kB\n");
        let seen = collector.observe().unwrap();
        assert_eq!(seen.severity, Severity::Warning);
        assert_eq!(seen.reason, "MemoryLow");
        assert!(seen.message.contains("(8.0 %)"), "{}", seen.message);
        let (_root, collector) = staged("MemTotal: 1000000 kB\nMemAvailable: 40000 kB\n");
        assert_eq!(collector.observe().unwrap().severity, Severity::Critical);
    }

    #[test]
    fn this_host_memory_is_read_from_the_real_proc() {
        let collector =
            MemoryCollector::new(&HealthConfig::default(), &NodeFiles::new("/".as_ref()));
        let seen = collector.observe().unwrap();
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        let total = format!("available of {} (", human_bytes(system.total_memory()));
        assert!(
            seen.message.contains(&total),
            "{} lacks {total}",
            seen.message
        );
    }

    #[test]
    fn unreadable_counters_fail_the_check_naming_the_file() {
        let (root, collector) = staged("MemTotal: 1 kB\n");
        let error = collector.observe().unwrap_err();
        assert!(error.to_string().contains("MemAvailable"), "{error}");
        assert!(
            error
                .to_string()
                .contains(&root.path().display().to_string()),
            "{error}"
        );
    }
}
