//! Node conditions: what is wrong on this node, where, and since when.
//!
//! Each collector module checks one aspect of the node and returns [`Observation`]s; the
//! [`evaluator`] runs them concurrently, each under its own timeout, turns a failure into
//! `UNKNOWN` plus an `AgentDegraded` problem, and stamps every condition with the time its
//! status last changed, kept across restarts by [`transitions`].
//!
//! Where files are read from ([`NodeFiles`]): the node's own files (the reboot flag, the
//! containerd socket, `health.toml`) always live under `--root`. Kernel interfaces (`/proc`,
//! `/sys`) are read under `--root` when the root is not `/` and the file exists there (test
//! fixtures, a mounted image), and from the real `/proc` and `/sys` otherwise: reading them is
//! harmless, and a directory tree has no kernel of its own. Mount points named in mountinfo
//! and the kernel clock are always the running kernel's.

pub mod certificate;
pub mod clock;
pub mod config;
pub mod containerd;
pub mod disk;
pub mod drift;
pub mod evaluator;
pub mod hardware;
pub mod http;
pub mod kubelet;
pub mod memory;
pub mod mounts;
pub mod pids;
pub mod readonly;
pub mod reboot;
pub mod settings;
pub mod smart;
pub mod transitions;

use std::error::Error as StdError;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use opi_proto::v1::{ConditionStatus, Severity};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::paths::{under_root, StatePaths, DEFAULT_ROOT};

pub use certificate::Validity;
pub use config::{ConfigError, HealthConfig};
pub use evaluator::{Evaluation, Evaluator};

/// Why a collector could not check its aspect of the node; shown as the message of the
/// `UNKNOWN` conditions it leaves.
pub type CollectError = Box<dyn StdError + Send + Sync>;

/// What a collector returns once it has run.
pub type CollectFuture =
    Pin<Box<dyn Future<Output = Result<Vec<Observation>, CollectError>> + Send>>;

/// One checked aspect of the node as a collector saw it, before the evaluator stamps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The condition type, e.g. `DiskPressure`.
    pub kind: &'static str,
    /// What it is about, e.g. a mount point; empty when node-wide.
    pub subject: String,
    /// Whether the check passed.
    pub status: ConditionStatus,
    /// How bad a problem is; unspecified unless the status is `PROBLEM`.
    pub severity: Severity,
    /// Machine-readable cause, CamelCase.
    pub reason: &'static str,
    /// For people: what was seen, with the figures.
    pub message: String,
}

/// A check of one aspect of the node.
pub trait Collector: Send + Sync + 'static {
    /// The condition types this collector reports, used to name its conditions when it fails.
    fn kinds(&self) -> Vec<&'static str>;

    /// Runs the check. A collector that cannot run returns an error; one that ran and found
    /// a problem returns a `PROBLEM` observation.
    fn collect(self: Arc<Self>) -> CollectFuture;
}

/// Where collectors read the node's files and kernel interfaces, under `--root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFiles {
    root: PathBuf,
}

impl Observation {
    /// A passed check.
    pub fn ok(kind: &'static str, subject: &str, reason: &'static str, message: String) -> Self {
        Self {
            kind,
            subject: subject.to_string(),
            status: ConditionStatus::Ok,
            severity: Severity::Unspecified,
            reason,
            message,
        }
    }

    /// A check that found a problem of the given severity.
    pub fn problem(
        kind: &'static str,
        subject: &str,
        severity: Severity,
        reason: &'static str,
        message: String,
    ) -> Self {
        Self {
            status: ConditionStatus::Problem,
            severity,
            ..Self::ok(kind, subject, reason, message)
        }
    }

    /// A check that could not run.
    pub fn unknown(
        kind: &'static str,
        subject: &str,
        reason: &'static str,
        message: String,
    ) -> Self {
        Self {
            status: ConditionStatus::Unknown,
            ..Self::ok(kind, subject, reason, message)
        }
    }

    /// `Type` or `Type:subject`, as events name a condition.
    pub fn key(&self) -> String {
        condition_key(self.kind, &self.subject)
    }
}

impl NodeFiles {
    /// Files of the node whose root is `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// One of the node's own files: always under the root.
    pub fn node(&self, path: impl AsRef<Path>) -> PathBuf {
        under_root(&self.root, path.as_ref())
    }

    /// A kernel interface (`/proc/…`, `/sys/…`): under the root when the root is not `/` and
    /// the path exists there, else the running kernel's.
    pub fn kernel(&self, path: &str) -> PathBuf {
        if self.root != Path::new(DEFAULT_ROOT) {
            let staged = under_root(&self.root, Path::new(path));
            if staged.exists() {
                return staged;
            }
        }
        PathBuf::from(path)
    }
}

/// `Type` or `Type:subject`.
pub fn condition_key(kind: &str, subject: &str) -> String {
    match subject {
        "" => kind.to_string(),
        subject => format!("{kind}:{subject}"),
    }
}

/// Runs a check that reads files in a blocking thread, so that a file system that hangs
/// (a dead NFS server under `statvfs`) stalls that thread only.
pub fn blocking<F>(check: F) -> CollectFuture
where
    F: FnOnce() -> Result<Vec<Observation>, CollectError> + Send + 'static,
{
    Box::pin(async move { tokio::task::spawn_blocking(check).await? })
}

