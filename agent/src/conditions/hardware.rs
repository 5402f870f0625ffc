//! `HardwareErrors`: memory errors counted by the kernel's EDAC drivers, one condition per
//! memory controller, and each disk's SMART verdict when `smartctl` is installed. A node
//! with neither reports no such condition at all: there is nothing to check, which is not
//! the same as not knowing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opi_proto::v1::Severity;

use super::{smart, CollectFuture, Collector, NodeFiles, Observation};

/// The condition type.
pub const HARDWARE_ERRORS: &str = "HardwareErrors";
/// The kernel's memory controllers, `mc0`, `mc1`…
pub const EDAC_CONTROLLERS: &str = "/sys/devices/system/edac/mc";

/// Reads EDAC counters and asks smartctl.
#[derive(Debug)]
pub struct HardwareCollector {
    controllers: PathBuf,
}

/// Error counts of one memory controller since boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryErrors {
    /// Corrected errors: the memory still works, but a module may be failing.
    pub corrected: u64,
    /// Uncorrected errors: data was lost.
    pub uncorrected: u64,
}

/// Why the EDAC counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// A directory or counter cannot be read.
    #[error("cannot read {path}")]
    ReadEdac {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A counter is not a number.
    #[error("{path} does not hold an error count: {text:?}")]
    ParseEdac {
        /// The file concerned.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
}

impl HardwareCollector {
    /// A check of the controllers under `files` (staged under the root, or the kernel's).
    pub fn new(files: &NodeFiles) -> Self {
        Self {
            controllers: files.kernel(EDAC_CONTROLLERS),
        }
    }

    /// One condition per memory controller; none without EDAC.
    pub fn observe_memory(&self) -> Result<Vec<Observation>, HardwareError> {
        if !self.controllers.is_dir() {
            return Ok(Vec::new());
        }
        controllers(&self.controllers)?
            .into_iter()
            .map(|(name, dir)| Ok(judge(&name, read_counts(&dir)?)))
            .collect()
    }
}

impl Collector for HardwareCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![HARDWARE_ERRORS]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        Box::pin(async move {
            let memory = tokio::task::spawn_blocking(move || self.observe_memory());
            let mut seen = memory.await??;
            if let Some(smartctl) = smart::find() {
                seen.extend(smart::observe(&smartctl).await);
            }
            Ok(seen)
        })
    }
}

/// The condition of one memory controller.
pub fn judge(controller: &str, errors: MemoryErrors) -> Observation {
    let message = format!(
        "memory controller {controller} counted {} corrected and {} uncorrected errors since boot",
        errors.corrected, errors.uncorrected
    );
    let (severity, reason, advice) = match errors {
        MemoryErrors {
            uncorrected: 1.., ..
        } => (
            Severity::Critical,
            "UncorrectedMemoryErrors",
            "data was lost: replace the module",
        ),
        MemoryErrors { corrected: 1.., .. } => (
            Severity::Warning,
            "CorrectedMemoryErrors",
            "a module may be failing",
        ),
        _ => return Observation::ok(HARDWARE_ERRORS, controller, "NoMemoryErrors", message),
    };
    let message = format!("{message}; {advice}");
    Observation::problem(HARDWARE_ERRORS, controller, severity, reason, message)
}

/// The `mcN` directories, in numeric order.
fn controllers(dir: &Path) -> Result<Vec<(String, PathBuf)>, HardwareError> {
    let read_error = |source| HardwareError::ReadEdac {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(number) = name.strip_prefix("mc").and_then(|n| n.parse::<u32>().ok()) {
            found.push((number, name, entry.path()));
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(_, name, path)| (name, path))
        .collect())
}

fn read_counts(controller: &Path) -> Result<MemoryErrors, HardwareError> {
    Ok(MemoryErrors {
        corrected: read_count(&controller.join("ce_count"))?,
        uncorrected: read_count(&controller.join("ue_count"))?,
    })
}

fn read_count(path: &Path) -> Result<u64, HardwareError> {
    let text = std::fs::read_to_string(path).map_err(|source| HardwareError::ReadEdac {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| HardwareError::ParseEdac {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;

    fn staged(controllers: &[(&str, &str, &str)]) -> (tempfile::TempDir, HardwareCollector) {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join(EDAC_CONTROLLERS.trim_start_matches('/'));
        std::fs::create_dir_all(&base).unwrap();
        for (name, ce, ue) in controllers {
            std::fs::create_dir(base.join(name)).unwrap();
            std::fs::write(base.join(name).join("ce_count"), ce).unwrap();
            std::fs::write(base.join(name).join("ue_count"), ue).unwrap();
        }
        let collector = HardwareCollector::new(&NodeFiles::new(root.path()));
        (root, collector)
    }

    #[test]
    fn each_memory_controller_is_graded_by_its_worst_errors() {
        let (_root, collector) = staged(&[
            ("mc10", "0\n", "0\n"),
            ("mc0", "3\n", "0\n"),
            ("mc1", "5\n", "1\n"),
        ]);
        let seen = collector.observe_memory().unwrap();
        let graded: Vec<(&str, Severity)> = seen
            .iter()
            .map(|o| (o.subject.as_str(), o.severity))
            .collect();
        assert_eq!(
            graded,
            [
                ("mc0", Severity::Warning),
                ("mc1", Severity::Critical),
                ("mc10", Severity::Unspecified),
            ]
        );
        assert_eq!(seen[2].status, ConditionStatus::Ok);
        assert!(
            seen[0].message.contains("3 corrected and 0 uncorrected"),
            "{}",
            seen[0].message
        );
    }

    #[test]
    fn a_node_without_edac_reports_no_memory_condition() {
        let root = tempfile::tempdir().unwrap();
        // Built directly, so that the host's own EDAC directory, if any, is not read.
        let collector = HardwareCollector {
            controllers: root.path().join(EDAC_CONTROLLERS.trim_start_matches('/')),
        };
        assert!(collector.observe_memory().unwrap().is_empty());
    }

    #[test]
    fn an_unreadable_counter_fails_the_check_naming_the_file() {
        let (_root, collector) = staged(&[("mc0", "many\n", "0\n")]);
        let error = collector.observe_memory().unwrap_err();
        assert!(error.to_string().contains("mc0/ce_count"), "{error}");
    }
}