/// The severity a value at or above the thresholds deserves, if any.
pub fn grade_at_least(value: f64, warning: f64, critical: f64) -> Option<Severity> {
    if value >= critical {
        Some(Severity::Critical)
    } else if value >= warning {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// The severity a value below the thresholds deserves, if any.
pub fn grade_below(value: f64, warning: f64, critical: f64) -> Option<Severity> {
    if value < critical {
        Some(Severity::Critical)
    } else if value < warning {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// `OK`, `PROBLEM` or `UNKNOWN`.
pub fn status_name(status: ConditionStatus) -> &'static str {
    match status {
        ConditionStatus::Ok => "OK",
        ConditionStatus::Problem => "PROBLEM",
        ConditionStatus::Unknown => "UNKNOWN",
        ConditionStatus::Unspecified => "UNSPECIFIED",
    }
}

/// `info`, `warning`, `critical`, or empty when unspecified.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
        Severity::Unspecified => "",
    }
}

/// A time as a protobuf timestamp.
pub fn to_timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).expect("nanoseconds are below one billion"),
    }
}

/// A protobuf timestamp as a time; `None` when out of range.
pub fn from_timestamp(at: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// Every collector `config` enables, reading under `files` (and the agent's state under
/// `paths`, for drift); the certificate check follows `certificate`, which the run loop
/// updates at each renewal.
pub fn collectors(
    config: &HealthConfig,
    files: &NodeFiles,
    paths: &StatePaths,
    certificate: watch::Receiver<Option<Validity>>,
) -> Vec<Arc<dyn Collector>> {
    let mut all: Vec<Arc<dyn Collector>> = Vec::new();
    if config.enabled(kubelet::KUBELET_HEALTHY) {
        all.push(Arc::new(kubelet::KubeletCollector::new(config)));
    }
    if config.enabled(containerd::CONTAINER_RUNTIME_HEALTHY) {
        all.push(Arc::new(containerd::RuntimeCollector::new(config, files)));
    }
    if let Some(disk) = disk::DiskCollector::new(config, files) {
        all.push(Arc::new(disk));
    }
    if config.enabled(readonly::READ_ONLY_FILESYSTEM) {
        all.push(Arc::new(readonly::ReadOnlyCollector::new(config, files)));
    }
    if config.enabled(memory::MEMORY_PRESSURE) {
        all.push(Arc::new(memory::MemoryCollector::new(config, files)));
    }
    if config.enabled(pids::PID_PRESSURE) {
        all.push(Arc::new(pids::PidCollector::new(config, files)));
    }
    if config.enabled(clock::CLOCK_UNSYNCHRONISED) {
        all.push(Arc::new(clock::ClockCollector::new(config)));
    }
    if config.enabled(certificate::CERTIFICATE_EXPIRING) {
        let check = certificate::CertificateCollector::new(config, certificate);
        all.push(Arc::new(check));
    }
    if config.enabled(reboot::REBOOT_REQUIRED) {
        all.push(Arc::new(reboot::RebootCollector::new(files)));
    }
    if config.enabled(hardware::HARDWARE_ERRORS) {
        all.push(Arc::new(hardware::HardwareCollector::new(files)));
    }
    if config.enabled(drift::CONFIG_DRIFT) {
        all.push(Arc::new(drift::DriftCollector::new(paths)));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_files_come_from_the_root_only_when_staged_there() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("proc/meminfo"), "MemTotal: 1 kB\n").unwrap();
        let files = NodeFiles::new(root.path());
        assert_eq!(
            files.kernel("/proc/meminfo"),
            root.path().join("proc/meminfo")
        );
        assert_eq!(files.kernel("/proc/loadavg"), Path::new("/proc/loadavg"));
        let host = NodeFiles::new(Path::new("/"));
        assert_eq!(host.kernel("/proc/meminfo"), Path::new("/proc/meminfo"));
    }

    #[test]
    fn node_files_always_live_under_the_root() {
        let files = NodeFiles::new(Path::new("/tmp/r"));
        assert_eq!(
            files.node("/var/run/reboot-required"),
            Path::new("/tmp/r/var/run/reboot-required")
        );
    }

    #[test]
    fn grades_compare_at_the_thresholds() {
        assert_eq!(grade_at_least(85.0, 85.0, 95.0), Some(Severity::Warning));
        assert_eq!(grade_at_least(84.9, 85.0, 95.0), None);
        assert_eq!(grade_at_least(95.0, 85.0, 95.0), Some(Severity::Critical));
        assert_eq!(grade_below(10.0, 10.0, 5.0), None);
        assert_eq!(grade_below(9.9, 10.0, 5.0), Some(Severity::Warning));
        assert_eq!(grade_below(4.0, 10.0, 5.0), Some(Severity::Critical));
    }

    #[test]
    fn timestamps_round_trip() {
        let at = time::macros::datetime!(2025-03-04 05:06:07.123456789 UTC);
        assert_eq!(from_timestamp(&to_timestamp(at)), Some(at));
    }

    #[test]
    fn keys_name_the_subject_only_when_there_is_one() {
        assert_eq!(condition_key("DiskPressure", "/var"), "DiskPressure:/var");
        assert_eq!(condition_key("MemoryPressure", ""), "MemoryPressure");
    }
}
